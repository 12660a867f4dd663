//! `tandemctl`: the Tandem admin CLI. Reads and changes the control
//! service's desired state and shows which version each director and node
//! applied.
#![forbid(unsafe_code)]

/// `print!` to stdout; when the reader has gone (`tandemctl ... | head`) the
/// program ends quietly, as other command-line tools do, instead of panicking.
macro_rules! out {
    ($($t:tt)*) => { $crate::write_stdout(format_args!($($t)*)) };
}

/// `println!` with [`out!`]'s handling of a closed stdout.
macro_rules! outln {
    () => { $crate::write_stdout(format_args!("\n")) };
    ($($t:tt)*) => { $crate::write_stdout(format_args!("{}\n", format_args!($($t)*))) };
}

mod edit;
mod table;
mod target;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use control_api::auth::BearerInterceptor;
use control_api::pb::{
    self, Change, GetStateRequest, NodeState, ResourceKind, Snapshot, StatusRequest,
    StatusResponse, SubscriberStatus, Tier, admin_client::AdminClient, change,
};
use serde_json::{Value, json};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use edit::{Res, changed};
use table::Table;

#[derive(Parser, Debug)]
#[command(name = "tandemctl", version, about = "Tandem admin CLI")]
struct Cli {
    /// Control service URL (else $TANDEM_CONTROL, else .tandem/tandemctl.toml, else http://127.0.0.1:9400).
    #[arg(long, global = true, env = "TANDEM_CONTROL")]
    control: Option<String>,
    /// File holding the bearer token (else $TANDEM_TOKEN_FILE, else `token_file` in .tandem/tandemctl.toml).
    #[arg(long, global = true, env = "TANDEM_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// CA that signed control's certificate, for https:// (else $TANDEM_CA, else `ca` in .tandem/tandemctl.toml).
    #[arg(long, global = true, env = "TANDEM_CA")]
    ca: Option<std::path::PathBuf>,
    /// Client certificate for mTLS, SAN URI spiffe://tandem/admin/NAME (else $TANDEM_CERT, else `cert` in the config file).
    /// Not `--cert`: `cert add --cert` names the certificate being added.
    #[arg(long = "client-cert", global = true, env = "TANDEM_CERT")]
    client_cert: Option<std::path::PathBuf>,
    /// The client certificate's key (else $TANDEM_KEY, else `key` in the config file).
    #[arg(long = "client-key", global = true, env = "TANDEM_KEY")]
    client_key: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Control's version, every node and director, and whether each runs it.
    Status,
    /// List and change L7 nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// List, add and remove routes.
    #[command(subcommand)]
    Route(RouteCmd),
    /// List, add and remove clusters (app pools).
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// List, add and remove services (VIPs).
    #[command(subcommand)]
    Service(ServiceCmd),
    /// List (names, SNI, default; never keys), add and remove certificates.
    #[command(subcommand)]
    Cert(CertCmd),
    /// Print one line per new version of the state (subscribes like a node does).
    Watch,
    /// A service's Maglev table: slots and share of new flows per node.
    /// Computed here from the state: every director builds the same table
    /// (before health checks take nodes out).
    Table {
        /// Service name.
        service: String,
    },
    /// The audit trail: who applied which change, when, at which version (newest first).
    Audit {
        /// At most this many records.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Make the state look like a TOML document, in one batch; prints the diff.
    Apply {
        /// The desired state, TOML or YAML (by extension, else by content;
        /// see `tandemctl state export` for the format).
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
        /// Show the diff only; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also remove resources the document does not name.
        #[arg(long)]
        prune: bool,
    },
    /// Back up or restore the whole state.
    #[command(subcommand)]
    State(StateCmd),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StateFormat {
    /// The declarative TOML document.
    Toml,
    /// The same document in YAML.
    Yaml,
    /// The binary protobuf Snapshot.
    Pb,
}

#[derive(Subcommand, Debug)]
enum StateCmd {
    /// The whole state, private keys included (admin only): a backup.
    Export {
        #[arg(long, value_enum, default_value_t = StateFormat::Toml)]
        format: StateFormat,
        /// Write here instead of standard output.
        #[arg(long = "out")]
        out: Option<std::path::PathBuf>,
    },
    /// Replace the whole state with a backup, in one batch.
    Import {
        file: std::path::PathBuf,
        /// Default: pb for a `.pb` file, else the TOML or YAML document
        /// (by extension, else by content).
        #[arg(long, value_enum)]
        format: Option<StateFormat>,
        /// Show the diff only; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand, Debug)]
enum RouteCmd {
    /// List routes.
    List,
    /// Add a route (refused if the name exists).
    Add {
        name: String,
        /// Cluster the route sends to.
        #[arg(long)]
        cluster: String,
        /// Host: exact, `*.suffix`, or empty for any.
        #[arg(long, default_value = "")]
        host: String,
        /// Path prefix, starting with `/`.
        #[arg(long, default_value = "/")]
        path_prefix: String,
    },
    /// Show one route.
    Get { name: String },
    /// Change fields of a route in place.
    Set {
        name: String,
        #[arg(long)]
        cluster: Option<String>,
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        path_prefix: Option<String>,
        /// Refuse (conflict) unless the state is still at this version.
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// Remove a route.
    Remove { name: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LbArg {
    RoundRobin,
    LeastRequest,
    ConsistentHash,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum UpstreamProxyArg {
    /// X-Forwarded-For and friends.
    None,
    /// A PROXY v2 header on each upstream connection.
    V2,
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// List clusters.
    List,
    /// Add a cluster (refused if the name exists).
    Add {
        name: String,
        /// An endpoint `IP:PORT` or `IP:PORT=WEIGHT`; repeat for several.
        #[arg(long = "endpoint", required = true)]
        endpoints: Vec<String>,
        #[arg(long, value_enum, default_value = "round-robin")]
        lb: LbArg,
        #[arg(long, value_enum, default_value = "none")]
        proxy_protocol: UpstreamProxyArg,
        /// With `--proxy-protocol v2`: a CRC32C TLV in each PROXY header.
        #[arg(long)]
        proxy_crc32c: bool,
    },
    /// Show one cluster.
    Get { name: String },
    /// Change fields of a cluster in place.
    Set {
        name: String,
        /// Replaces the endpoints: `IP:PORT` or `IP:PORT=WEIGHT`, repeat.
        #[arg(long = "endpoint")]
        endpoints: Vec<String>,
        #[arg(long, value_enum)]
        lb: Option<LbArg>,
        #[arg(long, value_enum)]
        proxy_protocol: Option<UpstreamProxyArg>,
        /// A CRC32C TLV in each PROXY header (`true`/`false`).
        #[arg(long)]
        proxy_crc32c: Option<bool>,
        #[arg(long)]
        connect_timeout_ms: Option<u32>,
        /// Refuse (conflict) unless the state is still at this version.
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// Remove a cluster (refused while a route uses it).
    Remove { name: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum HashArg {
    FiveTuple,
    SourceIp,
}

#[derive(Subcommand, Debug)]
enum ServiceCmd {
    /// List services.
    List,
    /// Add a service: a VIP the directors listen on (refused if the name exists).
    Add {
        name: String,
        /// The VIP, `IP:PORT`.
        #[arg(long)]
        address: String,
        /// Node pool that serves it.
        #[arg(long, default_value = "default")]
        pool: String,
        /// Maglev table size (prime).
        #[arg(long, default_value_t = control_api::DEFAULT_TABLE_SIZE)]
        table_size: u32,
        #[arg(long, value_enum, default_value = "five-tuple")]
        hash: HashArg,
        /// How an XDP director forwards to the nodes.
        #[arg(long, value_enum, default_value = "l2-dsr")]
        xdp_forwarding: XdpArg,
    },
    /// Show one service.
    Get { name: String },
    /// Change fields of a service in place.
    Set {
        name: String,
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        table_size: Option<u32>,
        #[arg(long, value_enum)]
        hash: Option<HashArg>,
        #[arg(long, value_enum)]
        xdp_forwarding: Option<XdpArg>,
        /// Refuse (conflict) unless the state is still at this version.
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// Remove a service.
    Remove { name: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum XdpArg {
    /// Rewrite the MAC, same L2 segment (default).
    #[value(name = "l2-dsr", alias = "l2_dsr")]
    L2Dsr,
    /// IP-in-IP to the node's tunnel address.
    Ipip,
    /// GUE (UDP) to the node's tunnel address.
    Gue,
}

impl XdpArg {
    fn pb(self) -> i32 {
        (match self {
            XdpArg::L2Dsr => pb::XdpForwarding::L2Dsr,
            XdpArg::Ipip => pb::XdpForwarding::Ipip,
            XdpArg::Gue => pb::XdpForwarding::Gue,
        }) as i32
    }
}

#[derive(Subcommand, Debug)]
enum CertCmd {
    /// List certificates.
    List,
    /// Add a certificate from PEM files (refused if the name exists).
    Add {
        name: String,
        /// PEM chain, leaf first.
        #[arg(long)]
        cert: std::path::PathBuf,
        /// PEM private key.
        #[arg(long)]
        key: std::path::PathBuf,
        /// SNI name (exact or `*.suffix`); repeat for several.
        #[arg(long = "sni", required = true)]
        sni: Vec<String>,
        /// Serve it when no SNI name matches.
        #[arg(long)]
        default: bool,
    },
    /// Show one certificate (the key only as its fingerprint).
    Get { name: String },
    /// Change a certificate in place (a new chain needs its key too).
    Set {
        name: String,
        #[arg(long, requires = "key")]
        cert: Option<std::path::PathBuf>,
        #[arg(long, requires = "cert")]
        key: Option<std::path::PathBuf>,
        /// Replaces the SNI names; repeat.
        #[arg(long = "sni")]
        sni: Vec<String>,
        #[arg(long)]
        default: Option<bool>,
        /// Refuse (conflict) unless the state is still at this version.
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// Remove a certificate.
    Remove { name: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StateArg {
    Active,
    Draining,
    Disabled,
}

#[derive(Subcommand, Debug)]
enum NodeCmd {
    /// List nodes.
    List,
    /// Add a node.
    Add {
        id: String,
        /// ip:port of the node's traffic listener.
        #[arg(long)]
        address: String,
        /// ip:port of the node's admin listener.
        #[arg(long, default_value = "")]
        admin_address: String,
        #[arg(long, default_value_t = 100)]
        weight: u32,
        #[arg(long, default_value = "default")]
        pool: String,
        /// The node's MAC (XDP l2_dsr forwarding), aa:bb:cc:dd:ee:ff.
        #[arg(long, default_value = "")]
        mac: String,
        /// The node's tunnel address (XDP ipip/gue forwarding).
        #[arg(long, default_value = "")]
        tunnel_address: String,
    },
    /// Show one node.
    Get { id: String },
    /// Change fields of a node in place.
    Set {
        id: String,
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        admin_address: Option<String>,
        #[arg(long)]
        weight: Option<u32>,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        #[arg(long)]
        mac: Option<String>,
        #[arg(long)]
        tunnel_address: Option<String>,
        /// Refuse (conflict) unless the state is still at this version.
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// Keep the node's flows, send it no new ones.
    Drain { id: String },
    /// Put the node back in service.
    Activate { id: String },
    /// Take the node out of every table.
    Disable { id: String },
    /// Set the node's weight.
    Weight { id: String, weight: u32 },
    /// Remove the node.
    Remove { id: String },
}

fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let url = target::control_url(cli.control.clone(), &cwd)?;
    let token = match target::token_file(cli.token_file.clone(), &cwd)? {
        Some(path) => Some(control_api::auth::read_token_file(&path)?),
        None => None,
    };
    let tls = control_api::tls::ClientTls::from_files(
        target::tls_file(cli.ca.clone(), "ca", &cwd)?.as_deref(),
        target::tls_file(cli.client_cert.clone(), "cert", &cwd)?.as_deref(),
        target::tls_file(cli.client_key.clone(), "key", &cwd)?.as_deref(),
    )?;
    let ctl = Ctl::connect(url, cli.output, token.as_deref(), tls.as_ref()).await?;
    match cli.command {
        Command::Status => ctl.status().await,
        Command::Node(cmd) => ctl.node(cmd).await,
        Command::Route(RouteCmd::List) => ctl.list(Kind::Route).await,
        Command::Cluster(ClusterCmd::List) => ctl.list(Kind::Cluster).await,
        Command::Service(ServiceCmd::List) => ctl.list(Kind::Service).await,
        Command::Route(cmd) => ctl.route(cmd).await,
        Command::Cluster(cmd) => ctl.cluster(cmd).await,
        Command::Service(cmd) => ctl.service(cmd).await,
        Command::Cert(CertCmd::List) => ctl.list(Kind::Cert).await,
        Command::Cert(cmd) => ctl.cert(cmd).await,
        Command::Table { service } => ctl.table(&service).await,
        Command::Watch => ctl.watch().await,
        Command::Audit { limit } => ctl.audit(limit).await,
        Command::Apply {
            file,
            dry_run,
            prune,
        } => {
            let desired = edit::load_document(&file)?;
            ctl.apply_desired(&desired, prune, dry_run).await
        }
        Command::State(StateCmd::Export { format, out }) => ctl.export(format, out).await,
        Command::State(StateCmd::Import {
            file,
            format,
            dry_run,
        }) => {
            let format = format.unwrap_or(if file.extension().is_some_and(|e| e == "pb") {
                StateFormat::Pb
            } else {
                StateFormat::Toml
            });
            let desired = match format {
                StateFormat::Toml | StateFormat::Yaml => edit::load_document(&file)?,
                StateFormat::Pb => {
                    use prost::Message;
                    let bytes = std::fs::read(&file)
                        .map_err(|e| anyhow!("reading {}: {e}", file.display()))?;
                    Snapshot::decode(bytes.as_slice())
                        .map_err(|e| anyhow!("{} is not a Snapshot: {e}", file.display()))?
                }
            };
            ctl.apply_desired(&desired, true, dry_run).await
        }
    }
}

/// The text of the innermost error, e.g. "connection refused".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    if let Some(io) = cur.downcast_ref::<std::io::Error>() {
        match io.kind() {
            std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
            std::io::ErrorKind::TimedOut => return "timed out".into(),
            _ => {}
        }
    }
    cur.to_string()
}

struct Ctl {
    url: String,
    output: Output,
    channel: Channel,
    auth: BearerInterceptor,
}

type Authed = InterceptedService<Channel, BearerInterceptor>;

enum Kind {
    Route,
    Cluster,
    Service,
    Cert,
}

const MAX_MESSAGE: usize = 64 << 20;
const ATTEMPTS: usize = 3;

impl Ctl {
    async fn connect(
        url: String,
        output: Output,
        token: Option<&str>,
        tls: Option<&control_api::tls::ClientTls>,
    ) -> Result<Self> {
        let auth = BearerInterceptor::optional(token).map_err(|e| anyhow!("the token: {e}"))?;
        let endpoint = control_api::tls::endpoint(&url, tls)?.timeout(Duration::from_secs(30));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| anyhow!("cannot reach control at {url}: {}", root_cause(&e)))?;
        Ok(Self {
            url,
            output,
            channel,
            auth,
        })
    }

    fn admin(&self) -> AdminClient<Authed> {
        AdminClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE)
    }

    /// A clear message for a failed call.
    fn rpc_error(&self, s: &tonic::Status) -> anyhow::Error {
        use tonic::Code;
        let msg = s.message();
        match s.code() {
            Code::Unknown | Code::Cancelled | Code::Unavailable
                if std::error::Error::source(s).is_some() =>
            {
                // A transport failure, e.g. a TLS handshake refused after
                // it seemed done: the cause is in the source chain.
                let cause = std::error::Error::source(s)
                    .map(control_api::tls::error_chain)
                    .unwrap_or_default();
                anyhow!(
                    "connection to control at {} failed: {cause} (with mTLS: is a client certificate given, signed by control's client CA?)",
                    self.url
                )
            }
            Code::InvalidArgument => anyhow!("invalid argument: {msg}"),
            Code::NotFound => anyhow!("not found: {msg}"),
            Code::AlreadyExists => anyhow!("already exists: {msg}"),
            Code::Aborted => anyhow!("conflict: {msg}"),
            Code::Unavailable => anyhow!("control at {} is unavailable: {msg}", self.url),
            Code::DeadlineExceeded => anyhow!("control at {} did not answer in time", self.url),
            Code::Unauthenticated => anyhow!(
                "unauthenticated: {msg} (give --token-file, $TANDEM_TOKEN_FILE or token_file in .tandem/tandemctl.toml)"
            ),
            Code::PermissionDenied => anyhow!("permission denied: {msg}"),
            Code::Unimplemented => {
                anyhow!("{} does not serve the Tandem control API: {msg}", self.url)
            }
            other => anyhow!("control answered {other:?}: {msg}"),
        }
    }

    async fn get_state(&self) -> Result<Snapshot> {
        self.get_state_with(false).await
    }

    async fn get_state_with(&self, include_private_keys: bool) -> Result<Snapshot> {
        self.admin()
            .get_state(GetStateRequest {
                include_private_keys,
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.rpc_error(&s))
    }

    async fn get_status(&self) -> Result<StatusResponse> {
        self.admin()
            .status(StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.rpc_error(&s))
    }

    /// Prints `v` as JSON, or as YAML with `-o yaml`.
    fn print_json(&self, v: &Value) -> Result<()> {
        if self.output == Output::Yaml {
            out!("{}", serde_norway::to_string(v)?);
        } else {
            outln!("{}", serde_json::to_string_pretty(v)?);
        }
        Ok(())
    }

    async fn status(&self) -> Result<()> {
        let state = self.get_state().await?;
        let status = self.get_status().await?;
        let version = status.version;
        let by_id = |id: &str| status.subscribers.iter().find(|s| s.id == id);
        let in_sync = |s: Option<&SubscriberStatus>| s.is_some_and(|s| s.acked_version == version);
        let directors: Vec<&SubscriberStatus> = status
            .subscribers
            .iter()
            .filter(|s| s.tier == Tier::Director as i32)
            .collect();
        // A node's health as the connected directors' checks see it.
        let health = |id: &str| -> (&'static str, String) {
            let mut seen = false;
            let mut down = Vec::new();
            for d in directors.iter().filter(|d| d.connected) {
                if let Some(h) = d.node_health.iter().find(|h| h.node_id == id) {
                    seen = true;
                    if !h.healthy {
                        down.push(format!("{}: {}", d.id, h.detail));
                    }
                }
            }
            match (seen, down.is_empty()) {
                (false, _) => ("unknown", String::new()),
                (true, true) => ("up", String::new()),
                (true, false) => ("down", down.join("; ")),
            }
        };
        // Packets the connected directors' xdp data planes forwarded to a
        // node (`None` when no director reports any: proxy mode).
        let forwarded = |id: &str| -> Option<(u64, u64)> {
            let mut total: Option<(u64, u64)> = None;
            for d in directors.iter().filter(|d| d.connected) {
                if let Some(h) = d.node_health.iter().find(|h| h.node_id == id)
                    && (h.forwarded_packets > 0 || h.forwarded_bytes > 0)
                {
                    let t = total.get_or_insert((0, 0));
                    t.0 += h.forwarded_packets;
                    t.1 += h.forwarded_bytes;
                }
            }
            total
        };
        let any_forwarded = state.nodes.iter().any(|n| forwarded(&n.id).is_some());
        if self.output != Output::Table {
            let nodes: Vec<Value> = state
                .nodes
                .iter()
                .map(|n| {
                    let s = by_id(&n.id);
                    let (h, why) = health(&n.id);
                    let (fwd_packets, fwd_bytes) = forwarded(&n.id).unwrap_or((0, 0));
                    json!({
                        "id": n.id,
                        "health": h,
                        "health_detail": why,
                        "address": n.address,
                        "admin_address": n.admin_address,
                        "state": node_state(n.state),
                        "weight": n.weight,
                        "pool": n.pool,
                        "connected": s.is_some_and(|s| s.connected),
                        "applied_version": s.map_or(0, |s| s.acked_version),
                        "in_sync": in_sync(s),
                        "last_error": s.map_or("", |s| s.last_error.as_str()),
                        "forwarded_packets": fwd_packets,
                        "forwarded_bytes": fwd_bytes,
                    })
                })
                .collect();
            let dirs: Vec<Value> = directors
                .iter()
                .map(|s| {
                    json!({
                        "id": s.id,
                        "connected": s.connected,
                        "applied_version": s.acked_version,
                        "in_sync": s.acked_version == version,
                        "last_error": s.last_error,
                    })
                })
                .collect();
            return self.print_json(&json!({
                "control": self.url,
                "version": version,
                "nodes": nodes,
                "directors": dirs,
            }));
        }
        outln!("control {}  version {version}", self.url);
        outln!();
        let mut headers = vec!["NODE", "ADDRESS", "STATE", "WEIGHT", "POOL", "HEALTH"];
        if any_forwarded {
            headers.push("XDP-PACKETS");
        }
        headers.extend(["CONNECTED", "APPLIED", "IN-SYNC", "LAST-ERROR"]);
        let mut t = Table::new(&headers);
        for n in &state.nodes {
            let s = by_id(&n.id);
            let (h, why) = health(&n.id);
            let mut row = vec![
                n.id.clone(),
                n.address.clone(),
                node_state(n.state),
                n.weight.to_string(),
                n.pool.clone(),
                if why.is_empty() {
                    h.to_string()
                } else {
                    format!("{h} ({why})")
                },
            ];
            if any_forwarded {
                row.push(forwarded(&n.id).map_or("0".into(), |(p, _)| p.to_string()));
            }
            row.extend([
                yes_no(s.is_some_and(|s| s.connected)),
                applied(s),
                sync_mark(s, version),
                s.map_or(String::new(), |s| s.last_error.clone()),
            ]);
            t.row(row);
        }
        out!("{}", t.render());
        outln!();
        let mut t = Table::new(&["DIRECTOR", "CONNECTED", "APPLIED", "IN-SYNC", "LAST-ERROR"]);
        for s in &directors {
            t.row(vec![
                s.id.clone(),
                yes_no(s.connected),
                applied(Some(s)),
                sync_mark(Some(s), version),
                s.last_error.clone(),
            ]);
        }
        out!("{}", t.render());
        Ok(())
    }

    async fn table(&self, service: &str) -> Result<()> {
        let state = self.get_state().await?;
        let svc = state
            .services
            .iter()
            .find(|s| s.name == service)
            .ok_or_else(|| anyhow!("no service {service:?}"))?;
        let pool = |p: &str| {
            if p.is_empty() {
                "default".to_string()
            } else {
                p.to_string()
            }
        };
        let members: Vec<&pb::Node> = state
            .nodes
            .iter()
            .filter(|n| pool(&n.pool) == pool(&svc.node_pool))
            .collect();
        let backends: Vec<maglev::Backend> = members
            .iter()
            .filter(|n| n.state == NodeState::Active as i32 && n.weight > 0)
            .map(|n| maglev::Backend {
                name: n.id.clone(),
                weight: n.weight,
            })
            .collect();
        let m = if svc.table_size == 0 {
            control_api::DEFAULT_TABLE_SIZE
        } else {
            svc.table_size
        };
        let table =
            maglev::Table::build(&backends, m).map_err(|e| anyhow!("building the table: {e}"))?;
        let share: std::collections::HashMap<String, usize> = table.share().into_iter().collect();
        let rows: Vec<(String, String, u32, usize)> = members
            .iter()
            .map(|n| {
                (
                    n.id.clone(),
                    node_state(n.state),
                    n.weight,
                    share.get(&n.id).copied().unwrap_or(0),
                )
            })
            .collect();
        if self.output != Output::Table {
            let nodes: Vec<Value> = rows
                .iter()
                .map(|(id, st, w, slots)| {
                    json!({"id": id, "state": st, "weight": w, "slots": slots, "share": *slots as f64 / m as f64})
                })
                .collect();
            return self.print_json(&json!({
                "service": service,
                "table_size": m,
                "hash_version": maglev::HASH_VERSION,
                "version": state.version,
                "nodes": nodes,
            }));
        }
        outln!(
            "service {service}  table size {m}  state version {}",
            state.version
        );
        outln!();
        let mut t = Table::new(&["NODE", "STATE", "WEIGHT", "SLOTS", "SHARE"]);
        for (id, st, w, slots) in rows {
            t.row(vec![
                id,
                st,
                w.to_string(),
                slots.to_string(),
                format!("{:.2}%", slots as f64 * 100.0 / m as f64),
            ]);
        }
        out!("{}", t.render());
        Ok(())
    }

    async fn list(&self, kind: Kind) -> Result<()> {
        let s = self.get_state().await?;
        let (json, table): (Vec<Value>, Table) = match kind {
            Kind::Route => {
                let mut t = Table::new(&["NAME", "HOST", "PATH-PREFIX", "CLUSTER"]);
                let mut j = Vec::new();
                for r in &s.routes {
                    t.row(vec![
                        r.name.clone(),
                        if r.host.is_empty() {
                            "*".into()
                        } else {
                            r.host.clone()
                        },
                        if r.path_prefix.is_empty() {
                            "/".into()
                        } else {
                            r.path_prefix.clone()
                        },
                        r.cluster.clone(),
                    ]);
                    j.push(json!({"name": r.name, "host": r.host, "path_prefix": r.path_prefix, "cluster": r.cluster}));
                }
                (j, t)
            }
            Kind::Cluster => {
                let mut t = Table::new(&[
                    "NAME",
                    "LB-POLICY",
                    "UPSTREAM-PROXY",
                    "CONNECT-TIMEOUT",
                    "ENDPOINTS",
                ]);
                let mut j = Vec::new();
                for c in &s.clusters {
                    let lb = enum_name(
                        pb::LbPolicy::try_from(c.lb_policy).map(|e| e.as_str_name()),
                        "LB_POLICY_",
                        c.lb_policy,
                    );
                    let pp = enum_name(
                        pb::UpstreamProxyProtocol::try_from(c.proxy_protocol)
                            .map(|e| e.as_str_name()),
                        "UPSTREAM_PROXY_PROTOCOL_",
                        c.proxy_protocol,
                    );
                    let timeout = if c.connect_timeout_ms == 0 {
                        2000
                    } else {
                        c.connect_timeout_ms
                    };
                    let eps: Vec<String> = c
                        .endpoints
                        .iter()
                        .map(|e| format!("{}*{}", e.address, e.weight.max(1)))
                        .collect();
                    t.row(vec![
                        c.name.clone(),
                        lb.clone(),
                        pp.clone(),
                        format!("{timeout}ms"),
                        eps.join(","),
                    ]);
                    j.push(json!({
                        "name": c.name,
                        "lb_policy": lb,
                        "proxy_protocol": pp,
                        "connect_timeout_ms": timeout,
                        "endpoints": c.endpoints.iter().map(|e| json!({"address": e.address, "weight": e.weight.max(1)})).collect::<Vec<_>>(),
                    }));
                }
                (j, t)
            }
            Kind::Service => {
                let mut t = Table::new(&["NAME", "ADDRESS", "POOL", "TABLE-SIZE", "HASH"]);
                let mut j = Vec::new();
                for v in &s.services {
                    let size = if v.table_size == 0 {
                        control_api::DEFAULT_TABLE_SIZE
                    } else {
                        v.table_size
                    };
                    let hash = enum_name(
                        pb::HashFields::try_from(v.hash).map(|e| e.as_str_name()),
                        "HASH_FIELDS_",
                        v.hash,
                    );
                    t.row(vec![
                        v.name.clone(),
                        v.address.clone(),
                        v.node_pool.clone(),
                        size.to_string(),
                        hash.clone(),
                    ]);
                    j.push(json!({"name": v.name, "address": v.address, "node_pool": v.node_pool, "table_size": size, "hash": hash}));
                }
                (j, t)
            }
            Kind::Cert => {
                let mut t = Table::new(&["NAME", "SNI", "DEFAULT", "KEY-FINGERPRINT"]);
                let mut j = Vec::new();
                for c in &s.certificates {
                    t.row(vec![
                        c.name.clone(),
                        c.sni_names.join(","),
                        yes_no(c.default),
                        c.private_key_fingerprint.clone(),
                    ]);
                    j.push(json!({"name": c.name, "sni_names": c.sni_names, "default": c.default, "private_key_fingerprint": c.private_key_fingerprint}));
                }
                (j, t)
            }
        };
        match self.output {
            Output::Json | Output::Yaml => self.print_json(&Value::Array(json)),
            Output::Table => {
                out!("{}", table.render());
                Ok(())
            }
        }
    }

    async fn node(&self, cmd: NodeCmd) -> Result<()> {
        match cmd {
            NodeCmd::List => {
                let s = self.get_state().await?;
                if self.output != Output::Table {
                    let v: Vec<Value> = s.nodes.iter().map(node_json).collect();
                    return self.print_json(&Value::Array(v));
                }
                let mut t =
                    Table::new(&["ID", "ADDRESS", "ADMIN-ADDRESS", "STATE", "WEIGHT", "POOL"]);
                for n in &s.nodes {
                    t.row(vec![
                        n.id.clone(),
                        n.address.clone(),
                        n.admin_address.clone(),
                        node_state(n.state),
                        n.weight.to_string(),
                        n.pool.clone(),
                    ]);
                }
                out!("{}", t.render());
                Ok(())
            }
            NodeCmd::Add {
                id,
                address,
                admin_address,
                weight,
                pool,
                mac,
                tunnel_address,
            } => {
                let node = pb::Node {
                    id: id.clone(),
                    address,
                    admin_address,
                    weight,
                    state: NodeState::Active as i32,
                    pool,
                    mac,
                    tunnel_address,
                };
                self.modify_node(&id.clone(), move |existing| match existing {
                    Some(_) => bail!("node {id:?} already exists"),
                    None => Ok(Edit::Put(node.clone(), "added".into())),
                })
                .await
            }
            NodeCmd::Get { id } => self.get_one(Res::Node, &id).await,
            NodeCmd::Set {
                id,
                address,
                admin_address,
                weight,
                pool,
                state,
                mac,
                tunnel_address,
                if_version,
            } => {
                let state = state.map(|s| {
                    (match s {
                        StateArg::Active => NodeState::Active,
                        StateArg::Draining => NodeState::Draining,
                        StateArg::Disabled => NodeState::Disabled,
                    }) as i32
                });
                self.set_one(Res::Node, &id.clone(), if_version, move |s| {
                    let mut n = named(&s.nodes, "node", &id, |x| &x.id)?;
                    let mut what = Vec::new();
                    changed(&mut what, "address", &mut n.address, address.clone());
                    changed(
                        &mut what,
                        "admin_address",
                        &mut n.admin_address,
                        admin_address.clone(),
                    );
                    changed(&mut what, "weight", &mut n.weight, weight);
                    changed(&mut what, "pool", &mut n.pool, pool.clone());
                    if let Some(st) = state
                        && st != n.state
                    {
                        what.push(format!(
                            "state: {} -> {}",
                            node_state(n.state),
                            node_state(st)
                        ));
                        n.state = st;
                    }
                    changed(&mut what, "mac", &mut n.mac, mac.clone());
                    changed(
                        &mut what,
                        "tunnel_address",
                        &mut n.tunnel_address,
                        tunnel_address.clone(),
                    );
                    Ok((change::Change::PutNode(n), what))
                })
                .await
            }
            NodeCmd::Drain { id } => self.set_state(id, NodeState::Draining).await,
            NodeCmd::Activate { id } => self.set_state(id, NodeState::Active).await,
            NodeCmd::Disable { id } => self.set_state(id, NodeState::Disabled).await,
            NodeCmd::Weight { id, weight } => {
                self.modify_node(&id.clone(), move |existing| {
                    let n = existing.ok_or_else(|| anyhow!("not found: no node {id:?}"))?;
                    if n.weight == weight {
                        return Ok(Edit::Nothing(format!("weight already {weight}")));
                    }
                    let what = format!("weight {} -> {weight}", n.weight);
                    Ok(Edit::Put(
                        pb::Node {
                            weight,
                            ..n.clone()
                        },
                        what,
                    ))
                })
                .await
            }
            NodeCmd::Remove { id } => {
                self.modify_node(&id.clone(), move |existing| {
                    existing.ok_or_else(|| anyhow!("not found: no node {id:?}"))?;
                    Ok(Edit::Delete("removed".into()))
                })
                .await
            }
        }
    }

    async fn set_state(&self, id: String, to: NodeState) -> Result<()> {
        self.modify_node(&id.clone(), move |existing| {
            let n = existing.ok_or_else(|| anyhow!("not found: no node {id:?}"))?;
            let from = node_state(n.state);
            let to_name = node_state(to as i32);
            if n.state == to as i32 {
                return Ok(Edit::Nothing(format!("already {to_name}")));
            }
            Ok(Edit::Put(
                pb::Node {
                    state: to as i32,
                    ..n.clone()
                },
                format!("{from} -> {to_name}"),
            ))
        })
        .await
    }

    /// Read-modify-write of one node, retried when the state moved on
    /// between the read and the write.
    /// Applies one put or delete of a named resource. `must_exist`: Some(true)
    /// refuses if it is missing, Some(false) if it is there already.
    async fn put_or_delete(
        &self,
        kind: ResourceKind,
        name: &str,
        change: change::Change,
        must_exist: bool,
        what: &str,
    ) -> Result<()> {
        let label = match kind {
            ResourceKind::Route => "route",
            ResourceKind::Cluster => "cluster",
            ResourceKind::Service => "service",
            ResourceKind::Certificate => "certificate",
            _ => "resource",
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let state = self.get_state().await?;
            let exists = match kind {
                ResourceKind::Route => state.routes.iter().any(|r| r.name == name),
                ResourceKind::Cluster => state.clusters.iter().any(|c| c.name == name),
                ResourceKind::Service => state.services.iter().any(|s| s.name == name),
                ResourceKind::Certificate => state.certificates.iter().any(|c| c.name == name),
                _ => false,
            };
            if must_exist && !exists {
                bail!("not found: no {label} {name:?}");
            }
            if !must_exist && exists {
                bail!("{label} {name:?} already exists");
            }
            let req = pb::ApplyRequest {
                changes: vec![Change {
                    change: Some(change.clone()),
                }],
                expected_version: state.version,
            };
            match self.admin().apply(req).await {
                Ok(r) => {
                    let version = r.into_inner().version;
                    if self.output != Output::Table {
                        return self.print_json(&json!({
                            "kind": label, "name": name, "action": what, "version": version,
                        }));
                    }
                    outln!("{label} {name}: {what} (version {version})");
                    return Ok(());
                }
                Err(s) if s.code() == tonic::Code::Aborted && attempt < ATTEMPTS => continue,
                Err(s) => return Err(self.rpc_error(&s)),
            }
        }
    }

    fn delete(kind: ResourceKind, name: &str) -> change::Change {
        change::Change::Delete(pb::Delete {
            kind: kind as i32,
            name: name.to_string(),
        })
    }

    async fn route(&self, cmd: RouteCmd) -> Result<()> {
        match cmd {
            RouteCmd::List => self.list(Kind::Route).await,
            RouteCmd::Add {
                name,
                cluster,
                host,
                path_prefix,
            } => {
                let r = pb::Route {
                    name: name.clone(),
                    host,
                    path_prefix,
                    cluster,
                    ..Default::default()
                };
                self.put_or_delete(
                    ResourceKind::Route,
                    &name,
                    change::Change::PutRoute(r),
                    false,
                    "added",
                )
                .await
            }
            RouteCmd::Get { name } => self.get_one(Res::Route, &name).await,
            RouteCmd::Set {
                name,
                cluster,
                host,
                path_prefix,
                if_version,
            } => {
                self.set_one(Res::Route, &name.clone(), if_version, move |s| {
                    let mut r = named(&s.routes, "route", &name, |x| &x.name)?;
                    let mut what = Vec::new();
                    changed(&mut what, "cluster", &mut r.cluster, cluster.clone());
                    changed(&mut what, "host", &mut r.host, host.clone());
                    changed(
                        &mut what,
                        "path_prefix",
                        &mut r.path_prefix,
                        path_prefix.clone(),
                    );
                    Ok((change::Change::PutRoute(r), what))
                })
                .await
            }
            RouteCmd::Remove { name } => {
                let c = Self::delete(ResourceKind::Route, &name);
                self.put_or_delete(ResourceKind::Route, &name, c, true, "removed")
                    .await
            }
        }
    }

    async fn cluster(&self, cmd: ClusterCmd) -> Result<()> {
        match cmd {
            ClusterCmd::List => self.list(Kind::Cluster).await,
            ClusterCmd::Add {
                name,
                endpoints,
                lb,
                proxy_protocol,
                proxy_crc32c,
            } => {
                let c = pb::Cluster {
                    name: name.clone(),
                    endpoints: parse_endpoints(&endpoints)?,
                    lb_policy: lb.pb(),
                    proxy_protocol: proxy_protocol.pb(),
                    proxy_protocol_crc32c: proxy_crc32c,
                    ..Default::default()
                };
                self.put_or_delete(
                    ResourceKind::Cluster,
                    &name,
                    change::Change::PutCluster(c),
                    false,
                    "added",
                )
                .await
            }
            ClusterCmd::Get { name } => self.get_one(Res::Cluster, &name).await,
            ClusterCmd::Set {
                name,
                endpoints,
                lb,
                proxy_protocol,
                proxy_crc32c,
                connect_timeout_ms,
                if_version,
            } => {
                let endpoints = if endpoints.is_empty() {
                    None
                } else {
                    Some(parse_endpoints(&endpoints)?)
                };
                self.set_one(Res::Cluster, &name.clone(), if_version, move |s| {
                    let mut c = named(&s.clusters, "cluster", &name, |x| &x.name)?;
                    let mut what = Vec::new();
                    if let Some(e) = &endpoints
                        && *e != c.endpoints
                    {
                        what.push(format!(
                            "endpoints: {} -> {}",
                            endpoints_text(&c.endpoints),
                            endpoints_text(e)
                        ));
                        c.endpoints = e.clone();
                    }
                    changed(&mut what, "lb_policy", &mut c.lb_policy, lb.map(LbArg::pb));
                    changed(
                        &mut what,
                        "proxy_protocol",
                        &mut c.proxy_protocol,
                        proxy_protocol.map(UpstreamProxyArg::pb),
                    );
                    changed(
                        &mut what,
                        "proxy_protocol_crc32c",
                        &mut c.proxy_protocol_crc32c,
                        proxy_crc32c,
                    );
                    changed(
                        &mut what,
                        "connect_timeout_ms",
                        &mut c.connect_timeout_ms,
                        connect_timeout_ms,
                    );
                    Ok((change::Change::PutCluster(c), what))
                })
                .await
            }
            ClusterCmd::Remove { name } => {
                let c = Self::delete(ResourceKind::Cluster, &name);
                self.put_or_delete(ResourceKind::Cluster, &name, c, true, "removed")
                    .await
            }
        }
    }

    async fn service(&self, cmd: ServiceCmd) -> Result<()> {
        match cmd {
            ServiceCmd::List => self.list(Kind::Service).await,
            ServiceCmd::Add {
                name,
                address,
                pool,
                table_size,
                hash,
                xdp_forwarding,
            } => {
                let svc = pb::Service {
                    xdp_forwarding: xdp_forwarding.pb(),
                    name: name.clone(),
                    address,
                    table_size,
                    hash: hash.pb(),
                    node_pool: pool,
                };
                self.put_or_delete(
                    ResourceKind::Service,
                    &name,
                    change::Change::PutService(svc),
                    false,
                    "added",
                )
                .await
            }
            ServiceCmd::Get { name } => self.get_one(Res::Service, &name).await,
            ServiceCmd::Set {
                name,
                address,
                pool,
                table_size,
                hash,
                xdp_forwarding,
                if_version,
            } => {
                self.set_one(Res::Service, &name.clone(), if_version, move |s| {
                    let mut v = named(&s.services, "service", &name, |x| &x.name)?;
                    let mut what = Vec::new();
                    changed(&mut what, "address", &mut v.address, address.clone());
                    changed(&mut what, "node_pool", &mut v.node_pool, pool.clone());
                    changed(&mut what, "table_size", &mut v.table_size, table_size);
                    changed(&mut what, "hash", &mut v.hash, hash.map(HashArg::pb));
                    changed(
                        &mut what,
                        "xdp_forwarding",
                        &mut v.xdp_forwarding,
                        xdp_forwarding.map(XdpArg::pb),
                    );
                    Ok((change::Change::PutService(v), what))
                })
                .await
            }
            ServiceCmd::Remove { name } => {
                let c = Self::delete(ResourceKind::Service, &name);
                self.put_or_delete(ResourceKind::Service, &name, c, true, "removed")
                    .await
            }
        }
    }

    async fn cert(&self, cmd: CertCmd) -> Result<()> {
        match cmd {
            CertCmd::List => self.list(Kind::Cert).await,
            CertCmd::Add {
                name,
                cert,
                key,
                sni,
                default,
            } => {
                let read = |p: &std::path::Path| {
                    std::fs::read_to_string(p).map_err(|e| anyhow!("reading {}: {e}", p.display()))
                };
                let c = pb::Certificate {
                    name: name.clone(),
                    sni_names: sni,
                    cert_chain_pem: read(&cert)?,
                    private_key_pem: read(&key)?,
                    default,
                    ..Default::default()
                };
                self.put_or_delete(
                    ResourceKind::Certificate,
                    &name,
                    change::Change::PutCertificate(c),
                    false,
                    "added",
                )
                .await
            }
            CertCmd::Get { name } => self.get_one(Res::Cert, &name).await,
            CertCmd::Set {
                name,
                cert,
                key,
                sni,
                default,
                if_version,
            } => {
                let read = |p: &std::path::Path| {
                    std::fs::read_to_string(p).map_err(|e| anyhow!("reading {}: {e}", p.display()))
                };
                let chain = cert.as_deref().map(read).transpose()?;
                let key = key.as_deref().map(read).transpose()?;
                let sni = (!sni.is_empty()).then_some(sni);
                self.set_one(Res::Cert, &name.clone(), if_version, move |s| {
                    let mut c = named(&s.certificates, "certificate", &name, |x| &x.name)?;
                    let mut what = Vec::new();
                    // Empty: control keeps the key it has.
                    c.private_key_pem.clear();
                    let old_fp = std::mem::take(&mut c.private_key_fingerprint);
                    if let (Some(chain), Some(key)) = (&chain, &key) {
                        let new_fp = control_api::config::key_fingerprint(key);
                        if *chain != c.cert_chain_pem || new_fp != old_fp {
                            what.push(format!("key: {old_fp} -> {new_fp}"));
                            c.cert_chain_pem = chain.clone();
                            c.private_key_pem = key.clone();
                        }
                    }
                    changed(&mut what, "sni_names", &mut c.sni_names, sni.clone());
                    changed(&mut what, "default", &mut c.default, default);
                    Ok((change::Change::PutCertificate(c), what))
                })
                .await
            }
            CertCmd::Remove { name } => {
                let c = Self::delete(ResourceKind::Certificate, &name);
                self.put_or_delete(ResourceKind::Certificate, &name, c, true, "removed")
                    .await
            }
        }
    }

    async fn modify_node<F>(&self, id: &str, edit: F) -> Result<()>
    where
        F: Fn(Option<&pb::Node>) -> Result<Edit>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let state = self.get_state().await?;
            let existing = state.nodes.iter().find(|n| n.id == id);
            let (change, what, node) = match edit(existing)? {
                Edit::Nothing(what) => {
                    return self.report(id, &what, state.version, existing, false);
                }
                Edit::Put(node, what) => (change::Change::PutNode(node.clone()), what, Some(node)),
                Edit::Delete(what) => (
                    change::Change::Delete(pb::Delete {
                        kind: ResourceKind::Node as i32,
                        name: id.to_string(),
                    }),
                    what,
                    None,
                ),
            };
            let req = pb::ApplyRequest {
                changes: vec![Change {
                    change: Some(change),
                }],
                expected_version: state.version,
            };
            match self.admin().apply(req).await {
                Ok(r) => {
                    let version = r.into_inner().version;
                    return self.report(id, &what, version, node.as_ref(), true);
                }
                Err(s) if s.code() == tonic::Code::Aborted && attempt < ATTEMPTS => continue,
                Err(s) if s.code() == tonic::Code::Aborted => {
                    bail!(
                        "the state kept changing; gave up after {ATTEMPTS} attempts: {}",
                        s.message()
                    )
                }
                Err(s) => return Err(self.rpc_error(&s)),
            }
        }
    }

    fn report(
        &self,
        id: &str,
        what: &str,
        version: u64,
        node: Option<&pb::Node>,
        changed: bool,
    ) -> Result<()> {
        match self.output {
            Output::Json | Output::Yaml => self.print_json(&json!({
                "id": id,
                "change": what,
                "changed": changed,
                "version": version,
                "node": node.map(node_json),
            })),
            Output::Table => {
                outln!("{id}: {what} (version {version})");
                Ok(())
            }
        }
    }

    async fn watch(&self) -> Result<()> {
        use tokio_stream::StreamExt;
        let id = format!("tandemctl-{}", std::process::id());
        let mut client = pb::watch_client::WatchClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
        .max_decoding_message_size(MAX_MESSAGE);
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let hello = pb::WatchRequest {
            msg: Some(pb::watch_request::Msg::Hello(pb::Hello {
                id,
                tier: Tier::Unspecified as i32,
            })),
        };
        tx.send(hello).await.map_err(|_| anyhow!("watch closed"))?;
        // The channel's timeout covers the wait for the response headers only,
        // not the stream that follows.
        let mut inbound = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| self.rpc_error(&s))?
            .into_inner();
        while let Some(item) = inbound.next().await {
            let s = item.map_err(|s| self.rpc_error(&s))?;
            match self.output {
                Output::Json => outln!("{}", serde_json::to_string(&summary_json(&s))?),
                Output::Yaml => out!("---\n{}", serde_norway::to_string(&summary_json(&s))?),
                Output::Table => outln!("{}", summary_line(&s)),
            }
            let ack = pb::WatchRequest {
                msg: Some(pb::watch_request::Msg::Ack(pb::Ack {
                    version: s.version,
                    error: String::new(),
                })),
            };
            if tx.send(ack).await.is_err() {
                break;
            }
        }
        bail!("control at {} ended the watch", self.url)
    }
}

impl Ctl {
    async fn audit(&self, limit: u32) -> Result<()> {
        let records = self
            .admin()
            .list_audit(pb::ListAuditRequest { limit })
            .await
            .map_err(|s| self.rpc_error(&s))?
            .into_inner()
            .records;
        if self.output != Output::Table {
            let v: Vec<Value> = records
                .iter()
                .map(|r| {
                    json!({
                        "version": r.version,
                        "unix_ms": r.unix_ms,
                        "who": r.who,
                        "role": r.role,
                        "peer": r.peer,
                        "changes": r.changes,
                    })
                })
                .collect();
            return self.print_json(&Value::Array(v));
        }
        let mut t = Table::new(&["VERSION", "WHEN (UTC)", "WHO", "PEER", "CHANGES"]);
        for r in &records {
            t.row(vec![
                r.version.to_string(),
                utc(r.unix_ms),
                r.who.clone(),
                r.peer.clone(),
                r.changes.join("; "),
            ]);
        }
        out!("{}", t.render());
        Ok(())
    }

    /// Diffs `desired` against the current state (keys included, so a
    /// changed key shows) and applies the diff as one batch.
    async fn apply_desired(&self, desired: &Snapshot, prune: bool, dry_run: bool) -> Result<()> {
        let current = self.get_state_with(true).await?;
        let diff = control_api::config::diff(&current, desired, prune);
        let lines: Vec<String> = diff.entries.iter().map(ToString::to_string).collect();
        if diff.is_empty() {
            return self.apply_report(&lines, current.version, false, dry_run, "no changes");
        }
        if dry_run {
            return self.apply_report(
                &lines,
                current.version,
                false,
                true,
                "dry run: nothing applied",
            );
        }
        let req = pb::ApplyRequest {
            changes: diff.changes,
            expected_version: current.version,
        };
        match self.admin().apply(req).await {
            Ok(r) => {
                let v = r.into_inner().version;
                self.apply_report(&lines, v, true, false, "applied")
            }
            Err(s) if s.code() == tonic::Code::Aborted => bail!(
                "the state changed while applying (run it again to diff against the new state): {}",
                s.message()
            ),
            Err(s) => Err(self.rpc_error(&s)),
        }
    }

    fn apply_report(
        &self,
        lines: &[String],
        version: u64,
        changed: bool,
        dry_run: bool,
        what: &str,
    ) -> Result<()> {
        if self.output != Output::Table {
            return self.print_json(&json!({
                "diff": lines,
                "changed": changed,
                "dry_run": dry_run,
                "version": version,
            }));
        }
        for l in lines {
            outln!("{l}");
        }
        outln!("{what} (version {version})");
        Ok(())
    }

    async fn export(&self, format: StateFormat, out: Option<std::path::PathBuf>) -> Result<()> {
        let state = self.get_state_with(true).await?;
        let bytes = match format {
            StateFormat::Toml => {
                let mut text = format!(
                    "# Tandem state, version {}, exported from {}.\n# Holds private keys: keep it secret.\n",
                    state.version, self.url
                );
                text.push_str(
                    &control_api::config::to_toml_string(
                        &state,
                        control_api::config::Keys::Include,
                    )
                    .map_err(|e| anyhow!("{e}"))?,
                );
                text.into_bytes()
            }
            StateFormat::Yaml => {
                let mut text = format!(
                    "# Tandem state, version {}, exported from {}.\n# Holds private keys: keep it secret.\n",
                    state.version, self.url
                );
                text.push_str(&edit::to_yaml(&state, control_api::config::Keys::Include)?);
                text.into_bytes()
            }
            StateFormat::Pb => {
                use prost::Message;
                state.encode_to_vec()
            }
        };
        match out {
            Some(path) => {
                write_private(&path, &bytes)?;
                eprintln!("exported version {} to {}", state.version, path.display());
            }
            None => {
                use std::io::Write;
                std::io::stdout().write_all(&bytes)?;
            }
        }
        Ok(())
    }
}

/// Writes a file readable by its owner only (it holds private keys).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))
}

/// "2025-01-02 03:04:05" from Unix milliseconds.
fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

enum Edit {
    Nothing(String),
    Put(pb::Node, String),
    Delete(String),
}

fn node_json(n: &pb::Node) -> Value {
    json!({
        "id": n.id,
        "address": n.address,
        "admin_address": n.admin_address,
        "state": node_state(n.state),
        "weight": n.weight,
        "pool": n.pool,
    })
}

fn summary_json(s: &Snapshot) -> Value {
    json!({
        "version": s.version,
        "services": s.services.len(),
        "nodes": s.nodes.len(),
        "nodes_active": s.nodes.iter().filter(|n| n.state == NodeState::Active as i32).count(),
        "clusters": s.clusters.len(),
        "routes": s.routes.len(),
        "certificates": s.certificates.len(),
    })
}

fn summary_line(s: &Snapshot) -> String {
    let active = s
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Active as i32)
        .count();
    format!(
        "version {}: {} services, {} nodes ({active} active), {} clusters, {} routes, {} certificates",
        s.version,
        s.services.len(),
        s.nodes.len(),
        s.clusters.len(),
        s.routes.len(),
        s.certificates.len()
    )
}

/// "ACTIVE", "DRAINING", "DISABLED" (or the number of an unknown state).
fn node_state(v: i32) -> String {
    enum_name(
        NodeState::try_from(v).map(|e| e.as_str_name()),
        "NODE_STATE_",
        v,
    )
}

fn enum_name<E>(name: std::result::Result<&'static str, E>, prefix: &str, raw: i32) -> String {
    match name {
        Ok(n) => n.strip_prefix(prefix).unwrap_or(n).to_string(),
        Err(_) => format!("UNKNOWN({raw})"),
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

fn applied(s: Option<&SubscriberStatus>) -> String {
    match s {
        Some(s) if s.acked_version > 0 => s.acked_version.to_string(),
        _ => "-".into(),
    }
}

fn sync_mark(s: Option<&SubscriberStatus>, version: u64) -> String {
    match s {
        Some(s) if s.acked_version == version => "✓".into(),
        Some(_) => "behind".into(),
        None => "never seen".into(),
    }
}

impl LbArg {
    fn pb(self) -> i32 {
        (match self {
            LbArg::RoundRobin => pb::LbPolicy::RoundRobin,
            LbArg::LeastRequest => pb::LbPolicy::LeastRequest,
            LbArg::ConsistentHash => pb::LbPolicy::ConsistentHash,
        }) as i32
    }
}

impl UpstreamProxyArg {
    fn pb(self) -> i32 {
        (match self {
            UpstreamProxyArg::None => pb::UpstreamProxyProtocol::None,
            UpstreamProxyArg::V2 => pb::UpstreamProxyProtocol::V2,
        }) as i32
    }
}

impl HashArg {
    fn pb(self) -> i32 {
        (match self {
            HashArg::FiveTuple => pb::HashFields::FiveTuple,
            HashArg::SourceIp => pb::HashFields::SourceIp,
        }) as i32
    }
}

/// `--endpoint IP:PORT[=WEIGHT]` values.
/// A copy of the resource named `name` (a `kind` for the error).
fn named<T: Clone>(items: &[T], kind: &str, name: &str, key: impl Fn(&T) -> &str) -> Result<T> {
    items
        .iter()
        .find(|x| key(x) == name)
        .cloned()
        .ok_or_else(|| anyhow!("not found: no {kind} {name:?}"))
}

fn parse_endpoints(endpoints: &[String]) -> Result<Vec<pb::Endpoint>> {
    endpoints
        .iter()
        .map(|e| {
            let (address, weight) = match e.split_once('=') {
                Some((a, w)) => {
                    let w = w
                        .parse::<u32>()
                        .map_err(|_| anyhow!("--endpoint {e:?}: weight is not a number"))?;
                    (a.to_string(), w)
                }
                None => (e.clone(), 1),
            };
            Ok(pb::Endpoint { address, weight })
        })
        .collect()
}

fn endpoints_text(e: &[pb::Endpoint]) -> String {
    e.iter()
        .map(|e| format!("{}*{}", e.address, e.weight.max(1)))
        .collect::<Vec<_>>()
        .join(",")
}
