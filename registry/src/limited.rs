//! A writer that takes at most the number of bytes a descriptor declares: a registry
//! that sends more (an endless body, a blob larger than its manifest says) is stopped
//! at that size rather than filling the disk.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;

/// The error a [`Limited`] writer fails with; carries how many bytes had been offered.
#[derive(Debug)]
pub(crate) struct Overrun(pub u64);

impl std::fmt::Display for Overrun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "more than the declared size ({} bytes or more)", self.0)
    }
}

impl std::error::Error for Overrun {}

pub(crate) struct Limited<W> {
    inner: W,
    left: Option<u64>,
    seen: u64,
}

impl<W> Limited<W> {
    /// `limit`: `None` for no bound.
    pub(crate) fn new(inner: W, limit: Option<u64>) -> Self {
        Limited {
            inner,
            left: limit,
            seen: 0,
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Limited<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(left) = self.left {
            if buf.len() as u64 > left {
                let seen = self.seen + buf.len() as u64;
                return Poll::Ready(Err(io::Error::other(Overrun(seen))));
            }
        }
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            this.seen += *n as u64;
            if let Some(left) = this.left.as_mut() {
                *left -= *n as u64;
            }
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The byte count of an [`Overrun`] inside a registry client error.
pub(crate) fn overrun(e: &oci_client::errors::OciDistributionError) -> Option<u64> {
    match e {
        oci_client::errors::OciDistributionError::IoError(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Overrun>())
            .map(|o| o.0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn stops_at_the_declared_size() {
        let mut w = Limited::new(Vec::new(), Some(4));
        w.write_all(b"abcd").await.expect("within the size");
        let e = w.write_all(b"e").await.expect_err("past the size");
        assert_eq!(
            e.get_ref()
                .and_then(|i| i.downcast_ref::<Overrun>())
                .map(|o| o.0),
            Some(5)
        );
        assert_eq!(w.inner, b"abcd");
        let mut free = Limited::new(Vec::new(), None);
        free.write_all(&[0; 100]).await.expect("no bound");
    }
}
