//! Production-depth behaviour, over real sockets with real clients: limits
//! and request hygiene, routing, cluster health and balancing, upstream h2,
//! TLS resumption across nodes, mTLS, drain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use control_api::pb::{
    HashOn, HashPolicy, HeaderMatch, HeaderValue as PbHeader, HealthCheck, ListenerSettings,
    OutlierDetection, Redirect, RetryPolicy, TicketKey, TlsSettings, UpstreamProtocol,
};
use control_api::{Cluster, LbPolicy, Route, Snapshot};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use node::Node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod support;
use support::{
    Running, TestCert, Tls, certificate, client_config, cluster, line, loopback, route, run_node,
    test_cert, tls_connect, tls_connect_with,
};

/// What an app does with a request.
type Handler = Arc<dyn Fn(&Request<()>, usize) -> Response<Full<Bytes>> + Send + Sync>;

/// An HTTP/1.1 app: reads the whole body, then answers with `handler`
/// (given the body length).
async fn app(handler: Handler) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let len = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        Ok::<_, Infallible>(handler(&Request::from_parts(parts, ()), len))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    a
}

fn header(req: &Request<()>, n: &str) -> String {
    req.headers()
        .get(n)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

/// Answers `app=<name>` plus a few request facts.
async fn named_app(name: &'static str) -> SocketAddr {
    app(Arc::new(move |req, len| {
        let body = format!(
            "app={name}\npath={}\nlen={len}\nadded={}\nsecret={}\n",
            req.uri().path(),
            header(req, "x-added"),
            header(req, "x-secret"),
        );
        let mut r = Response::new(Full::new(Bytes::from(body)));
        r.headers_mut().insert(
            "x-app-internal",
            hyper::header::HeaderValue::from_static("1"),
        );
        r
    }))
    .await
}

fn snapshot(cert: &TestCert, clusters: Vec<Cluster>, routes: Vec<Route>) -> Snapshot {
    Snapshot {
        version: 1,
        clusters,
        routes,
        certificates: vec![certificate(cert)],
        ..Default::default()
    }
}

async fn start(snap: &Snapshot) -> Running {
    run_node(
        loopback().await,
        "node-depth",
        Duration::from_secs(5),
        snap,
        true,
    )
}

async fn tls(addr: SocketAddr, cert: &TestCert, alpn: &[&[u8]]) -> Tls {
    tls_connect(addr, None, alpn, cert).await.expect("tls")
}

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn h1(addr: SocketAddr, cert: &TestCert) -> H1 {
    let (send, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls(addr, cert, &[b"http/1.1"]).await))
            .await
            .expect("h1 handshake");
    tokio::spawn(conn);
    send
}

struct Answer {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: String,
}

async fn collect(resp: Response<Incoming>) -> Answer {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn send1(s: &mut H1, req: Request<Full<Bytes>>) -> Answer {
    s.ready().await.expect("ready");
    collect(s.send_request(req).await.expect("response")).await
}

fn get(path: &str) -> hyper::http::request::Builder {
    Request::get(path).header("host", "localhost")
}

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

/// Writes `bytes` on a fresh TLS connection (http/1.1) and reads what comes
/// back until the server closes (or 5 s pass).
async fn raw(addr: SocketAddr, cert: &TestCert, bytes: &[u8]) -> String {
    let mut s = tls(addr, cert, &[b"http/1.1"]).await;
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn metrics(node: &Node) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &node.registry()).expect("encode");
    text
}

/// Polls `f` every 50 ms for up to 5 s.
async fn eventually<F: AsyncFnMut() -> bool>(mut f: F) -> bool {
    for _ in 0..100 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

// ---------------------------------------------------------------- limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_body_limits_and_smuggling_shapes_on_the_wire() {
    let cert = test_cert();
    let a = named_app("a").await;
    let mut small = cluster("small", &[a]);
    small.max_request_body_bytes = 100;
    let mut snap = snapshot(
        &cert,
        vec![cluster("a", &[a]), small],
        vec![route("all", "/", "a"), route("small", "/small", "small")],
    );
    snap.listener = Some(ListenerSettings {
        max_header_bytes: 8192,
        max_headers: 20,
        max_request_body_bytes: 1000,
        ..Default::default()
    });
    let n = start(&snap).await;

    // A head over 8 KiB: 431.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let got = raw(n.addr, &cert, big.as_bytes()).await;
    assert!(got.starts_with("HTTP/1.1 431 "), "{got}");
    // Too many header lines: 431.
    let mut many = "GET / HTTP/1.1\r\nHost: localhost\r\n".to_string();
    for i in 0..30 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let got = raw(n.addr, &cert, many.as_bytes()).await;
    assert!(got.starts_with("HTTP/1.1 431 "), "{got}");

    // A declared body over the listener's limit: 413 before any body byte.
    let got = raw(
        n.addr,
        &cert,
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 413 "), "{got}");
    assert!(got.ends_with("request body too large\n"), "{got}");
    // The cluster's own, smaller limit.
    let mut s = h1(n.addr, &cert).await;
    let a1 = send1(
        &mut s,
        Request::post("/small")
            .header("host", "localhost")
            .body(Full::new(Bytes::from(vec![1u8; 200])))
            .expect("req"),
    )
    .await;
    assert_eq!(a1.status, StatusCode::PAYLOAD_TOO_LARGE);
    let mut s = h1(n.addr, &cert).await;
    let a2 = send1(
        &mut s,
        Request::post("/")
            .header("host", "localhost")
            .body(Full::new(Bytes::from(vec![1u8; 900])))
            .expect("req"),
    )
    .await;
    assert_eq!(a2.status, StatusCode::OK);
    assert_eq!(line(&a2.body, "len"), "900");

    // A chunked (streamed, undeclared) body that crosses the limit: 413.
    let mut chunked =
        b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(b"190\r\n");
        chunked.extend_from_slice(&[b'x'; 400]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let got = raw(n.addr, &cert, &chunked).await;
    assert!(got.starts_with("HTTP/1.1 413 "), "{got}");
    assert!(got.contains("connection: close"), "{got}");
    // And over h2 (DATA frames, no content-length).
    let (mut h2s, conn) = hyper::client::conn::http2::handshake::<_, _, StreamBody<_>>(
        TokioExecutor::new(),
        TokioIo::new(tls(n.addr, &cert, &[b"h2"]).await),
    )
    .await
    .expect("h2");
    tokio::spawn(conn);
    let chunks = futures_util::stream::iter(
        (0..5).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![1u8; 400])))),
    );
    let r = h2s
        .send_request(
            Request::post("https://localhost/")
                .body(StreamBody::new(chunks))
                .expect("req"),
        )
        .await
        .expect("response");
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Smuggling shapes refused with 400 by the request parser, before routing.
    let refused: [(&str, &[u8]); 4] = [
        (
            "two different Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        ),
        (
            "Transfer-Encoding not ending in chunked",
            b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\nabcd",
        ),
        (
            "obfuscated chunked",
            b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            b"POST / HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
    ];
    for (shape, request) in refused {
        let got = raw(n.addr, &cert, request).await;
        assert!(got.starts_with("HTTP/1.1 400 "), "{shape}: {got}");
    }
    // Content-Length and Transfer-Encoding together: the node frames the body
    // by the chunked encoding, drops Content-Length and closes the
    // connection after the answer (RFC 9112 6.1), so the bytes the CL would
    // have left over ("GET /smuggled") are never read as a request.
    let got = raw(
        n.addr,
        &cert,
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
    assert!(got.contains("connection: close"), "{got}");
    assert!(got.contains("\nlen=0\n"), "{got}");
    assert!(!got.contains("smuggled"), "{got}");
    assert_eq!(got.matches("HTTP/1.1 ").count(), 1, "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_header_list_limit_and_stream_limit() {
    let cert = test_cert();
    let a = named_app("a").await;
    let mut snap = snapshot(
        &cert,
        vec![cluster("a", &[a])],
        vec![route("all", "/", "a")],
    );
    snap.listener = Some(ListenerSettings {
        max_header_bytes: 8192,
        h2_max_concurrent_streams: 3,
        ..Default::default()
    });
    let n = start(&snap).await;
    let io = tls(n.addr, &cert, &[b"h2"]).await;
    // The raw h2 client shows the server's SETTINGS.
    let (client, mut conn) = h2::client::handshake(io).await.expect("h2");
    let req = Request::get("https://localhost/")
        .header("x-big", "a".repeat(10_000))
        .body(())
        .expect("req");
    let first = async {
        let mut c = client.clone().ready().await.expect("ready");
        let (resp, _) = c.send_request(req, true).expect("send");
        resp.await
    };
    let res = tokio::select! {
        r = first => r,
        r = &mut conn => panic!("connection ended: {r:?}"),
    };
    match res {
        // The h2 crate answers an oversized header list with 431.
        Ok(r) => assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => panic!("no 431: {e}"),
    }
    assert_eq!(conn.max_concurrent_send_streams(), 3);
    tokio::spawn(conn);
    // A normal request on the same connection still works.
    let mut client = client.ready().await.expect("ready");
    let (resp, _) = client
        .send_request(
            Request::get("https://localhost/ok").body(()).expect("req"),
            true,
        )
        .expect("send");
    assert_eq!(resp.await.expect("response").status(), StatusCode::OK);
}

/// A client that sends its whole upload without waiting (no
/// `Expect: 100-continue`) gets the 413, not a reset: the node reads and
/// drops the body it refused before closing (a close with unread bytes
/// sends a TCP reset, which can destroy the answer before it is read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upload_gets_its_answer_not_a_reset() {
    let cert = test_cert();
    let a = named_app("a").await;
    let mut small = cluster("small", &[a]);
    small.max_request_body_bytes = 100;
    let snap = snapshot(&cert, vec![small], vec![route("small", "/", "small")]);
    let n = start(&snap).await;
    for round in 0..5 {
        let s = tls(n.addr, &cert, &[b"http/1.1"]).await;
        let (mut rd, mut wr) = tokio::io::split(s);
        let body = vec![b'x'; 256 * 1024];
        let writer = tokio::spawn(async move {
            let head = format!(
                "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = wr.write_all(head.as_bytes()).await;
            // The node answers on the head; the body follows at once.
            let _ = wr.write_all(&body).await;
            wr
        });
        let mut out = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut out)).await;
        let got = String::from_utf8_lossy(&out);
        assert!(
            got.starts_with("HTTP/1.1 413 "),
            "round {round}: {r:?}: {got}"
        );
        assert!(got.contains("connection: close"), "{got}");
        // The connection ends with the node's close, not a reset.
        assert!(
            matches!(r, Ok(Ok(_))),
            "round {round}: connection ended with {r:?}"
        );
        drop(writer.await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_and_too_many_connections_are_cut() {
    let cert = test_cert();
    let a = named_app("a").await;
    let mut snap = snapshot(
        &cert,
        vec![cluster("a", &[a])],
        vec![route("all", "/", "a")],
    );
    snap.listener = Some(ListenerSettings {
        header_read_timeout_ms: 300,
        tls_handshake_timeout_ms: 300,
        max_connections: 2,
        ..Default::default()
    });
    let n = start(&snap).await;

    // Slowloris: half a request head, then silence. The server closes.
    let mut s = tls(n.addr, &cert, &[b"http/1.1"]).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: loc")
        .await
        .expect("write");
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "slow head not cut");
    drop(s);
    // A TCP client that never starts TLS is cut too.
    let mut t = TcpStream::connect(n.addr).await.expect("connect");
    let r = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "silent client not cut");
    drop(t);

    // Two connections allowed: the third is closed at once.
    assert!(
        eventually(async || metrics(&n.node).contains("tandem_node_connections_active 0")).await
    );
    let mut c1 = h1(n.addr, &cert).await;
    let mut c2 = h1(n.addr, &cert).await;
    assert_eq!(
        send1(&mut c1, get("/").body(empty()).expect("r"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send1(&mut c2, get("/").body(empty()).expect("r"))
            .await
            .status,
        StatusCode::OK
    );
    let third = tls_connect_with(
        n.addr,
        None,
        Arc::new(client_config(&cert, &[b"http/1.1"], None)),
    )
    .await;
    assert!(third.is_err(), "third connection got through");
    assert!(metrics(&n.node).contains("tandem_node_connections_refused_total 1"));
    // One goes: a new one gets in.
    drop(c1);
    assert!(
        eventually(async || {
            tls_connect_with(
                n.addr,
                None,
                Arc::new(client_config(&cert, &[b"http/1.1"], None)),
            )
            .await
            .is_ok()
        })
        .await
    );
}

// ---------------------------------------------------------------- routing

#[tokio::test]
async fn routes_by_header_method_exact_path_edit_headers_and_redirect() {
    let cert = test_cert();
    let (a, b, c, d) = (
        named_app("a").await,
        named_app("b").await,
        named_app("c").await,
        named_app("d").await,
    );
    let mut canary = route("canary", "/", "b");
    canary.headers = vec![HeaderMatch {
        name: "x-canary".into(),
        exact: "yes".into(),
        invert: false,
    }];
    let mut writes = route("writes", "/", "c");
    writes.methods = vec!["POST".into()];
    let mut login = route("login", "", "d");
    login.path_exact = "/login".into();
    login.request_headers_add = vec![PbHeader {
        name: "x-added".into(),
        value: "by-route".into(),
    }];
    login.request_headers_remove = vec!["x-secret".into()];
    login.response_headers_add = vec![PbHeader {
        name: "strict-transport-security".into(),
        value: "max-age=60".into(),
    }];
    login.response_headers_remove = vec!["x-app-internal".into()];
    let mut old = route("old", "/old/", "");
    old.redirect = Some(Redirect {
        host: "new.example".into(),
        prefix_rewrite: "/new/".into(),
        status: 308,
        ..Default::default()
    });
    let mut only_www = route("www", "/", "a");
    only_www.host = "www.test".into();
    let snap = snapshot(
        &cert,
        vec![
            cluster("a", &[a]),
            cluster("b", &[b]),
            cluster("c", &[c]),
            cluster("d", &[d]),
        ],
        vec![
            route("root", "/", "a"),
            canary,
            writes,
            login,
            old,
            only_www,
        ],
    );
    let n = start(&snap).await;
    let mut s = h1(n.addr, &cert).await;
    let app = |x: &Answer| line(&x.body, "app").to_string();

    let r = send1(&mut s, get("/x").body(empty()).expect("r")).await;
    assert_eq!(app(&r), "a");
    assert_eq!(
        r.headers.get("x-app-internal").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let r = send1(
        &mut s,
        get("/x")
            .header("x-canary", "yes")
            .body(empty())
            .expect("r"),
    )
    .await;
    assert_eq!(app(&r), "b");
    let r = send1(
        &mut s,
        get("/x").header("x-canary", "no").body(empty()).expect("r"),
    )
    .await;
    assert_eq!(app(&r), "a");
    let post = Request::post("/x")
        .header("host", "localhost")
        .body(Full::new(Bytes::from_static(b"hi")))
        .expect("r");
    assert_eq!(app(&send1(&mut s, post).await), "c");

    // Exact path with header edits both ways.
    let r = send1(
        &mut s,
        get("/login")
            .header("x-secret", "s3cr3t")
            .body(empty())
            .expect("r"),
    )
    .await;
    assert_eq!(app(&r), "d");
    assert_eq!(line(&r.body, "added"), "by-route");
    assert_eq!(line(&r.body, "secret"), "-");
    assert_eq!(
        r.headers
            .get("strict-transport-security")
            .map(|v| v.as_bytes()),
        Some(&b"max-age=60"[..])
    );
    assert!(r.headers.get("x-app-internal").is_none());
    // Not exact: the root route, no edits.
    let r = send1(
        &mut s,
        get("/login/x")
            .header("x-secret", "s")
            .body(empty())
            .expect("r"),
    )
    .await;
    assert_eq!(app(&r), "a");
    assert_eq!(line(&r.body, "secret"), "s");

    // Redirect.
    let r = send1(&mut s, get("/old/page?q=1").body(empty()).expect("r")).await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        r.headers.get("location").map(|v| v.as_bytes()),
        Some(&b"https://new.example/new/page?q=1"[..])
    );

    // The exact-host group wins, and a host with no route at all: 404.
    let snap2 = snapshot(
        &cert,
        vec![cluster("a", &[a])],
        vec![{
            let mut r = route("only", "/", "a");
            r.host = "www.test".into();
            r
        }],
    );
    n.node.apply(&snap2).expect("apply");
    let r = send1(&mut s, get("/").body(empty()).expect("r")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body, "no route\n");
    let text = metrics(&n.node);
    assert!(
        text.contains("tandem_node_requests_total{route=\"canary\",cluster=\"b\",code=\"2xx\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tandem_node_requests_total{route=\"old\",cluster=\"\",code=\"3xx\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tandem_node_requests_total{route=\"\",cluster=\"\",code=\"4xx\"} 1"),
        "{text}"
    );
}

// ---------------------------------------------------------------- clusters

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_a_header_keeps_a_key_on_one_endpoint() {
    let cert = test_cert();
    let apps = [
        named_app("a").await,
        named_app("b").await,
        named_app("c").await,
    ];
    let mut c = cluster("h", &apps);
    c.lb_policy = LbPolicy::ConsistentHash as i32;
    c.hash_policy = Some(HashPolicy {
        on: HashOn::Header as i32,
        name: "x-user".into(),
    });
    let n = start(&snapshot(&cert, vec![c], vec![route("all", "/", "h")])).await;
    let mut s = h1(n.addr, &cert).await;
    let mut seen = std::collections::HashSet::new();
    for user in 0..30 {
        let mut first = None;
        for _ in 0..3 {
            let r = send1(
                &mut s,
                get("/")
                    .header("x-user", format!("u{user}"))
                    .body(empty())
                    .expect("r"),
            )
            .await;
            let a = line(&r.body, "app").to_string();
            assert_eq!(*first.get_or_insert(a.clone()), a, "user {user} moved");
        }
        seen.insert(first.unwrap_or_default());
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_endpoints_out_and_back() {
    let cert = test_cert();
    let sick = Arc::new(AtomicBool::new(false));
    let flag = sick.clone();
    let a = app(Arc::new(move |req, _| {
        let down = req.uri().path() == "/health" && flag.load(Ordering::SeqCst);
        let mut r = Response::new(Full::new(Bytes::from_static(b"app=a\n")));
        if down {
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        r
    }))
    .await;
    let b = named_app("b").await;
    let mut c = cluster("hc", &[a, b]);
    c.health_check = Some(HealthCheck {
        path: "/health".into(),
        expect_status: 200,
        interval_ms: 50,
        timeout_ms: 500,
        rise: 1,
        fall: 1,
    });
    let n = start(&snapshot(&cert, vec![c], vec![route("all", "/", "hc")])).await;
    let mut s = h1(n.addr, &cert).await;
    let mut apps = std::collections::HashSet::new();
    for _ in 0..4 {
        apps.insert(
            line(
                &send1(&mut s, get("/").body(empty()).expect("r")).await.body,
                "app",
            )
            .to_string(),
        );
    }
    assert_eq!(apps.len(), 2);
    sick.store(true, Ordering::SeqCst);
    let endpoint_a =
        format!("tandem_node_upstream_endpoint_up{{cluster=\"hc\",endpoint=\"{a}\"}} 0");
    assert!(eventually(async || metrics(&n.node).contains(&endpoint_a)).await);
    for _ in 0..10 {
        let r = send1(&mut s, get("/").body(empty()).expect("r")).await;
        assert_eq!(line(&r.body, "app"), "b");
    }
    sick.store(false, Ordering::SeqCst);
    let endpoint_a =
        format!("tandem_node_upstream_endpoint_up{{cluster=\"hc\",endpoint=\"{a}\"}} 1");
    assert!(eventually(async || metrics(&n.node).contains(&endpoint_a)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoint_is_ejected_and_retries_hide_it() {
    let cert = test_cert();
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    let bad = app(Arc::new(move |_, _| {
        count.fetch_add(1, Ordering::SeqCst);
        let mut r = Response::new(Full::new(Bytes::from_static(b"app=bad\n")));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r
    }))
    .await;
    let good = named_app("good").await;
    let mut c = cluster("c", &[bad, good]);
    c.retry = Some(RetryPolicy {
        max_retries: 1,
        retry_on_status: vec![503],
        budget_percent: 100,
    });
    let mut ej = cluster("ej", &[bad, good]);
    ej.outlier_detection = Some(OutlierDetection {
        consecutive_failures: 2,
        ejection_ms: 60_000,
        max_ejection_percent: 50,
    });
    let n = start(&snapshot(
        &cert,
        vec![c, ej],
        vec![route("retry", "/", "c"), route("eject", "/ej", "ej")],
    ))
    .await;
    let mut s = h1(n.addr, &cert).await;
    // GETs: a 503 is retried on the other endpoint.
    for _ in 0..6 {
        let r = send1(&mut s, get("/").body(empty()).expect("r")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(line(&r.body, "app"), "good");
    }
    // POST with a body is not retried: the client sees the 503 at times.
    let mut statuses = std::collections::HashSet::new();
    for _ in 0..4 {
        let r = send1(
            &mut s,
            Request::post("/")
                .header("host", "localhost")
                .body(Full::new(Bytes::from_static(b"x")))
                .expect("r"),
        )
        .await;
        statuses.insert(r.status);
    }
    assert!(
        statuses.contains(&StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    assert!(metrics(&n.node).contains("tandem_node_upstream_retries_total{cluster=\"c\"}"));

    // Passive ejection: after two 503s in a row the bad endpoint is out.
    let mut bad_answers = 0;
    for _ in 0..12 {
        let r = send1(&mut s, get("/ej").body(empty()).expect("r")).await;
        if r.status != StatusCode::OK {
            bad_answers += 1;
        }
    }
    assert_eq!(bad_answers, 2, "only the two failures before the ejection");
    assert!(metrics(&n.node).contains("tandem_node_upstream_ejections_total{cluster=\"ej\"} 1"));
    let before = hits.load(Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(
            send1(&mut s, get("/ej").body(empty()).expect("r"))
                .await
                .status,
            StatusCode::OK
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_gets_504() {
    let cert = test_cert();
    // Accepts and reads, never answers.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let slow = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    let mut c = cluster("slow", &[slow]);
    c.response_timeout_ms = 200;
    let n = start(&snapshot(&cert, vec![c], vec![route("all", "/", "slow")])).await;
    let mut s = h1(n.addr, &cert).await;
    let r = send1(&mut s, get("/").body(empty()).expect("r")).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.body, "upstream timeout\n");
}

/// An h2c (prior knowledge) app that answers like gRPC: a body, then
/// trailers with grpc-status.
async fn grpc_like_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let version = format!("{:?}", req.version());
                    let te = req
                        .headers()
                        .get("te")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string();
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let mut trailers = hyper::HeaderMap::new();
                    trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                    trailers.insert(
                        "grpc-message",
                        hyper::header::HeaderValue::from_static("fine"),
                    );
                    let frames = vec![
                        Ok::<_, Infallible>(Frame::data(Bytes::from(format!(
                            "version={version}\nte={te}\nlen={}\n",
                            body.len()
                        )))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let mut r = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
                    r.headers_mut().insert(
                        "content-type",
                        hyper::header::HeaderValue::from_static("application/grpc"),
                    );
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upstream_passes_grpc_trailers() {
    let cert = test_cert();
    let g = grpc_like_app().await;
    let mut c = cluster("grpc", &[g]);
    c.upstream_protocol = UpstreamProtocol::H2 as i32;
    let n = start(&snapshot(&cert, vec![c], vec![route("all", "/", "grpc")])).await;
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tls(n.addr, &cert, &[b"h2"]).await),
    )
    .await
    .expect("h2");
    tokio::spawn(conn);
    let req = Request::post("https://localhost/pkg.Service/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
        .expect("req");
    let resp = send.send_request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/grpc"[..])
    );
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    let body = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    assert_eq!(line(&body, "version"), "HTTP/2.0");
    assert_eq!(line(&body, "te"), "trailers");
    assert_eq!(line(&body, "len"), "10");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(
        trailers.get("grpc-message").map(|v| v.as_bytes()),
        Some(&b"fine"[..])
    );
}

// ---------------------------------------------------------------- TLS

fn ticket_keys() -> TlsSettings {
    TlsSettings {
        ticket_keys: vec![TicketKey {
            name: vec![7u8; 16],
            secret: vec![9u8; 32],
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_resumes_on_another_node_with_shared_ticket_keys() {
    let cert = test_cert();
    let a = named_app("a").await;
    let mut snap = snapshot(
        &cert,
        vec![cluster("a", &[a])],
        vec![route("all", "/", "a")],
    );
    snap.tls = Some(ticket_keys());
    let node_a = start(&snap).await;
    let node_b = start(&snap).await;
    // A node with other keys.
    let mut other = snap.clone();
    other.tls = Some(TlsSettings {
        ticket_keys: vec![TicketKey {
            name: vec![1u8; 16],
            secret: vec![2u8; 32],
        }],
        ..Default::default()
    });
    let node_c = start(&other).await;

    for versions in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der.clone()).expect("root");
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[versions])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        // One session store shared by all connections below.
        cfg.resumption = rustls::client::Resumption::in_memory_sessions(64);
        let cfg = Arc::new(cfg);

        let handshake = async |addr: SocketAddr| {
            let mut t = tls_connect_with(addr, None, cfg.clone())
                .await
                .expect("tls");
            // TLS 1.3 tickets come after the handshake: do a request so the
            // client reads them.
            t.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await
                .expect("write");
            let mut out = Vec::new();
            let _ = t.read_to_end(&mut out).await;
            assert!(
                out.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&out)
            );
            t.get_ref().1.handshake_kind()
        };
        assert_eq!(
            handshake(node_a.addr).await,
            Some(rustls::HandshakeKind::Full)
        );
        assert_eq!(
            handshake(node_b.addr).await,
            Some(rustls::HandshakeKind::Resumed),
            "{versions:?} on node B"
        );
        // A node without the key makes a full handshake.
        assert_ne!(
            handshake(node_c.addr).await,
            Some(rustls::HandshakeKind::Resumed),
            "{versions:?} on node C"
        );
    }
    let text = metrics(&node_b.node);
    assert!(
        text.contains("tandem_node_tls_handshakes_total{kind=\"resumed\",version=\"TLSv1.3\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tandem_node_tls_handshakes_total{kind=\"resumed\",version=\"TLSv1.2\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_when_configured() {
    let cert = test_cert();
    let a = named_app("a").await;
    // A CA and a client certificate it signed.
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["client.test".to_string()])
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    let client = TestCert {
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
        der: leaf.der().clone(),
    };
    let ca_cert = TestCert {
        cert_pem: ca.pem(),
        key_pem: String::new(),
        der: ca.der().clone(),
    };
    let mut snap = snapshot(
        &cert,
        vec![cluster("a", &[a])],
        vec![route("all", "/", "a")],
    );
    snap.tls = Some(TlsSettings {
        client_ca_pem: ca_cert.cert_pem.clone(),
        ..Default::default()
    });
    let n = start(&snap).await;

    // Without a certificate: refused (in TLS 1.3 the alert comes after the
    // client's handshake, so look at the first read).
    let refused = match tls_connect_with(
        n.addr,
        None,
        Arc::new(client_config(&cert, &[b"http/1.1"], None)),
    )
    .await
    {
        Err(_) => true,
        Ok(mut t) => {
            let _ = t
                .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await;
            let mut buf = [0u8; 64];
            !matches!(t.read(&mut buf).await, Ok(n) if n > 0)
        }
    };
    assert!(refused, "a client without a certificate was served");
    // With one: served.
    let cfg = Arc::new(client_config(
        &cert,
        &[b"http/1.1"],
        Some((&client, &ca_cert)),
    ));
    let t = tls_connect_with(n.addr, None, cfg).await.expect("mTLS");
    let (mut s, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(t))
        .await
        .expect("h1");
    tokio::spawn(conn);
    let r = send1(&mut s, get("/").body(empty()).expect("r")).await;
    assert_eq!(r.status, StatusCode::OK);
}

// ---------------------------------------------------------------- drain

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_finish_during_drain() {
    let cert = test_cert();
    let release = Arc::new(tokio::sync::Notify::new());
    let arrived = Arc::new(tokio::sync::Notify::new());
    let (rel, arr) = (release.clone(), arrived.clone());
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let slow = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (rel, arr) = (rel.clone(), arr.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let (rel, arr) = (rel.clone(), arr.clone());
                    async move {
                        arr.notify_one();
                        rel.notified().await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done\n"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let mut n = start(&snapshot(
        &cert,
        vec![cluster("slow", &[slow])],
        vec![route("all", "/", "slow")],
    ))
    .await;

    // h1: the answer comes, with Connection: close.
    let mut s = h1(n.addr, &cert).await;
    let pending =
        tokio::spawn(async move { send1(&mut s, get("/").body(empty()).expect("r")).await });
    arrived.notified().await;
    n.shutdown.cancel();
    assert!(eventually(async || !n.node.readiness().is_ready()).await);
    release.notify_one();
    let r = pending.await.expect("join");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "done\n");
    assert_eq!(
        r.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    tokio::time::timeout(Duration::from_secs(5), &mut n.task)
        .await
        .expect("serve returned")
        .expect("join");

    // h2: GOAWAY, and the stream in flight still completes.
    let mut n = start(&snapshot(
        &cert,
        vec![cluster("slow", &[slow])],
        vec![route("all", "/", "slow")],
    ))
    .await;
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tls(n.addr, &cert, &[b"h2"]).await),
    )
    .await
    .expect("h2");
    let conn_task = tokio::spawn(conn);
    let pending = tokio::spawn(async move {
        let r = send
            .send_request(
                Request::get("https://localhost/")
                    .body(Empty::new())
                    .expect("r"),
            )
            .await
            .expect("response");
        collect(r).await
    });
    arrived.notified().await;
    n.shutdown.cancel();
    assert!(eventually(async || !n.node.readiness().is_ready()).await);
    release.notify_one();
    let r = pending.await.expect("join");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "done\n");
    // The server closed the connection after GOAWAY: the client's connection task ends.
    tokio::time::timeout(Duration::from_secs(5), conn_task)
        .await
        .expect("h2 connection closed")
        .expect("join")
        .expect("clean h2 close");
    tokio::time::timeout(Duration::from_secs(5), &mut n.task)
        .await
        .expect("serve returned")
        .expect("join");
}
