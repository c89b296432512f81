//! sha256 digests computed while data streams through.

use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};

/// Formats a finished hash as `sha256:<hex>`.
pub fn format(h: Sha256) -> String {
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// The digest of a byte slice.
pub fn of(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    format(h)
}

/// Checks the `sha256:<64 lowercase hex>` form and returns the hex part.
pub fn hex_part(digest: &str) -> crate::Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(h)
            if h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(h)
        }
        _ => Err(crate::Error::BadDigest(digest.to_string())),
    }
}

/// A writer that hashes and counts what passes through it.
pub struct HashWriter<W> {
    inner: W,
    hash: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }

    /// Returns the inner writer, the digest and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, format(self.hash), self.count)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what is read through it.
pub struct HashReader<R> {
    inner: R,
    hash: Sha256,
    count: u64,
}

impl<R: Read> HashReader<R> {
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }

    /// How many bytes were read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The digest of what was read so far.
    pub fn digest(&self) -> String {
        format(self.hash.clone())
    }

    /// Reads to the end and returns the digest and byte count.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((format(self.hash), self.count))
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A file writer that starts writeback of each [`WRITE_BEHIND`] bytes as soon as they
/// are written, so that the disk works while the writer computes (compresses a layer,
/// say) and the fsync at the end has little left to wait for. Without it, a 500 MB
/// blob sits in the page cache until fsync, which then writes all of it at disk speed
/// after the CPU work is done.
pub struct WriteBehind {
    file: std::fs::File,
    written: u64,
    started: u64,
}

/// How much is written between two writeback requests.
pub const WRITE_BEHIND: u64 = 8 << 20;

impl WriteBehind {
    pub fn new(file: std::fs::File) -> Self {
        Self::at(file, 0)
    }

    /// For a file whose position is `offset`: writeback requests name the ranges
    /// actually written.
    pub fn at(file: std::fs::File, offset: u64) -> Self {
        WriteBehind {
            file,
            written: offset,
            started: offset,
        }
    }

    /// The file, with everything written handed to the kernel (not yet synced).
    pub fn into_inner(self) -> std::fs::File {
        self.file
    }
}

impl Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITE_BEHIND {
            crate::sys::start_writeback(&self.file, self.started, self.written - self.started);
            self.started = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        assert_eq!(
            of(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut w = HashWriter::new(Vec::new());
        w.write_all(b"abc").expect("write");
        let (v, d, n) = w.finish();
        assert_eq!((v.len(), n), (3, 3));
        assert_eq!(d, of(b"abc"));
        assert!(hex_part(&d).is_ok());
        assert!(hex_part("sha256:../../etc").is_err());
    }

    #[test]
    fn write_behind_writes_everything_across_its_writeback_windows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("blob");
        let mut w = WriteBehind::new(std::fs::File::create(&path).expect("create"));
        // Odd-sized writes, crossing several windows and ending mid-window.
        let data: Vec<u8> = (0..(2 * WRITE_BEHIND as usize + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        for chunk in data.chunks(1 << 19 | 3) {
            w.write_all(chunk).expect("write");
        }
        w.into_inner().sync_all().expect("sync");
        assert_eq!(std::fs::read(&path).expect("read"), data);
    }
}
