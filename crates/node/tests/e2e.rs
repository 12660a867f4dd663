//! End to end over real sockets: client → (PROXY v2) → node (TLS, HTTP) → apps.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use control_api::{Cluster, Route, Snapshot, UpstreamProxyProtocol};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use node::{Node, NodeConfig, ProxyProtocolMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

mod support;
use support::{Running, TestCert, certificate, host_route, line, test_cert, tls_connect};

const CLIENT: &str = "203.0.113.9:5555";
const VIP: &str = "198.51.100.1:443";

/// A PROXY v2 header for TCP over IPv4, written out by hand (and checked
/// against the `proxy-protocol` crate's encoder).
fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("v4 only")
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    h.extend_from_slice(&s.ip().octets());
    h.extend_from_slice(&d.ip().octets());
    h.extend_from_slice(&s.port().to_be_bytes());
    h.extend_from_slice(&d.port().to_be_bytes());
    assert_eq!(
        proxy_protocol::Header::proxy(src, dst)
            .to_bytes()
            .expect("encode"),
        h
    );
    h
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// An HTTP app that answers with what it saw.
async fn echo_app(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let (parts, body) = req.into_parts();
                    let len = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes().len())
                        .unwrap_or(0);
                    let req = Request::from_parts(parts, ());
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string()
                    };
                    let body = format!(
                        "app={name}\nxff={}\nhost={}\npath={}\nproto={}\nrequest_id={}\nlen={len}\nte={}\nadded={}\nsecret={}\n",
                        h("x-forwarded-for"),
                        h("host"),
                        req.uri().path(),
                        h("x-forwarded-proto"),
                        h("x-request-id"),
                        h("transfer-encoding"),
                        h("x-added"),
                        h("x-secret"),
                    );
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    resp.headers_mut().insert(
                        "x-app-internal",
                        hyper::header::HeaderValue::from_static("1"),
                    );
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    a
}

/// An HTTP app behind a required PROXY header; counts its connections.
async fn proxy_app() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    let accepts = Arc::new(AtomicUsize::new(0));
    let count = accepts.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok((Some(header), io)) = node::proxy_accept::read_proxy_header(
                    s,
                    ProxyProtocolMode::Required,
                    Duration::from_secs(3),
                )
                .await
                else {
                    return;
                };
                let header = Arc::new(header);
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let header = header.clone();
                    async move {
                        let body = format!(
                            "src={}\ndst={}\nauthority={}\nalpn={}\nxff={}\npath={}\nssl_version={}\nunique_id={}\nrequest_id={}\ncrc={}\n",
                            header.source().map(|a| a.to_string()).unwrap_or_default(),
                            header
                                .destination()
                                .map(|a| a.to_string())
                                .unwrap_or_default(),
                            header.authority().unwrap_or("-"),
                            header
                                .alpn()
                                .map(|a| String::from_utf8_lossy(a).into_owned())
                                .unwrap_or_default(),
                            req.headers()
                                .get("x-forwarded-for")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-"),
                            req.uri().path(),
                            header
                                .ssl()
                                .and_then(|s| s.ok())
                                .and_then(|s| s
                                    .sub
                                    .iter()
                                    .find(|t| t.kind == proxy_protocol::tlv::SSL_VERSION)
                                    .map(|t| String::from_utf8_lossy(&t.value).into_owned()))
                                .unwrap_or_default(),
                            header
                                .unique_id()
                                .map(|a| String::from_utf8_lossy(a).into_owned())
                                .unwrap_or_default(),
                            req.headers()
                                .get("x-request-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-"),
                            // Checked by the decoder when present.
                            u8::from(header.tlv(proxy_protocol::tlv::CRC32C).is_some()),
                        );
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });
    (a, accepts)
}

/// [`support::cluster`], sending PROXY v2 when `proxy_v2`.
fn cluster(name: &str, endpoints: &[SocketAddr], proxy_v2: bool) -> Cluster {
    let mut c = support::cluster(name, endpoints);
    if proxy_v2 {
        c.proxy_protocol = UpstreamProxyProtocol::V2 as i32;
    }
    c
}

fn snapshot(version: u64, cert: &TestCert, clusters: Vec<Cluster>, routes: Vec<Route>) -> Snapshot {
    Snapshot {
        version,
        clusters,
        routes,
        certificates: vec![certificate(cert)],
        ..Default::default()
    }
}

async fn start_node(snap: &Snapshot, mode: ProxyProtocolMode) -> Running {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let mut cfg = NodeConfig::new("node-test", addr);
    cfg.proxy_protocol = mode;
    cfg.drain_timeout = Duration::from_secs(2);
    let node = Node::new(cfg);
    assert!(!node.readiness().is_ready());
    node.apply(snap).expect("apply");
    assert!(node.readiness().is_ready());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(node.clone().serve(l, shutdown.clone()));
    Running {
        node,
        addr,
        shutdown,
        task,
    }
}

type H1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;
type H2 = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn h1(addr: SocketAddr, preface: Option<Vec<u8>>, cert: &TestCert) -> H1 {
    let tls = tls_connect(addr, preface.as_deref(), &[b"http/1.1"], cert)
        .await
        .expect("tls");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    send
}

struct Answer {
    status: StatusCode,
    node: String,
    body: String,
}

async fn collect(resp: Response<Incoming>) -> Answer {
    let status = resp.status();
    let node = resp
        .headers()
        .get("x-tandem-node")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Answer {
        status,
        node,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn get1(send: &mut H1, host: &str, path: &str) -> Answer {
    send.ready().await.expect("ready");
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::new())
        .expect("request");
    collect(send.send_request(req).await.expect("response")).await
}

async fn get2(send: &mut H2, host: &str, path: &str) -> Answer {
    send.ready().await.expect("ready");
    let req = Request::get(format!("https://{host}{path}"))
        .body(Empty::new())
        .expect("request");
    collect(send.send_request(req).await.expect("response")).await
}

#[tokio::test]
async fn proxy_v2_client_address_becomes_x_forwarded_for() {
    let cert = test_cert();
    let app = echo_app("a").await;
    let snap = snapshot(
        1,
        &cert,
        vec![cluster("a", &[app], false)],
        vec![host_route("all", "", "/", "a")],
    );
    let n = start_node(&snap, ProxyProtocolMode::Optional).await;

    let mut c = h1(n.addr, Some(v2_header(addr(CLIENT), addr(VIP))), &cert).await;
    let a = get1(&mut c, "localhost", "/hello?x=1").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.node, "node-test");
    assert_eq!(line(&a.body, "xff"), "203.0.113.9");
    assert_eq!(line(&a.body, "host"), "localhost");
    assert_eq!(line(&a.body, "path"), "/hello");
    assert_eq!(line(&a.body, "proto"), "https");
    assert_ne!(line(&a.body, "request_id"), "-");
    // Keep-alive: a second request on the same connection.
    let a = get1(&mut c, "localhost", "/again").await;
    assert_eq!(line(&a.body, "path"), "/again");

    // Without a PROXY header (optional mode), the socket peer is the client.
    let mut c = h1(n.addr, None, &cert).await;
    let a = get1(&mut c, "localhost", "/").await;
    assert_eq!(line(&a.body, "xff"), "127.0.0.1");

    // Metrics got counted.
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &n.node.registry()).expect("encode");
    assert!(
        text.contains("tandem_node_requests_total{route=\"all\",cluster=\"a\",code=\"2xx\"} 3"),
        "{text}"
    );
    assert!(text.contains("tandem_node_config_version 1"), "{text}");
}

#[tokio::test]
async fn h2_works() {
    let cert = test_cert();
    let app = echo_app("a").await;
    let snap = snapshot(
        1,
        &cert,
        vec![cluster("a", &[app], false)],
        vec![host_route("all", "localhost", "/", "a")],
    );
    let n = start_node(&snap, ProxyProtocolMode::Required).await;
    let tls = tls_connect(
        n.addr,
        Some(&v2_header(addr(CLIENT), addr(VIP))),
        &[b"h2"],
        &cert,
    )
    .await
    .expect("tls");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let (a, b) = tokio::join!(
        async {
            let mut s = send.clone();
            get2(&mut s, "localhost:443", "/one").await
        },
        async {
            let mut s = send.clone();
            get2(&mut s, "localhost", "/two").await
        }
    );
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(line(&a.body, "path"), "/one");
    assert_eq!(line(&a.body, "host"), "localhost:443");
    assert_eq!(line(&a.body, "xff"), "203.0.113.9");
    assert_eq!(b.node, "node-test");
    assert_eq!(line(&b.body, "path"), "/two");
    let c = get2(&mut send, "nowhere.test", "/").await;
    assert_eq!(c.status, StatusCode::NOT_FOUND);
    assert_eq!(c.body, "no route\n");
}

#[tokio::test]
async fn routes_by_host_and_prefix() {
    let cert = test_cert();
    let (a, b, c, d) = (
        echo_app("a").await,
        echo_app("b").await,
        echo_app("c").await,
        echo_app("d").await,
    );
    let snap = snapshot(
        1,
        &cert,
        vec![
            cluster("a", &[a], false),
            cluster("b", &[b], false),
            cluster("c", &[c], false),
            cluster("d", &[d], false),
            cluster("empty", &[], false),
        ],
        vec![
            host_route("root", "localhost", "/", "a"),
            host_route("api", "localhost", "/api", "b"),
            host_route("wild", "*.example.com", "/", "c"),
            host_route("any-static", "", "/static/", "d"),
            host_route("broken", "broken.test", "/", "empty"),
            host_route("missing", "missing.test", "/", "nope"),
        ],
    );
    let n = start_node(&snap, ProxyProtocolMode::Optional).await;
    let mut s = h1(n.addr, None, &cert).await;
    let app = |body: &str| line(body, "app").to_string();
    assert_eq!(app(&get1(&mut s, "localhost", "/").await.body), "a");
    assert_eq!(
        app(&get1(&mut s, "LOCALHOST:8443", "/api/v1").await.body),
        "b"
    );
    assert_eq!(
        app(&get1(&mut s, "www.example.com", "/api").await.body),
        "c"
    );
    assert_eq!(
        app(&get1(&mut s, "other.test", "/static/x.css").await.body),
        "d"
    );
    let nf = get1(&mut s, "other.test", "/").await;
    assert_eq!(nf.status, StatusCode::NOT_FOUND);
    assert_eq!(nf.body, "no route\n");
    assert_eq!(nf.node, "node-test");
    // A deeper name does not match a one-label wildcard.
    let nf = get1(&mut s, "a.b.example.com", "/").await;
    assert_eq!(nf.status, StatusCode::NOT_FOUND);
    for host in ["broken.test", "missing.test"] {
        let r = get1(&mut s, host, "/").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.body, "no healthy upstream\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxy_v2_cluster_binds_upstream_connection_to_client() {
    let cert = test_cert();
    let (app, accepts) = proxy_app().await;
    let mut pp = cluster("pp", &[app], true);
    pp.proxy_protocol_crc32c = true;
    let snap = snapshot(1, &cert, vec![pp], vec![host_route("all", "", "/", "pp")]);
    let n = start_node(&snap, ProxyProtocolMode::Optional).await;

    let mut c1 = h1(n.addr, Some(v2_header(addr(CLIENT), addr(VIP))), &cert).await;
    let mut opener_id = String::new();
    for i in 0..50 {
        let a = get1(&mut c1, "localhost", &format!("/r{i}")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(line(&a.body, "src"), CLIENT);
        assert_eq!(line(&a.body, "dst"), VIP);
        assert_eq!(line(&a.body, "authority"), "localhost");
        assert_eq!(line(&a.body, "alpn"), "http/1.1");
        assert_eq!(line(&a.body, "ssl_version"), "TLSv1.3");
        // The connection's UNIQUE_ID is the id of the request that opened
        // it, which that request also carried as X-Request-Id; later
        // requests on it have their own ids.
        let rid = line(&a.body, "request_id");
        if i == 0 {
            opener_id = rid.to_string();
            assert!(!opener_id.is_empty() && opener_id != "-", "{}", a.body);
        } else {
            assert_ne!(rid, opener_id, "each request has its own id");
        }
        assert_eq!(line(&a.body, "unique_id"), opener_id, "{}", a.body);
        // The header carried a CRC32C TLV, and it checked out.
        assert_eq!(line(&a.body, "crc"), "1", "{}", a.body);
        assert_eq!(line(&a.body, "xff"), "-");
        assert_eq!(line(&a.body, "path"), format!("/r{i}"));
        assert_eq!(a.node, "node-test");
    }
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        1,
        "one upstream connection for one client"
    );

    // Another client connection gets its own upstream connection.
    let other: SocketAddr = addr("192.0.2.7:4000");
    let mut c2 = h1(n.addr, Some(v2_header(other, addr(VIP))), &cert).await;
    let a = get1(&mut c2, "localhost", "/").await;
    assert_eq!(line(&a.body, "src"), "192.0.2.7:4000");
    assert_eq!(accepts.load(Ordering::SeqCst), 2);
    // And the first keeps its own.
    let a = get1(&mut c1, "localhost", "/").await;
    assert_eq!(line(&a.body, "src"), CLIENT);
    assert_eq!(accepts.load(Ordering::SeqCst), 2);
}

/// Reads until EOF or error; returns the bytes read.
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "connection was not closed");
    out
}

#[tokio::test]
async fn bad_or_missing_proxy_header_closes_before_tls() {
    let cert = test_cert();
    let app = echo_app("a").await;
    let snap = snapshot(
        1,
        &cert,
        vec![cluster("a", &[app], false)],
        vec![host_route("all", "", "/", "a")],
    );
    let n = start_node(&snap, ProxyProtocolMode::Required).await;

    // The v2 signature, then a bad version/command and family.
    let mut s = TcpStream::connect(n.addr).await.expect("connect");
    let mut bad = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    bad.extend_from_slice(&[0x2f, 0x99, 0x00, 0x00]);
    s.write_all(&bad).await.expect("write");
    assert!(read_until_closed(&mut s).await.is_empty(), "no TLS bytes");

    // A TLS client without a PROXY header.
    assert!(
        tls_connect(n.addr, None, &[b"http/1.1"], &cert)
            .await
            .is_err()
    );

    // A v1 header works too.
    let mut c = h1(
        n.addr,
        Some(b"PROXY TCP4 203.0.113.77 198.51.100.1 1234 443\r\n".to_vec()),
        &cert,
    )
    .await;
    assert_eq!(
        line(&get1(&mut c, "localhost", "/").await.body, "xff"),
        "203.0.113.77"
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &n.node.registry()).expect("encode");
    assert!(text.contains("reason=\"malformed\""), "{text}");
    assert!(text.contains("reason=\"missing\""), "{text}");
}

#[tokio::test]
async fn new_snapshot_changes_routes_and_bad_certificate_is_refused() {
    let cert = test_cert();
    let (a, b) = (echo_app("a").await, echo_app("b").await);
    let clusters = vec![cluster("a", &[a], false), cluster("b", &[b], false)];
    let v1 = snapshot(
        1,
        &cert,
        clusters.clone(),
        vec![host_route("all", "", "/", "a")],
    );
    let n = start_node(&v1, ProxyProtocolMode::Optional).await;
    let mut s = h1(n.addr, None, &cert).await;
    assert_eq!(line(&get1(&mut s, "localhost", "/").await.body, "app"), "a");

    let v2 = snapshot(
        2,
        &cert,
        clusters.clone(),
        vec![host_route("all", "", "/", "b")],
    );
    n.node.apply(&v2).expect("apply v2");
    assert_eq!(n.node.config_version(), 2);
    // The open connection's next request, and a new connection, see it.
    assert_eq!(line(&get1(&mut s, "localhost", "/").await.body, "app"), "b");
    let mut s2 = h1(n.addr, None, &cert).await;
    assert_eq!(
        line(&get1(&mut s2, "localhost", "/").await.body, "app"),
        "b"
    );

    // A snapshot with a broken certificate is refused as a whole.
    let mut v3 = snapshot(
        3,
        &cert,
        clusters.clone(),
        vec![host_route("all", "", "/", "a")],
    );
    v3.certificates[0].cert_chain_pem =
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into();
    let err = n.node.apply(&v3).expect_err("bad certificate");
    assert!(err.contains("localhost"), "{err}");
    // A key that does not belong to the certificate, likewise.
    let other = test_cert();
    let mut v4 = snapshot(4, &cert, clusters, vec![host_route("all", "", "/", "a")]);
    v4.certificates[0].private_key_pem = other.key_pem.clone();
    assert!(n.node.apply(&v4).is_err());
    assert_eq!(n.node.config_version(), 2);
    assert!(n.node.readiness().is_ready());
    let mut s3 = h1(n.addr, None, &cert).await;
    assert_eq!(
        line(&get1(&mut s3, "localhost", "/").await.body, "app"),
        "b"
    );
}

#[tokio::test]
async fn connect_failure_retries_idempotent_requests_elsewhere() {
    let cert = test_cert();
    let app = echo_app("a").await;
    // A port nothing listens on.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let snap = snapshot(
        1,
        &cert,
        vec![
            cluster("mixed", &[dead, app], false),
            cluster("dead", &[dead], false),
        ],
        vec![
            host_route("mixed", "", "/", "mixed"),
            host_route("dead", "", "/dead", "dead"),
        ],
    );
    let n = start_node(&snap, ProxyProtocolMode::Optional).await;
    let mut s = h1(n.addr, None, &cert).await;
    for _ in 0..4 {
        let a = get1(&mut s, "localhost", "/").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    }
    let a = get1(&mut s, "localhost", "/dead").await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.body, "upstream connect failed\n");
}

#[tokio::test]
async fn shutdown_drains_and_returns() {
    let cert = test_cert();
    let app = echo_app("a").await;
    let snap = snapshot(
        1,
        &cert,
        vec![cluster("a", &[app], false)],
        vec![host_route("all", "", "/", "a")],
    );
    let mut n = start_node(&snap, ProxyProtocolMode::Optional).await;
    let mut s = h1(n.addr, None, &cert).await;
    assert_eq!(get1(&mut s, "localhost", "/").await.status, StatusCode::OK);
    n.shutdown.cancel();
    // The idle keep-alive connection is closed gracefully: serve returns
    // well before the drain timeout.
    tokio::time::timeout(Duration::from_secs(1), &mut n.task)
        .await
        .expect("serve returned")
        .expect("join");
    assert!(!n.node.readiness().is_ready());
    assert!(TcpStream::connect(n.addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_forwarded_and_smuggling_is_refused() {
    let cert = test_cert();
    let app = echo_app("a").await;
    let snap = snapshot(
        1,
        &cert,
        vec![cluster("a", &[app], false)],
        vec![host_route("all", "", "/", "a")],
    );
    let n = start_node(&snap, ProxyProtocolMode::Optional).await;

    // h1 with a Content-Length body.
    let tls = tls_connect(n.addr, None, &[b"http/1.1"], &cert)
        .await
        .expect("tls");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tls))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = Request::post("/upload")
        .header("host", "localhost")
        .body(Full::new(Bytes::from(vec![7u8; 100_000])))
        .expect("request");
    let a = collect(send.send_request(req).await.expect("response")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(line(&a.body, "len"), "100000");

    // h2 with a body of unknown length (DATA frames) becomes chunked upstream.
    let tls = tls_connect(n.addr, None, &[b"h2"], &cert)
        .await
        .expect("tls");
    let (mut send, conn) = hyper::client::conn::http2::handshake::<
        _,
        _,
        http_body_util::StreamBody<_>,
    >(TokioExecutor::new(), TokioIo::new(tls))
    .await
    .expect("handshake");
    tokio::spawn(conn);
    let chunks = futures_util::stream::iter(
        (0..10)
            .map(|_| Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(vec![1u8; 1000])))),
    );
    let req = Request::post("https://localhost/stream")
        .body(http_body_util::StreamBody::new(chunks))
        .expect("request");
    let a = collect(send.send_request(req).await.expect("response")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(line(&a.body, "len"), "10000");
    assert_eq!(line(&a.body, "te"), "chunked");

    // Content-Length and Transfer-Encoding together: hyper frames the body by
    // the chunked encoding, drops Content-Length and closes the connection
    // after the answer (RFC 9112 6.3), so nothing can be smuggled behind it.
    let mut tls = tls_connect(n.addr, None, &[b"http/1.1"], &cert)
        .await
        .expect("tls");
    tls.write_all(
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await
    .expect("write");
    let mut buf = vec![0u8; 4096];
    let got = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("answer");
    let text = String::from_utf8_lossy(&buf[..got.unwrap_or(0)]).into_owned();
    let refused = text.starts_with("HTTP/1.1 400");
    let framed_as_chunked = text.starts_with("HTTP/1.1 200")
        && text.contains("connection: close")
        && text.contains("\nlen=0\n");
    assert!(refused || framed_as_chunked, "{text}");
}

#[tokio::test]
async fn run_binds_serves_and_stops() {
    // The traffic port is taken: run fails to bind.
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let cfg = NodeConfig::new("node-run", taken.local_addr().expect("addr"));
    let r = node::run(cfg, "http://127.0.0.1:1".into(), CancellationToken::new()).await;
    assert!(matches!(r, Err(node::NodeError::Bind { .. })), "{r:?}");

    // A free port and no control service: serves (not ready) until shutdown.
    let free = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let mut cfg = NodeConfig::new("node-run", free);
    cfg.drain_timeout = Duration::from_millis(200);
    let stop = CancellationToken::new();
    let task = tokio::spawn(node::run(cfg, "http://127.0.0.1:1".into(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(TcpStream::connect(free).await.is_ok());
    stop.cancel();
    let r = tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("run returned")
        .expect("join");
    assert!(r.is_ok(), "{r:?}");
}

/// An HTTP app that counts the connections it accepted and those still open.
async fn counting_app() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    let accepts = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (acc, op) = (accepts.clone(), open.clone());
    tokio::spawn(async move {
        while let Ok((s, peer)) = l.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            op.fetch_add(1, Ordering::SeqCst);
            let op = op.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let body = format!("path={}\nupstream_peer={peer}\n", req.uri().path());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
                op.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (a, accepts, open)
}

#[tokio::test]
async fn upstream_connections_are_shared_by_clients_and_closed_when_idle() {
    let cert = test_cert();
    let (app, accepts, open) = counting_app().await;
    let mut c = cluster("shared", &[app], false);
    c.idle_timeout_ms = 300;
    let snap = snapshot(
        1,
        &cert,
        vec![c],
        vec![host_route("all", "", "/", "shared")],
    );
    let n = start_node(&snap, ProxyProtocolMode::Optional).await;

    // Sequential requests from two client connections: one upstream
    // connection carries them all (the app sees one peer).
    let mut c1 = h1(n.addr, None, &cert).await;
    let mut c2 = h1(n.addr, None, &cert).await;
    let mut peers = std::collections::HashSet::new();
    for i in 0..20 {
        let send = if i % 2 == 0 { &mut c1 } else { &mut c2 };
        let a = get1(send, "localhost", &format!("/r{i}")).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(line(&a.body, "path"), format!("/r{i}"));
        peers.insert(line(&a.body, "upstream_peer").to_string());
    }
    assert_eq!(peers.len(), 1, "one upstream connection: {peers:?}");
    assert_eq!(accepts.load(Ordering::SeqCst), 1);

    // Idle past the cluster's idle timeout: the node closes it, with no
    // request coming to notice.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while open.load(Ordering::SeqCst) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle upstream connection still open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The client connections are still fine; the next request opens anew.
    let a = get1(&mut c1, "localhost", "/again").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(line(&a.body, "path"), "/again");
    assert_eq!(accepts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn tls13_prefers_aes128_gcm_over_the_clients_first_choice() {
    let cert = test_cert();
    let app = echo_app("a").await;
    let snap = snapshot(
        1,
        &cert,
        vec![cluster("a", &[app], false)],
        vec![host_route("all", "", "/", "a")],
    );
    let n = start_node(&snap, ProxyProtocolMode::Optional).await;
    // rustls' client lists AES-256-GCM-SHA384 first.
    let tls = tls_connect(n.addr, None, &[b"http/1.1"], &cert)
        .await
        .expect("tls");
    let (_, conn) = tls.get_ref();
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        conn.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
}
