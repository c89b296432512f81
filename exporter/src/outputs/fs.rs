//! `type=local` and `type=tar`: the target's filesystem, not an image.

use super::{Exporter, Kind, Made, Output, Session};
use crate::{archive, bail, Result};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Copies (or tars) the target's filesystem, with files owned by the user.
pub(crate) struct Filesystem;

impl Exporter for Filesystem {
    fn export(&self, s: &Session, o: &Output) -> Result<Option<Made>> {
        export_fs(s, o)?;
        Ok(None)
    }
}

/// `type=local` and `type=tar`: the namespace helper copies (or tars) the target's
/// filesystem with files owned by the user.
fn export_fs(ctx: &Session, o: &Output) -> Result<()> {
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
        Ok(ctx.executor.export_fs(lowers, target, tar)?)
    };
    let run = |target: &Path| run_for(&ctx.images[0].lowers, target);
    let result = (|| -> Result<()> {
        if ctx.images.len() > 1 {
            // As buildx: one directory per platform, named like linux_arm64.
            if tar || dest == "-" {
                bail!("type=tar and -o - hold one platform's filesystem: use type=local (a directory per platform) or build one platform");
            }
            let dest = PathBuf::from(&dest);
            fs_err::create_dir_all(&dest)?;
            for p in ctx.images {
                run_for(&p.lowers, &dest.join(p.platform.dir_name()))?;
            }
            return Ok(());
        }
        if dest == "-" {
            let tmp = ctx.store.tmp_path("export.tar");
            let r = run(&tmp).and_then(|_| {
                let mut f = fs_err::File::open(&tmp)?;
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
        let r = run(&tmp).and_then(|_| Ok(fs_err::rename(&tmp, &dest)?));
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
