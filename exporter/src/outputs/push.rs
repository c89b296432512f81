//! `type=registry` (and `type=image,push=true`): the image pushed under every name,
//! or with several platforms each image by digest and the index under every name.

use super::{Exporter, Made, Session};
use crate::{bail, Image, Multi, Result};
use kiln_progress::Vertex;
use kiln_registry::BlobOutcome;

/// Pushes the image (or the index) to a registry.
pub(crate) struct Push;

impl Exporter for Push {
    fn export(&self, s: &Session, o: &super::Output) -> Result<Option<Made>> {
        let made = s.image_for(o)?;
        match &made.index {
            Some(m) => push_multi(s, m, &made.names)?,
            None => push(s, &made.image, &made.names)?,
        }
        Ok(Some(made))
    }
}

fn push(ctx: &Session, img: &Image, names: &[String]) -> Result<()> {
    if names.is_empty() {
        bail!("pushing needs a name: -t NAME or name=NAME");
    }
    let v = ctx
        .progress
        .vertex(&format!("pushing {}", names.join(", ")));
    match ctx
        .runtime
        .block_on(crate::push(img, names, ctx.registry, ctx.store))
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
            Err(e)
        }
    }
}

fn log_blobs(v: &Vertex, p: &kiln_registry::Pushed) {
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
fn push_multi(ctx: &Session, m: &Multi, names: &[String]) -> Result<()> {
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
        .block_on(crate::push_multi(m, names, ctx.registry, ctx.store))
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
            Err(e)
        }
    }
}
