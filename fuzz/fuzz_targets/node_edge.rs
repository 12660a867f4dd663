//! The node's request edge: arbitrary bytes from a client, after an
//! optional PROXY header, into a running node's plain-HTTP listener.
//! Whatever arrives, the node must not panic (libfuzzer aborts on a panic in
//! any thread) and must answer or close the connection in bounded time.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Edge {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
}

fn edge() -> &'static Edge {
    static EDGE: OnceLock<Edge> = OnceLock::new();
    EDGE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let addr = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let mut config = node::NodeConfig::new("fuzz", addr);
            config.proxy_protocol = node::ProxyProtocolMode::Optional;
            let n = node::Node::new(config);
            // One route to an endpoint that refuses connections (port 9 on
            // loopback): requests that get past parsing end in a quick 502.
            let snapshot = control_api::Snapshot {
                version: 1,
                clusters: vec![control_api::Cluster {
                    name: "app".into(),
                    endpoints: vec![control_api::Endpoint { address: "127.0.0.1:9".into(), weight: 1 }],
                    ..Default::default()
                }],
                routes: vec![control_api::Route { name: "all".into(), cluster: "app".into(), ..Default::default() }],
                ..Default::default()
            };
            n.apply(&snapshot).expect("snapshot");
            tokio::spawn(n.serve_plain(listener, tokio_util::sync::CancellationToken::new()));
            addr
        });
        Edge { rt, addr }
    })
}

fuzz_target!(|data: &[u8]| {
    let e = edge();
    e.rt.block_on(async {
        let Ok(mut s) = tokio::net::TcpStream::connect(e.addr).await else { return };
        let _ = s.write_all(data).await;
        let _ = s.shutdown().await;
        let mut buf = Vec::new();
        // The node answers or closes; it must not hang on a half-closed client.
        let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "node neither answered nor closed within 10 s");
    });
});
