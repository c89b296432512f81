//! A layer blob made again from its snapshot.

use crate::{Error, Executor, LayerCompression, Result};
use kiln_snapshotter::records::Layer;

/// Makes `layer`'s blob again from its snapshot, for a store that has the snapshot but
/// not the blob (its step wrote the blob into an archive: the solver's spool). The
/// executor walks the snapshot as the step walked its upper directory, so the blob
/// comes out the same; it is checked against the layer's digests before it is stored.
pub fn remake_blob(executor: &dyn Executor, layer: &Layer) -> Result<()> {
    let store = executor.store();
    let compression = if layer.media_type.ends_with("zstd") {
        LayerCompression::Zstd
    } else {
        LayerCompression::Gzip
    };
    let tmp = store.tmp_path("layer");
    let what = |why: String| Error::Remake {
        layer: layer.digest.clone(),
        why,
    };
    let result = match executor.make_layer(&layer.snapshot, &tmp, compression) {
        Ok(d) if d.digest == layer.digest && d.diff_id == layer.diff_id => store
            .commit_blob_trusted(&tmp, &layer.digest)
            .map_err(Error::from),
        Ok(d) => Err(what(format!(
            "snapshot {} now gives {} (diffID {}), not the recorded {} (diffID {}); build again with --no-cache",
            layer.snapshot, d.digest, d.diff_id, layer.digest, layer.diff_id
        ))),
        Err(e) => Err(what(e.to_string())),
    };
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Call, Recording};
    use kiln_snapshotter::Store;

    fn layer(exec: &Recording, id: &str) -> Layer {
        // What the fake makes of snapshot `id`, made once to learn its digests.
        let tmp = exec.store().tmp_path("probe-layer");
        let d = exec
            .make_layer(id, &tmp, LayerCompression::Gzip)
            .expect("layer");
        let _ = std::fs::remove_file(&tmp);
        Layer {
            diff_id: d.diff_id,
            digest: d.digest,
            size: d.size,
            media_type: kiln_snapshotter::diff::MEDIA_TYPE_GZIP.into(),
            snapshot: id.into(),
            pulled: false,
            source: None,
        }
    }

    #[test]
    fn a_blob_made_again_is_stored_only_when_it_is_the_recorded_one() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = Store::open(d.path().join("store")).expect("store");
        let exec = Recording::new(store.clone());
        let good = layer(&exec, "snap-a");
        remake_blob(&exec, &good).expect("remade");
        assert!(store.has_blob(&good.digest));
        // A snapshot that now gives other bytes than recorded is refused, and no blob
        // or temp file stays behind.
        let mut stale = layer(&exec, "snap-b");
        stale.snapshot = "snap-c".into();
        let e = remake_blob(&exec, &stale).expect_err("differs");
        assert!(e.to_string().contains("build again with --no-cache"), "{e}");
        assert!(!store.has_blob(&stale.digest));
        assert_eq!(
            std::fs::read_dir(store.root().join("tmp"))
                .map(|r| r.count())
                .unwrap_or(0),
            0
        );
        assert!(exec.calls().contains(&Call::MakeLayer {
            id: "snap-c".into()
        }));
    }
}
