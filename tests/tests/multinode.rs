//! Multi-node tests in network namespaces: every host is its own namespace
//! with its own 10.200.0.x address on one bridge (itself in a "switch"
//! namespace), running the real `tandem` binary.
//!
//! ```text
//!   client 10.200.0.100 ──fwmark 1──> director-1 10.200.0.11 ─┐   VIP 10.200.1.10:443 on the
//!                       ──fwmark 2──> director-2 10.200.0.12 ─┤   loopback of both directors
//!                                                              ├─PROXY v2─> node-1..5 10.200.0.21..25
//!   control 10.200.0.2 (gRPC :9400) <── watch ── all           │             └─> app-1,2 10.200.0.31,32
//! ```
//!
//! Both directors hold the same VIP, as behind an ECMP router; the client
//! picks a director per connection with a socket mark (policy routing), so
//! the very same 5-tuple can be sent through either one.
//!
//! Needs root and iproute2. Without them each test prints why and passes,
//! unless `TANDEM_REQUIRE_ROOT_TESTS=1` (CI), which makes that a failure.
//! The scenarios run one at a time (a lab is nine processes on 2 cores).

// Messages built with `..Default::default()` keep compiling as the proto grows.
#![allow(clippy::needless_update)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use control_api::pb::{self, Change, admin_client::AdminClient, change};
use serde_json::Value;
use tandem_tests::load::{CheckFn, ConnectFn, Load, LoadSpec};
use tandem_tests::netns::{Lab, leftover_namespaces};
use tandem_tests::{Answer, Conn, bin, eventually, gate, pki};

const CONTROL: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 100);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 10);
const VIP_PORT: u16 = 443;
const NODE_PORT: u16 = 8443;
const NODE_ADMIN_PORT: u16 = 9000;

fn director_ip(d: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, 10 + d as u8)
}
fn node_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, 20 + i as u8)
}
fn app_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, 30 + i as u8)
}
fn vip() -> SocketAddr {
    SocketAddr::from((VIP, VIP_PORT))
}
fn control_url() -> String {
    format!("http://{CONTROL}:9400")
}

/// One scenario at a time in this process.
static SERIAL: Mutex<()> = Mutex::new(());

/// A running system in a lab, driven from the client host.
struct Sys<'a> {
    lab: &'a Lab,
    tandem: PathBuf,
    tandemctl: PathBuf,
    ca: PathBuf,
    pki: pki::TestPki,
}

/// Builds the lab, starts the system with `nodes` nodes, and runs `body`
/// on a thread inside the client's namespace. Clean-up (processes,
/// namespaces, links) happens whatever the outcome.
fn scenario<F>(name: &str, nodes: u32, body: F) -> Result<()>
where
    F: for<'s> AsyncFnOnce(&'s Sys<'s>) -> Result<()> + Send,
{
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !gate::netns_available(name) {
        return Ok(());
    }
    let tandem = bin("tandem");
    let tandemctl = bin("tandemctl");
    let started = Instant::now();
    let lab = Lab::new()?;
    let result = (|| -> Result<()> {
        build_topology(&lab, nodes)?;
        let pki = pki::make(lab.dir.path(), &[])?;
        let sys = Sys {
            lab: &lab,
            tandem,
            tandemctl,
            ca: pki.ca_pem.clone(),
            pki,
        };
        sys.start_processes(nodes)?;
        std::thread::scope(|s| {
            s.spawn(|| -> Result<()> {
                lab.enter("client")?;
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    sys.configure(nodes)
                        .await
                        .context("bringing the system up")?;
                    eprintln!("[{name}] system up in {:.1?}", started.elapsed());
                    body(&sys).await
                })
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    })();
    if let Err(e) = &result {
        eprintln!("[{name}] FAILED: {e:#}");
        lab.dump_logs(40);
    }
    let namespaces = lab.namespaces();
    drop(lab);
    let left: Vec<_> = leftover_namespaces()
        .into_iter()
        .filter(|n| namespaces.contains(n))
        .collect();
    ensure!(left.is_empty(), "namespaces left behind: {left:?}");
    eprintln!("[{name}] done in {:.1?}", started.elapsed());
    result
}

fn build_topology(lab: &Lab, nodes: u32) -> Result<()> {
    lab.add_host("client", CLIENT)?;
    lab.add_host("control", CONTROL)?;
    for d in 1..=2 {
        let h = format!("dir{d}");
        lab.add_host(&h, director_ip(d))?;
        // The VIP is local to both directors (as behind an ECMP router).
        lab.ip_in(&h, &["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
    }
    for i in 1..=nodes {
        lab.add_host(&format!("node{i}"), node_ip(i))?;
    }
    for i in 1..=2 {
        lab.add_host(&format!("app{i}"), app_ip(i))?;
    }
    // The client reaches the VIP through director-1 by default, and through
    // director d for connections with socket mark d.
    let vip32 = format!("{VIP}/32");
    lab.ip_in(
        "client",
        &["route", "add", &vip32, "via", &director_ip(1).to_string()],
    )?;
    for d in 1..=2u32 {
        let table = (100 + d).to_string();
        lab.ip_in(
            "client",
            &[
                "route",
                "add",
                &vip32,
                "via",
                &director_ip(d).to_string(),
                "table",
                &table,
            ],
        )?;
        lab.ip_in(
            "client",
            &["rule", "add", "fwmark", &d.to_string(), "table", &table],
        )?;
    }
    Ok(())
}

fn s<T: ToString>(v: T) -> String {
    v.to_string()
}

impl Sys<'_> {
    fn start_processes(&self, nodes: u32) -> Result<()> {
        self.lab.spawn_control("control", &self.tandem, CONTROL)?;
        for i in 1..=2 {
            self.lab.spawn_demo_app(
                &format!("app-{i}"),
                &format!("app{i}"),
                &self.tandem,
                app_ip(i),
                true,
            )?;
        }
        for i in 1..=nodes {
            self.start_node(i)?;
        }
        for d in 1..=2 {
            self.lab.spawn_env(
                &format!("director-{d}"),
                &format!("dir{d}"),
                &self.tandem,
                &[
                    s("director"),
                    s("--id"),
                    format!("director-{d}"),
                    s("--control"),
                    control_url(),
                    s("--admin-listen"),
                    format!("{}:9402", director_ip(d)),
                    s("--drain-timeout-secs"),
                    s(5),
                ],
                &[("RUST_LOG", "info")],
            )?;
        }
        Ok(())
    }

    /// Starts node `i` on host `node<i>`: PROXY v2 required, trusted only
    /// from the two directors.
    fn start_node(&self, i: u32) -> Result<u32> {
        self.lab.spawn_env(
            &format!("node-{i}"),
            &format!("node{i}"),
            &self.tandem,
            &[
                s("node"),
                s("--id"),
                format!("node-{i}"),
                s("--listen"),
                format!("{}:{NODE_PORT}", node_ip(i)),
                s("--admin-listen"),
                format!("{}:{NODE_ADMIN_PORT}", node_ip(i)),
                s("--control"),
                control_url(),
                s("--proxy-protocol"),
                s("required"),
                s("--trusted-proxy"),
                format!("{}/32", director_ip(1)),
                s("--trusted-proxy"),
                format!("{}/32", director_ip(2)),
                s("--drain-timeout-secs"),
                s(5),
            ],
            &[("RUST_LOG", "info")],
        )
    }

    fn node_resource(i: u32) -> pb::Node {
        pb::Node {
            id: format!("node-{i}"),
            address: format!("{}:{NODE_PORT}", node_ip(i)),
            admin_address: format!("{}:{NODE_ADMIN_PORT}", node_ip(i)),
            weight: 100,
            state: pb::NodeState::Active as i32,
            pool: "default".into(),
            ..Default::default()
        }
    }

    async fn admin(&self) -> Result<AdminClient<tonic::transport::Channel>> {
        Ok(AdminClient::connect(control_url()).await?)
    }

    /// Waits for control, loads the config through the Admin API, waits
    /// until every director and node applied it and all nodes are healthy.
    async fn configure(&self, nodes: u32) -> Result<()> {
        wait_http_ok(
            SocketAddr::from((CONTROL, 9401)),
            "/readyz",
            Duration::from_secs(30),
        )
        .await
        .context("control ready")?;
        let t = Instant::now();
        let mut admin = eventually("admin API", Duration::from_secs(20), || async {
            self.admin().await.ok()
        })
        .await?;
        let put = |c: change::Change| Change { change: Some(c) };
        let mut changes = vec![put(change::Change::PutCertificate(pb::Certificate {
            name: "localhost".into(),
            sni_names: vec!["localhost".into()],
            cert_chain_pem: self.pki.chain_pem.clone(),
            private_key_pem: self.pki.key_pem.clone(),
            default: true,
            ..Default::default()
        }))];
        for (name, port, pp) in [("demo", 8080, false), ("demo-pp", 8081, true)] {
            changes.push(put(change::Change::PutCluster(pb::Cluster {
                name: name.into(),
                endpoints: (1..=2)
                    .map(|i| pb::Endpoint {
                        address: format!("{}:{port}", app_ip(i)),
                        weight: 1,
                        ..Default::default()
                    })
                    .collect(),
                lb_policy: pb::LbPolicy::RoundRobin as i32,
                proxy_protocol: if pp {
                    pb::UpstreamProxyProtocol::V2
                } else {
                    pb::UpstreamProxyProtocol::None
                } as i32,
                ..Default::default()
            })));
        }
        for (name, prefix) in [("demo", "/"), ("demo-pp", "/pp")] {
            changes.push(put(change::Change::PutRoute(pb::Route {
                name: name.into(),
                host: String::new(),
                path_prefix: prefix.into(),
                cluster: name.into(),
                ..Default::default()
            })));
        }
        for i in 1..=nodes {
            changes.push(put(change::Change::PutNode(Self::node_resource(i))));
        }
        changes.push(put(change::Change::PutService(pb::Service {
            name: "web".into(),
            address: vip().to_string(),
            table_size: 0,
            hash: pb::HashFields::FiveTuple as i32,
            node_pool: "default".into(),
            ..Default::default()
        })));
        admin
            .apply(pb::ApplyRequest {
                changes,
                expected_version: 0,
            })
            .await
            .map_err(|s| anyhow::anyhow!("Apply: {}: {}", s.code(), s.message()))?;
        let ids: Vec<String> = (1..=nodes).map(|i| format!("node-{i}")).collect();
        eprintln!("control ready, config applied in {:.1?}", t.elapsed());
        self.wait_healthy(&ids, Duration::from_secs(60)).await?;
        eprintln!(
            "all converged and healthy {:.1?} after control was ready",
            t.elapsed()
        );
        Ok(())
    }

    /// `tandemctl --control URL ARGS` run on the client host.
    async fn ctl(&self, args: &[&str]) -> Result<String> {
        let out = tokio::process::Command::new(&self.tandemctl)
            .arg("--control")
            .arg(control_url())
            .args(args)
            .output()
            .await
            .context("running tandemctl")?;
        ensure!(
            out.status.success(),
            "tandemctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn status(&self) -> Result<Value> {
        let out = self.ctl(&["-o", "json", "status"]).await?;
        serde_json::from_str(&out).with_context(|| format!("tandemctl status printed {out}"))
    }

    /// Waits until both directors and every node in the state have applied
    /// the newest version and the directors see each of `up` healthy.
    async fn wait_healthy(&self, up: &[String], timeout: Duration) -> Result<Value> {
        let what = format!("both directors and all nodes converged, {up:?} healthy");
        let last = Arc::new(Mutex::new(Value::Null));
        let r = eventually(&what, timeout, || {
            let last = last.clone();
            async move {
                let s = self.status().await.ok()?;
                *last.lock().unwrap_or_else(|p| p.into_inner()) = s.clone();
                (converged(&s)
                    && up
                        .iter()
                        .all(|id| node_field(&s, id, "health") == Some("up")))
                .then_some(s)
            }
        })
        .await;
        r.with_context(|| {
            format!(
                "last status: {}",
                last.lock().unwrap_or_else(|p| p.into_inner())
            )
        })
    }

    /// A TLS connection to the VIP through director `d` (socket mark),
    /// from `src_port` if given.
    async fn connect(&self, d: u32, src_port: Option<u16>, h2: bool) -> Result<Conn> {
        let tcp = tcp_via(d, src_port).await?;
        Conn::handshake(tcp, &self.ca, h2).await
    }

    /// A load generator through both directors (alternating per
    /// connection, h1 and h2 alternating too), checking that every answer
    /// is a 200 carrying the client's own address.
    fn load(&self, spec: LoadSpec) -> Load {
        let ca = self.ca.clone();
        let connect: ConnectFn = Arc::new(move |k| {
            let ca = ca.clone();
            Box::pin(async move {
                let d = 1 + (k % 2) as u32;
                let tcp = tcp_via(d, None).await?;
                Ok((Conn::handshake(tcp, &ca, (k / 2) % 2 == 1).await?, d))
            })
        });
        let check: CheckFn = Arc::new(|a: &Answer| {
            ensure!(a.status == 200, "status {} body {}", a.status, a.body);
            let j = a.json();
            ensure!(
                j["client"] == CLIENT.to_string(),
                "app saw client {}",
                j["client"]
            );
            Ok(())
        });
        Load::start(spec, connect, check)
    }

    /// Which nodes `n` new connections (alternating directors) reach.
    async fn spread(&self, n: usize) -> Result<BTreeMap<String, usize>> {
        let mut seen = BTreeMap::new();
        for k in 0..n {
            let mut c = self.connect(1 + (k % 2) as u32, None, k % 4 >= 2).await?;
            let a = c.get("/spread").await?;
            ensure!(a.status == 200, "status {} {}", a.status, a.body);
            *seen.entry(a.node.context("no x-tandem-node")?).or_insert(0) += 1;
        }
        Ok(seen)
    }

    /// Runs `action` while `load` is running; fails if the load ended
    /// before the action did (the scenario would prove nothing).
    async fn during<T>(&self, load: &Load, action: impl Future<Output = Result<T>>) -> Result<T> {
        let t = action.await?;
        ensure!(
            !load.is_finished(),
            "the load ran out ({} requests done) before the action completed",
            load.done()
        );
        Ok(t)
    }
}

/// A TCP connection to the VIP through director `d`, optionally from a
/// fixed source port. SO_LINGER 0, so closing leaves no TIME_WAIT and the
/// same 5-tuple can be reused at once through the other director.
async fn tcp_via(d: u32, src_port: Option<u16>) -> Result<tokio::net::TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sock = tokio::net::TcpSocket::new_v4()?;
        let r = socket2::SockRef::from(&sock);
        r.set_mark(d).context("SO_MARK")?;
        r.set_linger(Some(Duration::ZERO))?;
        if let Some(p) = src_port {
            sock.set_reuseaddr(true)?;
            sock.bind(SocketAddr::from(([0, 0, 0, 0], p)))?;
        }
        match sock.connect(vip()).await {
            Ok(tcp) => {
                tcp.set_nodelay(true)?;
                return Ok(tcp);
            }
            // The previous connection on this port is still closing.
            Err(e)
                if src_port.is_some()
                    && e.kind() == std::io::ErrorKind::AddrNotAvailable
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("connecting to {} via director-{d}", vip()));
            }
        }
    }
}

/// Every subscriber connected and on the newest version.
fn converged(s: &Value) -> bool {
    let v = &s["version"];
    let dirs = s["directors"].as_array().map_or(0, Vec::len);
    let subs = s["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(s["directors"].as_array().into_iter().flatten());
    dirs == 2
        && subs
            .into_iter()
            .all(|n| n["connected"] == true && &n["applied_version"] == v)
}

fn node_field<'a>(s: &'a Value, id: &str, field: &str) -> Option<&'a str> {
    s["nodes"].as_array()?.iter().find(|n| n["id"] == id)?[field].as_str()
}

/// GET `path` on a plain HTTP admin endpoint until it answers 200.
async fn wait_http_ok(addr: SocketAddr, path: &str, timeout: Duration) -> Result<()> {
    eventually(
        &format!("GET http://{addr}{path} -> 200"),
        timeout,
        || async { (http_status(addr, path).await == Some(200)).then_some(()) },
    )
    .await
}

async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let line = String::from_utf8_lossy(&buf);
        line.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

fn assert_clean(report: &tandem_tests::load::LoadReport) -> Result<()> {
    eprintln!("load: {}", report.summary());
    ensure!(
        report.failed == 0 && report.ok == report.total,
        "requests failed under load: {}",
        report.summary()
    );
    Ok(())
}

// ---------------------------------------------------------------------------

/// A client's requests reach the apps with the client's own address
/// (10.200.0.100), through either director, over h1 and h2, by
/// X-Forwarded-For and by PROXY v2 to the app; curl sees the same.
#[test]
fn client_address_reaches_the_apps_through_either_director() -> Result<()> {
    scenario("client_address", 3, async |sys| {
        for d in 1..=2 {
            for h2 in [false, true] {
                let mut c = sys.connect(d, None, h2).await?;
                let want = if h2 { &b"h2"[..] } else { &b"http/1.1"[..] };
                ensure!(c.alpn.as_deref() == Some(want), "ALPN {:?}", c.alpn);
                let a = c.get("/hello").await?;
                let j = a.json();
                ensure!(a.status == 200, "director-{d} h2={h2}: {a:?}");
                ensure!(
                    j["client"] == CLIENT.to_string() && j["client_source"] == "x-forwarded-for",
                    "director-{d} h2={h2}: app saw {j}"
                );
                // The app's socket peer is a node, not the client.
                let peer = j["peer"].as_str().unwrap_or_default();
                ensure!(
                    peer.starts_with("10.200.0.2"),
                    "app's peer {peer} is not a node"
                );
                ensure!(
                    a.node.as_deref().is_some_and(|n| n.starts_with("node-")),
                    "x-tandem-node {:?}",
                    a.node
                );
                let a = c.get("/pp/hello").await?;
                let j = a.json();
                ensure!(
                    j["client"] == CLIENT.to_string()
                        && j["client_source"] == "proxy-protocol"
                        && j["proxy_protocol"]["authority"] == "localhost",
                    "director-{d} h2={h2}, PROXY v2 to the app: {j}"
                );
                let src = j["proxy_protocol"]["source"].as_str().unwrap_or_default();
                ensure!(
                    src == c.local.to_string(),
                    "PROXY source {src} is not the client's socket {}",
                    c.local
                );
            }
        }
        // A real client in the client namespace: curl, via director-1.
        if let Some(curl) = gate::peer("multinode client_address (curl)", "curl", "curl") {
            for http in ["--http1.1", "--http2"] {
                let out = tokio::process::Command::new(&curl)
                    .args(["-sS", "--fail", "--max-time", "10", http, "--cacert"])
                    .arg(&sys.ca)
                    .arg("--resolve")
                    .arg(format!("localhost:{VIP_PORT}:{VIP}"))
                    .arg("https://localhost/curl")
                    .output()
                    .await?;
                ensure!(
                    out.status.success(),
                    "curl {http}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let j: Value = serde_json::from_slice(&out.stdout)?;
                ensure!(
                    j["client"] == CLIENT.to_string(),
                    "curl {http}: app saw {j}"
                );
            }
        }
        Ok(())
    })
}

/// Both directors pick the same node for the same flow: the same 5-tuple
/// (fixed client source port) sent through each lands on the same node,
/// for many flows that together reach every node.
#[test]
fn directors_agree_on_the_node_for_each_flow() -> Result<()> {
    scenario("maglev_agreement", 3, async |sys| {
        let mut nodes = BTreeSet::new();
        for port in 41000..41024u16 {
            let mut seen = Vec::new();
            for d in [1, 2, 1] {
                let mut c = sys.connect(d, Some(port), false).await?;
                ensure!(c.local.port() == port, "bound {} not {port}", c.local);
                let a = c.get("/pp/flow").await?;
                ensure!(a.status == 200, "{a:?}");
                let src = a.json()["proxy_protocol"]["source"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                ensure!(
                    src == format!("{CLIENT}:{port}"),
                    "the app saw flow source {src}, expected {CLIENT}:{port}"
                );
                seen.push((d, a.node.context("no x-tandem-node")?));
                drop(c);
            }
            ensure!(
                seen.iter().all(|(_, n)| *n == seen[0].1),
                "flow {CLIENT}:{port} -> {VIP}:{VIP_PORT}: directors disagree: {seen:?}"
            );
            nodes.insert(seen[0].1.clone());
        }
        eprintln!("24 flows, each through both directors, agreed; nodes used: {nodes:?}");
        ensure!(nodes.len() == 3, "24 flows reached only {nodes:?}");
        Ok(())
    })
}

/// kill -9 a node: within the health-check window both directors take it
/// out; after that no new connection fails or reaches it. Restarted, it
/// comes back and takes new connections again.
#[test]
fn killed_node_leaves_the_tables_and_returns() -> Result<()> {
    scenario("kill_node", 3, async |sys| {
        let before = sys.spread(24).await?;
        ensure!(
            before.contains_key("node-2"),
            "node-2 took no traffic before: {before:?}"
        );

        let killed = Instant::now();
        sys.lab.kill9("node-2")?;
        // Meanwhile, new connections: the director falls back to another
        // node when the connect to the dead one is refused.
        let meanwhile = sys.load(LoadSpec {
            total: 120,
            concurrency: 2,
            per_conn: 1,
            pause: Duration::from_millis(10),
            deadline: Duration::from_secs(60),
            path: "/during-kill".into(),
        });
        let s = eventually(
            "both directors see node-2 down",
            Duration::from_secs(15),
            || async {
                let s = sys.status().await.ok()?;
                let detail = node_field(&s, "node-2", "health_detail").unwrap_or_default();
                (node_field(&s, "node-2", "health") == Some("down")
                    && detail.contains("director-1")
                    && detail.contains("director-2"))
                .then_some(s)
            },
        )
        .await?;
        let window = killed.elapsed();
        eprintln!(
            "node-2 out of both directors' tables {window:.1?} after kill -9: {}",
            node_field(&s, "node-2", "health_detail").unwrap_or_default()
        );
        let r = meanwhile.finish().await;
        eprintln!("load during the health-check window: {}", r.summary());
        ensure!(
            r.failed == 0,
            "new connections failed while the dead node was still in the tables: {}",
            r.summary()
        );

        // After the window: no failures, nothing on node-2.
        let r = sys
            .load(LoadSpec {
                total: 300,
                concurrency: 4,
                per_conn: 2,
                pause: Duration::ZERO,
                deadline: Duration::from_secs(90),
                path: "/after-kill".into(),
            })
            .finish()
            .await;
        assert_clean(&r)?;
        ensure!(
            !r.by_node.contains_key("node-2"),
            "the dead node answered? {:?}",
            r.by_node
        );
        ensure!(r.by_node.len() == 2, "{:?}", r.by_node);

        // Restart it: it comes back.
        let restarted = Instant::now();
        sys.lab.restart("node-2")?;
        let ids = ["node-1", "node-2", "node-3"].map(String::from);
        sys.wait_healthy(&ids, Duration::from_secs(30)).await?;
        eprintln!(
            "node-2 healthy again {:.1?} after restart",
            restarted.elapsed()
        );
        let after = sys.spread(24).await?;
        ensure!(
            after.contains_key("node-2"),
            "node-2 gets no new connections after restart: {after:?}"
        );
        Ok(())
    })
}

/// Drain a node under steady bounded load: zero failed requests; the
/// connections it holds keep being served by it to the end; new
/// connections after the drain never reach it.
#[test]
fn drain_under_load_loses_nothing() -> Result<()> {
    scenario("drain", 3, async |sys| {
        // Keep-alive connections through each director that landed on node-2.
        let mut kept = Vec::new();
        for k in 0..200u32 {
            if kept.len() == 2 {
                break;
            }
            let d = 1 + (kept.len() as u32);
            let mut c = sys.connect(d, None, k % 2 == 0).await?;
            if c.get("/pin").await?.node.as_deref() == Some("node-2") {
                kept.push((d, c));
            }
        }
        ensure!(
            kept.len() == 2,
            "no connection reached node-2 through both directors"
        );

        let load = sys.load(LoadSpec {
            total: 6000,
            concurrency: 4,
            per_conn: 4,
            pause: Duration::from_millis(8),
            deadline: Duration::from_secs(120),
            path: "/steady".into(),
        });
        load.until(150).await;
        let drained_at = sys
            .during(&load, async {
                let out = sys.ctl(&["node", "drain", "node-2"]).await?;
                ensure!(out.contains("DRAINING"), "tandemctl node drain said {out}");
                let ids = ["node-1", "node-3"].map(String::from);
                let s = sys.wait_healthy(&ids, Duration::from_secs(20)).await?;
                ensure!(node_field(&s, "node-2", "state") == Some("DRAINING"), "{s}");
                Ok(Instant::now())
            })
            .await?;
        // The flows node-2 holds are still served, by node-2, mid-load.
        for (d, c) in kept.iter_mut() {
            for _ in 0..3 {
                let a = c.get("/in-flight").await?;
                ensure!(
                    a.status == 200 && a.node.as_deref() == Some("node-2"),
                    "kept connection through director-{d} after the drain: {a:?}"
                );
            }
        }
        let done_at_drain = load.done();
        let r = load.finish_after(300).await;
        assert_clean(&r)?;
        let after = r.nodes_of_conns_after(drained_at);
        eprintln!(
            "drained after {done_at_drain} of {} requests; connections opened after it went to {after:?}",
            r.total
        );
        ensure!(
            !after.contains_key("node-2"),
            "new connections reached the draining node: {after:?}"
        );
        ensure!(
            after.values().sum::<usize>() >= 20,
            "too little load after the drain: {after:?}"
        );
        drop(kept);
        Ok(())
    })
}

/// Restart control (kill -9, start again on the same data dir) under
/// load: no request fails; afterwards the state is the same and every
/// director and node is back on it.
#[test]
fn control_restart_under_load_is_invisible() -> Result<()> {
    scenario("control_restart", 3, async |sys| {
        let mut admin = sys.admin().await?;
        let before = admin
            .get_state(pb::GetStateRequest::default())
            .await?
            .into_inner();
        let load = sys.load(LoadSpec {
            total: 6000,
            concurrency: 4,
            per_conn: 3,
            pause: Duration::from_millis(8),
            deadline: Duration::from_secs(120),
            path: "/steady".into(),
        });
        load.until(100).await;
        sys.during(&load, async {
            sys.lab.kill9("control")?;
            // While control is away, new connections and requests go on.
            let at_kill = load.done();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let while_down = load.done() - at_kill;
            eprintln!("{while_down} requests finished while control was down");
            ensure!(
                while_down >= 50,
                "only {while_down} requests in 2 s without control"
            );
            sys.lab.restart("control")?;
            wait_http_ok(
                SocketAddr::from((CONTROL, 9401)),
                "/readyz",
                Duration::from_secs(30),
            )
            .await?;
            let ids = ["node-1", "node-2", "node-3"].map(String::from);
            sys.wait_healthy(&ids, Duration::from_secs(30)).await?;
            Ok(())
        })
        .await?;
        let r = load.finish_after(300).await;
        assert_clean(&r)?;
        ensure!(r.by_node.len() == 3, "load reached {:?}", r.by_node);
        let mut admin = sys.admin().await?;
        let after = admin
            .get_state(pb::GetStateRequest::default())
            .await?
            .into_inner();
        ensure!(
            after == before,
            "state changed across the restart:\nbefore {before:?}\nafter {after:?}"
        );
        // And control still takes changes, which reach everyone.
        sys.ctl(&["node", "weight", "node-3", "50"]).await?;
        let ids = ["node-1", "node-2", "node-3"].map(String::from);
        let s = sys.wait_healthy(&ids, Duration::from_secs(20)).await?;
        ensure!(s["version"].as_u64() > Some(before.version), "{s}");
        Ok(())
    })
}

/// Scale out from 3 to 5 nodes under load: no failed requests, and the new
/// nodes take new connections.
#[test]
fn scale_out_three_to_five_under_load() -> Result<()> {
    scenario("scale_out", 3, async |sys| {
        for i in 4..=5 {
            sys.lab.add_host(&format!("node{i}"), node_ip(i))?;
            sys.start_node(i)?;
            wait_http_ok(
                SocketAddr::from((node_ip(i), NODE_ADMIN_PORT)),
                "/healthz",
                Duration::from_secs(30),
            )
            .await?;
        }
        let load = sys.load(LoadSpec {
            total: 6000,
            concurrency: 4,
            per_conn: 3,
            pause: Duration::from_millis(8),
            deadline: Duration::from_secs(120),
            path: "/steady".into(),
        });
        load.until(150).await;
        let added_at = sys
            .during(&load, async {
                for i in 4..=5u32 {
                    let n = Sys::node_resource(i);
                    sys.ctl(&[
                        "node",
                        "add",
                        &n.id,
                        "--address",
                        &n.address,
                        "--admin-address",
                        &n.admin_address,
                    ])
                    .await?;
                }
                let ids: Vec<String> = (1..=5).map(|i| format!("node-{i}")).collect();
                sys.wait_healthy(&ids, Duration::from_secs(30)).await?;
                Ok(Instant::now())
            })
            .await?;
        let r = load.finish_after(300).await;
        assert_clean(&r)?;
        let after = r.nodes_of_conns_after(added_at);
        eprintln!("connections opened after the scale-out went to {after:?}");
        ensure!(
            after.contains_key("node-4") && after.contains_key("node-5"),
            "the new nodes took no new connections under load: {after:?}"
        );
        let seen = sys.spread(40).await?;
        ensure!(seen.len() == 5, "40 new connections reached only {seen:?}");
        Ok(())
    })
}
