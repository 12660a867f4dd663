//! The whole two-tier path on one machine, as a user drives it: `tandem up`,
//! real TLS clients (ours and curl) through the VIP, `tandemctl` to drain a
//! node, and restarts of control and of `up` itself.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tandem_tests::{Conn, Up, children_of, eventually, free_port_block, get_once, tandemctl};

fn status(dir: &Path) -> Result<serde_json::Value> {
    let out = tandemctl(dir, &["status", "-o", "json"])?;
    serde_json::from_str(&out).with_context(|| format!("tandemctl status -o json printed: {out}"))
}

/// Every node and director has applied the newest version.
fn converged(s: &serde_json::Value) -> bool {
    let v = &s["version"];
    let all = s["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(s["directors"].as_array().into_iter().flatten());
    let mut n = 0;
    for sub in all {
        n += 1;
        if sub["connected"] != true || &sub["applied_version"] != v {
            return false;
        }
    }
    n > 0
}

fn node_state(s: &serde_json::Value, id: &str) -> Option<String> {
    s["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"] == id)
        .and_then(|n| n["state"].as_str())
        .map(str::to_string)
}

async fn wait_converged(dir: &Path) -> Result<serde_json::Value> {
    let d = dir.to_path_buf();
    eventually(
        "all subscribers on the newest version",
        Duration::from_secs(20),
        || {
            let d = d.clone();
            async move { status(&d).ok().filter(converged) }
        },
    )
    .await
}

/// Which nodes `n` new connections reach.
async fn spread(vip: SocketAddr, ca: &Path, n: usize) -> Result<BTreeMap<String, usize>> {
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let a = get_once(vip, ca, i % 2 == 0, "/").await?;
        ensure!(
            a.status == 200,
            "request {i}: status {} body {}",
            a.status,
            a.body
        );
        *seen
            .entry(a.node.context("x-tandem-node header missing")?)
            .or_insert(0) += 1;
    }
    Ok(seen)
}

fn curl(ca: &Path, url: &str, http: &str) -> Result<serde_json::Value> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", http, "--cacert"])
        .arg(ca)
        .arg(url)
        .output()
        .context("running curl (install it: apt-get install curl)")?;
    ensure!(
        out.status.success(),
        "curl {http} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tier_path_end_to_end() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let base = free_port_block(91);
    let vip_port = free_port_block(1);
    let vip: SocketAddr = format!("127.0.0.1:{vip_port}").parse()?;
    let mut up = Up::start(dir, vip, base, &[])?;
    let ca = up.ca_pem();

    // 1. Through the VIP over http/1.1 and h2: the app saw the client's own
    //    address, and the node that terminated TLS says who it is.
    for h2 in [false, true] {
        let mut conn = Conn::open(vip, &ca, h2).await?;
        ensure!(
            conn.alpn.as_deref() == Some(if h2 { &b"h2"[..] } else { &b"http/1.1"[..] }),
            "ALPN {:?}",
            conn.alpn
        );
        let a = conn.get("/hello?x=1").await?;
        ensure!(a.status == 200, "status {} body {}", a.status, a.body);
        let j = a.json();
        ensure!(j["client"] == "127.0.0.1", "app saw client {}", j["client"]);
        ensure!(j["client_source"] == "x-forwarded-for", "{j}");
        ensure!(j["x_forwarded_proto"] == "https", "{j}");
        ensure!(j["path"] == "/hello", "{j}");
        ensure!(
            j["instance"]
                .as_str()
                .is_some_and(|i| i.starts_with("app-")),
            "{j}"
        );
        ensure!(
            a.node.as_deref().is_some_and(|n| n.starts_with("node-")),
            "node header {:?}",
            a.node
        );
    }
    // The PROXY v2 route: the app read the client address from a PROXY header.
    let a = get_once(vip, &ca, true, "/pp/whoami").await?;
    let j = a.json();
    ensure!(
        j["client_source"] == "proxy-protocol" && j["client"] == "127.0.0.1",
        "{j}"
    );
    ensure!(j["proxy_protocol"]["authority"] == "localhost", "{j}");

    // A real peer: curl, both protocols.
    let url = format!("https://localhost:{vip_port}/");
    for http in ["--http1.1", "--http2"] {
        let j = curl(&ca, &url, http)?;
        ensure!(j["client"] == "127.0.0.1", "curl {http}: {j}");
    }

    // 2. Twenty new connections spread over all three nodes.
    let seen = spread(vip, &ca, 20).await?;
    ensure!(seen.len() == 3, "20 connections reached only {seen:?}");

    // 3. Drain node-2 while a keep-alive connection through it is open.
    let mut through_2 = None;
    for _ in 0..60 {
        let mut c = Conn::open(vip, &ca, false).await?;
        if c.get("/").await?.node.as_deref() == Some("node-2") {
            through_2 = Some(c);
            break;
        }
    }
    let mut kept = through_2.context("no connection reached node-2 in 60 tries")?;
    let out = tandemctl(dir, &["node", "drain", "node-2"])?;
    ensure!(out.contains("DRAINING"), "tandemctl node drain said: {out}");
    let s = wait_converged(dir).await?;
    ensure!(
        node_state(&s, "node-2").as_deref() == Some("DRAINING"),
        "status: {s}"
    );
    for _ in 0..3 {
        let a = kept.get("/still-here").await?;
        ensure!(
            a.status == 200 && a.node.as_deref() == Some("node-2"),
            "kept connection: {a:?}"
        );
    }
    let seen = spread(vip, &ca, 20).await?;
    ensure!(
        !seen.contains_key("node-2"),
        "new connections still reach the draining node: {seen:?}"
    );
    drop(kept);

    // Table output names the state too.
    let table = tandemctl(dir, &["status"])?;
    ensure!(
        table
            .lines()
            .any(|l| l.contains("node-2") && l.contains("DRAINING")),
        "status table:\n{table}"
    );

    // 4. Kill -9 control: `up` restarts it, and the change is still there.
    let kids = up.children();
    let (control_pid, _) = kids
        .iter()
        .find(|(_, cmd)| cmd.contains(" control "))
        .context("control child")?
        .clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(control_pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let s = eventually(
        "control back after kill -9",
        Duration::from_secs(30),
        || {
            let d = dir.to_path_buf();
            async move {
                status(&d)
                    .ok()
                    .filter(|s| node_state(s, "node-2").as_deref() == Some("DRAINING"))
            }
        },
    )
    .await?;
    let version_before_restart = s["version"].clone();
    wait_converged(dir).await?;
    let seen = spread(vip, &ca, 6).await?;
    ensure!(
        !seen.contains_key("node-2"),
        "after control restart: {seen:?}"
    );

    // 5. Ctrl-C: everything drains and stops; no process is left behind.
    let kids: BTreeSet<i32> = up.children().into_iter().map(|(p, _)| p).collect();
    ensure!(
        kids.len() == 1 + 1 + 3 + 2,
        "expected 7 children, found {kids:?}"
    );
    let status_code = up.stop()?;
    ensure!(status_code.success(), "tandem up exited with {status_code}");
    for pid in &kids {
        ensure!(
            !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(*pid),
            "child {pid} still running after stop"
        );
    }
    ensure!(
        get_once(vip, &ca, false, "/").await.is_err(),
        "VIP still answers after stop"
    );
    drop(up);

    // 6. Restart `up` on the same data dir: same CA, same state.
    let up = Up::start(dir, vip, base, &[])?;
    let s = wait_converged(dir).await?;
    ensure!(
        node_state(&s, "node-2").as_deref() == Some("DRAINING"),
        "after restart: {s}"
    );
    ensure!(
        s["version"] == version_before_restart,
        "restart changed the state: {} -> {}",
        version_before_restart,
        s["version"]
    );
    let seen = spread(vip, &ca, 10).await?;
    ensure!(
        !seen.contains_key("node-2") && !seen.is_empty(),
        "after restart: {seen:?}"
    );
    ensure!(
        children_of(up.child.id() as i32).len() == 7,
        "children after restart"
    );
    Ok(())
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}
