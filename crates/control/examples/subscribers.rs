//! Control-plane fan-out benchmark: N watch subscribers (the real
//! `control-api` client, one connection each) against a control service
//! running in a child process with its durable store (redb, fsync per
//! change) and bearer tokens.
//!
//! For each of ROUNDS admin changes it measures the time from sending the
//! Apply to (a) every subscriber having applied the new version (seen in
//! the subscribers' own apply callback; each ACKs right after) and (b)
//! control's Status reporting every subscriber ACKed it. Memory: control's
//! VmRSS (from /proc/PID/status) with 0 and with N subscribers connected.
//!
//! `cargo run --release -p control --example subscribers -- [N] [ROUNDS] [--tls] [--nodes=K]`
//! (`--tls`: the control port uses mTLS, each subscriber its own client
//! certificate `spiffe://tandem/subscriber/node-I`; `--nodes=K`: K nodes in
//! the state, default N, each node-tier subscriber receiving all of them).
//! Also prints control's CPU time over the measured changes (utime+stime
//! from /proc/PID/stat), to tell its share from the subscribers' (which run
//! in this process). `BENCH_DEBUG=1` prints each Status poll of each round.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use control_api::pb::{self, Change, StatusRequest, Tier, admin_client::AdminClient, change};
use control_api::tls::ClientTls;
use control_api::watch::{self, Subscription, WatchOptions, WatchState};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const SUB_TOKEN: &str = "bench-subscriber-token-012345";

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        return serve(&args[2..]);
    }
    let rest: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with("--")).collect();
    let n: usize = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let rounds: u32 = rest.get(1).map(|s| s.parse()).transpose()?.unwrap_or(50);
    let tls = args.iter().any(|a| a == "--tls");
    let nodes: usize = args
        .iter()
        .find_map(|a| a.strip_prefix("--nodes="))
        .map(str::parse)
        .transpose()?
        .unwrap_or(n);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(bench(n, rounds, tls, nodes.max(1)))
}

/// The child: `--serve PORT DATA_DIR [CERT KEY CA]`.
fn serve(args: &[String]) -> Result<(), BoxError> {
    let port: u16 = args.first().ok_or("port")?.parse()?;
    let dir = std::path::PathBuf::from(args.get(1).ok_or("data dir")?);
    let tls = match (args.get(2), args.get(3), args.get(4)) {
        (Some(c), Some(k), Some(ca)) => Some(control::TlsFiles {
            cert: c.into(),
            key: k.into(),
            client_ca: Some(ca.into()),
        }),
        _ => None,
    };
    let config = control::ControlConfig {
        listen: ([127, 0, 0, 1], port).into(),
        admin_token_file: Some(dir.join("admin.tokens")),
        subscriber_token_file: Some(dir.join("subscriber.tokens")),
        tls,
        data_dir: dir.join("data"),
        ..control::ControlConfig::default()
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let stop = tokio_util::sync::CancellationToken::new();
            control::run(config, stop).await
        })?;
    Ok(())
}

/// Kills the child on the way out, whatever happens.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or("VmRSS format")?
        .parse()?)
}

/// utime + stime of `pid`, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> Result<u64, BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').ok_or("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = f.get(11).ok_or("utime")?.parse()?;
    let stime: u64 = f.get(12).ok_or("stime")?.parse()?;
    Ok(utime + stime)
}

struct Pki {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Result<Pki, BoxError> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        Ok(Pki {
            issuer: rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate()?)?,
        })
    }

    fn leaf(&self, uri: Option<&str>, ip: bool) -> Result<(Vec<u8>, Vec<u8>), BoxError> {
        let key = rcgen::KeyPair::generate()?;
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        if ip {
            p.subject_alt_names
                .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        }
        if let Some(u) = uri {
            p.subject_alt_names.push(rcgen::SanType::URI(u.try_into()?));
        }
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok((cert.pem().into_bytes(), key.serialize_pem().into_bytes()))
    }
}

fn node_change(id: &str, weight: u32) -> Change {
    Change {
        change: Some(change::Change::PutNode(pb::Node {
            id: id.into(),
            address: "127.0.0.1:10000".into(),
            weight,
            pool: "default".into(),
            ..Default::default()
        })),
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn bench(n: usize, rounds: u32, tls: bool, nodes: usize) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("admin.tokens"),
        format!("bench {ADMIN_TOKEN}\n"),
    )?;
    std::fs::write(
        dir.path().join("subscriber.tokens"),
        format!("fleet {SUB_TOKEN}\n"),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("--serve").arg(port.to_string()).arg(dir.path());
    let pki = if tls { Some(Pki::new()?) } else { None };
    if let Some(pki) = &pki {
        let (c, k) = pki.leaf(None, true)?;
        std::fs::write(dir.path().join("server.pem"), c)?;
        std::fs::write(dir.path().join("server.key"), k)?;
        std::fs::write(dir.path().join("ca.pem"), pki.issuer.pem())?;
        cmd.arg(dir.path().join("server.pem"))
            .arg(dir.path().join("server.key"))
            .arg(dir.path().join("ca.pem"));
    }
    let child = Child(cmd.spawn()?);
    let pid = child.0.id();
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{port}");
    let admin_tls = match &pki {
        Some(p) => Some(ClientTls {
            ca_pem: Some(p.issuer.pem().into_bytes()),
            identity: Some(p.leaf(Some("spiffe://tandem/admin/bench"), false)?),
            domain: None,
        }),
        None => None,
    };
    let endpoint = control_api::tls::endpoint(&url, admin_tls.as_ref())?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let channel = loop {
        match endpoint.connect().await {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let interceptor = control_api::auth::BearerInterceptor::new(ADMIN_TOKEN)?;
    let mut admin = AdminClient::with_interceptor(channel, interceptor);
    let apply = |changes: Vec<Change>| pb::ApplyRequest {
        changes,
        expected_version: 0,
    };
    admin
        .apply(apply(
            (0..nodes)
                .map(|i| node_change(&format!("node-{i}"), 100))
                .collect(),
        ))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = rss_kib(pid)?;

    let target = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let applied = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..n {
        let id = format!("node-{i}");
        let mut options = WatchOptions::with_token(SUB_TOKEN);
        if let Some(p) = &pki {
            options.tls = Some(ClientTls {
                ca_pem: Some(p.issuer.pem().into_bytes()),
                identity: Some(p.leaf(Some(&format!("spiffe://tandem/subscriber/{id}")), false)?),
                domain: None,
            });
        }
        let (target, applied) = (target.clone(), applied.clone());
        tasks.push(tokio::spawn(watch::run_with_options(
            Subscription {
                endpoint: url.clone(),
                id,
                tier: Tier::Node,
            },
            Arc::new(WatchState::default()),
            options,
            move |s: &pb::Snapshot| {
                if s.version == target.load(Ordering::Acquire) {
                    applied.fetch_add(1, Ordering::AcqRel);
                }
                Ok(())
            },
        )));
    }
    let all_acked = |st: &pb::StatusResponse, v: u64| {
        st.subscribers.len() >= n
            && st
                .subscribers
                .iter()
                .filter(|s| s.connected && s.acked_version == v)
                .count()
                == n
    };
    let v0 = admin.status(StatusRequest {}).await?.into_inner().version;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = admin.status(StatusRequest {}).await?.into_inner();
        if all_acked(&st, v0) {
            break;
        }
        if Instant::now() > deadline {
            return Err(
                format!("{n} subscribers not all connected at version {v0} in 120 s").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_n = rss_kib(pid)?;

    let cpu0 = cpu_ticks(pid)?;
    let mut to_applied = Vec::new();
    let mut to_acked = Vec::new();
    for r in 0..rounds {
        let expected = v0 + u64::from(r) + 1;
        applied.store(0, Ordering::Release);
        target.store(expected, Ordering::Release);
        let start = Instant::now();
        let v = admin
            .apply(apply(vec![node_change("node-0", 101 + r)]))
            .await?
            .into_inner()
            .version;
        if v != expected {
            return Err(format!(
                "version {v}, expected {expected}: someone else changed the state"
            )
            .into());
        }
        let limit = start + Duration::from_secs(30);
        while applied.load(Ordering::Acquire) < n {
            if Instant::now() > limit {
                return Err(format!("version {v} not applied by all {n} in 30 s").into());
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        to_applied.push(start.elapsed());
        let mut polls = Vec::new();
        loop {
            let t0 = start.elapsed();
            let st = admin.status(StatusRequest {}).await?.into_inner();
            if std::env::var_os("BENCH_DEBUG").is_some() {
                let k = st
                    .subscribers
                    .iter()
                    .filter(|s| s.acked_version == v)
                    .count();
                polls.push(format!(
                    "{:.1}+{:.1}:{k}",
                    t0.as_secs_f64() * 1e3,
                    (start.elapsed() - t0).as_secs_f64() * 1e3
                ));
            }
            if all_acked(&st, v) {
                break;
            }
            if Instant::now() > limit {
                return Err(format!("version {v} not ACKed by all {n} in 30 s").into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        to_acked.push(start.elapsed());
        if !polls.is_empty() {
            eprintln!(
                "round {r}: applied {:?}; polls {}",
                to_applied.last(),
                polls.join(" ")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu_ticks(pid)? - cpu0;
    to_applied.sort();
    to_acked.sort();
    println!(
        "{n} subscribers{}, {nodes} nodes, {rounds} changes: apply -> applied by all: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; apply -> Status shows all ACKed: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        if tls { " (mTLS)" } else { "" },
        pct(&to_applied, 0.5).as_secs_f64() * 1e3,
        pct(&to_applied, 0.99).as_secs_f64() * 1e3,
        to_applied[to_applied.len() - 1].as_secs_f64() * 1e3,
        pct(&to_acked, 0.5).as_secs_f64() * 1e3,
        pct(&to_acked, 0.99).as_secs_f64() * 1e3,
        to_acked[to_acked.len() - 1].as_secs_f64() * 1e3,
    );
    println!(
        "control VmRSS: {rss0} KiB with 0 subscribers, {rss_n} KiB with {n}: {:.1} KiB per subscriber",
        (rss_n.saturating_sub(rss0)) as f64 / n as f64
    );
    println!(
        "control CPU over the {rounds} changes: {:.0} ms ({:.1} ms per change)",
        cpu as f64 * 10.0,
        cpu as f64 * 10.0 / f64::from(rounds)
    );
    for t in tasks {
        t.abort();
    }
    drop(child);
    Ok(())
}
