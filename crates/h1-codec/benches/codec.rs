//! Cost of the codec's hot paths on typical messages: parsing an nginx
//! response head, decoding a chunked body as it arrives in socket reads,
//! encoding a proxied request head, and on the server side parsing a
//! client's request head.
use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use h1_codec::{
    BodyFraming, CRLF, Chunk, ChunkedDecoder, LAST_CHUNK, RequestLimits, encode_chunk,
    encode_request_head, parse_request, parse_response,
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

/// What a browser sends for a page: request line and 10 headers.
const BROWSER_GET: &[u8] = b"GET /catalog/items?page=2&sort=price HTTP/1.1\r\n\
Host: shop.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Referer: https://shop.example.com/catalog\r\n\
Connection: keep-alive\r\n\
Cookie: session=8f14e45fceea167a5a36dedd4bea2543; theme=dark\r\n\
Upgrade-Insecure-Requests: 1\r\n\
Priority: u=0, i\r\n\
\r\n";

/// A load generator's GET (wrk with a Host and two `-H` headers).
const WRK_GET: &[u8] = b"GET /100b HTTP/1.1\r\n\
Host: app.test\r\n\
User-Agent: wrk\r\n\
Accept: */*\r\n\
\r\n";

/// The node's default request limits.
const LIMITS: RequestLimits = RequestLimits {
    max_head: 64 * 1024,
    max_headers: 100,
};

fn parse_request_head(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_request");
    g.throughput(Throughput::Elements(1));
    for (name, wire) in [
        ("browser_get_10_headers", BROWSER_GET),
        ("wrk_get_3_headers", WRK_GET),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || BytesMut::from(wire),
                |buf| {
                    let head = parse_request(buf, LIMITS);
                    assert!(matches!(head, Ok(Some(_))));
                    black_box(head)
                },
                BatchSize::SmallInput,
            )
        });
    }
    // Baseline: httparse's tokenizing alone (no URI, HeaderMap or checks).
    g.bench_function("httparse_only_browser_get", |b| {
        b.iter(|| {
            let mut raw = [httparse::EMPTY_HEADER; 100];
            let mut req = httparse::Request::new(&mut raw);
            black_box(req.parse(black_box(BROWSER_GET)).is_ok())
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    parse_head,
    decode_chunked,
    encode_head,
    parse_request_head
);
criterion_main!(benches);
