//! The HTTP/1.1 client side of a proxy's upstream exchange, sans-IO.
//!
//! The node writes requests to its app endpoints and reads their responses
//! on connections it owns (no connection task, no channel between the
//! request and its connection). This crate is the protocol half of that:
//! it works on byte buffers only and never touches a socket.
//!
//! - [`encode_request_head`] writes a request line and headers with the
//!   framing the caller chose ([`BodyFraming`]), dropping any
//!   `Content-Length` / `Transfer-Encoding` of the header map so the two
//!   cannot disagree.
//! - [`parse_response`] takes a complete response head off the front of a
//!   buffer (zero-copy: header values share the buffer) and decides how the
//!   body is framed (RFC 9112 §6.3) and whether the connection may be
//!   reused.
//! - [`ChunkedDecoder`] decodes a chunked body incrementally, handing out
//!   data as slices of the buffer.
//!
//! Every error here is the upstream's fault and leaves the connection
//! unusable; none is safe to retry once a request was sent.

#![forbid(unsafe_code)]

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// Most headers a response may carry.
pub const MAX_HEADERS: usize = 128;
/// Longest chunk-size line (with extensions) accepted.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted (trailers are read and dropped).
pub const MAX_TRAILERS: usize = 16 * 1024;

/// A malformed or oversized message from the upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("response head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("invalid response header {0}")]
    Header(String),
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("invalid chunk size line")]
    ChunkSize,
    #[error("chunk data not followed by CRLF")]
    ChunkCrlf,
    #[error("trailer section larger than {MAX_TRAILERS} bytes")]
    Trailers,
    #[error("transfer coding {0:?} cannot be forwarded (only chunked is decoded)")]
    TransferCoding(String),
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    /// The headers as received, framing headers included.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request once the body is read.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// A 1xx other than 101: another head follows on the connection.
    pub fn is_interim(&self) -> bool {
        self.status.is_informational() && self.status != StatusCode::SWITCHING_PROTOCOLS
    }

    /// Readies the head to be forwarded by a proxy that decodes the body and
    /// re-frames it for the next hop (where `Transfer-Encoding`, hop-by-hop,
    /// is not passed on):
    /// - a transfer coding other than a lone `chunked` is refused: the body
    ///   would reach the next hop still encoded and unlabelled;
    /// - `Content-Length` next to `Transfer-Encoding` is dropped (RFC 9112
    ///   §6.3: an intermediary forwarding such a message removes it).
    pub fn for_forwarding(mut self) -> Result<Self, Error> {
        let mut codings = self.headers.get_all(header::TRANSFER_ENCODING).iter();
        let Some(te) = codings.next() else {
            return Ok(self);
        };
        if codings.next().is_some() || !trim(te.as_bytes()).eq_ignore_ascii_case(b"chunked") {
            return Err(Error::TransferCoding(
                String::from_utf8_lossy(te.as_bytes()).into_owned(),
            ));
        }
        self.headers.remove(header::CONTENT_LENGTH);
        Ok(self)
    }
}

/// Parses a response head at the front of `buf`. `Ok(None)`: not complete
/// yet (and not over `max_head` bytes), nothing consumed. `Ok(Some)`: the
/// head was removed from `buf`, which now starts with the body.
/// `head_request`: the response answers a HEAD (no body whatever it says).
pub fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
    max_head: usize,
) -> Result<Option<ResponseHead>, Error> {
    let Some(raw) = parse_response_lines(buf, head_request, max_head)? else {
        return Ok(None);
    };
    Ok(Some(ResponseHead {
        status: raw.status,
        version: raw.version,
        headers: raw.lines.to_map()?,
        framing: raw.framing,
        keep_alive: raw.keep_alive,
    }))
}

/// A response head as received: status, framing, and its header lines
/// where they are in the head, with no header map built. A proxy that
/// passes the lines on (HTTP/1.1 to HTTP/1.1, no edits) writes them with
/// [`encode_forwarded_response_head`]; [`RawHeaders::to_map`] builds the
/// map when one is needed.
#[derive(Debug)]
pub struct RawResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub lines: RawHeaders,
    pub framing: Framing,
    /// The connection may carry another request once the body is read.
    pub keep_alive: bool,
}

impl RawResponseHead {
    /// A 1xx other than 101: another head follows on the connection.
    pub fn is_interim(&self) -> bool {
        self.status.is_informational() && self.status != StatusCode::SWITCHING_PROTOCOLS
    }

    /// The check of [`ResponseHead::for_forwarding`]: a transfer coding
    /// other than a lone `chunked` is refused. (The `Content-Length` next
    /// to it is left out when the lines are written or mapped for the next
    /// hop.)
    pub fn check_forwardable(&self) -> Result<(), Error> {
        if self.lines.te_lines == 0 || (self.lines.te_lines == 1 && self.lines.te_lone_chunked) {
            return Ok(());
        }
        let value = self
            .lines
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(b"transfer-encoding"))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        Err(Error::TransferCoding(value))
    }
}

/// The header lines of a head, by position (names as sent, in order).
#[derive(Debug, Clone)]
pub struct RawHeaders {
    head: Bytes,
    spans: Vec<[u32; 4]>,
    /// `Transfer-Encoding` lines, and whether the only one is `chunked`.
    te_lines: u32,
    te_lone_chunked: bool,
    /// A `Date` line.
    pub has_date: bool,
    /// `Connection` names a header other than `close` / `keep-alive`: that
    /// header is hop-by-hop too (RFC 9110 §7.6.1), so the lines cannot be
    /// passed on as they are.
    pub connection_lists_headers: bool,
}

impl RawHeaders {
    /// The lines, as (name, value) bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans.iter().map(|&[ns, ne, vs, ve]| {
            (
                &self.head[ns as usize..ne as usize],
                &self.head[vs as usize..ve as usize],
            )
        })
    }

    /// The header map, as received (values share the head's bytes).
    pub fn to_map(&self) -> Result<HeaderMap, Error> {
        header_map(&self.head, &self.spans)
            .map(|(map, _)| map)
            .map_err(Error::Header)
    }

    /// The head's size in bytes (its lines take less).
    pub fn head_len(&self) -> usize {
        self.head.len()
    }

    /// A `Transfer-Encoding` came: a proxy drops the `Content-Length` next
    /// to it (RFC 9112 §6.3).
    pub fn has_transfer_encoding(&self) -> bool {
        self.te_lines > 0
    }

    /// The lines a proxy passes on: none of the hop-by-hop ones, and
    /// `Content-Length` only when `keep_length` (a bodiless answer, whose
    /// length is the client's information) and no `Transfer-Encoding` came
    /// with it.
    pub(crate) fn forwarded(&self, keep_length: bool) -> impl Iterator<Item = (&[u8], &[u8])> {
        let keep_length = keep_length && self.te_lines == 0;
        self.iter().filter(move |(n, _)| {
            hop_by_hop_index(n).is_none()
                && (keep_length || !n.eq_ignore_ascii_case(b"content-length"))
        })
    }
}

/// The hop-by-hop headers (RFC 9110 §7.6.1, plus `Keep-Alive` and
/// `Proxy-Connection`), in the order [`hop_by_hop_index`] numbers them.
pub const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The index in [`HOP_BY_HOP`] of a header name (any case), if it is one.
pub fn hop_by_hop_index(n: &[u8]) -> Option<usize> {
    let is = |s: &str| n.eq_ignore_ascii_case(s.as_bytes());
    match n.len() {
        2 if is("te") => Some(3),
        7 if is("trailer") => Some(4),
        7 if is("upgrade") => Some(6),
        10 if is("connection") => Some(0),
        10 if is("keep-alive") => Some(1),
        16 if is("proxy-connection") => Some(2),
        17 if is("transfer-encoding") => Some(5),
        _ => None,
    }
}

/// [`parse_response`] without the header map: the lines stay where they
/// are in the head. The same rules and errors, but for the header names
/// and values, which only [`RawHeaders::to_map`] checks again (the
/// parser already takes names that are tokens and values without
/// control characters, which is what the map accepts).
pub fn parse_response_lines(
    buf: &mut BytesMut,
    head_request: bool,
    max_head: usize,
) -> Result<Option<RawResponseHead>, Error> {
    // Not initialised: httparse fills what it uses (4 KiB of zeroes per
    // response otherwise).
    let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut raw)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > max_head {
                Err(Error::HeadTooLarge(max_head))
            } else {
                Ok(None)
            };
        }
        Err(e) => return Err(Error::Head(e)),
    };
    if len > max_head || len > u32::MAX as usize {
        return Err(Error::HeadTooLarge(max_head));
    }
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| Error::Head(httparse::Error::Status))?;
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Where names and values are in the head: the parsed headers borrow
    // the buffer; the values will share the head once it is split off.
    let base = buf.as_ptr() as usize;
    let mut seen = Seen::default();
    let mut te_lone_chunked = false;
    let mut has_date = false;
    let mut spans = Vec::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        spans.push(span_of(base, h));
        let name = h.name.as_bytes();
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"date") => has_date = true,
            10 if name.eq_ignore_ascii_case(b"connection") => seen.note_connection(h.value),
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                seen.note_content_length(h.value);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                te_lone_chunked = trim(h.value).eq_ignore_ascii_case(b"chunked");
                seen.note_transfer_encoding(h.value);
            }
            _ => {}
        }
    }
    let head = buf.split_to(len).freeze();
    let (framing, mut keep_alive) = framing(status, version, &seen, head_request)?;
    if framing == Framing::Close {
        keep_alive = false;
    }
    Ok(Some(RawResponseHead {
        status,
        version,
        lines: RawHeaders {
            head,
            spans,
            te_lines: seen.te_lines,
            te_lone_chunked,
            has_date,
            connection_lists_headers: seen.connection_lists_headers,
        },
        framing,
        keep_alive,
    }))
}

/// Where a parsed header's name and value are in the head, as offsets from
/// `base` (the head's first byte; the head is under 4 GiB, checked by the
/// callers).
pub(crate) fn span_of(base: usize, h: &httparse::Header<'_>) -> [u32; 4] {
    let name = h.name.as_ptr() as usize - base;
    let value = h.value.as_ptr() as usize - base;
    [
        name as u32,
        (name + h.name.len()) as u32,
        value as u32,
        (value + h.value.len()) as u32,
    ]
}

/// The header map of `head` (values share its bytes), from the spans of
/// its headers, with what the framing rules need noted on the way.
/// `Err`: the name of the header whose name or value is not valid.
pub(crate) fn header_map(head: &Bytes, spans: &[[u32; 4]]) -> Result<(HeaderMap, Seen), String> {
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut seen = Seen::default();
    for &[ns, ne, vs, ve] in spans {
        let name = &head[ns as usize..ne as usize];
        let name =
            HeaderName::from_bytes(name).map_err(|_| String::from_utf8_lossy(name).into_owned())?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| name.to_string())?;
        seen.note(&name, value.as_bytes());
        headers.append(name, value);
    }
    Ok((headers, seen))
}

/// The body framing (RFC 9112 §6.3) and whether the connection persists.
fn framing(
    status: StatusCode,
    version: Version,
    seen: &Seen,
    head_request: bool,
) -> Result<(Framing, bool), Error> {
    // RFC 9112 §9.3: "close" wins in any version; HTTP/1.0 persists only
    // with "keep-alive". §6.1: an HTTP/1.0 message with Transfer-Encoding
    // has faulty framing, so the connection closes after it.
    let mut keep_alive = !seen.close
        && match version {
            Version::HTTP_11 => true,
            _ => seen.keep_alive && seen.te_lines == 0,
        };
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, keep_alive));
    }
    if seen.te_lines > 0 {
        // Both framings: Transfer-Encoding wins, and the connection is not
        // trusted with another message.
        if seen.content_length.is_some() {
            keep_alive = false;
        }
        return Ok(if seen.te_last_chunked {
            (Framing::Chunked, keep_alive)
        } else {
            (Framing::Close, false)
        });
    }
    match seen.content_length {
        Some(Ok(n)) => Ok((Framing::Length(n), keep_alive)),
        Some(Err(())) => Err(Error::ContentLength),
        None => Ok((Framing::Close, false)),
    }
}

/// What the framing rules need from a head, noted while its headers are
/// read, so that none of them costs a header-map lookup afterwards.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// `Host` lines, and whether the first one is a valid host.
    pub hosts: u32,
    pub first_host_valid: bool,
    /// `Transfer-Encoding` lines, and whether the last coding of the last
    /// one is `chunked`.
    pub te_lines: u32,
    pub te_last_chunked: bool,
    /// The `Content-Length` lines: one number (every value and list element
    /// the same), or invalid.
    pub content_length: Option<Result<u64, ()>>,
    /// `Connection` tokens.
    pub close: bool,
    pub keep_alive: bool,
    /// A `Connection` token names a header (not `close`, `keep-alive`).
    pub connection_lists_headers: bool,
    /// The first `Expect` line says `100-continue`.
    pub expect_continue: bool,
    expect_seen: bool,
}

impl Seen {
    pub(crate) fn note(&mut self, name: &HeaderName, value: &[u8]) {
        if *name == header::CONTENT_LENGTH {
            self.note_content_length(value);
        } else if *name == header::CONNECTION {
            self.note_connection(value);
        } else if *name == header::TRANSFER_ENCODING {
            self.note_transfer_encoding(value);
        } else if *name == header::HOST {
            if self.hosts == 0 {
                self.first_host_valid = request::valid_host(value);
            }
            self.hosts += 1;
        } else if *name == header::EXPECT && !self.expect_seen {
            self.expect_seen = true;
            self.expect_continue = trim(value).eq_ignore_ascii_case(b"100-continue");
        }
    }
}

impl Seen {
    fn note_content_length(&mut self, value: &[u8]) {
        self.content_length = Some(match (self.content_length, parse_length(value)) {
            (None | Some(Ok(_)), Err(())) | (Some(Err(())), _) => Err(()),
            (None, Ok(n)) => Ok(n),
            (Some(Ok(prev)), Ok(n)) if prev == n => Ok(n),
            (Some(Ok(_)), Ok(_)) => Err(()),
        });
    }

    fn note_connection(&mut self, value: &[u8]) {
        for t in value.split(|b| *b == b',') {
            let t = trim(t);
            let close = t.eq_ignore_ascii_case(b"close");
            let keep_alive = t.eq_ignore_ascii_case(b"keep-alive");
            self.close |= close;
            self.keep_alive |= keep_alive;
            self.connection_lists_headers |= !t.is_empty() && !close && !keep_alive;
        }
    }

    fn note_transfer_encoding(&mut self, value: &[u8]) {
        self.te_lines += 1;
        self.te_last_chunked = value
            .rsplit(|b| *b == b',')
            .next()
            .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"));
    }
}

/// One `Content-Length` value: a number, or a list of the same number.
fn parse_length(v: &[u8]) -> Result<u64, ()> {
    let mut found: Option<u64> = None;
    for part in v.split(|b| *b == b',') {
        let part = trim(part);
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        // Leading zeros are allowed; a value past u64 is not.
        let n = part
            .iter()
            .try_fold(0u64, |acc, d| {
                acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .ok_or(())?;
        match found {
            Some(prev) if prev != n => return Err(()),
            _ => found = Some(n),
        }
    }
    found.ok_or(())
}

/// The message's `Content-Length`: every value (and list element) must be
/// the same number.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let mut found: Option<u64> = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        let n = parse_length(v.as_bytes()).map_err(|()| Error::ContentLength)?;
        if found.is_some_and(|prev| prev != n) {
            return Err(Error::ContentLength);
        }
        found = Some(n);
    }
    Ok(found)
}

/// Whether a comma-separated header names `token` (case-insensitive).
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
    })
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// How the request body is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body and no framing header.
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked` (the body is sent with [`encode_chunk`]
    /// and ends with [`LAST_CHUNK`]).
    Chunked,
}

/// Appends a request head: `METHOD target HTTP/1.1`, the headers (minus
/// `Content-Length` and `Transfer-Encoding`), then the framing header.
pub fn encode_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body: BodyFraming,
) {
    encode_request_head_with(out, method, target, headers, &[], body);
}

/// [`encode_request_head`] with `extra` headers written after those of the
/// map (a proxy's own, e.g. `X-Forwarded-For`, without a map insert each).
pub fn encode_request_head_with(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    extra: &[(&HeaderName, &HeaderValue)],
    body: BodyFraming,
) {
    let estimate = headers
        .iter()
        .chain(extra.iter().copied())
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + target.len()
        + 64;
    out.reserve(estimate);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in extra {
        if *name == header::CONTENT_LENGTH || *name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match body {
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends the size line of a chunk of `len` bytes (> 0); the data follows,
/// then [`CRLF`].
pub fn encode_chunk(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(format!("{len:x}\r\n").as_bytes());
}

pub const CRLF: &[u8] = b"\r\n";

/// What [`ChunkedDecoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Body data (never empty), split off the buffer.
    Data(Bytes),
    /// More input is needed.
    Need,
    /// The body ended (last chunk and trailers consumed).
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataCrlf,
    Trailers,
    Done,
}

/// Incremental decoder of a chunked body. Strict: CRLF line ends, sizes in
/// hex that fit in 64 bits; trailers are consumed and dropped.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size,
            trailer_bytes: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes what it can from the front of `buf`. Bytes after the end of
    /// the body stay in `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Chunk, Error> {
        loop {
            match self.state {
                // chunk-size = 1*HEXDIG: httparse reads a line without
                // digits (an empty line) as size 0, the last chunk.
                State::Size if buf.first().is_some_and(|b| !b.is_ascii_hexdigit()) => {
                    return Err(Error::ChunkSize);
                }
                State::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => {
                        return if buf.len() > MAX_CHUNK_LINE {
                            Err(Error::ChunkSize)
                        } else {
                            Ok(Chunk::Need)
                        };
                    }
                    Err(_) => return Err(Error::ChunkSize),
                },
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Chunk::Need);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataCrlf
                    } else {
                        State::Data(left)
                    };
                    return Ok(Chunk::Data(data));
                }
                State::DataCrlf => {
                    if buf.len() < 2 {
                        return Ok(Chunk::Need);
                    }
                    if &buf[..2] != CRLF {
                        return Err(Error::ChunkCrlf);
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    let Some(end) = buf.windows(2).position(|w| w == CRLF) else {
                        return if self.trailer_bytes + buf.len() > MAX_TRAILERS {
                            Err(Error::Trailers)
                        } else {
                            Ok(Chunk::Need)
                        };
                    };
                    buf.advance(end + 2);
                    if end == 0 {
                        self.state = State::Done;
                    } else {
                        self.trailer_bytes += end + 2;
                        if self.trailer_bytes > MAX_TRAILERS {
                            return Err(Error::Trailers);
                        }
                    }
                }
                State::Done => return Ok(Chunk::Done),
            }
        }
    }
}

mod request;
pub use request::{
    RequestError, RequestFraming, RequestHead, RequestLimits, ResponseFraming,
    encode_forwarded_response_head, encode_response_head, is_bodiless, parse_request,
};

#[cfg(test)]
mod tests;
