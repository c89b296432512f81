//! `RUN --mount=...`, `--network=` and `--security=` values, after BuildKit's
//! `instructions/commands_runmount.go`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

/// A parsed `--mount`, before `from` is resolved to a vertex.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountSpec {
    pub kind: MountKind,
    pub target: String,
    /// Path inside the source (`source=`).
    pub source: String,
    /// `from=`: a stage name or index, or an image.
    pub from: Option<String>,
    pub readonly: bool,
    /// Cache, secret and ssh id.
    pub id: String,
    pub sharing: Sharing,
    pub required: bool,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// tmpfs size in bytes.
    pub size: Option<u64>,
    /// Secret exposed as this environment variable.
    pub env: Option<String>,
}

impl MountSpec {
    /// A mount of `kind` with every option at its default (binds read-only).
    pub fn empty(kind: MountKind) -> MountSpec {
        MountSpec {
            kind,
            target: String::new(),
            source: String::new(),
            from: None,
            readonly: kind == MountKind::Bind,
            id: String::new(),
            sharing: Sharing::Shared,
            required: false,
            mode: None,
            uid: None,
            gid: None,
            size: None,
            env: None,
        }
    }
}

/// Splits a CSV record the way Go's `encoding/csv` reads one line: fields separated by
/// commas, a field in double quotes may hold commas and `""` for a quote.
fn csv_fields(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if at_start && c == '"' {
            loop {
                match chars.next() {
                    None => return Err(format!("extraneous or missing \" in quoted-field: {s}")),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        cur.push('"');
                    }
                    Some('"') => break,
                    Some(c) => cur.push(c),
                }
            }
            at_start = false;
            continue;
        }
        at_start = false;
        if c == ',' {
            out.push(std::mem::take(&mut cur));
            at_start = true;
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    Ok(out)
}

fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => Ok(true),
        "0" | "f" | "false" => Ok(false),
        _ => Err(format!(
            "invalid value for {key}: {v} (expected true or false)"
        )),
    }
}

fn parse_size(v: &str) -> Result<u64, String> {
    let lower = v.to_ascii_lowercase();
    let digits = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let n: f64 = lower[..digits]
        .parse()
        .map_err(|_| format!("invalid size {v:?}"))?;
    let mult: f64 = match lower[digits..].trim() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("invalid size {v:?}")),
    };
    Ok((n * mult) as u64)
}

/// Parses one `--mount` value. `expand` expands each value as a word.
pub fn parse_mount(
    value: &str,
    expand: &dyn Fn(&str) -> Result<String, String>,
) -> Result<MountSpec, String> {
    let mut kind = MountKind::Bind;
    let mut pairs = Vec::new();
    for field in csv_fields(value)? {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(expand(v)?)),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        if k == "type" {
            kind = match v.as_deref() {
                Some("bind") => MountKind::Bind,
                Some("cache") => MountKind::Cache,
                Some("tmpfs") => MountKind::Tmpfs,
                Some("secret") => MountKind::Secret,
                Some("ssh") => MountKind::Ssh,
                other => {
                    return Err(format!(
                        "unsupported mount type {:?} (expected bind, cache, tmpfs, secret or ssh)",
                        other.unwrap_or("")
                    ))
                }
            };
        } else {
            pairs.push((k, v, field));
        }
    }
    let mut m = MountSpec::empty(kind);
    for (k, v, field) in pairs {
        let val = || {
            v.clone()
                .ok_or_else(|| format!("invalid field '{field}' must be a key=value pair"))
        };
        match k.as_str() {
            "target" | "dst" | "destination" => m.target = val()?,
            "source" | "src" => m.source = val()?,
            "from" => m.from = Some(val()?),
            "readonly" | "ro" => {
                m.readonly = match &v {
                    Some(v) => parse_bool(&k, v)?,
                    None => true,
                }
            }
            "readwrite" | "rw" => {
                m.readonly = !match &v {
                    Some(v) => parse_bool(&k, v)?,
                    None => true,
                }
            }
            "required" if matches!(kind, MountKind::Secret | MountKind::Ssh) => {
                m.required = match &v {
                    Some(v) => parse_bool(&k, v)?,
                    None => true,
                }
            }
            "id" => m.id = val()?,
            "sharing" => {
                m.sharing = match val()?.as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    other => {
                        return Err(format!(
                        "unsupported sharing value {other:?} (expected shared, private or locked)"
                    ))
                    }
                }
            }
            "mode" => {
                let s = val()?;
                m.mode = Some(
                    u32::from_str_radix(&s, 8)
                        .map_err(|_| format!("invalid mode {s:?}: expected an octal mode"))?,
                )
            }
            "uid" | "gid" => {
                let s = val()?;
                let n: u32 = s
                    .parse()
                    .map_err(|_| format!("invalid {k} {s:?}: expected a number"))?;
                if k == "uid" {
                    m.uid = Some(n)
                } else {
                    m.gid = Some(n)
                }
            }
            "size" if kind == MountKind::Tmpfs => m.size = Some(parse_size(&val()?)?),
            "env" if kind == MountKind::Secret => m.env = Some(val()?),
            _ => return Err(format!("unexpected key '{k}' in '{field}'")),
        }
    }
    if m.target.is_empty() {
        match kind {
            MountKind::Secret => {
                if m.id.is_empty() {
                    return Err("secret mount requires an id or a target".into());
                }
                // With env= and no target, the secret is only an environment variable.
                if m.env.is_none() {
                    m.target = format!("/run/secrets/{}", m.id);
                }
            }
            MountKind::Ssh => {
                m.target = "/run/buildkit/ssh_agent.0".into();
            }
            _ => {
                return Err(format!(
                    "mount type {} requires a target",
                    serde_json::to_string(&kind)
                        .unwrap_or_default()
                        .trim_matches('"')
                ))
            }
        }
    }
    if m.id.is_empty() {
        m.id = match kind {
            MountKind::Secret => m.target.rsplit('/').next().unwrap_or_default().to_string(),
            MountKind::Ssh => "default".into(),
            _ => m.target.clone(),
        };
    }
    if m.from.is_some() && matches!(kind, MountKind::Tmpfs | MountKind::Secret | MountKind::Ssh) {
        return Err("'from' is only allowed for bind and cache mounts".into());
    }
    Ok(m)
}

/// `RUN --network=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    #[default]
    Default,
    None,
    Host,
}

/// `RUN --security=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    #[default]
    Sandbox,
    Insecure,
}

pub fn parse_network(v: &str) -> Result<Network, String> {
    match v {
        "default" => Ok(Network::Default),
        "none" => Ok(Network::None),
        "host" => Ok(Network::Host),
        _ => Err(format!(
            "unsupported network mode {v:?} (expected default, none or host)"
        )),
    }
}

pub fn parse_security(v: &str) -> Result<Security, String> {
    match v {
        "sandbox" => Ok(Security::Sandbox),
        "insecure" => Ok(Security::Insecure),
        _ => Err(format!(
            "unsupported security mode {v:?} (expected sandbox or insecure)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(s: &str) -> Result<MountSpec, String> {
        parse_mount(s, &|v| Ok(v.replace("$T", "/t")))
    }

    #[test]
    fn mount_table() {
        let m = pm("type=cache,target=/root/.cache,sharing=locked,id=pip").expect("ok");
        assert_eq!(
            (
                m.kind,
                m.target.as_str(),
                m.id.as_str(),
                m.sharing,
                m.readonly
            ),
            (
                MountKind::Cache,
                "/root/.cache",
                "pip",
                Sharing::Locked,
                false
            )
        );
        let m = pm("target=/src").expect("ok");
        assert_eq!((m.kind, m.readonly), (MountKind::Bind, true));
        let m = pm("type=bind,from=builder,source=/out,target=/in,rw").expect("ok");
        assert_eq!(
            (m.from.as_deref(), m.source.as_str(), m.readonly),
            (Some("builder"), "/out", false)
        );
        let m = pm("type=tmpfs,target=$T,size=64m").expect("ok");
        assert_eq!((m.target.as_str(), m.size), ("/t", Some(64 << 20)));
        let m = pm("type=secret,id=token").expect("ok");
        assert_eq!(
            (m.target.as_str(), m.id.as_str()),
            ("/run/secrets/token", "token")
        );
        let m = pm("type=secret,id=t,env=TOKEN,required").expect("ok");
        assert!(m.required && m.env.as_deref() == Some("TOKEN"));
        let m = pm("type=secret,target=/etc/x.pem,mode=0440,uid=1").expect("ok");
        assert_eq!(
            (m.id.as_str(), m.mode, m.uid),
            ("x.pem", Some(0o440), Some(1))
        );
        let m = pm("type=ssh").expect("ok");
        assert_eq!(m.id, "default");
        let m = pm("\"type=bind\",\"target=/a,b\"").expect("ok");
        assert_eq!(m.target, "/a,b");
        let m = pm("type=cache,target=/c,ro=false").expect("ok");
        assert!(!m.readonly);
        for bad in [
            "type=nfs,target=/x",
            "type=cache",
            "type=bind,target=/x,bogus=1",
            "type=cache,target=/x,sharing=weird",
            "type=cache,target=/x,mode=9",
            "type=tmpfs,target=/x,from=a",
            "type=secret",
            "type=bind,target=/x,ro=maybe",
            "type=tmpfs,target=/x,size=lots",
        ] {
            assert!(pm(bad).is_err(), "{bad}");
        }
        assert_eq!(
            pm("type=bind,target=/x,bogus=1").err().as_deref(),
            Some("unexpected key 'bogus' in 'bogus=1'")
        );
    }

    #[test]
    fn network_and_security() {
        assert_eq!(parse_network("none"), Ok(Network::None));
        assert!(parse_network("bridge").is_err());
        assert_eq!(parse_security("insecure"), Ok(Security::Insecure));
        assert!(parse_security("x").is_err());
    }
}
