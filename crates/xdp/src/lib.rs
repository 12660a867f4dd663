//! Tandem's director xdp data plane.
//!
//! API CONTRACT (shared by the data-plane and the integration work; keep the
//! signatures, add to them only). Implementation pending.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Where an XDP program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// SKB (generic) mode: works on any interface.
    Generic,
    /// Driver (native) mode.
    Native,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// A VIP as the data plane matches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

/// How packets of a VIP reach the chosen node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// Rewrite the destination MAC to the node's, source MAC to ours; XDP_TX.
    L2Dsr,
    /// Outer IPv4 (or IPv6 for an IPv6 tunnel address) header, protocol 4/41.
    Ipip,
    /// Outer IP + UDP to port [`GUE_PORT`], then the inner IP packet.
    Gue,
}

/// UDP port of GUE (variant 1, direct IP) encapsulation.
pub const GUE_PORT: u16 = 6080;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipSettings {
    /// Index of this VIP's Maglev ring, `0..Options::max_vips`; also the
    /// index of its counters.
    pub ring: u32,
    /// Slots used in the ring (the service's prime table size).
    pub table_size: u32,
    pub forwarding: Forwarding,
    /// Hash the source address only (else the 5-tuple).
    pub hash_source_only: bool,
}

/// Where node `n` is: its MAC (next hop for L2 DSR and for encapsulated
/// packets) and its address (tunnel destination for IPIP/GUE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeTarget {
    pub mac: [u8; 6],
    pub addr: IpAddr,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub max_vips: u32,
    pub max_nodes: u32,
    /// Largest table size a VIP may use (ring stride).
    pub max_table_size: u32,
    /// Entries of the per-CPU LRU flow table.
    pub flow_table_size: u32,
    /// Outer source addresses of encapsulated packets.
    pub tunnel_source_v4: Option<Ipv4Addr>,
    pub tunnel_source_v6: Option<Ipv6Addr>,
    /// Largest packet the director->node link carries; an encapsulated
    /// packet above it gets ICMP "fragmentation needed" / "packet too big"
    /// toward the client.
    pub mtu: u16,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_vips: 64,
            max_nodes: 1024,
            max_table_size: 65_537,
            flow_table_size: 1 << 20,
            tunnel_source_v4: None,
            tunnel_source_v6: None,
            mtu: 1500,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// By ring index.
    pub vips: Vec<(u32, Counter)>,
    /// By node index.
    pub nodes: Vec<(u32, Counter)>,
    /// Packets of a VIP with no flow entry (new flows and LRU evictions).
    pub flow_misses: u64,
    /// Packets for a VIP with no node to send to (dropped).
    pub no_node: u64,
    /// ICMP too-big replies sent.
    pub icmp_too_big: u64,
    /// Packets passed to the kernel (not for a VIP).
    pub passed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("interface {0:?} not found")]
    NoInterface(String),
    #[error("{0}")]
    Bpf(String),
    #[error("index {index} out of range (max {max})")]
    OutOfRange { index: u32, max: u32 },
}

/// The director program attached to one interface. Dropping it detaches.
pub struct Dataplane {
    _private: (),
}

impl Dataplane {
    pub fn attach(_ifname: &str, _mode: AttachMode, _opts: &Options) -> Result<Self, XdpError> {
        Err(XdpError::Bpf("not implemented yet".into()))
    }
    pub fn set_vip(&mut self, _key: VipKey, _s: &VipSettings) -> Result<(), XdpError> {
        Err(XdpError::Bpf("not implemented yet".into()))
    }
    pub fn remove_vip(&mut self, _key: &VipKey) -> Result<(), XdpError> {
        Err(XdpError::Bpf("not implemented yet".into()))
    }
    /// Node `index` (0..max_nodes) is at `t`; flows pinned to it keep going there.
    pub fn set_node(&mut self, _index: u32, _t: &NodeTarget) -> Result<(), XdpError> {
        Err(XdpError::Bpf("not implemented yet".into()))
    }
    /// Node `index` is gone: flows pinned to it are re-hashed on their next packet.
    pub fn remove_node(&mut self, _index: u32) -> Result<(), XdpError> {
        Err(XdpError::Bpf("not implemented yet".into()))
    }
    /// Writes `(slot, node index)` pairs into ring `ring`: only changed slots.
    pub fn set_slots(&mut self, _ring: u32, _slots: &[(u32, u32)]) -> Result<(), XdpError> {
        Err(XdpError::Bpf("not implemented yet".into()))
    }
    pub fn stats(&self) -> Result<Stats, XdpError> {
        Err(XdpError::Bpf("not implemented yet".into()))
    }
}

/// The node-side decapsulation program (IPIP and GUE) on one interface.
pub struct Decap {
    _private: (),
}

impl Decap {
    pub fn attach(_ifname: &str, _mode: AttachMode) -> Result<Self, XdpError> {
        Err(XdpError::Bpf("not implemented yet".into()))
    }
    /// Packets decapsulated so far.
    pub fn decapsulated(&self) -> Result<Counter, XdpError> {
        Err(XdpError::Bpf("not implemented yet".into()))
    }
}

/// An XDP_PASS program, for the peer of a veth that receives XDP_TX or
/// redirected frames in native mode.
pub struct Pass {
    _private: (),
}

impl Pass {
    pub fn attach(_ifname: &str, _mode: AttachMode) -> Result<Self, XdpError> {
        Err(XdpError::Bpf("not implemented yet".into()))
    }
}
