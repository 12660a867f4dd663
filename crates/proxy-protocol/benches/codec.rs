//! Encode and decode cost of a v4 header, with and without TLVs.
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use criterion::{Criterion, criterion_group, criterion_main};
use proxy_protocol::{Header, decode, tlv};

fn headers() -> [(&'static str, Header); 2] {
    let src = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 56324));
    let dst = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 443));
    let plain = Header::proxy(src, dst);
    let with_tlvs = plain
        .clone()
        .with_tlv(tlv::AUTHORITY, "www.example.com")
        .with_tlv(tlv::ALPN, "h2")
        .with_tlv(tlv::UNIQUE_ID, [0x42u8; 16]);
    [("v4", plain), ("v4_tlvs", with_tlvs)]
}

fn codec(c: &mut Criterion) {
    for (name, h) in headers() {
        let mut out = Vec::with_capacity(256);
        c.bench_function(&format!("encode_{name}"), |b| {
            b.iter(|| {
                out.clear();
                black_box(&h).encode(&mut out)
            })
        });
        let Ok(bytes) = h.to_bytes() else { continue };
        c.bench_function(&format!("decode_{name}"), |b| {
            b.iter(|| decode(black_box(&bytes)))
        });
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
