//! The etcd store, and two control instances sharing one state through it.
//!
//! Each test starts its own `etcd` (Debian's `etcd-server`) on loopback with
//! free ports and a temporary data directory, and kills it by PID when done.
//! Without `/usr/bin/etcd` the tests skip with a printed reason, unless
//! `TANDEM_REQUIRE_PEERS=1` (CI) makes that a failure.

use std::collections::BTreeSet;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::{EtcdConfig, EtcdStore, State, Store, StoreError, StoreEvent};
use control_api::pb::{
    self, AuditRecord, Change, GetStateRequest, Snapshot, StatusRequest, Tier,
    admin_client::AdminClient, change,
};
use control_api::watch::{Subscription, WatchOptions, WatchState};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------- etcd

/// `/usr/bin/etcd` (or `etcd` on the PATH), or `None` after printing why
/// the test skips; panics instead when `TANDEM_REQUIRE_PEERS=1`.
fn etcd_binary(test: &str) -> Option<PathBuf> {
    let candidates = std::iter::once(PathBuf::from("/usr/bin/etcd")).chain(
        std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join("etcd"))
            .collect::<Vec<_>>(),
    );
    for c in candidates {
        if c.is_file() {
            return Some(c);
        }
    }
    let required = std::env::var("TANDEM_REQUIRE_PEERS").is_ok_and(|v| v == "1");
    let reason = "etcd not found (apt-get install etcd-server)";
    if required {
        panic!("{test}: cannot run: {reason} (TANDEM_REQUIRE_PEERS=1 forbids skipping)");
    }
    eprintln!("SKIPPED {test}: {reason} (set TANDEM_REQUIRE_PEERS=1 to make this a failure)");
    None
}

fn free_port() -> std::io::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One etcd member on loopback. Killed (SIGKILL) and reaped on drop.
struct Etcd {
    binary: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Etcd {
    fn start(binary: PathBuf) -> Result<Etcd, BoxError> {
        let mut etcd = Etcd {
            binary,
            dir: tempfile::tempdir()?,
            client_port: free_port()?,
            peer_port: free_port()?,
            child: None,
        };
        etcd.spawn()?;
        Ok(etcd)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn config(&self, prefix: &str) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![self.url()],
            prefix: prefix.to_string(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(3),
        }
    }

    /// Starts etcd on the data directory (again, after a kill) and waits
    /// until it answers `/health`.
    fn spawn(&mut self) -> Result<(), BoxError> {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))?;
        let child = Command::new(&self.binary)
            .arg("--name=tandem-test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={}", self.url()))
            .arg(format!("--advertise-client-urls={}", self.url()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=tandem-test={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.healthy() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                let log = std::fs::read_to_string(self.dir.path().join("etcd.log"))?;
                return Err(format!("etcd exited with {status}:\n{log}").into());
            }
            if Instant::now() > deadline {
                return Err("etcd did not become healthy within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    /// SIGKILL, and reap it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------- control

/// One control instance serving on loopback, its state in etcd.
struct Instance {
    url: String,
    state: Arc<State>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), control::ControlError>>,
}

impl Instance {
    async fn start(config: EtcdConfig) -> Result<Instance, BoxError> {
        let store = EtcdStore::connect(&config)?;
        let state =
            tokio::task::spawn_blocking(move || State::with_store(Arc::new(store))).await??;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(control::serve(listener, state.clone(), shutdown.clone()));
        Ok(Instance {
            url,
            state,
            shutdown,
            task,
        })
    }

    async fn admin(&self) -> Result<AdminClient<Channel>, BoxError> {
        Ok(AdminClient::connect(self.url.clone()).await?)
    }

    /// Stops serving (its watch streams end) and drops its state.
    async fn stop(self) -> Result<(), BoxError> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await???;
        Ok(())
    }

    fn metric(&self, name: &str) -> Result<f64, BoxError> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.state.registry())?;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .ok_or_else(|| format!("metric {name} not found in:\n{text}").into())
    }
}

fn node(id: &str, port: u16) -> Change {
    Change {
        change: Some(change::Change::PutNode(pb::Node {
            id: id.into(),
            address: format!("127.0.0.1:{port}"),
            weight: 100,
            state: pb::NodeState::Active as i32,
            pool: "default".into(),
            ..Default::default()
        })),
    }
}

async fn apply(
    admin: &mut AdminClient<Channel>,
    changes: Vec<Change>,
    expected_version: u64,
) -> Result<u64, tonic::Status> {
    admin
        .apply(pb::ApplyRequest {
            changes,
            expected_version,
        })
        .await
        .map(|r| r.into_inner().version)
}

fn node_ids(s: &Snapshot) -> BTreeSet<String> {
    s.nodes.iter().map(|n| n.id.clone()).collect()
}

/// A director-tier subscriber (sees nodes) run by the real watch client;
/// `config` holds the last snapshot it applied.
struct Subscriber {
    config: tokio::sync::watch::Receiver<Option<Snapshot>>,
    watch: Arc<WatchState>,
    task: JoinHandle<()>,
}

impl Subscriber {
    fn start(id: &str, endpoints: &[&str]) -> Subscriber {
        let (tx, config) = tokio::sync::watch::channel(None);
        let watch = Arc::new(WatchState::default());
        let sub = Subscription {
            endpoint: endpoints[0].to_string(),
            id: id.to_string(),
            tier: Tier::Director,
        };
        let options = WatchOptions {
            fallback_endpoints: endpoints[1..].iter().map(|e| e.to_string()).collect(),
            ..WatchOptions::default()
        };
        let task = tokio::spawn(control_api::watch::run_with_options(
            sub,
            watch.clone(),
            options,
            move |s: &Snapshot| {
                tx.send_replace(Some(s.clone()));
                Ok(())
            },
        ));
        Subscriber {
            config,
            watch,
            task,
        }
    }

    /// Waits (bounded) until the applied config satisfies `ok`.
    async fn wait_for(
        &mut self,
        what: &str,
        ok: impl Fn(&Snapshot) -> bool,
    ) -> Result<Snapshot, BoxError> {
        let result = {
            let wait = self.config.wait_for(|c| c.as_ref().is_some_and(&ok));
            match tokio::time::timeout(Duration::from_secs(15), wait).await {
                Ok(Ok(s)) => Some(Ok(s.clone().unwrap_or_default())),
                Ok(Err(_)) => Some(Err("subscriber stopped")),
                Err(_) => None,
            }
        };
        match result {
            Some(Ok(s)) => Ok(s),
            Some(Err(e)) => Err(e.into()),
            None => Err(format!(
                "subscriber never saw {what}; it has {:?}",
                self.config
                    .borrow()
                    .as_ref()
                    .map(|s| (s.version, node_ids(s)))
            )
            .into()),
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn sample(version: u64, nodes: &[&str]) -> Snapshot {
    Snapshot {
        version,
        nodes: nodes
            .iter()
            .enumerate()
            .map(|(i, id)| pb::Node {
                id: (*id).into(),
                address: format!("127.0.0.1:{}", 9000 + i),
                weight: 100,
                pool: "default".into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn record(version: u64, who: &str) -> AuditRecord {
    AuditRecord {
        version,
        who: who.into(),
        changes: vec![format!("change {version}")],
        ..Default::default()
    }
}

/// Runs a blocking store call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, BoxError> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

/// Polls `Status` (bounded) until `ok`.
async fn wait_for_status(
    admin: &mut AdminClient<Channel>,
    what: &str,
    ok: impl Fn(&pb::StatusResponse) -> bool,
) -> Result<pb::StatusResponse, BoxError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = admin.status(StatusRequest::default()).await?.into_inner();
        if ok(&status) {
            return Ok(status);
        }
        if Instant::now() > deadline {
            return Err(format!("status never showed {what}: {status:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- tests

/// The [`Store`] contract on etcd: round trip, audit order, a stale base
/// refused with the version found, two clients of one prefix, prefixes
/// kept apart, and the watch reporting the other client's commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_conformance() -> Result<(), BoxError> {
    let Some(bin) = etcd_binary("etcd_store_conformance") else {
        return Ok(());
    };
    let etcd = Etcd::start(bin)?;
    let one = Arc::new(EtcdStore::connect(&etcd.config("/t"))?);
    let two = Arc::new(EtcdStore::connect(&etcd.config("/t/"))?);
    let other = Arc::new(EtcdStore::connect(&etcd.config("/elsewhere"))?);

    let s = one.clone();
    assert_eq!(blocking(move || s.load()).await?, None);
    let s = one.clone();
    blocking(move || s.commit(0, &sample(1, &["a"]), &record(1, "alice"))).await?;
    let s = one.clone();
    assert_eq!(blocking(move || s.load()).await?, Some(sample(1, &["a"])));

    // Same base again: refused, and told what is stored.
    let s = one.clone();
    let stale = blocking(move || s.commit(0, &sample(1, &["b"]), &record(1, "bob"))).await;
    let e = stale.err().ok_or("a commit on a stale base succeeded")?;
    let e = e.downcast::<StoreError>()?;
    assert!(
        matches!(
            *e,
            StoreError::Conflict {
                base: 0,
                current: 1
            }
        ),
        "{e}"
    );

    let mut events = two.watch().ok_or("etcd store offers no watch")?;
    assert!(two.watch().is_none(), "watch() is handed out once");
    // The watch starts with what is stored.
    let first = tokio::time::timeout(Duration::from_secs(10), events.recv()).await?;
    assert_eq!(
        first,
        Some(StoreEvent::Snapshot(Box::new(sample(1, &["a"]))))
    );

    let s = one.clone();
    blocking(move || s.commit(1, &sample(2, &["a", "b"]), &record(2, "alice"))).await?;
    // The other client of the same prefix sees it, by load and by watch.
    let next = tokio::time::timeout(Duration::from_secs(10), events.recv()).await?;
    assert_eq!(
        next,
        Some(StoreEvent::Snapshot(Box::new(sample(2, &["a", "b"]))))
    );
    let s = two.clone();
    assert_eq!(
        blocking(move || s.load()).await?,
        Some(sample(2, &["a", "b"]))
    );
    // It commits on version 2; the first client, still at 2, is refused.
    let s = two.clone();
    blocking(move || s.commit(2, &sample(3, &["c"]), &record(3, "carol"))).await?;
    let s = one.clone();
    let e = blocking(move || s.commit(2, &sample(3, &["d"]), &record(3, "dave")))
        .await
        .err()
        .ok_or("two commits on version 2 both succeeded")?
        .downcast::<StoreError>()?;
    assert!(
        matches!(
            *e,
            StoreError::Conflict {
                base: 2,
                current: 3
            }
        ),
        "{e}"
    );
    // Having learnt version 3 from the refusal, it commits on it.
    let s = one.clone();
    blocking(move || s.commit(3, &sample(4, &["d"]), &record(4, "dave"))).await?;

    let s = two.clone();
    let audit = blocking(move || s.audit(10)).await?;
    let who: Vec<(u64, &str)> = audit.iter().map(|r| (r.version, r.who.as_str())).collect();
    assert_eq!(
        who,
        vec![(4, "dave"), (3, "carol"), (2, "alice"), (1, "alice")]
    );
    let s = two.clone();
    assert_eq!(blocking(move || s.audit(2)).await?.len(), 2);

    // A state over etcd's request limit (1.5 MiB by default) is refused
    // for what it is, not as "unavailable", and nothing changes.
    let mut huge = sample(5, &["d"]);
    huge.nodes[0].pool = "p".repeat(1_800_000);
    let s = one.clone();
    let e = blocking(move || s.commit(4, &huge, &record(5, "eve")))
        .await
        .err()
        .ok_or("a 1.8 MB state was accepted")?
        .downcast::<StoreError>()?;
    assert!(
        matches!(&*e, StoreError::Backend { reason, .. } if reason.contains("too large")),
        "{e}"
    );
    let s = two.clone();
    assert_eq!(blocking(move || s.load()).await?, Some(sample(4, &["d"])));

    // Another prefix is another state.
    let s = other.clone();
    assert_eq!(blocking(move || s.load()).await?, None);
    let s = other.clone();
    assert!(blocking(move || s.audit(10)).await?.is_empty());
    Ok(())
}

/// A change through instance A reaches a subscriber of instance B, whose
/// reads show it at the same version; and the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_through_one_instance_reaches_subscribers_of_another() -> Result<(), BoxError> {
    let Some(bin) = etcd_binary("change_through_one_instance_reaches_subscribers_of_another")
    else {
        return Ok(());
    };
    let etcd = Etcd::start(bin)?;
    let a = Instance::start(etcd.config("/tandem")).await?;
    let b = Instance::start(etcd.config("/tandem")).await?;
    let mut on_b = Subscriber::start("director-b", &[&b.url]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !on_b.watch.connected() {
        if Instant::now() > deadline {
            return Err("the subscriber never connected to B".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut admin_a = a.admin().await?;
    let mut admin_b = b.admin().await?;
    assert_eq!(apply(&mut admin_a, vec![node("n1", 9001)], 0).await?, 1);
    let seen = on_b.wait_for("n1 at version 1", |s| s.version == 1).await?;
    assert_eq!(node_ids(&seen), BTreeSet::from(["n1".to_string()]));
    let state_b = admin_b
        .get_state(GetStateRequest::default())
        .await?
        .into_inner();
    let state_a = admin_a
        .get_state(GetStateRequest::default())
        .await?
        .into_inner();
    assert_eq!(state_b, state_a);
    assert_eq!(state_b.version, 1);
    assert_eq!(b.metric("tandem_control_state_reloaded_total")?, 1.0);

    // B's own change: version 2 everywhere, A's base moves on too.
    assert_eq!(apply(&mut admin_b, vec![node("n2", 9002)], 1).await?, 2);
    let mut on_a = Subscriber::start("director-a", &[&a.url]);
    let seen = on_a.wait_for("version 2 on A", |s| s.version == 2).await?;
    assert_eq!(node_ids(&seen).len(), 2);
    // A change based on version 2 through A is accepted: A caught up.
    assert_eq!(apply(&mut admin_a, vec![node("n3", 9003)], 2).await?, 3);
    on_b.wait_for("version 3 on B", |s| s.version == 3).await?;

    // The audit trail is shared, and so is subscriber status: each instance
    // lists its own subscribers and those of the other (published to etcd).
    let audit = admin_b
        .list_audit(pb::ListAuditRequest { limit: 10 })
        .await?
        .into_inner();
    let versions: Vec<u64> = audit.records.iter().map(|r| r.version).collect();
    assert_eq!(versions, vec![3, 2, 1]);
    for admin in [&mut admin_a, &mut admin_b] {
        let status = wait_for_status(admin, "both subscribers, connected, at version 3", |s| {
            s.subscribers.len() == 2
                && s.subscribers
                    .iter()
                    .all(|e| e.connected && e.acked_version == 3)
        })
        .await?;
        assert_eq!(status.version, 3);
        let ids: Vec<&str> = status.subscribers.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, vec!["director-a", "director-b"]);
    }

    drop(on_a);
    drop(on_b);
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

/// Changes sent through A and B at the same time: every change that was
/// acknowledged is in the final state, which both instances agree on, and
/// versions are unique. Two changes naming the same base: one wins, the
/// other is refused with ABORTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_through_two_instances_lose_nothing() -> Result<(), BoxError> {
    let Some(bin) = etcd_binary("concurrent_changes_through_two_instances_lose_nothing") else {
        return Ok(());
    };
    let etcd = Etcd::start(bin)?;
    let a = Instance::start(etcd.config("/tandem")).await?;
    let b = Instance::start(etcd.config("/tandem")).await?;

    const PER_INSTANCE: u16 = 12;
    let mut tasks = Vec::new();
    for (name, url) in [("a", a.url.clone()), ("b", b.url.clone())] {
        tasks.push(tokio::spawn(async move {
            let mut admin = AdminClient::connect(url).await?;
            let mut results = Vec::new();
            for i in 0..PER_INSTANCE {
                let id = format!("{name}{i}");
                let port = if name == "a" { 10_000 } else { 20_000 } + i;
                results.push((
                    id.clone(),
                    apply(&mut admin, vec![node(&id, port)], 0).await,
                ));
            }
            Ok::<_, BoxError>(results)
        }));
    }
    let mut applied = BTreeSet::new();
    let mut versions = BTreeSet::new();
    for t in tasks {
        for (id, result) in t.await?? {
            match result {
                Ok(v) => {
                    assert!(versions.insert(v), "version {v} acknowledged twice");
                    applied.insert(id);
                }
                Err(e) => assert_eq!(e.code(), tonic::Code::Aborted, "{id}: {e:?}"),
            }
        }
    }
    assert!(!applied.is_empty());
    eprintln!(
        "{} of {} changes applied; states loaded from the other instance: A {}, B {}",
        applied.len(),
        2 * PER_INSTANCE,
        a.metric("tandem_control_state_reloaded_total")?,
        b.metric("tandem_control_state_reloaded_total")?,
    );
    let last = *versions.last().ok_or("no change applied")?;
    assert_eq!(
        last,
        versions.len() as u64,
        "versions are 1..=n: {versions:?}"
    );

    let mut admin_a = a.admin().await?;
    let mut admin_b = b.admin().await?;
    // B may learn the last commit a moment later: wait (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    let (sa, sb) = loop {
        let sa = admin_a
            .get_state(GetStateRequest::default())
            .await?
            .into_inner();
        let sb = admin_b
            .get_state(GetStateRequest::default())
            .await?
            .into_inner();
        if (sa.version == last && sb.version == last) || Instant::now() > deadline {
            break (sa, sb);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(sa.version, last);
    assert_eq!(sa, sb);
    assert_eq!(
        node_ids(&sa),
        applied,
        "acknowledged changes lost or unacknowledged ones kept"
    );

    // Both name the same base: exactly one wins.
    let base = last;
    let (ra, rb) = tokio::join!(
        apply(&mut admin_a, vec![node("x-a", 30_001)], base),
        apply(&mut admin_b, vec![node("x-b", 30_002)], base),
    );
    let outcomes = [&ra, &rb];
    let won: Vec<_> = outcomes.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(won.len(), 1, "{ra:?} {rb:?}");
    let lost = outcomes
        .iter()
        .find_map(|r| r.as_ref().err())
        .ok_or("no refusal")?;
    assert_eq!(lost.code(), tonic::Code::Aborted, "{lost:?}");
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

/// Instance A goes away: a subscriber given `[A, B]` fails over to B and
/// keeps receiving changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_fails_over_when_an_instance_dies() -> Result<(), BoxError> {
    let Some(bin) = etcd_binary("subscriber_fails_over_when_an_instance_dies") else {
        return Ok(());
    };
    let etcd = Etcd::start(bin)?;
    let a = Instance::start(etcd.config("/tandem")).await?;
    let b = Instance::start(etcd.config("/tandem")).await?;
    let mut sub = Subscriber::start("director-1", &[&a.url, &b.url]);
    let mut admin_a = a.admin().await?;
    apply(&mut admin_a, vec![node("n1", 9001)], 0).await?;
    sub.wait_for("version 1", |s| s.version == 1).await?;
    let mut admin_b = b.admin().await?;
    let on_a = admin_a.status(StatusRequest::default()).await?.into_inner();
    assert!(
        on_a.subscribers
            .iter()
            .any(|s| s.id == "director-1" && s.connected)
    );

    a.stop().await?;
    apply(&mut admin_b, vec![node("n2", 9002)], 1).await?;
    let seen = sub.wait_for("version 2 from B", |s| s.version == 2).await?;
    assert_eq!(node_ids(&seen).len(), 2);
    let on_b = wait_for_status(&mut admin_b, "director-1 connected at version 2", |s| {
        s.subscribers
            .iter()
            .any(|e| e.id == "director-1" && e.connected && e.acked_version == 2)
    })
    .await?;
    assert_eq!(on_b.subscribers.len(), 1);
    assert!(sub.watch.connected());
    b.stop().await?;
    Ok(())
}

/// kill -9 of etcd while changes stream in, then a restart on the same data
/// directory: every acknowledged change is there, for a fresh instance too;
/// while etcd is down, changes are refused with UNAVAILABLE and subscribers
/// keep their config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_loses_no_acknowledged_change() -> Result<(), BoxError> {
    let Some(bin) = etcd_binary("etcd_restart_loses_no_acknowledged_change") else {
        return Ok(());
    };
    let mut etcd = Etcd::start(bin)?;
    let a = Instance::start(etcd.config("/tandem")).await?;
    let mut sub = Subscriber::start("director-1", &[&a.url]);
    let url = a.url.clone();
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let writer_stop = stop.clone();
    // Writes new nodes one after another until told to stop (bounded).
    let writer = tokio::spawn(async move {
        let mut admin = AdminClient::connect(url).await?;
        let mut unavailable = 0u32;
        for i in 0..2_000u16 {
            if writer_stop.is_cancelled() {
                break;
            }
            let id = format!("w{i}");
            match apply(&mut admin, vec![node(&id, 10_000 + i)], 0).await {
                Ok(v) => {
                    let _ = acked_tx.send((id, v));
                }
                Err(e) if e.code() == tonic::Code::Unavailable => {
                    unavailable += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(BoxError::from(format!("{id}: {e:?}"))),
            }
        }
        Ok::<u32, BoxError>(unavailable)
    });
    let mut acked = Vec::new();
    while acked.len() < 10 {
        let got = tokio::time::timeout(Duration::from_secs(10), acked_rx.recv()).await?;
        acked.push(got.ok_or("writer ended early")?);
    }
    etcd.kill();
    let before_down = sub
        .wait_for("some acknowledged version", |s| s.version >= 10)
        .await?;

    // Down: changes are refused, with the reason; nothing changes.
    let mut admin = a.admin().await?;
    let e = apply(&mut admin, vec![node("while-down", 30_000)], 0)
        .await
        .err()
        .ok_or("a change succeeded with etcd down")?;
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("etcd"), "{e:?}");
    let during = admin
        .get_state(GetStateRequest::default())
        .await?
        .into_inner();
    assert!(!node_ids(&during).contains("while-down"));
    // The subscriber keeps its config and its stream (control is still up).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sub.watch.connected());
    let kept = sub
        .config
        .borrow()
        .clone()
        .ok_or("subscriber lost its config")?;
    assert!(kept.version >= before_down.version);
    assert!(a.metric("tandem_control_store_errors_total{op=\"commit\"}")? >= 1.0);

    etcd.spawn()?;
    while acked.len() < 20 {
        let got = tokio::time::timeout(Duration::from_secs(20), acked_rx.recv()).await?;
        acked.push(got.ok_or("writer ended early")?);
    }
    stop.cancel();
    let unavailable = writer.await??;
    while let Ok(x) = acked_rx.try_recv() {
        acked.push(x);
    }
    eprintln!("writer saw {unavailable} UNAVAILABLE answers while etcd was down");

    // A fresh instance reads everything acknowledged from etcd.
    let c = Instance::start(etcd.config("/tandem")).await?;
    let mut admin_c = c.admin().await?;
    let stored = admin_c
        .get_state(GetStateRequest::default())
        .await?
        .into_inner();
    let ids = node_ids(&stored);
    for (id, v) in &acked {
        assert!(ids.contains(id), "acknowledged {id} (version {v}) lost");
        assert!(stored.version >= *v);
    }
    // A and the subscriber converge on the stored version.
    let last = stored.version;
    sub.wait_for("the last stored version", |s| s.version == last)
        .await?;
    assert_eq!(a.state.version(), last);
    drop(sub);
    a.stop().await?;
    c.stop().await?;
    Ok(())
}

/// Commit latency through etcd and through redb, on this machine. Not a
/// pass/fail test: `cargo test -p control --test etcd -- --ignored
/// --nocapture commit_latency` prints p50/p99 for docs/benchmarks.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run explicitly with --ignored --nocapture"]
async fn commit_latency() -> Result<(), BoxError> {
    let Some(bin) = etcd_binary("commit_latency") else {
        return Ok(());
    };
    const N: u64 = 300;
    let etcd = Etcd::start(bin)?;
    let dir = tempfile::tempdir()?;
    let stores: Vec<(&str, Arc<dyn Store>)> = vec![
        ("redb", Arc::new(control::RedbStore::open(dir.path())?)),
        (
            "etcd",
            Arc::new(EtcdStore::connect(&etcd.config("/bench"))?),
        ),
    ];
    for (name, store) in stores {
        let mut took = blocking(move || {
            let mut took = Vec::new();
            for v in 1..=N {
                let snapshot = sample(v, &["a", "b", "c"]);
                let started = Instant::now();
                store.commit(v - 1, &snapshot, &record(v, "bench"))?;
                took.push(started.elapsed());
            }
            Ok(took)
        })
        .await?;
        took.sort();
        let pct = |p: usize| took[(took.len() * p / 100).min(took.len() - 1)];
        eprintln!(
            "{name}: {N} commits, p50 {:?}, p99 {:?}, max {:?}",
            pct(50),
            pct(99),
            took[took.len() - 1]
        );
    }
    Ok(())
}
