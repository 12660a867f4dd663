//! The node's per-request work outside the sockets: route matching (10 and
//! 1000 routes; hits at the front and the back of the precedence order, a
//! header-conditioned hit, misses) and the upstream request's header rewrite
//! (hop-by-hop strip, X-Forwarded-For / Forwarded set, per-route add/remove).
//!
//! `cargo bench -p node --bench l7`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use control_api::pb::{HeaderMatch, HeaderValue as PbHeaderValue, Route};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use http::Method;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use node::forward::{set_forwarding_headers, strip_hop_by_hop};
use node::router::{Router, normalize_host};

/// `n` routes shaped like a multi-tenant config: a tenth for exact hosts, a
/// tenth for wildcard hosts, the rest for any host with a path prefix (every
/// fourth also needs an `x-tenant` header, every fifth is GET-only), plus
/// (`catch_all`) one route for `/`, which every other route outranks.
fn routes(n: usize, catch_all: bool) -> Vec<Route> {
    let body = if catch_all { n - 1 } else { n };
    let exact = (body / 10).max(1);
    let wildcard = (body / 10).max(1);
    let mut out = Vec::with_capacity(n);
    for i in 0..body {
        let mut r = Route {
            name: format!("r{i:04}"),
            cluster: format!("c{}", i % 8),
            ..Default::default()
        };
        if i < exact {
            r.host = format!("app{i}.example.com");
            r.path_prefix = "/".into();
        } else if i < exact + wildcard {
            r.host = format!("*.t{i}.example.com");
            r.path_prefix = "/".into();
        } else {
            r.path_prefix = format!("/svc{i:04}/");
            if i % 4 == 0 {
                r.headers.push(HeaderMatch {
                    name: "x-tenant".into(),
                    exact: format!("tenant-{i}"),
                    invert: false,
                });
            }
            if i % 5 == 0 {
                r.methods.push("GET".into());
            }
        }
        out.push(r);
    }
    if catch_all {
        out.push(Route {
            name: "zz-catch-all".into(),
            path_prefix: "/".into(),
            cluster: "default".into(),
            ..Default::default()
        });
    }
    out
}

fn browser_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in [
        ("host", "shop.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("connection", "keep-alive, x-debug"),
        ("keep-alive", "timeout=5"),
        ("x-debug", "1"),
        (
            "cookie",
            "session=8f14e45fceea167a5a36dedd4bea2543; theme=dark",
        ),
        ("x-forwarded-for", "203.0.113.99"),
        ("forwarded", "for=203.0.113.99"),
        ("upgrade-insecure-requests", "1"),
        ("x-tenant", "tenant-40"),
    ] {
        h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
    }
    h
}

struct Case {
    name: &'static str,
    host: String,
    method: Method,
    path: String,
    headers: HeaderMap,
    /// The route the router must pick (`None`: a miss).
    want: Option<String>,
}

fn cases(n: usize) -> (Vec<Case>, Router, Router) {
    let with = Router::compile(&routes(n, true)).expect("routes compile");
    let without = Router::compile(&routes(n, false)).expect("routes compile");
    // The any-host group in precedence order (routes() yields it last, sorted).
    let any: Vec<_> = with.routes().filter(|r| r.host.is_empty()).collect();
    let front = any.first().map(|r| r.name.clone()).unwrap_or_default();
    let front_path = match any.first().map(|r| &r.path) {
        Some(node::router::PathMatch::Prefix(p)) | Some(node::router::PathMatch::Exact(p)) => {
            format!("{p}item/42")
        }
        None => "/".into(),
    };
    let mut front_headers = HeaderMap::new();
    if let Some(r) = any.first() {
        for c in &r.headers {
            let v = c.exact.clone().unwrap_or(HeaderValue::from_static("1"));
            front_headers.insert(c.name.clone(), v);
        }
    }
    let body = n - 1;
    let exact = (body / 10).max(1);
    // The last any-host route with a header condition (deep in the group).
    let hdr_i = (0..body)
        .rev()
        .find(|i| *i >= 2 * exact && i % 4 == 0 && i % 5 != 0);
    let mut hdr_headers = HeaderMap::new();
    let (hdr_path, hdr_want) = match hdr_i {
        Some(i) => {
            if let Ok(v) = HeaderValue::from_str(&format!("tenant-{i}")) {
                hdr_headers.insert(HeaderName::from_static("x-tenant"), v);
            }
            (format!("/svc{i:04}/orders"), Some(format!("r{i:04}")))
        }
        None => ("/".into(), Some("zz-catch-all".into())),
    };
    let out = vec![
        Case {
            name: "exact_host",
            host: "app0.example.com".into(),
            method: Method::GET,
            path: "/index.html".into(),
            headers: HeaderMap::new(),
            want: Some("r0000".into()),
        },
        Case {
            name: "wildcard_host",
            host: format!("www.t{exact}.example.com"),
            method: Method::GET,
            path: "/index.html".into(),
            headers: HeaderMap::new(),
            want: Some(format!("r{exact:04}")),
        },
        Case {
            name: "prefix_front",
            host: "unknown.example.org".into(),
            method: Method::GET,
            path: front_path,
            headers: front_headers,
            want: Some(front),
        },
        Case {
            name: "header_cond_back",
            host: "unknown.example.org".into(),
            method: Method::POST,
            path: hdr_path,
            headers: hdr_headers,
            want: hdr_want,
        },
        Case {
            name: "last_precedence",
            host: "unknown.example.org".into(),
            method: Method::GET,
            path: "/nothing/here".into(),
            headers: HeaderMap::new(),
            want: Some("zz-catch-all".into()),
        },
    ];
    (out, with, without)
}

fn route(c: &mut Criterion) {
    for n in [10usize, 1000] {
        let (cases, with, without) = cases(n);
        let mut g = c.benchmark_group(format!("route_{n}"));
        for case in &cases {
            // A benchmark of the wrong route measures nothing: check first.
            let got = with
                .route(&case.host, &case.method, &case.path, &case.headers)
                .map(|r| r.name.clone());
            assert_eq!(got, case.want, "{n} routes, case {}", case.name);
            g.bench_function(case.name, |b| {
                b.iter(|| {
                    with.route(
                        black_box(&case.host),
                        black_box(&case.method),
                        black_box(&case.path),
                        black_box(&case.headers),
                    )
                    .is_some()
                })
            });
        }
        // No catch-all: a request no route takes scans every group.
        let miss = HeaderMap::new();
        assert!(
            without
                .route("unknown.example.org", &Method::GET, "/nothing/here", &miss)
                .is_none()
        );
        g.bench_function("miss", |b| {
            b.iter(|| {
                without
                    .route(
                        black_box("unknown.example.org"),
                        black_box(&Method::GET),
                        black_box("/nothing/here"),
                        black_box(&miss),
                    )
                    .is_some()
            })
        });
        g.finish();
    }
    let mut g = c.benchmark_group("router_compile");
    for n in [10usize, 1000] {
        let rs = routes(n, true);
        g.bench_with_input(BenchmarkId::from_parameter(n), &rs, |b, rs| {
            b.iter(|| Router::compile(black_box(rs)).is_ok())
        });
    }
    g.finish();
    c.bench_function("normalize_host", |b| {
        b.iter(|| normalize_host(black_box("WWW.Example.COM:8443")))
    });
}

fn headers(c: &mut Criterion) {
    let base = browser_headers();
    let v4 = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 23));
    let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x23));
    let edit = Router::compile(&[Route {
        name: "edit".into(),
        cluster: "app".into(),
        request_headers_add: vec![
            PbHeaderValue {
                name: "x-env".into(),
                value: "production".into(),
            },
            PbHeaderValue {
                name: "x-route".into(),
                value: "edit".into(),
            },
        ],
        request_headers_remove: vec!["cookie".into(), "x-tenant".into()],
        ..Default::default()
    }])
    .expect("the edit route compiles");
    let Some(edit) = edit.routes().next().cloned() else {
        panic!("the edit route did not compile");
    };

    // What the app receives, checked once before timing.
    let mut h = base.clone();
    set_forwarding_headers(&mut h, v4, "https", Some("shop.example.com"), false);
    edit.edit_request(&mut h);
    assert_eq!(
        h.get("x-forwarded-for").map(|v| v.as_bytes()),
        Some(&b"198.51.100.23"[..])
    );
    assert_eq!(
        h.get("forwarded").map(|v| v.as_bytes()),
        Some(&b"for=198.51.100.23;proto=https"[..])
    );
    assert!(h.get("connection").is_none() && h.get("keep-alive").is_none());
    assert!(
        h.get("x-debug").is_none(),
        "named in Connection: hop-by-hop"
    );
    assert!(h.get("cookie").is_none() && h.get("x-env").is_some());

    let mut g = c.benchmark_group("headers");
    g.bench_function("baseline_noop", |b| {
        b.iter_batched(|| base.clone(), black_box, BatchSize::SmallInput)
    });
    g.bench_function("strip_hop_by_hop", |b| {
        b.iter_batched(
            || base.clone(),
            |mut h| {
                strip_hop_by_hop(&mut h);
                h
            },
            BatchSize::SmallInput,
        )
    });
    for (name, ip, pp) in [
        ("forwarding_v4", v4, false),
        ("forwarding_v6", v6, false),
        ("forwarding_proxy_v2_cluster", v4, true),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || base.clone(),
                |mut h| {
                    set_forwarding_headers(&mut h, ip, "https", Some("shop.example.com"), pp);
                    h
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.bench_function("route_add_remove", |b| {
        b.iter_batched(
            || base.clone(),
            |mut h| {
                edit.edit_request(&mut h);
                h
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("full_upstream_rewrite", |b| {
        b.iter_batched(
            || base.clone(),
            |mut h| {
                set_forwarding_headers(&mut h, v4, "https", Some("shop.example.com"), false);
                edit.edit_request(&mut h);
                h
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, route, headers);
criterion_main!(benches);
