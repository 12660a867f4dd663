//! Director xdp mode: the same control watch, Maglev tables and health checks
//! as proxy mode, but instead of listening on the VIPs the director keeps the
//! BPF maps of an [`xdp::Dataplane`] in step with the snapshot, and the
//! kernel forwards packets (L2 DSR, IPIP or GUE) without waking us.
//!
//! * Every service gets a ring index that stays its own while the service
//!   exists; every node a node index likewise. Freed indices are reused last
//!   (oldest freed first), so a flow still pinned to a removed node's index
//!   is re-hashed rather than sent to a newcomer that happens to get it.
//! * The Maglev table is the proxy-mode [`Pool`]'s; it is turned into an
//!   array of node indices, compared with what is in the ring map, and only
//!   the changed slots are written.
//! * Connection tracking: a DRAINING or weight-0 node leaves the ring but
//!   keeps its node-map entry, so flows pinned to it in the flow table go on;
//!   a node that is removed, DISABLED, unhealthy or whose MAC cannot be
//!   resolved gets `remove_node` (its flows re-hash on their next packet).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control_api::pb::{self, HashFields, NodeState, XdpForwarding};
use control_api::{DEFAULT_TABLE_SIZE, Snapshot};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use xdp::{Forwarding, NodeTarget, Protocol, VipKey, VipSettings, XdpError};

use crate::pool::{Pool, pool_name};

/// Where ring slots point when the pool is empty: the last node index,
/// which is never given to a node, so the data plane finds no node entry
/// there and drops the packet (counted as no-node).
pub fn no_node_index(opts: &xdp::Options) -> u32 {
    opts.max_nodes.saturating_sub(1)
}

/// Settings of xdp mode.
#[derive(Clone, Debug)]
pub struct XdpConfig {
    /// Interface the program is attached to (where VIP traffic arrives and
    /// where forwarded frames leave).
    pub interface: String,
    pub attach: xdp::AttachMode,
    /// Map sizes, tunnel sources and MTU of the data plane.
    pub options: xdp::Options,
}

impl XdpConfig {
    pub fn new(interface: impl Into<String>) -> Self {
        XdpConfig {
            interface: interface.into(),
            attach: xdp::AttachMode::Native,
            options: xdp::Options::default(),
        }
    }
}

/// What xdp mode needs of the data plane: [`xdp::Dataplane`], or a
/// recording fake in tests.
pub trait Maps: Send {
    fn set_vip(&mut self, key: VipKey, s: &VipSettings) -> Result<(), XdpError>;
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), XdpError>;
    fn set_node(&mut self, index: u32, t: &NodeTarget) -> Result<(), XdpError>;
    fn remove_node(&mut self, index: u32) -> Result<(), XdpError>;
    fn set_slots(&mut self, ring: u32, slots: &[(u32, u32)]) -> Result<(), XdpError>;
    fn stats(&self) -> Result<xdp::Stats, XdpError>;
}

impl Maps for xdp::Dataplane {
    fn set_vip(&mut self, key: VipKey, s: &VipSettings) -> Result<(), XdpError> {
        xdp::Dataplane::set_vip(self, key, s)
    }
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), XdpError> {
        xdp::Dataplane::remove_vip(self, key)
    }
    fn set_node(&mut self, index: u32, t: &NodeTarget) -> Result<(), XdpError> {
        xdp::Dataplane::set_node(self, index, t)
    }
    fn remove_node(&mut self, index: u32) -> Result<(), XdpError> {
        xdp::Dataplane::remove_node(self, index)
    }
    fn set_slots(&mut self, ring: u32, slots: &[(u32, u32)]) -> Result<(), XdpError> {
        xdp::Dataplane::set_slots(self, ring, slots)
    }
    fn stats(&self) -> Result<xdp::Stats, XdpError> {
        xdp::Dataplane::stats(self)
    }
}

// ---------------------------------------------------------------------------
// Neighbour resolution

/// Finds the MAC of an on-link address.
pub trait Resolver: Send {
    /// The MAC the kernel's neighbour table holds for `ip`, if complete.
    fn resolve(&self, ip: IpAddr) -> Option<[u8; 6]>;
    /// Makes the kernel resolve `ip` (a connect attempt to `to`), so that a
    /// later [`Resolver::resolve`] finds it. Must not block.
    fn solicit(&self, to: SocketAddr);
}

/// The kernel's neighbour table on one interface: `/proc/net/arp` for IPv4,
/// `ip -6 neigh show dev IF` for IPv6.
pub struct KernelNeighbours {
    pub interface: String,
}

impl Resolver for KernelNeighbours {
    fn resolve(&self, ip: IpAddr) -> Option<[u8; 6]> {
        match ip.to_canonical() {
            IpAddr::V4(_) => {
                let text = std::fs::read_to_string("/proc/net/arp").ok()?;
                parse_proc_arp(&text, &self.interface)
                    .get(&ip.to_canonical())
                    .copied()
            }
            IpAddr::V6(_) => {
                let out = std::process::Command::new("ip")
                    .args(["-6", "neigh", "show", "dev", &self.interface])
                    .stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .output()
                    .ok()?;
                parse_ip_neigh(&String::from_utf8_lossy(&out.stdout))
                    .get(&ip)
                    .copied()
            }
        }
    }

    fn solicit(&self, to: SocketAddr) {
        // A connect sends a SYN, which needs the neighbour entry first; the
        // answer (or none) does not matter. Off the caller's thread.
        let spawned = std::thread::Builder::new()
            .name("xdp-solicit".into())
            .spawn(move || {
                let _ = std::net::TcpStream::connect_timeout(&to, Duration::from_millis(500));
            });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "cannot start a neighbour solicitation");
        }
    }
}

/// Complete entries of `/proc/net/arp` on `interface`: IP -> MAC.
pub fn parse_proc_arp(text: &str, interface: &str) -> HashMap<IpAddr, [u8; 6]> {
    const ATF_COM: u32 = 0x2;
    let mut out = HashMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [ip, _hw, flags, mac, _mask, dev] = f[..] else {
            continue;
        };
        if dev != interface {
            continue;
        }
        let Some(flags) = flags
            .strip_prefix("0x")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
        else {
            continue;
        };
        if flags & ATF_COM == 0 {
            continue;
        }
        let (Ok(ip), Some(mac)) = (ip.parse::<IpAddr>(), control_api::parse_mac(mac)) else {
            continue;
        };
        if mac != [0; 6] {
            out.insert(ip, mac);
        }
    }
    out
}

/// Usable entries of `ip neigh show dev IF` output (`ADDR lladdr MAC STATE`):
/// IP -> MAC. FAILED and INCOMPLETE entries have no lladdr and are skipped.
pub fn parse_ip_neigh(text: &str) -> HashMap<IpAddr, [u8; 6]> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(ip) = f.first().and_then(|s| s.parse::<IpAddr>().ok()) else {
            continue;
        };
        let Some(pos) = f.iter().position(|w| *w == "lladdr") else {
            continue;
        };
        if f.iter().any(|w| *w == "FAILED" || *w == "INCOMPLETE") {
            continue;
        }
        if let Some(mac) = f.get(pos + 1).and_then(|m| control_api::parse_mac(m)) {
            out.insert(ip, mac);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Index assignment

/// Stable small integers for names: a name keeps its index while it
/// exists; a freed index is handed out again only after every never-used
/// one (then oldest freed first).
#[derive(Debug)]
pub struct Indexer {
    max: u32,
    by_name: HashMap<String, u32>,
    next_fresh: u32,
    free: VecDeque<u32>,
}

impl Indexer {
    pub fn new(max: u32) -> Indexer {
        Indexer {
            max,
            by_name: HashMap::new(),
            next_fresh: 0,
            free: VecDeque::new(),
        }
    }

    pub fn get(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// The index of `name`, assigning one if it has none; `None` when all
    /// `max` are taken.
    pub fn assign(&mut self, name: &str) -> Option<u32> {
        if let Some(i) = self.by_name.get(name) {
            return Some(*i);
        }
        let i = if self.next_fresh < self.max {
            self.next_fresh += 1;
            self.next_fresh - 1
        } else {
            self.free.pop_front()?
        };
        self.by_name.insert(name.to_string(), i);
        Some(i)
    }

    pub fn release(&mut self, name: &str) -> Option<u32> {
        let i = self.by_name.remove(name)?;
        self.free.push_back(i);
        Some(i)
    }

    /// How many more names fit.
    pub fn room(&self) -> usize {
        (self.max - self.next_fresh) as usize + self.free.len()
    }

    pub fn names(&self) -> impl Iterator<Item = (&str, u32)> {
        self.by_name.iter().map(|(n, i)| (n.as_str(), *i))
    }
}

/// The `(slot, node)` pairs of `new` that differ from `old` (all of them if
/// `old` is unknown). Slots past the end of `old` count as changed.
pub fn diff_slots(old: Option<&[u32]>, new: &[u32]) -> Vec<(u32, u32)> {
    new.iter()
        .enumerate()
        .filter(|(i, n)| old.is_none_or(|o| o.get(*i) != Some(*n)))
        .map(|(i, n)| (i as u32, *n))
        .collect()
}

// ---------------------------------------------------------------------------
// Keeping the maps in step with a snapshot

/// Why a node is not in the data plane although the snapshot lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    pub node: String,
    pub reason: String,
}

/// What one apply changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Slots written per service.
    pub slots_pushed: BTreeMap<String, usize>,
    pub nodes_set: usize,
    pub nodes_removed: usize,
    pub vips_set: usize,
    pub vips_removed: usize,
}

/// A node as the data plane should hold it.
struct WantedNode {
    target: NodeTarget,
    /// Takes new flows (ACTIVE, weight above 0).
    in_ring: bool,
}

/// The director's view of what is in the BPF maps.
pub struct XdpState<M: Maps, R: Resolver> {
    maps: M,
    resolver: R,
    max_table_size: u32,
    /// See [`no_node_index`].
    no_node: u32,
    tunnel_v4: bool,
    tunnel_v6: bool,
    rings: Indexer,
    nodes: Indexer,
    /// Node index per slot, as last written, by ring index.
    ring_contents: HashMap<u32, Vec<u32>>,
    /// By service name.
    vips: HashMap<String, (VipKey, VipSettings)>,
    /// By node index.
    node_targets: HashMap<u32, NodeTarget>,
    unresolved: Vec<Unresolved>,
}

impl<M: Maps, R: Resolver> XdpState<M, R> {
    pub fn new(maps: M, resolver: R, opts: &xdp::Options) -> Self {
        XdpState {
            maps,
            resolver,
            max_table_size: opts.max_table_size,
            no_node: no_node_index(opts),
            tunnel_v4: opts.tunnel_source_v4.is_some(),
            tunnel_v6: opts.tunnel_source_v6.is_some(),
            rings: Indexer::new(opts.max_vips),
            nodes: Indexer::new(no_node_index(opts)),
            ring_contents: HashMap::new(),
            vips: HashMap::new(),
            node_targets: HashMap::new(),
            unresolved: Vec::new(),
        }
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// Nodes left out because their MAC or address is unknown.
    pub fn unresolved(&self) -> &[Unresolved] {
        &self.unresolved
    }

    /// Ring index -> service name.
    pub fn ring_names(&self) -> HashMap<u32, String> {
        self.rings
            .names()
            .map(|(n, i)| (i, n.to_string()))
            .collect()
    }

    /// Node index -> node id.
    pub fn node_names(&self) -> HashMap<u32, String> {
        self.nodes
            .names()
            .map(|(n, i)| (i, n.to_string()))
            .collect()
    }

    /// Brings the maps in step with `snapshot`, given node health. Checks
    /// everything it can before writing anything: a refused snapshot
    /// (bad address, table size above the data plane's maximum, too many
    /// services or nodes, an encapsulating service with no tunnel source)
    /// changes nothing.
    pub fn apply(
        &mut self,
        snapshot: &Snapshot,
        healthy: impl Fn(&str) -> bool,
    ) -> Result<ApplyReport, String> {
        // 1. Services: validate, and find which pools are in use.
        let mut services = Vec::with_capacity(snapshot.services.len());
        for svc in &snapshot.services {
            let address: SocketAddr = svc.address.parse().map_err(|_| {
                format!(
                    "services[{:?}].address: {:?} is not ip:port",
                    svc.name, svc.address
                )
            })?;
            let size = if svc.table_size == 0 {
                DEFAULT_TABLE_SIZE
            } else {
                svc.table_size
            };
            if size > self.max_table_size {
                return Err(format!(
                    "services[{:?}]: table size {size} is above the xdp data plane's maximum {} \
                     (start the director with a larger --xdp-max-table-size, or use a smaller table)",
                    svc.name, self.max_table_size
                ));
            }
            let forwarding = match svc.xdp_forwarding() {
                XdpForwarding::L2Dsr => Forwarding::L2Dsr,
                XdpForwarding::Ipip => Forwarding::Ipip,
                XdpForwarding::Gue => Forwarding::Gue,
            };
            services.push((svc, address, size, forwarding));
        }
        let new_services = services
            .iter()
            .filter(|(s, ..)| self.rings.get(&s.name).is_none())
            .count();
        let gone_services = self
            .rings
            .names()
            .filter(|(n, _)| !services.iter().any(|(s, ..)| s.name == *n))
            .count();
        if new_services > self.rings.room() + gone_services {
            return Err(format!(
                "{} services but the xdp data plane holds at most {} (--xdp-max-vips)",
                services.len(),
                self.rings.room() + self.rings.names().count()
            ));
        }
        let pools: HashSet<&str> = services
            .iter()
            .map(|(s, ..)| pool_name(&s.node_pool))
            .collect();
        let encapsulates = |fam_v4: bool| {
            services.iter().any(|(s, _, _, f)| {
                *f != Forwarding::L2Dsr
                    && snapshot.nodes.iter().any(|n| {
                        pool_name(&n.pool) == pool_name(&s.node_pool)
                            && node_addr(n).is_ok_and(|a| a.is_ipv4() == fam_v4)
                    })
            })
        };
        if encapsulates(true) && !self.tunnel_v4 {
            return Err(
                "a service forwards by IPIP/GUE to IPv4 nodes but the director has no \
                 IPv4 tunnel source (--xdp-tunnel-source)"
                    .into(),
            );
        }
        if encapsulates(false) && !self.tunnel_v6 {
            return Err(
                "a service forwards by IPIP/GUE to IPv6 nodes but the director has no \
                 IPv6 tunnel source (--xdp-tunnel-source)"
                    .into(),
            );
        }

        // 2. Nodes the data plane should hold.
        let mut wanted: BTreeMap<String, WantedNode> = BTreeMap::new();
        let mut unresolved = Vec::new();
        for n in &snapshot.nodes {
            if !pools.contains(pool_name(&n.pool))
                || n.state() == NodeState::Disabled
                || !healthy(&n.id)
            {
                continue;
            }
            let addr = match node_addr(n) {
                Ok(a) => a,
                Err(reason) => {
                    unresolved.push(Unresolved {
                        node: n.id.clone(),
                        reason,
                    });
                    continue;
                }
            };
            let mac = if n.mac.is_empty() {
                match self.resolver.resolve(addr) {
                    Some(m) => m,
                    None => {
                        if let Ok(to) = n.address.parse::<SocketAddr>() {
                            self.resolver.solicit(SocketAddr::new(addr, to.port()));
                        }
                        unresolved.push(Unresolved {
                            node: n.id.clone(),
                            reason: format!("no neighbour entry (MAC) for {addr} yet"),
                        });
                        continue;
                    }
                }
            } else {
                // Control validates it; a static file might not have been.
                match control_api::parse_mac(&n.mac) {
                    Some(m) => m,
                    None => {
                        return Err(format!("nodes[{:?}].mac: {:?} is not a MAC", n.id, n.mac));
                    }
                }
            };
            wanted.insert(
                n.id.clone(),
                WantedNode {
                    target: NodeTarget { mac, addr },
                    in_ring: n.state() == NodeState::Active && n.weight > 0,
                },
            );
        }
        let new_nodes = wanted
            .keys()
            .filter(|id| self.nodes.get(id).is_none())
            .count();
        if new_nodes > self.nodes.room() {
            return Err(format!(
                "{} nodes but the xdp data plane holds at most {} more (--xdp-max-nodes)",
                wanted.len(),
                self.nodes.room()
            ));
        }
        // Pools with only nodes that are in the node map.
        let mut built = Vec::with_capacity(services.len());
        for (svc, address, _size, forwarding) in &services {
            let pool = Pool::build(svc, &snapshot.nodes, |id| {
                wanted.get(id).is_some_and(|w| w.in_ring)
            })
            .map_err(|e| format!("services[{:?}]: {e}", svc.name))?;
            built.push((*svc, *address, *forwarding, pool));
        }

        // Nothing has been written so far; from here on, write.
        let mut report = ApplyReport::default();
        let bpf = |what: &str, e: XdpError| format!("xdp data plane: {what}: {e}");

        // 3. New and changed nodes, before any slot points at them.
        for (id, w) in &wanted {
            let Some(index) = self.nodes.assign(id) else {
                return Err(format!("no free node index for {id:?}"));
            };
            if self.node_targets.get(&index) != Some(&w.target) {
                self.maps
                    .set_node(index, &w.target)
                    .map_err(|e| bpf(&format!("set node {id:?} (index {index})"), e))?;
                self.node_targets.insert(index, w.target);
                report.nodes_set += 1;
                tracing::info!(node = %id, index, addr = %w.target.addr, mac = %fmt_mac(&w.target.mac), "xdp node set");
            }
        }

        // 4. Services: rings, then the VIP entry.
        let keep: HashSet<&str> = built.iter().map(|(s, ..)| s.name.as_str()).collect();
        let gone: Vec<String> = self
            .vips
            .keys()
            .filter(|n| !keep.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some((key, _)) = self.vips.remove(&name) {
                self.maps
                    .remove_vip(&key)
                    .map_err(|e| bpf(&format!("remove VIP of {name:?}"), e))?;
                report.vips_removed += 1;
                tracing::info!(service = %name, vip = ?key, "xdp VIP removed");
            }
            self.rings.release(&name);
        }
        for (svc, address, forwarding, pool) in &built {
            let Some(ring) = self.rings.assign(&svc.name) else {
                return Err(format!("no free ring index for {:?}", svc.name));
            };
            let slots: Vec<u32> = pool
                .slot_owners()
                .map(|owner| {
                    owner
                        .and_then(|id| self.nodes.get(id))
                        .unwrap_or(self.no_node)
                })
                .collect();
            let changed = diff_slots(self.ring_contents.get(&ring).map(Vec::as_slice), &slots);
            if !changed.is_empty() {
                self.maps
                    .set_slots(ring, &changed)
                    .map_err(|e| bpf(&format!("set slots of {:?}", svc.name), e))?;
                tracing::info!(service = %svc.name, ring, nodes = pool.node_count(), changed_slots = changed.len(), "xdp table pushed");
            }
            report.slots_pushed.insert(svc.name.clone(), changed.len());
            self.ring_contents.insert(ring, slots);
            let key = VipKey {
                addr: address.ip(),
                port: address.port(),
                protocol: Protocol::Tcp,
            };
            let settings = VipSettings {
                ring,
                table_size: pool.table_size(),
                forwarding: *forwarding,
                hash_source_only: svc.hash() == HashFields::SourceIp,
            };
            match self.vips.get(&svc.name) {
                Some((k, s)) if *k == key && *s == settings => {}
                old => {
                    if let Some((k, _)) = old
                        && *k != key
                    {
                        let k = *k;
                        self.maps
                            .remove_vip(&k)
                            .map_err(|e| bpf(&format!("remove old VIP of {:?}", svc.name), e))?;
                    }
                    self.maps
                        .set_vip(key, &settings)
                        .map_err(|e| bpf(&format!("set VIP of {:?}", svc.name), e))?;
                    report.vips_set += 1;
                    tracing::info!(service = %svc.name, vip = %address, ring, table_size = settings.table_size, forwarding = ?settings.forwarding, "xdp VIP set");
                    self.vips.insert(svc.name.clone(), (key, settings));
                }
            }
        }

        // 5. Nodes no ring points at any more and that must lose their flows.
        let stale: Vec<(String, u32)> = self
            .nodes
            .names()
            .filter(|(id, _)| !wanted.contains_key(*id))
            .map(|(id, i)| (id.to_string(), i))
            .collect();
        for (id, index) in stale {
            self.maps
                .remove_node(index)
                .map_err(|e| bpf(&format!("remove node {id:?} (index {index})"), e))?;
            self.node_targets.remove(&index);
            self.nodes.release(&id);
            report.nodes_removed += 1;
            tracing::info!(node = %id, index, "xdp node removed; its flows re-hash");
        }
        for u in &unresolved {
            tracing::warn!(node = %u.node, reason = %u.reason, "node left out of the xdp data plane");
        }
        self.unresolved = unresolved;
        Ok(report)
    }
}

/// Where packets for `n` go: its tunnel address, else the IP of `address`.
fn node_addr(n: &pb::Node) -> Result<IpAddr, String> {
    if !n.tunnel_address.is_empty() {
        return n
            .tunnel_address
            .parse::<IpAddr>()
            .map_err(|_| format!("tunnel_address {:?} is not an IP", n.tunnel_address));
    }
    n.address
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .map_err(|_| format!("address {:?} is not ip:port", n.address))
}

fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------------------
// Metrics

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

/// Metrics of xdp mode kept by userspace.
#[derive(Debug, Default, Clone)]
pub(crate) struct XdpMetrics {
    slots_pushed: Family<ServiceLabel, Counter>,
    unresolved: Gauge,
}

impl XdpMetrics {
    pub(crate) fn register(r: &mut Registry) -> XdpMetrics {
        let m = XdpMetrics::default();
        r.register(
            "xdp_slots_pushed",
            "Maglev slots written to the data plane's ring map (only changed slots are written)",
            m.slots_pushed.clone(),
        );
        r.register(
            "xdp_nodes_unresolved",
            "Nodes left out of the data plane because their MAC or address is unknown",
            m.unresolved.clone(),
        );
        m
    }

    pub(crate) fn record(&self, report: &ApplyReport, unresolved: usize) {
        for (service, n) in &report.slots_pushed {
            self.slots_pushed
                .get_or_create(&ServiceLabel {
                    service: service.clone(),
                })
                .inc_by(*n as u64);
        }
        self.unresolved.set(unresolved as i64);
    }
}

/// Reads the BPF counters at scrape time.
pub(crate) struct StatsCollector<M: Maps + 'static, R: Resolver + 'static> {
    pub(crate) state: Arc<Mutex<Option<XdpState<M, R>>>>,
}

impl<M: Maps, R: Resolver> std::fmt::Debug for StatsCollector<M, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatsCollector")
    }
}

impl<M: Maps + 'static, R: Resolver + 'static> prometheus_client::collector::Collector
    for StatsCollector<M, R>
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (stats, rings, nodes) = {
            let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let Some(state) = guard.as_ref() else {
                return Ok(());
            };
            match state.maps().stats() {
                Ok(s) => (s, state.ring_names(), state.node_names()),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read xdp counters");
                    return Ok(());
                }
            }
        };
        let svc_packets = Family::<ServiceLabel, Counter>::default();
        let svc_bytes = Family::<ServiceLabel, Counter>::default();
        for (ring, c) in &stats.vips {
            let Some(name) = rings.get(ring) else {
                continue;
            };
            let l = ServiceLabel {
                service: name.clone(),
            };
            svc_packets.get_or_create(&l).inc_by(c.packets);
            svc_bytes.get_or_create(&l).inc_by(c.bytes);
        }
        let node_packets = Family::<NodeLabel, Counter>::default();
        let node_bytes = Family::<NodeLabel, Counter>::default();
        for (index, c) in &stats.nodes {
            let Some(name) = nodes.get(index) else {
                continue;
            };
            let l = NodeLabel { node: name.clone() };
            node_packets.get_or_create(&l).inc_by(c.packets);
            node_bytes.get_or_create(&l).inc_by(c.bytes);
        }
        for (name, help, fam) in [
            (
                "xdp_service_packets",
                "Packets forwarded by the data plane, per service",
                &svc_packets,
            ),
            (
                "xdp_service_bytes",
                "Bytes forwarded by the data plane, per service",
                &svc_bytes,
            ),
        ] {
            fam.encode(encoder.encode_descriptor(name, help, None, fam.metric_type())?)?;
        }
        for (name, help, fam) in [
            (
                "xdp_node_packets",
                "Packets forwarded by the data plane, per node",
                &node_packets,
            ),
            (
                "xdp_node_bytes",
                "Bytes forwarded by the data plane, per node",
                &node_bytes,
            ),
        ] {
            fam.encode(encoder.encode_descriptor(name, help, None, fam.metric_type())?)?;
        }
        for (name, help, v) in [
            (
                "xdp_flow_misses",
                "VIP packets with no flow-table entry (new flows, evictions)",
                stats.flow_misses,
            ),
            (
                "xdp_no_node",
                "VIP packets dropped because no node was available",
                stats.no_node,
            ),
            (
                "xdp_icmp_too_big",
                "ICMP fragmentation-needed / packet-too-big replies sent",
                stats.icmp_too_big,
            ),
            (
                "xdp_passed",
                "Packets passed to the kernel (not for a VIP)",
                stats.passed,
            ),
        ] {
            let c = prometheus_client::metrics::counter::ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Running a director in xdp mode

type Shared = Arc<Mutex<Option<XdpState<xdp::Dataplane, KernelNeighbours>>>>;

/// Everything an apply needs; cloned into the tasks that re-apply.
#[derive(Clone)]
struct Applier {
    config: crate::DirectorConfig,
    state: Shared,
    last: Arc<Mutex<Option<Arc<Snapshot>>>>,
    checker: Arc<health::Checker>,
    health: tokio::sync::watch::Receiver<health::HealthMap>,
    metrics: XdpMetrics,
    config_version: Gauge,
    readiness: observe::Readiness,
    unresolved: Arc<tokio::sync::watch::Sender<Vec<Unresolved>>>,
    /// The health report for control, updated once the maps reflect it (so
    /// "down" in `tandemctl status` means no new flow goes there).
    report: Arc<tokio::sync::watch::Sender<pb::HealthReport>>,
    /// Forwarded packets and bytes per node id, as last read from the maps.
    forwarded: Arc<Mutex<HashMap<String, xdp::Counter>>>,
}

impl Applier {
    /// Reads the per-node counters and, when they moved, sends them to
    /// control with the health report (`tandemctl status` shows them).
    fn refresh_counters(&self) {
        let counters = {
            let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let Some(state) = guard.as_ref() else {
                return;
            };
            let stats = match state.maps().stats() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read xdp counters");
                    return;
                }
            };
            let names = state.node_names();
            let mut counters = HashMap::new();
            for (index, c) in stats.nodes {
                if let Some(name) = names.get(&index) {
                    counters.insert(name.clone(), c);
                }
            }
            counters
        };
        *self.forwarded.lock().unwrap_or_else(|p| p.into_inner()) = counters;
        self.send_report();
    }

    fn send_report(&self) {
        let health = self.health.borrow().clone();
        let unresolved = self.unresolved.borrow().clone();
        let forwarded = self
            .forwarded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let r = report(&health, &unresolved, &forwarded);
        self.report.send_if_modified(|old| {
            let changed = *old != r;
            *old = r;
            changed
        });
    }

    /// Applies `snapshot` (a new one from control, or the last one again
    /// after a health change). Refusals leave the maps as they were.
    fn apply(&self, snapshot: &Snapshot, fresh: bool) -> Result<(), String> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let health = self.health.borrow().clone();
        {
            let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let Some(state) = guard.as_mut() else {
                return Err("xdp data plane detached (shutting down)".into());
            };
            let applied = state.apply(snapshot, |id| health.is_healthy(id))?;
            self.metrics.record(&applied, state.unresolved().len());
            self.unresolved.send_replace(state.unresolved().to_vec());
        }
        self.send_report();
        if fresh {
            *last = Some(Arc::new(snapshot.clone()));
            drop(last);
            self.checker
                .set_targets(crate::health_targets(&self.config, snapshot));
            self.config_version.set(snapshot.version as i64);
            self.readiness.set(true);
        }
        Ok(())
    }

    fn reapply(&self) {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(snap) = last
            && let Err(e) = self.apply(&snap, false)
        {
            tracing::error!(error = %e, "re-applying the snapshot to the xdp data plane failed");
        }
    }
}

/// The health report sent to control: the health checks' verdicts, with
/// nodes this director cannot forward to (no MAC) reported down.
fn report(
    map: &health::HealthMap,
    unresolved: &[Unresolved],
    forwarded: &HashMap<String, xdp::Counter>,
) -> pb::HealthReport {
    let mut r = crate::health_report(map);
    for u in unresolved {
        let detail = format!("xdp: {}", u.reason);
        match r.nodes.iter_mut().find(|n| n.node_id == u.node) {
            Some(n) => {
                n.healthy = false;
                n.detail = detail;
            }
            None => r.nodes.push(pb::NodeHealth {
                node_id: u.node.clone(),
                healthy: false,
                detail,
                ..Default::default()
            }),
        }
    }
    for n in &mut r.nodes {
        if let Some(c) = forwarded.get(&n.node_id) {
            n.forwarded_packets = c.packets;
            n.forwarded_bytes = c.bytes;
        }
    }
    r.nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    r
}

/// Runs a director in xdp mode until `shutdown`; then detaches the program.
pub(crate) async fn run(
    config: crate::DirectorConfig,
    xdp_config: XdpConfig,
    source: crate::ConfigSource,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), crate::DirectorError> {
    let interface = xdp_config.interface.clone();
    let dataplane = xdp::Dataplane::attach(&interface, xdp_config.attach, &xdp_config.options)
        .map_err(|source| crate::DirectorError::Xdp {
            interface: interface.clone(),
            source,
        })?;
    tracing::info!(interface = %interface, mode = ?xdp_config.attach, "xdp data plane attached");
    let state: Shared = Arc::new(Mutex::new(Some(XdpState::new(
        dataplane,
        KernelNeighbours {
            interface: interface.clone(),
        },
        &xdp_config.options,
    ))));
    let mut registry = Registry::with_prefix("tandem_director");
    let metrics = XdpMetrics::register(&mut registry);
    let config_version = Gauge::default();
    registry.register(
        "config_version",
        "Config version applied",
        config_version.clone(),
    );
    let node_healthy = Family::<NodeLabel, Gauge>::default();
    registry.register(
        "node_healthy",
        "1 if the node passes health checks, 0 if not",
        node_healthy.clone(),
    );
    registry.register_collector(Box::new(StatsCollector {
        state: state.clone(),
    }));
    let readiness = observe::Readiness::default();
    if let Some(addr) = config.admin_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| crate::DirectorError::AdminBind { addr, source })?;
        tokio::spawn(observe::serve_admin(
            listener,
            Arc::new(registry),
            readiness.clone(),
            shutdown.clone().cancelled_owned(),
        ));
    }
    let tasks = shutdown.child_token();
    let (checker, health) = health::Checker::new(tasks.clone());
    let (unresolved_tx, _) = tokio::sync::watch::channel(Vec::new());
    let (report_tx, report_rx) = tokio::sync::watch::channel(pb::HealthReport::default());
    let applier = Applier {
        config: config.clone(),
        state: state.clone(),
        last: Arc::default(),
        checker: Arc::new(checker),
        health: health.clone(),
        metrics,
        config_version,
        readiness: readiness.clone(),
        unresolved: Arc::new(unresolved_tx),
        report: Arc::new(report_tx),
        forwarded: Arc::default(),
    };
    // Health changes rebuild the tables; so does a node's MAC turning up.
    {
        let applier = applier.clone();
        let mut rx = health.clone();
        let stop = tasks.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            // Forwarded-packet counts go to control every few seconds.
            const COUNTER_REPORT_TICKS: u64 = 5;
            let mut ticks = 0u64;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = rx.changed() => {
                        if r.is_err() {
                            return;
                        }
                        let map = rx.borrow_and_update().clone();
                        node_healthy.clear();
                        for (node, (healthy, _)) in &map.targets {
                            node_healthy
                                .get_or_create(&NodeLabel { node: node.clone() })
                                .set(i64::from(*healthy));
                        }
                        applier.reapply();
                    }
                    _ = tick.tick() => {
                        if !applier.unresolved.borrow().is_empty() {
                            applier.reapply();
                        }
                        ticks += 1;
                        if ticks.is_multiple_of(COUNTER_REPORT_TICKS) {
                            applier.refresh_counters();
                        }
                    }
                }
            }
        });
    }
    let watch_task = match source {
        crate::ConfigSource::Static(snapshot) => {
            applier
                .apply(&snapshot, true)
                .map_err(crate::DirectorError::Config)?;
            None
        }
        crate::ConfigSource::Control {
            mut endpoints,
            token,
            tls,
        } => {
            if endpoints.is_empty() {
                return Err(crate::DirectorError::Config("no control endpoint".into()));
            }
            let endpoint = endpoints.remove(0);
            let sub = control_api::watch::Subscription {
                endpoint,
                id: config.id.clone(),
                tier: pb::Tier::Director,
            };
            let options = control_api::watch::WatchOptions {
                token,
                reports: Some(report_rx),
                fallback_endpoints: endpoints,
                tls,
            };
            let a = applier.clone();
            Some(tokio::spawn(control_api::watch::run_with_options(
                sub,
                Arc::new(control_api::watch::WatchState::default()),
                options,
                move |snap| a.apply(snap, true),
            )))
        }
    };
    shutdown.cancelled().await;
    readiness.set(false);
    if let Some(t) = watch_task {
        t.abort();
    }
    tasks.cancel();
    // Dropping the data plane detaches the program from the interface.
    let detached = state.lock().unwrap_or_else(|p| p.into_inner()).take();
    drop(detached);
    tracing::info!(interface = %interface, "xdp data plane detached");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what would be written to the maps.
    #[derive(Default)]
    struct FakeMaps {
        vips: HashMap<VipKey, VipSettings>,
        nodes: HashMap<u32, NodeTarget>,
        rings: HashMap<u32, HashMap<u32, u32>>,
        removed_nodes: Vec<u32>,
        slot_writes: usize,
    }

    impl Maps for FakeMaps {
        fn set_vip(&mut self, key: VipKey, s: &VipSettings) -> Result<(), XdpError> {
            self.vips.insert(key, *s);
            Ok(())
        }
        fn remove_vip(&mut self, key: &VipKey) -> Result<(), XdpError> {
            self.vips.remove(key);
            Ok(())
        }
        fn set_node(&mut self, index: u32, t: &NodeTarget) -> Result<(), XdpError> {
            self.nodes.insert(index, *t);
            Ok(())
        }
        fn remove_node(&mut self, index: u32) -> Result<(), XdpError> {
            self.nodes.remove(&index);
            self.removed_nodes.push(index);
            Ok(())
        }
        fn set_slots(&mut self, ring: u32, slots: &[(u32, u32)]) -> Result<(), XdpError> {
            let r = self.rings.entry(ring).or_default();
            for (s, n) in slots {
                r.insert(*s, *n);
            }
            self.slot_writes += slots.len();
            Ok(())
        }
        fn stats(&self) -> Result<xdp::Stats, XdpError> {
            Ok(xdp::Stats::default())
        }
    }

    /// Every 10.0.0.x resolves to 02:00:00:00:00:x, except those listed.
    struct FakeNeigh {
        missing: Vec<IpAddr>,
        solicited: Arc<Mutex<Vec<SocketAddr>>>,
    }

    impl Resolver for FakeNeigh {
        fn resolve(&self, ip: IpAddr) -> Option<[u8; 6]> {
            if self.missing.contains(&ip) {
                return None;
            }
            match ip {
                IpAddr::V4(v4) => Some([2, 0, 0, 0, 0, v4.octets()[3]]),
                IpAddr::V6(_) => None,
            }
        }
        fn solicit(&self, to: SocketAddr) {
            self.solicited
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(to);
        }
    }

    fn neigh() -> FakeNeigh {
        FakeNeigh {
            missing: Vec::new(),
            solicited: Arc::default(),
        }
    }

    fn node(i: u8, state: NodeState, weight: u32) -> pb::Node {
        pb::Node {
            id: format!("node-{i}"),
            address: format!("10.0.0.{i}:443"),
            weight,
            state: state as i32,
            pool: "default".into(),
            ..Default::default()
        }
    }

    fn service(name: &str, port: u16, size: u32) -> pb::Service {
        pb::Service {
            name: name.into(),
            address: format!("10.9.0.1:{port}"),
            table_size: size,
            node_pool: "default".into(),
            ..Default::default()
        }
    }

    fn snap(services: Vec<pb::Service>, nodes: Vec<pb::Node>) -> Snapshot {
        Snapshot {
            services,
            nodes,
            ..Default::default()
        }
    }

    fn opts() -> xdp::Options {
        xdp::Options {
            max_vips: 4,
            max_nodes: 8,
            max_table_size: 251,
            ..Default::default()
        }
    }

    fn state() -> XdpState<FakeMaps, FakeNeigh> {
        XdpState::new(FakeMaps::default(), neigh(), &opts())
    }

    fn ring_of(st: &XdpState<FakeMaps, FakeNeigh>, ring: u32, size: u32) -> Vec<u32> {
        let r = &st.maps.rings[&ring];
        (0..size).map(|s| r[&s]).collect()
    }

    #[test]
    fn indices_are_stable_and_freed_ones_are_reused_last() {
        let mut ix = Indexer::new(3);
        assert_eq!(ix.assign("a"), Some(0));
        assert_eq!(ix.assign("b"), Some(1));
        assert_eq!(ix.assign("a"), Some(0));
        assert_eq!(ix.release("a"), Some(0));
        // A fresh index first, so a flow pinned to "a" is not handed to "c".
        assert_eq!(ix.assign("c"), Some(2));
        assert_eq!(ix.assign("d"), Some(0));
        assert_eq!(ix.assign("e"), None);
        assert_eq!(ix.room(), 0);
    }

    #[test]
    fn slot_diff_lists_only_changes() {
        assert_eq!(diff_slots(Some(&[1, 2, 3]), &[1, 5, 3]), vec![(1, 5)]);
        assert_eq!(diff_slots(Some(&[1, 2]), &[1, 2, 7]), vec![(2, 7)]);
        assert_eq!(diff_slots(None, &[4, 4]), vec![(0, 4), (1, 4)]);
        assert!(diff_slots(Some(&[1, 2]), &[1, 2]).is_empty());
    }

    #[test]
    fn ring_holds_the_same_table_as_proxy_mode() {
        let nodes: Vec<_> = (1..=3).map(|i| node(i, NodeState::Active, 100)).collect();
        let svc = service("web", 80, 251);
        let mut st = state();
        let r = st
            .apply(&snap(vec![svc.clone()], nodes.clone()), |_| true)
            .expect("apply");
        assert_eq!(r.slots_pushed["web"], 251);
        assert_eq!(r.nodes_set, 3);
        let pool = Pool::build(&svc, &nodes, |_| true).expect("pool");
        let names = st.node_names();
        let want: Vec<u32> = pool
            .slot_owners()
            .map(|o| {
                let id = o.expect("owner");
                *names
                    .iter()
                    .find(|(_, n)| n.as_str() == id)
                    .expect("indexed")
                    .0
            })
            .collect();
        assert_eq!(ring_of(&st, 0, 251), want);
        let key = VipKey {
            addr: "10.9.0.1".parse().expect("ip"),
            port: 80,
            protocol: Protocol::Tcp,
        };
        let s = st.maps.vips[&key];
        assert_eq!((s.ring, s.table_size), (0, 251));
        assert_eq!(s.forwarding, Forwarding::L2Dsr);
        assert_eq!(
            st.maps.nodes[&0],
            NodeTarget {
                mac: [2, 0, 0, 0, 0, 1],
                addr: "10.0.0.1".parse().expect("ip"),
            }
        );
        // The same snapshot again writes nothing.
        let writes = st.maps.slot_writes;
        let r = st.apply(&snap(vec![svc], nodes), |_| true).expect("apply");
        assert_eq!(
            r,
            ApplyReport {
                slots_pushed: [("web".to_string(), 0)].into(),
                ..Default::default()
            }
        );
        assert_eq!(st.maps.slot_writes, writes);
    }

    #[test]
    fn draining_keeps_the_node_entry_and_removal_deletes_it() {
        let svc = service("web", 80, 251);
        let mut nodes: Vec<_> = (1..=3).map(|i| node(i, NodeState::Active, 100)).collect();
        let mut st = state();
        st.apply(&snap(vec![svc.clone()], nodes.clone()), |_| true)
            .expect("apply");
        let before = ring_of(&st, 0, 251);
        let idx3 = st.nodes.get("node-3").expect("index");
        // Drain node-3: it leaves the ring, keeps its node entry.
        nodes[2].state = NodeState::Draining as i32;
        let r = st
            .apply(&snap(vec![svc.clone()], nodes.clone()), |_| true)
            .expect("apply");
        let after = ring_of(&st, 0, 251);
        assert!(!after.contains(&idx3));
        // Exactly the slots whose owner changed in the Maglev table are
        // written: node-3's, and Maglev's few others.
        let all = |n: &[pb::Node]| Pool::build(&svc, n, |_| true).expect("pool");
        let mut active = nodes.clone();
        active[2].state = NodeState::Active as i32;
        let expected = all(&active).changed_slots(&all(&nodes));
        let moved = before.iter().filter(|n| **n == idx3).count();
        assert_eq!(r.slots_pushed["web"], expected);
        assert!(expected >= moved && expected < moved + 251 / 10);
        assert!(st.maps.nodes.contains_key(&idx3));
        assert!(st.maps.removed_nodes.is_empty());
        // Weight 0 is the same as draining.
        nodes[2].state = NodeState::Active as i32;
        nodes[2].weight = 0;
        st.apply(&snap(vec![svc.clone()], nodes.clone()), |_| true)
            .expect("apply");
        assert!(st.maps.nodes.contains_key(&idx3));
        // Disabled: the node entry goes (its flows re-hash).
        nodes[2].state = NodeState::Disabled as i32;
        let r = st
            .apply(&snap(vec![svc.clone()], nodes.clone()), |_| true)
            .expect("apply");
        assert_eq!(r.nodes_removed, 1);
        assert_eq!(st.maps.removed_nodes, vec![idx3]);
        // Unhealthy is the same for node-2, and its slots move.
        let idx2 = st.nodes.get("node-2").expect("index");
        st.apply(&snap(vec![svc], nodes), |id| id != "node-2")
            .expect("apply");
        assert_eq!(st.maps.removed_nodes, vec![idx3, idx2]);
        assert!(ring_of(&st, 0, 251).iter().all(|n| *n != idx2));
    }

    #[test]
    fn unresolved_nodes_stay_out_and_are_reported() {
        let svc = service("web", 80, 251);
        let nodes: Vec<_> = (1..=2).map(|i| node(i, NodeState::Active, 100)).collect();
        let mut n = neigh();
        n.missing.push("10.0.0.2".parse().expect("ip"));
        let solicited = n.solicited.clone();
        let mut st = XdpState::new(FakeMaps::default(), n, &opts());
        st.apply(&snap(vec![svc.clone()], nodes.clone()), |_| true)
            .expect("apply");
        assert_eq!(st.unresolved().len(), 1);
        assert_eq!(st.unresolved()[0].node, "node-2");
        assert_eq!(
            *solicited.lock().expect("lock"),
            vec!["10.0.0.2:443".parse::<SocketAddr>().expect("addr")]
        );
        let idx1 = st.nodes.get("node-1").expect("index");
        assert!(ring_of(&st, 0, 251).iter().all(|n| *n == idx1));
        assert!(st.nodes.get("node-2").is_none());
        // Resolved later: it joins.
        st.resolver.missing.clear();
        st.apply(&snap(vec![svc], nodes), |_| true).expect("apply");
        assert!(st.unresolved().is_empty());
        assert!(st.nodes.get("node-2").is_some());
    }

    #[test]
    fn an_explicit_mac_and_tunnel_address_are_used() {
        let mut svc = service("web", 80, 251);
        svc.xdp_forwarding = XdpForwarding::Ipip as i32;
        let mut n = node(1, NodeState::Active, 1);
        n.mac = "02:aa:bb:cc:dd:ee".into();
        n.tunnel_address = "10.5.0.1".into();
        let mut st = state();
        let err = st
            .apply(&snap(vec![svc.clone()], vec![n.clone()]), |_| true)
            .expect_err("no tunnel source");
        assert!(err.contains("tunnel source"), "{err}");
        let mut o = opts();
        o.tunnel_source_v4 = Some("10.0.0.100".parse().expect("ip"));
        let mut st = XdpState::new(FakeMaps::default(), neigh(), &o);
        st.apply(&snap(vec![svc], vec![n]), |_| true)
            .expect("apply");
        assert_eq!(
            st.maps.nodes[&0],
            NodeTarget {
                mac: [2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee],
                addr: "10.5.0.1".parse().expect("ip"),
            }
        );
        assert!(
            st.maps
                .vips
                .values()
                .all(|s| s.forwarding == Forwarding::Ipip)
        );
    }

    #[test]
    fn refused_snapshots_change_nothing() {
        let nodes: Vec<_> = (1..=2).map(|i| node(i, NodeState::Active, 100)).collect();
        let mut st = state();
        st.apply(&snap(vec![service("web", 80, 251)], nodes.clone()), |_| {
            true
        })
        .expect("apply");
        let writes = st.maps.slot_writes;
        // Table size above the data plane's maximum (251 here).
        let err = st
            .apply(
                &snap(vec![service("web", 80, 65537)], nodes.clone()),
                |_| true,
            )
            .expect_err("too big");
        assert!(
            err.contains("above the xdp data plane's maximum 251"),
            "{err}"
        );
        // Too many services for max_vips = 4.
        let many: Vec<_> = (0..5)
            .map(|i| service(&format!("s{i}"), 80 + i, 7))
            .collect();
        let err = st
            .apply(&snap(many, nodes), |_| true)
            .expect_err("too many");
        assert!(err.contains("at most 4"), "{err}");
        assert_eq!(st.maps.slot_writes, writes);
        assert_eq!(st.maps.vips.len(), 1);
    }

    #[test]
    fn service_rings_are_stable_and_removed_vips_go() {
        let nodes: Vec<_> = (1..=2).map(|i| node(i, NodeState::Active, 100)).collect();
        let mut st = state();
        st.apply(
            &snap(
                vec![service("a", 80, 7), service("b", 81, 7)],
                nodes.clone(),
            ),
            |_| true,
        )
        .expect("apply");
        let b = st.rings.get("b").expect("ring");
        st.apply(&snap(vec![service("b", 81, 7)], nodes.clone()), |_| true)
            .expect("apply");
        assert_eq!(st.rings.get("b"), Some(b));
        assert_eq!(st.maps.vips.len(), 1);
        // An empty pool: every slot points at no node.
        st.apply(&snap(vec![service("b", 81, 7)], vec![]), |_| true)
            .expect("apply");
        assert!(ring_of(&st, b, 7).iter().all(|n| *n == 7));
        assert!(st.maps.nodes.is_empty());
    }

    #[test]
    fn neighbour_tables_parse() {
        let arp = "IP address       HW type     Flags       HW address            Mask     Device\n\
                   10.202.0.21      0x1         0x2         02:00:0a:ca:00:15     *        eth0\n\
                   10.202.0.22      0x1         0x0         00:00:00:00:00:00     *        eth0\n\
                   10.202.0.23      0x1         0x2         02:00:0a:ca:00:17     *        eth1\n\
                   garbage line\n";
        let m = parse_proc_arp(arp, "eth0");
        assert_eq!(m.len(), 1);
        assert_eq!(
            m[&"10.202.0.21".parse::<IpAddr>().expect("ip")],
            [2, 0, 0x0a, 0xca, 0, 0x15]
        );
        let neigh = "fd00::21 lladdr 02:00:00:00:00:21 REACHABLE\n\
                     fd00::22 FAILED\n\
                     fd00::23 lladdr 02:00:00:00:00:23 router STALE\n\
                     fd00::24 lladdr 02:00:00:00:00:24 INCOMPLETE\n";
        let m = parse_ip_neigh(neigh);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[&"fd00::23".parse::<IpAddr>().expect("ip")],
            [2, 0, 0, 0, 0, 0x23]
        );
    }
}
