//! Shared by the node's tests (`server_h1.rs`, `upstream_h1.rs`,
//! `slow_peers.rs`, `depth.rs`, `e2e.rs`): raw HTTP/1.1 reading on the client side
//! (heads, bodies by their framing, strict dechunking), scripted raw apps
//! that record the exact bytes they receive, a raw client connection to the
//! node, the test certificate, a TLS client and config pieces, and a node
//! on a loopback listener that stops when dropped (`run_node`). `e2e.rs`
//! uses the certificate, TLS and node pieces.
//!
//! Each test crate uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control_api::{Cluster, Endpoint, LbPolicy, Route};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

pub const WAIT: Duration = Duration::from_secs(5);

// ------------------------------------------------------------ wire helpers

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Values of header `name` (case-insensitive) in a message head, in order.
pub fn values(head: &str, name: &str) -> Vec<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// The single value of header `name`; panics (with the head) when it is
/// missing or repeated.
pub fn one(head: &str, name: &str) -> String {
    let v = values(head, name);
    assert_eq!(v.len(), 1, "exactly one {name} expected in:\n{head}");
    v[0].clone()
}

/// A complete chunked body at the front of `buf`: bytes consumed, the
/// payload, the trailer lines. `Ok(None)`: incomplete. Strict: hex sizes,
/// CRLF after every chunk's data.
pub type Dechunked = (usize, Vec<u8>, Vec<String>);

pub fn dechunk(buf: &[u8]) -> Result<Option<Dechunked>, String> {
    let mut pos = 0;
    let mut out = Vec::new();
    loop {
        let Some(eol) = find(&buf[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = &buf[pos..pos + eol];
        let size = line.split(|b| *b == b';').next().unwrap_or_default();
        if size.is_empty() || !size.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!(
                "bad chunk size line {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        let size = usize::from_str_radix(std::str::from_utf8(size).unwrap_or("x"), 16)
            .map_err(|e| format!("chunk size: {e}"))?;
        pos += eol + 2;
        if size == 0 {
            let mut trailers = Vec::new();
            loop {
                let Some(eol) = find(&buf[pos..], b"\r\n") else {
                    return Ok(None);
                };
                let l = &buf[pos..pos + eol];
                pos += eol + 2;
                if l.is_empty() {
                    return Ok(Some((pos, out, trailers)));
                }
                trailers.push(String::from_utf8_lossy(l).into_owned());
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&buf[pos..pos + size]);
        pos += size;
        if &buf[pos..pos + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        pos += 2;
    }
}

/// Reads more bytes into `buf` (bounded by [`WAIT`]); `Ok(0)` at EOF.
pub async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Result<usize, String> {
    let mut tmp = [0u8; 16 * 1024];
    match tokio::time::timeout(WAIT, s.read(&mut tmp)).await {
        Err(_) => Err("read timed out".into()),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Ok(Ok(n)) => {
            buf.extend_from_slice(&tmp[..n]);
            Ok(n)
        }
    }
}

/// Takes a message head (through the blank line) off the front of `buf`.
/// `Ok(None)`: the peer closed before sending a byte of it.
pub async fn read_head<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Option<String>, String> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        if buf.len() > 1 << 20 {
            return Err("head over 1 MiB".into());
        }
        if fill(s, buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(format!(
                    "closed inside a head: {:?}",
                    String::from_utf8_lossy(buf)
                ))
            };
        }
    }
}

/// How a message head says its body is framed.
#[derive(Debug, PartialEq)]
pub enum BodyKind {
    Length(usize),
    Chunked,
    /// Until EOF (responses only).
    Close,
    None,
}

pub fn body_kind(head: &str, response: bool) -> Result<BodyKind, String> {
    let te = values(head, "transfer-encoding");
    if te
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        return Ok(BodyKind::Chunked);
    }
    match values(head, "content-length").as_slice() {
        [] if response => Ok(BodyKind::Close),
        [] => Ok(BodyKind::None),
        [v] => v
            .parse()
            .map(BodyKind::Length)
            .map_err(|e| format!("content-length {v:?}: {e}")),
        many => Err(format!("several content-lengths: {many:?}")),
    }
}

/// Reads a body framed as `kind`: (bytes as on the wire, payload).
pub async fn read_body<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    kind: BodyKind,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    match kind {
        BodyKind::None => Ok((Vec::new(), Vec::new())),
        BodyKind::Length(n) => {
            while buf.len() < n {
                if fill(s, buf).await? == 0 {
                    return Err(format!("closed after {} of {n} body bytes", buf.len()));
                }
            }
            let raw: Vec<u8> = buf.drain(..n).collect();
            Ok((raw.clone(), raw))
        }
        BodyKind::Chunked => loop {
            if let Some((used, payload, _)) = dechunk(buf)? {
                let raw: Vec<u8> = buf.drain(..used).collect();
                return Ok((raw, payload));
            }
            if fill(s, buf).await? == 0 {
                return Err("closed inside a chunked body".into());
            }
        },
        BodyKind::Close => {
            while fill(s, buf).await? > 0 {}
            let raw = std::mem::take(buf);
            Ok((raw.clone(), raw))
        }
    }
}

/// Reads until the peer closes (EOF or reset) and returns what came, or
/// fails when the connection is still open after [`WAIT`].
pub async fn until_closed<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    let mut tmp = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut tmp)).await {
            Err(_) => {
                return Err(format!(
                    "still open after {WAIT:?}; got {:?}",
                    String::from_utf8_lossy(buf)
                ));
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

// ------------------------------------------------------------ scripted apps

/// A request as an app received it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Which accepted connection (0-based) carried it.
    pub conn: usize,
    /// The head, byte for byte (through the blank line).
    pub head: String,
    /// The body bytes as they came (chunk framing included).
    pub raw_body: Vec<u8>,
}

impl Seen {
    pub fn request_line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or_default()
    }

    pub fn path(&self) -> &str {
        self.request_line().split(' ').nth(1).unwrap_or_default()
    }

    /// The body payload (dechunked when the head says chunked).
    pub fn payload(&self) -> Vec<u8> {
        match body_kind(&self.head, false) {
            Ok(BodyKind::Chunked) => match dechunk(&self.raw_body) {
                Ok(Some((_, p, _))) => p,
                other => panic!("app got a bad chunked body: {other:?}"),
            },
            _ => self.raw_body.clone(),
        }
    }
}

/// What happens after a reply was written.
pub enum After {
    Keep,
    Close,
    CloseIn(Duration),
}

/// What an app does with a request.
pub enum Act {
    /// Writes the parts (20 ms apart), then `After`.
    Reply(Vec<Vec<u8>>, After),
    /// Closes the connection without answering.
    Hangup,
    /// Writes the first part, waits for the gate, writes the second.
    Gated(Vec<u8>, Arc<tokio::sync::Notify>, Vec<u8>),
}

/// `(connection index, request index on that connection, request)`.
pub type Script = Arc<dyn Fn(usize, usize, &Seen) -> Act + Send + Sync>;

pub fn reply(bytes: impl Into<Vec<u8>>) -> Act {
    Act::Reply(vec![bytes.into()], After::Keep)
}

/// A 200 with a Content-Length body.
pub fn ok(body: &str) -> Act {
    reply(format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ))
}

/// Answers `path=<path>` (Content-Length; to HEAD, the head alone).
pub fn echo_path() -> Script {
    Arc::new(|_, _, seen| echo(seen))
}

pub fn echo(seen: &Seen) -> Act {
    let body = format!("path={}", seen.path());
    if seen.request_line().starts_with("HEAD ") {
        reply(format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            body.len()
        ))
    } else {
        ok(&body)
    }
}

pub struct App {
    pub addr: SocketAddr,
    pub accepts: Arc<AtomicUsize>,
    /// Connections the node closed (EOF between requests).
    pub closed_by_node: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Requests the app could not read whole (malformed, or cut short).
    pub errors: Arc<Mutex<Vec<String>>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet: every connection task
        // ends with it.
        self.task.abort();
    }
}

impl App {
    pub async fn start(script: Script) -> App {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let addr = l.local_addr().expect("app addr");
        let accepts = Arc::new(AtomicUsize::new(0));
        let closed_by_node = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (acc, closed, log, errs) = (
            accepts.clone(),
            closed_by_node.clone(),
            seen.clone(),
            errors.clone(),
        );
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((s, _)) = l.accept().await {
                let conn = acc.fetch_add(1, Ordering::SeqCst);
                conns.spawn(serve_conn(
                    s,
                    conn,
                    script.clone(),
                    log.clone(),
                    closed.clone(),
                    errs.clone(),
                ));
            }
        });
        App {
            addr,
            accepts,
            closed_by_node,
            seen,
            errors,
            task,
        }
    }

    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// What the app received; panics if any request was malformed or cut
    /// short.
    pub fn seen(&self) -> Vec<Seen> {
        let errors = self.errors();
        assert!(errors.is_empty(), "the app got bad requests: {errors:?}");
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn paths(&self) -> Vec<String> {
        self.seen().iter().map(|s| s.path().to_string()).collect()
    }
}

pub async fn serve_conn(
    mut s: TcpStream,
    conn: usize,
    script: Script,
    log: Arc<Mutex<Vec<Seen>>>,
    closed: Arc<AtomicUsize>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    let fail = |e: String| errors.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    let mut buf = Vec::new();
    for nth in 0.. {
        let head = match read_head(&mut s, &mut buf).await {
            Ok(Some(h)) => h,
            Ok(None) => {
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Err(e) => return fail(format!("connection {conn}: {e}")),
        };
        let kind = match body_kind(&head, false) {
            Ok(k) => k,
            Err(e) => return fail(format!("{head}: {e}")),
        };
        let raw_body = match read_body(&mut s, &mut buf, kind).await {
            Ok((raw, _)) => raw,
            Err(e) => return fail(format!("{}: {e}", head.lines().next().unwrap_or(""))),
        };
        let seen = Seen {
            conn,
            head,
            raw_body,
        };
        let act = script(conn, nth, &seen);
        log.lock().unwrap_or_else(|p| p.into_inner()).push(seen);
        match act {
            Act::Hangup => return,
            Act::Gated(first, gate, rest) => {
                if s.write_all(&first).await.is_err() {
                    return;
                }
                gate.notified().await;
                if s.write_all(&rest).await.is_err() {
                    return;
                }
            }
            Act::Reply(parts, after) => {
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    // The node may hang up on a bad reply: not this side's
                    // business.
                    if s.write_all(p).await.is_err() {
                        return;
                    }
                }
                match after {
                    After::Keep => {}
                    After::Close => return,
                    After::CloseIn(d) => {
                        tokio::time::sleep(d).await;
                        return;
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------ the client side

/// A response as the client read it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub head: String,
    /// The body as on the wire (chunk framing included).
    pub raw: Vec<u8>,
    /// The payload.
    pub body: Vec<u8>,
    /// 1xx heads before it.
    pub interim: Vec<u16>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn status_of(head: &str) -> Result<u16, String> {
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))
}

/// A raw client connection to the node.
pub struct Client<S> {
    pub s: S,
    pub buf: Vec<u8>,
}

impl Client<TcpStream> {
    pub async fn connect(addr: SocketAddr) -> Self {
        Client {
            s: TcpStream::connect(addr).await.expect("connect to node"),
            buf: Vec::new(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write request");
        self.s.flush().await.expect("flush");
    }

    /// The next final response (1xx heads are collected on the way);
    /// `head_request`: it answers a HEAD (no body whatever it says).
    pub async fn response_to(&mut self, head_request: bool) -> Result<Resp, String> {
        let mut interim = Vec::new();
        loop {
            let head = read_head(&mut self.s, &mut self.buf)
                .await?
                .ok_or("closed before a response")?;
            let status = status_of(&head)?;
            if (100..200).contains(&status) && status != 101 {
                interim.push(status);
                continue;
            }
            let kind = if head_request || status == 204 || status == 304 {
                BodyKind::None
            } else {
                body_kind(&head, true)?
            };
            let (raw, body) = read_body(&mut self.s, &mut self.buf, kind).await?;
            return Ok(Resp {
                status,
                head,
                raw,
                body,
                interim,
            });
        }
    }

    pub async fn response(&mut self) -> Result<Resp, String> {
        self.response_to(false).await
    }

    pub async fn request(&mut self, bytes: &[u8]) -> Resp {
        self.send(bytes).await;
        self.response().await.expect("response")
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        self.request(format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes())
            .await
    }

    /// The node closes the connection with nothing more sent.
    pub async fn closed_quietly(&mut self) {
        until_closed(&mut self.s, &mut self.buf)
            .await
            .expect("the node closes the connection");
        assert!(
            self.buf.is_empty(),
            "bytes after the last answer: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }
}

/// Polls `f` every 20 ms until it holds or [`WAIT`] passes.
pub async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

// ------------------------------------------------------------ config

/// A self-signed certificate for `localhost`.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

pub fn test_cert() -> TestCert {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    TestCert {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
        der: ck.cert.der().clone(),
    }
}

/// The value of `key=value` in a line of an app's text answer.
pub fn line<'a>(body: &'a str, key: &str) -> &'a str {
    body.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or("<missing>")
}

/// The node's certificate resource for `cert` (default, SNI `localhost`).
pub fn certificate(cert: &TestCert) -> control_api::Certificate {
    control_api::Certificate {
        name: "localhost".into(),
        sni_names: vec!["localhost".into()],
        cert_chain_pem: cert.cert_pem.clone(),
        private_key_pem: cert.key_pem.clone(),
        default: true,
        private_key_fingerprint: String::new(),
    }
}

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A rustls client that trusts `cert` and offers `alpn`; with
/// `client_auth` (leaf, its CA) it presents the leaf (mTLS).
pub fn client_config(
    cert: &TestCert,
    alpn: &[&[u8]],
    client_auth: Option<(&TestCert, &TestCert)>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).expect("root");
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let mut cfg = match client_auth {
        None => b.with_no_client_auth(),
        Some((leaf, _ca)) => {
            let key = rustls_pki_types::PrivateKeyDer::try_from(
                rustls_pki_types::pem::PemObject::from_pem_slice(leaf.key_pem.as_bytes())
                    .map(|k: rustls_pki_types::PrivateKeyDer<'static>| k.secret_der().to_vec())
                    .expect("key pem"),
            )
            .expect("key");
            b.with_client_auth_cert(vec![leaf.der.clone()], key)
                .expect("client cert")
        }
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

/// TLS to the node as `localhost` with `cfg`, after `preface` (a PROXY
/// header, say) in the clear.
pub async fn tls_connect_with(
    addr: SocketAddr,
    preface: Option<&[u8]>,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<Tls> {
    let mut tcp = TcpStream::connect(addr).await?;
    if let Some(p) = preface {
        tcp.write_all(p).await?;
    }
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// [`tls_connect_with`] a client that trusts `cert` and offers `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    preface: Option<&[u8]>,
    alpn: &[&[u8]],
    cert: &TestCert,
) -> std::io::Result<Tls> {
    tls_connect_with(addr, preface, Arc::new(client_config(cert, alpn, None))).await
}

/// A round-robin cluster: connect timeout 500 ms, response timeout 4 s.
pub fn cluster(name: &str, endpoints: &[SocketAddr]) -> Cluster {
    Cluster {
        name: name.into(),
        endpoints: endpoints
            .iter()
            .map(|a| Endpoint {
                address: a.to_string(),
                weight: 1,
            })
            .collect(),
        lb_policy: LbPolicy::RoundRobin as i32,
        connect_timeout_ms: 500,
        response_timeout_ms: 4000,
        ..Default::default()
    }
}

/// A route for any host.
pub fn route(name: &str, prefix: &str, cluster: &str) -> Route {
    host_route(name, "", prefix, cluster)
}

pub fn host_route(name: &str, host: &str, prefix: &str, cluster: &str) -> Route {
    Route {
        name: name.into(),
        host: host.into(),
        path_prefix: prefix.into(),
        cluster: cluster.into(),
        ..Default::default()
    }
}

// ------------------------------------------------------------ the node

/// A node serving one loopback listener; dropping it stops the node.
pub struct Running {
    pub node: Arc<node::Node>,
    pub addr: SocketAddr,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts a node named `id` (no PROXY protocol, drain timeout `drain`) with
/// `snap` on `l`: TLS when `tls`, else plain HTTP.
pub fn run_node(
    l: TcpListener,
    id: &str,
    drain: Duration,
    snap: &control_api::Snapshot,
    tls: bool,
) -> Running {
    let addr = l.local_addr().expect("node addr");
    let mut cfg = node::NodeConfig::new(id, addr);
    cfg.proxy_protocol = node::ProxyProtocolMode::Off;
    cfg.drain_timeout = drain;
    let node = node::Node::new(cfg);
    node.apply(snap).expect("apply");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = if tls {
        tokio::spawn(node.clone().serve(l, shutdown.clone()))
    } else {
        tokio::spawn(node.clone().serve_plain(l, shutdown.clone()))
    };
    Running {
        node,
        addr,
        shutdown,
        task,
    }
}

/// A loopback listener on a free port.
pub async fn loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind node")
}
