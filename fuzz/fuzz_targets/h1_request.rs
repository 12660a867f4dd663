//! What a client can send the node's HTTP/1.1 server: bytes for
//! `parse_request`, with any limits, fed whole and split in two. Nothing may
//! panic; the answer must not depend on the split; an accepted head must be
//! self-consistent (its framing is what its headers say, the buffer lost
//! exactly the head) and, written out again, must parse to the same head.
//!
//! Input: `[max_head lo, max_head hi, max_headers, split lo, split hi,
//! payload...]`; max_head is 1 to 4096, max_headers at most 255 (past
//! the 128 header slots kept on the stack).
#![no_main]

use bytes::BytesMut;
use h1_codec::{RequestFraming, RequestHead, RequestLimits, content_length, parse_request};
use http::Version;
use http::header::{self, HeaderMap};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Outcome {
    Incomplete,
    Head { used: usize, summary: String },
    Failed,
}

fn summary(h: &RequestHead) -> String {
    let headers: Vec<(&str, &[u8])> = h
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    format!(
        "{} {} {:?} {:?} ka={} expect={} {:?}",
        h.method, h.uri, h.version, h.framing, h.keep_alive, h.expect_continue, headers
    )
}

/// Leading empty lines (CRLF or LF): all `parse_request` may consume
/// without answering.
fn empty_lines(input: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match &input[at..] {
            [b'\r', b'\n', ..] => at += 2,
            [b'\n', ..] => at += 1,
            _ => return at,
        }
    }
}

fn tokens<'a>(
    headers: &'a HeaderMap,
    name: header::HeaderName,
) -> impl Iterator<Item = String> + 'a {
    headers.get_all(name).iter().flat_map(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .map(|t| {
                String::from_utf8_lossy(t)
                    .trim_matches([' ', '\t'])
                    .to_ascii_lowercase()
            })
            .collect::<Vec<_>>()
    })
}

/// What an accepted head must satisfy whatever the input was.
fn check_head(h: &RequestHead) {
    let te: Vec<_> = h
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .collect();
    let has_cl = h.headers.contains_key(header::CONTENT_LENGTH);
    match h.framing {
        RequestFraming::Chunked => {
            assert_eq!(h.version, Version::HTTP_11, "Transfer-Encoding on 1.0");
            assert_eq!(te.len(), 1);
            assert!(
                String::from_utf8_lossy(te[0].as_bytes())
                    .trim_matches([' ', '\t'])
                    .eq_ignore_ascii_case("chunked")
            );
            assert!(!has_cl, "Content-Length kept next to chunked");
        }
        RequestFraming::Length(n) => {
            assert!(te.is_empty());
            assert_eq!(content_length(&h.headers), Ok(Some(n)));
        }
        RequestFraming::None => assert!(te.is_empty() && !has_cl),
    }
    let hosts = h.headers.get_all(header::HOST).iter().count();
    assert!(hosts <= 1);
    if h.version == Version::HTTP_11 {
        assert_eq!(hosts, 1, "1.1 without Host");
    } else {
        assert!(!h.expect_continue);
    }
    let conn: Vec<String> = tokens(&h.headers, header::CONNECTION).collect();
    if conn.iter().any(|t| t == "close") {
        assert!(!h.keep_alive);
    }
    if h.version == Version::HTTP_10 && !conn.iter().any(|t| t == "keep-alive") {
        assert!(!h.keep_alive);
    }
}

/// The head written out again (its own framing headers included) parses
/// to the same head; a TE + CL head lost its Content-Length, so only its
/// keep-alive may change (to true).
fn check_reencoding(h: &RequestHead) {
    let mut wire = Vec::new();
    wire.extend_from_slice(h.method.as_str().as_bytes());
    wire.push(b' ');
    wire.extend_from_slice(h.uri.to_string().as_bytes());
    wire.extend_from_slice(if h.version == Version::HTTP_10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    for (n, v) in &h.headers {
        wire.extend_from_slice(n.as_str().as_bytes());
        wire.extend_from_slice(b": ");
        wire.extend_from_slice(v.as_bytes());
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"\r\n");
    let limits = RequestLimits {
        max_head: wire.len(),
        max_headers: h.headers.len(),
    };
    let mut buf = BytesMut::from(&wire[..]);
    let again = match parse_request(&mut buf, limits) {
        Ok(Some(again)) => again,
        other => panic!(
            "re-encoded head {:?}: {other:?}",
            String::from_utf8_lossy(&wire)
        ),
    };
    assert!(buf.is_empty());
    assert_eq!(again.method, h.method);
    assert_eq!(again.uri, h.uri);
    assert_eq!(again.version, h.version);
    assert_eq!(again.headers, h.headers);
    assert_eq!(again.framing, h.framing);
    assert_eq!(again.expect_continue, h.expect_continue);
    if h.framing == RequestFraming::Chunked {
        assert!(again.keep_alive || !h.keep_alive);
    } else {
        assert_eq!(again.keep_alive, h.keep_alive);
    }
}

fn once(input: &[u8], limits: RequestLimits) -> Outcome {
    let mut buf = BytesMut::from(input);
    let lead = empty_lines(input);
    match parse_request(&mut buf, limits) {
        Ok(None) => {
            assert!(
                buf.len() >= input.len() - lead && input.ends_with(&buf),
                "Ok(None) consumed more than the empty lines"
            );
            assert!(buf.len() <= limits.max_head, "Ok(None) past max_head");
            Outcome::Incomplete
        }
        Ok(Some(h)) => {
            let used = input.len() - buf.len();
            assert!(used > lead && used - lead <= limits.max_head);
            assert!(input[..used].ends_with(b"\n"));
            assert_eq!(
                &buf[..],
                &input[used..],
                "the body is not what follows the head"
            );
            assert!(h.headers.len() <= limits.max_headers);
            check_head(&h);
            check_reencoding(&h);
            Outcome::Head {
                used,
                summary: summary(&h),
            }
        }
        Err(e) => {
            let _ = e.status();
            Outcome::Failed
        }
    }
}

fn in_two(input: &[u8], split: usize, limits: RequestLimits) -> Outcome {
    let (a, b) = input.split_at(split);
    let mut buf = BytesMut::from(a);
    let mut fed = a.len();
    for next in [Some(b), None] {
        match parse_request(&mut buf, limits) {
            Ok(None) => {}
            Ok(Some(h)) => {
                return Outcome::Head {
                    used: fed - buf.len(),
                    summary: summary(&h),
                };
            }
            Err(_) => return Outcome::Failed,
        }
        match next {
            Some(b) => {
                buf.extend_from_slice(b);
                fed += b.len();
            }
            None => break,
        }
    }
    Outcome::Incomplete
}

fuzz_target!(|input: &[u8]| {
    let [h0, h1, n, s0, s1, payload @ ..] = input else {
        return;
    };
    let limits = RequestLimits {
        // At least 1: with 0 every request is refused, and a CR that may
        // start an empty line is refused when it arrives alone but dropped
        // with its LF when both come together.
        max_head: usize::from(u16::from_le_bytes([*h0, *h1])) % 4096 + 1,
        max_headers: usize::from(*n),
    };
    let split = usize::from(u16::from_le_bytes([*s0, *s1])) % (payload.len() + 1);
    let whole = once(payload, limits);
    let parts = in_two(payload, split, limits);
    // Errors may be found at different points, but the two never disagree
    // on whether there is a head and what it says.
    match (&whole, &parts) {
        (Outcome::Failed, Outcome::Failed) => {}
        (a, b) => assert_eq!(a, b, "whole vs split at {split}"),
    }
});
