//! `--cache-to` and `--cache-from` as buildx reads them: CSV fields of `key=value`
//! (see docker's cache backend pages). A bare `--cache-from NAME` is
//! `type=registry,ref=NAME`.

use crate::{Error, Result};
use kiln_snapshotter::convert::{Compression, LayerOptions};

/// How much `--cache-to` exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The results that make the final image's layers (the target stage's steps).
    #[default]
    Min,
    /// Every step's result, intermediate stages included.
    Max,
}

/// How big a cache mount `mounts=true` carries by default (bytes on disk).
pub const DEFAULT_MOUNTS_LIMIT: u64 = 1 << 30;

/// Where a cache goes or comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// An OCI layout directory (`dest=` to export, `src=` to import), with the cache
    /// manifest under `tag`.
    Local { dir: String, tag: String },
    /// A repository of a registry (`ref=REPO:TAG`), the cache manifest under the tag.
    Registry { reference: String },
    /// A bucket of an S3 service.
    S3(super::s3::Location),
    /// `--cache-to type=inline`: the description in the exported image's config,
    /// which `--cache-from REPO:TAG` of the pushed image reads.
    Inline,
}

/// One `--cache-to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheTo {
    pub backend: Backend,
    pub mode: Mode,
    /// `mounts=true`: the build's cache mounts' contents travel too, each at most
    /// `mounts_limit` bytes on disk (`mounts-limit=SIZE`, default 1 GiB); a bigger one
    /// stays behind, with a note.
    pub mounts: Option<u64>,
    /// `ignore-error=true`: a failed export is a warning, not a failed build.
    pub ignore_error: bool,
    /// `compression=`, `compression-level=`, `force-compression=`: the cache's layers
    /// converted as an image export converts them; `None` keeps them as they are.
    pub layers: Option<LayerOptions>,
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
        format!("cache type {t} is not supported yet (type=local, registry, s3 and inline work)"),
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

/// The last value of `k` in `kv`.
fn get<'a>(kv: &'a [(String, String)], k: &str) -> Option<&'a str> {
    kv.iter()
        .rev()
        .find(|(x, _)| x == k)
        .map(|(_, v)| v.as_str())
}

/// The cache type of `kv`, one kiln supports.
fn cache_type<'a>(flag: &str, spec: &str, kv: &'a [(String, String)]) -> Result<&'a str> {
    match get(kv, "type") {
        Some(t @ ("local" | "registry" | "s3")) => Ok(t),
        Some("inline") if flag == "--cache-to" => Ok("inline"),
        Some("inline") => Err(bad(
            flag,
            spec,
            "an inline cache is read from its image: --cache-from REPO:TAG",
        )),
        Some(t @ ("gha" | "azblob")) => Err(not_yet(flag, spec, t)),
        Some(t) => Err(bad(flag, spec, format!("unknown cache type {t:?}"))),
        None => Err(bad(
            flag,
            spec,
            "missing type= (e.g. type=local,dest=DIR or type=registry,ref=REPO:TAG)",
        )),
    }
}

/// Parses one `--cache-to`.
pub fn cache_to(spec: &str) -> Result<CacheTo> {
    const FLAG: &str = "--cache-to";
    let kv = pairs(FLAG, spec)?;
    let t = cache_type(FLAG, spec, &kv)?;
    let mut mode = Mode::Min;
    let mut ignore_error = false;
    let mut mounts = false;
    let mut limit = DEFAULT_MOUNTS_LIMIT;
    let mut layers = LayerOptions::default();
    let mut convert = false;
    for (k, v) in &kv {
        match k.as_str() {
            "type" | "dest" | "tag" | "ref" => {}
            k if t == "s3" && S3_KEYS.contains(&k) => {}
            "mounts" => mounts = parse_bool(FLAG, spec, k, v)?,
            "mounts-limit" => {
                limit = kiln_snapshotter::gc::parse_size(v)
                    .map_err(|e| bad(FLAG, spec, format!("mounts-limit={v:?}: {e}")))?
            }
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
                return Err(bad(
                    FLAG,
                    spec,
                    format!("{k}=false is not supported: kiln writes an OCI image manifest"),
                ))
            }
            "compression" => {
                layers.compression = Compression::parse(v).ok_or_else(|| {
                    bad(
                        FLAG,
                        spec,
                        format!("compression={v:?} (expected gzip, zstd or uncompressed)"),
                    )
                })?;
                convert = true;
            }
            "compression-level" => {
                layers.level = Some(
                    v.parse::<i32>()
                        .ok()
                        .filter(|l| (0..=22).contains(l))
                        .ok_or_else(|| {
                            bad(
                                FLAG,
                                spec,
                                format!("compression-level={v:?} is not a number from 0 to 22"),
                            )
                        })?,
                );
                convert = true;
            }
            "force-compression" => {
                layers.force = parse_bool(FLAG, spec, k, v)?;
                convert = true;
            }
            _ => {
                return Err(bad(
                    FLAG,
                    spec,
                    format!("unknown option {k:?} (known: dest, ref, mode, tag, mounts, mounts-limit, ignore-error, compression, compression-level, force-compression, oci-mediatypes, image-manifest)"),
                ))
            }
        }
    }
    let backend = backend(FLAG, spec, t, &kv, "dest")?;
    if backend == Backend::Inline && mode == Mode::Max {
        return Err(bad(
            FLAG,
            spec,
            "type=inline carries the final image's steps only (mode=min); use type=registry for mode=max",
        ));
    }
    if convert && backend == Backend::Inline {
        return Err(bad(
            FLAG,
            spec,
            "type=inline has the image's layers: set their compression on the output (-o ...,compression=)",
        ));
    }
    if mounts && backend == Backend::Inline {
        return Err(bad(
            FLAG,
            spec,
            "mounts=true needs a cache of its own (type=local or type=registry)",
        ));
    }
    Ok(CacheTo {
        backend,
        mode,
        mounts: mounts.then_some(limit),
        ignore_error,
        layers: convert.then_some(layers),
    })
}

/// Parses one `--cache-from`.
pub fn cache_from(spec: &str) -> Result<CacheFrom> {
    const FLAG: &str = "--cache-from";
    if !spec.contains('=') {
        return Ok(CacheFrom {
            backend: registry_backend(FLAG, spec, Some(spec))?,
        });
    }
    let kv = pairs(FLAG, spec)?;
    let t = cache_type(FLAG, spec, &kv)?;
    for (k, _) in &kv {
        let known = match t {
            "s3" => k == "type" || S3_KEYS.contains(&k.as_str()),
            _ => matches!(k.as_str(), "type" | "src" | "tag" | "ref"),
        };
        if !known {
            let which = if t == "s3" {
                ""
            } else {
                " (known: src, ref, tag)"
            };
            return Err(bad(FLAG, spec, format!("unknown option {k:?}{which}")));
        }
    }
    Ok(CacheFrom {
        backend: backend(FLAG, spec, t, &kv, "src")?,
    })
}

/// The options of `type=s3` (BuildKit's names).
const S3_KEYS: [&str; 11] = [
    "bucket",
    "region",
    "endpoint_url",
    "prefix",
    "blobs_prefix",
    "manifests_prefix",
    "name",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "use_path_style",
];

fn s3_location(flag: &str, spec: &str, kv: &[(String, String)]) -> Result<super::s3::Location> {
    let owned = |k: &str| get(kv, k).filter(|v| !v.is_empty()).map(str::to_string);
    let bucket = owned("bucket").ok_or_else(|| bad(flag, spec, "type=s3 needs bucket=NAME"))?;
    Ok(super::s3::Location {
        bucket,
        region: owned("region"),
        endpoint_url: owned("endpoint_url"),
        prefix: owned("prefix").unwrap_or_default(),
        blobs_prefix: owned("blobs_prefix").unwrap_or_else(|| "blobs/".into()),
        manifests_prefix: owned("manifests_prefix").unwrap_or_else(|| "manifests/".into()),
        name: owned("name").unwrap_or_else(|| "buildkit".into()),
        access_key_id: owned("access_key_id"),
        secret_access_key: owned("secret_access_key"),
        session_token: owned("session_token"),
        path_style: match get(kv, "use_path_style") {
            Some(v) => parse_bool(flag, spec, "use_path_style", v)?,
            None => false,
        },
    })
}

/// The backend of type `t` from its options `kv`; `dir_key` names a local cache's
/// directory (`dest` to export, `src` to import).
fn backend(
    flag: &str,
    spec: &str,
    t: &str,
    kv: &[(String, String)],
    dir_key: &str,
) -> Result<Backend> {
    match t {
        "inline" => Ok(Backend::Inline),
        "s3" => Ok(Backend::S3(s3_location(flag, spec, kv)?)),
        "local" => {
            let dir = get(kv, dir_key)
                .filter(|d| !d.is_empty())
                .ok_or_else(|| bad(flag, spec, format!("type=local needs {dir_key}=DIR")))?;
            Ok(Backend::Local {
                dir: dir.to_string(),
                tag: get(kv, "tag").unwrap_or("latest").to_string(),
            })
        }
        _ => registry_backend(flag, spec, get(kv, "ref")),
    }
}

/// A `type=registry` backend at `reference`, which must be a valid name.
fn registry_backend(flag: &str, spec: &str, reference: Option<&str>) -> Result<Backend> {
    let r = reference
        .filter(|r| !r.is_empty())
        .ok_or_else(|| bad(flag, spec, "type=registry needs ref=REPO[:TAG]"))?;
    kiln_registry::parse_reference(r).map_err(|e| bad(flag, spec, e))?;
    Ok(Backend::Registry {
        reference: r.to_string(),
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
        let e = cache_to("type=gha").expect_err("not yet");
        assert!(e.to_string().contains("not supported yet"), "{e}");
        let s3 = cache_to(
            "type=s3,bucket=b,endpoint_url=http://127.0.0.1:9000,use_path_style=true,mode=max",
        )
        .expect("s3");
        match s3.backend {
            Backend::S3(l) => {
                assert_eq!(
                    (l.bucket.as_str(), l.path_style, l.name.as_str()),
                    ("b", true, "buildkit")
                );
                assert_eq!(l.blobs_prefix, "blobs/");
            }
            other => panic!("{other:?}"),
        }
        assert!(cache_to("type=s3").is_err());
        assert!(matches!(
            cache_from("type=s3,bucket=b,prefix=p/")
                .expect("from")
                .backend,
            Backend::S3(_)
        ));
        assert!(cache_from("type=s3,bucket=b,bogus=1").is_err());
        assert!(cache_from("type=local").is_err());
        let r = Backend::Registry {
            reference: "127.0.0.1:5000/r/c:tag".into(),
        };
        assert_eq!(
            cache_from("127.0.0.1:5000/r/c:tag").expect("bare").backend,
            r
        );
        assert_eq!(
            cache_from("type=registry,ref=127.0.0.1:5000/r/c:tag")
                .expect("ref")
                .backend,
            r
        );
        assert_eq!(
            cache_to("type=registry,ref=127.0.0.1:5000/r/c:tag,mode=max")
                .expect("to")
                .backend,
            r
        );
        assert!(cache_to("type=registry").is_err());
        assert_eq!(
            cache_to("type=inline").expect("inline").backend,
            Backend::Inline
        );
        assert!(cache_to("type=inline,mode=max").is_err());
        assert_eq!(
            cache_to("type=local,dest=/c,mounts=true")
                .expect("m")
                .mounts,
            Some(DEFAULT_MOUNTS_LIMIT)
        );
        assert_eq!(
            cache_to("type=local,dest=/c,mounts=true,mounts-limit=10mb")
                .expect("m")
                .mounts,
            Some(10 << 20)
        );
        assert_eq!(cache_to("type=local,dest=/c").expect("m").mounts, None);
        assert!(cache_to("type=inline,mounts=true").is_err());
        assert_eq!(cache_to("type=local,dest=/c").expect("as is").layers, None);
        let z = cache_to("type=local,dest=/c,compression=zstd,compression-level=9")
            .expect("zstd")
            .layers
            .expect("converted");
        assert_eq!(
            (z.compression, z.level, z.force),
            (Compression::Zstd, Some(9), false)
        );
        assert!(
            cache_to("type=registry,ref=r/c,force-compression=true")
                .expect("force")
                .layers
                .expect("converted")
                .force
        );
        for bad in [
            "type=local,dest=/c,compression=lz4",
            "type=local,dest=/c,compression-level=23",
            "type=inline,compression=zstd",
        ] {
            assert!(cache_to(bad).is_err(), "{bad}");
        }
        assert!(cache_from("type=inline").is_err());
        assert!(cache_from("type=registry,ref=UPPER/x").is_err());
    }
}
