//! Tandem's L4 director, proxy mode.
//!
//! A director listens on the VIP of every service it is told about, picks an
//! L7 node for each new flow by Maglev over the flow hash, connects to it,
//! writes a PROXY v2 header carrying the client and VIP addresses, and relays
//! bytes both ways until both sides have closed.
//!
//! Connection tracking in proxy mode is the relay itself: a flow is bound to
//! the node it was connected to for its whole life, whatever later happens to
//! the pool; only new flows consult the newest table. Tables are rebuilt in
//! the control watch task (off the data path) and swapped in atomically.
#![forbid(unsafe_code)]

mod flow;
mod flows;
mod metrics;
mod pool;
mod pump;
mod relay;
pub mod xdp_mode;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use control_api::Snapshot;
use control_api::pb::Tier;
use control_api::watch::{self, Subscription, WatchState};
use observe::Readiness;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use flow::{FLOW_HASH_SEED, flow_hash};
pub use pool::{Pool, PoolError};
pub use pump::Mode as RelayMode;
pub use xdp_mode::XdpConfig;

use metrics::Metrics;

/// Settings of one director process.
#[derive(Clone, Debug)]
pub struct DirectorConfig {
    /// Stable id, reported to control.
    pub id: String,
    /// Admin endpoint: /metrics, /healthz, /readyz.
    pub admin_listen: Option<SocketAddr>,
    /// Timeout for connecting to a node.
    pub connect_timeout: Duration,
    /// On shutdown, how long open flows may continue before they are cut.
    pub drain_timeout: Duration,
    /// How nodes are checked. Nodes with an admin address get an HTTP GET of
    /// `health_path` there; others a TCP connect (with a PROXY LOCAL header)
    /// to their traffic address.
    pub health: health::CheckSpec,
    pub health_path: String,
    /// A flow with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// Open flows per service; beyond it new connections are closed at once.
    pub max_connections: usize,
    /// Flows on a node that drains (DRAINING, weight 0, removed) are closed
    /// after this long; `None` lets them run to their natural end.
    pub node_drain_timeout: Option<Duration>,
    /// How bytes are relayed: `Auto` copies small messages and splices
    /// bulk transfers (Linux); `Copy` never splices; `Splice` always does.
    pub relay: RelayMode,
    /// Listening sockets per VIP, bound with SO_REUSEPORT so the kernel
    /// spreads new connections over one accept loop per core.
    pub accept_loops: usize,
    /// xdp mode: forward packets with a BPF program on an interface instead
    /// of relaying connections. `None` (the default) is proxy mode.
    pub xdp: Option<XdpConfig>,
}

impl DirectorConfig {
    pub fn new(id: impl Into<String>) -> Self {
        DirectorConfig {
            id: id.into(),
            admin_listen: None,
            connect_timeout: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(30),
            health: health::CheckSpec::default(),
            health_path: "/readyz".into(),
            idle_timeout: Duration::from_secs(900),
            max_connections: 100_000,
            node_drain_timeout: None,
            relay: if cfg!(target_os = "linux") {
                RelayMode::Auto
            } else {
                RelayMode::Copy
            },
            accept_loops: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            xdp: None,
        }
    }
}

/// Errors a director reports at start-up.
#[derive(Debug, thiserror::Error)]
pub enum DirectorError {
    #[error("config refused: {0}")]
    Config(String),
    #[error("cannot bind admin endpoint {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("xdp data plane on {interface:?}: {source}")]
    Xdp {
        interface: String,
        #[source]
        source: xdp::XdpError,
    },
}

/// One VIP: its spec, its current pool (swapped atomically) and its listener.
struct ServiceRuntime {
    address: SocketAddr,
    limit: Arc<tokio::sync::Semaphore>,
    pool: Arc<ArcSwap<Pool>>,
    stop_accepting: CancellationToken,
}

/// The director: owns every service's listener and table.
pub struct Director {
    config: DirectorConfig,
    /// The last snapshot applied, to rebuild pools when node health changes.
    last: Mutex<Option<Arc<Snapshot>>>,
    checker: health::Checker,
    health: tokio::sync::watch::Receiver<health::HealthMap>,
    services: Mutex<HashMap<String, ServiceRuntime>>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    readiness: Readiness,
    /// Every open flow.
    flows: Arc<flows::FlowTable>,
    /// Every accept loop and relay task, for draining.
    tasks: TaskTracker,
    /// One single-threaded runtime per accept loop: a flow lives on the
    /// thread that accepted it (thread per core, no work stealing).
    workers: Vec<tokio::runtime::Handle>,
    next_worker: std::sync::atomic::AtomicUsize,
    stop_workers: CancellationToken,
    /// Cancelled when the director stops accepting.
    shutdown: CancellationToken,
}

impl Director {
    /// A new director with no services. Must be called inside a tokio runtime
    /// (health checks and listeners are tasks).
    pub fn new(config: DirectorConfig) -> Arc<Director> {
        let mut registry = Registry::with_prefix("tandem_director");
        let metrics = Arc::new(Metrics::register(&mut registry));
        let shutdown = CancellationToken::new();
        let (checker, health) = health::Checker::new(shutdown.clone());
        let stop_workers = CancellationToken::new();
        let workers = config.accept_loops.max(1);
        let director = Arc::new(Director {
            config,
            last: Mutex::new(None),
            checker,
            health,
            services: Mutex::new(HashMap::new()),
            metrics,
            registry: Arc::new(registry),
            readiness: Readiness::default(),
            flows: Arc::new(flows::FlowTable::default()),
            tasks: TaskTracker::new(),
            workers: spawn_workers(workers, &stop_workers),
            next_worker: std::sync::atomic::AtomicUsize::new(0),
            stop_workers,
            shutdown,
        });
        // Close flows on drained nodes once their deadline passes.
        let weak = Arc::downgrade(&director);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let Some(d) = weak.upgrade() else { return };
                d.flows.reap(std::time::Instant::now());
            }
        });
        // Rebuild the pools whenever a node's health changes.
        let weak = Arc::downgrade(&director);
        let mut rx = director.health.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let Some(d) = weak.upgrade() else { return };
                let map = rx.borrow_and_update().clone();
                d.metrics.node_healthy.clear();
                for (node, (healthy, _)) in &map.targets {
                    d.metrics
                        .node_healthy
                        .get_or_create(&metrics::NodeIdLabel { node: node.clone() })
                        .set(i64::from(*healthy));
                }
                // Under the lock: a concurrent apply cannot be undone by an
                // install of an older snapshot.
                let last = d.last.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(snap) = last.as_ref()
                    && let Err(e) = d.install(snap)
                {
                    tracing::error!(error = %e, "rebuilding pools after a health change failed");
                }
            }
        });
        director
    }

    /// Health of every checked node, as this director sees it.
    pub fn node_health(&self) -> health::HealthMap {
        self.health.borrow().clone()
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Applies a snapshot: rebuilds every service's Maglev table from the
    /// nodes in its pool, binds the VIPs of new services and stops accepting
    /// on removed ones (their open flows continue). All tables are built
    /// before anything is swapped, so a snapshot that cannot be used changes
    /// nothing and the error is reported (NACK).
    pub fn apply(self: &Arc<Self>, snapshot: &Snapshot) -> Result<(), String> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        self.install(snapshot)?;
        *last = Some(Arc::new(snapshot.clone()));
        drop(last);
        self.set_health_targets(snapshot);
        self.metrics.config_version.set(snapshot.version as i64);
        self.readiness.set(true);
        Ok(())
    }

    fn set_health_targets(&self, snapshot: &Snapshot) {
        self.checker
            .set_targets(health_targets(&self.config, snapshot));
    }

    /// Builds every service's pool from `snapshot` and the current node
    /// health, binds new VIPs, and swaps the pools in.
    fn install(self: &Arc<Self>, snapshot: &Snapshot) -> Result<(), String> {
        let health = self.health.borrow().clone();
        // Build every pool first: nothing is swapped unless all succeed.
        let mut built = Vec::with_capacity(snapshot.services.len());
        for svc in &snapshot.services {
            let address: SocketAddr = svc.address.parse().map_err(|_| {
                format!(
                    "services[{:?}].address: {:?} is not ip:port",
                    svc.name, svc.address
                )
            })?;
            let pool = Pool::build(svc, &snapshot.nodes, |id| health.is_healthy(id))
                .map_err(|e| format!("services[{:?}]: {e}", svc.name))?;
            built.push((svc.name.clone(), address, pool));
        }
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        // Bind new listeners before touching anything else.
        let mut new_listeners = HashMap::new();
        for (name, address, _) in &built {
            let rebind = match services.get(name) {
                Some(rt) => rt.address != *address,
                None => true,
            };
            if rebind {
                let mut listeners: Vec<std::net::TcpListener> = Vec::new();
                for _ in 0..self.config.accept_loops.max(1) {
                    // Port 0: the later sockets join the port the first one got.
                    let at = match listeners.first().and_then(|l| l.local_addr().ok()) {
                        Some(first) => first,
                        None => *address,
                    };
                    listeners.push(bind_reuseport(at).map_err(|e| {
                        format!("services[{name:?}]: cannot listen on {address}: {e}")
                    })?);
                }
                new_listeners.insert(name.clone(), listeners);
            }
        }
        let keep: std::collections::HashSet<&str> =
            built.iter().map(|(n, _, _)| n.as_str()).collect();
        services.retain(|name, rt| {
            let stays = keep.contains(name.as_str());
            if !stays {
                tracing::info!(service = %name, "service removed; no longer accepting (open flows continue)");
                rt.stop_accepting.cancel();
            }
            stays
        });
        self.metrics.table_slots.clear();
        for (name, address, pool) in built {
            self.metrics.table_rebuilds.inc();
            self.metrics
                .table_size
                .get_or_create(&metrics::ServiceLabel {
                    service: name.clone(),
                })
                .set(pool.table_size() as i64);
            for (node, slots) in pool.share() {
                self.metrics
                    .table_slots
                    .get_or_create(&metrics::NodeLabel {
                        service: name.clone(),
                        node,
                    })
                    .set(slots as i64);
            }
            if let Some(listeners) = new_listeners.remove(&name) {
                if let Some(old) = services.remove(&name) {
                    old.stop_accepting.cancel();
                }
                let rt = ServiceRuntime {
                    address,
                    limit: Arc::new(tokio::sync::Semaphore::new(self.config.max_connections)),
                    pool: Arc::new(ArcSwap::from_pointee(pool)),
                    stop_accepting: self.shutdown.child_token(),
                };
                tracing::info!(service = %name, %address, nodes = rt.pool.load().node_count(), "listening on VIP");
                for listener in listeners {
                    self.spawn_accept_loop(
                        name.clone(),
                        listener,
                        rt.pool.clone(),
                        rt.limit.clone(),
                        rt.stop_accepting.clone(),
                    );
                }
                services.insert(name, rt);
            } else if let Some(rt) = services.get(&name) {
                let old = rt.pool.load();
                let changed = old.changed_slots(&pool);
                tracing::info!(service = %name, nodes = pool.node_count(), changed_slots = changed, "table swapped");
                rt.pool.store(Arc::new(pool));
            }
        }
        if let Some(t) = self.config.node_drain_timeout {
            let deadline = std::time::Instant::now() + t;
            for (name, rt) in services.iter() {
                let serving = rt.pool.load().node_ids();
                self.flows.set_drain_deadlines(name, &serving, deadline);
            }
        }
        Ok(())
    }

    fn spawn_accept_loop(
        self: &Arc<Self>,
        service: String,
        listener: std::net::TcpListener,
        pool: Arc<ArcSwap<Pool>>,
        limit: Arc<tokio::sync::Semaphore>,
        stop: CancellationToken,
    ) {
        let this = self.clone();
        let n = self
            .next_worker
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let on = self.workers.get(n % self.workers.len().max(1)).cloned();
        let accept_loop = async move {
            // Registered with the reactor of the runtime this runs on.
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(service = %service, error = %e, "cannot register listener");
                    return;
                }
            };
            loop {
                let (client, peer) = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = listener.accept() => match r {
                        Ok(a) => a,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(service = %service, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    },
                };
                // Over the limit: refuse at once rather than queue.
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    this.metrics
                        .refused
                        .get_or_create(&metrics::ServiceLabel {
                            service: service.clone(),
                        })
                        .inc();
                    tracing::debug!(service = %service, client = %peer, "max connections reached; refusing");
                    let _ = client.set_zero_linger();
                    drop(client);
                    continue;
                };
                let pool = pool.load_full();
                let ctx = relay::FlowContext {
                    service: service.clone(),
                    metrics: this.metrics.clone(),
                    flows: this.flows.clone(),
                    connect_timeout: this.config.connect_timeout,
                    idle_timeout: this.config.idle_timeout,
                    relay: this.config.relay,
                };
                this.tasks
                    .spawn(relay::handle(ctx, client, peer, pool, permit));
            }
            tracing::info!(service = %service, "stopped accepting");
        };
        match on {
            Some(handle) => {
                self.tasks.spawn_on(accept_loop, &handle);
            }
            None => {
                self.tasks.spawn(accept_loop);
            }
        }
    }

    /// Stops accepting on every VIP, then waits for open flows to end, at
    /// most `drain_timeout`.
    pub async fn drain(&self) {
        self.readiness.set(false);
        self.shutdown.cancel();
        self.tasks.close();
        let open = self.flows.len();
        tracing::info!(
            open_flows = open,
            timeout_s = self.config.drain_timeout.as_secs_f64(),
            "draining"
        );
        if tokio::time::timeout(self.config.drain_timeout, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open_flows = self.flows.len(),
                "drain timeout; closing remaining flows"
            );
            self.flows.cancel_all();
            let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.wait()).await;
        } else {
            tracing::info!("drained");
        }
        self.stop_workers.cancel();
    }
}

/// Starts `n` threads, each running a current-thread runtime until `stop`.
/// Returns their handles; none if threads cannot be made (then flows run on
/// the caller's runtime).
fn spawn_workers(n: usize, stop: &CancellationToken) -> Vec<tokio::runtime::Handle> {
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build a worker runtime; flows share the main runtime");
                return Vec::new();
            }
        };
        handles.push(rt.handle().clone());
        let stop = stop.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("director-{i}"))
            .spawn(move || rt.block_on(stop.cancelled()));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a worker thread; flows share the main runtime");
            return Vec::new();
        }
    }
    handles
}

impl Drop for Director {
    fn drop(&mut self) {
        self.stop_workers.cancel();
    }
}

fn health_report(map: &health::HealthMap) -> control_api::pb::HealthReport {
    let mut nodes: Vec<_> = map
        .targets
        .iter()
        .map(|(id, (healthy, detail))| control_api::pb::NodeHealth {
            node_id: id.clone(),
            healthy: *healthy,
            detail: detail.clone(),
            ..Default::default()
        })
        .collect();
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    control_api::pb::HealthReport { nodes }
}

/// What to health-check for `snapshot`: the nodes of every pool a service
/// uses. Nodes with an admin address get an HTTP GET of the health path
/// there; others a TCP connect (with a PROXY LOCAL header) to their traffic
/// address.
fn health_targets(config: &DirectorConfig, snapshot: &Snapshot) -> Vec<health::Target> {
    let pools: std::collections::HashSet<&str> = snapshot
        .services
        .iter()
        .map(|s| pool::pool_name(&s.node_pool))
        .collect();
    let mut targets = Vec::new();
    for n in &snapshot.nodes {
        if !pools.contains(pool::pool_name(&n.pool)) {
            continue;
        }
        let mut spec = config.health.clone();
        let addr = match n.admin_address.parse::<SocketAddr>() {
            Ok(a) => {
                spec.probe = health::Probe::Http {
                    path: config.health_path.clone(),
                    expect_status: None,
                };
                a
            }
            Err(_) => match n.address.parse::<SocketAddr>() {
                Ok(a) => {
                    spec.probe = health::Probe::Tcp;
                    spec.proxy_local = true;
                    a
                }
                Err(_) => continue,
            },
        };
        targets.push(health::Target {
            id: n.id.clone(),
            addr,
            spec,
        });
    }
    targets
}

/// Binds a listener with SO_REUSEADDR and SO_REUSEPORT, so that several
/// workers or a restarted director can share the VIP.
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Where a director's services and nodes come from.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// Watch a control service (the first endpoint, then the others in
    /// turn), with the subscriber token if control requires one.
    Control {
        endpoints: Vec<String>,
        token: Option<String>,
        /// TLS for `https://` endpoints (CA, optional client certificate).
        tls: Option<control_api::tls::ClientTls>,
    },
    /// A fixed snapshot (a static config file); no control service.
    Static(Box<Snapshot>),
}

/// Runs a director: admin endpoint, config (control watch or static), VIP
/// listeners, until `shutdown` is cancelled; then drains.
pub async fn run(
    config: DirectorConfig,
    source: ConfigSource,
    shutdown: CancellationToken,
) -> Result<(), DirectorError> {
    if let Some(xdp) = config.xdp.clone() {
        return xdp_mode::run(config, xdp, source, shutdown).await;
    }
    let director = Director::new(config.clone());
    if let Some(addr) = config.admin_listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| DirectorError::AdminBind { addr, source })?;
        tokio::spawn(observe::serve_admin(
            listener,
            director.registry(),
            director.readiness(),
            shutdown.clone().cancelled_owned(),
        ));
    }
    let watch_task = match source {
        ConfigSource::Static(snapshot) => {
            director.apply(&snapshot).map_err(DirectorError::Config)?;
            None
        }
        ConfigSource::Control {
            mut endpoints,
            token,
            tls,
        } => {
            if endpoints.is_empty() {
                return Err(DirectorError::Config("no control endpoint".into()));
            }
            let endpoint = endpoints.remove(0);
            let sub = Subscription {
                endpoint,
                id: config.id.clone(),
                tier: Tier::Director,
            };
            // Node health goes to control with the watch, for `tandemctl status`.
            let (report_tx, report_rx) =
                tokio::sync::watch::channel(control_api::pb::HealthReport::default());
            let mut health = director.health.clone();
            tokio::spawn(async move {
                loop {
                    let report = health_report(&health.borrow_and_update());
                    report_tx.send_replace(report);
                    if health.changed().await.is_err() {
                        return;
                    }
                }
            });
            let d = director.clone();
            let options = watch::WatchOptions {
                token,
                reports: Some(report_rx),
                fallback_endpoints: endpoints,
                tls,
            };
            Some(tokio::spawn(watch::run_with_options(
                sub,
                Arc::new(WatchState::default()),
                options,
                move |snap| d.apply(snap),
            )))
        }
    };
    shutdown.cancelled().await;
    if let Some(t) = watch_task {
        t.abort();
    }
    director.drain().await;
    Ok(())
}
