//! `-o/--output` as buildx reads it (CSV fields of `key=value`; `-o DIR` and `-o -`
//! shorthands) and the export of a solved build to each output, with `--iidfile` and
//! `--metadata-file`.

use anyhow::{bail, Context, Result};
use kiln_exporter::archive::{self, Format, Naming};
use kiln_exporter::layers::Compression;
use kiln_exporter::{Built, Image, ImageOptions, Multi};
use kiln_frontend::Platform;
use kiln_registry::{BlobOutcome, Registry};
use kiln_snapshotter::Store;
use kiln_solver::helper::{Launcher, Request, Response};
use kiln_solver::progress::Progress;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Where an output goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// An OCI layout, as a tar or (`tar=false`) a directory.
    Oci { tar: bool },
    /// A Docker archive (`docker load`), as a tar or a directory.
    Docker { tar: bool },
    /// The final filesystem in a directory.
    Local,
    /// The final filesystem as a tar.
    Tar,
    /// Pushed to a registry under every name.
    Registry,
}

/// One `-o`.
#[derive(Debug, Clone)]
pub struct Output {
    pub kind: Kind,
    pub dest: Option<String>,
    /// `name=` (several with a quoted CSV field, `"name=a,b"`); `-t` when absent.
    pub names: Vec<String>,
    pub image: ImageOptions,
    pub rewrite_timestamp: bool,
    pub index_annotations: BTreeMap<String, String>,
    pub descriptor_annotations: BTreeMap<String, String>,
}

/// How steps should compress the layers they make: zstd when the first output that
/// makes an image asks for zstd at the default level, so that exporting it is a copy;
/// gzip otherwise (what an image without outputs, and most registries, want). Other
/// outputs convert the layers they need at export, once.
pub fn layer_compression(outputs: &[Output]) -> kiln_snapshotter::diff::LayerCompression {
    use kiln_snapshotter::diff::LayerCompression;
    let first = outputs
        .iter()
        .find(|o| !matches!(o.kind, Kind::Local | Kind::Tar));
    match first {
        Some(o)
            if o.image.layers.compression == Compression::Zstd
                && o.image.layers.level.is_none() =>
        {
            LayerCompression::Zstd
        }
        _ => LayerCompression::Gzip,
    }
}

/// The temp file into which the exported image's top layer is written as its step
/// compresses it (`kiln_solver::Spool`), when that is the whole export: one output, an
/// OCI or Docker tar file for one platform, taking the layer as the step makes it (no
/// other compression or level, no rewritten times). `None` otherwise.
pub fn spool_path(outputs: &[Output], platforms: usize) -> Option<PathBuf> {
    let [o] = outputs else { return None };
    let dest = o.dest.as_deref().filter(|d| !d.is_empty() && *d != "-")?;
    use kiln_snapshotter::diff::LayerCompression as Made;
    let as_made = matches!(
        (o.image.layers.compression, layer_compression(outputs)),
        (Compression::Gzip, Made::Gzip) | (Compression::Zstd, Made::Zstd)
    );
    // `.NAME.kiln-PID.layer.tmp`: beside the archive's own temp file, never it.
    let spool = archive::sibling_tmp(Path::new(dest)).with_extension("layer.tmp");
    (matches!(o.kind, Kind::Oci { tar: true } | Kind::Docker { tar: true })
        && platforms == 1
        && as_made
        && o.image.layers.level.is_none()
        && !o.rewrite_timestamp
        && spool.parent().is_some_and(Path::is_dir))
    .then_some(spool)
}

// The room a step leaves before the layer it writes into an archive is what the
// archive writer fills.
const _: () = assert!(kiln_solver::SPOOL_OFFSET == archive::BASE_OFFSET);

/// Gives the store the blob of a layer its step wrote into a spool file that no
/// archive was made of (the export failed, or did not take it).
pub fn keep_spooled(store: &Store, layer: &kiln_solver::cache::Layer, spool: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    if store.has_blob(&layer.digest) {
        return Ok(());
    }
    let mut f =
        std::fs::File::open(spool).with_context(|| format!("opening {}", spool.display()))?;
    f.seek(SeekFrom::Start(kiln_solver::SPOOL_OFFSET))?;
    let tmp = store.tmp_path("layer");
    let r = (|| -> Result<()> {
        let mut out = std::fs::File::create(&tmp)?;
        std::io::copy(&mut f.by_ref().take(layer.size), &mut out)?;
        out.sync_all()?;
        // Checked: the spool is a file beside the output, not the store's own.
        store.commit_blob(&tmp, &layer.digest)?;
        Ok(())
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.with_context(|| format!("keeping layer {} from {}", layer.digest, spool.display()))
}

/// Makes again the blobs of the images' layers that the store lacks (their steps wrote
/// them into an archive: see `kiln_solver::Spool`), but `except`'s, which is in the
/// archive being made.
fn remake_blobs(ctx: &Ctx, except: Option<&str>) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for l in ctx.images.iter().flat_map(|p| &p.built.layers) {
        if l.pulled
            || Some(l.digest.as_str()) == except
            || ctx.store.has_blob(&l.digest)
            || !seen.insert(&l.digest)
        {
            continue;
        }
        let v = ctx.progress.vertex(&format!(
            "making layer {} again from its snapshot",
            l.digest
        ));
        match kiln_solver::remake_blob(ctx.launcher, ctx.store, l) {
            Ok(()) => v.done(),
            Err(e) => {
                v.error(&e.to_string());
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// Splits a CSV record as Go's encoding/csv does (what buildx uses): commas separate
/// fields; a field in double quotes may hold commas, and `""` is a quote.
fn csv_fields(s: &str) -> Result<Vec<String>> {
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
        bail!("unterminated quote in {s:?}");
    }
    out.push(cur);
    Ok(out)
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
                out.image.layers.compression = Compression::parse(v).with_context(|| {
                    format!(
                        "output {spec:?}: compression={v:?} (expected gzip, zstd or uncompressed)"
                    )
                })?
            }
            "compression-level" => {
                out.image.layers.level = Some(
                    v.parse()
                        .ok()
                        .filter(|l| (0..=22).contains(l))
                        .with_context(|| {
                            format!(
                            "output {spec:?}: compression-level={v:?} is not a number from 0 to 22"
                        )
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

/// What the exports made, for `--iidfile` and `--metadata-file`.
#[derive(Default)]
pub struct Exported {
    /// The first image output's image (the first platform's, for several).
    pub image: Option<Image>,
    /// With several platforms: the index over them.
    pub index: Option<Multi>,
    pub names: Vec<String>,
}

/// One target platform's solved build.
pub struct PlatformImage {
    pub platform: Platform,
    pub built: Built,
    /// The target's snapshots, top-first.
    pub lowers: Vec<String>,
}

/// Everything an export needs from the build.
pub struct Ctx<'a> {
    pub store: &'a Store,
    pub launcher: &'a Launcher,
    pub registry: &'a Registry,
    pub runtime: &'a tokio::runtime::Runtime,
    pub progress: &'a Progress,
    /// One per target platform, in `--platform` order.
    pub images: &'a [PlatformImage],
    pub tags: &'a [String],
    pub epoch: Option<u64>,
    /// The top layer its step wrote into the archive's temp file, and that file.
    pub spooled: Option<(kiln_solver::cache::Layer, PathBuf)>,
}

/// Finishes every platform's image with `opts`: the first platform's image, and with
/// several platforms the index over all of them.
pub fn finish_all(
    ctx: &Ctx,
    opts: &ImageOptions,
    index_annotations: BTreeMap<String, String>,
) -> Result<(Image, Option<Multi>)> {
    let (images, store) = (ctx.images, ctx.store);
    remake_blobs(ctx, ctx.spooled.as_ref().map(|(l, _)| l.digest.as_str()))?;
    let imgs = images
        .iter()
        .map(|p| kiln_exporter::finish(&p.built, opts, store))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = imgs.first().cloned() else {
        bail!("the build produced no image");
    };
    if imgs.len() == 1 {
        return Ok((first, None));
    }
    let pairs = images
        .iter()
        .map(|p| p.platform.clone())
        .zip(imgs)
        .collect();
    Ok((first, Some(Multi::new(pairs, index_annotations)?)))
}

/// Runs every output; returns what `--iidfile`/`--metadata-file` report.
pub fn export_all(ctx: &Ctx, outputs: &[Output]) -> Result<Exported> {
    let mut done = Exported::default();
    for o in outputs {
        let names = if o.names.is_empty() {
            ctx.tags.to_vec()
        } else {
            o.names.clone()
        };
        if o.kind == Kind::Local || o.kind == Kind::Tar {
            export_fs(ctx, o)?;
            continue;
        }
        if o.rewrite_timestamp && ctx.epoch.is_none() {
            bail!("rewrite-timestamp=true needs SOURCE_DATE_EPOCH (in the environment or as --build-arg)");
        }
        let mut opts = o.image.clone();
        opts.epoch = ctx.epoch;
        if o.rewrite_timestamp {
            opts.layers.clamp_mtime = ctx.epoch;
        }
        let (img, multi) = finish_all(ctx, &opts, o.index_annotations.clone())?;
        let subject = match &multi {
            Some(m) => archive::Subject::Many(m),
            None => archive::Subject::One(&img),
        };
        let naming = Naming {
            names: names.clone(),
            index_annotations: o.index_annotations.clone(),
            descriptor_annotations: o.descriptor_annotations.clone(),
        };
        match &o.kind {
            Kind::Oci { tar } | Kind::Docker { tar } => {
                let format = if matches!(o.kind, Kind::Oci { .. }) {
                    Format::Oci
                } else {
                    Format::Docker
                };
                let dest = tar_dest(o, *tar)?;
                let what = if format == Format::Oci {
                    "oci image format"
                } else {
                    "docker image format"
                };
                let v = ctx.progress.vertex(&format!("exporting to {what} {dest}"));
                match &multi {
                    Some(m) => {
                        for (p, i) in ctx.images.iter().zip(&m.images) {
                            v.log(&format!(
                                "exporting manifest {} ({})",
                                i.manifest_digest, p.platform
                            ));
                        }
                        v.log(&format!("exporting manifest list {}", m.digest));
                    }
                    None => {
                        v.log(&format!("exporting manifest {}", img.manifest_digest));
                        v.log(&format!("exporting config {}", img.config_digest));
                    }
                }
                let base = ctx
                    .spooled
                    .as_ref()
                    .filter(|_| *tar && dest != "-")
                    .map(|(l, path)| archive::Base {
                        digest: &l.digest,
                        path,
                        offset: kiln_solver::SPOOL_OFFSET,
                    });
                match archive::write(subject, format, &naming, &dest, *tar, ctx.store, base) {
                    Ok(()) => v.done(),
                    Err(e) => {
                        v.error(&e.to_string());
                        return Err(e.into());
                    }
                }
            }
            Kind::Registry => match &multi {
                Some(m) => push_multi(ctx, m, &names)?,
                None => push(ctx, &img, &names)?,
            },
            Kind::Local | Kind::Tar => unreachable!("handled above"),
        }
        if done.image.is_none() {
            done.image = Some(img);
            done.index = multi;
            done.names = names;
        }
    }
    Ok(done)
}

/// The destination of a file output: `dest=`, or stdout when it is not a terminal.
fn tar_dest(o: &Output, tar: bool) -> Result<String> {
    match &o.dest {
        Some(d) if !d.is_empty() => Ok(d.clone()),
        _ if !tar => bail!("an output directory needs dest=DIR"),
        _ if std::io::stdout().is_terminal() => {
            bail!("refusing to write a tar to the terminal: give dest=FILE or redirect stdout")
        }
        _ => Ok("-".into()),
    }
}

fn push(ctx: &Ctx, img: &Image, names: &[String]) -> Result<()> {
    if names.is_empty() {
        bail!("pushing needs a name: -t NAME or name=NAME");
    }
    let v = ctx
        .progress
        .vertex(&format!("pushing {}", names.join(", ")));
    match ctx
        .runtime
        .block_on(kiln_exporter::push(img, names, ctx.registry, ctx.store))
    {
        Ok(list) => {
            for p in &list {
                log_blobs(&v, p);
            }
            v.done();
            for (t, p) in names.iter().zip(&list) {
                println!("{t}: digest: {} size: {}", p.digest, p.size);
            }
            Ok(())
        }
        Err(e) => {
            v.error(&e.to_string());
            Err(e.into())
        }
    }
}

fn log_blobs(v: &kiln_solver::progress::Vertex, p: &kiln_registry::Pushed) {
    for (d, outcome) in &p.blobs {
        let short = d.get(7..19).unwrap_or(d);
        v.log(&match outcome {
            BlobOutcome::Existing => format!("{short}: Layer already exists"),
            BlobOutcome::Uploaded => format!("{short}: Pushed"),
            BlobOutcome::Mounted(from) => format!("{short}: Mounted from {from}"),
        });
    }
}

/// Pushes each platform's image by digest and the index under every name.
fn push_multi(ctx: &Ctx, m: &Multi, names: &[String]) -> Result<()> {
    if names.is_empty() {
        bail!("pushing needs a name: -t NAME or name=NAME");
    }
    let v = ctx.progress.vertex(&format!(
        "pushing {} ({} platforms)",
        names.join(", "),
        m.images.len()
    ));
    match ctx
        .runtime
        .block_on(kiln_exporter::push_multi(m, names, ctx.registry, ctx.store))
    {
        Ok(per_name) => {
            for list in &per_name {
                for p in list {
                    log_blobs(&v, p);
                }
            }
            v.done();
            for (t, list) in names.iter().zip(&per_name) {
                if let Some(index) = list.last() {
                    println!("{t}: digest: {} size: {}", index.digest, index.size);
                }
            }
            Ok(())
        }
        Err(e) => {
            v.error(&e.to_string());
            Err(e.into())
        }
    }
}

/// `type=local` and `type=tar`: the namespace helper copies (or tars) the target's
/// filesystem with files owned by the user.
fn export_fs(ctx: &Ctx, o: &Output) -> Result<()> {
    let tar = o.kind == Kind::Tar;
    let dest = match &o.dest {
        Some(d) if !d.is_empty() => d.clone(),
        _ if tar && !std::io::stdout().is_terminal() => "-".into(),
        _ => bail!("type={} needs dest=", if tar { "tar" } else { "local" }),
    };
    let v = ctx.progress.vertex(&format!(
        "exporting {} to {dest}",
        if tar {
            "the filesystem as a tar"
        } else {
            "the filesystem"
        }
    ));
    let run_for = |lowers: &[String], target: &Path| -> Result<()> {
        let req = Request::ExportFs {
            store: ctx.store.root().to_path_buf(),
            lowers: lowers.to_vec(),
            dest: target.to_path_buf(),
            tar,
        };
        match ctx.launcher.run(&req, &|l: &str| v.log(l))? {
            Response::Exported => Ok(()),
            _ => bail!("the namespace helper gave an unexpected answer to an export"),
        }
    };
    let run = |target: &Path| run_for(&ctx.images[0].lowers, target);
    let result = (|| -> Result<()> {
        if ctx.images.len() > 1 {
            // As buildx: one directory per platform, named like linux_arm64.
            if tar || dest == "-" {
                bail!("type=tar and -o - hold one platform's filesystem: use type=local (a directory per platform) or build one platform");
            }
            let dest = PathBuf::from(&dest);
            std::fs::create_dir_all(&dest)
                .with_context(|| format!("creating {}", dest.display()))?;
            for p in ctx.images {
                run_for(&p.lowers, &dest.join(p.platform.dir_name()))?;
            }
            return Ok(());
        }
        if dest == "-" {
            let tmp = ctx.store.tmp_path("export.tar");
            let r = run(&tmp).and_then(|_| {
                let mut f = std::fs::File::open(&tmp)?;
                std::io::copy(&mut f, &mut std::io::stdout().lock())?;
                Ok(())
            });
            let _ = std::fs::remove_file(&tmp);
            return r;
        }
        let dest = PathBuf::from(&dest);
        if !tar && dest.is_dir() {
            // As buildx: an existing directory gets the files written into it.
            return run(&dest);
        }
        let tmp = archive::sibling_tmp(&dest);
        let r = run(&tmp).and_then(|_| {
            std::fs::rename(&tmp, &dest).with_context(|| format!("renaming to {}", dest.display()))
        });
        if r.is_err() {
            let _ = if tar {
                std::fs::remove_file(&tmp)
            } else {
                std::fs::remove_dir_all(&tmp)
            };
        }
        r
    })();
    match result {
        Ok(()) => {
            v.done();
            Ok(())
        }
        Err(e) => {
            v.error(&e.to_string());
            Err(e)
        }
    }
}

/// `--iidfile`: the image ID (the config digest, as buildx writes it when the
/// exporter reports one).
pub fn write_iidfile(path: &Path, done: &Exported) -> Result<()> {
    if let Some(m) = &done.index {
        // Several platforms have no one config: buildx writes the index's digest.
        return write_atomic(path, m.digest.as_bytes());
    }
    let Some(img) = &done.image else {
        bail!("--iidfile: no output made an image (give -o type=oci|docker|registry)");
    };
    write_atomic(path, img.config_digest.as_bytes())
}

/// `--metadata-file`: the exporter response as buildx writes it.
pub fn write_metadata(path: &Path, done: &Exported) -> Result<()> {
    let mut m = serde_json::Map::new();
    if let Some(index) = &done.index {
        m.insert("containerimage.digest".into(), index.digest.clone().into());
        m.insert(
            "containerimage.descriptor".into(),
            serde_json::to_value(index.descriptor())?,
        );
        if !done.names.is_empty() {
            m.insert("image.name".into(), done.names.join(",").into());
        }
    } else if let Some(img) = &done.image {
        m.insert(
            "containerimage.config.digest".into(),
            img.config_digest.clone().into(),
        );
        m.insert(
            "containerimage.digest".into(),
            img.manifest_digest.clone().into(),
        );
        m.insert(
            "containerimage.descriptor".into(),
            serde_json::to_value(img.descriptor())?,
        );
        if !done.names.is_empty() {
            m.insert("image.name".into(), done.names.join(",").into());
        }
    }
    write_atomic(path, &serde_json::to_vec_pretty(&m)?)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = archive::sibling_tmp(path);
    kiln_snapshotter::store::atomic_write(path, bytes, &tmp)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
