//! The director's XDP data plane in a namespace lab (root): client ->
//! director (XDP) -> nodes, replies straight from the nodes to the client.
//! Skips without root unless TANDEM_REQUIRE_ROOT_TESTS=1.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tandem_tests::gate::netns_available;
use tandem_tests::l2lab::{
    CLIENT, CLIENT_ADDR, DIRECTOR, DIRECTOR_ADDR, LabOptions, LinkCounters, VIP, VIP6, XdpLab,
    node_name, v6_of,
};
use xdp::{
    AttachMode, Dataplane, Decap, Forwarding, NodeTarget, Options, Pass, Protocol, Stats, VipKey,
    VipSettings,
};

const PORT: u16 = 80;
const TABLE: u32 = 7;
const REQUESTS: u32 = 200;

/// Fields drop in order: programs first, then the lab (namespaces).
struct Setup {
    dp: Dataplane,
    decaps: Vec<Decap>,
    _passes: Vec<Pass>,
    lab: XdpLab,
    /// The VIP under test (IPv6 with `LabOptions::ipv6`).
    vip: SocketAddr,
    /// The client's address of the VIP's family.
    client: IpAddr,
}

/// The lab's address of the family under test.
fn family(v6: bool, v4: Ipv4Addr) -> IpAddr {
    if v6 {
        IpAddr::V6(v6_of(v4))
    } else {
        IpAddr::V4(v4)
    }
}

fn setup(
    mode: AttachMode,
    forwarding: Forwarding,
    lab_opts: &LabOptions,
    mtu: u16,
) -> Result<Setup> {
    setup_with(mode, forwarding, lab_opts, mtu, None)
}

/// As `setup`; the nodes' decap programs accept `tunnel_dst` instead of
/// their own address if it is given.
fn setup_with(
    mode: AttachMode,
    forwarding: Forwarding,
    lab_opts: &LabOptions,
    mtu: u16,
    tunnel_dst: Option<IpAddr>,
) -> Result<Setup> {
    let v6 = lab_opts.ipv6;
    let vip_ip = if v6 {
        IpAddr::V6(VIP6)
    } else {
        IpAddr::V4(VIP)
    };
    let vip = SocketAddr::new(vip_ip, PORT);
    let mut lab = XdpLab::new(lab_opts)?;
    for i in 1..=lab_opts.nodes {
        lab.start_http_at(&node_name(i), vip_ip, PORT)?;
    }
    lab.disable_offloads(CLIENT)?;
    let opts = Options {
        max_vips: 4,
        max_nodes: 16,
        max_table_size: 13,
        flow_table_size: 4096,
        tunnel_source_v4: Some(DIRECTOR_ADDR),
        tunnel_source_v6: Some(v6_of(DIRECTOR_ADDR)),
        mtu,
    };
    let mut dp = {
        let _ns = lab.enter(DIRECTOR)?;
        Dataplane::attach("eth0", mode, &opts).context("attaching the director")?
    };
    ensure!(
        dp.mac() == lab.host(DIRECTOR)?.mac,
        "director source MAC is the interface's"
    );
    let mut passes = Vec::new();
    if mode == AttachMode::Native {
        let _ns = lab.enter("switch")?;
        passes.push(Pass::attach("p-director", AttachMode::Native).context("pass on p-director")?);
    }
    let mut decaps = Vec::new();
    if forwarding != Forwarding::L2Dsr {
        for node in lab.nodes() {
            let _ns = lab.enter(&node.name)?;
            let mut d = Decap::attach("eth0", mode).context("attaching decap")?;
            d.accept_tunnel_destination(tunnel_dst.unwrap_or(family(v6, node.addr)))?;
            decaps.push(d);
        }
    }
    dp.set_vip(
        VipKey {
            addr: vip_ip,
            port: PORT,
            protocol: Protocol::Tcp,
        },
        &VipSettings {
            ring: 0,
            table_size: TABLE,
            forwarding,
            hash_source_only: false,
        },
    )?;
    let nodes = lab.nodes();
    for (i, node) in nodes.iter().enumerate() {
        dp.set_node(
            i as u32,
            &NodeTarget {
                mac: node.mac,
                addr: family(v6, node.addr),
            },
        )?;
    }
    let slots: Vec<(u32, u32)> = (0..TABLE).map(|s| (s, s % nodes.len() as u32)).collect();
    dp.set_slots(0, &slots)?;
    Ok(Setup {
        dp,
        decaps,
        _passes: passes,
        lab,
        vip,
        client: family(v6, CLIENT_ADDR),
    })
}

/// `node-N ip:port bytes` -> (node index N-1, client ip, body bytes).
fn parse_answer(line: &str) -> Result<(u32, IpAddr, u64)> {
    let mut w = line.split_whitespace();
    let node = w
        .next()
        .and_then(|n| n.strip_prefix("node-"))
        .and_then(|n| n.parse::<u32>().ok())
        .with_context(|| format!("no node in {line:?}"))?;
    let peer: SocketAddr = w
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no peer in {line:?}"))?;
    let bytes = w.next().and_then(|b| b.parse().ok()).unwrap_or(0);
    Ok((node - 1, peer.ip(), bytes))
}

fn counters(lab: &XdpLab) -> Result<BTreeMap<String, LinkCounters>> {
    let mut m = BTreeMap::new();
    m.insert(CLIENT.to_string(), lab.counters(CLIENT)?);
    m.insert(DIRECTOR.to_string(), lab.counters(DIRECTOR)?);
    for n in lab.nodes() {
        m.insert(n.name.clone(), lab.counters(&n.name)?);
    }
    Ok(m)
}

fn node_packets(stats: &Stats) -> u64 {
    stats.nodes.iter().map(|(_, c)| c.packets).sum()
}

/// REQUESTS curl requests, each on a new connection: all answered, by every
/// node, which saw the client's own address; the director received only the
/// client's packets (no reply crossed it); the counters add up.
fn bounded_load(s: &Setup) -> Result<()> {
    let before = counters(&s.lab)?;
    let stats_before = s.dp.stats()?;
    let lines = s.lab.curl_many_at(s.vip, REQUESTS)?;
    let after = counters(&s.lab)?;
    let stats = s.dp.stats()?;

    ensure!(
        lines.len() == REQUESTS as usize,
        "{} of {REQUESTS} requests answered: {lines:?}",
        lines.len()
    );
    let mut per_node = BTreeMap::new();
    for l in &lines {
        let (node, peer, _) = parse_answer(l)?;
        ensure!(peer == s.client, "node saw {peer}, not the client");
        *per_node.entry(node).or_insert(0u32) += 1;
    }
    let nodes = s.lab.nodes().len();
    ensure!(
        per_node.len() == nodes,
        "not every node answered: {per_node:?}"
    );

    let d = |h: &str, f: fn(&LinkCounters) -> u64| f(&after[h]) - f(&before[h]);
    let client_tx = d(CLIENT, |c| c.tx_packets);
    let director_rx = d(DIRECTOR, |c| c.rx_packets);
    let director_tx = d(DIRECTOR, |c| c.tx_packets);
    let nodes_tx: u64 = s
        .lab
        .nodes()
        .iter()
        .map(|n| d(&n.name, |c| c.tx_packets))
        .sum();
    let forwarded = node_packets(&stats) - node_packets(&stats_before);
    eprintln!(
        "per node {per_node:?}; client tx {client_tx}, director rx {director_rx} tx {director_tx}, \
         nodes tx {nodes_tx}, forwarded by xdp {forwarded}; stats {stats:?}"
    );
    // Every client packet to the VIP went through the director, and every
    // reply went straight to the client: the director received no more
    // than the client sent (ARP aside), while the nodes sent hundreds.
    ensure!(
        director_rx <= client_tx + 20,
        "director received {director_rx} packets, the client sent {client_tx}: replies crossed it"
    );
    ensure!(
        nodes_tx >= 2 * REQUESTS as u64,
        "nodes sent only {nodes_tx} packets"
    );
    ensure!(
        forwarded + 10 >= client_tx && forwarded <= director_rx,
        "xdp forwarded {forwarded} of the client's {client_tx} packets (director rx {director_rx})"
    );
    let vip = stats
        .vips
        .iter()
        .find(|(r, _)| *r == 0)
        .map(|(_, c)| *c)
        .unwrap_or_default();
    ensure!(
        vip.packets >= forwarded && vip.bytes >= 60 * vip.packets,
        "ring 0 counter {vip:?}"
    );
    ensure!(
        stats.nodes.len() == nodes,
        "per-node counters: {:?}",
        stats.nodes
    );
    ensure!(
        stats.flow_misses - stats_before.flow_misses >= REQUESTS as u64,
        "flow misses {} for {REQUESTS} new connections",
        stats.flow_misses
    );
    ensure!(stats.no_node == 0, "no_node {}", stats.no_node);
    Ok(())
}

fn run_load(mode: AttachMode, forwarding: Forwarding, ipv6: bool) -> Result<()> {
    let lab_opts = LabOptions {
        ipv6,
        ..LabOptions::default()
    };
    let s = setup(mode, forwarding, &lab_opts, 1600)?;
    bounded_load(&s)?;
    for d in &s.decaps {
        let c = d.decapsulated()?;
        ensure!(c.packets > 0, "a node decapsulated nothing");
    }
    Ok(())
}

#[test]
fn l2_dsr_generic() -> Result<()> {
    if !netns_available("l2_dsr_generic") {
        return Ok(());
    }
    run_load(AttachMode::Generic, Forwarding::L2Dsr, false)
}

#[test]
fn l2_dsr_native() -> Result<()> {
    if !netns_available("l2_dsr_native") {
        return Ok(());
    }
    run_load(AttachMode::Native, Forwarding::L2Dsr, false)
}

#[test]
fn ipip_generic_with_decap() -> Result<()> {
    if !netns_available("ipip_generic_with_decap") {
        return Ok(());
    }
    run_load(AttachMode::Generic, Forwarding::Ipip, false)
}

#[test]
fn gue_native_with_decap() -> Result<()> {
    if !netns_available("gue_native_with_decap") {
        return Ok(());
    }
    run_load(AttachMode::Native, Forwarding::Gue, false)
}

#[test]
fn ipv6_l2_dsr_native() -> Result<()> {
    if !netns_available("ipv6_l2_dsr_native") {
        return Ok(());
    }
    run_load(AttachMode::Native, Forwarding::L2Dsr, true)
}

#[test]
fn ipv6_gue_generic_with_decap() -> Result<()> {
    if !netns_available("ipv6_gue_generic_with_decap") {
        return Ok(());
    }
    run_load(AttachMode::Generic, Forwarding::Gue, true)
}

#[test]
fn ipv6_ipip_native_with_decap() -> Result<()> {
    if !netns_available("ipv6_ipip_native_with_decap") {
        return Ok(());
    }
    run_load(AttachMode::Native, Forwarding::Ipip, true)
}

/// One HTTP/1.1 request on an open connection; the answer's body.
fn http_get(conn: &mut TcpStream) -> Result<String> {
    conn.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed after {} bytes", buf.len());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .context("no content-length")?;
            if body.len() >= len {
                return Ok(body[..len].to_string());
            }
        }
    }
}

fn connect(lab: &XdpLab) -> Result<TcpStream> {
    let _ns = lab.enter(CLIENT)?;
    let c = TcpStream::connect_timeout(
        &SocketAddr::new(IpAddr::V4(VIP), PORT),
        Duration::from_secs(5),
    )?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(c)
}

/// An open connection keeps its node when the ring is rewritten to exclude
/// it; new connections follow the ring; `remove_node` re-hashes the open
/// connection's flow on its next packet.
#[test]
fn flows_survive_ring_change_and_remove_node_rehashes() -> Result<()> {
    if !netns_available("flows_survive_ring_change_and_remove_node_rehashes") {
        return Ok(());
    }
    let mut s = setup(
        AttachMode::Generic,
        Forwarding::L2Dsr,
        &LabOptions::default(),
        1600,
    )?;
    let vip = SocketAddr::new(IpAddr::V4(VIP), PORT);
    let mut conn = connect(&s.lab)?;
    let local = conn.local_addr()?;
    let (first, peer, _) = parse_answer(&http_get(&mut conn)?)?;
    ensure!(peer == IpAddr::V4(CLIENT_ADDR));
    ensure!(
        s.dp.flow_node(local, vip, Protocol::Tcp)? == Some(first),
        "flow table entry of {local}"
    );
    let other = (first + 1) % 3;

    // Pool change: every slot now names `other`.
    let slots: Vec<(u32, u32)> = (0..TABLE).map(|slot| (slot, other)).collect();
    s.dp.set_slots(0, &slots)?;
    for _ in 0..3 {
        let (n, _, _) = parse_answer(&http_get(&mut conn)?)?;
        ensure!(
            n == first,
            "open connection moved from node {first} to {n} on a ring change"
        );
    }
    for _ in 0..5 {
        let mut fresh = connect(&s.lab)?;
        let (n, _, _) = parse_answer(&http_get(&mut fresh)?)?;
        ensure!(n == other, "new connection went to {n}, ring says {other}");
    }

    // The first node is removed: the open flow is re-hashed to `other`,
    // which knows nothing of the connection (so it resets it).
    s.dp.remove_node(first)?;
    let after_removal = http_get(&mut conn);
    ensure!(
        after_removal.is_err(),
        "the removed node still answered: {after_removal:?}"
    );
    ensure!(
        s.dp.flow_node(local, vip, Protocol::Tcp)? == Some(other),
        "flow not re-hashed: {:?}",
        s.dp.flows()?
    );
    let stats = s.dp.stats()?;
    ensure!(stats.no_node == 0, "no_node {}", stats.no_node);
    Ok(())
}

/// A TCP upload whose packets exceed the tunnel MTU once encapsulated: the
/// director answers with ICMP "fragmentation needed", the client's kernel
/// learns the lower path MTU and the upload completes.
#[test]
fn icmp_too_big_teaches_the_client_the_tunnel_mtu() -> Result<()> {
    if !netns_available("icmp_too_big_teaches_the_client_the_tunnel_mtu") {
        return Ok(());
    }
    // The director->node "link" carries 1500: IPIP leaves 1480 inside.
    too_big(false, AttachMode::Generic, "mtu 1480")
}

/// The same over IPv6 (IPv6-in-IPv6, 40 bytes of overhead, native mode):
/// ICMPv6 "packet too big".
#[test]
fn icmpv6_packet_too_big_teaches_the_client_the_tunnel_mtu() -> Result<()> {
    if !netns_available("icmpv6_packet_too_big_teaches_the_client_the_tunnel_mtu") {
        return Ok(());
    }
    too_big(true, AttachMode::Native, "mtu 1460")
}

fn too_big(ipv6: bool, mode: AttachMode, learned: &str) -> Result<()> {
    let lab_opts = LabOptions {
        nodes: 2,
        client_mtu: 1600,
        link_mtu: 1600,
        ipv6,
    };
    let s = setup(mode, Forwarding::Ipip, &lab_opts, 1500)?;
    let out = s.lab.exec_any(
        CLIENT,
        &[
            "sh",
            "-c",
            &format!(
                "head -c 102400 /dev/zero | curl -sS -g --max-time 20 --data-binary @- http://{}/",
                s.vip
            ),
        ],
    )?;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        out.status.success(),
        "upload failed: {answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, peer, bytes) = parse_answer(&answer)?;
    ensure!(peer == s.client && bytes == 102_400, "{answer}");
    let stats = s.dp.stats()?;
    ensure!(stats.icmp_too_big >= 1, "no ICMP too big sent: {stats:?}");
    let route = s
        .lab
        .exec(CLIENT, &["ip", "route", "get", &s.vip.ip().to_string()])?;
    let route = String::from_utf8_lossy(&route.stdout).to_string();
    ensure!(
        route.contains(learned),
        "client did not learn the path MTU ({learned}): {route}"
    );
    eprintln!("route: {route}; stats {stats:?}");
    Ok(())
}

/// A node's decap program leaves alone tunnel packets addressed to a
/// destination it was not told to accept: the request is not answered.
#[test]
fn decap_only_accepts_its_tunnel_destinations() -> Result<()> {
    if !netns_available("decap_only_accepts_its_tunnel_destinations") {
        return Ok(());
    }
    let lab_opts = LabOptions {
        nodes: 1,
        ..LabOptions::default()
    };
    let other = IpAddr::V4(Ipv4Addr::new(10, 201, 0, 250));
    let s = setup_with(
        AttachMode::Generic,
        Forwarding::Gue,
        &lab_opts,
        1600,
        Some(other),
    )?;
    let lines = s.lab.curl_many_at(s.vip, 1)?;
    ensure!(
        lines.is_empty(),
        "answered without decapsulation: {lines:?}"
    );
    let stats = s.dp.stats()?;
    ensure!(
        stats.nodes.iter().map(|(_, c)| c.packets).sum::<u64>() > 0,
        "the director forwarded nothing: {stats:?}"
    );
    ensure!(s.decaps[0].decapsulated()?.packets == 0);
    Ok(())
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Dataplane>();
    check::<Decap>();
    check::<Pass>();
}
