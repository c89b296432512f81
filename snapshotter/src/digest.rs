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
}
