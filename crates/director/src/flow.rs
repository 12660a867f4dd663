//! The flow hash: which slot of the Maglev table a new flow looks up.
//!
//! Every director must map the same flow to the same slot, so the hash is a
//! fixed, specified function: XXH64 with seed [`FLOW_HASH_SEED`] over
//! `src_ip || src_port_be || dst_ip || dst_port_be || protocol` (5-tuple,
//! protocol 6 for TCP; IPv4 as 4 bytes, IPv6 as 16), or over `src_ip` alone
//! for source-address hashing.

use std::net::{IpAddr, SocketAddr};

use control_api::HashFields;
use xxhash_rust::xxh64::Xxh64;

/// Seed of the flow hash ("TANDFLOW" as ASCII). Changing it moves flows.
pub const FLOW_HASH_SEED: u64 = u64::from_be_bytes(*b"TANDFLOW");

const IPPROTO_TCP: u8 = 6;

fn put_ip(h: &mut Xxh64, ip: IpAddr) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => h.update(&v4.octets()),
        IpAddr::V6(v6) => h.update(&v6.octets()),
    }
}

/// Hash of a TCP flow from `src` to `dst` over the given fields.
pub fn flow_hash(fields: HashFields, src: SocketAddr, dst: SocketAddr) -> u64 {
    let mut h = Xxh64::new(FLOW_HASH_SEED);
    put_ip(&mut h, src.ip());
    if fields == HashFields::FiveTuple {
        h.update(&src.port().to_be_bytes());
        put_ip(&mut h, dst.ip());
        h.update(&dst.port().to_be_bytes());
        h.update(&[IPPROTO_TCP]);
    }
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn golden_values_are_stable() {
        // Directors of different versions must agree: pin the function. The
        // expected values were computed independently with Python's xxhash
        // package: xxh64(bytes, seed=int.from_bytes(b"TANDFLOW", "big")).
        let five = flow_hash(
            HashFields::FiveTuple,
            sa("192.0.2.1:40000"),
            sa("198.51.100.7:443"),
        );
        let src = flow_hash(
            HashFields::SourceIp,
            sa("192.0.2.1:40000"),
            sa("198.51.100.7:443"),
        );
        assert_eq!(five, GOLDEN_FIVE, "5-tuple flow hash changed: {five:#x}");
        assert_eq!(src, GOLDEN_SRC, "source flow hash changed: {src:#x}");
    }

    const GOLDEN_FIVE: u64 = 0x9f27_d618_70f9_6ffc;
    const GOLDEN_SRC: u64 = 0x060f_d31f_b498_9a03;

    #[test]
    fn source_ip_ignores_ports_and_destination() {
        let a = flow_hash(
            HashFields::SourceIp,
            sa("192.0.2.1:40000"),
            sa("198.51.100.7:443"),
        );
        let b = flow_hash(
            HashFields::SourceIp,
            sa("192.0.2.1:40001"),
            sa("198.51.100.8:8443"),
        );
        assert_eq!(a, b);
    }

    #[test]
    fn five_tuple_uses_ports() {
        let a = flow_hash(
            HashFields::FiveTuple,
            sa("192.0.2.1:40000"),
            sa("198.51.100.7:443"),
        );
        let b = flow_hash(
            HashFields::FiveTuple,
            sa("192.0.2.1:40001"),
            sa("198.51.100.7:443"),
        );
        assert_ne!(a, b);
    }

    #[test]
    fn v4_mapped_v6_hashes_as_v4() {
        let a = flow_hash(
            HashFields::FiveTuple,
            sa("192.0.2.1:40000"),
            sa("198.51.100.7:443"),
        );
        let b = flow_hash(
            HashFields::FiveTuple,
            sa("[::ffff:192.0.2.1]:40000"),
            sa("[::ffff:198.51.100.7]:443"),
        );
        assert_eq!(a, b);
    }
}
