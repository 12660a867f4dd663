//! `tandem`: the one server binary. Each tier is a subcommand; `tandem up`
//! runs the whole system on this machine.
#![forbid(unsafe_code)]

mod certs;
mod demo_app;
mod up;

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
    /// Where the durable state lives.
    #[arg(long, default_value = ".tandem/control")]
    data_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
struct DirectorArgs {
    /// Stable id reported to control.
    #[arg(long, default_value = "director-1")]
    id: String,
    /// Control service URL.
    #[arg(long, default_value = "http://127.0.0.1:9400", env = "TANDEM_CONTROL")]
    control: String,
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
}

#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// Stable id: must match a node in control's state.
    #[arg(long, default_value = "node-1")]
    id: String,
    /// TLS listener.
    #[arg(long, default_value = "127.0.0.1:9411")]
    listen: SocketAddr,
    /// Admin endpoint (/metrics, /healthz, /readyz).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Control service URL.
    #[arg(long, default_value = "http://127.0.0.1:9400", env = "TANDEM_CONTROL")]
    control: String,
    /// PROXY protocol on the listener.
    #[arg(long, value_enum, default_value = "optional")]
    proxy_protocol: ProxyModeArg,
    /// Source ranges allowed to send a PROXY header (CIDR), repeatable.
    #[arg(long = "trusted-proxy", default_values = ["127.0.0.0/8", "::1/128"])]
    trusted_proxies: Vec<String>,
    /// Seconds in-flight requests may take to finish after a stop is asked for.
    #[arg(long, default_value_t = 30)]
    drain_timeout_secs: u64,
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
    let rt = tokio::runtime::Builder::new_multi_thread()
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
            config.splice = config.splice && !a.no_splice;
            if let Some(n) = a.accept_loops {
                config.accept_loops = n.max(1);
            }
            director::run(config, a.control, shutdown)
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
            node::run(config, a.control, shutdown)
                .await
                .context("node")?;
        }
        Command::Up(a) => up::run(a, shutdown).await?,
        Command::DemoApp(a) => demo_app::run(a, shutdown).await?,
    }
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
