//! The outputs of a build (`-o/--output`), one [`Exporter`] per output type: image
//! archives ([`image_archive`]: OCI and Docker, tar or directory), pushes
//! ([`push`]), and the filesystem ([`fs`]: `type=local`, `type=tar`). [`options`]
//! reads `-o` as buildx does; [`metadata`] writes `--iidfile` and `--metadata-file`.
//! Adding an output type is adding a module here and its arm in [`resolve`].

mod fs;
mod image_archive;
mod load;
mod metadata;
pub mod options;
mod push;

pub use metadata::{image_id, write_iidfile, write_metadata};
pub use options::{annotate, parse};

use crate::archive;
use crate::layers::Compression;
use crate::{bail, Built, Error, Image, ImageOptions, Multi, Result};
use kiln_executor::Executor;
use kiln_frontend::Platform;
use kiln_progress::Progress;
use kiln_registry::Registry;
use kiln_snapshotter::records::Layer;
use kiln_snapshotter::Store;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One output type.
pub trait Exporter {
    /// Writes or pushes the build as `o` asks; returns the image it made, for an
    /// output that makes one.
    fn export(&self, s: &Session, o: &Output) -> Result<Option<Made>>;
}

/// The exporter for an output's type.
pub fn resolve(o: &Output) -> Box<dyn Exporter> {
    match o.kind {
        Kind::Oci { .. } | Kind::Docker { .. } => Box::new(image_archive::ImageArchive),
        Kind::Registry => Box::new(push::Push),
        Kind::Local | Kind::Tar => Box::new(fs::Filesystem),
    }
}

/// The outputs a build was asked for: each `-o`, a push for `--push` (unless an
/// output pushes already), a load for `--load` (unless an output loads already);
/// checked against the tags before anything is built.
pub fn plan(specs: &[String], push: bool, load: bool, tags: &[String]) -> Result<Vec<Output>> {
    let mut outputs = specs.iter().map(|o| parse(o)).collect::<Result<Vec<_>>>()?;
    if push && !outputs.iter().any(|o| o.kind == Kind::Registry) {
        outputs.push(parse("type=registry")?);
    }
    if load && !outputs.iter().any(Output::loads) {
        outputs.push(parse("type=docker")?);
    }
    if outputs
        .iter()
        .any(|o| o.kind == Kind::Registry && o.names.is_empty())
        && tags.is_empty()
    {
        bail!("pushing needs at least one -t NAME");
    }
    Ok(outputs)
}

/// The layers the outputs need in the store, and whether as snapshots (a filesystem
/// output) or as blobs: every layer of the images, but for a build whose outputs are
/// all pushes those a push can mount or find on its registry.
pub fn needs(outputs: &[Output], tags: &[String], images: &[PlatformImage]) -> (Vec<Layer>, bool) {
    let snapshots = outputs
        .iter()
        .any(|o| matches!(o.kind, Kind::Local | Kind::Tar));
    let pushes: Vec<&String> = outputs
        .iter()
        .filter(|o| o.kind == Kind::Registry)
        .flat_map(|o| {
            if o.names.is_empty() {
                tags
            } else {
                &o.names[..]
            }
        })
        .collect();
    let only_pushes = !outputs.is_empty() && outputs.iter().all(|o| o.kind == Kind::Registry);
    let layers = images
        .iter()
        .flat_map(|p| p.built.layers.iter().cloned())
        .filter(|l| {
            snapshots
                || !only_pushes
                || !pushes
                    .iter()
                    .all(|t| kiln_registry::can_mount(l.source.as_deref(), t))
        })
        .collect();
    (layers, snapshots)
}

/// An image an output made: the first platform's, the index over several, and the
/// names it went by.
pub struct Made {
    pub image: Image,
    pub index: Option<Multi>,
    pub names: Vec<String>,
}

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

impl Output {
    /// Whether it loads the image into the local engine: `type=docker` without `dest`.
    pub fn loads(&self) -> bool {
        self.kind == (Kind::Docker { tar: true }) && self.dest.as_deref().is_none_or(str::is_empty)
    }
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
/// compresses it (the solver's spool), when that is the whole export: one output, an
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

/// The spool file of a build (see [`spool_path`]), removed (if it is still there:
/// not renamed into the archive) when dropped.
pub struct Spool(Option<PathBuf>);

impl Spool {
    pub fn for_outputs(outputs: &[Output], platforms: usize) -> Spool {
        Spool(spool_path(outputs, platforms))
    }

    /// No spool: every layer's blob goes into the store.
    pub fn none() -> Spool {
        Spool(None)
    }

    pub fn path(&self) -> Option<&Path> {
        self.0.as_deref()
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Gives the store the blob of a layer its step wrote into a spool file that no
/// archive was made of (the export failed, or did not take it).
fn keep_spooled(store: &Store, layer: &Layer, spool: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    if store.has_blob(&layer.digest) {
        return Ok(());
    }
    let mut f = fs_err::File::open(spool)?;
    f.seek(SeekFrom::Start(archive::BASE_OFFSET))?;
    let tmp = store.tmp_path("layer");
    let r = (|| -> Result<()> {
        let mut out = fs_err::File::create(&tmp)?;
        std::io::copy(&mut f.by_ref().take(layer.size), &mut out)?;
        out.sync_all()?;
        // Checked: the spool is a file beside the output, not the store's own.
        store.commit_blob(&tmp, &layer.digest)?;
        Ok(())
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(|e| {
        Error::Options(format!(
            "keeping layer {} from {}: {e}",
            layer.digest,
            spool.display()
        ))
    })
}

/// Makes again the blobs of the images' layers that the store lacks (their steps wrote
/// them into an archive: the solver's spool), but `except`'s, which is in the
/// archive being made.
fn remake_blobs(ctx: &Session, except: Option<&str>) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for l in ctx.images.iter().flat_map(|p| &p.built.layers) {
        // A layer without a snapshot is one an imported cache holds, left there for a
        // push that mounts it.
        if l.pulled
            || Some(l.digest.as_str()) == except
            || ctx.store.has_blob(&l.digest)
            || !ctx.store.snapshot_path(&l.snapshot).is_dir()
            || !seen.insert(&l.digest)
        {
            continue;
        }
        let v = ctx.progress.vertex(&format!(
            "making layer {} again from its snapshot",
            l.digest
        ));
        match kiln_executor::remake_blob(ctx.executor, l) {
            Ok(()) => v.done(),
            Err(e) => {
                v.error(&e.to_string());
                return Err(e.into());
            }
        }
    }
    Ok(())
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
pub struct Session<'a> {
    pub store: &'a Store,
    pub executor: &'a dyn Executor,
    pub registry: &'a Registry,
    pub runtime: &'a tokio::runtime::Handle,
    pub progress: &'a Progress,
    /// One per target platform, in `--platform` order.
    pub images: &'a [PlatformImage],
    pub tags: &'a [String],
    pub epoch: Option<u64>,
    /// The top layer its step wrote into the archive's temp file, and that file.
    pub spooled: Option<(Layer, PathBuf)>,
}

/// Finishes every platform's image with `opts`: the first platform's image, and with
/// several platforms the index over all of them.
pub fn finish_all(
    ctx: &Session,
    opts: &ImageOptions,
    index_annotations: BTreeMap<String, String>,
) -> Result<(Image, Option<Multi>)> {
    let (images, store) = (ctx.images, ctx.store);
    remake_blobs(ctx, ctx.spooled.as_ref().map(|(l, _)| l.digest.as_str()))?;
    let imgs = images
        .iter()
        .map(|p| crate::finish(&p.built, opts, store))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = imgs.first().cloned() else {
        return Err(Error::Assemble("the build produced no image".into()));
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

/// Runs every output, then reports the build's image: the first image output's, or
/// (with none) the one an image output with default options would make, so that its
/// digest is shown. A top layer spooled for an archive that was not made goes into
/// the store.
pub fn export_all(ctx: &Session, outputs: &[Output]) -> Result<Exported> {
    let exported = export_each(ctx, outputs);
    if let Some((layer, path)) = &ctx.spooled {
        // Not made into the archive (the export failed): the store keeps the layer.
        if path.exists() {
            if let Err(e) = keep_spooled(ctx.store, layer, path) {
                // It can be made again from its snapshot.
                tracing::warn!("{e}");
            }
        }
    }
    let mut done = exported?;
    if done.image.is_none() {
        let opts = ImageOptions {
            epoch: ctx.epoch,
            ..Default::default()
        };
        let (img, index) = finish_all(ctx, &opts, BTreeMap::new())?;
        done.image = Some(img);
        done.index = index;
        done.names = ctx.tags.to_vec();
    }
    Ok(done)
}

fn export_each(ctx: &Session, outputs: &[Output]) -> Result<Exported> {
    let mut done = Exported::default();
    for o in outputs {
        let made = resolve(o).export(ctx, o)?;
        if let (None, Some(m)) = (&done.image, made) {
            done.image = Some(m.image);
            done.index = m.index;
            done.names = m.names;
        }
    }
    Ok(done)
}

impl Session<'_> {
    /// The names an output pushes or tags: its own `name=`, else `-t`.
    fn names_for(&self, o: &Output) -> Vec<String> {
        if o.names.is_empty() {
            self.tags.to_vec()
        } else {
            o.names.clone()
        }
    }

    /// Finishes the image (and index) as an image output `o` wants it.
    fn image_for(&self, o: &Output) -> Result<Made> {
        if o.rewrite_timestamp && self.epoch.is_none() {
            bail!("rewrite-timestamp=true needs SOURCE_DATE_EPOCH (in the environment or as --build-arg)");
        }
        let mut opts = o.image.clone();
        opts.epoch = self.epoch;
        if o.rewrite_timestamp {
            opts.layers.clamp_mtime = self.epoch;
        }
        let (image, index) = finish_all(self, &opts, o.index_annotations.clone())?;
        Ok(Made {
            image,
            index,
            names: self.names_for(o),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_executor::fake::{Call, Recording};

    #[test]
    fn the_filesystem_outputs_go_through_the_executor() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = Store::open(d.path().join("store")).expect("store");
        let exec = Recording::new(store.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let registry = Registry::new();
        let progress = Progress::new(kiln_progress::Mode::Quiet);
        let built = Built::default();
        let images = [PlatformImage {
            platform: Platform::host(),
            built,
            lowers: vec!["top".into(), "base".into()],
        }];
        let session = Session {
            store: &store,
            executor: &exec,
            registry: &registry,
            runtime: runtime.handle(),
            progress: &progress,
            images: &images,
            tags: &[],
            epoch: None,
            spooled: None,
        };
        let dest = d.path().join("out");
        let o = parse(&format!("type=local,dest={}", dest.display())).expect("parse");
        assert!(resolve(&o).export(&session, &o).expect("export").is_none());
        assert!(matches!(
            exec.calls().last(),
            Some(Call::ExportFs { lowers, tar: false, .. }) if lowers == &["top", "base"]
        ));
    }
}
