//! `type=oci` and `type=docker`: the image as an OCI layout or a Docker archive, a tar
//! file (or stdout) or a directory; `type=docker` without `dest` (and `--load`) loads
//! it into the local engine, as buildx does.

use super::{Exporter, Kind, Made, Output, Session};
use crate::archive::{self, Format, Naming};
use crate::{bail, Result};
use std::io::IsTerminal;

/// Writes the image (or the index) as an archive.
pub(crate) struct ImageArchive;

impl Exporter for ImageArchive {
    fn export(&self, s: &Session, o: &Output) -> Result<Option<Made>> {
        let (format, tar) = match o.kind {
            Kind::Oci { tar } => (Format::Oci, tar),
            Kind::Docker { tar } => (Format::Docker, tar),
            _ => bail!("not an image archive output"),
        };
        let made = s.image_for(o)?;
        let subject = match &made.index {
            Some(m) => archive::Subject::Many(m),
            None => archive::Subject::One(&made.image),
        };
        let naming = Naming {
            names: made.names.clone(),
            index_annotations: o.index_annotations.clone(),
            descriptor_annotations: o.descriptor_annotations.clone(),
        };
        if o.loads() {
            super::load::load(s, subject, &naming)?;
            return Ok(Some(made));
        }
        let dest = tar_dest(o, tar)?;
        let what = if format == Format::Oci {
            "oci image format"
        } else {
            "docker image format"
        };
        let v = s.progress.vertex(&format!("exporting to {what} {dest}"));
        match &made.index {
            Some(m) => {
                for (p, i) in s.images.iter().zip(&m.images) {
                    v.log(&format!(
                        "exporting manifest {} ({})",
                        i.manifest_digest, p.platform
                    ));
                }
                v.log(&format!("exporting manifest list {}", m.digest));
            }
            None => {
                v.log(&format!(
                    "exporting manifest {}",
                    made.image.manifest_digest
                ));
                v.log(&format!("exporting config {}", made.image.config_digest));
            }
        }
        let base = s
            .spooled
            .as_ref()
            .filter(|_| tar && dest != "-")
            .map(|(l, path)| archive::Base {
                digest: &l.digest,
                path,
                offset: archive::BASE_OFFSET,
            });
        match archive::write(subject, format, &naming, &dest, tar, s.store, base) {
            Ok(()) => v.done(),
            Err(e) => {
                v.error(&e.to_string());
                return Err(e);
            }
        }
        Ok(Some(made))
    }
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
