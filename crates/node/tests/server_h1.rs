//! The node's own HTTP/1.1 server (`h1_server.rs` on `h1_codec::request`),
//! on the wire: raw clients write request bytes to the node (plain listener,
//! and a few over TLS with a rustls client) and parse what comes back
//! themselves; apps are scripted raw TCP servers that record the exact
//! bytes they receive. So the assertions are about what a user of an
//! HAProxy or nginx front expects to see: answers in order, framing that
//! says where a message ends, bodies byte for byte, connections closed
//! when they must be (and kept when they may be), and no body byte ever
//! read as a request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use control_api::Snapshot;
use control_api::pb::{ListenerSettings, Redirect};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bound on every read and wait in these tests.
mod support;
use support::*;

// Wire helpers, scripted apps and the raw client: `support/mod.rs`.

// ------------------------------------------------------------ node, clients

/// Routes of every test node:
/// - host `app.test`: `/` to the app; `/small` to the app with a 100-byte
///   body limit; `/old` redirects (301);
/// - any host: `/any` to the app (HTTP/1.0 clients without Host);
/// - anything else (`nowhere.test`, say) has no route: 404.
fn snapshot(app: SocketAddr, listener: Option<ListenerSettings>) -> Snapshot {
    let mut small = cluster("small", &[app]);
    small.max_request_body_bytes = 100;
    let mut old = host_route("old", "app.test", "/old", "");
    old.redirect = Some(Redirect {
        scheme: "https".into(),
        ..Default::default()
    });
    Snapshot {
        version: 1,
        clusters: vec![cluster("app", &[app]), small],
        routes: vec![
            host_route("app", "app.test", "/", "app"),
            host_route("small", "app.test", "/small", "small"),
            old,
            host_route("any", "", "/any", "app"),
        ],
        listener,
        ..Default::default()
    }
}

/// A node on a loopback listener: plain HTTP, or TLS with `cert`.
async fn start(mut snap: Snapshot, cert: Option<&TestCert>, drain: Duration) -> Running {
    if let Some(cert) = cert {
        snap.certificates = vec![certificate(cert)];
    }
    run_node(loopback().await, "node-s1", drain, &snap, cert.is_some())
}

async fn plain_node(app: &App) -> Running {
    start(snapshot(app.addr, None), None, Duration::from_secs(1)).await
}

/// An app that answers `path=<path>`, and a plain node in front of it.
async fn echo_node() -> (App, Running) {
    let app = App::start(echo_path()).await;
    let n = plain_node(&app).await;
    (app, n)
}

impl Client<Tls> {
    async fn tls(addr: SocketAddr, cert: &TestCert) -> Self {
        Client {
            s: tls_connect(addr, None, &[b"http/1.1"], cert)
                .await
                .expect("tls handshake"),
            buf: Vec::new(),
        }
    }
}

// ------------------------------------------------------------ pipelining

/// Three requests (the last with a body) in one write: three answers, in
/// order, on the same connection, then the connection still works.
async fn pipelined<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Client<S>, app: &App) {
    c.send(
        b"GET /p1 HTTP/1.1\r\nHost: app.test\r\n\r\n\
          GET /p2 HTTP/1.1\r\nHost: app.test\r\n\r\n\
          POST /p3 HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    for i in 1..=3 {
        let r = c.response().await.expect("pipelined response");
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.text(), format!("path=/p{i}"));
    }
    let r = c.get("/p4").await;
    assert_eq!(r.text(), "path=/p4");
    assert!(c.buf.is_empty(), "extra bytes: {:?}", c.buf);
    assert_eq!(app.paths(), ["/p1", "/p2", "/p3", "/p4"]);
    assert_eq!(app.seen()[2].raw_body, b"hello");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (app, n) = echo_node().await;
    let mut c = Client::connect(n.addr).await;
    pipelined(&mut c, &app).await;

    // A body that arrives after its head, with the next request in the
    // same write as its tail: the body ends where its length says.
    c.send(b"POST /p5 HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\n01234")
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(b"56789GET /p6 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    assert_eq!(c.response().await.expect("p5").text(), "path=/p5");
    assert_eq!(c.response().await.expect("p6").text(), "path=/p6");
    let seen = app.seen();
    assert_eq!(seen[4].raw_body, b"0123456789");
    assert_eq!(seen[5].request_line(), "GET /p6 HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_and_framing_over_tls() {
    let cert = test_cert();
    let app = App::start(Arc::new(|_, _, seen| match seen.path() {
        "/chunked" => Act::Reply(
            vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(),
                b"6\r\n world\r\n0\r\n\r\n".to_vec(),
            ],
            After::Keep,
        ),
        _ => echo(seen),
    }))
    .await;
    let n = start(
        snapshot(app.addr, None),
        Some(&cert),
        Duration::from_secs(1),
    )
    .await;
    let mut c = Client::tls(n.addr, &cert).await;
    pipelined(&mut c, &app).await;
    let r = c.get("/chunked").await;
    assert_eq!(one(&r.head, "transfer-encoding"), "chunked");
    assert_eq!(r.text(), "hello world");
    // HEAD: the length, no body; the next answer follows at once.
    c.send(b"HEAD /h HTTP/1.1\r\nHost: app.test\r\n\r\nGET /after-head HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    let r = c.response_to(true).await.expect("head");
    assert_eq!(one(&r.head, "content-length"), "7");
    let r = c.response().await.expect("after head");
    assert_eq!(r.text(), "path=/after-head");
    assert_eq!(app.accepts(), 1, "one upstream connection throughout");
}

// ------------------------------------------------------------ HTTP/1.0

#[tokio::test]
async fn http10_clients_get_close_or_keep_alive_as_they_ask() {
    let app = App::start(Arc::new(|_, _, seen| {
        if seen.path().ends_with("/chunked") {
            Act::Reply(
                vec![
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n".to_vec(),
                    b"3\r\nefg\r\n0\r\n\r\n".to_vec(),
                ],
                After::Keep,
            )
        } else {
            ok(&format!("path={}", seen.path()))
        }
    }))
    .await;
    let n = plain_node(&app).await;

    // No keep-alive (and no Host: HTTP/1.0 needs none): answer, then close.
    let mut c = Client::connect(n.addr).await;
    let r = c.request(b"GET /any/a HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.text(), "path=/any/a");
    assert_eq!(one(&r.head, "connection"), "close");
    assert!(r.head.starts_with("HTTP/1.1 200 OK\r\n"), "{}", r.head);
    c.closed_quietly().await;
    // The app got a Host all the same (its own address).
    assert_eq!(one(&app.seen()[0].head, "host"), app.addr.to_string());

    // Keep-alive: said back, and the connection carries another request.
    let mut c = Client::connect(n.addr).await;
    for p in ["/k1", "/k2"] {
        let r = c
            .request(
                format!("GET {p} HTTP/1.0\r\nHost: app.test\r\nConnection: keep-alive\r\n\r\n")
                    .as_bytes(),
            )
            .await;
        assert_eq!(r.text(), format!("path={p}"));
        assert_eq!(one(&r.head, "connection"), "keep-alive");
        assert_eq!(one(&r.head, "content-length"), r.body.len().to_string());
    }

    // An answer of unknown length to an HTTP/1.0 client: no chunked
    // framing (HTTP/1.0 has none), the end is the close.
    let r = c
        .request(b"GET /chunked HTTP/1.0\r\nHost: app.test\r\nConnection: keep-alive\r\n\r\n")
        .await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        values(&r.head, "transfer-encoding").is_empty(),
        "{}",
        r.head
    );
    assert!(values(&r.head, "content-length").is_empty(), "{}", r.head);
    assert_eq!(one(&r.head, "connection"), "close");
    assert_eq!(r.raw, b"abcdefg", "close-delimited, no chunk framing");
}

// ------------------------------------------------------------ 100-continue

#[tokio::test]
async fn expect_100_continue_is_answered_only_when_the_body_is_forwarded() {
    let (app, n) = echo_node().await;

    // Forwarded: 100 Continue first (exactly), then the body, then 200.
    let mut c = Client::connect(n.addr).await;
    c.send(b"POST /up HTTP/1.1\r\nHost: app.test\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n")
        .await;
    let mut got = Vec::new();
    while got.len() < 25 && fill(&mut c.s, &mut got).await.expect("read 100") > 0 {}
    assert_eq!(
        String::from_utf8_lossy(&got),
        "HTTP/1.1 100 Continue\r\n\r\n",
        "the node's interim answer, alone"
    );
    c.send(b"hello world").await;
    let r = c.response().await.expect("final");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.text(), "path=/up");
    assert_eq!(app.seen()[0].raw_body, b"hello world");
    // Again on the same connection.
    c.send(b"POST /up2 HTTP/1.1\r\nHost: app.test\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        .await;
    let mut got = Vec::new();
    while got.len() < 25 && fill(&mut c.s, &mut got).await.expect("read 100") > 0 {}
    assert_eq!(
        String::from_utf8_lossy(&got),
        "HTTP/1.1 100 Continue\r\n\r\n"
    );
    c.send(b"abc").await;
    assert_eq!(c.response().await.expect("final").text(), "path=/up2");

    // Not forwarded (no route): the 404, no 100 before it, and the
    // connection closes (the body never came, it must not be read as a
    // request).
    let mut c = Client::connect(n.addr).await;
    c.send(b"POST /x HTTP/1.1\r\nHost: nowhere.test\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n")
        .await;
    let r = c.response().await.expect("404");
    assert_eq!(r.status, 404, "{}", r.head);
    assert!(r.interim.is_empty(), "100 sent for a body not wanted");
    assert_eq!(one(&r.head, "connection"), "close");
    c.closed_quietly().await;

    // Declared body over the limit: 413, no 100 before it, closed.
    let mut c = Client::connect(n.addr).await;
    c.send(b"POST /small/x HTTP/1.1\r\nHost: app.test\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n")
        .await;
    let r = c.response().await.expect("413");
    assert_eq!(r.status, 413, "{}", r.head);
    assert!(r.interim.is_empty(), "100 sent for a body refused");
    assert_eq!(one(&r.head, "connection"), "close");
    c.closed_quietly().await;
    assert_eq!(
        app.paths(),
        ["/up", "/up2"],
        "refused requests reached the app"
    );
}

// ------------------------------------------------------------ request bodies

#[tokio::test]
async fn request_bodies_arrive_exactly_however_they_are_written() {
    let (app, n) = echo_node().await;
    let mut c = Client::connect(n.addr).await;

    // Content-Length, 300 bytes in 30 writes with pauses.
    let body: Vec<u8> = (0..300u32)
        .map(|i| b"abcdefghijklmnopq"[(i % 17) as usize])
        .collect();
    c.send(b"PUT /slow HTTP/1.1\r\nHost: app.test\r\nContent-Length: 300\r\n\r\n")
        .await;
    for piece in body.chunks(10) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        c.send(piece).await;
    }
    let r = c.response().await.expect("response");
    assert_eq!(r.text(), "path=/slow");
    let seen = app.seen();
    assert_eq!(one(&seen[0].head, "content-length"), "300");
    assert_eq!(seen[0].raw_body, body);

    // Chunked with extensions and trailers, in pieces: the app gets the
    // payload, and the connection goes on after the trailers.
    c.send(b"POST /chunked HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5;name=\"a b\";x\r\nhel")
        .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.send(b"lo\r\n6;y\r\n world\r").await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.send(b"\n00\r\nx-sum: 11\r\n").await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.send(b"x-more: 1\r\n\r\n").await;
    let r = c.response().await.expect("response");
    assert_eq!(r.text(), "path=/chunked");
    let seen = app.seen();
    assert_eq!(one(&seen[1].head, "transfer-encoding"), "chunked");
    assert_eq!(seen[1].payload(), b"hello world");
    let r = c.get("/after").await;
    assert_eq!(r.text(), "path=/after");
    assert_eq!(app.paths(), ["/slow", "/chunked", "/after"]);
}

#[tokio::test]
async fn a_client_leaving_mid_body_never_completes_the_request_upstream() {
    let (app, n) = echo_node().await;

    // Content-Length: 40 of 100 bytes, then the client stops sending.
    let mut c = Client::connect(n.addr).await;
    c.send(b"POST /cut HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n")
        .await;
    c.send(&[b'x'; 40]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.s.shutdown().await.expect("half close");
    let mut rest = Vec::new();
    until_closed(&mut c.s, &mut rest)
        .await
        .expect("the node closes the connection");
    assert!(
        !String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 2"),
        "a cut request was answered as a success: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        eventually(|| !app.errors().is_empty()).await,
        "the app's connection did not end"
    );
    assert_eq!(
        app.errors(),
        ["POST /cut HTTP/1.1: closed after 40 of 100 body bytes"]
    );

    // Chunked: the app must not get the last chunk the client never sent.
    let (app, n) = echo_node().await;
    let mut c = Client::connect(n.addr).await;
    c.send(b"POST /cut2 HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.s.shutdown().await.expect("half close");
    let mut rest = Vec::new();
    until_closed(&mut c.s, &mut rest)
        .await
        .expect("the node closes the connection");
    assert!(
        !String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 2"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(eventually(|| !app.errors().is_empty()).await);
    assert_eq!(
        app.errors(),
        ["POST /cut2 HTTP/1.1: closed inside a chunked body"]
    );
    assert!(
        app.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    );

    // A malformed chunked body is the client's fault: 400 (not a 502
    // blaming the app), the connection closes, the app gets no end.
    let (app, n) = echo_node().await;
    let mut c = Client::connect(n.addr).await;
    c.send(
        b"POST /bad HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(b"zz\r\nmore\r\n0\r\n\r\n").await;
    let r = c.response().await.expect("an answer");
    assert_eq!(r.status, 400, "{}", r.head);
    assert_eq!(one(&r.head, "connection"), "close");
    c.closed_quietly().await;
    assert!(eventually(|| !app.errors().is_empty()).await);
    assert_eq!(
        app.errors(),
        ["POST /bad HTTP/1.1: closed inside a chunked body"]
    );
}

// ------------------------------------------------------------ smuggling

/// A request head with a body that is itself a request.
fn smuggling_post(host: &str, path: &str) -> (Vec<u8>, Vec<u8>) {
    let body = b"GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n".to_vec();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    (head.into_bytes(), body)
}

#[tokio::test]
async fn bodies_of_locally_answered_requests_are_never_read_as_requests() {
    let (app, n) = echo_node().await;

    for (host, path, status) in [("nowhere.test", "/", 404), ("app.test", "/old/x", 301)] {
        // The whole body came with the head: it is skipped, and the
        // connection carries on with the next request.
        let (head, body) = smuggling_post(host, path);
        let mut c = Client::connect(n.addr).await;
        c.send(&[head.clone(), body.clone()].concat()).await;
        let r = c.response().await.expect("local answer");
        assert_eq!(r.status, status, "{}", r.head);
        assert!(!values(&r.head, "date").is_empty(), "{}", r.head);
        let r = c.get("/next").await;
        assert_eq!(r.text(), "path=/next", "the body was read as a request");

        // The body comes after the answer: the connection closes, the
        // body is never parsed.
        let mut c = Client::connect(n.addr).await;
        c.send(&head).await;
        let r = c.response().await.expect("local answer");
        assert_eq!(r.status, status, "{}", r.head);
        assert_eq!(one(&r.head, "connection"), "close");
        let _ = c.s.write_all(&body).await;
        c.closed_quietly().await;

        // Same, chunked.
        let mut c = Client::connect(n.addr).await;
        c.send(
            format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let r = c.response().await.expect("local answer");
        assert_eq!(r.status, status, "{}", r.head);
        assert_eq!(one(&r.head, "connection"), "close");
        let _ =
            c.s.write_all(format!("{:x}\r\n", body.len()).as_bytes())
                .await;
        let _ = c.s.write_all(&body).await;
        let _ = c.s.write_all(b"\r\n0\r\n\r\n").await;
        c.closed_quietly().await;
    }
    assert!(eventually(|| app.seen().len() >= 2).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        app.paths(),
        ["/next", "/next"],
        "smuggled request reached the app"
    );
}

#[tokio::test]
async fn content_length_with_chunked_is_framed_by_chunked_and_closed_after() {
    let (app, n) = echo_node().await;
    let mut c = Client::connect(n.addr).await;
    // CL.TE: a Content-Length reader would take "GET /smuggled" as the
    // next request; chunked framing ends the body at the last chunk and
    // the connection closes after the answer.
    c.send(
        b"POST /clte HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n",
    )
    .await;
    let r = c.response().await.expect("response");
    assert_eq!(r.text(), "path=/clte");
    assert_eq!(one(&r.head, "connection"), "close");
    c.closed_quietly().await;
    let seen = app.seen();
    assert_eq!(app.paths(), ["/clte"]);
    assert!(
        values(&seen[0].head, "content-length").is_empty(),
        "{}",
        seen[0].head
    );

    // Codings other than a lone chunked, and disagreeing lengths: 400.
    for req in [
        &b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.0\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let mut c = Client::connect(n.addr).await;
        let r = c.request(req).await;
        assert_eq!(r.status, 400, "{}\nfor {:?}", r.head, String::from_utf8_lossy(req));
        c.closed_quietly().await;
    }
    assert_eq!(app.paths(), ["/clte"]);
}

// ------------------------------------------------------------ responses

#[tokio::test]
async fn response_framing_follows_the_app_and_the_method() {
    let app = App::start(Arc::new(|_, _, seen| match seen.path() {
        "/chunked" => Act::Reply(
            vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n".to_vec(),
                b"6\r\n world\r\n0\r\n\r\n".to_vec(),
            ],
            After::Keep,
        ),
        "/len" if seen.request_line().starts_with("HEAD ") => {
            reply("HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n")
        }
        "/len" => reply("HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello world"),
        "/204" => reply("HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n"),
        "/304" => reply("HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n"),
        _ => echo(seen),
    }))
    .await;
    let n = plain_node(&app).await;
    let mut c = Client::connect(n.addr).await;

    let r = c.get("/chunked").await;
    assert_eq!(one(&r.head, "transfer-encoding"), "chunked");
    assert!(values(&r.head, "content-length").is_empty(), "{}", r.head);
    assert_eq!(r.text(), "hello world");
    assert_eq!(r.raw.last_chunk::<5>(), Some(b"0\r\n\r\n"));

    let r = c.get("/len").await;
    assert_eq!(one(&r.head, "content-length"), "11");
    assert!(
        values(&r.head, "transfer-encoding").is_empty(),
        "{}",
        r.head
    );
    assert_eq!(r.text(), "hello world");

    // HEAD: the app's Content-Length, no body: the next answer's status
    // line comes right after the head.
    c.send(b"HEAD /len HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    let r = c.response_to(true).await.expect("head");
    assert_eq!(r.status, 200);
    assert_eq!(one(&r.head, "content-length"), "11");
    let r = c.get("/after-head").await;
    assert_eq!(r.text(), "path=/after-head");

    // 204 and 304: no body, no framing invented.
    for (p, status) in [("/204", 204), ("/304", 304)] {
        let r = c.get(p).await;
        assert_eq!(r.status, status, "{}", r.head);
        assert!(
            values(&r.head, "transfer-encoding").is_empty(),
            "{}",
            r.head
        );
        let r = c.get("/after").await;
        assert_eq!(r.text(), "path=/after", "bytes after a {status}");
    }
    assert!(c.buf.is_empty());
    assert_eq!(app.accepts(), 1);
}

#[tokio::test]
async fn an_app_dying_mid_body_never_looks_complete_to_the_client() {
    let app = App::start(Arc::new(|_, _, seen| match seen.path() {
        "/chunked" => Act::Reply(
            vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(),
                b"6\r\n world\r\n".to_vec(),
            ],
            After::Close,
        ),
        _ => Act::Reply(
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789".to_vec()],
            After::Close,
        ),
    }))
    .await;
    let n = plain_node(&app).await;

    let mut c = Client::connect(n.addr).await;
    c.send(b"GET /chunked HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    let head = read_head(&mut c.s, &mut c.buf)
        .await
        .expect("head")
        .expect("some head");
    assert_eq!(one(&head, "transfer-encoding"), "chunked");
    until_closed(&mut c.s, &mut c.buf)
        .await
        .expect("the node closes the connection");
    assert_eq!(dechunk(&c.buf), Ok(None), "the body looks complete");
    // What the app sent before it died is passed on, without an end.
    assert_eq!(c.buf, b"5\r\nhello\r\n6\r\n world\r\n");

    let mut c = Client::connect(n.addr).await;
    c.send(b"GET /len HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    let head = read_head(&mut c.s, &mut c.buf)
        .await
        .expect("head")
        .expect("some head");
    assert_eq!(one(&head, "content-length"), "100");
    until_closed(&mut c.s, &mut c.buf)
        .await
        .expect("the node closes the connection");
    assert_eq!(c.buf, b"0123456789");
}

// ------------------------------------------------------------ heads

#[tokio::test]
async fn node_answers_carry_a_date() {
    let (_app, n) = echo_node().await;
    let mut c = Client::connect(n.addr).await;
    let r = c
        .request(b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")
        .await;
    assert_eq!(r.status, 404, "{}", r.head);
    let date = httpdate::parse_http_date(&one(&r.head, "date")).expect("an HTTP date");
    let skew = date
        .duration_since(std::time::SystemTime::now())
        .or_else(|e| Ok::<_, ()>(e.duration()))
        .unwrap_or_default();
    assert!(skew < Duration::from_secs(5), "date off by {skew:?}");
    assert_eq!(r.text(), "no route\n");
    // And on the node's refusals.
    let mut c = Client::connect(n.addr).await;
    let r = c.request(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, 400, "{}", r.head);
    httpdate::parse_http_date(&one(&r.head, "date")).expect("an HTTP date");
}

#[tokio::test]
async fn bad_heads_get_400_and_a_close() {
    let (app, n) = echo_node().await;
    for req in [
        &b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost:\r\nHost: app.test\r\n\r\n",
        b"GET/ HTTP/1.1\r\nHost: app.test\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: app.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHo st: app.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: app.test\r\n bad: folded\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ] {
        let mut c = Client::connect(n.addr).await;
        let r = c.request(req).await;
        assert_eq!(
            r.status,
            400,
            "{}\nfor {:?}",
            r.head,
            String::from_utf8_lossy(req)
        );
        assert_eq!(one(&r.head, "connection"), "close");
        assert_eq!(one(&r.head, "content-length"), "0");
        c.closed_quietly().await;
    }
    assert_eq!(app.accepts(), 0, "a refused request reached the app");

    // A head over the limit: 431.
    let mut c = Client::connect(n.addr).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: app.test\r\nx-big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let _ = c.s.write_all(big.as_bytes()).await;
    let r = c.response().await.expect("431");
    assert_eq!(r.status, 431, "{}", r.head);

    // Empty lines before a request line are ignored (RFC 9112 §2.2), at
    // the start and between requests.
    let mut c = Client::connect(n.addr).await;
    let r = c
        .request(b"\r\n\r\nGET /crlf HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    assert_eq!(r.text(), "path=/crlf");
    let r = c
        .request(b"POST /crlf2 HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\n\r\nab\r\n")
        .await;
    assert_eq!(r.text(), "path=/crlf2");
    let r = c
        .request(b"\nGET /crlf3 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    assert_eq!(r.text(), "path=/crlf3");
    assert_eq!(app.paths(), ["/crlf", "/crlf2", "/crlf3"]);
}

#[tokio::test]
async fn connection_close_head_and_absolute_form() {
    let (app, n) = echo_node().await;

    // HEAD to a local answer: no body bytes follow its head.
    let mut c = Client::connect(n.addr).await;
    c.send(b"HEAD / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")
        .await;
    let r = c.response_to(true).await.expect("head 404");
    assert_eq!(r.status, 404, "{}", r.head);
    let r = c.get("/after").await;
    assert_eq!(r.text(), "path=/after");

    // An absolute-form target: the app gets origin-form.
    let r = c
        .request(b"GET http://app.test/abs?q=1 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    assert_eq!(r.text(), "path=/abs?q=1");
    assert_eq!(app.seen()[1].request_line(), "GET /abs?q=1 HTTP/1.1");
    // Its authority wins over Host (RFC 9112 §3.2.2): routed by it, and
    // the app is told the same host.
    let r = c
        .request(b"GET http://app.test/abs2 HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")
        .await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.text(), "path=/abs2");
    assert_eq!(one(&app.seen()[2].head, "host"), "app.test");

    // Many pipelined in one write: all answered, in order.
    let mut reqs = Vec::new();
    for i in 0..50 {
        reqs.extend_from_slice(format!("GET /m{i} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes());
    }
    c.send(&reqs).await;
    for i in 0..50 {
        let r = c.response().await.expect("pipelined");
        assert_eq!(r.text(), format!("path=/m{i}"));
    }

    // Connection: close from an HTTP/1.1 client: said back, then closed.
    let r = c
        .request(b"GET /bye HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(r.text(), "path=/bye");
    assert_eq!(one(&r.head, "connection"), "close");
    c.closed_quietly().await;
    assert_eq!(app.accepts(), 1);
}

#[tokio::test]
async fn a_body_refused_while_the_client_still_sends_it_is_answered_413() {
    // curl without Expect: the whole (too large) body is being written
    // when the node answers 413. The client must still read the answer.
    let (app, n) = echo_node().await;
    let c = TcpStream::connect(n.addr).await.expect("connect");
    let (mut rd, mut wr) = c.into_split();
    let body = vec![b'b'; 8 << 20];
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST /small/up HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let _ = wr.write_all(head.as_bytes()).await;
        let r = wr.write_all(&body).await;
        (wr, r)
    });
    let mut buf = Vec::new();
    let head = read_head(&mut rd, &mut buf)
        .await
        .expect("the 413 is readable")
        .expect("a response");
    assert_eq!(status_of(&head), Ok(413), "{head}");
    let _ = tokio::time::timeout(WAIT, writer).await;
    assert_eq!(app.accepts(), 0);
}

// ------------------------------------------------------------ timeouts
// ------------------------------------------------------------ timeouts

fn short_timeouts() -> ListenerSettings {
    ListenerSettings {
        header_read_timeout_ms: 300,
        idle_timeout_ms: 400,
        ..Default::default()
    }
}

#[tokio::test]
async fn idle_and_slow_head_timeouts() {
    let app = App::start(echo_path()).await;
    let n = start(
        snapshot(app.addr, Some(short_timeouts())),
        None,
        Duration::from_secs(1),
    )
    .await;

    // Idle keep-alive connection: closed after the idle timeout, nothing
    // sent.
    let mut c = Client::connect(n.addr).await;
    assert_eq!(c.get("/a").await.text(), "path=/a");
    let t = tokio::time::Instant::now();
    c.closed_quietly().await;
    assert!(t.elapsed() >= Duration::from_millis(300), "closed early");

    // A connection that never sends a byte: closed too.
    let mut c = Client::connect(n.addr).await;
    c.closed_quietly().await;

    // Part of a head, then nothing: 408, then close.
    let mut c = Client::connect(n.addr).await;
    c.send(b"GET /slow HTTP/1.1\r\nHost: app").await;
    let mut got = Vec::new();
    until_closed(&mut c.s, &mut got)
        .await
        .expect("the node closes the connection");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{text:?}"
    );
    assert!(text.contains("\r\nconnection: close\r\n"), "{text:?}");

    // A head sent slowly but finished in time is served.
    let mut c = Client::connect(n.addr).await;
    for piece in ["GET /trickle HTTP/1.1\r\n", "Host: app.test\r\n", "\r\n"] {
        c.send(piece.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.response().await.expect("served").text(), "path=/trickle");
    assert_eq!(app.paths(), ["/a", "/trickle"]);
}

#[tokio::test]
async fn a_client_stalling_mid_body_is_cut_after_the_idle_timeout() {
    let app = App::start(echo_path()).await;
    let mut snap = snapshot(app.addr, Some(short_timeouts()));
    // A response timeout well past the client's idle timeout: the stall
    // is the client's, and must be ended by the client-side timeout.
    for c in &mut snap.clusters {
        c.response_timeout_ms = 20_000;
    }
    let n = start(snap, None, Duration::from_secs(1)).await;
    let mut c = Client::connect(n.addr).await;
    c.send(b"POST /stall HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n0123456789")
        .await;
    // A trickle that keeps the connection alive...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.send(b"x").await;
    }
    // ...then nothing: the node gives up (an answer other than a gateway
    // timeout blaming the app, then the close), and the app never gets a
    // complete request.
    let mut got = Vec::new();
    until_closed(&mut c.s, &mut got)
        .await
        .expect("the node closes a stalled request");
    // 408, the client's doing (nginx's answer), not a 5xx blaming the app.
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text:?}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text:?}");
    assert!(eventually(|| !app.errors().is_empty()).await);
    assert_eq!(
        app.errors(),
        ["POST /stall HTTP/1.1: closed after 14 of 100 body bytes"]
    );
}

#[tokio::test]
async fn a_client_that_reads_nothing_is_dropped_and_the_app_released() {
    const TOTAL: usize = 32 << 20;
    // An app that sends 32 MiB and says how its writing ended.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let app_addr = l.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<usize, String>>();
    let app = tokio::spawn(async move {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let mut buf = Vec::new();
        if read_head(&mut s, &mut buf).await.is_err() {
            return;
        }
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {TOTAL}\r\n\r\n");
        let mut sent = 0;
        let r = async {
            s.write_all(head.as_bytes()).await?;
            let block = vec![b'z'; 64 * 1024];
            while sent < TOTAL {
                s.write_all(&block).await?;
                sent += block.len();
            }
            Ok::<_, std::io::Error>(())
        }
        .await;
        let _ = tx.send(match r {
            Ok(()) => Ok(sent),
            Err(e) => Err(format!("after {sent} bytes: {e}")),
        });
    });
    let n = start(
        snapshot(app_addr, Some(short_timeouts())),
        None,
        Duration::from_secs(1),
    )
    .await;
    let mut c = Client::connect(n.addr).await;
    c.send(b"GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    // The client reads nothing; the node gives up on it and lets the app go.
    let ended = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("the app is still writing: the node kept the stalled client")
        .expect("app result");
    let err = ended.expect_err("the app sent everything to a client that read nothing");
    assert!(!err.is_empty());
    // The client then finds a cut answer and the end of the connection.
    let mut got = Vec::new();
    until_closed(&mut c.s, &mut got)
        .await
        .expect("the node closes the connection");
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    let body_at = find(&got, b"\r\n\r\n").expect("a head") + 4;
    assert!(got.len() - body_at < TOTAL, "the whole answer came");
    app.abort();
}

// ------------------------------------------------------------ drain

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_idle_connections_and_finishes_requests_in_flight() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let app = App::start(Arc::new(move |_, _, seen| {
        if seen.path() == "/held" {
            Act::Gated(
                Vec::new(),
                g.clone(),
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\ndone\n".to_vec(),
            )
        } else {
            ok(&format!("path={}", seen.path()))
        }
    }))
    .await;
    // A long drain timeout: connections must close by themselves, not by
    // the hard stop at its end.
    let mut n = start(snapshot(app.addr, None), None, Duration::from_secs(30)).await;

    let mut idle = Client::connect(n.addr).await;
    assert_eq!(idle.get("/one").await.text(), "path=/one");
    let mut fresh = Client::connect(n.addr).await;
    let mut busy = Client::connect(n.addr).await;
    busy.send(b"GET /held HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    assert!(
        eventually(|| app.seen().len() == 2).await,
        "held request not at the app"
    );

    n.shutdown.cancel();
    // Idle connections close at once (well before the drain timeout).
    idle.closed_quietly().await;
    fresh.closed_quietly().await;
    // The request in flight gets its answer, told to close.
    gate.notify_one();
    let r = busy.response().await.expect("answer in flight");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.text(), "done\n");
    assert_eq!(one(&r.head, "connection"), "close");
    busy.closed_quietly().await;
    tokio::time::timeout(WAIT, &mut n.task)
        .await
        .expect("serve returned")
        .expect("join");
    assert!(!n.node.readiness().is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_idle_tls_connections_at_once() {
    let cert = test_cert();
    let app = App::start(echo_path()).await;
    let mut n = start(
        snapshot(app.addr, None),
        Some(&cert),
        Duration::from_secs(30),
    )
    .await;
    // One used and idle, one that completed its handshake and sent nothing
    // (a browser's preconnect).
    let mut used = Client::tls(n.addr, &cert).await;
    assert_eq!(used.get("/one").await.text(), "path=/one");
    let mut silent = Client::tls(n.addr, &cert).await;
    // The handshake is done on both sides (the node's session tickets
    // came): the node waits for a request now.
    tokio::time::sleep(Duration::from_millis(100)).await;
    n.shutdown.cancel();
    used.closed_quietly().await;
    silent.closed_quietly().await;
    tokio::time::timeout(WAIT, &mut n.task)
        .await
        .expect("serve returned")
        .expect("join");
}

// ------------------------------------------------------------ h2

#[tokio::test]
async fn h2_with_prior_knowledge_on_the_plain_listener() {
    let (app, n) = echo_node().await;
    let tcp = TcpStream::connect(n.addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    for p in ["/h2a", "/h2b"] {
        let req = hyper::Request::get(format!("http://app.test{p}"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = send.send_request(req).await.expect("h2 response");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], format!("path={p}").as_bytes());
    }
    assert_eq!(app.paths(), ["/h2a", "/h2b"]);
    drop(send);
    let _ = tokio::time::timeout(WAIT, conn).await;
}
