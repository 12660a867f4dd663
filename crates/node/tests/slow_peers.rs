//! Slow but steady peers across the listener's idle timeout, and request
//! bodies that fail by the client's doing on h2 upstream clusters. On the
//! wire: raw HTTP/1.1 clients on the node's plain listener (with small
//! socket buffers where the node must really block on writing), scripted
//! apps that record what they received, and the node's `/metrics` text.
//!
//! - a client reading a large answer slowly, with pauses shorter than the
//!   idle timeout, keeps its connection (progress re-arms the timer); one
//!   that stops reading is dropped mid-answer;
//! - a client uploading slowly (Content-Length or chunked), with pauses
//!   shorter than the idle timeout, gets its body through whole, to
//!   HTTP/1.1 and to h2 apps, also when the upload takes longer than the
//!   app's response timeout (the app's time to answer, not the client's);
//! - with an h2 (prior knowledge) app cluster, a stalled (408), malformed
//!   (400) or oversized (413) client body is answered as the client's
//!   fault: no 5xx, no ejection, the endpoints keep taking requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use control_api::pb::{ListenerSettings, OutlierDetection, UpstreamProtocol};
use control_api::{Cluster, Route, Snapshot};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use node::Node;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

mod support;
use support::*;

/// The listener's idle timeout in these tests.
const IDLE_MS: u32 = 400;
/// Pauses of the slow peers: well under the idle timeout.
const PAUSE: Duration = Duration::from_millis(100);

// ------------------------------------------------------------ node

fn listener_settings() -> ListenerSettings {
    ListenerSettings {
        idle_timeout_ms: IDLE_MS,
        ..Default::default()
    }
}

/// A node on a plain loopback listener. `sndbuf`: SO_SNDBUF of the
/// listening socket, which the accepted client sockets inherit (so the
/// node's writes to a client block once a little is in flight).
async fn start(snap: Snapshot, sndbuf: Option<u32>) -> Running {
    let sock = TcpSocket::new_v4().expect("socket");
    if let Some(n) = sndbuf {
        sock.set_send_buffer_size(n).expect("SO_SNDBUF");
    }
    sock.bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind node");
    let l = sock.listen(128).expect("listen");
    run_node(l, "node-slow", Duration::from_secs(1), &snap, false)
}

fn snapshot(clusters: Vec<Cluster>, routes: Vec<Route>, listener: ListenerSettings) -> Snapshot {
    Snapshot {
        version: 1,
        clusters,
        routes,
        listener: Some(listener),
        ..Default::default()
    }
}

/// A raw client whose socket has a small receive buffer.
async fn small_window_client(addr: SocketAddr, rcvbuf: u32) -> Client<TcpStream> {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    Client {
        s: sock.connect(addr).await.expect("connect to node"),
        buf: Vec::new(),
    }
}

// ------------------------------------------------------------ slow readers

/// Size of the big answer: many times what the node's write buffer (64
/// KiB) and both sockets' buffers (set small below) hold.
const BIG: usize = 4 << 20;
/// What the slow reader takes each time it reads.
const STEP: usize = 256 * 1024;
/// Socket buffers: the node's send buffer (via its listener) and the
/// client's receive buffer.
const SOCK_BUF: u32 = 32 * 1024;

fn big_body() -> Vec<u8> {
    (0..BIG).map(|i| (i % 251) as u8).collect()
}

/// An app answering `/big` with [`BIG`] bytes (Content-Length), anything
/// else with its path.
async fn big_app() -> App {
    App::start(Arc::new(|_, _, seen| {
        if seen.path() == "/big" {
            let mut r = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n").into_bytes();
            r.extend_from_slice(&big_body());
            reply(r)
        } else {
            echo(seen)
        }
    }))
    .await
}

async fn big_node(app: &App) -> Running {
    start(
        snapshot(
            vec![cluster("app", &[app.addr])],
            vec![route("all", "/", "app")],
            listener_settings(),
        ),
        Some(SOCK_BUF),
    )
    .await
}

/// Reads body bytes into `c.buf` until it holds `upto` (or the body ends).
async fn read_to(c: &mut Client<TcpStream>, upto: usize) -> Result<(), String> {
    while c.buf.len() < upto {
        if fill(&mut c.s, &mut c.buf).await? == 0 {
            return Err(format!("closed after {} body bytes", c.buf.len()));
        }
    }
    Ok(())
}

/// The big app, its node, and a small-window client that asked for the big
/// answer and read its head (a 200): the body is next on the connection.
async fn big_request() -> (App, Running, Client<TcpStream>, String) {
    let app = big_app().await;
    let n = big_node(&app).await;
    let mut c = small_window_client(n.addr, SOCK_BUF).await;
    c.send(b"GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    let head = read_head(&mut c.s, &mut c.buf)
        .await
        .expect("head")
        .expect("an answer");
    assert_eq!(status_of(&head), Ok(200), "{head}");
    (app, n, c, head)
}

#[tokio::test]
async fn a_slow_steady_reader_keeps_its_connection_across_idle_timeouts() {
    let (app, _n, mut c, head) = big_request().await;
    assert_eq!(one(&head, "content-length"), BIG.to_string());
    // STEP bytes, a pause shorter than the idle timeout, again: the whole
    // read spans several idle timeouts, with the node blocked on writing
    // through most of each pause (the answer is many times what the
    // buffers on the way hold: with the same setup, a client that stops
    // reading is dropped mid-answer, see the next test).
    let started = tokio::time::Instant::now();
    let mut upto = 0;
    while upto < BIG {
        upto = (upto + STEP).min(BIG);
        if let Err(e) = read_to(&mut c, upto).await {
            panic!("the node dropped a reader making progress: {e}");
        }
        if upto < BIG {
            tokio::time::sleep(PAUSE).await;
        }
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(u64::from(IDLE_MS) * 3),
        "the read did not span several idle timeouts: {took:?}"
    );
    let body: Vec<u8> = c.buf.drain(..BIG).collect();
    assert!(body == big_body(), "the body differs");
    assert!(c.buf.is_empty(), "bytes after the body: {}", c.buf.len());
    // The connection is still good for another request.
    let r = c.get("/second").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.text(), "path=/second");
    assert_eq!(app.paths(), ["/big", "/second"]);
    assert_eq!(app.accepts(), 1);
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_dropped_mid_answer() {
    let (app, _n, mut c, _head) = big_request().await;
    read_to(&mut c, STEP).await.expect("the start of the body");
    // Then nothing read for a good while (many idle timeouts): the node
    // must give up on the client by then. Reading again afterwards would
    // let a node that kept the connection send the rest.
    tokio::time::sleep(Duration::from_millis(u64::from(IDLE_MS) * 5)).await;
    let mut tmp = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, c.s.read(&mut tmp)).await {
            Err(_) => panic!(
                "still open {WAIT:?} after the reader came back, {} body bytes in",
                c.buf.len()
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => c.buf.extend_from_slice(&tmp[..n]),
        }
    }
    // What came is a prefix of the answer, and not all of it: the node cut
    // the connection while it still had most of the body to send.
    let got = c.buf.len();
    assert!(
        got < BIG,
        "the whole answer came: the node kept a client that read nothing for {} ms",
        IDLE_MS * 5
    );
    assert!(c.buf[..] == big_body()[..got], "the bytes that came differ");
    assert_eq!(app.paths(), ["/big"]);
}

// ------------------------------------------------------------ slow uploaders

/// Pieces of the slow uploads: 14 pauses of [`PAUSE`], about 1.5 s.
const PIECES: usize = 14;
const PIECE: usize = 8 * 1024;

fn upload_body(seed: u8) -> Vec<u8> {
    (0..PIECES * PIECE)
        .map(|i| (i % 253) as u8 ^ seed)
        .collect()
}

/// An app that reads the whole body and says how long it was.
async fn len_app() -> App {
    App::start(Arc::new(|_, _, seen| {
        ok(&format!("{} len={}", seen.path(), seen.payload().len()))
    }))
    .await
}

/// Sends a Content-Length body in [`PIECES`] pieces, [`PAUSE`] apart.
async fn upload_length(c: &mut Client<TcpStream>, path: &str, body: &[u8]) {
    c.send(
        format!(
            "POST {path} HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    for piece in body.chunks(PIECE) {
        tokio::time::sleep(PAUSE).await;
        c.send(piece).await;
    }
}

/// Sends a chunked body, one chunk per piece, each chunk's size line and
/// data split by a pause (a chunk cut anywhere must not matter).
async fn upload_chunked(c: &mut Client<TcpStream>, path: &str, body: &[u8]) {
    c.send(
        format!("POST {path} HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n")
            .as_bytes(),
    )
    .await;
    for piece in body.chunks(PIECE) {
        let (a, b) = piece.split_at(piece.len() / 3);
        let mut first = format!("{:x}\r\n", piece.len()).into_bytes();
        first.extend_from_slice(a);
        c.send(&first).await;
        tokio::time::sleep(PAUSE).await;
        let mut rest = b.to_vec();
        rest.extend_from_slice(b"\r\n");
        c.send(&rest).await;
    }
    tokio::time::sleep(PAUSE).await;
    c.send(b"0\r\n\r\n").await;
}

/// Two slow uploads at once, one with Content-Length and one chunked, to
/// `path`: both answered 200 by an app that counted the whole body.
/// Returns the bodies sent (the first has Content-Length).
async fn slow_uploads(addr: SocketAddr, path: &str) -> [Vec<u8>; 2] {
    let (a, b) = (upload_body(0), upload_body(0x5a));
    let started = tokio::time::Instant::now();
    let length = async {
        let mut c = Client::connect(addr).await;
        upload_length(&mut c, path, &a).await;
        c.response().await
    };
    let chunked = async {
        let mut c = Client::connect(addr).await;
        upload_chunked(&mut c, path, &b).await;
        c.response().await
    };
    let (ra, rb) = tokio::join!(length, chunked);
    assert!(
        started.elapsed() >= Duration::from_millis(u64::from(IDLE_MS) * 3),
        "the uploads did not span several idle timeouts"
    );
    for (r, body) in [(ra, &a), (rb, &b)] {
        let r = r.expect("an answer to a slow upload");
        assert_eq!(r.status, 200, "{}{}", r.head, r.text());
        assert!(
            r.text().ends_with(&format!(" len={}", body.len())),
            "{}",
            r.text()
        );
    }
    [a, b]
}

/// The bodies an HTTP/1.1 app got for two slow uploads are the ones sent.
fn app_got_both(app: &App, sent: [Vec<u8>; 2]) {
    let seen = app.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let mut got: Vec<Vec<u8>> = seen.iter().map(Seen::payload).collect();
    let mut sent = sent.to_vec();
    got.sort();
    sent.sort();
    assert!(got == sent, "the app got other bodies than were sent");
    assert!(
        seen.iter()
            .any(|s| values(&s.head, "transfer-encoding") == ["chunked"]),
        "the chunked upload was not streamed chunked"
    );
}

/// A node whose one cluster is `app`, with the given response timeout.
async fn upload_node(app: &App, response_timeout_ms: u32) -> Running {
    let mut c = cluster("app", &[app.addr]);
    c.response_timeout_ms = response_timeout_ms;
    start(
        snapshot(vec![c], vec![route("all", "/", "app")], listener_settings()),
        None,
    )
    .await
}

#[tokio::test]
async fn slow_steady_uploads_arrive_whole() {
    let app = len_app().await;
    // The uploads (about 1.5 s) end well within the app's response timeout.
    let n = upload_node(&app, 10_000).await;
    let sent = slow_uploads(n.addr, "/up").await;
    app_got_both(&app, sent);
}

/// The app's response timeout is the time it takes to answer, not the
/// client's: an upload that takes longer than it is no gateway timeout,
/// and no failure of the app (as Envoy's route timeout, which starts at
/// the end of the downstream request, or HAProxy's `timeout server`, an
/// inactivity timeout).
#[tokio::test]
async fn a_slow_upload_longer_than_the_response_timeout_is_not_blamed_on_the_app() {
    let app = len_app().await;
    let n = upload_node(&app, 800).await;
    let sent = slow_uploads(n.addr, "/long").await;
    app_got_both(&app, sent);
    let m = metrics(&n.node);
    assert_eq!(
        count(&m, "tandem_node_requests_total", &["code=\"5xx\""]),
        0.0
    );
}

// ------------------------------------------------------------ h2 upstreams

/// What an h2 app got: the path and the body, or how reading it failed.
type H2Log = Arc<Mutex<Vec<(String, Result<Vec<u8>, String>)>>>;

/// An h2c (prior knowledge) app named `name`: reads the whole body, then
/// answers `app=<name> len=<n>` (500 for `/fail`).
async fn h2_app(name: &'static str) -> (SocketAddr, H2Log, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    let log: H2Log = Arc::default();
    let app_log = log.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((s, _)) = l.accept().await {
            let log = app_log.clone();
            conns.spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().to_vec())
                            .map_err(|e| e.to_string());
                        let len = body.as_ref().map_or(0, Vec::len);
                        log.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((path.clone(), body));
                        let mut r =
                            Response::new(Full::new(Bytes::from(format!("app={name} len={len}"))));
                        if path == "/fail" {
                            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (a, log, task)
}

/// Two h2 apps behind one cluster, with passive ejection at the first
/// failure (so a request blamed on an app would take it out).
struct H2Setup {
    n: Running,
    logs: [H2Log; 2],
    tasks: Vec<tokio::task::JoinHandle<()>>,
    endpoints: [SocketAddr; 2],
}

impl Drop for H2Setup {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Request bodies above this get 413 (the listener's limit).
const BODY_LIMIT: u64 = 128 * 1024;

async fn h2_setup() -> H2Setup {
    let (a, log_a, ta) = h2_app("a").await;
    let (b, log_b, tb) = h2_app("b").await;
    let mut c = cluster("h2app", &[a, b]);
    c.upstream_protocol = UpstreamProtocol::H2 as i32;
    // The client's stall must be ended by the client-side idle timeout,
    // not by the app's response timeout.
    c.response_timeout_ms = 10_000;
    c.outlier_detection = Some(OutlierDetection {
        consecutive_failures: 1,
        ejection_ms: 60_000,
        max_ejection_percent: 50,
    });
    let listener = ListenerSettings {
        max_request_body_bytes: BODY_LIMIT,
        ..listener_settings()
    };
    let n = start(
        snapshot(vec![c], vec![route("all", "/", "h2app")], listener),
        None,
    )
    .await;
    H2Setup {
        n,
        logs: [log_a, log_b],
        tasks: vec![ta, tb],
        endpoints: [a, b],
    }
}

fn metrics(node: &Node) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &node.registry()).expect("encode");
    text
}

/// The sum of the samples of `name` whose labels include all of `labels`
/// (`key="value"` each); 0 when there is none.
fn count(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// The counters that would say the app failed.
#[derive(Debug, PartialEq)]
struct Blame {
    answers_5xx: f64,
    ejections: f64,
    connect_errors: f64,
    endpoints_down: f64,
}

impl H2Setup {
    fn blame(&self) -> Blame {
        let m = metrics(&self.n.node);
        // Absent counters read as 0: the ones that only appear on first
        // use are checked by `h2_upstream_app_failure_is_counted_and_ejects`.
        assert!(
            m.contains("\ntandem_node_upstream_connect_errors_total "),
            "{m}"
        );
        let cluster = "cluster=\"h2app\"";
        Blame {
            answers_5xx: count(&m, "tandem_node_requests_total", &[cluster, "code=\"5xx\""]),
            ejections: count(&m, "tandem_node_upstream_ejections_total", &[cluster]),
            connect_errors: count(&m, "tandem_node_upstream_connect_errors_total", &[]),
            endpoints_down: self
                .endpoints
                .iter()
                .map(|e| {
                    let ep = format!("endpoint=\"{e}\"");
                    1.0 - count(&m, "tandem_node_upstream_endpoint_up", &[cluster, &ep])
                })
                .sum(),
        }
    }

    fn answers_4xx(&self) -> f64 {
        count(
            &metrics(&self.n.node),
            "tandem_node_requests_total",
            &["cluster=\"h2app\"", "code=\"4xx\""],
        )
    }

    /// Everything the apps got for `path`.
    fn got(&self, path: &str) -> Vec<Result<Vec<u8>, String>> {
        self.logs
            .iter()
            .flat_map(|l| {
                l.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .filter(|(p, _)| p == path)
                    .map(|(_, r)| r.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Two plain requests after the fault: both answered, one by each app
    /// (round robin: an ejected app would leave the other with both).
    async fn both_apps_still_serve(&self) {
        let mut names = Vec::new();
        for i in 0..2 {
            let mut c = Client::connect(self.n.addr).await;
            let r = c.get(&format!("/after{i}")).await;
            assert_eq!(r.status, 200, "{} {}", r.head, r.text());
            names.push(r.text());
        }
        names.sort();
        assert_eq!(names, ["app=a len=0", "app=b len=0"]);
    }

    /// The answer to a faulty request, then the check that nothing blamed
    /// the apps: no 5xx, no ejection, no endpoint down, and both still
    /// serve.
    async fn client_fault(&self, request: &[u8], status: u16, text: &str) {
        let before = self.blame();
        assert_eq!(
            before,
            Blame {
                answers_5xx: 0.0,
                ejections: 0.0,
                connect_errors: 0.0,
                endpoints_down: 0.0
            }
        );
        let mut c = Client::connect(self.n.addr).await;
        c.send(request).await;
        let r = c.response().await.unwrap_or_else(|e| {
            panic!(
                "no answer to a client-fault body ({e}); the app's response timeout \
                 is 10 s: the node did not notice the client's fault"
            )
        });
        assert_eq!(r.status, status, "{}{}", r.head, r.text());
        assert_eq!(r.text(), text);
        // The rest of the body is not read: the connection ends.
        assert_eq!(one(&r.head, "connection"), "close", "{}", r.head);
        c.closed_quietly().await;
        assert_eq!(
            self.blame(),
            before,
            "the client's fault counted against the app"
        );
        assert_eq!(self.answers_4xx(), 1.0);
        self.both_apps_still_serve().await;
        assert_eq!(self.blame(), before);
    }
}

#[tokio::test]
async fn h2_upstream_client_body_stalled_past_the_idle_timeout_is_408() {
    let s = h2_setup().await;
    let mut req =
        b"POST /stall HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n\r\n".to_vec();
    req.extend_from_slice(&[b'x'; 100]);
    s.client_fault(&req, 408, "request body timeout\n").await;
    // The app never got a complete body.
    let got = s.got("/stall");
    assert!(got.iter().all(Result::is_err), "{got:?}");
}

#[tokio::test]
async fn h2_upstream_client_body_badly_chunked_is_400() {
    let s = h2_setup().await;
    s.client_fault(
        b"POST /bad HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\nzz\r\nnot a chunk\r\n0\r\n\r\n",
        400,
        "bad request body\n",
    )
    .await;
    let got = s.got("/bad");
    assert!(got.iter().all(Result::is_err), "{got:?}");
}

#[tokio::test]
async fn h2_upstream_declared_body_over_the_limit_is_413() {
    let s = h2_setup().await;
    let mut req = format!(
        "POST /big HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n\r\n",
        BODY_LIMIT + 1
    )
    .into_bytes();
    req.extend_from_slice(&[b'y'; 512]);
    s.client_fault(&req, 413, "request body too large\n").await;
    // Refused before anything went to an app.
    assert!(s.got("/big").is_empty());
}

#[tokio::test]
async fn h2_upstream_streamed_body_over_the_limit_is_413() {
    let s = h2_setup().await;
    let mut req =
        b"POST /big HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    // 5 chunks of 32 KiB: the fifth crosses the limit.
    for _ in 0..5 {
        req.extend_from_slice(b"8000\r\n");
        req.extend_from_slice(&[b'z'; 32 * 1024]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    s.client_fault(&req, 413, "request body too large\n").await;
    let got = s.got("/big");
    assert!(got.iter().all(Result::is_err), "{got:?}");
}

/// The control for the tests above: an app's own failure does move the
/// counters they watch (so their staying put means something).
#[tokio::test]
async fn h2_upstream_app_failure_is_counted_and_ejects() {
    let s = h2_setup().await;
    let mut c = Client::connect(s.n.addr).await;
    let r = c.get("/fail").await;
    assert_eq!(r.status, 500, "{}", r.head);
    let blame = s.blame();
    assert_eq!(blame.answers_5xx, 1.0, "{blame:?}");
    assert_eq!(blame.ejections, 1.0, "{blame:?}");
    assert_eq!(blame.endpoints_down, 1.0, "{blame:?}");
    // The other app takes everything now.
    let mut names = Vec::new();
    for i in 0..2 {
        let r = c.get(&format!("/after{i}")).await;
        assert_eq!(r.status, 200, "{}", r.head);
        names.push(r.text());
    }
    assert_eq!(names[0], names[1], "an ejected app still got requests");
}

/// The h2 twin of [`slow_steady_uploads_arrive_whole`]: the body goes to
/// the app from another task than the client connection's.
#[tokio::test]
async fn h2_upstream_slow_steady_uploads_arrive_whole() {
    let s = h2_setup().await;
    let sent = slow_uploads(s.n.addr, "/up").await;
    let mut got: Vec<Vec<u8>> = s
        .got("/up")
        .into_iter()
        .map(|r| r.expect("the app read the whole body"))
        .collect();
    let mut sent = sent.to_vec();
    got.sort();
    sent.sort();
    assert!(got == sent, "the app got other bodies than were sent");
    let blame = s.blame();
    assert_eq!(blame.answers_5xx, 0.0, "{blame:?}");
}
