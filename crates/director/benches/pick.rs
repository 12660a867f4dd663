//! The director's per-flow work before any byte moves: hash the 5-tuple and
//! look the node up in the Maglev table; and a pool rebuild (what a config
//! change or a health change costs, off the data path).

use std::hint::black_box;
use std::net::SocketAddr;

use control_api::pb::{self, HashFields, NodeState};
use criterion::{Criterion, criterion_group, criterion_main};
use director::{Pool, flow_hash};

fn nodes(n: usize) -> Vec<pb::Node> {
    (0..n)
        .map(|i| pb::Node {
            id: format!("node-{i}"),
            address: format!("10.0.{}.{}:443", i / 250, i % 250 + 1),
            weight: 100,
            state: NodeState::Active as i32,
            pool: "default".into(),
            ..Default::default()
        })
        .collect()
}

fn service() -> pb::Service {
    pb::Service {
        name: "web".into(),
        address: "127.0.0.1:443".into(),
        table_size: 65537,
        hash: 0,
        node_pool: "default".into(),
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let src: SocketAddr = "192.0.2.10:40123".parse().expect("addr");
    let dst: SocketAddr = "198.51.100.1:443".parse().expect("addr");
    c.bench_function("flow_hash_5tuple_v4", |b| {
        b.iter(|| flow_hash(HashFields::FiveTuple, black_box(src), black_box(dst)))
    });
    let pool = Pool::build(&service(), &nodes(100), |_| true).expect("pool");
    c.bench_function("pick_n100", |b| {
        b.iter(|| pool.pick(black_box(src), black_box(dst)).map(|(_, a)| a))
    });
    let ns = nodes(100);
    c.bench_function("pool_build_n100_m65537", |b| {
        b.iter(|| Pool::build(&service(), black_box(&ns), |_| true).map(|p| p.node_count()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
