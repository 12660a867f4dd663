//! Tandem's L7 node.
//!
//! A node accepts TCP connections (usually relayed by a director, which opens
//! each with a PROXY v2 header carrying the real client address), terminates
//! TLS with rustls (certificate chosen by SNI), routes HTTP requests by host
//! and path to an application cluster and proxies them (HTTP/1.1 clients
//! are served by the node's own server, `h1_server`, h2 clients by hyper's;
//! HTTP/1.1 apps are reached with the node's own client, `h1_client`, h2
//! apps with hyper's; the HTTP/1.1 protocol rules of both are in the sans-IO
//! `h1_codec` crate), telling the application who the client is (X-Forwarded-For, or a PROXY v2 header on the
//! upstream connection when the cluster asks for it).
//!
//! A request passes these stages, one module each: [`listener`] (accept,
//! PROXY header, TLS, HTTP/1.1 or h2), [`router`] (host and path to a
//! cluster), [`cluster`] (endpoint choice), [`forward`] (the upstream request
//! and the response). [`tls`] resolves certificates, [`metrics`] counts.
//!
//! Configuration comes from the control service's watch stream
//! ([`Node::apply`]) and is swapped atomically: new connections and requests
//! see the new config, open connections keep their TLS session.
//!
//! ## Limits and request hygiene
//!
//! Listener limits come from the snapshot's `ListenerSettings` (defaults in
//! [`limits`]): header bytes and count (431), body size (413, per listener
//! or per cluster, on declared and on streamed bodies), h2 concurrent
//! streams, open connections (closed at accept beyond the limit), request
//! head read timeout (slowloris), idle timeout (between requests, and for a
//! client that leaves its answer unread) and TLS handshake timeout.
//!
//! Request smuggling shapes on HTTP/1.1, as a client sees them on the wire
//! (tested with a raw TLS socket in `tests/depth.rs`):
//! - two different `Content-Length` values, a `Transfer-Encoding` other
//!   than a lone `chunked` (`gzip`, `xchunked`, `chunked, chunked`),
//!   `Transfer-Encoding` on HTTP/1.0, more than one `Host`, no `Host` on
//!   HTTP/1.1: `400` from `h1_codec::parse_request`, connection closed; the
//!   request never reaches the router.
//! - `Content-Length` *and* `Transfer-Encoding: chunked`: as HAProxy does
//!   (RFC 9112 §6.1 allows it), `Content-Length` is dropped, the body is
//!   read as chunked and the connection closes after the answer
//!   (`connection: close`), so bytes past the chunked body are never read
//!   as a request. The upstream gets the re-framed body, never both
//!   headers. A request that still shows both (h2 cannot carry
//!   `Transfer-Encoding` at all) is refused with 400.
//! - A body refused part-way with 413 closes the h1 connection.
//!
//! ## Upstream timeouts
//!
//! Per cluster: `connect_timeout_ms` (a failed connect is retried on another
//! endpoint), `response_timeout_ms` (request sent, or its streamed body
//! ended, to response head: 504; for HTTP/1.1 apps also the longest silence
//! inside a response body, past which the client's response is cut),
//! `idle_timeout_ms` (pooled connections). A client body that fails is the
//! client's: 413 over the limit, 408 stalled, 400 malformed, with the app
//! not counted as failed, for HTTP/1.1 and h2 apps alike.
//! Responses from HTTP/1.1 apps are checked on the way (RFC 9112): a bad
//! status line, conflicting lengths, a head over 64 KiB, a transfer coding
//! other than `chunked` or an unasked 101 give 502.
//!
//! ## Drain
//!
//! On shutdown the listener stops accepting; readiness goes false; h2
//! connections get GOAWAY and finish their streams; h1 responses still in
//! flight carry `Connection: close`; after `drain_timeout` what is left is
//! cut.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod forward;
mod h1_client;
mod h1_server;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod proxy_accept;
pub mod router;
mod stop;
pub mod tickets;
pub mod tls;
mod upstream;

pub(crate) use ::proxy_protocol as pp;

/// aHash: these maps are looked up per request or per handshake.
type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use control_api::Snapshot;
use observe::Readiness;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use proxy_accept::{AcceptError, Rewind};

/// Whether the traffic listener accepts a PROXY header before TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyProtocolMode {
    /// Never read one: the first byte belongs to TLS.
    Off,
    /// Read one if a trusted peer sends it; connections without one are
    /// served with the socket peer as the client.
    #[default]
    Optional,
    /// Every connection must open with one (from a trusted peer).
    Required,
}

/// How a node runs; the rest of its config comes from control.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Stable id, e.g. "node-2"; also sent as response header `x-tandem-node`.
    pub id: String,
    /// TLS listener.
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz` via `observe::serve_admin`.
    pub admin_listen: Option<SocketAddr>,
    /// Default [`ProxyProtocolMode::Optional`].
    pub proxy_protocol: ProxyProtocolMode,
    /// CIDRs allowed to send a PROXY header; default 127.0.0.0/8 and ::1/128.
    pub trusted_proxies: Vec<(IpAddr, u8)>,
    /// How long in-flight connections may take to finish at shutdown; default 30 s.
    pub drain_timeout: Duration,
}

impl NodeConfig {
    /// A config with the defaults for everything but the id and listener.
    pub fn new(id: impl Into<String>, listen: SocketAddr) -> Self {
        NodeConfig {
            id: id.into(),
            listen,
            admin_listen: None,
            proxy_protocol: ProxyProtocolMode::Optional,
            trusted_proxies: default_trusted_proxies(),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// 127.0.0.0/8 and ::1/128.
pub fn default_trusted_proxies() -> Vec<(IpAddr, u8)> {
    vec![
        (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
        (IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
    ]
}

/// Whether `ip` lies in `net/len` (IPv4-mapped IPv6 addresses count as IPv4).
pub fn cidr_contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    match (net.to_canonical(), ip.to_canonical()) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let len = u32::from(len.min(32));
            if len == 0 {
                return true;
            }
            let mask = u32::MAX << (32 - len);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let len = u32::from(len.min(128));
            if len == 0 {
                return true;
            }
            let mask = u128::MAX << (128 - len);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Errors of [`run`].
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot bind {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The compiled form of one snapshot: what requests and handshakes use.
pub(crate) struct Runtime {
    pub version: u64,
    /// `None` until a snapshot with a certificate arrives: handshakes fail.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub router: router::Router,
    /// Each route's `requests_total` series, by [`forward::route_key`].
    pub route_series: HashMap<usize, Arc<metrics::RouteSeries>>,
    pub clusters: HashMap<String, Arc<cluster::Cluster>>,
    pub limits: limits::Limits,
    /// The HTTP server for new connections, built for `limits`.
    pub http: Arc<limits::Http>,
}

impl Runtime {
    fn empty() -> Self {
        let limits = limits::Limits::default();
        Runtime {
            version: 0,
            tls: None,
            router: router::Router::default(),
            route_series: HashMap::default(),
            clusters: HashMap::default(),
            http: Arc::new(limits.http()),
            limits,
        }
    }
}

/// An L7 node. Create with [`Node::new`], feed it snapshots with
/// [`Node::apply`], run it with [`Node::serve`].
pub struct Node {
    pub(crate) config: NodeConfig,
    pub(crate) runtime: ArcSwap<Runtime>,
    pub(crate) metrics: metrics::Metrics,
    registry: Arc<Registry>,
    readiness: Readiness,
    has_certs: AtomicBool,
    /// Control marked this node draining or disabled.
    drained_by_control: AtomicBool,
    shutting_down: AtomicBool,
    tls_shared: tls::Shared,
    pub(crate) clients: upstream::ClientCache,
    /// Health of every cluster endpoint, across snapshots.
    pub(crate) endpoints: Arc<cluster::EndpointRegistry>,
    checker: health::Checker,
    health_rx: tokio::sync::watch::Receiver<health::HealthMap>,
    health_follower: std::sync::Once,
    /// Client connections open (for `max_connections`).
    pub(crate) open_connections: AtomicUsize,
    /// Random per process: makes request and connection ids unique.
    pub(crate) instance: u64,
    pub(crate) node_header: http::HeaderValue,
    next_conn_id: AtomicU64,
    next_request_id: AtomicU64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.config.id)
            .field("version", &self.runtime.load().version)
            .finish_non_exhaustive()
    }
}

impl Node {
    pub fn new(config: NodeConfig) -> Arc<Node> {
        let mut registry = Registry::default();
        let endpoints = Arc::new(cluster::EndpointRegistry::default());
        let metrics = metrics::Metrics::register(&mut registry, endpoints.clone());
        let (checker, health_rx) = health::Checker::new(CancellationToken::new());
        let instance = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let node_header = http::HeaderValue::from_str(&config.id)
            .unwrap_or_else(|_| http::HeaderValue::from_static("invalid-node-id"));
        Arc::new(Node {
            config,
            runtime: ArcSwap::from_pointee(Runtime::empty()),
            metrics,
            registry: Arc::new(registry),
            readiness: Readiness::default(),
            has_certs: AtomicBool::new(false),
            drained_by_control: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            tls_shared: tls::Shared::new(),
            clients: upstream::ClientCache::default(),
            endpoints,
            checker,
            health_rx,
            health_follower: std::sync::Once::new(),
            open_connections: AtomicUsize::new(0),
            instance,
            node_header,
            next_conn_id: AtomicU64::new(1),
            next_request_id: AtomicU64::new(1),
        })
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The version of the snapshot in use (0 before the first).
    pub fn config_version(&self) -> u64 {
        self.runtime.load().version
    }

    /// Compiles a snapshot into the node's runtime config (router, clusters,
    /// certificate resolver) and swaps it in atomically. `Err(message)` if the
    /// snapshot cannot be used (e.g. a certificate that does not parse); the
    /// previous config stays.
    pub fn apply(&self, snapshot: &Snapshot) -> Result<(), String> {
        let tls_settings = snapshot.tls.clone().unwrap_or_default();
        let ticket_keys = tickets::SharedTicketer::compile(&tls_settings)?;
        let tls = if snapshot.certificates.is_empty() {
            None
        } else {
            let resolver = tls::CertResolver::compile(&snapshot.certificates)?;
            let verifier = tls::client_verifier(&tls_settings)?;
            Some(tls::server_config(
                Arc::new(resolver),
                &self.tls_shared,
                verifier,
            )?)
        };
        let router = router::Router::compile(&snapshot.routes)?;
        let mut clusters =
            HashMap::with_capacity_and_hasher(snapshot.clusters.len(), Default::default());
        for c in &snapshot.clusters {
            let compiled = cluster::Cluster::compile(c, &self.clients, &self.endpoints)?;
            if clusters
                .insert(c.name.clone(), Arc::new(compiled))
                .is_some()
            {
                return Err(format!("cluster {:?} defined twice", c.name));
            }
        }
        for r in router.routes() {
            if r.redirect.is_none() && !clusters.contains_key(&r.cluster) {
                tracing::warn!(route = %r.name, cluster = %r.cluster, "route names an unknown cluster; its requests get 503");
            }
        }
        let route_series = router
            .routes()
            .map(|r| {
                let cluster = if r.redirect.is_some() { "" } else { &r.cluster };
                (
                    forward::route_key(r),
                    Arc::new(metrics::RouteSeries::new(&r.name, cluster)),
                )
            })
            .collect();
        let limits = limits::Limits::from_settings(&snapshot.listener.unwrap_or_default());
        let drained = snapshot.nodes.iter().any(|n| {
            n.id == self.config.id
                && (n.state == control_api::NodeState::Draining as i32
                    || n.state == control_api::NodeState::Disabled as i32)
        });

        // Everything compiled: from here on nothing fails.
        if let Some(t) = &self.tls_shared.ticketer {
            t.install(ticket_keys);
        }
        self.update_health_checks(&clusters);
        let has_certs = tls.is_some();
        let http = Arc::new(limits.http());
        self.runtime.store(Arc::new(Runtime {
            version: snapshot.version,
            tls,
            router,
            route_series,
            clusters,
            limits,
            http,
        }));
        self.metrics
            .config_version
            .set(i64::try_from(snapshot.version).unwrap_or(i64::MAX));
        self.has_certs.store(has_certs, Ordering::Release);
        self.drained_by_control.store(drained, Ordering::Release);
        self.update_readiness();
        Ok(())
    }

    /// Starts, changes or stops the active health checks of the clusters'
    /// endpoints, and forgets endpoints no cluster has any more.
    fn update_health_checks(&self, clusters: &HashMap<String, Arc<cluster::Cluster>>) {
        let mut keep = std::collections::HashSet::new();
        let mut targets = Vec::new();
        for c in clusters.values() {
            for e in &c.endpoints {
                let id = cluster::EndpointRegistry::id(&c.name, e.addr);
                match &c.health_check {
                    Some(spec) => targets.push(health::Target {
                        id: id.clone(),
                        addr: e.addr,
                        spec: spec.clone(),
                    }),
                    None => e.state.set_active_up(true),
                }
                keep.insert(id);
            }
        }
        self.endpoints.retain(&keep);
        if tokio::runtime::Handle::try_current().is_err() {
            if !targets.is_empty() {
                tracing::warn!("snapshot applied outside a tokio runtime: no active health checks");
            }
            return;
        }
        self.checker.set_targets(targets);
        self.health_follower.call_once(|| {
            let mut rx = self.health_rx.clone();
            let registry = self.endpoints.clone();
            tokio::spawn(async move {
                loop {
                    {
                        let map = rx.borrow_and_update();
                        for (id, (up, _)) in &map.targets {
                            if let Some(s) = registry.by_id(id) {
                                s.set_active_up(*up);
                            }
                        }
                    }
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            });
        });
    }

    /// Accept loop on an already-bound listener until `shutdown` is
    /// cancelled; then stops accepting, sets readiness false, lets in-flight
    /// connections finish up to `drain_timeout`, and returns.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        listener::serve(self, listener, shutdown, listener::Transport::Tls).await
    }

    /// Like [`Node::serve`] for a plain-HTTP listener (no TLS: HTTP/1.1, or
    /// h2 with prior knowledge). Same PROXY rules, routes and clusters;
    /// apps see `X-Forwarded-Proto: http`.
    pub async fn serve_plain(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        listener::serve(self, listener, shutdown, listener::Transport::Plain).await
    }

    /// Ready once a snapshot with at least one certificate is applied; false
    /// while draining.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub(crate) fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.update_readiness();
    }

    fn update_readiness(&self) {
        self.readiness.set(
            self.has_certs.load(Ordering::Acquire)
                && !self.drained_by_control.load(Ordering::Acquire)
                && !self.shutting_down.load(Ordering::Acquire),
        );
    }

    pub(crate) fn is_trusted(&self, ip: IpAddr) -> bool {
        self.config
            .trusted_proxies
            .iter()
            .any(|&(net, len)| cidr_contains(net, len, ip))
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// `{instance:016x}-{n:x}` as a header value, written by hand into a
    /// stack buffer (`format!` and a `String` cost a visible share of a
    /// request's instructions, and two allocations).
    pub(crate) fn new_request_id(&self) -> Option<http::HeaderValue> {
        hex_id(
            self.instance,
            self.next_request_id.fetch_add(1, Ordering::Relaxed),
        )
    }
}

/// `{a:016x}-{b:x}` as a header value.
fn hex_id(a: u64, b: u64) -> Option<http::HeaderValue> {
    let mut buf = [0u8; 33];
    let mut len = 0;
    for (v, min) in [(a, 16), (b, 1)] {
        if len > 0 {
            buf[len] = b'-';
            len += 1;
        }
        let digits = (64 - v.leading_zeros()).div_ceil(4).max(min);
        for i in (0..digits).rev() {
            let d = ((v >> (i * 4)) & 0xf) as u8;
            buf[len] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
            len += 1;
        }
    }
    http::HeaderValue::from_bytes(&buf[..len]).ok()
}

/// Binds `listen` and `admin_listen`, subscribes to control (watch stream,
/// tier node, id `config.id`), serves until `shutdown`, drains.
pub async fn run(
    config: NodeConfig,
    control_endpoint: String,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| NodeError::Bind {
            what: "traffic",
            addr: config.listen,
            source,
        })?;
    let admin = match config.admin_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| NodeError::Bind {
                    what: "admin",
                    addr,
                    source,
                })?,
        ),
        None => None,
    };
    let node = Node::new(config);
    tracing::info!(
        id = %node.config.id,
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        control = %control_endpoint,
        "node starting"
    );

    let admin_task = admin.map(|l| {
        let stop = shutdown.clone();
        tokio::spawn(observe::serve_admin(
            l,
            node.registry(),
            node.readiness(),
            async move { stop.cancelled().await },
        ))
    });

    let sub = control_api::watch::Subscription {
        endpoint: control_endpoint,
        id: node.config.id.clone(),
        tier: control_api::Tier::Node,
    };
    let applier = node.clone();
    let watch_task = tokio::spawn(control_api::watch::run(
        sub,
        Arc::new(control_api::watch::WatchState::default()),
        move |snap: &Snapshot| applier.apply(snap),
    ));

    node.clone().serve(listener, shutdown).await;

    watch_task.abort();
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    tracing::info!(id = %node.config.id, "node stopped");
    Ok(())
}

#[cfg(test)]
mod id_tests {
    #[test]
    fn ids_are_hex_with_a_fixed_width_instance() {
        for (a, b) in [
            (0u64, 0u64),
            (1, 1),
            (0xabc, 0x1f),
            (u64::MAX, u64::MAX),
            (0x1f, 0),
        ] {
            let v = super::hex_id(a, b).expect("valid");
            assert_eq!(v.to_str().expect("ascii"), format!("{a:016x}-{b:x}"));
        }
    }
}
