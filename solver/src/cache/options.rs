//! `--cache-to` and `--cache-from` as buildx reads them: CSV fields of `key=value`
//! (see docker's cache backend pages). A bare `--cache-from NAME` is
//! `type=registry,ref=NAME`.

use crate::{Error, Result};

/// How much `--cache-to` exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The results that make the final image's layers (the target stage's steps).
    #[default]
    Min,
    /// Every step's result, intermediate stages included.
    Max,
}

/// Where a cache goes or comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// An OCI layout directory (`dest=` to export, `src=` to import), with the cache
    /// manifest under `tag`.
    Local { dir: String, tag: String },
}

/// One `--cache-to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheTo {
    pub backend: Backend,
    pub mode: Mode,
    /// `ignore-error=true`: a failed export is a warning, not a failed build.
    pub ignore_error: bool,
}

/// One `--cache-from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheFrom {
    pub backend: Backend,
}

fn bad(flag: &str, spec: &str, why: impl std::fmt::Display) -> Error {
    Error::Input(format!("{flag} {spec:?}: {why}"))
}

fn not_yet(flag: &str, spec: &str, t: &str) -> Error {
    bad(
        flag,
        spec,
        format!("cache type {t} is not supported yet (type=local works: dest=DIR / src=DIR)"),
    )
}

fn parse_bool(flag: &str, spec: &str, k: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(bad(flag, spec, format!("{k}={v:?} is not true or false"))),
    }
}

fn pairs(flag: &str, spec: &str) -> Result<Vec<(String, String)>> {
    kiln_frontend::csv::pairs(spec, flag).map_err(Error::Input)
}

/// Parses one `--cache-to`.
pub fn cache_to(spec: &str) -> Result<CacheTo> {
    const FLAG: &str = "--cache-to";
    let kv = pairs(FLAG, spec)?;
    let get = |k: &str| {
        kv.iter()
            .rev()
            .find(|(x, _)| x == k)
            .map(|(_, v)| v.as_str())
    };
    let t =
        get("type").ok_or_else(|| bad(FLAG, spec, "missing type= (e.g. type=local,dest=DIR)"))?;
    if t != "local" {
        return Err(match t {
            "registry" | "inline" | "s3" | "gha" | "azblob" => not_yet(FLAG, spec, t),
            _ => bad(FLAG, spec, format!("unknown cache type {t:?}")),
        });
    }
    let mut mode = Mode::Min;
    let mut ignore_error = false;
    for (k, v) in &kv {
        match k.as_str() {
            "type" | "dest" | "tag" => {}
            "mode" => {
                mode = match v.as_str() {
                    "min" => Mode::Min,
                    "max" => Mode::Max,
                    _ => return Err(bad(FLAG, spec, format!("mode={v:?} (expected min or max)"))),
                }
            }
            "ignore-error" => ignore_error = parse_bool(FLAG, spec, k, v)?,
            // kiln always writes OCI media types and an image manifest.
            "oci-mediatypes" | "image-manifest" if parse_bool(FLAG, spec, k, v)? => {}
            "oci-mediatypes" | "image-manifest" => {
                return Err(bad(FLAG, spec, format!("{k}=false is not supported: kiln writes an OCI image manifest")))
            }
            "compression" | "compression-level" | "force-compression" => {
                return Err(bad(
                    FLAG,
                    spec,
                    format!("{k} is not supported yet for type=local: the cache keeps the layers as the build made them"),
                ))
            }
            _ => return Err(bad(FLAG, spec, format!("unknown option {k:?} (known: dest, mode, tag, ignore-error, oci-mediatypes, image-manifest)"))),
        }
    }
    let dir = get("dest")
        .filter(|d| !d.is_empty())
        .ok_or_else(|| bad(FLAG, spec, "type=local needs dest=DIR"))?;
    Ok(CacheTo {
        backend: Backend::Local {
            dir: dir.to_string(),
            tag: get("tag").unwrap_or("latest").to_string(),
        },
        mode,
        ignore_error,
    })
}

/// Parses one `--cache-from`.
pub fn cache_from(spec: &str) -> Result<CacheFrom> {
    const FLAG: &str = "--cache-from";
    if !spec.contains('=') {
        return Err(not_yet(FLAG, spec, "registry"));
    }
    let kv = pairs(FLAG, spec)?;
    let get = |k: &str| {
        kv.iter()
            .rev()
            .find(|(x, _)| x == k)
            .map(|(_, v)| v.as_str())
    };
    let t =
        get("type").ok_or_else(|| bad(FLAG, spec, "missing type= (e.g. type=local,src=DIR)"))?;
    if t != "local" {
        return Err(match t {
            "registry" | "inline" | "s3" | "gha" | "azblob" => not_yet(FLAG, spec, t),
            _ => bad(FLAG, spec, format!("unknown cache type {t:?}")),
        });
    }
    for (k, _) in &kv {
        if !matches!(k.as_str(), "type" | "src" | "tag") {
            return Err(bad(
                FLAG,
                spec,
                format!("unknown option {k:?} (known: src, tag)"),
            ));
        }
    }
    let dir = get("src")
        .filter(|d| !d.is_empty())
        .ok_or_else(|| bad(FLAG, spec, "type=local needs src=DIR"))?;
    Ok(CacheFrom {
        backend: Backend::Local {
            dir: dir.to_string(),
            tag: get("tag").unwrap_or("latest").to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_options_parse_as_in_buildx() {
        let t = cache_to("type=local,dest=/c,mode=max").expect("to");
        assert_eq!(t.mode, Mode::Max);
        assert_eq!(
            t.backend,
            Backend::Local {
                dir: "/c".into(),
                tag: "latest".into()
            }
        );
        assert_eq!(cache_to("type=local,dest=/c").expect("min").mode, Mode::Min);
        assert!(
            cache_to("type=local,dest=/c,ignore-error=true")
                .expect("ie")
                .ignore_error
        );
        let f = cache_from("type=local,src=/c,tag=v1").expect("from");
        assert_eq!(
            f.backend,
            Backend::Local {
                dir: "/c".into(),
                tag: "v1".into()
            }
        );
        for bad in [
            "type=local",
            "type=local,dest=/c,mode=all",
            "type=local,dest=/c,bogus=1",
            "type=nope,dest=/c",
            "dest=/c",
        ] {
            assert!(cache_to(bad).is_err(), "{bad}");
        }
        let e = cache_to("type=registry,ref=r/c").expect_err("not yet");
        assert!(e.to_string().contains("not supported yet"), "{e}");
        assert!(cache_from("type=local").is_err());
        assert!(cache_from("r/c:tag").is_err());
    }
}
