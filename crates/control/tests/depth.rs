//! Production-depth behaviour over real gRPC on loopback: credentials and
//! roles, the audit trail, per-tier filtering, NACK handling by the watch
//! client, 100 subscribers, and a kill -9 of control mid-stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use control::{Auth, Role, ServeOptions, State};
use control_api::auth::BearerInterceptor;
use control_api::pb::{
    self, Change, GetStateRequest, ListAuditRequest, StatusRequest, Tier, WatchRequest,
    admin_client::AdminClient, change, watch_client::WatchClient, watch_request,
};
use control_api::watch::{self, Subscription, WatchOptions, WatchState};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Admin = AdminClient<InterceptedService<Channel, BearerInterceptor>>;

const ADMIN_TOKEN: &str = "admin-token-aaaaaaaaaaaaaaaa";
const SUB_TOKEN: &str = "subscriber-token-bbbbbbbbbbbb";

struct Server {
    url: String,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), control::ControlError>>,
}

impl Server {
    async fn start(state: Arc<State>, auth: Auth) -> Result<Server, Box<dyn std::error::Error>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let options = ServeOptions {
            auth,
            ..ServeOptions::default()
        };
        let task = tokio::spawn(control::serve_with(
            listener,
            state,
            options,
            shutdown.clone(),
        ));
        Ok(Server {
            url,
            shutdown,
            task,
        })
    }

    async fn admin(&self, token: Option<&str>) -> Result<Admin, Box<dyn std::error::Error>> {
        let channel = tonic::transport::Endpoint::from_shared(self.url.clone())?
            .connect()
            .await?;
        Ok(AdminClient::with_interceptor(
            channel,
            BearerInterceptor::optional(token)?,
        ))
    }

    async fn stop(self) -> TestResult {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await???;
        Ok(())
    }
}

fn auth() -> Auth {
    Auth::disabled()
        .with_token(Role::Admin, "alice", ADMIN_TOKEN)
        .with_token(Role::Subscriber, "fleet", SUB_TOKEN)
}

fn memory_state() -> Result<Arc<State>, control::StoreError> {
    State::with_store(Arc::new(control::MemoryStore::default()))
}

fn put(c: change::Change) -> Change {
    Change { change: Some(c) }
}

fn node(id: &str, port: u16, weight: u32) -> Change {
    put(change::Change::PutNode(pb::Node {
        id: id.into(),
        address: format!("127.0.0.1:{port}"),
        weight,
        pool: "default".into(),
        ..Default::default()
    }))
}

fn cluster(name: &str, port: u16) -> Change {
    put(change::Change::PutCluster(pb::Cluster {
        name: name.into(),
        endpoints: vec![pb::Endpoint {
            address: format!("127.0.0.1:{port}"),
            weight: 1,
        }],
        ..Default::default()
    }))
}

fn certificate(name: &str) -> Result<Change, Box<dyn std::error::Error>> {
    let ck = rcgen::generate_simple_self_signed(vec!["example.com".to_string()])?;
    Ok(put(change::Change::PutCertificate(pb::Certificate {
        name: name.into(),
        sni_names: vec!["example.com".into()],
        cert_chain_pem: ck.cert.pem(),
        private_key_pem: ck.signing_key.serialize_pem(),
        default: true,
        private_key_fingerprint: String::new(),
    })))
}

async fn apply(admin: &mut Admin, changes: Vec<Change>) -> Result<u64, tonic::Status> {
    admin
        .apply(pb::ApplyRequest {
            changes,
            expected_version: 0,
        })
        .await
        .map(|r| r.into_inner().version)
}

fn hello(id: &str, tier: Tier) -> WatchRequest {
    WatchRequest {
        msg: Some(watch_request::Msg::Hello(pb::Hello {
            id: id.into(),
            tier: tier as i32,
        })),
    }
}

async fn open_watch(
    url: &str,
    token: Option<&str>,
    id: &str,
    tier: Tier,
) -> Result<(mpsc::Sender<WatchRequest>, tonic::Streaming<pb::Snapshot>), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let interceptor =
        BearerInterceptor::optional(token).map_err(|e| tonic::Status::internal(e.to_string()))?;
    let mut client = WatchClient::with_interceptor(channel, interceptor);
    let (tx, rx) = mpsc::channel(8);
    let _ = tx.send(hello(id, tier)).await;
    let inbound = client.watch(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, inbound))
}

async fn next_snapshot(
    inbound: &mut tonic::Streaming<pb::Snapshot>,
) -> Result<pb::Snapshot, Box<dyn std::error::Error>> {
    Ok(tokio::time::timeout(Duration::from_secs(5), inbound.next())
        .await?
        .ok_or("watch ended")??)
}

async fn wait_until(
    what: &str,
    mut check: impl FnMut() -> bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_refused() -> TestResult {
    let server = Server::start(memory_state()?, auth()).await?;
    let code = |r: Result<tonic::Response<pb::Snapshot>, tonic::Status>| r.err().map(|s| s.code());

    let mut none = server.admin(None).await?;
    assert_eq!(
        code(none.get_state(GetStateRequest::default()).await),
        Some(tonic::Code::Unauthenticated)
    );
    let mut wrong = server.admin(Some("admin-token-aaaaaaaaaaaaaaaX")).await?;
    assert_eq!(
        code(wrong.get_state(GetStateRequest::default()).await),
        Some(tonic::Code::Unauthenticated)
    );
    let mut sub = server.admin(Some(SUB_TOKEN)).await?;
    assert_eq!(
        code(sub.get_state(GetStateRequest::default()).await),
        Some(tonic::Code::PermissionDenied)
    );
    let denied = apply(&mut sub, vec![node("n1", 1, 100)]).await;
    assert_eq!(
        denied.err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied)
    );
    assert_eq!(
        sub.status(StatusRequest {}).await.err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied)
    );

    // Watch: none or wrong refused; subscriber and admin tokens accepted.
    for (token, want) in [
        (None, Some(tonic::Code::Unauthenticated)),
        (
            Some("nope-nope-nope-nope-nope"),
            Some(tonic::Code::Unauthenticated),
        ),
        (Some(SUB_TOKEN), None),
        (Some(ADMIN_TOKEN), None),
    ] {
        let got = open_watch(&server.url, token, "n1", Tier::Node)
            .await
            .err()
            .map(|s| s.code());
        assert_eq!(got, want, "watch with {token:?}");
    }

    // Health stays open for probes.
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())?
        .connect()
        .await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?;

    let mut admin = server.admin(Some(ADMIN_TOKEN)).await?;
    assert_eq!(apply(&mut admin, vec![node("n1", 1, 100)]).await?, 1);
    server.stop().await
}

#[tokio::test]
async fn audit_records_who_what_and_version_and_keys_stay_hidden() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let server = Server::start(State::open(dir.path())?, auth()).await?;
        let mut admin = server.admin(Some(ADMIN_TOKEN)).await?;
        apply(&mut admin, vec![node("n1", 1, 100), cluster("app", 2)]).await?;
        apply(&mut admin, vec![certificate("site")?]).await?;
        apply(
            &mut admin,
            vec![put(change::Change::Delete(pb::Delete {
                kind: pb::ResourceKind::Node as i32,
                name: "n1".into(),
            }))],
        )
        .await?;
        // Read RPCs never return keys unless a full export is asked for.
        let s = admin
            .get_state(GetStateRequest::default())
            .await?
            .into_inner();
        assert_eq!(s.certificates[0].private_key_pem, "");
        let full = admin
            .get_state(GetStateRequest {
                include_private_keys: true,
            })
            .await?
            .into_inner();
        assert!(full.certificates[0].private_key_pem.contains("PRIVATE KEY"));
        // A put without a key keeps the stored one (read-modify-write).
        let mut c = s.certificates[0].clone();
        c.sni_names.push("www.example.com".into());
        apply(&mut admin, vec![put(change::Change::PutCertificate(c))]).await?;
        let full2 = admin
            .get_state(GetStateRequest {
                include_private_keys: true,
            })
            .await?
            .into_inner();
        assert_eq!(
            full2.certificates[0].private_key_pem,
            full.certificates[0].private_key_pem
        );
        server.stop().await?;
    }
    // Durable: after a restart the trail is still there.
    let server = Server::start(State::open(dir.path())?, auth()).await?;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await?;
    let records = admin
        .list_audit(ListAuditRequest { limit: 3 })
        .await?
        .into_inner()
        .records;
    let versions: Vec<u64> = records.iter().map(|r| r.version).collect();
    assert_eq!(versions, vec![4, 3, 2]);
    assert_eq!(records[1].changes, vec!["delete node n1"]);
    assert_eq!(records[2].changes, vec!["put certificate site"]);
    assert!(
        records
            .iter()
            .all(|r| r.who == "alice" && r.role == "admin")
    );
    assert!(
        records
            .iter()
            .all(|r| r.unix_ms > 0 && r.peer.starts_with("127.0.0.1:"))
    );
    let sub = server.admin(Some(SUB_TOKEN)).await?;
    let mut sub = sub;
    assert_eq!(
        sub.list_audit(ListAuditRequest { limit: 3 })
            .await
            .err()
            .map(|s| s.code()),
        Some(tonic::Code::PermissionDenied)
    );
    server.stop().await
}

#[tokio::test]
async fn directors_get_no_certificates_and_only_relevant_versions() -> TestResult {
    let state = memory_state()?;
    let server = Server::start(state.clone(), Auth::disabled()).await?;
    let mut admin = server.admin(None).await?;
    apply(&mut admin, vec![node("n1", 1, 100), certificate("site")?]).await?;

    let (dtx, mut director) = open_watch(&server.url, None, "d1", Tier::Director).await?;
    let (ntx, mut nodew) = open_watch(&server.url, None, "n1", Tier::Node).await?;
    let d = next_snapshot(&mut director).await?;
    assert!(d.certificates.is_empty() && d.clusters.is_empty() && d.routes.is_empty());
    assert_eq!(d.nodes.len(), 1);
    let n = next_snapshot(&mut nodew).await?;
    assert!(n.certificates[0].private_key_pem.contains("PRIVATE KEY"));
    for (tx, v) in [(&dtx, d.version), (&ntx, n.version)] {
        tx.send(WatchRequest {
            msg: Some(watch_request::Msg::Ack(pb::Ack {
                version: v,
                error: String::new(),
            })),
        })
        .await?;
    }

    // A cluster change matters to nodes only.
    let v = apply(&mut admin, vec![cluster("app", 2)]).await?;
    let n = next_snapshot(&mut nodew).await?;
    assert_eq!((n.version, n.clusters.len()), (v, 1));
    ntx.send(WatchRequest {
        msg: Some(watch_request::Msg::Ack(pb::Ack {
            version: v,
            error: String::new(),
        })),
    })
    .await?;
    // The director got nothing, yet counts as running v (it runs an
    // equivalent config).
    wait_until("both in sync", || {
        let st = state.status();
        st.subscribers.iter().all(|s| s.acked_version == v)
    })
    .await?;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), director.next())
            .await
            .is_err(),
        "the director was sent a version that changed nothing it sees"
    );
    // A node change reaches both.
    let v = apply(&mut admin, vec![node("n1", 1, 50)]).await?;
    assert_eq!(next_snapshot(&mut director).await?.version, v);
    assert_eq!(next_snapshot(&mut nodew).await?.version, v);
    server.stop().await
}

#[tokio::test]
async fn watch_client_nacks_bad_config_and_keeps_serving() -> TestResult {
    let state = memory_state()?;
    let server = Server::start(state.clone(), auth()).await?;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await?;
    apply(&mut admin, vec![node("n1", 1, 100)]).await?;

    let serving = Arc::new(std::sync::Mutex::new(0u32));
    let watch_state = Arc::new(WatchState::default());
    let sub = Subscription {
        endpoint: server.url.clone(),
        id: "n1".into(),
        tier: Tier::Node,
    };
    let current = serving.clone();
    let task = tokio::spawn(watch::run_with_options(
        sub,
        watch_state.clone(),
        WatchOptions::with_token(SUB_TOKEN),
        move |s: &pb::Snapshot| {
            // This subscriber cannot use a weight of 7.
            let w = s.nodes.first().map_or(0, |n| n.weight);
            if w == 7 {
                return Err("weight 7 is not supported here".into());
            }
            *current.lock().map_err(|e| e.to_string())? = w;
            Ok(())
        },
    ));
    wait_until("first ACK", || watch_state.applied_version() == 1).await?;
    let bad = apply(&mut admin, vec![node("n1", 1, 7)]).await?;
    wait_until("the NACK", || {
        state
            .status()
            .subscribers
            .iter()
            .any(|s| s.last_error.contains("weight 7"))
    })
    .await?;
    // Kept its last good config and still runs it.
    assert_eq!(watch_state.applied_version(), 1);
    assert_eq!(*serving.lock().map_err(|e| e.to_string())?, 100);
    let st = state.status();
    assert_eq!(st.subscribers[0].acked_version, 1);
    assert!(st.subscribers[0].connected);
    // The next good version is applied.
    let good = apply(&mut admin, vec![node("n1", 1, 60)]).await?;
    assert!(good > bad);
    wait_until("ACK of the good version", || {
        watch_state.applied_version() == good
    })
    .await?;
    assert_eq!(*serving.lock().map_err(|e| e.to_string())?, 60);
    wait_until("status clean", || {
        let st = state.status();
        st.subscribers[0].acked_version == good && st.subscribers[0].last_error.is_empty()
    })
    .await?;
    task.abort();
    server.stop().await
}

/// 100 watch clients (the real `control-api` client, each on its own
/// connection) all ACK each change. Prints apply-to-100th-ACK times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_subscribers_all_ack() -> TestResult {
    const N: usize = 100;
    const ROUNDS: u32 = 30;
    let state = memory_state()?;
    let server = Server::start(state.clone(), auth()).await?;
    let mut admin = server.admin(Some(ADMIN_TOKEN)).await?;
    let mut changes = Vec::new();
    for i in 0..N {
        changes.push(node(&format!("node-{i}"), 10_000 + i as u16, 100));
    }
    apply(&mut admin, changes).await?;
    let mut tasks = Vec::new();
    for i in 0..N {
        let sub = Subscription {
            endpoint: server.url.clone(),
            id: format!("node-{i}"),
            tier: Tier::Node,
        };
        tasks.push(tokio::spawn(watch::run_with_options(
            sub,
            Arc::new(WatchState::default()),
            WatchOptions::with_token(SUB_TOKEN),
            |_s: &pb::Snapshot| Ok(()),
        )));
    }
    let all_at = |v: u64| {
        let st = state.status();
        st.subscribers.len() == N
            && st
                .subscribers
                .iter()
                .all(|s| s.connected && s.acked_version == v)
    };
    wait_until("100 subscribers at version 1", || all_at(1)).await?;

    let mut times = Vec::new();
    for r in 0..ROUNDS {
        let start = Instant::now();
        let v = apply(&mut admin, vec![node("node-0", 10_000, 100 + r + 1)]).await?;
        while !all_at(v) {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!("version {v} not ACKed by all in 10 s").into());
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        times.push(start.elapsed());
    }
    times.sort();
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    println!(
        "100 subscribers: apply -> 100th ACK over {ROUNDS} changes: min {:?} p50 {:?} p99 {:?} max {:?}",
        times[0],
        pct(0.5),
        pct(0.99),
        times[times.len() - 1]
    );
    assert!(pct(0.5) < Duration::from_secs(1));
    for t in tasks {
        t.abort();
    }
    server.stop().await
}
