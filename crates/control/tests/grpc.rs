//! The control service over real gRPC on loopback.

use std::sync::Arc;
use std::time::Duration;

use control::State;
use control_api::pb::{
    self, Change, GetStateRequest, StatusRequest, Tier, WatchRequest, admin_client::AdminClient,
    change, watch_client::WatchClient, watch_request,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct Server {
    url: String,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), control::ControlError>>,
}

impl Server {
    async fn start(state: Arc<State>) -> Result<Server, Box<dyn std::error::Error>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(control::serve(listener, state, shutdown.clone()));
        Ok(Server {
            url,
            shutdown,
            task,
        })
    }

    async fn admin(&self) -> Result<AdminClient<Channel>, Box<dyn std::error::Error>> {
        Ok(AdminClient::connect(self.url.clone()).await?)
    }

    async fn stop(self) -> TestResult {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await???;
        Ok(())
    }
}

fn put(c: change::Change) -> Change {
    Change { change: Some(c) }
}

fn node(id: &str, addr: &str) -> Change {
    put(change::Change::PutNode(pb::Node {
        id: id.into(),
        address: addr.into(),
        admin_address: String::new(),
        weight: 100,
        state: pb::NodeState::Active as i32,
        pool: "default".into(),
        ..Default::default()
    }))
}

fn cluster(name: &str) -> Change {
    put(change::Change::PutCluster(pb::Cluster {
        name: name.into(),
        endpoints: vec![pb::Endpoint {
            address: "127.0.0.1:8080".into(),
            weight: 1,
        }],
        ..Default::default()
    }))
}

fn route(name: &str, cluster: &str) -> Change {
    put(change::Change::PutRoute(pb::Route {
        name: name.into(),
        host: "example.com".into(),
        path_prefix: "/".into(),
        cluster: cluster.into(),
        ..Default::default()
    }))
}

fn service(name: &str) -> Change {
    put(change::Change::PutService(pb::Service {
        name: name.into(),
        address: "127.0.0.1:8443".into(),
        table_size: 65_537,
        hash: pb::HashFields::FiveTuple as i32,
        node_pool: "default".into(),
        ..Default::default()
    }))
}

fn delete(kind: pb::ResourceKind, name: &str) -> Change {
    put(change::Change::Delete(pb::Delete {
        kind: kind as i32,
        name: name.into(),
    }))
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

fn memory_state() -> Result<Arc<State>, control::StoreError> {
    State::with_store(Arc::new(control::MemoryStore::default()))
}

#[tokio::test]
async fn apply_and_get_state() -> TestResult {
    let server = Server::start(memory_state()?).await?;
    let mut admin = server.admin().await?;
    let s = admin
        .get_state(GetStateRequest::default())
        .await?
        .into_inner();
    assert_eq!(s, pb::Snapshot::default());

    let v = apply(
        &mut admin,
        vec![
            cluster("app"),
            route("r", "app"),
            node("node-1", "127.0.0.1:9001"),
            node("node-2", "127.0.0.1:9002"),
            service("web"),
        ],
        0,
    )
    .await?;
    assert_eq!(v, 1);
    let s = admin
        .get_state(GetStateRequest::default())
        .await?
        .into_inner();
    assert_eq!(s.version, 1);
    assert_eq!(s.nodes.len(), 2);
    assert_eq!(s.clusters[0].name, "app");
    assert_eq!(s.routes[0].cluster, "app");
    assert_eq!(s.services[0].name, "web");

    // Put replaces by id; delete removes.
    let v = apply(
        &mut admin,
        vec![
            node("node-1", "127.0.0.1:9101"),
            delete(pb::ResourceKind::Node, "node-2"),
        ],
        1,
    )
    .await?;
    assert_eq!(v, 2);
    let s = admin
        .get_state(GetStateRequest::default())
        .await?
        .into_inner();
    assert_eq!(s.version, 2);
    assert_eq!(s.nodes.len(), 1);
    assert_eq!(s.nodes[0].address, "127.0.0.1:9101");

    // Delete of a missing resource: NOT_FOUND, nothing changes.
    let e = apply(
        &mut admin,
        vec![
            node("node-3", "127.0.0.1:9003"),
            delete(pb::ResourceKind::Node, "ghost"),
        ],
        0,
    )
    .await
    .err()
    .ok_or("delete of a missing node succeeded")?;
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert_eq!(e.message(), r#"changes[1]: node "ghost" not found"#);
    let s = admin
        .get_state(GetStateRequest::default())
        .await?
        .into_inner();
    assert_eq!(s.version, 2);
    assert_eq!(s.nodes.len(), 1);
    server.stop().await
}

#[tokio::test]
async fn validation_errors_carry_field_path_and_change_nothing() -> TestResult {
    let state = memory_state()?;
    let server = Server::start(state.clone()).await?;
    let mut admin = server.admin().await?;
    apply(&mut admin, vec![cluster("app"), route("r", "app")], 0).await?;

    let e = apply(
        &mut admin,
        vec![
            node("node-1", "127.0.0.1:9001"),
            node("node-2", "127.0.0.1"),
        ],
        0,
    )
    .await
    .err()
    .ok_or("invalid address accepted")?;
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        r#"nodes["node-2"].address: "127.0.0.1" is not ip:port"#
    );

    // A cluster still used by a route cannot go.
    let e = apply(
        &mut admin,
        vec![delete(pb::ResourceKind::Cluster, "app")],
        0,
    )
    .await
    .err()
    .ok_or("deleted a cluster in use")?;
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        r#"routes["r"].cluster: no cluster named "app""#
    );
    // ... but it can go together with its route.
    let v = apply(
        &mut admin,
        vec![
            delete(pb::ResourceKind::Route, "r"),
            delete(pb::ResourceKind::Cluster, "app"),
        ],
        0,
    )
    .await?;
    assert_eq!(v, 2);

    // Empty batch.
    let e = apply(&mut admin, vec![], 0)
        .await
        .err()
        .ok_or("empty batch accepted")?;
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    let s = admin
        .get_state(GetStateRequest::default())
        .await?
        .into_inner();
    assert_eq!(s.version, 2);
    assert!(s.nodes.is_empty() && s.clusters.is_empty() && s.routes.is_empty());

    // Metrics count each outcome.
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &state.registry())?;
    assert!(
        text.contains(r#"tandem_control_changes_total{result="ok"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tandem_control_changes_total{result="invalid"} 3"#),
        "{text}"
    );
    assert!(text.contains("tandem_control_version 2"), "{text}");
    server.stop().await
}

#[tokio::test]
async fn stale_expected_version_is_aborted() -> TestResult {
    let server = Server::start(memory_state()?).await?;
    let mut admin = server.admin().await?;
    apply(&mut admin, vec![node("a", "127.0.0.1:1")], 0).await?;
    apply(&mut admin, vec![node("b", "127.0.0.1:2")], 1).await?;
    let e = apply(&mut admin, vec![node("c", "127.0.0.1:3")], 1)
        .await
        .err()
        .ok_or("stale version accepted")?;
    assert_eq!(e.code(), tonic::Code::Aborted);
    assert!(e.message().contains("version 2"), "{}", e.message());
    let s = admin
        .get_state(GetStateRequest::default())
        .await?
        .into_inner();
    assert_eq!(s.version, 2);
    assert_eq!(s.nodes.len(), 2);
    server.stop().await
}

/// A raw watch stream: the sender for hello/acks and the snapshot stream.
async fn open_watch(
    url: &str,
    first: WatchRequest,
) -> Result<(mpsc::Sender<WatchRequest>, tonic::Streaming<pb::Snapshot>), Box<dyn std::error::Error>>
{
    let mut client = WatchClient::connect(url.to_string()).await?;
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await?;
    let inbound = client.watch(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, inbound))
}

fn hello(id: &str, tier: Tier) -> WatchRequest {
    WatchRequest {
        msg: Some(watch_request::Msg::Hello(pb::Hello {
            id: id.into(),
            tier: tier as i32,
        })),
    }
}

fn ack(version: u64, error: &str) -> WatchRequest {
    WatchRequest {
        msg: Some(watch_request::Msg::Ack(pb::Ack {
            version,
            error: error.into(),
        })),
    }
}

async fn next_snapshot(
    inbound: &mut tonic::Streaming<pb::Snapshot>,
) -> Result<pb::Snapshot, Box<dyn std::error::Error>> {
    let s = tokio::time::timeout(Duration::from_secs(5), inbound.next())
        .await?
        .ok_or("watch ended")??;
    Ok(s)
}

/// Polls Status until `check` holds for subscriber `id`.
async fn wait_status(
    admin: &mut AdminClient<Channel>,
    id: &str,
    check: impl Fn(&pb::SubscriberStatus) -> bool,
) -> Result<pb::SubscriberStatus, Box<dyn std::error::Error>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let st = admin.status(StatusRequest {}).await?.into_inner();
        if let Some(s) = st.subscribers.iter().find(|s| s.id == id)
            && check(s)
        {
            return Ok(s.clone());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("status of {id} never matched: {st:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn watch_sends_snapshot_at_once_and_on_change_and_records_ack() -> TestResult {
    let server = Server::start(memory_state()?).await?;
    let mut admin = server.admin().await?;
    apply(&mut admin, vec![node("node-1", "127.0.0.1:9001")], 0).await?;

    let (tx, mut inbound) = open_watch(&server.url, hello("node-1", Tier::Node)).await?;
    let first = next_snapshot(&mut inbound).await?;
    assert_eq!(first.version, 1);
    assert_eq!(first.nodes.len(), 1);
    tx.send(ack(1, "")).await?;
    let s = wait_status(&mut admin, "node-1", |s| s.acked_version == 1).await?;
    assert!(s.connected);
    assert_eq!(s.tier, Tier::Node as i32);
    assert!(s.last_seen_unix_ms > 0);

    apply(&mut admin, vec![node("node-2", "127.0.0.1:9002")], 1).await?;
    let second = next_snapshot(&mut inbound).await?;
    assert_eq!(second.version, 2);
    assert_eq!(second.nodes.len(), 2);
    tx.send(ack(2, "")).await?;
    wait_status(&mut admin, "node-1", |s| {
        s.acked_version == 2 && s.last_error.is_empty()
    })
    .await?;
    let st = admin.status(StatusRequest {}).await?.into_inner();
    assert_eq!(st.version, 2);

    // Closing the stream marks it disconnected and keeps the entry.
    drop(tx);
    drop(inbound);
    let s = wait_status(&mut admin, "node-1", |s| !s.connected).await?;
    assert_eq!(s.acked_version, 2);
    server.stop().await
}

#[tokio::test]
async fn nack_shows_in_status() -> TestResult {
    let server = Server::start(memory_state()?).await?;
    let mut admin = server.admin().await?;
    apply(&mut admin, vec![node("node-1", "127.0.0.1:9001")], 0).await?;
    let (tx, mut inbound) = open_watch(&server.url, hello("dir-1", Tier::Director)).await?;
    let s = next_snapshot(&mut inbound).await?;
    tx.send(ack(s.version, "")).await?;
    wait_status(&mut admin, "dir-1", |s| s.acked_version == 1).await?;

    apply(&mut admin, vec![node("node-2", "127.0.0.1:9002")], 0).await?;
    let s = next_snapshot(&mut inbound).await?;
    tx.send(ack(s.version, "cannot bind 127.0.0.1:8443: address in use"))
        .await?;
    let st = wait_status(&mut admin, "dir-1", |s| !s.last_error.is_empty()).await?;
    assert_eq!(st.last_error, "cannot bind 127.0.0.1:8443: address in use");
    assert_eq!(st.acked_version, 1, "a NACK keeps the last applied version");
    assert_eq!(st.tier, Tier::Director as i32);

    // Statuses are sorted by id.
    let (_tx2, mut in2) = open_watch(&server.url, hello("a-first", Tier::Node)).await?;
    next_snapshot(&mut in2).await?;
    let ids: Vec<String> = admin
        .status(StatusRequest {})
        .await?
        .into_inner()
        .subscribers
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, vec!["a-first", "dir-1"]);
    server.stop().await
}

#[tokio::test]
async fn watch_without_hello_is_refused() -> TestResult {
    let server = Server::start(memory_state()?).await?;
    let e = open_watch(&server.url, ack(1, ""))
        .await
        .err()
        .ok_or("watch without hello accepted")?;
    let status = e
        .downcast_ref::<tonic::Status>()
        .ok_or_else(|| format!("not a status: {e}"))?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    server.stop().await
}

#[tokio::test]
async fn restart_keeps_state_and_version() -> TestResult {
    let dir = tempfile::tempdir()?;
    let expected = {
        let server = Server::start(State::open(dir.path())?).await?;
        let mut admin = server.admin().await?;
        apply(&mut admin, vec![cluster("app"), route("r", "app")], 0).await?;
        apply(&mut admin, vec![node("node-1", "127.0.0.1:9001")], 0).await?;
        apply(&mut admin, vec![service("web")], 0).await?;
        // A watch stream open during shutdown must not keep the server up.
        let (_tx, mut inbound) = open_watch(&server.url, hello("node-1", Tier::Node)).await?;
        next_snapshot(&mut inbound).await?;
        let s = admin
            .get_state(GetStateRequest::default())
            .await?
            .into_inner();
        drop(admin);
        server.stop().await?;
        s
    };
    assert_eq!(expected.version, 3);

    let state = State::open(dir.path())?;
    assert_eq!(*state.snapshot(), expected);
    let server = Server::start(state).await?;
    let mut admin = server.admin().await?;
    let s = admin
        .get_state(GetStateRequest::default())
        .await?
        .into_inner();
    assert_eq!(s, expected);
    assert_eq!(
        apply(&mut admin, vec![node("node-2", "127.0.0.1:9002")], 3).await?,
        4
    );
    server.stop().await
}

#[tokio::test]
async fn watch_client_sees_updates() -> TestResult {
    let server = Server::start(memory_state()?).await?;
    let mut admin = server.admin().await?;
    apply(&mut admin, vec![node("node-1", "127.0.0.1:9001")], 0).await?;

    let (seen_tx, mut seen) = mpsc::unbounded_channel::<u64>();
    let watch_state = Arc::new(control_api::watch::WatchState::default());
    let sub = control_api::watch::Subscription {
        endpoint: server.url.clone(),
        id: "node-1".into(),
        tier: Tier::Node,
    };
    let client = tokio::spawn(control_api::watch::run(
        sub,
        watch_state.clone(),
        move |s| {
            let _ = seen_tx.send(s.version);
            Ok(())
        },
    ));
    let recv = async |seen: &mut mpsc::UnboundedReceiver<u64>| {
        tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .ok()
            .flatten()
    };
    assert_eq!(recv(&mut seen).await, Some(1));
    apply(&mut admin, vec![node("node-2", "127.0.0.1:9002")], 0).await?;
    assert_eq!(recv(&mut seen).await, Some(2));
    wait_status(&mut admin, "node-1", |s| {
        s.acked_version == 2 && s.connected
    })
    .await?;
    assert_eq!(watch_state.applied_version(), 2);
    client.abort();
    let _ = client.await;
    server.stop().await
}

#[tokio::test]
async fn health_is_serving() -> TestResult {
    let server = Server::start(memory_state()?).await?;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())?
        .connect()
        .await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["tandem.control.v1.Admin", "tandem.control.v1.Watch"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    drop(health);
    server.stop().await
}

#[tokio::test]
async fn run_creates_data_dir_and_stops_on_cancel() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("nested/control");
    let config = control::ControlConfig {
        listen: "127.0.0.1:0".parse()?,
        admin_listen: Some("127.0.0.1:0".parse()?),
        data_dir: data_dir.clone(),
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(control::run(config, shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !data_dir.join("control.redb").exists() {
        if tokio::time::Instant::now() > deadline {
            return Err("control.redb never appeared".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await???;
    Ok(())
}
