//! Instructions that change the image config: HEALTHCHECK, CMD/ENTRYPOINT forms,
//! ENV/LABEL pairs, EXPOSE ports, and the history rows of metadata and layer steps.

use super::*;

impl Compiler<'_> {
    pub(super) fn healthcheck(&self, ins: &Instruction, text: &str) -> Result<Healthcheck> {
        let mut hc = Healthcheck::default();
        let trimmed = text.trim_start();
        let kw_len = trimmed.find(char::is_whitespace).unwrap_or(trimmed.len());
        let kw = trimmed[..kw_len].to_ascii_uppercase();
        if kw == "NONE" {
            hc.test = vec!["NONE".into()];
            return Ok(hc);
        }
        let rest = trimmed[kw_len..].trim();
        hc.test = match parser::maybe_json(rest) {
            Some(v) if v.is_empty() => {
                return Err(self.err(ins.args_at(), "missing command after HEALTHCHECK CMD"))
            }
            Some(v) => std::iter::once("CMD".to_string()).chain(v).collect(),
            None => vec!["CMD-SHELL".into(), rest.to_string()],
        };
        for f in &ins.flags {
            let v = f.value.clone().unwrap_or_default();
            if f.name == "retries" {
                let n: i64 = v.parse().map_err(|_| {
                    self.err(f.at, format!("--retries={v}: expected a whole number"))
                })?;
                if n < 0 {
                    return Err(self.err(f.at, format!("--retries cannot be negative ({n})")));
                }
                hc.retries = n;
                continue;
            }
            let d = if v.is_empty() {
                0
            } else {
                gofmt::parse_duration(&v)
                    .map_err(|e| self.err(f.at, format!("--{}: {e}", f.name)))?
            };
            if d < 0 {
                return Err(self.err(f.at, format!("--{}={v} cannot be negative", f.name)));
            }
            if d != 0 && d < 1_000_000 {
                return Err(self.err(f.at, format!("--{}={v} cannot be less than 1ms", f.name)));
            }
            match f.name.as_str() {
                "interval" => hc.interval = d,
                "timeout" => hc.timeout = d,
                "start-period" => hc.start_period = d,
                _ => hc.start_interval = d,
            }
        }
        Ok(hc)
    }

    pub(super) fn command(&self, ins: &Instruction, config: &ImageConfig) -> Vec<String> {
        match &ins.args {
            Args::Exec(v) => v.clone(),
            Args::Text(t) => with_shell(&shell_of(config), t),
        }
    }

    /// `ENV`/`LABEL` arguments: `k=v k2="v 2"` or the legacy `k v w`.
    pub(super) fn name_vals(
        &self,
        ins: &Instruction,
        text: &str,
        vars: &[(String, String)],
        what: &str,
    ) -> Result<Vec<(String, String)>> {
        let words = lexer::split_words(text, self.escape);
        let at = ins.args_at();
        let Some(first) = words.first() else {
            return Err(self.err(at, format!("{what} requires at least one argument")));
        };
        if !first.contains('=') {
            // Legacy `ENV name value...`: the rest of the line is the value.
            let rest = text.trim_start()[first.len()..].trim();
            if rest.is_empty() {
                return Err(self.err(
                    at,
                    format!(
                        "{what} names {first} but gives it no value: expected {what} {first}=VALUE"
                    ),
                ));
            }
            return Ok(vec![(
                self.word(first, vars, at)?,
                self.word(rest, vars, at)?,
            )]);
        }
        let mut out = Vec::new();
        let mut search = 0;
        for w in &words {
            let idx = text[search..]
                .find(w.as_str())
                .map_or(search, |i| search + i);
            search = idx + w.len();
            let wat = ins.offset(idx);
            let Some((k, v)) = w.split_once('=') else {
                return Err(self.err(
                    wat,
                    format!(
                        "Syntax error - can't find = in {w:?}. Must be of the form: name=value"
                    ),
                ));
            };
            // Every word expands against the environment before the instruction, as
            // in BuildKit: `ENV a=2 b=$a` gives b the earlier a.
            let k = self.word(k, vars, wat)?;
            if k.is_empty() {
                return Err(self.err(wat, format!("{what} names can not be blank")));
            }
            out.push((k, self.word(v, vars, wat)?));
        }
        Ok(out)
    }

    pub(super) fn expand_ports(&self, p: &str, at: usize) -> Result<Vec<String>> {
        let (port, proto) = match p.split_once('/') {
            Some((a, b)) => (a, b.to_lowercase()),
            None => (p, "tcp".to_string()),
        };
        let bad = || {
            self.err(
                at,
                format!("invalid port {p:?}: expected PORT[-PORT][/tcp|udp|sctp]"),
            )
        };
        if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
            return Err(bad());
        }
        let (lo, hi) = match port.split_once('-') {
            Some((a, b)) => (
                a.parse::<u16>().map_err(|_| bad())?,
                b.parse::<u16>().map_err(|_| bad())?,
            ),
            None => {
                let v = port.parse::<u16>().map_err(|_| bad())?;
                (v, v)
            }
        };
        if lo > hi {
            return Err(bad());
        }
        Ok((lo..=hi).map(|n| format!("{n}/{proto}")).collect())
    }

    /// A history row that adds no layer.
    pub(super) fn meta(&self, st: &mut StageResult, created_by: String) {
        st.history.push(HistoryItem {
            entry: History {
                created_by: Some(created_by),
                comment: Some("buildkit.dockerfile.v0".into()),
                empty_layer: true,
                ..Default::default()
            },
            layer: None,
            own: true,
        });
    }

    /// A history row whose layer is the current vertex's.
    pub(super) fn layer(&self, st: &mut StageResult, created_by: String) {
        st.history.push(HistoryItem {
            entry: History {
                created_by: Some(created_by),
                comment: Some("buildkit.dockerfile.v0".into()),
                ..Default::default()
            },
            layer: Some(st.node),
            own: true,
        });
    }
}
