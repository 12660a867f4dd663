//! The director as a client and a node see it: bytes through the VIP, the
//! PROXY v2 header the node receives, half-close, and flows that keep their
//! node while the pool changes under them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use control_api::pb::{self, NodeState};
use director::{Director, DirectorConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A fake L7 node: reads the PROXY header, answers with what it saw, then
/// echoes until the client half-closes, then closes its side.
async fn fake_node(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    serve_fake_node(name, l);
    addr
}

fn serve_fake_node(name: &'static str, l: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let header = loop {
                    let mut chunk = [0u8; 512];
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return; // a health probe, or a client that gave up
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    match proxy_protocol::decode(&buf).expect("valid PROXY header") {
                        proxy_protocol::Decoded::Complete { header, consumed } => {
                            buf.drain(..consumed);
                            break header;
                        }
                        proxy_protocol::Decoded::Incomplete { .. } => continue,
                    }
                };
                // LOCAL: a health check from the director; nothing to relay.
                let (Some(src), Some(dst)) = (header.source(), header.destination()) else {
                    return;
                };
                let hello = format!("{name} src={src} dst={dst}\n");
                s.write_all(hello.as_bytes()).await.expect("write");
                s.write_all(&buf).await.expect("write");
                let mut chunk = [0u8; 4096];
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&chunk[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    })
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn snapshot(
    version: u64,
    vip: SocketAddr,
    nodes: &[(&str, SocketAddr, NodeState)],
) -> pb::Snapshot {
    pb::Snapshot {
        version,
        services: vec![pb::Service {
            name: "web".into(),
            address: vip.to_string(),
            table_size: 65537,
            hash: pb::HashFields::FiveTuple as i32,
            node_pool: "default".into(),
            ..Default::default()
        }],
        nodes: nodes
            .iter()
            .map(|(id, addr, state)| pb::Node {
                id: (*id).into(),
                address: addr.to_string(),
                admin_address: String::new(),
                weight: 100,
                state: *state as i32,
                pool: "default".into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Opens a flow and reads the node's greeting line.
async fn open(vip: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(vip).await.expect("connect to VIP");
    s.write_all(b"ping\n").await.expect("write");
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"ping\n") {
        let n = s.read(&mut b).await.expect("read");
        assert!(
            n > 0,
            "flow closed early: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.push(b[0]);
    }
    let text = String::from_utf8(got).expect("utf8");
    let greeting = text.lines().next().expect("greeting").to_string();
    (s, greeting)
}

fn node_of(greeting: &str) -> &str {
    greeting.split_whitespace().next().expect("node name")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_bytes_with_proxy_v2_and_half_close() {
    let n1 = fake_node("node-1").await;
    let vip = free_addr();
    let d = Director::new(DirectorConfig::new("d-test"));
    d.apply(&snapshot(1, vip, &[("node-1", n1, NodeState::Active)]))
        .expect("apply");

    let mut s = TcpStream::connect(vip).await.expect("connect");
    let me = s.local_addr().expect("local");
    s.write_all(b"hello over the VIP").await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read to EOF");
    assert_eq!(
        out,
        format!("node-1 src={me} dst={vip}\nhello over the VIP")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_keep_their_node_while_the_pool_changes() {
    let nodes = [
        ("node-1", fake_node("node-1").await),
        ("node-2", fake_node("node-2").await),
        ("node-3", fake_node("node-3").await),
    ];
    let vip = free_addr();
    let d = Director::new(DirectorConfig::new("d-test"));
    let all: Vec<_> = nodes
        .iter()
        .map(|(n, a)| (*n, *a, NodeState::Active))
        .collect();
    d.apply(&snapshot(1, vip, &all)).expect("apply");

    let mut flows = Vec::new();
    for _ in 0..100 {
        let (s, greeting) = open(vip).await;
        flows.push((s, node_of(&greeting).to_string()));
    }
    let per_node: HashMap<&str, usize> = flows.iter().fold(HashMap::new(), |mut m, (_, n)| {
        *m.entry(n.as_str()).or_default() += 1;
        m
    });
    assert_eq!(
        per_node.len(),
        3,
        "100 flows should reach all nodes: {per_node:?}"
    );

    // node-1 drains, node-3 leaves the pool entirely, a new node-4 joins.
    let n4 = fake_node("node-4").await;
    let changed = vec![
        ("node-1", nodes[0].1, NodeState::Draining),
        ("node-2", nodes[1].1, NodeState::Active),
        ("node-4", n4, NodeState::Active),
    ];
    d.apply(&snapshot(2, vip, &changed)).expect("apply");

    // Every open flow still reaches its original node: the node echoes what
    // we send, on the same connection.
    for (i, (s, _)) in flows.iter_mut().enumerate() {
        let msg = format!("still there {i}\n");
        s.write_all(msg.as_bytes())
            .await
            .expect("write on an old flow");
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .expect("timely")
            .expect("read on an old flow");
        assert_eq!(buf, msg.as_bytes());
    }
    // New flows follow the new table: never node-1 (draining) or node-3 (gone).
    let mut new_nodes = HashMap::new();
    for _ in 0..60 {
        let (_s, greeting) = open(vip).await;
        *new_nodes.entry(node_of(&greeting).to_string()).or_insert(0) += 1;
    }
    assert!(
        !new_nodes.contains_key("node-1") && !new_nodes.contains_key("node-3"),
        "{new_nodes:?}"
    );
    assert!(
        new_nodes.contains_key("node-4"),
        "the new node gets flows: {new_nodes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_skipped_and_a_bad_snapshot_changes_nothing() {
    let live = fake_node("node-live").await;
    let dead = free_addr(); // nothing listens here
    let vip = free_addr();
    let d = Arc::new(DirectorConfig::new("d-test"));
    let d = Director::new((*d).clone());
    d.apply(&snapshot(
        1,
        vip,
        &[
            ("node-live", live, NodeState::Active),
            ("node-dead", dead, NodeState::Active),
        ],
    ))
    .expect("apply");
    for _ in 0..20 {
        let (_s, greeting) = open(vip).await;
        assert_eq!(node_of(&greeting), "node-live");
    }
    // A table size that is not prime is refused; the old table keeps serving.
    let mut bad = snapshot(2, vip, &[("node-live", live, NodeState::Active)]);
    bad.services[0].table_size = 65536;
    assert!(d.apply(&bad).is_err());
    let (_s, greeting) = open(vip).await;
    assert_eq!(node_of(&greeting), "node-live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_fails_health_checks_leaves_the_table_and_comes_back() {
    let keep = fake_node("node-keep").await;
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let flaky = l.local_addr().expect("addr");
    let task = serve_fake_node("node-flaky", l);
    let vip = free_addr();
    let mut config = DirectorConfig::new("d-test");
    config.health.interval = Duration::from_millis(100);
    config.health.rise = 2;
    config.health.fall = 2;
    let d = Director::new(config);
    d.apply(&snapshot(
        1,
        vip,
        &[
            ("node-keep", keep, NodeState::Active),
            ("node-flaky", flaky, NodeState::Active),
        ],
    ))
    .expect("apply");

    // Kill the flaky node: within interval x fall it is marked down.
    task.abort();
    let _ = task.await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while d.node_health().is_healthy("node-flaky") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node never marked down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(d.node_health().is_healthy("node-keep"));
    for _ in 0..20 {
        let (_s, greeting) = open(vip).await;
        assert_eq!(node_of(&greeting), "node-keep");
    }

    // It comes back on the same address: after `rise` successes it takes flows again.
    let l = TcpListener::bind(flaky).await.expect("rebind");
    let _task = serve_fake_node("node-flaky", l);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !d.node_health().is_healthy("node-flaky") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let (_s, greeting) = open(vip).await;
        seen.insert(node_of(&greeting).to_string());
    }
    assert!(
        seen.contains("node-flaky"),
        "recovered node gets new flows: {seen:?}"
    );
}

/// Reads until EOF or reset; true if the director closed the flow within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_vip_and_two_services_in_one_director() {
    let Ok(l6) = TcpListener::bind("[::1]:0").await else {
        eprintln!("skipping: no IPv6 loopback here");
        return;
    };
    let n6 = l6.local_addr().expect("addr");
    serve_fake_node("node-v6", l6);
    let n4 = fake_node("node-v4").await;
    let vip6: SocketAddr = {
        let l = std::net::TcpListener::bind("[::1]:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let vip4 = free_addr();
    let d = Director::new(DirectorConfig::new("d-test"));
    let mut snap = snapshot(1, vip4, &[("node-v4", n4, NodeState::Active)]);
    snap.services.push(pb::Service {
        name: "web6".into(),
        address: vip6.to_string(),
        table_size: 251,
        hash: pb::HashFields::SourceIp as i32,
        node_pool: "v6".into(),
        ..Default::default()
    });
    snap.nodes.push(pb::Node {
        id: "node-v6".into(),
        address: n6.to_string(),
        weight: 1,
        pool: "v6".into(),
        ..Default::default()
    });
    d.apply(&snap).expect("apply");

    let mut s = TcpStream::connect(vip6).await.expect("connect v6 VIP");
    let me = s.local_addr().expect("local");
    s.write_all(b"six").await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    assert_eq!(out, format!("node-v6 src={me} dst={vip6}\nsix"));

    let (_s, greeting) = open(vip4).await;
    assert_eq!(
        node_of(&greeting),
        "node-v4",
        "each service uses its own pool"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_flows_are_closed_and_others_are_not_disturbed() {
    let n1 = fake_node("node-1").await;
    let vip = free_addr();
    let mut config = DirectorConfig::new("d-test");
    config.idle_timeout = Duration::from_millis(300);
    let d = Director::new(config);
    d.apply(&snapshot(1, vip, &[("node-1", n1, NodeState::Active)]))
        .expect("apply");

    // A client that connects and sends nothing is closed after the idle timeout.
    let mut silent = TcpStream::connect(vip).await.expect("connect");
    // Meanwhile a busy client keeps talking and is not disturbed.
    let (mut busy, _) = open(vip).await;
    let talk = async {
        for i in 0..12 {
            let msg = format!("tick {i}\n");
            busy.write_all(msg.as_bytes()).await.expect("write");
            let mut buf = vec![0u8; msg.len()];
            busy.read_exact(&mut buf)
                .await
                .expect("busy flow still served");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (closed, ()) = tokio::join!(closed_within(&mut silent, Duration::from_secs(3)), talk);
    assert!(closed, "an idle flow was not closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused_at_once() {
    let n1 = fake_node("node-1").await;
    let vip = free_addr();
    let mut config = DirectorConfig::new("d-test");
    config.max_connections = 2;
    config.accept_loops = 1;
    let d = Director::new(config);
    d.apply(&snapshot(1, vip, &[("node-1", n1, NodeState::Active)]))
        .expect("apply");
    let (_a, _) = open(vip).await;
    let (_b, _) = open(vip).await;
    // The third is reset at once (maybe before connect() even returns).
    if let Ok(mut c) = TcpStream::connect(vip).await {
        assert!(
            closed_within(&mut c, Duration::from_secs(2)).await,
            "third flow should be refused, not queued"
        );
    }
    drop(_a);
    // A slot frees up: new flows are served again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no flow served after a slot freed"
        );
        // Until the old flow's relay has finished, new ones are still refused.
        let Ok(mut s) = TcpStream::connect(vip).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = s.write_all(b"ping\n").await;
        let mut buf = [0u8; 64];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await
            && n > 0
        {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_on_a_drained_node_close_at_the_drain_timeout() {
    let n1 = fake_node("node-1").await;
    let n2 = fake_node("node-2").await;
    let vip = free_addr();
    let mut config = DirectorConfig::new("d-test");
    config.node_drain_timeout = Some(Duration::from_millis(400));
    let d = Director::new(config);
    let nodes = [
        ("node-1", n1, NodeState::Active),
        ("node-2", n2, NodeState::Active),
    ];
    d.apply(&snapshot(1, vip, &nodes)).expect("apply");
    let mut on = HashMap::<String, Vec<TcpStream>>::new();
    for _ in 0..20 {
        let (s, g) = open(vip).await;
        on.entry(node_of(&g).to_string()).or_default().push(s);
    }
    assert_eq!(on.len(), 2, "{:?}", on.keys());
    d.apply(&snapshot(
        2,
        vip,
        &[
            ("node-1", n1, NodeState::Draining),
            ("node-2", n2, NodeState::Active),
        ],
    ))
    .expect("apply");
    for s in on.get_mut("node-1").expect("flows on node-1") {
        assert!(
            closed_within(s, Duration::from_secs(3)).await,
            "flow on the drained node outlived the drain timeout"
        );
    }
    for s in on.get_mut("node-2").expect("flows on node-2") {
        s.write_all(b"alive\n").await.expect("write");
        let mut buf = [0u8; 6];
        s.read_exact(&mut buf)
            .await
            .expect("flows on active nodes continue");
        assert_eq!(&buf, b"alive\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_is_timed_out_and_resets_disturb_no_one() {
    // A node that accepts and then never reads nor answers.
    let stalled = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let stalled_addr = stalled.local_addr().expect("addr");
    let held = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = stalled.accept().await {
            h.lock().await.push(s);
        }
    });
    let good = fake_node("node-good").await;
    let (vip_stalled, vip_good) = (free_addr(), free_addr());
    let mut config = DirectorConfig::new("d-test");
    config.idle_timeout = Duration::from_millis(400);
    let d = Director::new(config);
    let mut snap = snapshot(
        1,
        vip_stalled,
        &[("node-stalled", stalled_addr, NodeState::Active)],
    );
    snap.services.push(pb::Service {
        name: "good".into(),
        address: vip_good.to_string(),
        table_size: 251,
        hash: 0,
        node_pool: "good".into(),
        ..Default::default()
    });
    snap.nodes.push(pb::Node {
        id: "node-good".into(),
        address: good.to_string(),
        weight: 1,
        pool: "good".into(),
        ..Default::default()
    });
    d.apply(&snap).expect("apply");

    // The client talks, the node never answers: the flow is closed.
    let mut c = TcpStream::connect(vip_stalled).await.expect("connect");
    c.write_all(b"hello?").await.expect("write");
    assert!(
        closed_within(&mut c, Duration::from_secs(5)).await,
        "a flow to a stalled node was never timed out"
    );

    // Clients that reset at once, many of them, while another flow is served.
    let (mut busy, _) = open(vip_good).await;
    for _ in 0..50 {
        let s = TcpStream::connect(vip_good).await.expect("connect");
        s.set_zero_linger().expect("linger");
        drop(s); // RST
    }
    busy.write_all(b"still fine\n").await.expect("write");
    let mut buf = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), busy.read_exact(&mut buf))
        .await
        .expect("timely")
        .expect("read");
    assert_eq!(&buf, b"still fine\n");
    let (_s, greeting) = open(vip_good).await;
    assert_eq!(node_of(&greeting), "node-good");
}
