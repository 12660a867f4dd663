//! The server side: request heads in, response heads out.
//!
//! [`parse_request`] takes a request head off the front of a buffer and
//! decides, strictly, how its body is framed (RFC 9112 §6.1–6.3). Every
//! shape a proxy could be smuggled through is refused rather than guessed:
//! a Transfer-Encoding other than a lone `chunked`, Transfer-Encoding on
//! HTTP/1.0, Content-Lengths that disagree, more than one Host, no Host
//! on HTTP/1.1, a Host that is not `host[:port]`, a target with a
//! fragment or in a form its method does not take. With both
//! Transfer-Encoding and Content-Length the chunked encoding frames the
//! body, Content-Length is removed and the connection is closed after the
//! answer (§6.1), so bytes a Content-Length reader would take as the next
//! request never are.
//!
//! [`encode_response_head`] writes a status line, the headers and the
//! framing the caller chose.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

use crate::{RawHeaders, header_map, span_of, trim};

/// Header slots on the stack; a larger configured limit uses the heap.
const STACK_HEADERS: usize = 128;

/// Why a request head was refused. Every one is the client's fault; the
/// answer is [`RequestError::status`] and the connection closes after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed request head: {0}")]
    Head(httparse::Error),
    #[error("request head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("more than {0} request headers")]
    TooManyHeaders(usize),
    #[error("invalid request target")]
    Target,
    #[error("invalid request header {0}")]
    Header(String),
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("Transfer-Encoding {0:?} refused (only a lone chunked is accepted)")]
    TransferCoding(String),
    #[error("Transfer-Encoding on an HTTP/1.0 request")]
    TransferEncodingHttp10,
    #[error("missing Host header")]
    MissingHost,
    #[error("more than one Host header")]
    DuplicateHost,
}

impl RequestError {
    /// The status to answer with: 431 for size and count limits, else 400.
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::HeadTooLarge(_) | RequestError::TooManyHeaders(_) => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body (no Content-Length, no Transfer-Encoding).
    None,
    /// Exactly this many bytes (may be 0).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed, validated request head.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    /// The headers as received, minus a Content-Length that came with
    /// Transfer-Encoding.
    pub headers: HeaderMap,
    pub framing: RequestFraming,
    /// The client allows another request on the connection after this one
    /// (HTTP/1.1 without `close`, HTTP/1.0 with `keep-alive`), and the
    /// framing leaves no doubt where this one ends.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on HTTP/1.1.
    pub expect_continue: bool,
}

/// Limits on a request head.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Bytes of the head, request line and final CRLF included.
    pub max_head: usize,
    /// Header lines.
    pub max_headers: usize,
}

/// Parses a request head at the front of `buf`. `Ok(None)`: not complete
/// yet (and within `limits.max_head`), nothing consumed but empty lines
/// before the request line (RFC 9112 §2.2). `Ok(Some)`: the
/// head was removed from `buf`, which now starts with the body (or the
/// next request). Header values and the target share the head's bytes.
pub fn parse_request(
    buf: &mut BytesMut,
    limits: RequestLimits,
) -> Result<Option<RequestHead>, RequestError> {
    // RFC 9112 §2.2: empty lines (CRLF, or a bare LF) before a request
    // line are ignored; a bare CR is not an empty line.
    let mut lead = 0;
    loop {
        match &buf[lead..] {
            [b'\r', b'\n', ..] => lead += 2,
            [b'\n', ..] => lead += 1,
            _ => break,
        }
    }
    if lead > 0 {
        bytes::Buf::advance(buf, lead);
    }
    if buf.is_empty() {
        return Ok(None);
    }
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut heap = Vec::new();
    let raw: &mut [MaybeUninit<httparse::Header<'_>>] = if limits.max_headers <= STACK_HEADERS {
        &mut stack[..limits.max_headers]
    } else {
        heap.resize_with(limits.max_headers, MaybeUninit::uninit);
        &mut heap
    };
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, raw)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_head {
                Err(RequestError::HeadTooLarge(limits.max_head))
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(RequestError::TooManyHeaders(limits.max_headers));
        }
        Err(e) => return Err(RequestError::Head(e)),
    };
    if len > limits.max_head || len > u32::MAX as usize {
        return Err(RequestError::HeadTooLarge(limits.max_head));
    }
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| RequestError::Head(httparse::Error::Token))?;
    let base = buf.as_ptr() as usize;
    let path = req.path.unwrap_or("");
    let target = (path.as_ptr() as usize - base, path.len());
    let count = req.headers.len();
    let mut stack_spans = [[0u32; 4]; STACK_HEADERS];
    let heap_spans;
    let spans: &[[u32; 4]] = if count <= STACK_HEADERS {
        for (span, h) in stack_spans.iter_mut().zip(req.headers.iter()) {
            *span = span_of(base, h);
        }
        &stack_spans[..count]
    } else {
        heap_spans = req
            .headers
            .iter()
            .map(|h| span_of(base, h))
            .collect::<Vec<_>>();
        &heap_spans
    };
    let head = buf.split_to(len).freeze();
    let target = head.slice(target.0..target.0 + target.1);
    // RFC 9112 §3.2: no fragment in any form (the URI parser would drop
    // it); authority-form for CONNECT only, asterisk-form for OPTIONS only.
    if target.contains(&b'#') || (&target[..] == b"*" && method != Method::OPTIONS) {
        return Err(RequestError::Target);
    }
    let uri = Uri::from_maybe_shared(target).map_err(|_| RequestError::Target)?;
    if uri.scheme().is_none() && uri.authority().is_some() && method != Method::CONNECT {
        return Err(RequestError::Target);
    }
    let (mut headers, seen) = header_map(&head, spans).map_err(RequestError::Header)?;
    match seen.hosts {
        0 if version == Version::HTTP_11 => return Err(RequestError::MissingHost),
        0 => {}
        1 if !seen.first_host_valid => {
            return Err(RequestError::Header(header::HOST.to_string()));
        }
        1 => {}
        _ => return Err(RequestError::DuplicateHost),
    }
    let mut keep_alive = !seen.close && (version == Version::HTTP_11 || seen.keep_alive);
    let framing = if seen.te_lines > 0 {
        if version == Version::HTTP_10 {
            return Err(RequestError::TransferEncodingHttp10);
        }
        let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
        let first = codings.next().map(HeaderValue::as_bytes).unwrap_or(b"");
        if codings.next().is_some() || !trim(first).eq_ignore_ascii_case(b"chunked") {
            return Err(RequestError::TransferCoding(
                String::from_utf8_lossy(first).into_owned(),
            ));
        }
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            keep_alive = false;
        }
        RequestFraming::Chunked
    } else {
        match seen.content_length {
            Some(Ok(n)) => RequestFraming::Length(n),
            Some(Err(())) => return Err(RequestError::ContentLength),
            None => RequestFraming::None,
        }
    };
    let expect_continue = version == Version::HTTP_11 && seen.expect_continue;
    Ok(Some(RequestHead {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// `Host = uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2): a
/// bracketed IP literal or a reg-name (an IPv4 address is one), then
/// optionally `:` and digits. RFC 9112 §3.2: any other value is a 400.
pub(crate) fn valid_host(v: &[u8]) -> bool {
    let (host_ok, rest) = if let [b'[', inner @ ..] = v {
        let Some(end) = inner.iter().position(|b| *b == b']') else {
            return false;
        };
        let literal = &inner[..end];
        let ok = !literal.is_empty()
            && literal
                .iter()
                .all(|b| HOST_CHAR[usize::from(*b)] || *b == b':');
        (ok, &inner[end + 1..])
    } else {
        let end = v.iter().position(|b| *b == b':').unwrap_or(v.len());
        let mut name = &v[..end];
        let mut ok = true;
        while let [b, tail @ ..] = name {
            name = tail;
            if *b == b'%' {
                match name {
                    [h1, h2, tail @ ..] if h1.is_ascii_hexdigit() && h2.is_ascii_hexdigit() => {
                        name = tail;
                    }
                    _ => ok = false,
                }
            } else if !HOST_CHAR[usize::from(*b)] {
                ok = false;
            }
        }
        (ok, &v[end..])
    };
    host_ok
        && match rest {
            [] => true,
            [b':', port @ ..] => port.iter().all(u8::is_ascii_digit),
            _ => false,
        }
}

/// unreserved / sub-delims (RFC 3986 §2.2–2.3), by byte.
static HOST_CHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        i += 1;
    }
    t
};

/// How a response body is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body follows (HEAD, 1xx, 204, 304): the headers go as they are,
    /// a Content-Length among them included.
    Bodiless,
    /// `Content-Length: n` (any in the map is replaced).
    Length(u64),
    /// `Transfer-Encoding: chunked` (HTTP/1.1 clients).
    Chunked,
    /// Until the connection closes (HTTP/1.0 clients, unknown length).
    Close,
}

/// Appends `HTTP/1.1 <status>`, the headers, and the framing header. The
/// map's Content-Length and Transfer-Encoding are written only for
/// [`ResponseFraming::Bodiless`]. `extra` headers follow the map's.
pub fn encode_response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    extra: &[(&HeaderName, &HeaderValue)],
    framing: ResponseFraming,
) {
    let lines = map_lines(headers, framing);
    encode_lines(out, status, map_len(headers), lines, extra, framing);
}

/// [`encode_response_head`] for an answer whose upstream head is passed on
/// as it came (`raw`: its lines less the hop-by-hop ones, less
/// `Content-Length` unless the answer is bodiless, and less any name the
/// proxy sets itself in `headers`, whose values replace them), then
/// `headers` and `extra`.
pub fn encode_forwarded_response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    raw: &RawHeaders,
    headers: &HeaderMap,
    extra: &[(&HeaderName, &HeaderValue)],
    framing: ResponseFraming,
) {
    let keep_framing = framing == ResponseFraming::Bodiless;
    let own = map_lines(headers, framing);
    let len = raw.head_len() + map_len(headers);
    let lines = raw
        .forwarded(keep_framing)
        .filter(|(n, _)| {
            !headers
                .keys()
                .any(|k| n.eq_ignore_ascii_case(k.as_str().as_bytes()))
        })
        .chain(own);
    encode_lines(out, status, len, lines, extra, framing);
}

/// Bytes the lines of `headers` take on the wire.
fn map_len(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

/// The lines of a header map, less framing lines the answer's `framing`
/// replaces.
fn map_lines(
    headers: &HeaderMap,
    framing: ResponseFraming,
) -> impl Iterator<Item = (&[u8], &[u8])> {
    let keep_framing = framing == ResponseFraming::Bodiless;
    headers
        .iter()
        .filter(move |(n, _)| keep_framing || !is_framing(n))
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
}

fn is_framing(n: &HeaderName) -> bool {
    n == header::CONTENT_LENGTH || n == header::TRANSFER_ENCODING
}

/// The status line, `lines` (about `len` bytes), `extra`, the framing
/// header, the blank line.
fn encode_lines<'a>(
    out: &mut Vec<u8>,
    status: StatusCode,
    len: usize,
    lines: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    extra: &[(&HeaderName, &HeaderValue)],
    framing: ResponseFraming,
) {
    out.reserve(len + 64 + extra.len() * 48);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut line = |name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    for (name, value) in lines {
        line(name, value);
    }
    // The framing is the caller's choice: no extra line may contradict it.
    let keep_framing = framing == ResponseFraming::Bodiless;
    for (name, value) in extra {
        if keep_framing || !is_framing(name) {
            line(name.as_str().as_bytes(), value.as_bytes());
        }
    }
    match framing {
        ResponseFraming::Bodiless | ResponseFraming::Close => {}
        ResponseFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        ResponseFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether a response to `method` with `status` carries no body.
pub fn is_bodiless(method: &Method, status: StatusCode) -> bool {
    *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}
