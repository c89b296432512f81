//! `-o/--output` as buildx reads it: CSV fields of `key=value`, and the `-o DIR` and
//! `-o -` shorthands.

use super::{Kind, Output};
use crate::layers::Compression;
use crate::{bail, Error, ImageOptions, Result};
use std::collections::BTreeMap;

fn csv_fields(s: &str) -> Result<Vec<String>> {
    kiln_frontend::csv::fields(s).map_err(Error::Options)
}

fn parse_bool(spec: &str, k: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => bail!("output {spec:?}: {k}={v:?} is not true or false"),
    }
}

/// Parses one `-o` value.
pub fn parse(spec: &str) -> Result<Output> {
    // `-o DIR` is type=local, `-o -` a tar of the filesystem on stdout.
    if !spec.contains('=') {
        let kind = if spec == "-" { Kind::Tar } else { Kind::Local };
        return Ok(Output {
            kind,
            dest: Some(spec.to_string()),
            names: Vec::new(),
            image: ImageOptions::default(),
            rewrite_timestamp: false,
            index_annotations: BTreeMap::new(),
            descriptor_annotations: BTreeMap::new(),
        });
    }
    let mut kv = Vec::new();
    for f in csv_fields(spec)? {
        match f.split_once('=') {
            Some((k, v)) => kv.push((k.trim().to_string(), v.to_string())),
            None => bail!("output {spec:?}: {f:?} is not key=value"),
        }
    }
    let get = |k: &str| {
        kv.iter()
            .rev()
            .find(|(x, _)| x == k)
            .map(|(_, v)| v.as_str())
    };
    let kind = match get("type") {
        Some("oci") | Some("oci-layout") => Kind::Oci {
            tar: get("tar").map(|v| parse_bool(spec, "tar", v)).transpose()?.unwrap_or(get("type") == Some("oci")),
        },
        Some("docker") => Kind::Docker {
            tar: get("tar").map(|v| parse_bool(spec, "tar", v)).transpose()?.unwrap_or(true),
        },
        Some("local") => Kind::Local,
        Some("tar") => Kind::Tar,
        Some("registry") => Kind::Registry,
        Some("image") => match get("push") {
            Some(v) if parse_bool(spec, "push", v)? => Kind::Registry,
            _ => bail!(
                "output {spec:?}: kiln keeps no image store; use type=image,push=true, type=registry, type=oci or type=docker"
            ),
        },
        Some("cacheonly") => bail!("output type cacheonly: the cache is kept anyway; give no -o"),
        Some(t) => bail!(
            "output {spec:?}: unknown type {t:?} (expected oci, docker, local, tar, registry or image)"
        ),
        None => bail!("output {spec:?}: missing type= (e.g. type=oci,dest=FILE)"),
    };
    let image_kind = !matches!(kind, Kind::Local | Kind::Tar);
    let mut out = Output {
        dest: get("dest").map(str::to_string),
        names: Vec::new(),
        image: ImageOptions::default(),
        rewrite_timestamp: false,
        index_annotations: BTreeMap::new(),
        descriptor_annotations: BTreeMap::new(),
        kind,
    };
    let mut oci_types = None;
    for (k, v) in &kv {
        let k = k.as_str();
        if !image_kind && !matches!(k, "type" | "dest") {
            bail!("output {spec:?}: {k} is not an option of this output type (only dest)");
        }
        match k {
            "type" | "dest" | "tar" | "push" => {}
            "name" => out.names.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_string),
            ),
            "compression" => {
                out.image.layers.compression = Compression::parse(v).ok_or_else(|| {
                    Error::Options(format!(
                        "output {spec:?}: compression={v:?} (expected gzip, zstd or uncompressed)"
                    ))
                })?
            }
            "compression-level" => {
                out.image.layers.level = Some(
                    v.parse()
                        .ok()
                        .filter(|l| (0..=22).contains(l))
                        .ok_or_else(|| {
                            Error::Options(format!(
                            "output {spec:?}: compression-level={v:?} is not a number from 0 to 22"
                        ))
                        })?,
                )
            }
            "force-compression" => out.image.layers.force = parse_bool(spec, k, v)?,
            "oci-mediatypes" => oci_types = Some(parse_bool(spec, k, v)?),
            "rewrite-timestamp" => out.rewrite_timestamp = parse_bool(spec, k, v)?,
            _ => {
                let put = |prefix: &str, map: &mut BTreeMap<String, String>| -> Result<bool> {
                    match k.strip_prefix(prefix) {
                        Some("") => bail!("output {spec:?}: {k} has no annotation name"),
                        Some(name) => {
                            map.insert(name.to_string(), v.clone());
                            Ok(true)
                        }
                        None => Ok(false),
                    }
                };
                if put("annotation.", &mut out.image.manifest_annotations)?
                    || put("annotation-manifest.", &mut out.image.manifest_annotations)?
                    || put("annotation-index.", &mut out.index_annotations)?
                    || put(
                        "annotation-manifest-descriptor.",
                        &mut out.descriptor_annotations,
                    )?
                {
                    continue;
                }
                bail!(
                    "output {spec:?}: unknown option {k:?} (known: dest, name, tar, push, compression, compression-level, force-compression, oci-mediatypes, rewrite-timestamp, annotation.*)"
                )
            }
        }
    }
    // Docker archives default to Docker media types, as with BuildKit; zstd layers
    // need OCI ones, so asking for zstd without saying otherwise picks OCI.
    out.image.layers.oci_media_types = match oci_types {
        Some(v) => v,
        None => {
            !matches!(out.kind, Kind::Docker { .. })
                || out.image.layers.compression == Compression::Zstd
        }
    };
    Ok(out)
}

/// `--annotation`s, as buildx takes them: `KEY=VALUE` (the manifest's), or with
/// types before a colon, `index:`, `manifest:`, `manifest-descriptor:` (several
/// separated by commas); buildx adds them to every output.
pub fn annotate(outputs: &mut [Output], annotations: &[String]) -> Result<()> {
    for a in annotations.iter().filter(|a| !a.is_empty()) {
        let Some((k, v)) = a.split_once('=') else {
            bail!("--annotation {a:?}: expected KEY=VALUE (or TYPE:KEY=VALUE)");
        };
        let (types, key) = match k.split_once(':') {
            Some((t, key)) => (t.split(',').collect::<Vec<_>>(), key),
            None => (vec!["manifest"], k),
        };
        if key.is_empty() {
            bail!("--annotation {a:?}: the annotation has no name");
        }
        for t in types {
            if t.contains('[') {
                bail!("--annotation {a:?}: per-platform annotations ({t}) are not supported yet");
            }
            for o in outputs.iter_mut() {
                let map = match t {
                    "manifest" => &mut o.image.manifest_annotations,
                    "index" => &mut o.index_annotations,
                    "manifest-descriptor" => &mut o.descriptor_annotations,
                    "index-descriptor" => bail!(
                        "--annotation {a:?}: index-descriptor annotations are not supported yet"
                    ),
                    other => bail!(
                        "--annotation {a:?}: unknown annotation type {other:?} (expected index, manifest or manifest-descriptor)"
                    ),
                };
                map.insert(key.to_string(), v.to_string());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_go_to_every_output_by_type() {
        let mut outs = vec![
            parse("type=oci,dest=a.tar").expect("a"),
            parse("type=registry").expect("b"),
        ];
        annotate(
            &mut outs,
            &[
                "org.opencontainers.image.title=T".into(),
                "index,manifest:org.x=1".into(),
                "manifest-descriptor:d=v=w".into(),
            ],
        )
        .expect("annotate");
        for o in &outs {
            assert_eq!(
                o.image.manifest_annotations["org.opencontainers.image.title"],
                "T"
            );
            assert_eq!(o.image.manifest_annotations["org.x"], "1");
            assert_eq!(o.index_annotations["org.x"], "1");
            assert_eq!(o.descriptor_annotations["d"], "v=w");
        }
        assert!(annotate(&mut outs, &["novalue".into()]).is_err());
        assert!(annotate(&mut outs, &["bogus:k=v".into()]).is_err());
        assert!(annotate(&mut outs, &["manifest[linux/amd64]:k=v".into()]).is_err());
    }

    #[test]
    fn outputs_parse_like_buildx() {
        assert_eq!(
            csv_fields(r#"type=oci,"name=a,b",x="q""q""#).expect("csv"),
            vec!["type=oci", "name=a,b", "x=\"q\"\"q\""]
        );
        let o = parse(
            r#"type=oci,dest=o.tar,"name=r/a:1,r/b:2",compression=zstd,annotation.org.Title=T"#,
        )
        .expect("oci");
        assert_eq!(o.kind, Kind::Oci { tar: true });
        assert_eq!(o.names, vec!["r/a:1", "r/b:2"]);
        assert_eq!(o.image.layers.compression, Compression::Zstd);
        assert_eq!(o.image.manifest_annotations["org.Title"], "T");
        let d = parse("type=docker,dest=d.tar").expect("docker");
        assert!(!d.image.layers.oci_media_types);
        assert_eq!(parse("out").expect("dir").kind, Kind::Local);
        assert_eq!(parse("-").expect("stdout").kind, Kind::Tar);
        assert_eq!(
            parse("type=oci,tar=false,dest=x").expect("dir").kind,
            Kind::Oci { tar: false }
        );
        assert_eq!(
            parse("type=oci-layout,dest=x").expect("dir").kind,
            Kind::Oci { tar: false }
        );
        assert_eq!(
            parse("type=image,push=true").expect("push").kind,
            Kind::Registry
        );
        for bad in [
            "type=oci,compression=lz4",
            "type=oci,compression-level=99",
            "type=nope",
            "type=oci,bogus=1",
            "type=local,dest=x,compression=gzip",
            "type=image",
            "dest=x",
            r#"type=oci,"name=a"#,
        ] {
            assert!(parse(bad).is_err(), "{bad} must be refused");
        }
    }
}
