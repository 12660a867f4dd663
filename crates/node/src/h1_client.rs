//! One HTTP/1.1 exchange on an upstream connection the request holds: write
//! the request head and body, read the response head, then stream the
//! response body out of the connection as the client reads it. The protocol
//! rules are in the sans-IO `h1-codec` crate; this module only moves bytes.
//!
//! It runs inside the client connection's task: an upstream read wakes that
//! task directly (no connection task, no channel, no second wake-up per
//! request as with `hyper::client::conn`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use bytes::{Buf, Bytes};
use h1_codec::{BodyFraming, Chunk, ChunkedDecoder, Framing, RawHeaders, RawResponseHead};
use http::{Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::upstream::{BoxError, H1Conn, Lease, UpBody};

/// Largest response head accepted from an upstream.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Read size for upstream bytes.
const READ_CHUNK: usize = 16 * 1024;
/// Request body frames up to this size are copied next to their chunk
/// framing and sent in one write.
const COALESCE: usize = 16 * 1024;

/// How an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// The connection closed (or reset) before a byte of the response came:
    /// on a reused connection, the server most likely closed it while idle,
    /// and the request may go again on a new connection if it is
    /// idempotent and its body can be replayed.
    #[error("upstream closed the connection before responding: {0}")]
    Closed(String),
    /// The request body failed (the client's side, or its size limit).
    #[error("request body: {0}")]
    Body(BoxError),
    #[error("upstream I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream sent a bad response: {0}")]
    Protocol(#[from] h1_codec::Error),
    #[error("upstream answered 101 Switching Protocols to a request without an upgrade")]
    Upgrade,
}

/// A write or read failure before any response byte: the connection was
/// (most likely) closed by the server.
fn closed(e: std::io::Error) -> ExchangeError {
    ExchangeError::Closed(e.to_string())
}

/// Writes the request (`head` already encoded with `framing`) and its body,
/// then reads the response head. Interim 1xx responses are skipped.
pub(crate) async fn exchange(
    conn: &mut H1Conn,
    head: &[u8],
    framing: BodyFraming,
    body: UpBody,
    head_request: bool,
) -> Result<RawResponseHead, ExchangeError> {
    if framing == BodyFraming::None {
        conn.stream.write_all(head).await.map_err(closed)?;
    } else if let Err(e) = send_body(conn, head, framing, body).await {
        // An app may answer early (a 413, say) and stop reading: its answer
        // may be waiting, and is worth more than the write error.
        return match e {
            ExchangeError::Io(_) | ExchangeError::Closed(_) => {
                match read_head(conn, head_request).await {
                    Ok(mut resp) => {
                        resp.keep_alive = false;
                        Ok(resp)
                    }
                    Err(_) => Err(e),
                }
            }
            e => Err(e),
        };
    }
    read_head(conn, head_request).await
}

/// Reads the final response head (interim 1xx skipped).
async fn read_head(
    conn: &mut H1Conn,
    head_request: bool,
) -> Result<RawResponseHead, ExchangeError> {
    let mut received = false;
    loop {
        if !conn.buf.is_empty() {
            received = true;
            if let Some(resp) =
                h1_codec::parse_response_lines(&mut conn.buf, head_request, MAX_RESPONSE_HEAD)?
            {
                if resp.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(ExchangeError::Upgrade);
                }
                if resp.is_interim() {
                    continue;
                }
                resp.check_forwardable()?;
                return Ok(resp);
            }
        }
        conn.buf.reserve(READ_CHUNK);
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) if !received => return Err(ExchangeError::Closed("end of stream".into())),
            Ok(0) => {
                return Err(ExchangeError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "response head cut short",
                )));
            }
            Ok(_) => {}
            Err(e) if !received => return Err(closed(e)),
            Err(e) => return Err(e.into()),
        }
    }
}

async fn send_body(
    conn: &mut H1Conn,
    head: &[u8],
    framing: BodyFraming,
    mut body: UpBody,
) -> Result<(), ExchangeError> {
    let chunked = framing == BodyFraming::Chunked;
    let mut out = Vec::with_capacity(head.len() + 256);
    out.extend_from_slice(head);
    let mut sent_any = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ExchangeError::Body)?;
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers are not forwarded to HTTP/1.1 upstreams
        };
        if !data.has_remaining() {
            continue;
        }
        if chunked {
            h1_codec::encode_chunk(&mut out, data.remaining());
        }
        if data.remaining() <= COALESCE {
            out.extend_from_slice(&data);
            if chunked {
                out.extend_from_slice(h1_codec::CRLF);
            }
            write(conn, &out, sent_any).await?;
        } else {
            write(conn, &out, sent_any).await?;
            conn.stream.write_all_buf(&mut data).await?;
            if chunked {
                conn.stream.write_all(h1_codec::CRLF).await?;
            }
        }
        sent_any = true;
        out.clear();
    }
    if chunked {
        out.extend_from_slice(h1_codec::LAST_CHUNK);
    }
    if !out.is_empty() {
        write(conn, &out, sent_any).await?;
    }
    Ok(())
}

/// Writes `bytes`; a failure before anything was sent is a closed
/// connection.
async fn write(conn: &mut H1Conn, bytes: &[u8], sent_any: bool) -> Result<(), ExchangeError> {
    match conn.stream.write_all(bytes).await {
        Ok(()) => Ok(()),
        Err(e) if !sent_any => Err(closed(e)),
        Err(e) => Err(e.into()),
    }
}

/// The response (head as parsed, body streamed from the connection). The
/// upstream may stay silent inside the body for at most `stall` (the
/// cluster's response timeout, as HAProxy's `timeout server`); past that
/// the body fails and the client's response is cut.
/// The head's lines stay as they came ([`H1Body::raw`]), for the client's
/// HTTP/1.1 answer to pass on or for [`H1Body::header_map`] to map.
pub(crate) fn response(head: RawResponseHead, lease: Lease, stall: Duration) -> Response<H1Body> {
    let state = match head.framing {
        Framing::Empty | Framing::Length(0) => State::Done,
        Framing::Length(n) => State::Length(n),
        Framing::Chunked => State::Chunked(ChunkedDecoder::new()),
        Framing::Close => State::Close,
    };
    let mut body = H1Body {
        lease: Some(lease),
        state,
        keep_alive: head.keep_alive,
        stall,
        timer: None,
        progressed: false,
        raw: Some(head.lines),
    };
    if matches!(body.state, State::Done) {
        body.finish();
    }
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.version_mut() = Version::HTTP_11;
    resp
}

#[derive(Debug)]
enum State {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
    Done,
}

/// A response body read from the upstream connection. When it ends and the
/// connection may persist, the connection goes back to its pool; dropped
/// before its end, the connection closes.
pub(crate) struct H1Body {
    lease: Option<Lease>,
    state: State,
    keep_alive: bool,
    /// Longest silence of the upstream inside the body.
    stall: Duration,
    /// Armed at the first read that has to wait (most small bodies come
    /// with their head and never need it).
    timer: Option<Pin<Box<Sleep>>>,
    /// Bytes came since the timer was last set.
    progressed: bool,
    /// The response head's lines (the response's header map is empty
    /// while they are here).
    raw: Option<RawHeaders>,
}

impl H1Body {
    /// The head's lines, while not taken.
    pub(crate) fn raw(&self) -> Option<&RawHeaders> {
        self.raw.as_ref()
    }

    /// Takes the head's lines away (they hold the head's bytes).
    pub(crate) fn take_raw(&mut self) -> Option<RawHeaders> {
        self.raw.take()
    }

    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(lease) = self.lease.take()
            && self.keep_alive
        {
            lease.release();
        }
    }
}

fn stalled(after: Duration) -> BoxError {
    Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("upstream sent nothing inside the response body for {after:?}"),
    ))
}

fn truncated() -> BoxError {
    Box::new(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "upstream closed the connection inside the response body",
    ))
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(lease) = this.lease.as_mut() else {
                return Poll::Ready(None);
            };
            let conn = &mut lease.conn;
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) if !conn.buf.is_empty() => {
                    let take = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(conn.buf.len());
                    let data = conn.buf.split_to(take).freeze();
                    *left -= take as u64;
                    if *left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(dec) if !conn.buf.is_empty() => match dec.decode(&mut conn.buf) {
                    Ok(Chunk::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Chunk::Done) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Chunk::Need) => {}
                    Err(e) => {
                        this.lease = None;
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                },
                State::Close if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                _ => {}
            }
            // More bytes are needed.
            conn.buf.reserve(READ_CHUNK);
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.buf);
            let n = match read {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => {
                    this.lease = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Pending => {
                    let deadline = Instant::now() + this.stall;
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if std::mem::take(&mut this.progressed) {
                        timer.as_mut().reset(deadline);
                    }
                    ready!(timer.as_mut().poll(cx));
                    this.lease = None;
                    return Poll::Ready(Some(Err(stalled(this.stall))));
                }
            };
            this.progressed = true;
            if n == 0 {
                if matches!(this.state, State::Close) {
                    this.state = State::Done;
                    this.lease = None;
                    return Poll::Ready(None);
                }
                this.lease = None;
                return Poll::Ready(Some(Err(truncated())));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
