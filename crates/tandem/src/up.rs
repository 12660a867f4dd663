//! `tandem up`: the whole system on this machine.
//!
//! Starts, as child processes of this one, a control service, one director,
//! N nodes and M demo apps on loopback; makes a local CA and a server
//! certificate on first run; loads the initial config through the control
//! API; prints the VIP URL and a curl line; restarts a child that dies; and on
//! Ctrl-C stops the tiers front to back (director, nodes, apps, control), each
//! draining first, so nothing is left behind.
//!
//! `up` owns the resources it seeds: the certificate `localhost`, the clusters
//! `demo` and `demo-pp`, the routes `demo` and `demo-pp`, the service `web`
//! and the nodes `node-1`..`node-N`. On a restart it adds what is missing and
//! leaves what exists alone, so changes made with tandemctl (a drained node, a
//! weight) survive. Nodes `node-K` with K > N are removed (they no longer run).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use control_api::auth::BearerInterceptor;
use control_api::pb::{self, Change, admin_client::AdminClient, change};
use tonic::service::interceptor::InterceptedService;

type Admin = AdminClient<InterceptedService<tonic::transport::Channel, BearerInterceptor>>;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::certs::LocalPki;

const MAX_NODES: u16 = 19;
const MAX_APPS: u16 = 19;

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Number of L7 nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=MAX_NODES as i64))]
    pub nodes: u16,
    /// Number of demo app instances.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=MAX_APPS as i64))]
    pub apps: u16,
    /// The VIP clients connect to.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub vip: SocketAddr,
    /// First of the internal ports: control, admin endpoints, nodes and apps use base..base+90.
    #[arg(long, default_value_t = 9400)]
    pub base_port: u16,
    /// Data directory: certificates, control state, logs.
    #[arg(long, default_value = ".tandem")]
    pub data_dir: PathBuf,
    /// Seconds each tier may take to drain on Ctrl-C.
    #[arg(long, default_value_t = 10)]
    pub drain_timeout_secs: u64,
}

/// Where everything listens, derived from the base port.
struct Layout {
    vip: SocketAddr,
    base: u16,
}

fn lo(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

impl Layout {
    fn control(&self) -> SocketAddr {
        lo(self.base)
    }
    fn control_admin(&self) -> SocketAddr {
        lo(self.base + 1)
    }
    fn director_admin(&self) -> SocketAddr {
        lo(self.base + 2)
    }
    fn node(&self, i: u16) -> SocketAddr {
        lo(self.base + 10 + i)
    }
    fn node_admin(&self, i: u16) -> SocketAddr {
        lo(self.base + 30 + i)
    }
    fn app(&self, i: u16) -> SocketAddr {
        lo(self.base + 50 + i)
    }
    fn app_pp(&self, i: u16) -> SocketAddr {
        lo(self.base + 70 + i)
    }
    fn control_url(&self) -> String {
        format!("http://{}", self.control())
    }
}

/// A supervised child process.
struct Child {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    proc: Option<tokio::process::Child>,
    restarts: u32,
}

impl Child {
    fn new(name: impl Into<String>, args: Vec<String>, logs: &Path) -> Child {
        let name = name.into();
        let log = logs.join(format!("{name}.log"));
        Child {
            name,
            args,
            log,
            proc: None,
            restarts: 0,
        }
    }

    fn spawn(&mut self) -> Result<()> {
        let exe = std::env::current_exe().context("locating the tandem binary")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let err = log.try_clone()?;
        let child = tokio::process::Command::new(exe)
            .args(&self.args)
            .env("TANDEM_PARENT_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Own process group: Ctrl-C reaches only `up`, which stops the
            // tiers in order.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        tracing::debug!(name = %self.name, pid = child.id(), "started");
        self.proc = Some(child);
        Ok(())
    }

    /// Exit status if the child has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let p = self.proc.as_mut()?;
        match p.try_wait() {
            Ok(Some(status)) => {
                self.proc = None;
                Some(status)
            }
            _ => None,
        }
    }

    fn terminate(&self) {
        if let Some(pid) = self.proc.as_ref().and_then(|p| p.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }

    async fn wait_or_kill(&mut self, timeout: Duration) {
        let Some(p) = self.proc.as_mut() else { return };
        if tokio::time::timeout(timeout, p.wait()).await.is_err() {
            tracing::warn!(name = %self.name, "did not stop in time; killing");
            let _ = p.kill().await;
        }
        self.proc = None;
    }
}

pub async fn run(args: UpArgs, shutdown: CancellationToken) -> Result<()> {
    let layout = Layout {
        vip: args.vip,
        base: args.base_port,
    };
    if args.base_port.checked_add(90).is_none() {
        bail!(
            "--base-port {} leaves no room for the 90 ports tandem up uses",
            args.base_port
        );
    }
    let data = args.data_dir.clone();
    let logs = data.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

    // Credentials: control refuses calls without them. Made on first run.
    let admin_token_file = data.join("admin.token");
    let subscriber_token_file = data.join("subscriber.token");
    ensure_token(&admin_token_file, "admin")?;
    ensure_token(&subscriber_token_file, "tandem-up")?;
    let admin_token =
        control_api::auth::read_token_file(&admin_token_file).context("reading the admin token")?;

    let pki = LocalPki::in_dir(&data);
    if pki.ensure()? {
        println!(
            "Made a local CA and a certificate for localhost in {}",
            data.display()
        );
    }

    let drain = args.drain_timeout_secs.to_string();
    let s = |a: SocketAddr| a.to_string();
    let mut control = Child::new(
        "control",
        vec![
            "control".into(),
            "--listen".into(),
            s(layout.control()),
            "--admin-listen".into(),
            s(layout.control_admin()),
            "--data-dir".into(),
            data.join("control").display().to_string(),
            "--admin-token-file".into(),
            admin_token_file.display().to_string(),
            "--subscriber-token-file".into(),
            subscriber_token_file.display().to_string(),
        ],
        &logs,
    );
    control.spawn()?;
    let mut admin = connect_admin(&layout.control_url(), &admin_token, &shutdown).await?;
    let state = seed(&mut admin, &layout, &args, &pki)
        .await
        .context("loading the initial config into control")?;

    let mut apps: Vec<Child> = (1..=args.apps)
        .map(|i| {
            Child::new(
                format!("app-{i}"),
                vec![
                    "demo-app".into(),
                    "--name".into(),
                    format!("app-{i}"),
                    "--listen".into(),
                    s(layout.app(i)),
                    "--proxy-listen".into(),
                    s(layout.app_pp(i)),
                ],
                &logs,
            )
        })
        .collect();
    let mut nodes: Vec<Child> = (1..=args.nodes)
        .map(|i| {
            Child::new(
                format!("node-{i}"),
                vec![
                    "node".into(),
                    "--id".into(),
                    format!("node-{i}"),
                    "--listen".into(),
                    s(layout.node(i)),
                    "--admin-listen".into(),
                    s(layout.node_admin(i)),
                    "--control".into(),
                    layout.control_url(),
                    "--token-file".into(),
                    subscriber_token_file.display().to_string(),
                    "--drain-timeout-secs".into(),
                    drain.clone(),
                ],
                &logs,
            )
        })
        .collect();
    let mut directors = vec![Child::new(
        "director-1",
        vec![
            "director".into(),
            "--id".into(),
            "director-1".into(),
            "--admin-listen".into(),
            s(layout.director_admin()),
            "--control".into(),
            layout.control_url(),
            "--token-file".into(),
            subscriber_token_file.display().to_string(),
            "--drain-timeout-secs".into(),
            drain.clone(),
        ],
        &logs,
    )];
    for c in apps
        .iter_mut()
        .chain(nodes.iter_mut())
        .chain(directors.iter_mut())
    {
        c.spawn()?;
    }

    // Wait until every tier says it is ready. A node that control says is
    // draining or disabled is rightly not ready for new flows: for it, wait
    // until it is alive.
    let mut admins: Vec<(String, SocketAddr, &str)> =
        vec![("director-1".into(), layout.director_admin(), "/readyz")];
    for i in 1..=args.nodes {
        let id = format!("node-{i}");
        let active = state
            .nodes
            .iter()
            .find(|n| n.id == id)
            .is_none_or(|n| n.state() == pb::NodeState::Active);
        admins.push((
            id,
            layout.node_admin(i),
            if active { "/readyz" } else { "/healthz" },
        ));
    }
    for (name, addr, path) in &admins {
        wait_ready(name, *addr, path, &shutdown).await?;
    }
    write_ctl_config(&data, &layout)?;

    let url_host = if layout.vip.ip().is_loopback() {
        "localhost".to_string()
    } else {
        layout.vip.ip().to_string()
    };
    println!();
    println!("Tandem is up: https://{url_host}:{}/", layout.vip.port());
    println!(
        "  director-1 -> {} nodes -> {} demo apps; control at {}",
        args.nodes,
        args.apps,
        layout.control_url()
    );
    println!(
        "  try:   curl --cacert {} https://{url_host}:{}/",
        pki.ca_cert.display(),
        layout.vip.port()
    );
    println!(
        "         curl --cacert {} https://{url_host}:{}/pp/   (PROXY v2 to the app)",
        pki.ca_cert.display(),
        layout.vip.port()
    );
    println!("  admin: tandemctl status");
    println!("  logs:  {}", logs.display());
    println!("Ctrl-C drains and stops everything.");

    // Supervise: restart what dies until asked to stop.
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        for c in std::iter::once(&mut control)
            .chain(apps.iter_mut())
            .chain(nodes.iter_mut())
            .chain(directors.iter_mut())
        {
            if let Some(status) = c.exited() {
                c.restarts += 1;
                tracing::warn!(name = %c.name, %status, restarts = c.restarts, "exited; restarting");
                println!(
                    "{} exited ({status}); restarting (see {})",
                    c.name,
                    c.log.display()
                );
                if let Err(e) = c.spawn() {
                    tracing::error!(name = %c.name, error = %e, "restart failed");
                }
            }
        }
    }

    println!("Draining: director, then nodes, then apps, then control ...");
    let grace = Duration::from_secs(args.drain_timeout_secs + 5);
    for group in [&mut directors, &mut nodes, &mut apps] {
        for c in group.iter() {
            c.terminate();
        }
        for c in group.iter_mut() {
            c.wait_or_kill(grace).await;
        }
    }
    control.terminate();
    control.wait_or_kill(grace).await;
    println!("Stopped.");
    Ok(())
}

async fn connect_admin(url: &str, token: &str, shutdown: &CancellationToken) -> Result<Admin> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let interceptor = BearerInterceptor::new(token).context("admin token")?;
    loop {
        match tonic::transport::Endpoint::from_shared(url.to_string())?
            .connect()
            .await
        {
            Ok(channel) => return Ok(AdminClient::with_interceptor(channel, interceptor)),
            Err(e) if tokio::time::Instant::now() > deadline => {
                bail!("control did not come up at {url}: {e} (see its log)")
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => bail!("stopped while waiting for control"),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Adds what `up` needs and the state lacks; leaves the rest alone.
/// Returns the resulting state.
async fn seed(
    admin: &mut Admin,
    layout: &Layout,
    args: &UpArgs,
    pki: &LocalPki,
) -> Result<pb::Snapshot> {
    let state = admin
        .get_state(pb::GetStateRequest::default())
        .await?
        .into_inner();
    let mut changes = Vec::new();
    let put = |c: change::Change| Change { change: Some(c) };

    if !state.certificates.iter().any(|c| c.name == "localhost") {
        let chain = std::fs::read_to_string(&pki.server_cert)
            .with_context(|| format!("reading {}", pki.server_cert.display()))?;
        let key = std::fs::read_to_string(&pki.server_key)
            .with_context(|| format!("reading {}", pki.server_key.display()))?;
        changes.push(put(change::Change::PutCertificate(pb::Certificate {
            name: "localhost".into(),
            sni_names: vec!["localhost".into()],
            cert_chain_pem: chain,
            private_key_pem: key,
            default: true,
            private_key_fingerprint: String::new(),
        })));
    }
    for (name, pp) in [("demo", false), ("demo-pp", true)] {
        let endpoints: Vec<pb::Endpoint> = (1..=args.apps)
            .map(|i| pb::Endpoint {
                address: (if pp { layout.app_pp(i) } else { layout.app(i) }).to_string(),
                weight: 1,
            })
            .collect();
        match state.clusters.iter().find(|c| c.name == name) {
            // Keep the user's policy and timeouts; the endpoints are the apps `up` runs.
            Some(c) if c.endpoints == endpoints => {}
            Some(c) => changes.push(put(change::Change::PutCluster(pb::Cluster {
                endpoints,
                ..c.clone()
            }))),
            None => changes.push(put(change::Change::PutCluster(pb::Cluster {
                name: name.into(),
                endpoints,
                lb_policy: pb::LbPolicy::RoundRobin as i32,
                proxy_protocol: if pp {
                    pb::UpstreamProxyProtocol::V2
                } else {
                    pb::UpstreamProxyProtocol::None
                } as i32,
                connect_timeout_ms: 0,
                ..Default::default()
            }))),
        }
    }
    for (name, prefix, cluster) in [("demo", "/", "demo"), ("demo-pp", "/pp", "demo-pp")] {
        if !state.routes.iter().any(|r| r.name == name) {
            changes.push(put(change::Change::PutRoute(pb::Route {
                name: name.into(),
                host: String::new(),
                path_prefix: prefix.into(),
                cluster: cluster.into(),
                ..Default::default()
            })));
        }
    }
    for i in 1..=args.nodes {
        let id = format!("node-{i}");
        if !state.nodes.iter().any(|n| n.id == id) {
            changes.push(put(change::Change::PutNode(pb::Node {
                id,
                address: layout.node(i).to_string(),
                admin_address: layout.node_admin(i).to_string(),
                weight: 100,
                state: pb::NodeState::Active as i32,
                pool: "default".into(),
                ..Default::default()
            })));
        }
    }
    for n in &state.nodes {
        if let Some(k) =
            n.id.strip_prefix("node-")
                .and_then(|k| k.parse::<u16>().ok())
            && k > args.nodes
        {
            changes.push(put(change::Change::Delete(pb::Delete {
                kind: pb::ResourceKind::Node as i32,
                name: n.id.clone(),
            })));
        }
    }
    let vip = layout.vip.to_string();
    match state.services.iter().find(|s| s.name == "web") {
        Some(s) if s.address == vip => {}
        Some(s) => changes.push(put(change::Change::PutService(pb::Service {
            address: vip,
            ..s.clone()
        }))),
        None => changes.push(put(change::Change::PutService(pb::Service {
            name: "web".into(),
            address: vip,
            table_size: control_api::DEFAULT_TABLE_SIZE,
            hash: pb::HashFields::FiveTuple as i32,
            node_pool: "default".into(),
            ..Default::default()
        }))),
    }
    if changes.is_empty() {
        println!(
            "Control state found at version {}; nothing to add.",
            state.version
        );
        return Ok(state);
    }
    let n = changes.len();
    let resp = admin
        .apply(pb::ApplyRequest {
            changes,
            expected_version: state.version,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
        .into_inner();
    println!(
        "Loaded {n} changes into control (version {}).",
        resp.version
    );
    Ok(admin
        .get_state(pb::GetStateRequest::default())
        .await?
        .into_inner())
}

/// Polls an admin endpoint's `path` until it answers 200.
async fn wait_ready(
    name: &str,
    addr: SocketAddr,
    path: &str,
    shutdown: &CancellationToken,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if answers_200(addr, path).await {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{name} not ready after 30 s (GET http://{addr}{path}); see its log");
        }
        tokio::select! {
            _ = shutdown.cancelled() => bail!("stopped while waiting for {name}"),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

async fn answers_200(addr: SocketAddr, path: &str) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Leaves the client config tandemctl reads when run in this directory.
fn write_ctl_config(data: &Path, layout: &Layout) -> Result<()> {
    let path = data.join("tandemctl.toml");
    let text = format!(
        "# Written by `tandem up`: where tandemctl finds the control service,\n# and its admin credential (relative to this directory).\ncontrol = \"{}\"\ntoken_file = \"admin.token\"\n",
        layout.control_url()
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// Writes `NAME TOKEN` with a fresh random token to `path` (mode 0600)
/// unless the file exists.
fn ensure_token(path: &Path, name: &str) -> Result<()> {
    use rand::Rng;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Ok(());
    }
    let bytes: [u8; 32] = rand::rng().random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(f, "{name} {token}")?;
    Ok(())
}
