//! A stream that first yields bytes already read from it, then the stream itself.
//!
//! The explicit proxy reads a request head (up to its size limit) to check its bytes
//! before hyper parses it; hyper then reads the same bytes again through this wrapper.
//! After a CONNECT, [`Prefixed::into_parts`] gives back the socket and whatever the
//! client sent early that nobody has read yet.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `pre`, then `inner`.
#[derive(Debug)]
pub struct Prefixed<S> {
    pre: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Read `pre` before `inner`.
    pub fn new(pre: Vec<u8>, inner: S) -> Self {
        Self { pre, pos: 0, inner }
    }

    /// The unread part of the prefix and the stream.
    pub fn into_parts(mut self) -> (Vec<u8>, S) {
        let rest = self.pre.split_off(self.pos);
        (rest, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.pos < me.pre.len() {
            let n = (me.pre.len() - me.pos).min(buf.remaining());
            buf.put_slice(&me.pre[me.pos..me.pos + n]);
            me.pos += n;
            if me.pos == me.pre.len() {
                me.pre = Vec::new();
                me.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test(flavor = "current_thread")]
    async fn prefix_then_stream() {
        let mut p = Prefixed::new(b"abc".to_vec(), &b"def"[..]);
        let mut two = [0u8; 2];
        p.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"ab");
        let (rest, inner) = p.into_parts();
        assert_eq!((rest.as_slice(), inner), (&b"c"[..], &b"def"[..]));
        let mut all = String::new();
        Prefixed::new(b"x".to_vec(), &b"yz"[..])
            .read_to_string(&mut all)
            .await
            .unwrap();
        assert_eq!(all, "xyz");
    }
}
