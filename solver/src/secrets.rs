//! `--secret id=ID[,src=FILE|,env=VAR]` (buildx syntax; `source` and `type=file|env`
//! are accepted too). An id alone reads the environment variable of that name.

use crate::{Error, Result};
use kiln_executor::SecretFrom;
use std::collections::{BTreeMap, HashMap};

/// Where each secret's value is on the host, by id.
pub fn parse(raw: &[String]) -> Result<HashMap<String, SecretFrom>> {
    let mut out = HashMap::new();
    for spec in raw {
        let bad = |why: &str| Error::Secret {
            spec: spec.clone(),
            why: why.to_string(),
        };
        let kv: BTreeMap<&str, &str> = spec.split(',').filter_map(|p| p.split_once('=')).collect();
        let Some(id) = kv.get("id").copied().filter(|i| !i.is_empty()) else {
            return Err(bad("expected id=ID,src=FILE or id=ID,env=VAR"));
        };
        let src = kv.get("src").or(kv.get("source")).copied();
        let from = match (kv.get("type").copied(), src, kv.get("env").copied()) {
            (Some("env"), s, e) => SecretFrom::Env(e.or(s).unwrap_or(id).to_string()),
            (_, Some(f), None) => {
                let p = fs_err::canonicalize(f).map_err(|e| bad(&e.to_string()))?;
                SecretFrom::File(p)
            }
            (_, None, Some(e)) => SecretFrom::Env(e.to_string()),
            (_, None, None) => SecretFrom::Env(id.to_string()),
            (_, Some(_), Some(_)) => return Err(bad("give src= or env=, not both")),
        };
        out.insert(id.to_string(), from);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_specs_parse_as_in_buildx() {
        let got = parse(&[
            "id=a".into(),
            "id=b,env=B".into(),
            "type=env,id=c,src=C".into(),
        ])
        .expect("parse");
        assert!(matches!(&got["a"], SecretFrom::Env(v) if v == "a"));
        assert!(matches!(&got["b"], SecretFrom::Env(v) if v == "B"));
        assert!(matches!(&got["c"], SecretFrom::Env(v) if v == "C"));
        assert!(parse(&["src=/x".into()]).is_err());
        let e = parse(&["id=x,src=/nonexistent/file".into()]).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/file"), "{e}");
    }
}
