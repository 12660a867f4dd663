//! Tandem's director xdp data plane.
//!
//! API CONTRACT (shared by the data-plane and the integration work; keep the
//! signatures, add to them only).
//!
//! Three BPF programs, written in C (`bpf/*.c`) and compiled by `build.rs`
//! with clang, loaded with aya:
//! - [`Dataplane`]: the director (XDP). Packets to a VIP go to a node picked
//!   from the VIP's Maglev ring and remembered in a flow table, by L2 DSR or
//!   IPIP/GUE encapsulation; everything else is passed to the kernel.
//! - [`Decap`]: the node side of IPIP/GUE: strips the outer headers and
//!   passes the inner packet to the kernel (the VIP lives on `lo`).
//! - [`Pass`]: XDP_PASS, for veth peers that receive XDP_TX'd frames in
//!   native mode.
//!
//! Map layout (names as in the C source; sizes from [`Options`]):
//! - `vips` HASH `vip_key{addr[4], port(be), proto, family}` ->
//!   `vip_meta{ring, table_size, forwarding, flags}`, `max_vips` entries.
//! - `ring` ARRAY of u32 node indexes, `max_vips * max_table_size` entries;
//!   slot `s` of ring `r` is entry `r * max_table_size + s`.
//! - `nodes` ARRAY of `node_entry{addr[4], mac[6], family, present}`,
//!   `max_nodes` entries.
//! - `flows` LRU_HASH (shared by all CPUs) `flow_key{src[4], dst[4],
//!   sport, dport, proto, family}` -> u32 node index, `flow_table_size`.
//! - `vip_stats` / `node_stats` PERCPU_ARRAY of `{packets, bytes}` by ring
//!   and node index; `globals` PERCPU_ARRAY of u64: flow misses, no node,
//!   ICMP too big, passed.
//! - `config` ARRAY[1]: tunnel sources, the interface's MAC, MTU, ring
//!   stride.
#![deny(unsafe_code)]

mod pod;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};

use pod::{AddrC, ConfigC, CounterC, DecapConfigC, FlowKeyC, NodeC, VipKeyC, VipMetaC};

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

/// One entry of the director's flow table (for tests and diagnostics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub protocol: Protocol,
    /// The node index the flow is pinned to.
    pub node: u32,
}

#[cfg(not(xdp_no_bpf))]
mod objects {
    pub static DIRECTOR: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/director.o"));
    pub static DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/decap.o"));
    pub static PASS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pass.o"));
}

#[cfg(xdp_no_bpf)]
mod objects {
    pub static DIRECTOR: &[u8] = &[];
    pub static DECAP: &[u8] = &[];
    pub static PASS: &[u8] = &[];
}

/// Why the crate has no BPF objects, if it has none.
const NOT_BUILT: &str = "built without clang: install clang llvm libbpf-dev and rebuild";

const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const FWD_L2DSR: u8 = 0;
const FWD_IPIP: u8 = 1;
const FWD_GUE: u8 = 2;
const VIP_F_HASH_SOURCE: u8 = 1;
const G_FLOW_MISSES: u32 = 0;
const G_NO_NODE: u32 = 1;
const G_ICMP_TOO_BIG: u32 = 2;
const G_PASSED: u32 = 3;

fn bpf_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> XdpError {
    XdpError::Bpf(format!("{what}: {e}"))
}

fn encode_addr(ip: IpAddr) -> ([u32; 4], u8) {
    match ip {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut a = [0u32; 4];
            for (i, w) in a.iter_mut().enumerate() {
                *w = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
            }
            (a, FAMILY_V6)
        }
    }
}

fn decode_addr(a: [u32; 4], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::from(a[0].to_ne_bytes()))
    } else {
        let mut o = [0u8; 16];
        for (i, w) in a.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o))
    }
}

/// A port as the packet carries it (network order in memory).
fn wire_port(p: u16) -> u16 {
    u16::from_ne_bytes(p.to_be_bytes())
}

fn host_port(p: u16) -> u16 {
    u16::from_be_bytes(p.to_ne_bytes())
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    }
}

fn vip_key(k: &VipKey) -> VipKeyC {
    let (addr, family) = encode_addr(k.addr);
    VipKeyC {
        addr,
        port: wire_port(k.port),
        proto: proto_number(k.protocol),
        family,
    }
}

fn xdp_mode(mode: AttachMode) -> XdpMode {
    match mode {
        AttachMode::Generic => XdpMode::Skb,
        AttachMode::Native => XdpMode::Driver,
    }
}

/// The interface's MAC address (in the calling thread's network namespace),
/// or None if it has none.
fn interface_mac(ifname: &str) -> Result<Option<[u8; 6]>, XdpError> {
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| bpf_err(format_args!("listing interfaces for {ifname:?}"), e))?;
    for a in addrs {
        if a.interface_name != ifname {
            continue;
        }
        if let Some(mac) = a
            .address
            .as_ref()
            .and_then(|s| s.as_link_addr())
            .and_then(|l| l.addr())
        {
            return Ok(Some(mac));
        }
    }
    Ok(None)
}

fn check_interface(ifname: &str) -> Result<(), XdpError> {
    match nix::net::if_::if_nametoindex(ifname) {
        Ok(_) => Ok(()),
        Err(_) => Err(XdpError::NoInterface(ifname.to_string())),
    }
}

/// Loads `object` (sizes from `sizes`), then loads and attaches its XDP
/// program `prog` to `ifname`.
fn load_and_attach(
    object: &[u8],
    sizes: &[(&'static str, u32)],
    prog: &str,
    ifname: &str,
    mode: AttachMode,
    before_attach: impl FnOnce(&mut Ebpf) -> Result<(), XdpError>,
) -> Result<Ebpf, XdpError> {
    if cfg!(xdp_no_bpf) || object.is_empty() {
        return Err(XdpError::Bpf(format!("{prog} on {ifname}: {NOT_BUILT}")));
    }
    check_interface(ifname)?;
    let mut loader = EbpfLoader::new();
    for (map, size) in sizes {
        loader.map_max_entries(map, *size);
    }
    let mut ebpf = loader
        .load(object)
        .map_err(|e| bpf_err(format_args!("loading {prog} (maps and BTF)"), e))?;
    {
        let program: &mut Xdp = ebpf
            .program_mut(prog)
            .ok_or_else(|| XdpError::Bpf(format!("program {prog} missing from its object")))?
            .try_into()
            .map_err(|e| bpf_err(format_args!("program {prog}"), e))?;
        program
            .load()
            .map_err(|e| bpf_err(format_args!("verifying {prog}"), verifier_message(&e)))?;
    }
    before_attach(&mut ebpf)?;
    let program: &mut Xdp = ebpf
        .program_mut(prog)
        .ok_or_else(|| XdpError::Bpf(format!("program {prog} missing from its object")))?
        .try_into()
        .map_err(|e| bpf_err(format_args!("program {prog}"), e))?;
    program.attach(ifname, xdp_mode(mode)).map_err(|e| {
        bpf_err(
            format_args!(
                "attaching {prog} to {ifname} in {mode:?} mode (another XDP program there?)"
            ),
            verifier_message(&e),
        )
    })?;
    Ok(ebpf)
}

/// aya's error with its whole source chain (the verifier log is a source).
fn verifier_message(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The kernel's id of program `prog` (as `bpftool prog show` lists it).
fn program_id(ebpf: &Ebpf, prog: &str) -> Result<u32, XdpError> {
    let p = ebpf
        .program(prog)
        .ok_or_else(|| XdpError::Bpf(format!("program {prog} missing from its object")))?;
    p.info()
        .map(|i| i.id())
        .map_err(|e| bpf_err(format_args!("program {prog} info"), e))
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, XdpError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| XdpError::Bpf(format!("map {name} missing from the BPF object")))?;
    T::try_from(map).map_err(|e| bpf_err(format_args!("map {name}"), e))
}

fn sum_counters(values: &[CounterC]) -> Counter {
    values.iter().fold(Counter::default(), |acc, c| Counter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    })
}

/// The director program attached to one interface. Dropping it detaches.
pub struct Dataplane {
    ifname: String,
    opts: Options,
    mac: [u8; 6],
    vips: HashMap<MapData, VipKeyC, VipMetaC>,
    ring: Array<MapData, u32>,
    nodes: Array<MapData, NodeC>,
    flows: HashMap<MapData, FlowKeyC, u32>,
    vip_stats: PerCpuArray<MapData, CounterC>,
    node_stats: PerCpuArray<MapData, CounterC>,
    globals: PerCpuArray<MapData, u64>,
    /// Owns the program and its link: dropped last, it detaches.
    _ebpf: Ebpf,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("ifname", &self.ifname)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Dataplane {
    /// Loads the director program with maps sized from `opts` and attaches
    /// it to `ifname` (looked up in the calling thread's network namespace).
    /// The source MAC of forwarded frames is the interface's own.
    pub fn attach(ifname: &str, mode: AttachMode, opts: &Options) -> Result<Self, XdpError> {
        if opts.max_vips == 0 || opts.max_nodes == 0 || opts.max_table_size == 0 {
            return Err(XdpError::Bpf(format!(
                "director on {ifname}: max_vips, max_nodes and max_table_size must be > 0"
            )));
        }
        let ring_len = opts
            .max_vips
            .checked_mul(opts.max_table_size)
            .ok_or_else(|| {
                XdpError::Bpf(format!(
                    "director on {ifname}: max_vips * max_table_size overflows u32"
                ))
            })?;
        if opts.flow_table_size == 0 {
            return Err(XdpError::Bpf(format!(
                "director on {ifname}: flow_table_size must be > 0"
            )));
        }
        check_interface(ifname)?;
        let mac = interface_mac(ifname)?.unwrap_or_default();
        let mut config = ConfigC {
            mac,
            mtu: opts.mtu,
            max_table_size: opts.max_table_size,
            ..ConfigC::default()
        };
        if let Some(v4) = opts.tunnel_source_v4 {
            config.tun_v4 = encode_addr(IpAddr::V4(v4)).0[0];
            config.has_v4 = 1;
        }
        if let Some(v6) = opts.tunnel_source_v6 {
            config.tun_v6 = encode_addr(IpAddr::V6(v6)).0;
            config.has_v6 = 1;
        }
        let sizes = [
            ("vips", opts.max_vips),
            ("ring", ring_len),
            ("nodes", opts.max_nodes),
            ("flows", opts.flow_table_size),
            ("vip_stats", opts.max_vips),
            ("node_stats", opts.max_nodes),
        ];
        let mut ebpf = load_and_attach(
            objects::DIRECTOR,
            &sizes,
            "tandem_director",
            ifname,
            mode,
            |ebpf| {
                let mut cfg: Array<_, ConfigC> = Array::try_from(
                    ebpf.map_mut("config")
                        .ok_or_else(|| XdpError::Bpf("map config missing".into()))?,
                )
                .map_err(|e| bpf_err("map config", e))?;
                cfg.set(0, config, 0)
                    .map_err(|e| bpf_err("writing the director's config map", e))
            },
        )?;
        tracing::info!(ifname, ?mode, "xdp director attached");
        Ok(Dataplane {
            ifname: ifname.to_string(),
            opts: opts.clone(),
            mac,
            vips: take(&mut ebpf, "vips")?,
            ring: take(&mut ebpf, "ring")?,
            nodes: take(&mut ebpf, "nodes")?,
            flows: take(&mut ebpf, "flows")?,
            vip_stats: take(&mut ebpf, "vip_stats")?,
            node_stats: take(&mut ebpf, "node_stats")?,
            globals: take(&mut ebpf, "globals")?,
            _ebpf: ebpf,
        })
    }

    /// The kernel's id of the attached program (`bpftool prog show id N`;
    /// also for `bpftool prog run id N` in tests).
    pub fn program_id(&self) -> Result<u32, XdpError> {
        program_id(&self._ebpf, "tandem_director")
    }

    /// The interface the program is attached to.
    pub fn interface(&self) -> &str {
        &self.ifname
    }

    /// The source MAC written into forwarded frames (all zero: the interface
    /// has none, and the frame's destination MAC is used).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn set_vip(&mut self, key: VipKey, s: &VipSettings) -> Result<(), XdpError> {
        if s.ring >= self.opts.max_vips {
            return Err(XdpError::OutOfRange {
                index: s.ring,
                max: self.opts.max_vips - 1,
            });
        }
        if s.table_size == 0 || s.table_size > self.opts.max_table_size {
            return Err(XdpError::OutOfRange {
                index: s.table_size,
                max: self.opts.max_table_size,
            });
        }
        if s.forwarding != Forwarding::L2Dsr
            && self.opts.tunnel_source_v4.is_none()
            && self.opts.tunnel_source_v6.is_none()
        {
            return Err(XdpError::Bpf(format!(
                "VIP {}:{} uses {:?} but Options has no tunnel_source_v4/v6",
                key.addr, key.port, s.forwarding
            )));
        }
        let meta = VipMetaC {
            ring: s.ring,
            table_size: s.table_size,
            forwarding: match s.forwarding {
                Forwarding::L2Dsr => FWD_L2DSR,
                Forwarding::Ipip => FWD_IPIP,
                Forwarding::Gue => FWD_GUE,
            },
            flags: if s.hash_source_only {
                VIP_F_HASH_SOURCE
            } else {
                0
            },
            pad: 0,
        };
        self.vips
            .insert(vip_key(&key), meta, 0)
            .map_err(|e| bpf_err(format_args!("vips map on {}: insert", self.ifname), e))
    }

    pub fn remove_vip(&mut self, key: &VipKey) -> Result<(), XdpError> {
        match self.vips.remove(&vip_key(key)) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(bpf_err(
                format_args!("vips map on {}: remove", self.ifname),
                e,
            )),
        }
    }

    fn check_node(&self, index: u32) -> Result<(), XdpError> {
        if index >= self.opts.max_nodes {
            return Err(XdpError::OutOfRange {
                index,
                max: self.opts.max_nodes - 1,
            });
        }
        Ok(())
    }

    /// Node `index` (0..max_nodes) is at `t`; flows pinned to it keep going there.
    pub fn set_node(&mut self, index: u32, t: &NodeTarget) -> Result<(), XdpError> {
        self.check_node(index)?;
        let (addr, family) = encode_addr(t.addr);
        let node = NodeC {
            addr,
            mac: t.mac,
            family,
            present: 1,
        };
        self.nodes
            .set(index, node, 0)
            .map_err(|e| bpf_err(format_args!("nodes map on {}: set {index}", self.ifname), e))
    }

    /// Node `index` is gone: flows pinned to it are re-hashed on their next packet.
    pub fn remove_node(&mut self, index: u32) -> Result<(), XdpError> {
        self.check_node(index)?;
        self.nodes.set(index, NodeC::default(), 0).map_err(|e| {
            bpf_err(
                format_args!("nodes map on {}: clear {index}", self.ifname),
                e,
            )
        })
    }

    /// Writes `(slot, node index)` pairs into ring `ring`: only changed slots.
    pub fn set_slots(&mut self, ring: u32, slots: &[(u32, u32)]) -> Result<(), XdpError> {
        if ring >= self.opts.max_vips {
            return Err(XdpError::OutOfRange {
                index: ring,
                max: self.opts.max_vips - 1,
            });
        }
        for &(slot, node) in slots {
            if slot >= self.opts.max_table_size {
                return Err(XdpError::OutOfRange {
                    index: slot,
                    max: self.opts.max_table_size - 1,
                });
            }
            self.check_node(node)?;
            let idx = ring * self.opts.max_table_size + slot;
            self.ring.set(idx, node, 0).map_err(|e| {
                bpf_err(
                    format_args!("ring map on {}: ring {ring} slot {slot}", self.ifname),
                    e,
                )
            })?;
        }
        Ok(())
    }

    /// Counters summed over CPUs. `vips` and `nodes` list only indexes that
    /// saw traffic.
    pub fn stats(&self) -> Result<Stats, XdpError> {
        let mut stats = Stats::default();
        for index in 0..self.opts.max_vips {
            let v = self
                .vip_stats
                .get(&index, 0)
                .map_err(|e| bpf_err(format_args!("vip_stats map on {}", self.ifname), e))?;
            let c = sum_counters(&v);
            if c.packets > 0 {
                stats.vips.push((index, c));
            }
        }
        for index in 0..self.opts.max_nodes {
            let v = self
                .node_stats
                .get(&index, 0)
                .map_err(|e| bpf_err(format_args!("node_stats map on {}", self.ifname), e))?;
            let c = sum_counters(&v);
            if c.packets > 0 {
                stats.nodes.push((index, c));
            }
        }
        let global = |which: u32| -> Result<u64, XdpError> {
            let v = self
                .globals
                .get(&which, 0)
                .map_err(|e| bpf_err(format_args!("globals map on {}", self.ifname), e))?;
            Ok(v.iter().sum())
        };
        stats.flow_misses = global(G_FLOW_MISSES)?;
        stats.no_node = global(G_NO_NODE)?;
        stats.icmp_too_big = global(G_ICMP_TOO_BIG)?;
        stats.passed = global(G_PASSED)?;
        Ok(stats)
    }

    /// The flow table's entries (a snapshot; for tests and diagnostics).
    pub fn flows(&self) -> Result<Vec<Flow>, XdpError> {
        let mut out = Vec::new();
        for item in self.flows.iter() {
            let (k, node) = match item {
                Ok(kv) => kv,
                // An entry evicted or removed while we iterate.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(bpf_err(format_args!("flows map on {}", self.ifname), e)),
            };
            let protocol = match k.proto {
                IPPROTO_TCP => Protocol::Tcp,
                IPPROTO_UDP => Protocol::Udp,
                _ => continue,
            };
            out.push(Flow {
                client: SocketAddr::new(decode_addr(k.src, k.family), host_port(k.sport)),
                vip: SocketAddr::new(decode_addr(k.dst, k.family), host_port(k.dport)),
                protocol,
                node,
            });
        }
        Ok(out)
    }

    /// The node a flow is pinned to, if it is in the flow table.
    pub fn flow_node(
        &self,
        client: SocketAddr,
        vip: SocketAddr,
        protocol: Protocol,
    ) -> Result<Option<u32>, XdpError> {
        let (src, family) = encode_addr(client.ip());
        let (dst, _) = encode_addr(vip.ip());
        let key = FlowKeyC {
            src,
            dst,
            sport: wire_port(client.port()),
            dport: wire_port(vip.port()),
            proto: proto_number(protocol),
            family,
            pad: 0,
        };
        match self.flows.get(&key, 0) {
            Ok(n) => Ok(Some(n)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(bpf_err(format_args!("flows map on {}", self.ifname), e)),
        }
    }
}

/// The node-side decapsulation program (IPIP and GUE) on one interface.
///
/// It decapsulates IPIP (IPv4 protocol 4/41, IPv6 next header 4/41) and GUE
/// (UDP to [`GUE_PORT`]) packets and passes the inner packet to the kernel.
/// Until [`Decap::accept_tunnel_destination`] is called it accepts any
/// outer destination; after that, only the listed ones.
pub struct Decap {
    ifname: String,
    tunnel_dsts: HashMap<MapData, AddrC, u8>,
    config: Array<MapData, DecapConfigC>,
    stats: PerCpuArray<MapData, CounterC>,
    _ebpf: Ebpf,
}

impl std::fmt::Debug for Decap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decap")
            .field("ifname", &self.ifname)
            .finish_non_exhaustive()
    }
}

impl Decap {
    pub fn attach(ifname: &str, mode: AttachMode) -> Result<Self, XdpError> {
        let mut ebpf =
            load_and_attach(
                objects::DECAP,
                &[],
                "tandem_decap",
                ifname,
                mode,
                |_| Ok(()),
            )?;
        tracing::info!(ifname, ?mode, "xdp decap attached");
        Ok(Decap {
            ifname: ifname.to_string(),
            tunnel_dsts: take(&mut ebpf, "tunnel_dsts")?,
            config: take(&mut ebpf, "decap_config")?,
            stats: take(&mut ebpf, "decap_stats")?,
            _ebpf: ebpf,
        })
    }

    /// Decapsulates only packets whose outer destination is one of the
    /// addresses given so far (up to 64).
    pub fn accept_tunnel_destination(&mut self, ip: IpAddr) -> Result<(), XdpError> {
        let (addr, _) = encode_addr(ip);
        self.tunnel_dsts
            .insert(AddrC { addr }, 1, 0)
            .map_err(|e| bpf_err(format_args!("tunnel_dsts map on {}", self.ifname), e))?;
        self.config
            .set(0, DecapConfigC { filter: 1 }, 0)
            .map_err(|e| bpf_err(format_args!("decap_config map on {}", self.ifname), e))
    }

    /// The kernel's id of the attached program.
    pub fn program_id(&self) -> Result<u32, XdpError> {
        program_id(&self._ebpf, "tandem_decap")
    }

    /// Packets decapsulated so far.
    pub fn decapsulated(&self) -> Result<Counter, XdpError> {
        let v = self
            .stats
            .get(&0, 0)
            .map_err(|e| bpf_err(format_args!("decap_stats map on {}", self.ifname), e))?;
        Ok(sum_counters(&v))
    }
}

/// An XDP_PASS program, for the peer of a veth that receives XDP_TX or
/// redirected frames in native mode.
pub struct Pass {
    _ebpf: Ebpf,
}

impl std::fmt::Debug for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pass").finish_non_exhaustive()
    }
}

impl Pass {
    pub fn attach(ifname: &str, mode: AttachMode) -> Result<Self, XdpError> {
        let ebpf = load_and_attach(objects::PASS, &[], "tandem_pass", ifname, mode, |_| Ok(()))?;
        Ok(Pass { _ebpf: ebpf })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_stored_in_network_order() {
        let (a, f) = encode_addr("10.201.0.100".parse().unwrap());
        assert_eq!(f, FAMILY_V4);
        assert_eq!(a[0].to_ne_bytes(), [10, 201, 0, 100]);
        assert_eq!(&a[1..], &[0, 0, 0]);
        let v6: IpAddr = "fd00::1:2".parse().unwrap();
        let (a, f) = encode_addr(v6);
        assert_eq!(f, FAMILY_V6);
        assert_eq!(a[0].to_ne_bytes(), [0xfd, 0, 0, 0]);
        assert_eq!(a[3].to_ne_bytes(), [0, 1, 0, 2]);
        assert_eq!(decode_addr(a, f), v6);
        assert_eq!(wire_port(80).to_ne_bytes(), [0, 80]);
        assert_eq!(host_port(wire_port(8080)), 8080);
    }

    #[test]
    fn vip_key_bytes() {
        let k = vip_key(&VipKey {
            addr: "10.201.0.100".parse().unwrap(),
            port: 443,
            protocol: Protocol::Tcp,
        });
        assert_eq!(k.port.to_ne_bytes(), 443u16.to_be_bytes());
        assert_eq!(k.proto, 6);
        assert_eq!(k.family, 4);
    }

    #[test]
    fn without_objects_attach_says_how_to_fix_it() {
        if !cfg!(xdp_no_bpf) {
            return;
        }
        let e = Pass::attach("lo", AttachMode::Generic).unwrap_err();
        assert!(
            e.to_string().contains("install clang llvm libbpf-dev"),
            "{e}"
        );
    }

    #[test]
    fn unknown_interface_is_named() {
        if cfg!(xdp_no_bpf) {
            return;
        }
        match Dataplane::attach("tdm-no-such-if", AttachMode::Generic, &Options::default()) {
            Err(XdpError::NoInterface(n)) => assert_eq!(n, "tdm-no-such-if"),
            other => panic!("expected NoInterface, got {other:?}"),
        }
    }
}
