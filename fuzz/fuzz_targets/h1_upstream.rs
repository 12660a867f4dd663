//! What an upstream can send the node's HTTP/1.1 client: a response head
//! attempt, then body bytes for the chunked decoder, each fed whole and in
//! pieces. Nothing may panic, and the answer must not depend on how the
//! bytes were split into reads.
//!
//! Input: `[split lo, split hi, flags, payload...]`; the head attempt is
//! `payload[..split]`, the body the rest; flags bit 0 = answer to a HEAD,
//! bits 1..8 = read size - 1.
#![no_main]

use bytes::BytesMut;
use h1_codec::{
    Chunk, ChunkedDecoder, Error, MAX_CHUNK_LINE, ResponseHead, parse_response, parse_response_lines,
};
use libfuzzer_sys::fuzz_target;

const MAX_HEAD: usize = 2048;

#[derive(Debug, PartialEq)]
enum HeadOutcome {
    Incomplete,
    Head { used: usize, summary: String },
    Failed,
}

fn summary(h: &ResponseHead) -> String {
    format!(
        "{} {:?} {:?} {} {}",
        h.status,
        h.version,
        h.framing,
        h.keep_alive,
        h.headers.len()
    )
}

/// The line-keeping parse (what the node passes on) agrees with the
/// header-map parse, and writing its lines on never panics.
fn lines_agree(input: &[u8], head_request: bool) {
    let mut a = BytesMut::from(input);
    let mut b = BytesMut::from(input);
    let mapped = parse_response(&mut a, head_request, MAX_HEAD);
    let raw = parse_response_lines(&mut b, head_request, MAX_HEAD);
    assert_eq!(a, b, "the two parses consumed differently");
    match (mapped, raw) {
        (Ok(None), Ok(None)) => {}
        (Err(x), Err(y)) => assert_eq!(x, y),
        (Ok(Some(m)), Ok(Some(r))) => {
            assert_eq!((m.status, m.framing, m.keep_alive), (r.status, r.framing, r.keep_alive));
            assert_eq!(m.for_forwarding().is_ok(), r.check_forwardable().is_ok());
            let mut out = Vec::new();
            h1_codec::encode_forwarded_response_head(
                &mut out,
                r.status,
                &r.lines,
                &http::HeaderMap::new(),
                &[],
                h1_codec::ResponseFraming::Chunked,
            );
            assert!(out.ends_with(b"\r\n\r\n"));
        }
        (x, y) => panic!("map parse {x:?}, line parse {y:?}"),
    }
}

fn head_once(input: &[u8], head_request: bool) -> HeadOutcome {
    lines_agree(input, head_request);
    let mut buf = BytesMut::from(input);
    match parse_response(&mut buf, head_request, MAX_HEAD) {
        Ok(None) => {
            assert_eq!(&buf[..], input, "Ok(None) consumed bytes");
            HeadOutcome::Incomplete
        }
        Ok(Some(h)) => {
            let used = input.len() - buf.len();
            assert!(used > 0 && used <= MAX_HEAD);
            assert_eq!(
                &buf[..],
                &input[used..],
                "the body is not what follows the head"
            );
            if head_request {
                assert_eq!(h.framing, h1_codec::Framing::Empty);
            }
            HeadOutcome::Head {
                used,
                summary: summary(&h),
            }
        }
        Err(_) => HeadOutcome::Failed,
    }
}

fn head_in_pieces(input: &[u8], head_request: bool, piece: usize) -> HeadOutcome {
    let mut buf = BytesMut::new();
    let mut fed = 0;
    for part in input.chunks(piece) {
        buf.extend_from_slice(part);
        fed += part.len();
        match parse_response(&mut buf, head_request, MAX_HEAD) {
            Ok(None) => assert_eq!(buf.len(), fed),
            Ok(Some(h)) => {
                return HeadOutcome::Head {
                    used: fed - buf.len(),
                    summary: summary(&h),
                };
            }
            Err(_) => return HeadOutcome::Failed,
        }
    }
    HeadOutcome::Incomplete
}

#[derive(Debug, PartialEq)]
enum BodyOutcome {
    Need,
    Done { rest: Vec<u8> },
    Failed(Error),
}

/// Decodes `input` in reads of `piece` bytes: the data, and how it ended.
fn body_in_pieces(input: &[u8], piece: usize) -> (Vec<u8>, BodyOutcome) {
    let mut dec = ChunkedDecoder::new();
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut fed = 0;
    let mut parts = input.chunks(piece);
    while let Some(part) = parts.next() {
        buf.extend_from_slice(part);
        fed += part.len();
        loop {
            match dec.decode(&mut buf) {
                Ok(Chunk::Data(d)) => {
                    assert!(!d.is_empty(), "empty Data");
                    data.extend_from_slice(&d);
                    assert!(data.len() <= fed - buf.len(), "more data than consumed");
                }
                Ok(Chunk::Need) => break,
                Ok(Chunk::Done) => {
                    assert!(dec.is_done());
                    let left = buf.len();
                    assert_eq!(dec.decode(&mut buf), Ok(Chunk::Done));
                    assert_eq!(buf.len(), left, "Done consumed bytes");
                    for p in parts.by_ref() {
                        buf.extend_from_slice(p);
                    }
                    return (data, BodyOutcome::Done { rest: buf.to_vec() });
                }
                Err(e) => return (data, BodyOutcome::Failed(e)),
            }
        }
    }
    (data, BodyOutcome::Need)
}

fuzz_target!(|input: &[u8]| {
    let [lo, hi, flags, payload @ ..] = input else {
        return;
    };
    let split = usize::from(u16::from_le_bytes([*lo, *hi])) % (payload.len() + 1);
    let head_request = flags & 1 == 1;
    let piece = usize::from(flags >> 1) + 1;
    let (head, body) = payload.split_at(split);

    let once = head_once(head, head_request);
    let pieces = head_in_pieces(head, head_request, piece);
    // Errors may be found at different points, but never disagree on
    // whether there is a head and what it says.
    match (&once, &pieces) {
        (HeadOutcome::Failed, HeadOutcome::Failed) => {}
        (a, b) => assert_eq!(a, b, "whole vs in pieces of {piece}"),
    }

    let (data_whole, end_whole) = body_in_pieces(body, body.len().max(1));
    let (data_pieces, end_pieces) = body_in_pieces(body, piece);
    assert!(data_whole.len() <= body.len());
    // Past the chunk-line limit, a long line that arrives in one read is
    // accepted and the same line in small reads is refused: only compare
    // below it.
    if body.len() <= MAX_CHUNK_LINE {
        assert_eq!(end_whole, end_pieces, "whole vs in pieces of {piece}");
        assert_eq!(data_whole, data_pieces, "whole vs in pieces of {piece}");
    }
});
