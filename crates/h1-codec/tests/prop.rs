//! Property tests of the codec against what is on the wire: chunked bodies
//! fed in arbitrary read sizes, response heads checked against an
//! independent RFC 9112 §6.3 / §9.3 oracle, request heads read back with
//! httparse.

use bytes::BytesMut;
use h1_codec::{
    BodyFraming, CRLF, Chunk, ChunkedDecoder, Error, Framing, HOP_BY_HOP, LAST_CHUNK,
    ResponseFraming, encode_chunk, encode_forwarded_response_head, encode_request_head,
    encode_request_head_with, encode_response_head, parse_response, parse_response_lines,
};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

mod common;
use common::*;

// ---------------------------------------------------------------------------
// Shared generators
// ---------------------------------------------------------------------------

/// Splits `total` bytes into consecutive read sizes (each at least 1).
fn reads(total: usize, sizes: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < total {
        let n = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1);
        let end = (at + n).min(total);
        out.push(at..end);
        at = end;
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------
// Chunked decoding
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct ChunkedCase {
    body: Vec<u8>,
    /// Chunk sizes (each >= 1), cycled over the body.
    chunk_sizes: Vec<usize>,
    /// Extension text (with its leading `;`s) per chunk, cycled; "" = none.
    extensions: Vec<String>,
    /// Extension on the last chunk.
    last_ext: String,
    /// Upper-case hex digits in size lines.
    upper_hex: bool,
    /// Leading zeros on size lines.
    zero_pad: usize,
    trailers: Vec<(String, String)>,
    /// Bytes of the next message, after the body.
    pipelined: Vec<u8>,
    /// Read sizes the wire bytes arrive in, cycled.
    read_sizes: Vec<usize>,
}

/// `;name`, `;name=token` or `;name="quoted string"`, one or more of them,
/// with optional whitespace before the `;` (BWS).
fn chunk_ext() -> impl Strategy<Value = String> {
    let quoted = vec(
        prop_oneof![
            (0x20u8..=0x7e)
                .prop_filter("no quote or backslash", |b| *b != b'"' && *b != b'\\')
                .prop_map(|b| vec![b]),
            // quoted-pair
            (0x21u8..=0x7e).prop_map(|b| vec![b'\\', b]),
        ],
        0..12,
    )
    .prop_map(|parts| {
        let inner: Vec<u8> = parts.concat();
        format!("\"{}\"", String::from_utf8(inner).expect("ASCII"))
    });
    let one = (
        select(vec!["", " ", "\t"]),
        token(10),
        prop_oneof![
            Just(String::new()),
            token(10).prop_map(|t| format!("={t}")),
            quoted.prop_map(|q| format!("={q}")),
        ],
    )
        .prop_map(|(bws, name, value)| format!("{bws};{name}{value}"));
    prop_oneof![
        3 => Just(String::new()),
        2 => vec(one, 1..4).prop_map(|v| v.concat()),
    ]
}

fn chunked_case() -> impl Strategy<Value = ChunkedCase> {
    (
        vec(any::<u8>(), 0..3000),
        vec(1usize..=600, 1..8),
        vec(chunk_ext(), 1..4),
        chunk_ext(),
        any::<bool>(),
        0usize..3,
        vec((token(16), field_value()), 0..4),
        vec(any::<u8>(), 0..64),
        vec(1usize..=700, 1..8),
    )
        .prop_map(
            |(
                body,
                chunk_sizes,
                extensions,
                last_ext,
                upper_hex,
                zero_pad,
                trailers,
                pipelined,
                read_sizes,
            )| ChunkedCase {
                body,
                chunk_sizes,
                extensions,
                last_ext,
                upper_hex,
                zero_pad,
                trailers,
                pipelined,
                read_sizes,
            },
        )
}

/// The wire bytes of the case's chunked body (pipelined bytes not included).
fn encode_chunked(c: &ChunkedCase) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    let plain = c.zero_pad == 0 && !c.upper_hex;
    while at < c.body.len() {
        let n = c.chunk_sizes[i % c.chunk_sizes.len()].min(c.body.len() - at);
        let ext = &c.extensions[i % c.extensions.len()];
        if plain && ext.is_empty() {
            encode_chunk(&mut out, n);
        } else {
            let hex = if c.upper_hex {
                format!("{n:X}")
            } else {
                format!("{n:x}")
            };
            out.extend_from_slice("0".repeat(c.zero_pad).as_bytes());
            out.extend_from_slice(hex.as_bytes());
            out.extend_from_slice(ext.as_bytes());
            out.extend_from_slice(CRLF);
        }
        out.extend_from_slice(&c.body[at..at + n]);
        out.extend_from_slice(CRLF);
        at += n;
        i += 1;
    }
    if c.last_ext.is_empty() && c.trailers.is_empty() {
        out.extend_from_slice(LAST_CHUNK);
    } else {
        out.extend_from_slice(format!("0{}\r\n", c.last_ext).as_bytes());
        for (name, value) in &c.trailers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(CRLF);
    }
    out
}

/// Feeds `wire` in the given reads; after each read, decodes until `Need`.
/// Returns the decoded data, whether `Done` was seen, and the buffer at the
/// end (everything after the body once `Done`).
fn feed_chunked(
    wire: &[u8],
    read_sizes: &[usize],
) -> Result<(Vec<u8>, bool, BytesMut), (Error, usize)> {
    let mut dec = ChunkedDecoder::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut done = false;
    for r in reads(wire.len(), read_sizes) {
        buf.extend_from_slice(&wire[r.clone()]);
        if done {
            continue;
        }
        loop {
            match dec.decode(&mut buf).map_err(|e| (e, r.end))? {
                Chunk::Data(d) => {
                    assert!(!d.is_empty(), "empty Data");
                    out.extend_from_slice(&d);
                }
                Chunk::Need => break,
                Chunk::Done => {
                    done = true;
                    assert!(dec.is_done());
                    break;
                }
            }
        }
    }
    Ok((out, done, buf))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn chunked_round_trip(c in chunked_case()) {
        let body_wire = encode_chunked(&c);
        let mut wire = body_wire.clone();
        wire.extend_from_slice(&c.pipelined);
        let (data, done, rest) = feed_chunked(&wire, &c.read_sizes)
            .map_err(|(e, at)| TestCaseError::fail(format!("{e} after {at} bytes of {:?}",
                String::from_utf8_lossy(&body_wire))))?;
        prop_assert!(done, "no Done for {:?}", String::from_utf8_lossy(&body_wire));
        prop_assert_eq!(&data, &c.body);
        prop_assert_eq!(&rest[..], &c.pipelined[..]);

        // Done is sticky and consumes nothing more.
        let mut dec = ChunkedDecoder::new();
        let mut whole = BytesMut::from(&wire[..]);
        while let Chunk::Data(_) = dec.decode(&mut whole).map_err(|e| TestCaseError::fail(e.to_string()))? {}
        prop_assert!(dec.is_done());
        prop_assert_eq!(dec.decode(&mut whole), Ok(Chunk::Done));
        prop_assert_eq!(&whole[..], &c.pipelined[..]);
    }

    /// Every strict prefix of a body is "need more": never Done, never an
    /// error, and the data handed out is a prefix of the body.
    #[test]
    fn chunked_prefixes_need_more(c in chunked_case(), cut in any::<prop::sample::Index>()) {
        let wire = encode_chunked(&c);
        let cut = cut.index(wire.len());
        let (data, done, _) = feed_chunked(&wire[..cut], &c.read_sizes)
            .map_err(|(e, _)| TestCaseError::fail(format!("{e} on a prefix of {cut} bytes")))?;
        prop_assert!(!done);
        prop_assert!(c.body.starts_with(&data));
    }

    /// Chunk data not followed by CRLF is an error (a length that does
    /// not match the data must not desync the stream).
    #[test]
    fn chunk_data_must_end_with_crlf(
        data in vec(any::<u8>(), 1..300),
        after in (any::<u8>(), any::<u8>()).prop_filter("not CRLF", |p| *p != (b'\r', b'\n')),
        more in vec(any::<u8>(), 0..20),
        read_sizes in vec(1usize..50, 1..5),
    ) {
        let mut wire = Vec::new();
        encode_chunk(&mut wire, data.len());
        wire.extend_from_slice(&data);
        wire.extend_from_slice(&[after.0, after.1]);
        wire.extend_from_slice(&more);
        let r = feed_chunked(&wire, &read_sizes);
        prop_assert!(matches!(r, Err((Error::ChunkCrlf, _))), "{:?}", r);
    }
}

/// Bytes that look like chunked framing more often than uniform noise does.
fn chunkish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => any::<u8>().prop_map(|b| vec![b]),
        3 => select(vec![
            &b"\r\n"[..], b"0\r\n", b"0\r\n\r\n", b"1\r\n", b"a\r\n", b"ff\r\n", b";x=1",
            b";", b"\"", b"\r", b"\n", b"X: y\r\n", b"ffffffffffffffff\r\n",
            b"10000000000000000\r\n", b" ", b"\t",
        ])
        .prop_map(|s| s.to_vec()),
        2 => vec(select(b"0123456789abcdefABCDEF".to_vec()), 1..6),
        1 => vec(select(b"abc".to_vec()), 1..300),
    ];
    vec(piece, 0..80).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// On any input: no panic, no empty Data, data out <= bytes consumed <=
    /// bytes in, and once Done or an error nothing more is consumed.
    #[test]
    fn chunked_decoder_total_on_any_input(
        wire in prop_oneof![vec(any::<u8>(), 0..600), chunkish_bytes()],
        read_sizes in vec(1usize..64, 1..6),
    ) {
        let mut dec = ChunkedDecoder::new();
        let mut buf = BytesMut::new();
        let mut fed = 0usize;
        let mut data_out = 0usize;
        'reads: for r in reads(wire.len(), &read_sizes) {
            buf.extend_from_slice(&wire[r.clone()]);
            fed = r.end;
            loop {
                let before = buf.len();
                match dec.decode(&mut buf) {
                    Ok(Chunk::Data(d)) => {
                        prop_assert!(!d.is_empty(), "empty Data");
                        data_out += d.len();
                    }
                    Ok(Chunk::Need) => break,
                    Ok(Chunk::Done) => {
                        let at = buf.len();
                        prop_assert_eq!(dec.decode(&mut buf), Ok(Chunk::Done));
                        prop_assert_eq!(buf.len(), at);
                        break 'reads;
                    }
                    Err(_) => {
                        prop_assert!(buf.len() <= before);
                        break 'reads;
                    }
                }
                let consumed = fed - buf.len();
                prop_assert!(data_out <= consumed, "{} data bytes from {} consumed", data_out, consumed);
            }
        }
        let consumed = fed - buf.len();
        prop_assert!(consumed <= wire.len());
        prop_assert!(data_out <= consumed);
    }

    /// The outcome (data, end, bytes left) does not depend on how the input
    /// was split into reads. Below the chunk-line limit only: a line longer
    /// than the limit is accepted when it arrives in one read.
    #[test]
    fn chunked_outcome_independent_of_reads(
        wire in prop_oneof![vec(any::<u8>(), 0..600), chunkish_bytes()],
        read_sizes in vec(1usize..64, 1..6),
    ) {
        prop_assume!(wire.len() <= h1_codec::MAX_CHUNK_LINE);
        let whole = feed_chunked(&wire, &[wire.len().max(1)]).map_err(|(e, _)| e);
        let pieces = feed_chunked(&wire, &read_sizes).map_err(|(e, _)| e);
        prop_assert_eq!(whole, pieces);
    }
}

#[test]
fn chunk_size_line_needs_a_hex_digit() {
    // RFC 9112 §7.1: chunk-size = 1*HEXDIG. A line with no digits must not
    // read as the last chunk.
    for bad in [
        &b"\r\n\r\n"[..],
        b";ext\r\n\r\n",
        b" \r\n\r\n",
        b"5\r\nhello\r\n\r\n\r\nNEXT",
    ] {
        let r = feed_chunked(bad, &[bad.len()]);
        assert!(
            matches!(r, Err((Error::ChunkSize, _))),
            "{:?} gave {r:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn oversized_chunk_line_and_trailers_are_refused() {
    let mut line = b"5;".to_vec();
    line.extend(std::iter::repeat_n(b'x', h1_codec::MAX_CHUNK_LINE + 1));
    assert!(matches!(
        feed_chunked(&line, &[100]),
        Err((Error::ChunkSize, _))
    ));

    let mut trailers = b"0\r\n".to_vec();
    while trailers.len() < h1_codec::MAX_TRAILERS + 100 {
        trailers.extend_from_slice(b"X-T: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    trailers.extend_from_slice(CRLF);
    assert!(matches!(
        feed_chunked(&trailers, &[100]),
        Err((Error::Trailers, _))
    ));
}

// ---------------------------------------------------------------------------
// Response heads
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct ResponseCase {
    status: u16,
    http10: bool,
    reason: String,
    lines: Vec<Line>,
    head_request: bool,
    body: Vec<u8>,
    read_sizes: Vec<usize>,
}

fn response_case() -> impl Strategy<Value = ResponseCase> {
    let other = line(token(20), field_value());
    let cl = line(cased("content-length"), content_length_value());
    let te = line(cased("transfer-encoding"), transfer_encoding_value());
    let conn = line(cased("connection"), connection_value());
    let status = prop_oneof![
        2 => 100u16..=599,
        3 => select(vec![100u16, 101, 103, 200, 204, 206, 301, 304, 404, 500, 503]),
    ];
    let reason = prop_oneof![Just(String::new()), field_value(),];
    (
        (status, any::<bool>(), reason),
        vec(other, 0..12),
        // A second Content-Length is mostly the same value, to reach the
        // "identical values" rule as well as the conflict.
        vec(cl, 0..3).prop_flat_map(|v| {
            let first = v.first().map(|l| l.value.clone());
            (Just(v), any::<bool>()).prop_map(move |(mut v, same)| {
                if same && let Some(f) = &first {
                    for l in v.iter_mut() {
                        l.value = f.clone();
                    }
                }
                v
            })
        }),
        prop_oneof![2 => Just(vec![]), 1 => vec(te, 1..3)],
        vec(conn, 0..3),
        any::<bool>(),
        vec(any::<u8>(), 0..100),
        vec(1usize..200, 1..6),
    )
        .prop_flat_map(
            |((status, http10, reason), other, cl, te, conn, head_request, body, read_sizes)| {
                let mut lines = other;
                lines.extend(cl);
                lines.extend(te);
                lines.extend(conn);
                (
                    Just(lines).prop_shuffle(),
                    Just((status, http10, reason, head_request, body, read_sizes)),
                )
            },
        )
        .prop_map(
            |(lines, (status, http10, reason, head_request, body, read_sizes))| ResponseCase {
                status,
                http10,
                reason,
                lines,
                head_request,
                body,
                read_sizes,
            },
        )
}

fn encode_response(c: &ResponseCase) -> Vec<u8> {
    let mut out = Vec::new();
    let v = if c.http10 { "1.0" } else { "1.1" };
    out.extend_from_slice(format!("HTTP/{v} {} {}\r\n", c.status, c.reason).as_bytes());
    for l in &c.lines {
        out.extend_from_slice(
            format!("{}:{}{}{}\r\n", l.name, l.lead, l.value, l.trail).as_bytes(),
        );
    }
    out.extend_from_slice(CRLF);
    out
}

/// Elements of a comma-separated list, OWS trimmed.
fn list<'a>(c: &'a ResponseCase, name: &str) -> Vec<&'a str> {
    c.lines
        .iter()
        .filter(|l| l.name.eq_ignore_ascii_case(name))
        .flat_map(|l| l.value.split(','))
        .map(|t| t.trim_matches([' ', '\t']))
        .collect()
}

/// RFC 9112 §6.3 (body length) and §9.3 (persistence), written from the
/// text, independently of the crate. `Err(())`: invalid Content-Length.
fn oracle(c: &ResponseCase) -> Result<(Framing, bool), ()> {
    let conn = list(c, "connection");
    let has = |t: &str| conn.iter().any(|x| x.eq_ignore_ascii_case(t));
    let has_te = c
        .lines
        .iter()
        .any(|l| l.name.eq_ignore_ascii_case("transfer-encoding"));
    let has_cl = c
        .lines
        .iter()
        .any(|l| l.name.eq_ignore_ascii_case("content-length"));
    // §9.3: "close" ends the connection; otherwise 1.1 persists and 1.0
    // persists only with "keep-alive".
    let mut persist = if has("close") {
        false
    } else if !c.http10 {
        true
    } else {
        has("keep-alive")
    };
    // §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing:
    // close the connection after it.
    if c.http10 && has_te {
        persist = false;
    }
    // §6.3 (1): HEAD, 1xx, 204, 304: no content whatever the headers say.
    if c.head_request || (100..200).contains(&c.status) || c.status == 204 || c.status == 304 {
        return Ok((Framing::Empty, persist));
    }
    // §6.3 (3): Transfer-Encoding overrides Content-Length (and the
    // combination is not trusted with another message).
    if has_te {
        let codings = list(c, "transfer-encoding");
        let chunked_last = codings
            .last()
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        return Ok(if chunked_last {
            (Framing::Chunked, persist && !has_cl)
        } else {
            (Framing::Close, false)
        });
    }
    // §6.3 (4)/(5): Content-Length, possibly a list of identical values;
    // anything else is invalid.
    if has_cl {
        let mut n: Option<u64> = None;
        for t in list(c, "content-length") {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            let v: u64 = t.parse().map_err(|_| ())?;
            if n.is_some_and(|p| p != v) {
                return Err(());
            }
            n = Some(v);
        }
        return n.map(|n| (Framing::Length(n), persist)).ok_or(());
    }
    // §6.3 (8): read until close.
    Ok((Framing::Close, false))
}

fn check_head(c: &ResponseCase, head: &h1_codec::ResponseHead) -> Result<(), TestCaseError> {
    prop_assert_eq!(head.status.as_u16(), c.status);
    prop_assert_eq!(
        head.version,
        if c.http10 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        }
    );
    prop_assert_eq!(head.headers.len(), c.lines.len());
    for l in &c.lines {
        let name = HeaderName::from_bytes(l.name.as_bytes())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want: Vec<&[u8]> = c
            .lines
            .iter()
            .filter(|x| x.name.eq_ignore_ascii_case(&l.name))
            .map(|x| x.value.as_bytes())
            .collect();
        let got: Vec<&[u8]> = head
            .headers
            .get_all(&name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        prop_assert_eq!(got, want, "values of {}", l.name);
    }
    prop_assert_eq!(
        head.is_interim(),
        (100..200).contains(&c.status) && c.status != 101
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]

    #[test]
    fn response_head_parses_per_rfc9112(c in response_case()) {
        let head_bytes = encode_response(&c);
        let mut wire = head_bytes.clone();
        wire.extend_from_slice(&c.body);
        let expect = oracle(&c);
        let shown = String::from_utf8_lossy(&head_bytes).into_owned();

        // Whole message at once.
        let mut buf = BytesMut::from(&wire[..]);
        match (parse_response(&mut buf, c.head_request, 64 * 1024), expect) {
            (Ok(Some(head)), Ok((framing, keep_alive))) => {
                check_head(&c, &head)?;
                prop_assert_eq!(head.framing, framing, "framing of {}", shown);
                prop_assert_eq!(head.keep_alive, keep_alive, "keep-alive of {}", shown);
                prop_assert_eq!(&buf[..], &c.body[..]);
            }
            (Err(Error::ContentLength), Err(())) => {}
            (got, want) => prop_assert!(false, "{:?} for {}, oracle says {:?}", got, shown, want),
        }

        // Every strict prefix of the head: Ok(None), nothing consumed.
        for cut in 0..head_bytes.len() {
            let mut buf = BytesMut::from(&head_bytes[..cut]);
            let r = parse_response(&mut buf, c.head_request, 64 * 1024);
            prop_assert!(matches!(r, Ok(None)), "prefix {} of {}: {:?}", cut, shown, r);
            prop_assert_eq!(&buf[..], &head_bytes[..cut]);
        }

        // Fed in reads: Ok(None) until the head is complete, then the same
        // answer, and the buffer holds exactly the body bytes read so far.
        let mut buf = BytesMut::new();
        let mut parsed = false;
        for r in reads(wire.len(), &c.read_sizes) {
            buf.extend_from_slice(&wire[r.clone()]);
            if parsed {
                continue;
            }
            match parse_response(&mut buf, c.head_request, 64 * 1024) {
                Ok(None) => prop_assert!(r.end < head_bytes.len()),
                Ok(Some(head)) => {
                    prop_assert!(r.end >= head_bytes.len());
                    prop_assert_eq!(Ok((head.framing, head.keep_alive)), expect);
                    prop_assert_eq!(&buf[..], &wire[head_bytes.len()..r.end]);
                    parsed = true;
                }
                Err(e) => {
                    prop_assert_eq!(e, Error::ContentLength);
                    prop_assert!(expect.is_err());
                    parsed = true;
                }
            }
        }
        prop_assert!(parsed);
        if expect.is_ok() {
            prop_assert_eq!(&buf[..], &c.body[..]);
        }

        // The head limit: exactly the head length is enough, one less is not.
        let mut buf = BytesMut::from(&wire[..]);
        let r = parse_response(&mut buf, c.head_request, head_bytes.len() - 1);
        prop_assert_eq!(r.err(), Some(Error::HeadTooLarge(head_bytes.len() - 1)));
        let mut buf = BytesMut::from(&wire[..]);
        let r = parse_response(&mut buf, c.head_request, head_bytes.len());
        prop_assert!(!matches!(r, Err(Error::HeadTooLarge(_)) | Ok(None)));
    }

    /// Garbage never panics and never consumes bytes without a head.
    #[test]
    fn response_parse_total_on_any_input(
        wire in prop_oneof![
            vec(any::<u8>(), 0..300),
            (response_case(), vec(any::<u8>(), 1..4), any::<prop::sample::Index>()).prop_map(|(c, junk, at)| {
                // A valid head with a few bytes replaced.
                let mut w = encode_response(&c);
                let i = at.index(w.len());
                for (k, b) in junk.into_iter().enumerate() {
                    if let Some(x) = w.get_mut(i + k) {
                        *x = b;
                    }
                }
                w
            }),
        ],
        head_request in any::<bool>(),
        max_head in 1usize..400,
    ) {
        let mut buf = BytesMut::from(&wire[..]);
        match parse_response(&mut buf, head_request, max_head) {
            Ok(None) => {
                prop_assert_eq!(&buf[..], &wire[..]);
                prop_assert!(wire.len() <= max_head);
            }
            Ok(Some(head)) => {
                let used = wire.len() - buf.len();
                prop_assert!(used <= max_head);
                prop_assert!(wire[..used].ends_with(b"\n"));
                prop_assert_eq!(&buf[..], &wire[used..]);
                if head_request {
                    prop_assert_eq!(head.framing, Framing::Empty);
                }
                if head.framing == Framing::Close {
                    prop_assert!(!head.keep_alive);
                }
            }
            Err(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Request heads
// ---------------------------------------------------------------------------

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        select(vec![
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
            Method::PATCH,
            Method::TRACE,
        ]),
        token(12).prop_filter_map("a method", |t| Method::from_bytes(t.as_bytes()).ok()),
    ]
}

fn target() -> impl Strategy<Value = String> {
    let origin =
        (absolute_path(), proptest::option::of(path_segment())).prop_map(|(p, q)| match q {
            Some(q) => format!("{p}?{q}"),
            None => p,
        });
    prop_oneof![
        6 => origin.clone(),
        1 => Just("*".to_string()),
        1 => origin.prop_map(|p| format!("http://a.example:8080{p}")),
    ]
}

fn request_headers() -> impl Strategy<Value = HeaderMap> {
    let name = prop_oneof![
        6 => token(20),
        1 => select(vec!["content-length", "Transfer-Encoding", "host", "connection"]).prop_map(str::to_string),
    ];
    header_map_of(name, 16)
}

fn body_framing() -> impl Strategy<Value = BodyFraming> {
    prop_oneof![
        Just(BodyFraming::None),
        Just(BodyFraming::Chunked),
        any::<u64>().prop_map(BodyFraming::Length),
        (0u64..100_000).prop_map(BodyFraming::Length),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn request_head_reads_back(
        m in method(),
        t in target(),
        h in request_headers(),
        extra in prop_oneof![Just(HeaderMap::new()), request_headers()],
        body in body_framing(),
        prefix in vec(any::<u8>(), 0..8),
    ) {
        // Appends: whatever was in the buffer stays.
        let mut out = prefix.clone();
        let extra: Vec<(&HeaderName, &HeaderValue)> = extra.iter().collect();
        if extra.is_empty() {
            encode_request_head(&mut out, &m, &t, &h, body);
        } else {
            encode_request_head_with(&mut out, &m, &t, &h, &extra, body);
        }
        prop_assert!(out.starts_with(&prefix));
        let wire = &out[prefix.len()..];

        let mut raw = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut raw);
        let status = req.parse(wire).map_err(|e| TestCaseError::fail(format!("{e}: {:?}", String::from_utf8_lossy(wire))))?;
        prop_assert_eq!(status, httparse::Status::Complete(wire.len()));
        prop_assert_eq!(req.method, Some(m.as_str()));
        prop_assert_eq!(req.path, Some(t.as_str()));
        prop_assert_eq!(req.version, Some(1));

        let is_framing = |n: &str| n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding");
        // The map's headers, then the extra ones, framing headers dropped.
        let want: Vec<(&str, &[u8])> = h
            .iter()
            .chain(extra.iter().copied())
            .filter(|(n, _)| !is_framing(n.as_str()))
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        let got: Vec<(&str, &[u8])> = req
            .headers
            .iter()
            .filter(|x| !is_framing(x.name))
            .map(|x| (x.name, x.value))
            .collect();
        prop_assert_eq!(got, want);

        let framing: Vec<(String, &[u8])> = req
            .headers
            .iter()
            .filter(|x| is_framing(x.name))
            .map(|x| (x.name.to_ascii_lowercase(), x.value))
            .collect();
        match body {
            BodyFraming::None => prop_assert!(framing.is_empty(), "{:?}", framing),
            BodyFraming::Length(n) => {
                prop_assert_eq!(framing.len(), 1);
                prop_assert_eq!(framing[0].0.as_str(), "content-length");
                let n = n.to_string();
                prop_assert_eq!(framing[0].1, n.as_bytes());
            }
            BodyFraming::Chunked => {
                prop_assert_eq!(framing.len(), 1);
                prop_assert_eq!(framing[0].0.as_str(), "transfer-encoding");
                prop_assert_eq!(framing[0].1, &b"chunked"[..]);
            }
        }
    }
}

/// The header lines of an encoded head, lower-cased names, sorted (a
/// header map groups lines by name; the lines passed on keep their order).
fn sorted_lines(head: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut resp = httparse::Response::new(&mut headers);
    let status = resp.parse(head).expect("the encoder's head parses");
    assert!(status.is_complete(), "the encoder's head is complete");
    let mut out: Vec<(String, Vec<u8>)> = resp
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]

    /// A head passed on line by line (what the node does for an HTTP/1.1
    /// app and an HTTP/1.1 client) says what the header-map path says:
    /// the same parse outcome, framing and persistence, the same refusals,
    /// and on the wire the same header lines less the hop-by-hop ones, with
    /// the proxy's own headers replacing the app's of the same name.
    #[test]
    fn forwarded_lines_say_what_the_header_map_says(
        c in response_case(),
        own_pick in any::<prop::sample::Index>(),
        body_framing in select(vec![ResponseFraming::Length(7), ResponseFraming::Chunked, ResponseFraming::Close]),
    ) {
        let head_bytes = encode_response(&c);
        let shown = String::from_utf8_lossy(&head_bytes).into_owned();
        let mut a = BytesMut::from(&head_bytes[..]);
        let mut b = a.clone();
        let mapped = parse_response(&mut a, c.head_request, 64 * 1024);
        let raw = parse_response_lines(&mut b, c.head_request, 64 * 1024);
        let (m, r) = match (mapped, raw) {
            (Ok(Some(m)), Ok(Some(r))) => (m, r),
            (Err(x), Err(y)) => {
                prop_assert_eq!(x, y, "{}", shown);
                return Ok(());
            }
            (x, y) => {
                prop_assert!(false, "map path {:?}, line path {:?} for {}", x, y, shown);
                unreachable!()
            }
        };
        prop_assert_eq!(m.status, r.status);
        prop_assert_eq!(m.version, r.version);
        prop_assert_eq!(m.framing, r.framing, "{}", shown);
        prop_assert_eq!(m.keep_alive, r.keep_alive, "{}", shown);
        prop_assert_eq!(m.is_interim(), r.is_interim());
        let forwardable = m.for_forwarding();
        prop_assert_eq!(forwardable.is_ok(), r.check_forwardable().is_ok(), "{}", shown);
        let Ok(m) = forwardable else { return Ok(()) };
        // The node maps a head whose Connection names other headers.
        if r.lines.connection_lists_headers {
            return Ok(());
        }
        prop_assert_eq!(m.headers.contains_key(http::header::DATE), r.lines.has_date);

        // The proxy's own headers: its node name, and sometimes a name the
        // app sent too (the proxy's value wins).
        let mut own = HeaderMap::new();
        own.insert("x-tandem-node", HeaderValue::from_static("n1"));
        let named: Vec<HeaderName> = m
            .headers
            .keys()
            .filter(|k| !HOP_BY_HOP.contains(k) && **k != http::header::CONTENT_LENGTH)
            .cloned()
            .collect();
        if !named.is_empty() {
            own.insert(own_pick.get(&named).clone(), HeaderValue::from_static("proxy's"));
        }
        let framing = if m.framing == Framing::Empty { ResponseFraming::Bodiless } else { body_framing };

        let mut want_map = m.headers.clone();
        for n in &HOP_BY_HOP {
            want_map.remove(n);
        }
        for (k, v) in &own {
            want_map.insert(k.clone(), v.clone());
        }
        let mut want = Vec::new();
        encode_response_head(&mut want, m.status, &want_map, &[], framing);
        let mut got = Vec::new();
        encode_forwarded_response_head(&mut got, r.status, &r.lines, &own, &[], framing);
        prop_assert_eq!(
            sorted_lines(&got),
            sorted_lines(&want),
            "{}\nlines: {}\nmap: {}",
            shown,
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want)
        );
    }
}
