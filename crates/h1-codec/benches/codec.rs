//! Cost of the codec's three hot paths on typical messages: parsing an
//! nginx response head, decoding a chunked body as it arrives in socket
//! reads, encoding a proxied request head.
use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use h1_codec::{
    BodyFraming, CRLF, Chunk, ChunkedDecoder, LAST_CHUNK, encode_chunk, encode_request_head,
    parse_response,
};
use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// What nginx sends for a 100-byte static file: status line and 7 headers.
const NGINX_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: nginx/1.22.1\r\n\
Date: Fri, 27 Nov 2026 08:25:00 GMT\r\n\
Content-Type: text/html\r\n\
Content-Length: 100\r\n\
Last-Modified: Thu, 26 Nov 2026 17:02:11 GMT\r\n\
Connection: keep-alive\r\n\
ETag: \"6767a0b3-64\"\r\n\
\r\n";

fn parse_head(c: &mut Criterion) {
    let mut wire = NGINX_HEAD.to_vec();
    wire.extend_from_slice(&[b'x'; 100]);
    let mut g = c.benchmark_group("parse_response");
    g.throughput(Throughput::Elements(1));
    g.bench_function("nginx_7_headers", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&wire[..]),
            |buf| {
                let head = parse_response(buf, false, 64 * 1024);
                black_box(head)
            },
            BatchSize::SmallInput,
        )
    });
    // Baseline: httparse's tokenizing alone (no HeaderMap, no framing).
    g.bench_function("httparse_only", |b| {
        b.iter(|| {
            let mut raw = [httparse::EMPTY_HEADER; h1_codec::MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut raw);
            black_box(resp.parse(black_box(&wire)).is_ok())
        })
    });
    g.finish();
}

fn decode_chunked(c: &mut Criterion) {
    const BODY: usize = 16 * 1024;
    const READ: usize = 4 * 1024;
    const CHUNK: usize = 4 * 1024;
    let body: Vec<u8> = (0..BODY).map(|i| (i % 251) as u8).collect();
    let mut wire = Vec::new();
    for part in body.chunks(CHUNK) {
        encode_chunk(&mut wire, part.len());
        wire.extend_from_slice(part);
        wire.extend_from_slice(CRLF);
    }
    wire.extend_from_slice(LAST_CHUNK);

    let mut g = c.benchmark_group("chunked");
    g.throughput(Throughput::Bytes(BODY as u64));
    g.bench_function("16KiB_in_4KiB_reads", |b| {
        let mut buf = BytesMut::with_capacity(2 * READ);
        b.iter(|| {
            let mut dec = ChunkedDecoder::new();
            let mut got = 0usize;
            for read in wire.chunks(READ) {
                buf.extend_from_slice(read);
                while let Ok(Chunk::Data(d)) = dec.decode(&mut buf) {
                    got += black_box(d).len();
                }
            }
            assert!(dec.is_done() && got == BODY);
            buf.clear();
        })
    });
    g.finish();
}

fn encode_head(c: &mut Criterion) {
    let mut h = HeaderMap::new();
    let mut add = |n: HeaderName, v: &'static str| {
        h.append(n, HeaderValue::from_static(v));
    };
    add(header::HOST, "shop.example.com");
    add(
        header::USER_AGENT,
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    );
    add(
        header::ACCEPT,
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    );
    add(header::ACCEPT_ENCODING, "gzip, deflate, br");
    add(header::ACCEPT_LANGUAGE, "en-US,en;q=0.5");
    add(header::COOKIE, "session=8f14e45fceea167a5a36dedd4bea2543");
    add(HeaderName::from_static("x-forwarded-for"), "192.0.2.17");
    add(HeaderName::from_static("x-forwarded-proto"), "https");
    let target = "/catalog/items?page=2&sort=price";

    let mut g = c.benchmark_group("encode_request_head");
    g.throughput(Throughput::Elements(1));
    g.bench_function("get_8_headers", |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            out.clear();
            encode_request_head(
                &mut out,
                black_box(&Method::GET),
                black_box(target),
                black_box(&h),
                BodyFraming::None,
            );
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, parse_head, decode_chunked, encode_head);
criterion_main!(benches);
