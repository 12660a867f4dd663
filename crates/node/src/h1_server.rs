//! The node's HTTP/1.1 server: one client connection, request after
//! request, in the connection's own task.
//!
//! The protocol half (parsing and validating request heads, writing
//! response heads) is `h1_codec`; this is the I/O half. A connection is a
//! read buffer, a write buffer and the stream. For each request:
//!
//! 1. the head is read and parsed (a head over `max_head` bytes or with
//!    too many lines: 431; a malformed one or a smuggling shape: 400; a
//!    head not complete within the head timeout: 408; then close);
//! 2. the request goes to [`forward::handle`] with a body that the
//!    connection fills as the handler asks for it (`Expect: 100-continue`
//!    is answered when it first asks, never when it answers without
//!    reading the body); a body already read with the head is handed over
//!    whole;
//! 3. the response head and body are written as the body comes, with
//!    Content-Length when the length is known, else chunked (close-
//!    delimited for HTTP/1.0 clients); the head and the first data go out
//!    in one write.
//!
//! The connection is kept for another request when the client allows it,
//! the response does not say `close`, the request body was read to its end
//! and the node is not draining. While waiting for the next head the
//! connection is dropped after the idle timeout, or at once when the node
//! drains. A client that stops reading its answer is dropped after the
//! idle timeout too (HAProxy's `timeout client`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h1_codec::{
    ChunkedDecoder, RequestError, RequestFraming, RequestHead, RequestLimits, ResponseFraming,
};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::poll_read_buf;

use crate::cluster::now_ms;
use crate::forward::{self, ConnCtx, ProxyBody};
use crate::stop::ConnStop;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Read buffer size; the buffer grows up to the head limit for a long head.
const READ_CHUNK: usize = 4096;
/// Response bytes buffered before the body is asked for more.
const WRITE_HIGH: usize = 64 * 1024;
/// How long, and how many bytes, a closing connection reads and drops.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;
/// Write buffer capacity kept between requests.
const WRITE_KEEP: usize = 16 * 1024;

/// The server's settings, from the listener limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct H1Settings {
    pub limits: RequestLimits,
    /// From the first byte of a head to its end.
    pub head_timeout: Duration,
    /// Waiting for the next request, or for the client to read.
    pub idle_timeout: Duration,
}

/// Why a connection ended other than by a clean close.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("client request refused: {0}")]
    Request(#[from] RequestError),
    #[error("client sent no complete request head in time")]
    HeadTimeout,
    #[error("client idle past the timeout")]
    Idle,
    #[error("client connection: {0}")]
    Io(#[from] io::Error),
    #[error("response body failed: {0}")]
    Body(String),
}

/// What came first on a connection.
pub(crate) enum Start {
    /// An HTTP/2 preface: hand these bytes and the stream to the h2 server.
    H2(Bytes),
    /// HTTP/1.x (or nothing: the connection ended).
    H1,
}

/// A client connection speaking HTTP/1.1.
pub(crate) struct Conn<IO> {
    io: IO,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    wpos: usize,
    /// Fills the current request's body.
    pump: Option<Pump>,
    /// The current request's body was not read to its end.
    body_unread: bool,
    /// Requests served.
    requests: u64,
    timer: IdleTimer,
    settings: H1Settings,
}

/// A client stream whose readiness can be awaited before any read buffer
/// exists, so a connection waiting for its next request holds none.
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Unpin {
    /// Ready when a read would make progress (bytes, EOF or an error on
    /// the socket, or data already buffered above it).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ClientIo for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

impl<T: ClientIo> ClientIo for crate::proxy_accept::Rewind<T> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.prefix().is_empty() {
            self.get_ref().poll_read_ready(cx)
        } else {
            Poll::Ready(Ok(()))
        }
    }
}

impl<T: ClientIo + ?Sized> ClientIo for Box<T> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_read_ready(cx)
    }
}

impl<T: ClientIo> ClientIo for tokio_rustls::server::TlsStream<T> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (io, conn) = self.get_ref();
        // Plaintext (or a close) already decrypted: a read returns it.
        if !conn.wants_read() {
            return Poll::Ready(Ok(()));
        }
        io.poll_read_ready(cx)
    }
}

impl<IO: ClientIo> Conn<IO> {
    /// `buf`: bytes already read from `io`.
    pub(crate) fn with_buf(io: IO, buf: BytesMut, settings: H1Settings) -> Self {
        Conn {
            io,
            rbuf: buf,
            wbuf: Vec::new(),
            wpos: 0,
            pump: None,
            body_unread: false,
            requests: 0,
            timer: IdleTimer::new(),
            settings,
        }
    }

    /// Reads until an HTTP/2 preface is ruled in or out (plain listeners
    /// take h2 with prior knowledge). The bytes read stay for the h1 side.
    /// The first request has the head timeout from here, idle or not
    /// (HAProxy's `timeout http-request`).
    /// A connection that has sent nothing when the node drains is closed
    /// (as [`Start::H1`] with nothing read: `serve` then ends at once).
    pub(crate) async fn sniff(&mut self, stop: &ConnStop) -> Result<Start, ConnError> {
        self.timer.arm(self.settings.head_timeout);
        loop {
            let n = self.rbuf.len().min(H2_PREFACE.len());
            if self.rbuf[..n] != H2_PREFACE[..n] {
                return Ok(Start::H1);
            }
            if n == H2_PREFACE.len() {
                return Ok(Start::H2(self.rbuf.split().freeze()));
            }
            self.rbuf.reserve(READ_CHUNK);
            let idle = self.rbuf.is_empty();
            let read = std::future::poll_fn(|cx| {
                if idle && stop.poll_drained(cx).is_ready() {
                    return Poll::Ready(Ok(0));
                }
                if self.timer.poll_expired(cx).is_ready() {
                    return Poll::Ready(Err(ConnError::Idle));
                }
                poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf).map_err(ConnError::Io)
            })
            .await?;
            if read == 0 {
                return Ok(Start::H1);
            }
        }
    }

    /// The stream, once the connection is handed to the h2 server.
    pub(crate) fn into_io(self) -> IO {
        self.io
    }

    /// Serves requests until the client or the node ends the connection.
    pub(crate) async fn serve(
        mut self,
        ctx: Arc<ConnCtx>,
        stop: &ConnStop,
    ) -> Result<(), ConnError> {
        loop {
            let head = match self.read_head(stop).await {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(()),
                Err(e) => {
                    let status = match &e {
                        ConnError::Request(r) => Some(r.status()),
                        ConnError::HeadTimeout => Some(StatusCode::REQUEST_TIMEOUT),
                        _ => None,
                    };
                    if let Some(status) = status {
                        ctx.node.metrics.count_request("", "", status.as_u16(), 0.0);
                        h1_codec::encode_response_head(
                            &mut self.wbuf,
                            status,
                            &HeaderMap::new(),
                            &[(&header::DATE, &http_date()), (&header::CONNECTION, &CLOSE)],
                            ResponseFraming::Length(0),
                        );
                        // Best effort: the client may be gone.
                        if std::future::poll_fn(|cx| self.poll_write_out(cx))
                            .await
                            .is_ok()
                        {
                            self.linger().await;
                        }
                    }
                    return Err(e);
                }
            };
            if !self.exchange(&ctx, head).await? {
                if self.pump.is_some() || self.body_unread {
                    // A request body left unread.
                    self.linger().await;
                } else {
                    let _ =
                        std::future::poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await;
                }
                return Ok(());
            }
        }
    }

    /// Closes the write side, then reads and drops what the client still
    /// sends (a body the node did not want), for a bounded time and amount:
    /// closing with unread bytes makes the kernel send a reset, which can
    /// destroy the answer before the client reads it (nginx's lingering
    /// close).
    async fn linger(&mut self) {
        self.pump = None;
        if std::future::poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx))
            .await
            .is_err()
        {
            return;
        }
        let mut left = LINGER_BYTES;
        let drain = async {
            loop {
                self.rbuf.clear();
                if self.rbuf.capacity() < READ_CHUNK {
                    self.rbuf.reserve(READ_CHUNK);
                }
                match std::future::poll_fn(|cx| {
                    poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
                })
                .await
                {
                    Ok(n) if n > 0 && n < left => left -= n,
                    _ => return,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    }

    /// The next request head; `None` when the client closed, went idle
    /// past the timeout, or the node drains, between requests.
    async fn read_head(&mut self, stop: &ConnStop) -> Result<Option<RequestHead>, ConnError> {
        // The first head's timer runs since the connection started.
        let mut armed_for_head = self.requests == 0;
        if self.rbuf.is_empty() && !armed_for_head {
            self.timer.arm(self.settings.idle_timeout);
            // Between requests the connection keeps no read buffer (as
            // HAProxy and nginx): one is taken when the next request's
            // bytes come.
            put_read_buf(std::mem::take(&mut self.rbuf));
        }
        loop {
            if let Some(head) = h1_codec::parse_request(&mut self.rbuf, self.settings.limits)? {
                self.timer.disarm();
                return Ok(Some(head));
            }
            if !self.rbuf.is_empty() && !armed_for_head {
                armed_for_head = true;
                self.timer.arm(self.settings.head_timeout);
            }
            let idle = self.rbuf.is_empty();
            let read = std::future::poll_fn(|cx| {
                if idle && stop.poll_drained(cx).is_ready() {
                    return Poll::Ready(Ok(None));
                }
                if self.timer.poll_expired(cx).is_ready() {
                    return Poll::Ready(if idle {
                        Ok(None)
                    } else {
                        Err(ConnError::HeadTimeout)
                    });
                }
                if self.rbuf.capacity() == 0 {
                    ready!(self.io.poll_read_ready(cx)).map_err(ConnError::Io)?;
                    self.rbuf = take_read_buf();
                }
                if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
                    self.rbuf.reserve(READ_CHUNK);
                }
                poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
                    .map(|r| r.map(Some).map_err(ConnError::Io))
            })
            .await?;
            match read {
                None => return Ok(None),
                // The client closed: cleanly between requests; inside a
                // head there is nobody left to answer.
                Some(0) => return Ok(None),
                Some(_) => {}
            }
        }
    }

    /// One request and its response. True: the connection carries on.
    async fn exchange(&mut self, ctx: &Arc<ConnCtx>, head: RequestHead) -> Result<bool, ConnError> {
        let RequestHead {
            method,
            uri,
            version,
            headers,
            framing,
            keep_alive,
            expect_continue,
        } = head;
        self.body_unread = false;
        self.requests += 1;
        let body = match framing {
            RequestFraming::None | RequestFraming::Length(0) => ReqBody::empty(),
            RequestFraming::Length(n) if self.rbuf.len() as u64 >= n => {
                // All of it came with the head.
                ReqBody::full(self.rbuf.split_to(n as usize).freeze())
            }
            RequestFraming::Length(n) => {
                self.start_pump(Decode::Length(n), expect_continue, Some(n))
            }
            RequestFraming::Chunked => self.start_pump(
                Decode::Chunked(ChunkedDecoder::new()),
                expect_continue,
                None,
            ),
        };
        let method_for_framing = method.clone();
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = headers;

        // The handler runs here, in this task; the body is read as it asks.
        let mut handler = forward::handle(ctx.clone(), req);
        let resp = std::future::poll_fn(|cx| {
            self.poll_pump(cx);
            if let Poll::Ready(Err(e)) = self.poll_write_out(cx) {
                return Poll::Ready(Err(ConnError::Io(e)));
            }
            Pin::new(&mut handler)
                .poll(cx)
                .map(|r| Ok(r.unwrap_or_else(|n| match n {})))
        })
        .await?;
        drop(handler);
        // The body's stall timer, if it ran, is not the answer's.
        self.timer.disarm();

        let (parts, mut body) = resp.into_parts();
        let bodiless = h1_codec::is_bodiless(&method_for_framing, parts.status);
        // A request body still arriving: what is already here is dropped;
        // otherwise the connection cannot be reused.
        let body_done = self.settle_request_body();
        let close_asked = h1_codec::has_token(&parts.headers, header::CONNECTION, "close");
        let framing = if bodiless {
            ResponseFraming::Bodiless
        } else if let Some(n) = body.size_hint().exact() {
            ResponseFraming::Length(n)
        } else if version == Version::HTTP_11 {
            ResponseFraming::Chunked
        } else {
            ResponseFraming::Close
        };
        let keep = keep_alive
            && body_done
            && !close_asked
            && framing != ResponseFraming::Close
            && !ctx.node.is_shutting_down();
        let mut extra: [(&HeaderName, &HeaderValue); 2] = [(&header::DATE, &CLOSE); 2];
        let mut n = 0;
        let date;
        if !parts.headers.contains_key(header::DATE) && !body.raw_head().is_some_and(|r| r.has_date)
        {
            date = http_date();
            extra[n] = (&header::DATE, &date);
            n += 1;
        }
        if !keep && !close_asked {
            extra[n] = (&header::CONNECTION, &CLOSE);
            n += 1;
        } else if keep && version == Version::HTTP_10 {
            extra[n] = (&header::CONNECTION, &KEEP_ALIVE);
            n += 1;
        }
        match body.raw_head() {
            Some(raw) => h1_codec::encode_forwarded_response_head(
                &mut self.wbuf,
                parts.status,
                raw,
                &parts.headers,
                &extra[..n],
                framing,
            ),
            None => h1_codec::encode_response_head(
                &mut self.wbuf,
                parts.status,
                &parts.headers,
                &extra[..n],
                framing,
            ),
        }
        body.drop_raw_head();
        drop(parts);
        if bodiless {
            drop(body);
            std::future::poll_fn(|cx| self.poll_write_idle(cx)).await?;
        } else {
            let mut out = BodyOut {
                framing,
                done: false,
                trailers: None,
            };
            let sent = std::future::poll_fn(|cx| self.poll_response(cx, &mut body, &mut out)).await;
            if let Err(ConnError::Body(_)) = &sent {
                // The app failed mid-answer: what came of it still goes out
                // (without an end, so it does not look complete). No answer
                // at all would read as a stale keep-alive connection, which
                // clients answer by sending the request again.
                drop(body);
                let _ = std::future::poll_fn(|cx| self.poll_write_idle(cx)).await;
            }
            sent?;
        }
        // A large answer grew the write buffer: not kept while idle.
        if self.wbuf.capacity() > WRITE_KEEP {
            self.wbuf = Vec::new();
        }
        Ok(keep && !self.body_unread && self.pump.is_none())
    }

    fn start_pump(&mut self, decode: Decode, expect_continue: bool, size: Option<u64>) -> ReqBody {
        let chan = Arc::new(Mutex::new(Chan::default()));
        self.pump = Some(Pump {
            chan: chan.clone(),
            decode,
            expect_continue,
        });
        ReqBody {
            kind: Kind::Stream { chan, size },
        }
    }

    /// After the handler answered: true if the request body is all read
    /// (or what is left is here already and was dropped).
    fn settle_request_body(&mut self) -> bool {
        let Some(p) = &mut self.pump else {
            return !self.body_unread;
        };
        if let Decode::Length(left) = p.decode
            && self.rbuf.len() as u64 >= left
            && lock(&p.chan).body_gone
        {
            let _ = self.rbuf.split_to(left as usize);
            self.pump = None;
            return true;
        }
        false
    }

    /// Moves request body bytes from the socket to the handler, one piece
    /// each time it asks.
    fn poll_pump(&mut self, cx: &mut Context<'_>) {
        let Conn {
            io,
            rbuf,
            wbuf,
            pump,
            body_unread,
            timer,
            settings,
            ..
        } = self;
        let Some(p) = pump else { return };
        let mut c = lock(&p.chan);
        // The body may be polled by another task (hyper's h2 client sends
        // it from its own): it must be able to wake this one whenever it
        // asks for the next piece.
        match &c.conn_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => c.conn_waker = Some(cx.waker().clone()),
        }
        if c.body_gone {
            // The handler dropped the body before its end.
            drop(c);
            *pump = None;
            *body_unread = true;
            return;
        }
        if !c.want || c.item.is_some() {
            return;
        }
        if p.expect_continue {
            p.expect_continue = false;
            wbuf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        loop {
            let step = match &mut p.decode {
                Decode::Length(0) => Ok(h1_codec::Chunk::Done),
                Decode::Length(_) if rbuf.is_empty() => Ok(h1_codec::Chunk::Need),
                Decode::Length(left) => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(rbuf.len());
                    *left -= n as u64;
                    Ok(h1_codec::Chunk::Data(rbuf.split_to(n).freeze()))
                }
                Decode::Chunked(d) => d.decode(rbuf).map_err(ReqBodyError::Chunked),
            };
            let end = match step {
                Ok(h1_codec::Chunk::Data(b)) => {
                    c.item = Some(Ok(b));
                    c.want = false;
                    let last = matches!(p.decode, Decode::Length(0));
                    c.done = last;
                    last
                }
                Ok(h1_codec::Chunk::Done) => {
                    c.done = true;
                    true
                }
                Ok(h1_codec::Chunk::Need) => {
                    if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
                        rbuf.reserve(READ_CHUNK * 4);
                    }
                    match poll_read_buf(Pin::new(&mut *io), cx, rbuf) {
                        Poll::Pending => {
                            // A client that stops sending its body is cut
                            // after the idle timeout (nginx's
                            // `client_body_timeout`), not held until the
                            // app's response timeout blames the app.
                            if !timer.is_armed() {
                                timer.arm(settings.idle_timeout);
                            }
                            if timer.poll_expired(cx).is_pending() {
                                return;
                            }
                            timer.disarm();
                            c.item = Some(Err(ReqBodyError::Stalled(settings.idle_timeout)));
                            c.done = true;
                            *body_unread = true;
                            true
                        }
                        Poll::Ready(Ok(0)) => {
                            c.item = Some(Err(ReqBodyError::Incomplete));
                            c.done = true;
                            *body_unread = true;
                            true
                        }
                        Poll::Ready(Ok(_)) => {
                            timer.disarm();
                            continue;
                        }
                        Poll::Ready(Err(e)) => {
                            c.item = Some(Err(ReqBodyError::Io(e.to_string())));
                            c.done = true;
                            *body_unread = true;
                            true
                        }
                    }
                }
                Err(e) => {
                    c.item = Some(Err(e));
                    c.done = true;
                    *body_unread = true;
                    true
                }
            };
            if let Some(w) = c.body_waker.take() {
                w.wake();
            }
            if end {
                drop(c);
                *pump = None;
            }
            return;
        }
    }

    /// Writes out the write buffer, then flushes the stream.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// [`Self::poll_write_out`], dropping a client that reads nothing for
    /// the idle timeout (any progress starts the timeout again, as
    /// HAProxy's `timeout client`).
    fn poll_write_idle(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        let before = self.wpos;
        match self.poll_write_out(cx) {
            Poll::Ready(r) => {
                self.timer.disarm();
                Poll::Ready(r.map_err(ConnError::Io))
            }
            Poll::Pending => {
                if !self.timer.is_armed() || self.wpos != before {
                    self.timer.arm(self.settings.idle_timeout);
                }
                if self.timer.poll_expired(cx).is_ready() {
                    return Poll::Ready(Err(ConnError::Idle));
                }
                Poll::Pending
            }
        }
    }

    /// Streams the response body out, framed.
    fn poll_response(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut ProxyBody,
        out: &mut BodyOut,
    ) -> Poll<Result<(), ConnError>> {
        loop {
            self.poll_pump(cx);
            let mut waiting = out.done;
            if !out.done && self.wbuf.len() < WRITE_HIGH {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        out.frame(&mut self.wbuf, frame);
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        // Cut short: the client must not take it as whole.
                        return Poll::Ready(Err(ConnError::Body(e.to_string())));
                    }
                    Poll::Ready(None) => {
                        out.finish(&mut self.wbuf);
                        continue;
                    }
                    Poll::Pending => waiting = true,
                }
            }
            ready!(self.poll_write_idle(cx))?;
            if out.done {
                return Poll::Ready(Ok(()));
            }
            if waiting {
                return Poll::Pending;
            }
        }
    }
}

/// Read buffers of connections between requests, per thread: taking and
/// giving back one costs no allocation (freeing and allocating 4 KiB per
/// request sent the allocator down its slow path: 1,300 instructions per
/// request). Bounded: at most `READ_POOL` buffers of `READ_CHUNK` bytes.
const READ_POOL: usize = 64;

thread_local! {
    static READ_BUFS: std::cell::RefCell<Vec<BytesMut>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn take_read_buf() -> BytesMut {
    READ_BUFS.with(|p| p.borrow_mut().pop()).unwrap_or_default()
}

fn put_read_buf(mut b: BytesMut) {
    // Only plain, unshared-size buffers: one grown for a long head or a
    // body goes back to the allocator.
    if b.capacity() == 0 || b.capacity() > 2 * READ_CHUNK {
        return;
    }
    b.clear();
    READ_BUFS.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < READ_POOL {
            p.push(b);
        }
    });
}

static CLOSE: HeaderValue = HeaderValue::from_static("close");
static KEEP_ALIVE: HeaderValue = HeaderValue::from_static("keep-alive");

/// The response body's framing on the wire.
struct BodyOut {
    framing: ResponseFraming,
    done: bool,
    trailers: Option<HeaderMap>,
}

impl BodyOut {
    fn frame(&mut self, w: &mut Vec<u8>, frame: Frame<Bytes>) {
        match frame.into_data() {
            Ok(data) => {
                if data.is_empty() {
                    return;
                }
                if self.framing == ResponseFraming::Chunked {
                    h1_codec::encode_chunk(w, data.len());
                    w.extend_from_slice(&data);
                    w.extend_from_slice(h1_codec::CRLF);
                } else {
                    w.extend_from_slice(&data);
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    self.trailers.get_or_insert_with(HeaderMap::new).extend(t);
                }
            }
        }
    }

    fn finish(&mut self, w: &mut Vec<u8>) {
        self.done = true;
        if self.framing != ResponseFraming::Chunked {
            return;
        }
        w.extend_from_slice(b"0\r\n");
        for (name, value) in self.trailers.iter().flatten() {
            w.extend_from_slice(name.as_str().as_bytes());
            w.extend_from_slice(b": ");
            w.extend_from_slice(value.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        w.extend_from_slice(b"\r\n");
    }
}

/// The current `Date` value, made once a second per thread.
fn http_date() -> HeaderValue {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, HeaderValue)> =
            const { std::cell::RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let v = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
            *c = (secs, v);
        }
        c.1.clone()
    })
}

/// A timer that is cheap to re-arm on every request: arming only records
/// the deadline (on the coarse clock); the timer itself is moved only when
/// it would fire too late, and when it fires early it is set again.
struct IdleTimer {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the sleep fires, on the coarse clock (ms).
    sleep_at: u64,
    /// The real deadline; 0: disarmed.
    deadline: u64,
}

impl IdleTimer {
    fn new() -> Self {
        IdleTimer {
            sleep: None,
            sleep_at: 0,
            deadline: 0,
        }
    }

    fn arm(&mut self, after: Duration) {
        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX / 2);
        self.deadline = now_ms().saturating_add(ms).max(1);
        if self.sleep.is_none() || self.sleep_at > self.deadline {
            self.set_sleep(ms);
        }
    }

    fn set_sleep(&mut self, ms: u64) {
        let at = tokio::time::Instant::now() + Duration::from_millis(ms);
        match &mut self.sleep {
            Some(s) => s.as_mut().reset(at),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        self.sleep_at = now_ms().saturating_add(ms);
    }

    fn disarm(&mut self) {
        self.deadline = 0;
    }

    fn is_armed(&self) -> bool {
        self.deadline != 0
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.deadline == 0 {
            return Poll::Pending;
        }
        loop {
            let Some(sleep) = &mut self.sleep else {
                return Poll::Pending;
            };
            ready!(sleep.as_mut().poll(cx));
            let now = now_ms();
            if now >= self.deadline {
                return Poll::Ready(());
            }
            self.set_sleep(self.deadline - now);
        }
    }
}

// ------------------------------------------------------------ request body

#[derive(Debug, thiserror::Error)]
pub enum ReqBodyError {
    #[error("client closed the connection inside the request body")]
    Incomplete,
    #[error("malformed chunked request body: {0}")]
    Chunked(h1_codec::Error),
    #[error("reading the request body: {0}")]
    Io(String),
    #[error("client sent nothing of the request body for {0:?}")]
    Stalled(Duration),
}

/// Between the connection (which reads) and the body (which the handler
/// polls): one piece at a time, read when asked for.
#[derive(Default)]
struct Chan {
    /// The body asked for a piece.
    want: bool,
    item: Option<Result<Bytes, ReqBodyError>>,
    /// No piece after `item`.
    done: bool,
    /// The body was dropped.
    body_gone: bool,
    body_waker: Option<Waker>,
    conn_waker: Option<Waker>,
}

fn lock(c: &Mutex<Chan>) -> MutexGuard<'_, Chan> {
    c.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Pump {
    chan: Arc<Mutex<Chan>>,
    decode: Decode,
    expect_continue: bool,
}

enum Decode {
    /// Bytes left.
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// A request body read off an HTTP/1.1 client connection.
pub struct ReqBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Stream {
        chan: Arc<Mutex<Chan>>,
        size: Option<u64>,
    },
}

impl ReqBody {
    fn empty() -> Self {
        ReqBody {
            kind: Kind::Full(None),
        }
    }

    fn full(b: Bytes) -> Self {
        ReqBody {
            kind: Kind::Full(Some(b)),
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = ReqBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReqBodyError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream { chan, .. } => {
                let mut c = lock(chan);
                if let Some(item) = c.item.take() {
                    // Read the next piece while this one goes out.
                    if !c.done {
                        c.want = true;
                        if let Some(w) = c.conn_waker.take() {
                            w.wake();
                        }
                    }
                    return Poll::Ready(Some(item.map(Frame::data)));
                }
                if c.done {
                    return Poll::Ready(None);
                }
                c.want = true;
                match &c.body_waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => c.body_waker = Some(cx.waker().clone()),
                }
                if let Some(w) = c.conn_waker.take() {
                    w.wake();
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Stream { chan, .. } => {
                let c = lock(chan);
                c.done && c.item.is_none()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Stream { size: Some(n), .. } => SizeHint::with_exact(*n),
            Kind::Stream { size: None, .. } => SizeHint::default(),
        }
    }
}

impl Drop for ReqBody {
    fn drop(&mut self) {
        if let Kind::Stream { chan, .. } = &self.kind {
            let mut c = lock(chan);
            c.body_gone = true;
            if let Some(w) = c.conn_waker.take() {
                w.wake();
            }
        }
    }
}
