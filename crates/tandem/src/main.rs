//! `tandem`: the one server binary. Each tier is a subcommand; `tandem up`
//! runs the whole system on this machine.
#![forbid(unsafe_code)]

/// mimalloc: measured cheaper than glibc malloc on the node's per-request
/// allocations (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod certs;
mod demo_app;
mod up;
mod vip;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "tandem",
    version,
    about = "Tandem: a two-tier (L4 director + L7 node) load balancer"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "TANDEM_LOG_FORMAT"
    )]
    log_format: LogFormatArg,
    /// Runtime worker threads. 1 runs a single-threaded runtime (no work
    /// stealing); default: one per available core (1 on a single core).
    #[arg(long, global = true, env = "TANDEM_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the control service (gRPC admin and watch API, durable state).
    Control(ControlArgs),
    /// Run a director (L4): Maglev over the node pool, PROXY v2 to nodes.
    Director(DirectorArgs),
    /// Run a node (L7): TLS termination, HTTP routing, app pools.
    Node(NodeArgs),
    /// Run the whole system on loopback: control, a director, nodes and demo apps.
    Up(up::UpArgs),
    /// Run the demo app: answers JSON with the client address it received.
    DemoApp(demo_app::DemoAppArgs),
}

#[derive(clap::Args, Debug)]
struct ControlArgs {
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:9400")]
    listen: SocketAddr,
    /// Admin endpoint (/metrics, /healthz, /readyz).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Where the durable state lives (`--store redb`).
    #[arg(long, default_value = ".tandem/control")]
    data_dir: PathBuf,
    /// State store: `redb` (embedded, in --data-dir) or `etcd` (shared by
    /// several control instances).
    #[arg(long, value_enum, default_value = "redb")]
    store: StoreKind,
    /// etcd client URLs (`--store etcd`), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        value_name = "URLS"
    )]
    etcd_endpoints: Vec<String>,
    /// Key prefix of the state in etcd.
    #[arg(long, default_value = "/tandem", value_name = "PREFIX")]
    etcd_prefix: String,
    /// Admin bearer tokens, one per line (`TOKEN` or `NAME TOKEN`). With
    /// neither token file, auth is off.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Subscriber (director, node) bearer tokens, one per line.
    #[arg(long, value_name = "FILE")]
    subscriber_token_file: Option<PathBuf>,
    /// TLS on the gRPC port: the server certificate chain (PEM, leaf first).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The server certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA of client certificates (mTLS). Identity from the SAN URI:
    /// spiffe://tandem/admin/NAME or spiffe://tandem/subscriber/ID. Without
    /// token files a certificate is required; with them either is enough.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// With --client-ca and token files: require a client certificate and a
    /// token.
    #[arg(long, requires = "client_ca")]
    require_cert_and_token: bool,
    /// Hours between rotations of the nodes' shared TLS session ticket keys
    /// (made by control, so a client resumes on any node); 0 turns it off.
    #[arg(long, default_value_t = 12)]
    ticket_key_rotation_hours: u64,
}

/// Backend of the control state (`tandem control --store`).
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum StoreKind {
    Redb,
    Etcd,
}

/// Where a director or a node gets its config: a control service, or a
/// static file.
#[derive(clap::Args, Debug)]
struct SourceArgs {
    /// Control service URL; repeat (or separate with commas) for several
    /// control instances, tried in turn.
    #[arg(
        long,
        default_value = "http://127.0.0.1:9400",
        env = "TANDEM_CONTROL",
        value_delimiter = ','
    )]
    control: Vec<String>,
    /// File holding the subscriber token control requires (last word of its
    /// first line).
    #[arg(long, value_name = "FILE", env = "TANDEM_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// CA that signed control's certificate (for https:// control URLs).
    #[arg(long, value_name = "FILE", env = "TANDEM_CONTROL_CA")]
    control_ca: Option<PathBuf>,
    /// Client certificate for mTLS to control (SAN URI
    /// spiffe://tandem/subscriber/ID).
    #[arg(long, value_name = "FILE", env = "TANDEM_CONTROL_CERT")]
    control_cert: Option<PathBuf>,
    /// The client certificate's private key.
    #[arg(long, value_name = "FILE", env = "TANDEM_CONTROL_KEY")]
    control_key: Option<PathBuf>,
    /// Run from a static config file instead of a control service: the
    /// `tandemctl apply -f` format (a director reads services and nodes; a
    /// node certificates, clusters and routes, and reloads it on SIGHUP).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct DirectorArgs {
    /// Stable id reported to control.
    #[arg(long, default_value = "director-1")]
    id: String,
    #[command(flatten)]
    source: SourceArgs,
    /// Admin endpoint (/metrics, /healthz, /readyz).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Seconds open flows may continue after a stop is asked for.
    #[arg(long, default_value_t = 30)]
    drain_timeout_secs: u64,
    /// Milliseconds to wait for a node to accept a connection.
    #[arg(long, default_value_t = 2000)]
    connect_timeout_ms: u64,
    /// Seconds a flow may stay silent both ways before it is closed.
    #[arg(long, default_value_t = 900)]
    idle_timeout_secs: u64,
    /// Open flows per service; beyond it new connections are refused at once.
    #[arg(long, default_value_t = 100_000)]
    max_connections: usize,
    /// Seconds flows on a draining node may continue before they are closed
    /// (default: until they end by themselves).
    #[arg(long)]
    node_drain_timeout_secs: Option<u64>,
    /// Node health check: milliseconds between checks.
    #[arg(long, default_value_t = 1000)]
    health_interval_ms: u64,
    /// Node health check: milliseconds before a check counts as failed.
    #[arg(long, default_value_t = 500)]
    health_timeout_ms: u64,
    /// Node health check: successes that bring a node back.
    #[arg(long, default_value_t = 2)]
    health_rise: u32,
    /// Node health check: failures that take a node out.
    #[arg(long, default_value_t = 2)]
    health_fall: u32,
    /// Node health check: path on the node's admin address.
    #[arg(long, default_value = "/readyz")]
    health_path: String,
    /// Relay with userspace copies instead of splice(2).
    #[arg(long)]
    no_splice: bool,
    /// Accept loops (SO_REUSEPORT sockets) per VIP; default one per core.
    #[arg(long)]
    accept_loops: Option<usize>,
    #[command(flatten)]
    xdp: XdpDirectorArgs,
}

/// How a director forwards.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum DirectorModeArg {
    /// Terminate TCP on the VIP and relay to a node with PROXY v2.
    Proxy,
    /// Forward packets with an XDP program (L2 DSR, IPIP or GUE); nodes
    /// answer clients directly.
    Xdp,
}

/// XDP attach mode.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
enum XdpAttachArg {
    #[default]
    /// In the driver (fastest; veth, most NICs).
    Native,
    /// In the generic (skb) path: any interface.
    Generic,
}

impl From<XdpAttachArg> for xdp::AttachMode {
    fn from(a: XdpAttachArg) -> Self {
        match a {
            XdpAttachArg::Native => xdp::AttachMode::Native,
            XdpAttachArg::Generic => xdp::AttachMode::Generic,
        }
    }
}

#[derive(clap::Args, Debug)]
struct XdpDirectorArgs {
    /// `proxy` relays connections; `xdp` forwards packets (needs root and
    /// --xdp-interface).
    #[arg(long, value_enum, default_value = "proxy")]
    mode: DirectorModeArg,
    /// xdp mode: the interface VIP traffic arrives on and leaves by.
    #[arg(long, value_name = "IF", required_if_eq("mode", "xdp"))]
    xdp_interface: Option<String>,
    /// xdp mode: where the program runs.
    #[arg(long, value_enum, default_value = "native")]
    xdp_attach: XdpAttachArg,
    /// xdp mode, IPIP/GUE: outer source address (one IPv4 and/or one IPv6;
    /// repeat or separate with commas).
    #[arg(long, value_name = "IP", value_delimiter = ',')]
    xdp_tunnel_source: Vec<std::net::IpAddr>,
    /// xdp mode: largest packet the director->node link carries; bigger
    /// encapsulated packets get ICMP "fragmentation needed" to the client.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u16).range(576..))]
    xdp_mtu: u16,
    /// xdp mode: largest Maglev table size a service may use.
    #[arg(long, default_value_t = 65_537)]
    xdp_max_table_size: u32,
    /// xdp mode: most services (VIPs).
    #[arg(long, default_value_t = 64)]
    xdp_max_vips: u32,
    /// xdp mode: size of the node map (one entry stays unused: where an
    /// empty pool's slots point).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(2..))]
    xdp_max_nodes: u32,
    /// xdp mode: entries of the connection-tracking flow table.
    #[arg(long, default_value_t = 1 << 20)]
    xdp_flow_table_size: u32,
}

impl XdpDirectorArgs {
    /// The xdp-mode settings, or None in proxy mode.
    fn config(&self) -> Result<Option<director::XdpConfig>> {
        if self.mode == DirectorModeArg::Proxy {
            return Ok(None);
        }
        let interface = self
            .xdp_interface
            .clone()
            .context("--mode xdp needs --xdp-interface IF")?;
        let mut c = director::XdpConfig::new(interface);
        c.attach = self.xdp_attach.into();
        c.options.mtu = self.xdp_mtu;
        c.options.max_table_size = self.xdp_max_table_size;
        c.options.max_vips = self.xdp_max_vips;
        c.options.max_nodes = self.xdp_max_nodes;
        c.options.flow_table_size = self.xdp_flow_table_size;
        for ip in &self.xdp_tunnel_source {
            match ip {
                std::net::IpAddr::V4(v4) => {
                    anyhow::ensure!(
                        c.options.tunnel_source_v4.replace(*v4).is_none(),
                        "--xdp-tunnel-source: more than one IPv4 address"
                    );
                }
                std::net::IpAddr::V6(v6) => {
                    anyhow::ensure!(
                        c.options.tunnel_source_v6.replace(*v6).is_none(),
                        "--xdp-tunnel-source: more than one IPv6 address"
                    );
                }
            }
        }
        Ok(Some(c))
    }
}

#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// Stable id: must match a node in control's state.
    #[arg(long, default_value = "node-1")]
    id: String,
    /// TLS listener.
    #[arg(long, default_value = "127.0.0.1:9411")]
    listen: SocketAddr,
    /// Optional plain-HTTP listener (same routes; apps see X-Forwarded-Proto: http).
    #[arg(long)]
    plain_listen: Option<SocketAddr>,
    /// Admin endpoint (/metrics, /healthz, /readyz).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    #[command(flatten)]
    source: SourceArgs,
    /// PROXY protocol on the listener.
    #[arg(long, value_enum, default_value = "optional")]
    proxy_protocol: ProxyModeArg,
    /// Source ranges allowed to send a PROXY header (CIDR), repeatable.
    #[arg(long = "trusted-proxy", default_values = ["127.0.0.0/8", "::1/128"])]
    trusted_proxies: Vec<String>,
    /// Seconds in-flight requests may take to finish after a stop is asked for.
    #[arg(long, default_value_t = 30)]
    drain_timeout_secs: u64,
    #[command(flatten)]
    vip: vip::VipArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ProxyModeArg {
    Off,
    Optional,
    Required,
}

fn parse_cidr(s: &str) -> Result<(std::net::IpAddr, u8)> {
    let (ip, len) = s.split_once('/').unwrap_or((s, ""));
    let ip: std::net::IpAddr = ip
        .parse()
        .with_context(|| format!("{s:?}: not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = if len.is_empty() {
        max
    } else {
        len.parse()
            .with_context(|| format!("{s:?}: bad prefix length"))?
    };
    anyhow::ensure!(len <= max, "{s:?}: prefix length above {max}");
    Ok((ip, len))
}

/// Cancels the token on SIGINT or SIGTERM; a second signal exits at once.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        for n in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            if n == 0 {
                tracing::info!("stop requested; draining (signal again to exit at once)");
                token.cancel();
            } else {
                tracing::warn!("second signal; exiting now");
                std::process::exit(130);
            }
        }
    });
}

/// A child started by `tandem up` stops when its parent dies, even by SIGKILL.
fn follow_parent() {
    let Ok(parent) = std::env::var("TANDEM_PARENT_PID") else {
        return;
    };
    let Ok(parent) = parent.parse::<i32>() else {
        return;
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM) {
        tracing::warn!(error = %e, "cannot set parent-death signal");
    }
    if nix::unistd::getppid().as_raw() != parent {
        // The parent died before we could follow it.
        std::process::exit(1);
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    observe::init_tracing(match cli.log_format {
        LogFormatArg::Text => observe::LogFormat::Text,
        LogFormatArg::Json => observe::LogFormat::Json,
    });
    follow_parent();
    // On one core (taskset, a 1-CPU container) a single-threaded runtime
    // does the same work without the work-stealing machinery.
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = match cli.worker_threads {
        Some(n) => usize::from(n),
        None if std::env::var_os("TANDEM_SINGLE_THREAD").is_some() => 1,
        None => cores,
    };
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = builder
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async_main(cli.command))
}

async fn async_main(command: Command) -> Result<()> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    match command {
        Command::Control(a) => {
            let config = control::ControlConfig {
                listen: a.listen,
                admin_listen: a.admin_listen,
                data_dir: a.data_dir,
                store: match a.store {
                    StoreKind::Redb => control::StoreConfig::Redb,
                    StoreKind::Etcd => control::StoreConfig::Etcd(control::EtcdConfig {
                        endpoints: a.etcd_endpoints,
                        prefix: a.etcd_prefix,
                        ..control::EtcdConfig::default()
                    }),
                },
                admin_token_file: a.admin_token_file,
                subscriber_token_file: a.subscriber_token_file,
                tls: match (a.tls_cert, a.tls_key) {
                    (Some(cert), Some(key)) => Some(control::TlsFiles {
                        cert,
                        key,
                        client_ca: a.client_ca,
                    }),
                    _ => None,
                },
                require_client_cert_and_token: a.require_cert_and_token,
                ticket_key_rotation: (a.ticket_key_rotation_hours > 0)
                    .then(|| Duration::from_secs(a.ticket_key_rotation_hours * 3600)),
                ..control::ControlConfig::default()
            };
            control::run(config, shutdown)
                .await
                .context("control service")?;
        }
        Command::Director(a) => {
            let mut config = director::DirectorConfig::new(a.id);
            config.admin_listen = a.admin_listen;
            config.drain_timeout = Duration::from_secs(a.drain_timeout_secs);
            config.connect_timeout = Duration::from_millis(a.connect_timeout_ms);
            config.idle_timeout = Duration::from_secs(a.idle_timeout_secs);
            config.max_connections = a.max_connections;
            config.node_drain_timeout = a.node_drain_timeout_secs.map(Duration::from_secs);
            config.health.interval = Duration::from_millis(a.health_interval_ms);
            config.health.timeout = Duration::from_millis(a.health_timeout_ms);
            config.health.rise = a.health_rise;
            config.health.fall = a.health_fall;
            config.health_path = a.health_path;
            if a.no_splice {
                config.relay = director::RelayMode::Copy;
            }
            if let Some(n) = a.accept_loops {
                config.accept_loops = n.max(1);
            }
            config.xdp = a.xdp.config()?;
            if config.xdp.is_some() && !nix::unistd::geteuid().is_root() {
                anyhow::bail!(
                    "--mode xdp needs root (loading BPF programs and attaching XDP needs \
                     CAP_BPF, CAP_NET_ADMIN and locked memory)"
                );
            }
            let source = match &a.source.config {
                Some(path) => director::ConfigSource::Static(Box::new(load_static(path)?)),
                None => director::ConfigSource::Control {
                    tls: client_tls(&a.source)?,
                    endpoints: a.source.control,
                    token: read_token(a.source.token_file.as_deref())?,
                },
            };
            director::run(config, source, shutdown)
                .await
                .context("director")?;
        }
        Command::Node(a) => {
            let trusted_proxies = a
                .trusted_proxies
                .iter()
                .map(|s| parse_cidr(s))
                .collect::<Result<Vec<_>>>()?;
            let config = node::NodeConfig {
                id: a.id,
                listen: a.listen,
                admin_listen: a.admin_listen,
                proxy_protocol: match a.proxy_protocol {
                    ProxyModeArg::Off => node::ProxyProtocolMode::Off,
                    ProxyModeArg::Optional => node::ProxyProtocolMode::Optional,
                    ProxyModeArg::Required => node::ProxyProtocolMode::Required,
                },
                trusted_proxies,
                drain_timeout: Duration::from_secs(a.drain_timeout_secs),
            };
            let source = match a.source.config {
                Some(path) => NodeSource::Static(path),
                None => NodeSource::Control {
                    tls: client_tls(&a.source)?,
                    endpoints: a.source.control,
                    token: read_token(a.source.token_file.as_deref())?,
                },
            };
            // VIPs on lo and the decap program, for a director in xdp mode;
            // undone when this guard drops (after the node has drained).
            let vips = vip::setup(&a.vip, config.listen).context("node VIP setup")?;
            let result = run_node(config, a.plain_listen, source, shutdown).await;
            drop(vips);
            result?;
        }
        Command::Up(a) => up::run(a, shutdown).await?,
        Command::DemoApp(a) => demo_app::run(a, shutdown).await?,
    }
    Ok(())
}

/// The TLS material for control from `--control-ca/--control-cert/--control-key`.
fn client_tls(source: &SourceArgs) -> Result<Option<control_api::tls::ClientTls>> {
    control_api::tls::ClientTls::from_files(
        source.control_ca.as_deref(),
        source.control_cert.as_deref(),
        source.control_key.as_deref(),
    )
    .context("control TLS settings")
}

fn read_token(path: Option<&std::path::Path>) -> Result<Option<String>> {
    path.map(|p| {
        control_api::auth::read_token_file(p)
            .with_context(|| format!("reading token file {}", p.display()))
    })
    .transpose()
}

fn load_static(path: &std::path::Path) -> Result<control_api::Snapshot> {
    control_api::config::load_file(path)
        .with_context(|| format!("loading static config {}", path.display()))
}

/// Where a node's certificates, clusters and routes come from.
enum NodeSource {
    /// A static file, reloaded on SIGHUP (a bad file is refused and the
    /// running config stays).
    Static(PathBuf),
    /// A control service's watch stream.
    Control {
        endpoints: Vec<String>,
        token: Option<String>,
        tls: Option<control_api::tls::ClientTls>,
    },
}

/// Runs a node: binds its listeners, gets its config, serves until
/// `shutdown`, then drains.
async fn run_node(
    config: node::NodeConfig,
    plain_listen: Option<SocketAddr>,
    source: NodeSource,
    shutdown: CancellationToken,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let plain = match plain_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?,
        ),
        None => None,
    };
    let admin = match config.admin_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding admin {addr}"))?,
        ),
        None => None,
    };
    let id = config.id.clone();
    let node = node::Node::new(config);
    if let Some(l) = admin {
        tokio::spawn(observe::serve_admin(
            l,
            node.registry(),
            node.readiness(),
            shutdown.clone().cancelled_owned(),
        ));
    }
    let background = match source {
        NodeSource::Static(path) => {
            node.apply(&load_static(&path)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let reloader = node.clone();
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("listening for SIGHUP")?;
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    match load_static(&path)
                        .and_then(|s| reloader.apply(&s).map_err(|e| anyhow::anyhow!(e)))
                    {
                        Ok(()) => tracing::info!(file = %path.display(), "reloaded static config"),
                        Err(e) => {
                            tracing::error!(file = %path.display(), error = %format!("{e:#}"), "reload refused; keeping the running config")
                        }
                    }
                }
            })
        }
        NodeSource::Control {
            mut endpoints,
            token,
            tls,
        } => {
            anyhow::ensure!(!endpoints.is_empty(), "no control endpoint");
            let endpoint = endpoints.remove(0);
            let sub = control_api::watch::Subscription {
                endpoint,
                id,
                tier: control_api::Tier::Node,
            };
            let options = control_api::watch::WatchOptions {
                token,
                reports: None,
                fallback_endpoints: endpoints,
                tls,
            };
            let applier = node.clone();
            tokio::spawn(control_api::watch::run_with_options(
                sub,
                std::sync::Arc::new(control_api::watch::WatchState::default()),
                options,
                move |snap: &control_api::Snapshot| applier.apply(snap),
            ))
        }
    };
    let plain_task = plain.map(|l| tokio::spawn(node.clone().serve_plain(l, shutdown.clone())));
    node.serve(listener, shutdown).await;
    if let Some(t) = plain_task {
        let _ = t.await;
    }
    background.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_cidr;

    #[test]
    fn cidrs_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_cidr("127.0.0.0/8").expect("v4"),
            ("127.0.0.0".parse().expect("ip"), 8)
        );
        assert_eq!(
            parse_cidr("::1").expect("v6 host"),
            ("::1".parse().expect("ip"), 128)
        );
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nonsense/8").is_err());
    }
}
