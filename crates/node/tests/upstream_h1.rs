//! The node's own HTTP/1.1 upstream client, on the wire: apps here are
//! scripted raw TCP servers that record the exact bytes they received and
//! count their connections, and clients write raw request bytes to the
//! node's plain-HTTP listener and parse what comes back themselves. So the
//! assertions are about bytes: the framing an app saw, the headers in its
//! request head, the body a client got, and how many upstream connections
//! carried the requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use control_api::pb::HeaderValue as PbHeader;
use control_api::{Cluster, Route, Snapshot};
use node::Node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Bound on every read and wait in these tests.
mod support;
use support::*;

// Wire helpers, scripted apps and the raw client: `support/mod.rs`.

// ------------------------------------------------------------ node, clients

/// A node on a plain-HTTP loopback listener, routing everything to `app`
/// (plus any `extra` routes to the same cluster).
async fn start_node(app: SocketAddr, extra: Vec<Route>) -> Running {
    start_node_with(cluster("app", &[app]), extra).await
}

/// [`start_node`] with the cluster (named "app") given.
async fn start_node_with(app: Cluster, extra: Vec<Route>) -> Running {
    let mut routes = extra;
    routes.push(route("all", "/", "app"));
    let snap = Snapshot {
        version: 1,
        clusters: vec![app],
        routes,
        ..Default::default()
    };
    run_node(
        loopback().await,
        "node-h1",
        Duration::from_secs(1),
        &snap,
        false,
    )
}

// ------------------------------------------------------------ tests

#[tokio::test]
async fn chunked_response_with_extension_and_trailers_is_dechunked_and_reused() {
    let app = App::start(Arc::new(|_, _, _| {
        reply(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
             5;name=\"v a\";x\r\nhello\r\n7\r\n, world\r\n000\r\nx-sum: 12\r\n\r\n",
        )
    }))
    .await;
    let n = start_node(app.addr, vec![]).await;
    let mut c = Client::connect(n.addr).await;
    for path in ["/one", "/two"] {
        let r = c.get(path).await;
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.text(), "hello, world");
        assert_eq!(values(&r.head, "x-tandem-node"), ["node-h1"]);
    }
    assert_eq!(app.accepts(), 1, "one upstream connection for both");
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.conn == 0));
    assert_eq!(seen[0].request_line(), "GET /one HTTP/1.1");
    assert_eq!(seen[1].request_line(), "GET /two HTTP/1.1");
}

#[tokio::test]
async fn close_delimited_response_is_read_to_the_end_and_not_reused() {
    // Bigger than one read of the node, so it comes in several.
    let body: String = (0..40_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let expected = body.clone();
    let app = App::start(Arc::new(move |_, _, _| {
        Act::Reply(
            vec![
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n".to_vec(),
                body.as_bytes()[..10_000].to_vec(),
                body.as_bytes()[10_000..].to_vec(),
            ],
            After::Close,
        )
    }))
    .await;
    let n = start_node(app.addr, vec![]).await;
    let mut c = Client::connect(n.addr).await;
    let r = c.get("/a").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body.len(), expected.len());
    assert!(r.text() == expected, "body differs");
    assert_eq!(app.accepts(), 1);
    // The client connection is still good; the app's was used up.
    let r = c.get("/b").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.text() == expected, "body differs");
    assert_eq!(app.accepts(), 2, "a new upstream connection");
}

#[tokio::test]
async fn http10_response_without_keep_alive_is_not_reused() {
    // The app keeps its side open: only the node's reading of HTTP/1.0
    // stops it from reusing the connection.
    let app = App::start(Arc::new(|_, _, _| {
        reply("HTTP/1.0 200 OK\r\ncontent-length: 11\r\n\r\nhello world")
    }))
    .await;
    let n = start_node(app.addr, vec![]).await;
    let mut c = Client::connect(n.addr).await;
    for (i, path) in ["/a", "/b"].into_iter().enumerate() {
        let r = c.get(path).await;
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.text(), "hello world");
        assert_eq!(app.accepts(), i + 1, "a new upstream connection each");
    }
    // And the node closed the ones it did not keep.
    assert!(
        eventually(|| app.closed_by_node.load(Ordering::SeqCst) >= 1).await,
        "node left the HTTP/1.0 connection open"
    );

    // Control: HTTP/1.0 with keep-alive is reused.
    let app = App::start(Arc::new(|_, _, _| {
        reply("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok")
    }))
    .await;
    let n = start_node(app.addr, vec![]).await;
    let mut c = Client::connect(n.addr).await;
    for _ in 0..3 {
        let r = c.get("/k").await;
        assert_eq!(r.text(), "ok");
    }
    assert_eq!(app.accepts(), 1);
}

#[tokio::test]
async fn interim_responses_are_skipped_before_the_final_one() {
    let app = App::start(Arc::new(|_, _, _| {
        Act::Reply(
            vec![
                b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
                b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n".to_vec(),
                b"HTTP/1.1 200 OK\r\nx-final: yes\r\ncontent-length: 5\r\n\r\nhello".to_vec(),
            ],
            After::Keep,
        )
    }))
    .await;
    let n = start_node(app.addr, vec![]).await;
    let mut c = Client::connect(n.addr).await;
    let r = c
        .request(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc")
        .await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(values(&r.head, "x-final"), ["yes"]);
    assert_eq!(r.text(), "hello");
    // The app's 1xx heads are not passed on (the client did not ask to
    // continue), and nothing of them leaks into the final response.
    assert!(r.interim.is_empty(), "{:?}", r.interim);
    let r = c.get("/again").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.text(), "hello");
    assert_eq!(app.accepts(), 1, "the connection survived the 1xx heads");
    assert_eq!(app.seen()[0].raw_body, b"abc");

    // A client that waits for 100-continue gets exactly one (the node's
    // own), then the final response; the app's 100 is not a second one.
    c.send(b"POST /wait HTTP/1.1\r\nHost: app.test\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        .await;
    let mut head = Vec::new();
    let cont = read_head(&mut c.s, &mut head)
        .await
        .expect("read")
        .expect("100");
    assert_eq!(status_of(&cont), Ok(100), "{cont}");
    c.buf = head;
    c.send(b"wxyz").await;
    let r = c.response().await.expect("response");
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.interim.is_empty(), "{:?}", r.interim);
    assert_eq!(r.text(), "hello");
    let seen = app.seen();
    assert_eq!(seen[2].request_line(), "POST /wait HTTP/1.1");
    assert_eq!(seen[2].raw_body, b"wxyz");
    assert_eq!(app.accepts(), 1);
}

#[tokio::test]
async fn malformed_responses_are_502() {
    let big = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok",
        "a".repeat(70 * 1024)
    );
    let app = App::start(Arc::new(move |_, _, seen| {
        let line = seen.request_line();
        if line.contains("/bad-status") {
            reply("HTTP/1.1 2x0 OK\r\ncontent-length: 2\r\n\r\nok")
        } else if line.contains("/two-lengths") {
            reply("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok")
        } else if line.contains("/length-list") {
            reply("HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nok")
        } else if line.contains("/switch") {
            reply("HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n")
        } else if line.contains("/big-head") {
            reply(big.clone())
        } else {
            ok("fine")
        }
    }))
    .await;
    let n = start_node(app.addr, vec![]).await;
    let mut c = Client::connect(n.addr).await;
    for path in [
        "/bad-status",
        "/two-lengths",
        "/length-list",
        "/switch",
        "/big-head",
    ] {
        let r = c.get(path).await;
        assert_eq!(r.status, 502, "{path}: {}\n{}", r.head, r.text());
        assert_eq!(r.text(), "upstream request failed\n", "{path}");
    }
    // Each bad answer cost its connection; a good one still works.
    let r = c.get("/good").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.text(), "fine");
    assert_eq!(app.accepts(), 6);
    let text = metrics(&n.node);
    assert!(
        text.contains("tandem_node_requests_total{route=\"all\",cluster=\"app\",code=\"5xx\"} 5"),
        "{text}"
    );
}

#[tokio::test]
async fn idle_connection_closed_by_the_app_is_not_used() {
    let app = App::start(Arc::new(|conn, _, _| {
        Act::Reply(
            vec![format!("HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nconn={conn}").into_bytes()],
            After::CloseIn(Duration::from_millis(100)),
        )
    }))
    .await;
    let n = start_node(app.addr, vec![]).await;
    let mut c = Client::connect(n.addr).await;
    let r = c.get("/a").await;
    assert_eq!(r.text(), "conn=0");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = c.get("/b").await;
    assert_eq!(r.status, 200, "{}\n{}", r.head, r.text());
    assert_eq!(r.text(), "conn=1");
    assert_eq!(app.accepts(), 2);

    // A POST with a body cannot be sent again if a dead connection eats
    // it: it must not be given the connection the app closed while idle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = c
        .request(b"POST /c HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\n\r\nbody")
        .await;
    assert_eq!(r.status, 200, "{}\n{}", r.head, r.text());
    assert_eq!(r.text(), "conn=2");
    assert_eq!(app.accepts(), 3);
    let seen = app.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].raw_body, b"body");
}

/// Answers the first request on connection 0, reads the second and hangs
/// up without answering; answers everything on later connections.
fn hangup_on_second() -> Script {
    Arc::new(|conn, nth, _| {
        if conn == 0 && nth == 1 {
            Act::Hangup
        } else {
            ok(&format!("conn={conn}"))
        }
    })
}

#[tokio::test]
async fn reused_connection_closed_before_answering_retries_only_idempotent_requests() {
    // GET: sent again on a new connection.
    let app = App::start(hangup_on_second()).await;
    let n = start_node(app.addr, vec![]).await;
    let mut c = Client::connect(n.addr).await;
    assert_eq!(c.get("/first").await.text(), "conn=0");
    let r = c.get("/second").await;
    assert_eq!(r.status, 200, "{}\n{}", r.head, r.text());
    assert_eq!(r.text(), "conn=1");
    assert_eq!(app.accepts(), 2);
    let lines: Vec<(usize, String)> = app
        .seen()
        .iter()
        .map(|s| (s.conn, s.request_line().to_string()))
        .collect();
    assert_eq!(
        lines,
        [
            (0, "GET /first HTTP/1.1".to_string()),
            (0, "GET /second HTTP/1.1".to_string()),
            (1, "GET /second HTTP/1.1".to_string()),
        ]
    );

    // POST with a body: not sent twice, the client gets 502.
    let app = App::start(hangup_on_second()).await;
    let n = start_node(app.addr, vec![]).await;
    let mut c = Client::connect(n.addr).await;
    assert_eq!(c.get("/first").await.text(), "conn=0");
    let r = c
        .request(b"POST /order HTTP/1.1\r\nHost: app.test\r\nContent-Length: 7\r\n\r\npayload")
        .await;
    assert_eq!(r.status, 502, "{}\n{}", r.head, r.text());
    // Give a wrong second attempt time to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let posts: Vec<Seen> = app
        .seen()
        .into_iter()
        .filter(|s| s.request_line().starts_with("POST"))
        .collect();
    assert_eq!(posts.len(), 1, "the POST reached the app exactly once");
    assert_eq!(posts[0].raw_body, b"payload");
    assert_eq!(app.accepts(), 1);
}

#[tokio::test]
async fn request_bodies_keep_their_framing_and_bytes() {
    let app = App::start(Arc::new(|_, _, _| ok("ok"))).await;
    let n = start_node(app.addr, vec![]).await;
    let mut c = Client::connect(n.addr).await;

    // Chunked from the client, in pieces over time, one chunk larger than
    // the node's coalescing size.
    let big: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let mut payload = b"wiki".to_vec();
    payload.extend_from_slice(b"pedia");
    payload.extend_from_slice(&big);
    c.send(b"POST /chunked HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.send(b"5;ext=1\r\npedia\r\n").await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut last = format!("{:x}\r\n", big.len()).into_bytes();
    last.extend_from_slice(&big);
    // Trailers from the client end the body; they are not sent on.
    last.extend_from_slice(b"\r\n0\r\nx-checksum: 42\r\n\r\n");
    c.send(&last).await;
    let r = c.response().await.expect("response");
    assert_eq!(r.status, 200, "{}", r.head);

    // Content-Length.
    let cl: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    let mut req = format!(
        "POST /length HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n\r\n",
        cl.len()
    )
    .into_bytes();
    req.extend_from_slice(&cl);
    assert_eq!(c.request(&req).await.status, 200);

    // No body at all, and an explicit empty one.
    assert_eq!(c.get("/nobody").await.status, 200);
    let r = c
        .request(b"POST /zero HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\n\r\n")
        .await;
    assert_eq!(r.status, 200);

    let seen = app.seen();
    assert_eq!(seen.len(), 4);

    let s = &seen[0];
    assert_eq!(s.request_line(), "POST /chunked HTTP/1.1");
    assert_eq!(one(&s.head, "transfer-encoding"), "chunked");
    assert!(values(&s.head, "content-length").is_empty(), "{}", s.head);
    let (used, got, trailers) = dechunk(&s.raw_body)
        .expect("valid chunk framing")
        .expect("complete chunked body");
    assert_eq!(used, s.raw_body.len(), "nothing after the last chunk");
    assert!(trailers.is_empty());
    assert!(got == payload, "chunked payload differs");

    let s = &seen[1];
    assert_eq!(s.request_line(), "POST /length HTTP/1.1");
    assert_eq!(one(&s.head, "content-length"), "50000");
    assert!(
        values(&s.head, "transfer-encoding").is_empty(),
        "{}",
        s.head
    );
    assert!(s.raw_body == cl, "Content-Length body differs");

    let s = &seen[2];
    assert_eq!(s.request_line(), "GET /nobody HTTP/1.1");
    assert!(values(&s.head, "content-length").is_empty(), "{}", s.head);
    assert!(
        values(&s.head, "transfer-encoding").is_empty(),
        "{}",
        s.head
    );

    let s = &seen[3];
    assert_eq!(s.request_line(), "POST /zero HTTP/1.1");
    assert_eq!(one(&s.head, "content-length"), "0");
    assert!(
        values(&s.head, "transfer-encoding").is_empty(),
        "{}",
        s.head
    );
    assert!(s.raw_body.is_empty());
    assert_eq!(app.accepts(), 1);
}

fn metrics(node: &Node) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &node.registry()).expect("encode");
    text
}

#[tokio::test]
async fn truncated_response_body_does_not_reach_the_client_complete() {
    let app = App::start(Arc::new(|_, _, _| {
        let mut r = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n".to_vec();
        r.extend_from_slice(&[b'x'; 50]);
        Act::Reply(vec![r], After::Close)
    }))
    .await;
    let n = start_node(app.addr, vec![]).await;
    let mut c = Client::connect(n.addr).await;
    c.send(b"GET /cut HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    match c.response().await {
        Err(e) => assert!(!e.contains("timed out"), "{e}"),
        Ok(r) => panic!(
            "a complete response from a cut one: {} + {} bytes",
            r.head,
            r.body.len()
        ),
    }
    // The client connection is finished (closed, not left hanging).
    let mut rest = Vec::new();
    let end = tokio::time::timeout(WAIT, c.s.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "client connection left open");

    // A chunked body that turns to garbage half-way: the client never sees
    // its end either.
    let app = App::start(Arc::new(|_, _, _| {
        reply("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n")
    }))
    .await;
    let n = start_node(app.addr, vec![]).await;
    let mut c = Client::connect(n.addr).await;
    c.send(b"GET /garbled HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    match c.response().await {
        Err(e) => assert!(!e.contains("timed out"), "{e}"),
        Ok(r) => panic!(
            "a complete response from a garbled one: {}{:?}",
            r.head,
            r.text()
        ),
    }
}

#[tokio::test]
async fn upstream_request_head_carries_the_nodes_headers_once() {
    let app = App::start(Arc::new(|_, _, _| ok("ok"))).await;
    let mut edit = route("edit", "/edit", "app");
    edit.request_headers_add = vec![PbHeader {
        name: "x-forwarded-proto".into(),
        value: "custom".into(),
    }];
    // A route that sets the request id: its value, once (the node's own
    // id must not be written after it).
    let mut rid = route("rid", "/rid", "app");
    rid.request_headers_add = vec![PbHeader {
        name: "x-request-id".into(),
        value: "route-id".into(),
    }];
    let n = start_node(app.addr, vec![edit, rid]).await;

    let mut c = Client::connect(n.addr).await;
    let r = c
        .request(
            b"GET /h?q=1 HTTP/1.1\r\n\
              Host: app.example:8080\r\n\
              X-Forwarded-For: 6.6.6.6\r\n\
              X-Forwarded-For: 7.7.7.7\r\n\
              Forwarded: for=6.6.6.6;proto=https\r\n\
              X-Forwarded-Proto: https\r\n\
              X-Forwarded-Host: evil.test\r\n\
              Connection: keep-alive, x-drop-me\r\n\
              Keep-Alive: timeout=5\r\n\
              Proxy-Connection: keep-alive\r\n\
              TE: trailers\r\n\
              x-drop-me: 1\r\n\
              X-Keep: yes\r\n\
              \r\n",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.head);
    let r = c
        .request(b"GET /id HTTP/1.1\r\nHost: app.test\r\nX-Request-Id: client-id-123\r\n\r\n")
        .await;
    assert_eq!(r.status, 200, "{}", r.head);
    let r = c
        .request(b"GET /edit HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-Proto: https\r\n\r\n")
        .await;
    assert_eq!(r.status, 200, "{}", r.head);
    let r = c
        .request(b"GET http://app.test/abs?x=1 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    assert_eq!(r.status, 200, "{}", r.head);

    // An HTTP/1.0 client without Host (the node answers and closes).
    let mut old = Client::connect(n.addr).await;
    let r = old.request(b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.text(), "ok");

    // A client asking to upgrade, on its own connection.
    let mut up = Client::connect(n.addr).await;
    let r = up
        .request(
            b"GET /up HTTP/1.1\r\nHost: app.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await;
    let upgrade_answer = (r.status, r.head.clone());
    let r = up
        .request(b"GET /rid HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    assert_eq!(r.status, 200, "{}", r.head);

    let seen = app.seen();
    let h = &seen[0].head;
    assert_eq!(seen[0].request_line(), "GET /h?q=1 HTTP/1.1");
    assert_eq!(one(h, "host"), "app.example:8080");
    assert_eq!(one(h, "x-forwarded-host"), "app.example:8080");
    assert_eq!(one(h, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(one(h, "x-forwarded-proto"), "http");
    assert_eq!(one(h, "forwarded"), "for=127.0.0.1;proto=http");
    assert!(!one(h, "x-request-id").is_empty());
    assert_eq!(one(h, "x-keep"), "yes");
    for gone in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "x-drop-me",
        "transfer-encoding",
        "content-length",
    ] {
        assert!(values(h, gone).is_empty(), "{gone} forwarded:\n{h}");
    }

    let h = &seen[1].head;
    assert_eq!(one(h, "x-request-id"), "client-id-123");
    assert_eq!(one(h, "host"), "app.test");

    let h = &seen[2].head;
    assert_eq!(seen[2].request_line(), "GET /edit HTTP/1.1");
    assert_eq!(one(h, "x-forwarded-proto"), "custom");
    assert_eq!(one(h, "host"), "app.test");
    assert_eq!(one(h, "x-forwarded-host"), "app.test");
    assert_eq!(one(h, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(one(h, "forwarded"), "for=127.0.0.1;proto=http");
    assert!(!one(h, "x-request-id").is_empty());

    // Absolute-form in, origin-form out.
    assert_eq!(seen[3].request_line(), "GET /abs?x=1 HTTP/1.1");
    assert_eq!(one(&seen[3].head, "host"), "app.test");

    // HTTP/1.0 in, HTTP/1.1 out, with the endpoint as Host.
    let h = &seen[4].head;
    assert_eq!(seen[4].request_line(), "GET /old HTTP/1.1");
    assert_eq!(one(h, "host"), app.addr.to_string());
    assert!(values(h, "x-forwarded-host").is_empty(), "{h}");
    assert_eq!(one(h, "x-forwarded-for"), "127.0.0.1");
    assert!(!one(h, "x-request-id").is_empty());

    // The upgrade request reached the app as a plain request (the app said
    // 200, not 101).
    assert_eq!(upgrade_answer.0, 200, "{}", upgrade_answer.1);
    let s = &seen[5];
    assert_eq!(s.request_line(), "GET /up HTTP/1.1");
    assert!(values(&s.head, "upgrade").is_empty(), "{}", s.head);
    assert!(values(&s.head, "connection").is_empty(), "{}", s.head);
    assert_eq!(seen[6].request_line(), "GET /rid HTTP/1.1");
    assert_eq!(one(&seen[6].head, "x-request-id"), "route-id");
    assert_eq!(one(&seen[6].head, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(seen.len(), 7);
}

#[tokio::test]
async fn response_shapes_decide_whether_the_connection_is_reused() {
    // (response, body the client gets, connection kept)
    let shapes: [(&str, &str, bool); 6] = [
        ("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", "ok", true),
        (
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            "ok",
            false,
        ),
        (
            "HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 2\r\n\r\nok",
            "ok",
            false,
        ),
        ("HTTP/1.1 204 No Content\r\n\r\n", "", true),
        // No body whatever its Content-Length says.
        (
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 50\r\n\r\n",
            "",
            true,
        ),
        // Bytes after the response nobody asked for: never served to the
        // next request, and the connection goes.
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray",
            "ok",
            false,
        ),
    ];
    for (response, body, kept) in shapes {
        let first = response.to_string();
        let app = App::start(Arc::new(move |conn, nth, _| {
            if conn == 0 && nth == 0 {
                reply(first.clone())
            } else {
                ok(&format!("conn={conn}"))
            }
        }))
        .await;
        let n = start_node(app.addr, vec![]).await;
        let mut c = Client::connect(n.addr).await;
        c.send(b"GET /shape HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .await;
        let r = c
            .response()
            .await
            .unwrap_or_else(|e| panic!("{response:?}: {e}"));
        assert_eq!(r.text(), body, "{response:?}: {}", r.head);
        c.send(b"GET /next HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .await;
        let r = c
            .response()
            .await
            .unwrap_or_else(|e| panic!("{response:?}, next request: {e}"));
        assert_eq!(r.status, 200, "{response:?}: {}", r.head);
        let expected = if kept { "conn=0" } else { "conn=1" };
        assert_eq!(r.text(), expected, "{response:?}");
        assert_eq!(app.accepts(), if kept { 1 } else { 2 }, "{response:?}");
    }
}

#[tokio::test]
async fn head_response_has_no_body_and_keeps_the_connection() {
    let app = App::start(Arc::new(|_, _, seen| {
        if seen.request_line().starts_with("HEAD") {
            reply("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\nx-head: 1\r\n\r\n")
        } else {
            ok("after head")
        }
    }))
    .await;
    let n = start_node(app.addr, vec![]).await;
    let mut c = Client::connect(n.addr).await;
    c.send(b"HEAD /h HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    let head = read_head(&mut c.s, &mut c.buf)
        .await
        .expect("read")
        .expect("head");
    assert_eq!(status_of(&head), Ok(200), "{head}");
    assert_eq!(values(&head, "x-head"), ["1"], "{head}");
    // The Content-Length a GET would have, passed on as it was.
    assert_eq!(values(&head, "content-length"), ["1000"], "{head}");
    // No body bytes follow: the next thing on the connection is the next
    // response.
    let r = c.get("/g").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.text(), "after head");
    assert_eq!(app.accepts(), 1);
    let seen = app.seen();
    assert_eq!(seen[0].request_line(), "HEAD /h HTTP/1.1");
}

#[tokio::test]
async fn response_body_is_streamed_before_the_app_finishes_it() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let app = App::start(Arc::new(move |_, _, _| {
        Act::Gated(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst \r\n".to_vec(),
            g.clone(),
            b"6\r\nsecond\r\n0\r\n\r\n".to_vec(),
        )
    }))
    .await;
    let n = start_node(app.addr, vec![]).await;
    let mut c = Client::connect(n.addr).await;
    c.send(b"GET /s HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    let head = read_head(&mut c.s, &mut c.buf)
        .await
        .expect("read")
        .expect("head");
    assert_eq!(status_of(&head), Ok(200), "{head}");
    // The first piece arrives while the app still holds the rest.
    while find(&c.buf, b"first ").is_none() {
        let got = fill(&mut c.s, &mut c.buf).await.expect("first piece");
        assert!(got > 0, "closed early");
    }
    gate.notify_one();
    let (_, body) = read_body(
        &mut c.s,
        &mut c.buf,
        body_kind(&head, true).expect("framing"),
    )
    .await
    .expect("body");
    assert_eq!(String::from_utf8_lossy(&body), "first second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_their_own_responses() {
    // Each answer comes in two writes 20 ms apart, so connections are busy
    // while others ask.
    let app = App::start(Arc::new(|conn, _, seen| {
        let path = seen
            .request_line()
            .split(' ')
            .nth(1)
            .unwrap_or("?")
            .to_string();
        let body = format!("{path} on {conn}");
        Act::Reply(
            vec![
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes(),
                body.into_bytes(),
            ],
            After::Keep,
        )
    }))
    .await;
    let n = start_node(app.addr, vec![]).await;
    let mut tasks = JoinSet::new();
    for client in 0..8 {
        let addr = n.addr;
        tasks.spawn(async move {
            let mut c = Client::connect(addr).await;
            for i in 0..5 {
                let path = format!("/c{client}/r{i}");
                let r = c.get(&path).await;
                assert_eq!(r.status, 200, "{}", r.head);
                let text = r.text();
                assert!(text.starts_with(&format!("{path} on ")), "{path}: {text}");
            }
        });
    }
    while let Some(r) = tokio::time::timeout(WAIT * 2, tasks.join_next())
        .await
        .expect("clients finished")
    {
        r.expect("client task");
    }
    assert_eq!(app.seen().len(), 40);
    let accepts = app.accepts();
    assert!((2..=8).contains(&accepts), "{accepts} upstream connections");
}

/// RFC 9112 §6.3: with both Transfer-Encoding and Content-Length, the
/// chunked framing wins and a proxy that forwards the message must drop the
/// Content-Length. The client gets the dechunked body (or a 502), never a
/// response whose Content-Length disagrees with its body; and the
/// connection is not reused.
#[tokio::test]
async fn response_with_both_framings_reaches_the_client_consistent() {
    let app = App::start(Arc::new(|conn, nth, _| {
        if conn == 0 && nth == 0 {
            reply(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 100\r\n\r\n\
                 5\r\nhello\r\n0\r\n\r\n",
            )
        } else {
            ok(&format!("conn={conn}"))
        }
    }))
    .await;
    let n = start_node(app.addr, vec![]).await;
    let mut c = Client::connect(n.addr).await;
    c.send(b"GET /both HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    let r = c
        .response()
        .await
        .unwrap_or_else(|e| panic!("no usable response: {e}"));
    match r.status {
        200 => {
            assert_eq!(r.text(), "hello");
            assert!(
                values(&r.head, "content-length").iter().all(|v| v == "5"),
                "{}",
                r.head
            );
        }
        502 => {}
        other => panic!("{other}: {}", r.head),
    }
    let mut c = Client::connect(n.addr).await;
    assert_eq!(c.get("/next").await.text(), "conn=1");
}

#[tokio::test]
async fn chunked_response_split_at_awkward_places_is_reassembled() {
    // Chunks of many sizes, the encoded body cut into writes in the middle
    // of size lines, extensions, data and CRLFs.
    let sizes = [1usize, 15, 16, 255, 4096, 16_384, 16_385, 70_000, 3];
    let mut payload = Vec::new();
    let mut wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for (i, n) in sizes.iter().enumerate() {
        let data: Vec<u8> = (0..*n).map(|j| ((i * 31 + j) % 256) as u8).collect();
        wire.extend_from_slice(format!("{n:X};i={i}\r\n").as_bytes());
        wire.extend_from_slice(&data);
        wire.extend_from_slice(b"\r\n");
        payload.extend_from_slice(&data);
    }
    wire.extend_from_slice(b"0\r\nx-t: 1\r\n\r\n");
    // Cut inside every size line, inside every chunk's data and between the
    // CR and LF after it.
    let mut cuts = Vec::new();
    let mut at = find(&wire, b"\r\n\r\n").expect("head end") + 4;
    for n in sizes {
        let line = find(&wire[at..], b"\r\n").expect("size line");
        cuts.push(at + 1);
        let data = at + line + 2;
        cuts.push(data + n / 2);
        cuts.push(data + n + 1);
        at = data + n + 2;
    }
    cuts.push(at + 1);
    cuts.push(wire.len() - 1);
    cuts.dedup();
    let mut parts = Vec::new();
    let mut from = 0;
    for c in cuts.into_iter().chain([wire.len()]) {
        if c > from {
            parts.push(wire[from..c].to_vec());
            from = c;
        }
    }
    let app = App::start(Arc::new(move |_, _, _| {
        Act::Reply(parts.clone(), After::Keep)
    }))
    .await;
    let n = start_node(app.addr, vec![]).await;
    let mut c = Client::connect(n.addr).await;
    for _ in 0..2 {
        let r = c.get("/pieces").await;
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.body.len(), payload.len());
        assert!(r.body == payload, "reassembled body differs");
    }
    assert_eq!(app.accepts(), 1);
}

#[tokio::test]
async fn client_gone_mid_response_closes_the_upstream_connection() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let app = App::start(Arc::new(move |conn, _, _| {
        if conn == 0 {
            Act::Gated(
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello".to_vec(),
                g.clone(),
                b"world".to_vec(),
            )
        } else {
            ok(&format!("conn={conn}"))
        }
    }))
    .await;
    let n = start_node(app.addr, vec![]).await;
    let mut c = Client::connect(n.addr).await;
    c.send(b"GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    let head = read_head(&mut c.s, &mut c.buf)
        .await
        .expect("read")
        .expect("head");
    assert_eq!(status_of(&head), Ok(200), "{head}");
    drop(c);
    // The node is done with that client connection (its task ended, the
    // half-read upstream response with it) before the app goes on.
    assert!(
        eventually(|| metrics(&n.node).contains("tandem_node_connections_active 0")).await,
        "client connection still active"
    );
    gate.notify_one();
    // The node closed the upstream connection rather than pooling it.
    assert!(
        eventually(|| app.closed_by_node.load(Ordering::SeqCst) == 1).await,
        "upstream connection left open"
    );
    // ...and the next client never sees the rest of that body.
    let mut c = Client::connect(n.addr).await;
    let r = c.get("/next").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.text(), "conn=1");
    assert_eq!(app.accepts(), 2);
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_502() {
    // Decoding the chunks and dropping the hop-by-hop header would hand the
    // client gzip bytes labelled as nothing.
    let app = App::start(Arc::new(|_, _, _| {
        reply("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    }))
    .await;
    let n = start_node(app.addr, vec![]).await;
    let r = Client::connect(n.addr).await.get("/gz").await;
    assert_eq!(r.status, 502, "{}", r.head);
}

#[tokio::test]
async fn app_silent_inside_a_body_for_the_response_timeout_cuts_the_response() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let app = App::start(Arc::new(move |_, _, _| {
        Act::Gated(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello".to_vec(),
            g.clone(),
            b"world".to_vec(),
        )
    }))
    .await;
    let mut c = cluster("app", &[app.addr]);
    c.response_timeout_ms = 300;
    let n = start_node_with(c, vec![]).await;
    let mut client = Client::connect(n.addr).await;
    client
        .send(b"GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    let started = std::time::Instant::now();
    let got = client.response().await;
    // The head and the first half came; then the node gave up on the app
    // and closed the client's connection: never a complete 10-byte body.
    let err = got.expect_err("a response cut short");
    assert!(err.contains("closed after 5 of 10"), "{err}");
    assert!(
        started.elapsed() < WAIT,
        "cut by the response timeout, not the test's"
    );
    gate.notify_waiters();
}

#[tokio::test]
async fn early_answer_of_an_app_that_stops_reading_reaches_the_client() {
    // An app that answers 413 after the head and closes without reading the
    // (large) body: the node's body write fails, the answer is there.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let app_addr = l.local_addr().expect("app addr");
    let app = tokio::spawn(async move {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let mut buf = Vec::new();
        if read_head(&mut s, &mut buf).await.ok().flatten().is_none() {
            return;
        }
        let _ = s
            .write_all(
                b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbig!",
            )
            .await;
        // Closed with the body unread: the kernel answers the node's next
        // segments with a reset.
    });
    let n = start_node(app_addr, vec![]).await;
    let mut client = Client::connect(n.addr).await;
    let size = 4 << 20;
    client
        .send(
            format!("POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: {size}\r\n\r\n")
                .as_bytes(),
        )
        .await;
    let (mut rd, mut wr) = client.s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..size / chunk.len() {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    while find(&got, b"big!").is_none() {
        match tokio::time::timeout_at(deadline, rd.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(k)) => got.extend_from_slice(&tmp[..k]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "client got {text:?}");
    assert!(text.ends_with("big!"), "client got {text:?}");
    writer.abort();
    app.abort();
}

/// The app's response head reaches an HTTP/1.1 client line by line, less
/// its hop-by-hop lines and those its `Connection` names, with the node's
/// own headers in place of any the app sent under the same names.
#[tokio::test]
async fn response_head_reaches_the_client_less_its_hop_by_hop_lines() {
    let app = App::start(Arc::new(|_, nth, _| {
        reply(if nth == 0 {
            "HTTP/1.1 200 OK\r\n\
             Server: app/1\r\n\
             X-Tandem-Node: spoofed\r\n\
             Connection: keep-alive\r\n\
             Keep-Alive: timeout=5\r\n\
             Proxy-Connection: keep-alive\r\n\
             Trailer: x-checksum\r\n\
             Upgrade: h2c\r\n\
             Set-Cookie: a=1\r\n\
             Set-Cookie: b=2\r\n\
             Date: Thu, 01 Jan 2026 00:00:00 GMT\r\n\
             Content-Length: 2\r\n\
             \r\n\
             ok"
        } else {
            "HTTP/1.1 200 OK\r\n\
             Connection: X-Secret, keep-alive\r\n\
             X-Secret: 1\r\n\
             X-Other: 2\r\n\
             Content-Length: 2\r\n\
             \r\n\
             ok"
        })
    }))
    .await;
    let n = start_node(app.addr, vec![]).await;
    let mut c = Client::connect(n.addr).await;

    let r = c.get("/a").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.text(), "ok");
    let h = &r.head;
    assert_eq!(one(h, "server"), "app/1");
    assert_eq!(values(h, "set-cookie"), ["a=1", "b=2"], "{h}");
    assert_eq!(one(h, "x-tandem-node"), "node-h1", "{h}");
    // The app's Date, and no second one from the node.
    assert_eq!(one(h, "date"), "Thu, 01 Jan 2026 00:00:00 GMT");
    assert_eq!(one(h, "content-length"), "2");
    for gone in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "trailer",
        "upgrade",
    ] {
        assert!(values(h, gone).is_empty(), "{gone} passed on:\n{h}");
    }

    // Connection names a header: it goes too; the others stay.
    let r = c.get("/b").await;
    assert_eq!(r.status, 200, "{}", r.head);
    let h = &r.head;
    assert!(values(h, "x-secret").is_empty(), "{h}");
    assert_eq!(one(h, "x-other"), "2");
    assert!(values(h, "connection").is_empty(), "{h}");
    // The node's Date, as the app sent none.
    assert_eq!(values(h, "date").len(), 1, "{h}");
    assert_eq!(app.accepts(), 1);
}

/// An h2 client (prior knowledge) gets the HTTP/1.1 app's headers from a
/// header map made of the lines: the same headers, none hop-by-hop (h2
/// forbids them), the node's name once.
#[tokio::test]
async fn h2_client_gets_the_h1_apps_headers() {
    use http_body_util::{BodyExt, Empty};
    let app = App::start(Arc::new(|_, _, _| {
        reply(
            "HTTP/1.1 200 OK\r\n\
             Server: app/1\r\n\
             X-Tandem-Node: spoofed\r\n\
             Connection: keep-alive, X-Secret\r\n\
             X-Secret: 1\r\n\
             Keep-Alive: timeout=5\r\n\
             Set-Cookie: a=1\r\n\
             Set-Cookie: b=2\r\n\
             Content-Length: 2\r\n\
             \r\n\
             ok",
        )
    }))
    .await;
    let n = start_node(app.addr, vec![]).await;
    let tcp = tokio::net::TcpStream::connect(n.addr)
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::get("http://app.test/h2")
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .expect("in time")
        .expect("h2 response");
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"ok");
    let all = |n: &str| -> Vec<String> {
        h.get_all(n)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    };
    assert_eq!(all("server"), ["app/1"]);
    assert_eq!(all("set-cookie"), ["a=1", "b=2"]);
    assert_eq!(all("x-tandem-node"), ["node-h1"]);
    for gone in ["connection", "keep-alive", "x-secret"] {
        assert!(all(gone).is_empty(), "{gone} passed on: {h:?}");
    }
}
