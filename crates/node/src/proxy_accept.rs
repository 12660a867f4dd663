//! Reading a PROXY header (v1 or v2) off the start of a stream.
//!
//! The reader never loses bytes: whatever it read past the header (or, when
//! the stream does not start with a PROXY signature and that is allowed, the
//! bytes it looked at) is replayed by the returned [`Rewind`] stream, so the
//! TLS handshake that follows sees the stream from its first byte.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::ProxyProtocolMode;
use crate::pp::{self, Decoded, Header};

/// The 12-byte PROXY v2 signature.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The PROXY v1 signature.
const V1_SIG: &[u8; 6] = b"PROXY ";
/// The longest v1 line, CRLF included.
const V1_MAX: usize = 107;
/// Signature, version/command, family, length.
const V2_FIXED: usize = 16;

/// Why a connection was refused before TLS.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("connection does not start with a PROXY header")]
    Missing,
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    #[error("connection closed before the PROXY header was complete")]
    Closed,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

/// A stream that first replays some bytes already read from it.
#[derive(Debug)]
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    /// Nothing to replay.
    pub fn new(inner: T) -> Self {
        Rewind {
            prefix: Bytes::new(),
            inner,
        }
    }

    /// Replays `prefix` before reading from `inner`.
    pub fn with_prefix(inner: T, prefix: impl Into<Bytes>) -> Self {
        Rewind {
            prefix: prefix.into(),
            inner,
        }
    }

    /// The bytes still to be replayed.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// The bytes not yet replayed, and the stream.
    pub fn into_parts(self) -> (Bytes, T) {
        (self.prefix, self.inner)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Reads a PROXY header (v1 or v2) from the start of `stream` within
/// `timeout`, without losing the bytes after it.
///
/// * `Off`: reads nothing, returns `(None, stream)`.
/// * `Optional`: `(None, stream)` if the stream does not start with a PROXY
///   signature; the bytes looked at are replayed by the returned stream.
/// * `Required`: [`AcceptError::Missing`] in that case.
///
/// A header that starts with a signature but does not parse is always an
/// error. A v1 `UNKNOWN` header is returned without addresses
/// (`source()` is `None`): use the socket's.
pub async fn read_proxy_header(
    stream: TcpStream,
    mode: ProxyProtocolMode,
    timeout: Duration,
) -> Result<(Option<Header>, Rewind<TcpStream>), AcceptError> {
    read_proxy_header_from(stream, mode, timeout).await
}

/// [`read_proxy_header`] for any stream.
pub async fn read_proxy_header_from<T>(
    mut stream: T,
    mode: ProxyProtocolMode,
    timeout: Duration,
) -> Result<(Option<Header>, Rewind<T>), AcceptError>
where
    T: AsyncRead + Unpin,
{
    if mode == ProxyProtocolMode::Off {
        return Ok((None, Rewind::new(stream)));
    }
    match tokio::time::timeout(timeout, read_header(&mut stream, mode)).await {
        Err(_) => Err(AcceptError::Timeout(timeout)),
        Ok(Err(e)) => Err(e),
        Ok(Ok((header, rest))) => Ok((header, Rewind::with_prefix(stream, rest))),
    }
}

enum Kind {
    V1,
    V2,
    NotProxy,
    NeedMore,
}

fn classify(buf: &[u8]) -> Kind {
    if buf.len() >= V2_SIG.len() && buf[..V2_SIG.len()] == V2_SIG[..] {
        return Kind::V2;
    }
    if buf.len() >= V1_SIG.len() && buf[..V1_SIG.len()] == V1_SIG[..] {
        return Kind::V1;
    }
    let n = buf.len();
    let maybe_v2 = n < V2_SIG.len() && V2_SIG[..n] == buf[..];
    let maybe_v1 = n < V1_SIG.len() && V1_SIG[..n] == buf[..];
    if maybe_v1 || maybe_v2 {
        Kind::NeedMore
    } else {
        Kind::NotProxy
    }
}

/// Reads into `buf` until it holds `want` bytes (never more).
async fn fill_to<T: AsyncRead + Unpin>(
    stream: &mut T,
    buf: &mut Vec<u8>,
    want: usize,
) -> Result<(), AcceptError> {
    let start = buf.len();
    if start >= want {
        return Ok(());
    }
    buf.resize(want, 0);
    let mut filled = start;
    while filled < want {
        let n = stream.read(&mut buf[filled..want]).await?;
        if n == 0 {
            buf.truncate(filled);
            return Err(AcceptError::Closed);
        }
        filled += n;
    }
    Ok(())
}

/// Returns the header (if any) and the bytes read past it.
async fn read_header<T: AsyncRead + Unpin>(
    stream: &mut T,
    mode: ProxyProtocolMode,
) -> Result<(Option<Header>, Vec<u8>), AcceptError> {
    let mut buf: Vec<u8> = Vec::with_capacity(V2_FIXED + 64);
    // Look at the first bytes until they tell a PROXY signature from anything
    // else. Reads never go past the 16-byte v2 prefix.
    let kind = loop {
        match classify(&buf) {
            Kind::NeedMore => {
                let filled = buf.len();
                buf.resize(V2_FIXED, 0);
                let n = stream.read(&mut buf[filled..]).await?;
                buf.truncate(filled + n);
                if n == 0 {
                    return Err(AcceptError::Closed);
                }
            }
            k => break k,
        }
    };
    match kind {
        Kind::NotProxy | Kind::NeedMore => match mode {
            ProxyProtocolMode::Required => Err(AcceptError::Missing),
            _ => Ok((None, buf)),
        },
        Kind::V2 => {
            fill_to(stream, &mut buf, V2_FIXED).await?;
            let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
            fill_to(stream, &mut buf, V2_FIXED + len).await?;
            match pp::decode(&buf) {
                Ok(Decoded::Complete { header, consumed }) => {
                    let rest = buf.get(consumed..).unwrap_or_default().to_vec();
                    Ok((Some(header), rest))
                }
                Ok(Decoded::Incomplete { .. }) => Err(AcceptError::Malformed(
                    "v2 header shorter than its declared length".into(),
                )),
                Err(e) => Err(AcceptError::Malformed(e.to_string())),
            }
        }
        Kind::V1 => {
            let end = loop {
                if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
                    break pos + 2;
                }
                if buf.len() >= V1_MAX {
                    return Err(AcceptError::Malformed("v1 line too long".into()));
                }
                let mut byte = [0u8; 1];
                if stream.read(&mut byte).await? == 0 {
                    return Err(AcceptError::Closed);
                }
                buf.push(byte[0]);
            };
            if end > V1_MAX {
                return Err(AcceptError::Malformed("v1 line too long".into()));
            }
            match pp::decode(&buf[..end]) {
                Ok(Decoded::Complete { header, consumed }) if consumed == end => {
                    Ok((Some(header), buf[end..].to_vec()))
                }
                Ok(_) => Err(AcceptError::Malformed("v1 line not understood".into())),
                Err(e) => Err(AcceptError::Malformed(e.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::AsyncWriteExt;

    async fn run(
        input: &[u8],
        mode: ProxyProtocolMode,
    ) -> Result<(Option<Header>, Vec<u8>), AcceptError> {
        let (mut a, b) = tokio::io::duplex(4096);
        a.write_all(input).await.expect("write");
        drop(a);
        let (h, mut rest) = read_proxy_header_from(b, mode, Duration::from_secs(1)).await?;
        let mut out = Vec::new();
        rest.read_to_end(&mut out).await.expect("read rest");
        Ok((h, out))
    }

    #[tokio::test]
    async fn v2_header_then_payload() {
        let src: SocketAddr = "203.0.113.9:5555".parse().expect("addr");
        let dst: SocketAddr = "10.0.0.1:443".parse().expect("addr");
        let mut input = Header::proxy(src, dst)
            .with_tlv(pp::tlv::AUTHORITY, b"example.com".to_vec())
            .to_bytes()
            .expect("encode");
        input.extend_from_slice(b"\x16\x03\x01hello");
        let (h, rest) = run(&input, ProxyProtocolMode::Required).await.expect("ok");
        let h = h.expect("header");
        assert_eq!(h.source(), Some(src));
        assert_eq!(h.destination(), Some(dst));
        assert_eq!(rest, b"\x16\x03\x01hello");
    }

    #[tokio::test]
    async fn v1_header_then_payload() {
        let (h, rest) = run(
            b"PROXY TCP4 203.0.113.9 10.0.0.1 5555 443\r\nGET / HTTP/1.1\r\n",
            ProxyProtocolMode::Required,
        )
        .await
        .expect("ok");
        assert_eq!(
            h.expect("header").source(),
            Some("203.0.113.9:5555".parse().expect("addr"))
        );
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let (h, rest) = run(b"PROXY UNKNOWN\r\nxy", ProxyProtocolMode::Required)
            .await
            .expect("ok");
        assert_eq!(h.expect("header").source(), None);
        assert_eq!(rest, b"xy");
    }

    #[tokio::test]
    async fn optional_without_header_replays_everything() {
        let input = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 and more than sixteen bytes";
        let (h, rest) = run(input, ProxyProtocolMode::Optional).await.expect("ok");
        assert!(h.is_none());
        assert_eq!(rest, input);
        // A prefix of the v2 signature that then diverges.
        let input = b"\r\n\r\nnot proxy at all";
        let (h, rest) = run(input, ProxyProtocolMode::Optional).await.expect("ok");
        assert!(h.is_none());
        assert_eq!(rest, input);
    }

    #[tokio::test]
    async fn required_refuses_missing_and_malformed() {
        assert!(matches!(
            run(
                b"\x16\x03\x01 hello there, TLS",
                ProxyProtocolMode::Required
            )
            .await,
            Err(AcceptError::Missing)
        ));
        // Right signature, version 2, bad command/family.
        let mut bad = V2_SIG.to_vec();
        bad.extend_from_slice(&[0x2f, 0x99, 0x00, 0x00]);
        assert!(matches!(
            run(&bad, ProxyProtocolMode::Optional).await,
            Err(AcceptError::Malformed(_))
        ));
        assert!(matches!(
            run(
                b"PROXY TCP4 1.2.3.4 nope 1 2\r\n",
                ProxyProtocolMode::Optional
            )
            .await,
            Err(AcceptError::Malformed(_))
        ));
        assert!(matches!(
            run(&[b'P'; 200], ProxyProtocolMode::Optional).await,
            Ok((None, _))
        ));
        let mut long = b"PROXY ".to_vec();
        long.extend_from_slice(&[b'x'; 200]);
        assert!(matches!(
            run(&long, ProxyProtocolMode::Optional).await,
            Err(AcceptError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn times_out() {
        let (_a, b) = tokio::io::duplex(64);
        let r =
            read_proxy_header_from(b, ProxyProtocolMode::Required, Duration::from_millis(50)).await;
        assert!(matches!(r, Err(AcceptError::Timeout(_))));
    }
}
