//! CSV records as buildx reads its `--output`, `--cache-to` and `--cache-from` values.

/// Splits a CSV record as Go's encoding/csv does (what buildx uses): commas separate
/// fields; a field in double quotes may hold commas, and `""` is a quote.
pub fn fields(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted => {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    cur.push('"');
                } else {
                    quoted = false;
                }
            }
            '"' if at_start => quoted = true,
            ',' if !quoted => {
                out.push(std::mem::take(&mut cur));
                at_start = true;
                continue;
            }
            c => cur.push(c),
        }
        at_start = false;
    }
    if quoted {
        return Err(format!("unterminated quote in {s:?}"));
    }
    out.push(cur);
    Ok(out)
}

/// The `key=value` fields of a CSV record; `what` names it in errors.
pub fn pairs(s: &str, what: &str) -> Result<Vec<(String, String)>, String> {
    fields(s)?
        .into_iter()
        .map(|f| match f.split_once('=') {
            Some((k, v)) => Ok((k.trim().to_string(), v.to_string())),
            None => Err(format!("{what} {s:?}: {f:?} is not key=value")),
        })
        .collect()
}
