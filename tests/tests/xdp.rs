//! The director in xdp mode, end to end, in network namespaces on one L2
//! segment (see `tandem_tests::xdplab` for the topology): a client, control,
//! a director with the XDP data plane on its eth0, three nodes holding the
//! VIP on `lo` (`tandem node --vip`), two demo apps.
//!
//! What a user would check: requests succeed (curl and a bounded load); the
//! app sees the client's own address, which the node took from the TCP peer
//! (no PROXY header anywhere before the node); the replies go from the nodes
//! straight to the client (the director's interface counters); a killed
//! node leaves the table; a drained node keeps its open connection.
//!
//! Needs root, iproute2, ethtool and BPF (clang at build time). Without
//! root each test prints why and passes, unless `TANDEM_REQUIRE_ROOT_TESTS=1`.

// Messages built with `..Default::default()` keep compiling as the proto grows.
#![allow(clippy::needless_update)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use control_api::pb::{self, Change, admin_client::AdminClient, change};
use serde_json::Value;
use tandem_tests::load::{CheckFn, ConnectFn, Load, LoadReport, LoadSpec};
use tandem_tests::netns::{Lab, leftover_namespaces};
use tandem_tests::xdplab::{self, CLIENT, CONTROL, DIRECTOR, VIP, app_ip, node_ip};
use tandem_tests::{Answer, Conn, bin, eventually, gate, pki};

const VIP_PORT: u16 = 443;
const NODE_ADMIN_PORT: u16 = 9000;
const DIRECTOR_ADMIN: u16 = 9402;
const NODES: u32 = 3;

fn vip() -> SocketAddr {
    SocketAddr::from((VIP, VIP_PORT))
}
fn control_url() -> String {
    format!("http://{CONTROL}:9400")
}
fn s<T: ToString>(v: T) -> String {
    v.to_string()
}

/// One scenario at a time in this process.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug)]
struct Setup {
    attach: xdp::AttachMode,
    forwarding: pb::XdpForwarding,
}

impl Setup {
    fn attach_arg(&self) -> &'static str {
        match self.attach {
            xdp::AttachMode::Native => "native",
            xdp::AttachMode::Generic => "generic",
        }
    }
}

struct Sys<'a> {
    lab: &'a Lab,
    tandem: PathBuf,
    tandemctl: PathBuf,
    ca: PathBuf,
    pki: pki::TestPki,
    setup: Setup,
}

fn scenario<F>(name: &str, setup: Setup, body: F) -> Result<()>
where
    F: for<'s> AsyncFnOnce(&'s Sys<'s>) -> Result<()> + Send,
{
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if !gate::netns_available(name) || gate::peer(name, "ethtool", "ethtool").is_none() {
        return Ok(());
    }
    let tandem = bin("tandem");
    let tandemctl = bin("tandemctl");
    let started = Instant::now();
    let lab = Lab::new()?;
    let result = (|| -> Result<()> {
        let _pass = xdplab::build(&lab, NODES, setup.attach)?;
        if setup.forwarding != pb::XdpForwarding::L2Dsr {
            // Headroom for the outer header: the client's packets are
            // smaller than the director->node link's MTU by more than it.
            lab.ip_in("client", &["link", "set", "eth0", "mtu", "1400"])?;
        }
        let pki = pki::make(lab.dir.path(), &[])?;
        let sys = Sys {
            lab: &lab,
            tandem,
            tandemctl,
            ca: pki.ca_pem.clone(),
            pki,
            setup,
        };
        sys.start_processes()?;
        std::thread::scope(|s| {
            s.spawn(|| -> Result<()> {
                lab.enter("client")?;
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    sys.configure().await.context("bringing the system up")?;
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

impl Sys<'_> {
    fn start_processes(&self) -> Result<()> {
        self.lab.spawn_control("control", &self.tandem, CONTROL)?;
        for i in 1..=2 {
            self.lab.spawn_demo_app(
                &format!("app-{i}"),
                &format!("app{i}"),
                &self.tandem,
                app_ip(i),
                false,
            )?;
        }
        for i in 1..=NODES {
            self.start_node(i)?;
        }
        let mut args = vec![
            s("director"),
            s("--id"),
            s("director-1"),
            s("--control"),
            control_url(),
            s("--admin-listen"),
            format!("{DIRECTOR}:{DIRECTOR_ADMIN}"),
            s("--health-interval-ms"),
            s(500),
            s("--mode"),
            s("xdp"),
            s("--xdp-interface"),
            s("eth0"),
            s("--xdp-attach"),
            s(self.setup.attach_arg()),
            // Small maps: a lab needs little, and 2 cores are shared.
            s("--xdp-max-table-size"),
            s(65_537),
            s("--xdp-max-vips"),
            s(4),
            s("--xdp-flow-table-size"),
            s(65_536),
        ];
        if self.setup.forwarding != pb::XdpForwarding::L2Dsr {
            args.extend([s("--xdp-tunnel-source"), s(DIRECTOR)]);
        }
        self.lab.spawn_env(
            "director",
            "director",
            &self.tandem,
            &args,
            &[("RUST_LOG", "info")],
        )?;
        Ok(())
    }

    /// Node `i`: the VIP on its `lo`, TLS on 0.0.0.0:443 (so VIP:443 too),
    /// PROXY protocol optional and trusted from nobody in the lab.
    fn start_node(&self, i: u32) -> Result<u32> {
        let mut args = vec![
            s("node"),
            s("--id"),
            format!("node-{i}"),
            s("--listen"),
            format!("0.0.0.0:{VIP_PORT}"),
            s("--admin-listen"),
            format!("{}:{NODE_ADMIN_PORT}", node_ip(i)),
            s("--control"),
            control_url(),
            s("--proxy-protocol"),
            s("optional"),
            s("--vip"),
            s(VIP),
            s("--drain-timeout-secs"),
            s(2),
        ];
        if self.setup.forwarding != pb::XdpForwarding::L2Dsr {
            args.extend([
                s("--decap"),
                s("eth0"),
                s("--decap-attach"),
                s(self.setup.attach_arg()),
            ]);
        }
        self.lab.spawn_env(
            &format!("node-{i}"),
            &format!("node{i}"),
            &self.tandem,
            &args,
            &[("RUST_LOG", "info")],
        )
    }

    fn node_resource(i: u32, state: pb::NodeState) -> pb::Node {
        pb::Node {
            id: format!("node-{i}"),
            address: format!("{}:{VIP_PORT}", node_ip(i)),
            admin_address: format!("{}:{NODE_ADMIN_PORT}", node_ip(i)),
            weight: 100,
            state: state as i32,
            pool: "default".into(),
            ..Default::default()
        }
    }

    async fn admin(&self) -> Result<AdminClient<tonic::transport::Channel>> {
        Ok(AdminClient::connect(control_url()).await?)
    }

    async fn put(&self, changes: Vec<change::Change>) -> Result<()> {
        let mut admin = self.admin().await?;
        admin
            .apply(pb::ApplyRequest {
                changes: changes
                    .into_iter()
                    .map(|c| Change { change: Some(c) })
                    .collect(),
                expected_version: 0,
            })
            .await
            .map_err(|s| anyhow::anyhow!("Apply: {}: {}", s.code(), s.message()))?;
        Ok(())
    }

    async fn configure(&self) -> Result<()> {
        eventually("control ready", Duration::from_secs(30), || async {
            self.admin().await.ok()
        })
        .await?;
        let mut changes = vec![
            change::Change::PutCertificate(pb::Certificate {
                name: "localhost".into(),
                sni_names: vec!["localhost".into()],
                cert_chain_pem: self.pki.chain_pem.clone(),
                private_key_pem: self.pki.key_pem.clone(),
                default: true,
                ..Default::default()
            }),
            change::Change::PutCluster(pb::Cluster {
                name: "demo".into(),
                endpoints: (1..=2)
                    .map(|i| pb::Endpoint {
                        address: format!("{}:8080", app_ip(i)),
                        weight: 1,
                        ..Default::default()
                    })
                    .collect(),
                lb_policy: pb::LbPolicy::RoundRobin as i32,
                ..Default::default()
            }),
            change::Change::PutRoute(pb::Route {
                name: "demo".into(),
                host: String::new(),
                path_prefix: "/".into(),
                cluster: "demo".into(),
                ..Default::default()
            }),
        ];
        for i in 1..=NODES {
            changes.push(change::Change::PutNode(Self::node_resource(
                i,
                pb::NodeState::Active,
            )));
        }
        changes.push(change::Change::PutService(pb::Service {
            name: "web".into(),
            address: vip().to_string(),
            table_size: 0,
            hash: pb::HashFields::FiveTuple as i32,
            node_pool: "default".into(),
            xdp_forwarding: self.setup.forwarding as i32,
            ..Default::default()
        }));
        self.put(changes).await?;
        let ids: Vec<String> = (1..=NODES).map(|i| format!("node-{i}")).collect();
        self.wait_converged(&ids, &[], Duration::from_secs(60))
            .await?;
        // The director's program forwards only once the maps hold the VIP.
        eventually(
            "a first request through the VIP",
            Duration::from_secs(20),
            || async {
                self.get_once("/ready")
                    .await
                    .ok()
                    .filter(|a| a.status == 200)
            },
        )
        .await?;
        Ok(())
    }

    async fn status(&self) -> Result<Value> {
        let out = tokio::process::Command::new(&self.tandemctl)
            .arg("--control")
            .arg(control_url())
            .args(["-o", "json", "status"])
            .output()
            .await
            .context("running tandemctl")?;
        ensure!(
            out.status.success(),
            "tandemctl status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).context("tandemctl status JSON")
    }

    /// Waits until the director and all nodes applied the newest version,
    /// the director sees `up` healthy and `down` not.
    async fn wait_converged(
        &self,
        up: &[String],
        down: &[&str],
        timeout: Duration,
    ) -> Result<Value> {
        let last = Arc::new(Mutex::new(Value::Null));
        let r = eventually("director and nodes converged", timeout, || {
            let last = last.clone();
            async move {
                let s = self.status().await.ok()?;
                *last.lock().unwrap_or_else(|p| p.into_inner()) = s.clone();
                let v = &s["version"];
                let dirs = s["directors"].as_array()?;
                let all_applied = dirs.len() == 1
                    && s["nodes"]
                        .as_array()?
                        .iter()
                        .filter(|n| n["connected"] == true)
                        .chain(dirs.iter())
                        .all(|n| &n["applied_version"] == v);
                let health = |id: &str| node_field(&s, id, "health");
                (all_applied
                    && up.iter().all(|id| health(id) == Some("up"))
                    && down.iter().all(|id| health(id) != Some("up")))
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

    async fn connect(&self) -> Result<Conn> {
        let tcp = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(vip()),
        )
        .await
        .context("connect timed out")?
        .context("connecting to the VIP")?;
        tcp.set_nodelay(true)?;
        Conn::handshake(tcp, &self.ca, false).await
    }

    async fn get_once(&self, path: &str) -> Result<Answer> {
        tokio::time::timeout(Duration::from_secs(10), async {
            self.connect().await?.get(path).await
        })
        .await
        .context("request timed out")?
    }

    fn load(&self, total: usize, per_conn: usize, path: &str) -> Load {
        let ca = self.ca.clone();
        let connect: ConnectFn = Arc::new(move |k| {
            let ca = ca.clone();
            Box::pin(async move {
                let tcp = tokio::net::TcpStream::connect(vip()).await?;
                tcp.set_nodelay(true)?;
                Ok((Conn::handshake(tcp, &ca, k % 2 == 1).await?, 0))
            })
        });
        let check: CheckFn = Arc::new(|a: &Answer| check_answer(a));
        Load::start(
            LoadSpec {
                total,
                concurrency: 3,
                per_conn,
                pause: Duration::ZERO,
                deadline: Duration::from_secs(90),
                path: path.into(),
            },
            connect,
            check,
        )
    }

    /// The director's /metrics, as name{labels} -> value.
    async fn metrics(&self) -> Result<BTreeMap<String, f64>> {
        let text = http_get(SocketAddr::from((DIRECTOR, DIRECTOR_ADMIN)), "/metrics").await?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect())
    }
}

/// A 200 from the app carrying the client's own address, which the node
/// took from the TCP peer (X-Forwarded-For), through some node.
fn check_answer(a: &Answer) -> Result<()> {
    ensure!(a.status == 200, "status {} body {}", a.status, a.body);
    let j = a.json();
    ensure!(
        j["client"] == CLIENT.to_string() && j["client_source"] == "x-forwarded-for",
        "app saw {j}"
    );
    ensure!(
        a.node.as_deref().is_some_and(|n| n.starts_with("node-")),
        "x-tandem-node {:?}",
        a.node
    );
    Ok(())
}

fn node_field<'a>(s: &'a Value, id: &str, field: &str) -> Option<&'a str> {
    s["nodes"].as_array()?.iter().find(|n| n["id"] == id)?[field].as_str()
}

fn metric(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        anyhow::Ok(body)
    })
    .await
    .context("GET timed out")?
}

fn assert_clean(report: &LoadReport) -> Result<()> {
    eprintln!("load: {}", report.summary());
    ensure!(
        report.failed == 0 && report.ok == report.total,
        "requests failed: {}",
        report.summary()
    );
    Ok(())
}

/// curl from the client namespace: the app saw the client's address.
async fn curl_sees_client(sys: &Sys<'_>) -> Result<()> {
    let Some(curl) = gate::peer("xdp curl", "curl", "curl") else {
        return Ok(());
    };
    let out = tokio::process::Command::new(&curl)
        .args(["-sS", "--fail", "--max-time", "10", "--cacert"])
        .arg(&sys.ca)
        .arg("--resolve")
        .arg(format!("localhost:{VIP_PORT}:{VIP}"))
        .arg("https://localhost/curl")
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        j["client"] == CLIENT.to_string() && j["client_source"] == "x-forwarded-for",
        "curl: app saw {j}"
    );
    Ok(())
}

/// 300 requests (keep-alive connections of 5, h1 and h2) all succeed with
/// the client's address; the director forwarded the client's packets and
/// received next to none of the replies; every node took a share.
async fn load_through_the_director(sys: &Sys<'_>) -> Result<()> {
    let client_ns = sys.lab.host("client")?.netns;
    let director_ns = sys.lab.host("director")?.netns;
    let m0 = sys.metrics().await?;
    let (c_rx0, c_tx0) = xdplab::link_packets(&client_ns, "eth0")?;
    let (d_rx0, d_tx0) = xdplab::link_packets(&director_ns, "eth0")?;
    let report = sys.load(300, 5, "/load").finish().await;
    let (c_rx1, c_tx1) = xdplab::link_packets(&client_ns, "eth0")?;
    let (d_rx1, d_tx1) = xdplab::link_packets(&director_ns, "eth0")?;
    let m1 = sys.metrics().await?;
    assert_clean(&report)?;
    ensure!(
        report.by_node.len() == NODES as usize,
        "not every node served: {:?}",
        report.by_node
    );
    let forwarded = metric(
        &m1,
        "tandem_director_xdp_service_packets_total{service=\"web\"}",
    ) - metric(
        &m0,
        "tandem_director_xdp_service_packets_total{service=\"web\"}",
    );
    let (client_tx, client_rx) = ((c_tx1 - c_tx0) as f64, (c_rx1 - c_rx0) as f64);
    let (dir_rx, dir_tx) = ((d_rx1 - d_rx0) as f64, (d_tx1 - d_tx0) as f64);
    eprintln!(
        "client sent {client_tx} and received {client_rx} packets; the director's eth0 \
         received {dir_rx} and sent {dir_tx}; its XDP program forwarded {forwarded}"
    );
    // Every client packet (but a few ARP) went through the director.
    ensure!(
        forwarded >= client_tx - 10.0 && forwarded <= client_tx,
        "director forwarded {forwarded} of the client's {client_tx} packets"
    );
    // Were the replies crossing the director, it would have received them
    // on top of what it forwarded; what it did receive beyond that is its
    // own traffic (health checks, ARP), far fewer.
    ensure!(
        client_rx > 500.0,
        "too few replies ({client_rx}) to show anything"
    );
    ensure!(
        dir_rx - forwarded < client_rx / 4.0,
        "the director received {} packets beyond those it forwarded, while the client \
         received {client_rx} replies: replies crossed it",
        dir_rx - forwarded
    );
    for i in 1..=NODES {
        let k = format!("tandem_director_xdp_node_packets_total{{node=\"node-{i}\"}}");
        ensure!(
            metric(&m1, &k) > metric(&m0, &k),
            "no packets counted for node-{i}"
        );
    }
    ensure!(
        metric(&m1, "tandem_director_xdp_flow_misses_total")
            - metric(&m0, "tandem_director_xdp_flow_misses_total")
            >= report.conns.len() as f64,
        "fewer flow misses than new connections"
    );
    // The same counters reach `tandemctl status` through control (the
    // director reports them every few seconds).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let s = sys.status().await?;
        let counts: Vec<(String, u64)> = (1..=NODES)
            .map(|i| {
                let id = format!("node-{i}");
                let n = s["nodes"]
                    .as_array()
                    .and_then(|ns| ns.iter().find(|n| n["id"] == id.as_str()))
                    .and_then(|n| n["forwarded_packets"].as_u64())
                    .unwrap_or(0);
                (id, n)
            })
            .collect();
        let seen: u64 = counts.iter().map(|(_, n)| n).sum();
        if counts.iter().all(|(_, n)| *n > 0) && seen as f64 >= forwarded * 0.9 {
            eprintln!("tandemctl status: forwarded packets per node {counts:?}");
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "tandemctl status never showed the forwarded packets: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// L2 DSR with the program in generic mode: curl and a load succeed with
/// the client's address and replies bypass the director; a node killed
/// with SIGKILL leaves the table and new connections all succeed.
#[test]
fn l2_dsr_generic_serves_the_client_directly_and_drops_a_killed_node() -> Result<()> {
    let setup = Setup {
        attach: xdp::AttachMode::Generic,
        forwarding: pb::XdpForwarding::L2Dsr,
    };
    scenario("xdp_l2_generic", setup, async |sys| {
        curl_sees_client(sys).await?;
        load_through_the_director(sys).await?;

        sys.lab.kill9("node-3")?;
        let up: Vec<String> = (1..=2).map(|i| format!("node-{i}")).collect();
        let s = sys
            .wait_converged(&up, &["node-3"], Duration::from_secs(20))
            .await?;
        eprintln!(
            "node-3 after kill -9: {:?}",
            s["nodes"]
                .as_array()
                .and_then(|n| n.iter().find(|n| n["id"] == "node-3"))
        );
        let report = sys.load(60, 1, "/after-kill").finish().await;
        assert_clean(&report)?;
        ensure!(
            !report.by_node.contains_key("node-3"),
            "a killed node served: {:?}",
            report.by_node
        );
        Ok(())
    })
}

/// L2 DSR in native mode: the same load; then a keep-alive connection
/// stays on its node when that node is drained (the flow table keeps it),
/// while new connections avoid it; and when a drained node comes back.
#[test]
fn l2_dsr_native_keeps_an_open_connection_through_a_drain() -> Result<()> {
    let setup = Setup {
        attach: xdp::AttachMode::Native,
        forwarding: pb::XdpForwarding::L2Dsr,
    };
    scenario("xdp_l2_native", setup, async |sys| {
        curl_sees_client(sys).await?;
        load_through_the_director(sys).await?;

        let mut conn = sys.connect().await?;
        let first = conn.get("/keepalive/1").await?;
        check_answer(&first)?;
        let node = first.node.clone().context("no node")?;
        let i: u32 = node
            .trim_start_matches("node-")
            .parse()
            .context("node id")?;
        sys.put(vec![change::Change::PutNode(Sys::node_resource(
            i,
            pb::NodeState::Draining,
        ))])
        .await?;
        let up: Vec<String> = (1..=NODES).map(|i| format!("node-{i}")).collect();
        sys.wait_converged(&up, &[], Duration::from_secs(20))
            .await?;
        let again = conn.get("/keepalive/2").await?;
        check_answer(&again)?;
        ensure!(
            again.node.as_deref() == Some(node.as_str()),
            "the open connection moved from {node} to {:?} when {node} was drained",
            again.node
        );
        let report = sys.load(30, 1, "/after-drain").finish().await;
        assert_clean(&report)?;
        ensure!(
            !report.by_node.contains_key(&node),
            "new connections reached the drained {node}: {:?}",
            report.by_node
        );
        // Back to active: it takes new connections again, and the open
        // connection is still on it.
        sys.put(vec![change::Change::PutNode(Sys::node_resource(
            i,
            pb::NodeState::Active,
        ))])
        .await?;
        sys.wait_converged(&up, &[], Duration::from_secs(20))
            .await?;
        let third = conn.get("/keepalive/3").await?;
        ensure!(third.node.as_deref() == Some(node.as_str()), "{third:?}");
        let report = sys.load(60, 1, "/after-return").finish().await;
        assert_clean(&report)?;
        ensure!(
            report.by_node.contains_key(&node),
            "{node} took no new connection after it returned: {:?}",
            report.by_node
        );
        // SIGTERM: the director detaches its program from eth0.
        let ns = sys.lab.host("director")?.netns;
        let attached = || xdplab::exec_in(&ns, "ip", &["link", "show", "eth0"]);
        ensure!(attached()?.contains("prog/xdp"), "no program on eth0");
        sys.lab.signal(
            "director",
            nix::sys::signal::Signal::SIGTERM,
            Duration::from_secs(10),
        )?;
        let after = attached()?;
        ensure!(
            !after.contains("prog/xdp") && !after.contains(" xdp"),
            "XDP program still attached after the director exited: {after}"
        );
        Ok(())
    })
}

/// IPIP: the director encapsulates, each node's decap program (generic
/// mode) strips the outer header; requests succeed with the client's
/// address and bypass the director on the way back.
#[test]
fn ipip_with_decap_on_the_nodes() -> Result<()> {
    encapsulated("xdp_ipip", pb::XdpForwarding::Ipip)
}

/// The same with GUE (IP in UDP to port 6080).
#[test]
fn gue_with_decap_on_the_nodes() -> Result<()> {
    encapsulated("xdp_gue", pb::XdpForwarding::Gue)
}

fn encapsulated(name: &str, forwarding: pb::XdpForwarding) -> Result<()> {
    let setup = Setup {
        attach: xdp::AttachMode::Generic,
        forwarding,
    };
    scenario(name, setup, async |sys| {
        curl_sees_client(sys).await?;
        load_through_the_director(sys).await?;
        // The requests could only reach the VIP through the decap program
        // (the kernel here has no IPIP module); each node says on exit how
        // many packets it decapsulated.
        let mut total = 0u64;
        for i in 1..=NODES {
            let name = format!("node-{i}");
            sys.lab.signal(
                &name,
                nix::sys::signal::Signal::SIGTERM,
                Duration::from_secs(10),
            )?;
            let log = std::fs::read_to_string(sys.lab.dir.path().join(format!("{name}.log")))?;
            let n = decapsulated(&log).with_context(|| format!("{name} logged no decap count"))?;
            eprintln!("{name} decapsulated {n} packets");
            ensure!(n > 0, "{name} decapsulated nothing");
            total += n;
        }
        ensure!(total > 900, "only {total} packets were decapsulated");
        Ok(())
    })
}

/// The `decapsulated=N` of a node's exit log line (colour codes stripped).
fn decapsulated(log: &str) -> Option<u64> {
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let at = plain.rfind("decapsulated=")? + "decapsulated=".len();
    plain[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
