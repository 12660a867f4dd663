//! Build and lookup cost of a Maglev table.
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use maglev::{Backend, DEFAULT_TABLE_SIZE, Table};

fn backends(n: usize) -> Vec<Backend> {
    (0..n)
        .map(|i| Backend::new(format!("10.0.{}.{}:8080", i / 256, i % 256), 1))
        .collect()
}

fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("build_m65537");
    for n in [10usize, 100, 1000] {
        let bs = backends(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &bs, |b, bs| {
            b.iter(|| Table::build(black_box(bs), DEFAULT_TABLE_SIZE))
        });
    }
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let Ok(table) = Table::build(&backends(100), DEFAULT_TABLE_SIZE) else {
        return;
    };
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    c.bench_function("lookup_n100", |b| {
        b.iter(|| {
            h = h.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            table.lookup(black_box(h))
        })
    });
}

criterion_group!(benches, build, lookup);
criterion_main!(benches);
