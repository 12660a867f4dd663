//! Listener limits (from the snapshot's `ListenerSettings`) and the request
//! body cap.
//!
//! | limit | default | what the client sees beyond it |
//! |---|---|---|
//! | `max_connections` | 10000 | the connection is closed at accept, before TLS |
//! | `max_header_bytes` | 65536 | `431` (h1 by the node's server; h2 by the h2 crate) |
//! | `max_headers` | 100 | `431` (h1) |
//! | `max_request_body_bytes` | 10 MiB | `413` (declared length: before any upstream byte; streamed: when the cap is crossed, unless the upstream already answered) |
//! | `h2_max_concurrent_streams` | 256 | `REFUSED_STREAM` past the advertised `SETTINGS_MAX_CONCURRENT_STREAMS` |
//! | `header_read_timeout_ms` | 10000 | h1: `408` then close, once part of a head came |
//! | `idle_timeout_ms` | 60000 | h1: close when no request starts for this long after the last, or the client reads nothing of its answer for this long |
//! | `tls_handshake_timeout_ms` | 10000 | close |

use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::h1_server::H1Settings;

pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_HEADERS: usize = 100;
pub const DEFAULT_MAX_BODY: u64 = 10 * 1024 * 1024;
pub const DEFAULT_H2_STREAMS: u32 = 256;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The compiled listener limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body: u64,
    pub h2_max_streams: u32,
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from_settings(&control_api::pb::ListenerSettings::default())
    }
}

fn or<T: PartialEq + Default>(v: T, default: T) -> T {
    if v == T::default() { default } else { v }
}

impl Limits {
    pub fn from_settings(s: &control_api::pb::ListenerSettings) -> Limits {
        let ms = |v: u32, d: Duration| {
            if v == 0 {
                d
            } else {
                Duration::from_millis(u64::from(v))
            }
        };
        Limits {
            max_connections: or(s.max_connections as usize, DEFAULT_MAX_CONNECTIONS),
            max_header_bytes: or(s.max_header_bytes as usize, DEFAULT_MAX_HEADER_BYTES),
            max_headers: or(s.max_headers as usize, DEFAULT_MAX_HEADERS),
            max_body: or(s.max_request_body_bytes, DEFAULT_MAX_BODY),
            h2_max_streams: or(s.h2_max_concurrent_streams, DEFAULT_H2_STREAMS),
            header_read_timeout: ms(s.header_read_timeout_ms, DEFAULT_HEADER_READ_TIMEOUT),
            tls_handshake_timeout: ms(s.tls_handshake_timeout_ms, DEFAULT_TLS_HANDSHAKE_TIMEOUT),
            idle_timeout: ms(s.idle_timeout_ms, DEFAULT_IDLE_TIMEOUT),
        }
    }

    /// The HTTP servers (the node's HTTP/1.1 server, hyper's h2) for these
    /// limits.
    pub(crate) fn http(&self) -> Http {
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(self.h2_max_streams)
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(30)));
        Http {
            h1: H1Settings {
                limits: h1_codec::RequestLimits {
                    max_head: self.max_header_bytes,
                    max_headers: self.max_headers,
                },
                head_timeout: self.header_read_timeout,
                idle_timeout: self.idle_timeout,
            },
            h2,
        }
    }
}

/// The servers new connections use.
pub(crate) struct Http {
    pub h1: H1Settings,
    pub h2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

/// A request body that fails once more than `limit` bytes went through.
/// A failure that is the client's doing is noted in `fault` as the status
/// to answer with (413 over the limit; 408 or 400 when the client's own
/// body failed, see [`crate::forward::client_body_fault`]): the error
/// itself may not reach the forwarder (hyper's h2 client only resets the
/// stream).
pub(crate) struct CappedBody<B> {
    inner: B,
    left: u64,
    watch: Arc<BodyWatch>,
}

/// What the forwarder learns of a streamed request body as it goes.
#[derive(Debug, Default)]
pub(crate) struct BodyWatch {
    /// The status to answer with for the client's fault; 0: none.
    fault: AtomicU16,
    /// When the body ended (whole, failed, or dropped).
    ended_at: OnceLock<std::time::Instant>,
    end: tokio::sync::Notify,
}

impl BodyWatch {
    /// The client's fault, if its body failed by its doing.
    pub(crate) fn fault(&self) -> Option<http::StatusCode> {
        match self.fault.load(Ordering::Acquire) {
            0 => None,
            s => http::StatusCode::from_u16(s).ok(),
        }
    }

    fn end(&self) {
        if self.ended_at.set(std::time::Instant::now()).is_ok() {
            self.end.notify_waiters();
        }
    }

    /// When the body ended, once it has.
    pub(crate) async fn ended(&self) -> std::time::Instant {
        loop {
            let notified = self.end.notified();
            if let Some(at) = self.ended_at.get() {
                return *at;
            }
            notified.await;
        }
    }
}

impl<B> CappedBody<B> {
    pub(crate) fn new(inner: B, limit: u64, watch: Arc<BodyWatch>) -> Self {
        CappedBody {
            inner,
            left: limit,
            watch,
        }
    }
}

impl<B> Drop for CappedBody<B> {
    fn drop(&mut self) {
        self.watch.end();
    }
}

/// The client sent a body larger than allowed.
#[derive(Debug, thiserror::Error)]
#[error("client request body exceeds the limit")]
pub struct BodyTooLarge;

impl<B> Body for CappedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n = d.len() as u64;
                    if n > this.left {
                        this.watch.fault.store(413, Ordering::Release);
                        this.watch.end();
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    this.left -= n;
                }
                if this.inner.is_end_stream() {
                    this.watch.end();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e: Self::Error = e.into();
                if let Some(status) = crate::forward::client_body_fault(&*e) {
                    this.watch.fault.store(status.as_u16(), Ordering::Release);
                }
                this.watch.end();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.watch.end();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
