//! Tandem's control-plane API: the generated gRPC/protobuf code for
//! `tandem.control.v1`, and the watch client every director and node uses.
#![forbid(unsafe_code)]

pub mod pb {
    //! Generated from `proto/tandem/control/v1/*.proto`.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tandem.control.v1");

    /// Encoded file descriptor set of the API, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tandem_descriptor");
}

pub mod auth;
pub mod config;
pub mod tls;
pub mod watch;

pub use pb::{
    Certificate, Cluster, Endpoint, HashFields, LbPolicy, Node, NodeState, Route, Service,
    Snapshot, Tier, UpstreamProxyProtocol, XdpForwarding,
};

/// Default Maglev table size (prime).
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;

/// Parses a MAC address written `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod mac_tests {
    use super::parse_mac;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            parse_mac("02:00:0a:c8:00:0b"),
            Some([2, 0, 0x0a, 0xc8, 0, 0x0b])
        );
        assert_eq!(
            parse_mac("02-00-0A-C8-00-0B"),
            Some([2, 0, 0x0a, 0xc8, 0, 0x0b])
        );
        for bad in [
            "",
            "02:00:0a:c8:00",
            "02:00:0a:c8:00:0b:0c",
            "0g:00:00:00:00:00",
            "2:0:0:0:0:0",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
