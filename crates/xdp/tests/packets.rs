//! The programs' output byte for byte: the director and decap programs,
//! loaded and configured through the crate's API (attached to `lo` in a
//! namespace of the test's own), run on crafted frames with
//! `bpftool prog run` (BPF_PROG_TEST_RUN). Covers what the namespace tests
//! cannot see: VLAN-tagged frames (no VLAN driver on these machines), the
//! outer IPv4 header checksum (the node's decap strips it before the kernel
//! would check it), the ICMP quote. Needs root and bpftool.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use tandem_tests::gate::{netns_available, peer};
use tandem_tests::l2lab::{NetnsGuard, run};
use xdp::{
    AttachMode, Dataplane, Decap, Forwarding, NodeTarget, Options, Protocol, VipKey, VipSettings,
};

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const DIRECTOR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 3];
const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x11];
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
const DIRECTOR: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 3);
const NODE: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 11);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 100);
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// A namespace of the test's own, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Result<Netns> {
        let name = format!("tdm-x{}-{tag}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let ns = Netns(name);
        run("ip", &["-n", &ns.0, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.0]);
    }
}

fn csum(bytes: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for c in bytes.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u64;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn eth(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>, ethertype: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(tci) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, df: bool, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34]);
    h.extend_from_slice(&(if df { 0x4000u16 } else { 0 }).to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// A TCP ACK segment 40000 -> 80 with `len` bytes of payload (checksum
/// not filled: the programs do not look at it).
fn tcp(len: usize) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&40000u16.to_be_bytes());
    t.extend_from_slice(&80u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend((0..len).map(|i| (i % 251) as u8));
    t
}

/// Runs program `id` once on `frame`: (return code, frame out).
fn prog_run(dir: &Path, id: u32, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
    let input = dir.join("in.bin");
    let output = dir.join("out.bin");
    std::fs::write(&input, frame)?;
    let _ = std::fs::remove_file(&output);
    let out = Command::new("bpftool")
        .args(["prog", "run", "id", &id.to_string(), "data_in"])
        .arg(&input)
        .arg("data_out")
        .arg(&output)
        .args(["data_size_out", "4096"])
        .output()
        .context("running bpftool")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        out.status.success(),
        "bpftool prog run failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let code = text
        .split("Return value: ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no return value in {text:?}"))?;
    Ok((code, std::fs::read(&output).unwrap_or_default()))
}

fn vip_key() -> VipKey {
    VipKey {
        addr: IpAddr::V4(VIP),
        port: 80,
        protocol: Protocol::Tcp,
    }
}

fn set_forwarding(dp: &mut Dataplane, forwarding: Forwarding) -> Result<()> {
    dp.set_vip(
        vip_key(),
        &VipSettings {
            ring: 1,
            table_size: 7,
            forwarding,
            hash_source_only: false,
        },
    )?;
    Ok(())
}

#[test]
fn programs_rewrite_frames_byte_for_byte() -> Result<()> {
    if !netns_available("programs_rewrite_frames_byte_for_byte")
        || peer(
            "programs_rewrite_frames_byte_for_byte",
            "bpftool",
            "bpftool",
        )
        .is_none()
    {
        return Ok(());
    }
    let ns = Netns::new("pkt")?;
    let dir = tempfile::tempdir()?;
    let opts = Options {
        max_vips: 4,
        max_nodes: 8,
        max_table_size: 7,
        flow_table_size: 64,
        tunnel_source_v4: Some(DIRECTOR),
        tunnel_source_v6: None,
        mtu: 1500,
    };
    // One XDP program per interface: the decap program gets its own lo.
    let ns_decap = Netns::new("pktd")?;
    let mut dp = {
        let _in = NetnsGuard::enter(&ns.0)?;
        Dataplane::attach("lo", AttachMode::Generic, &opts)?
    };
    let decap = {
        let _in = NetnsGuard::enter(&ns_decap.0)?;
        Decap::attach("lo", AttachMode::Generic)?
    };
    dp.set_node(
        5,
        &NodeTarget {
            mac: NODE_MAC,
            addr: IpAddr::V4(NODE),
        },
    )?;
    dp.set_slots(1, &(0..7).map(|s| (s, 5)).collect::<Vec<_>>())?;
    let id = dp.program_id()?;

    let inner = ipv4(CLIENT, VIP, 6, true, &tcp(100));
    let mut tagged = eth(DIRECTOR_MAC, CLIENT_MAC, Some(0x0123), 0x0800);
    tagged.extend_from_slice(&inner);

    // L2 DSR on a VLAN: only the MACs change; the tag stays.
    set_forwarding(&mut dp, Forwarding::L2Dsr)?;
    let (code, out) = prog_run(dir.path(), id, &tagged)?;
    ensure!(code == XDP_TX, "L2 DSR returned {code}");
    let mut want = eth(NODE_MAC, DIRECTOR_MAC, Some(0x0123), 0x0800);
    want.extend_from_slice(&inner);
    ensure!(out == want, "L2 DSR frame:\n{out:02x?}\nwant\n{want:02x?}");

    // IPIP on a VLAN: tag kept, outer IPv4 (protocol 4) with a correct
    // header checksum, the original IP packet untouched after it.
    set_forwarding(&mut dp, Forwarding::Ipip)?;
    let (code, ipip) = prog_run(dir.path(), id, &tagged)?;
    ensure!(code == XDP_TX, "IPIP returned {code}");
    ensure!(
        ipip[..18] == eth(NODE_MAC, DIRECTOR_MAC, Some(0x0123), 0x0800)[..],
        "IPIP L2 header {:02x?}",
        &ipip[..18]
    );
    let outer = &ipip[18..38];
    ensure!(
        outer[0] == 0x45 && outer[9] == 4,
        "outer header {outer:02x?}"
    );
    ensure!(
        u16::from_be_bytes([outer[2], outer[3]]) as usize == 20 + inner.len(),
        "outer total length"
    );
    ensure!(outer[12..16] == DIRECTOR.octets() && outer[16..20] == NODE.octets());
    ensure!(csum(outer) == 0, "outer IPv4 checksum wrong: {outer:02x?}");
    ensure!(ipip[38..] == inner[..], "inner packet changed");

    // The node's decap program turns it back into the client's packet
    // (with the director's frame's MACs), tag and all.
    let (code, decapped) = prog_run(dir.path(), decap.program_id()?, &ipip)?;
    ensure!(code == XDP_PASS, "decap returned {code}");
    ensure!(
        decapped == want,
        "decapsulated:\n{decapped:02x?}\nwant\n{want:02x?}"
    );
    ensure!(decap.decapsulated()?.packets == 1);

    // GUE, untagged: outer IPv4 + UDP to 6080 with a flow-derived source
    // port and checksum 0, then the inner packet.
    set_forwarding(&mut dp, Forwarding::Gue)?;
    let mut plain = eth(DIRECTOR_MAC, CLIENT_MAC, None, 0x0800);
    plain.extend_from_slice(&inner);
    let (code, gue) = prog_run(dir.path(), id, &plain)?;
    ensure!(code == XDP_TX, "GUE returned {code}");
    ensure!(gue[12..14] == [0x08, 0x00]);
    let outer = &gue[14..34];
    ensure!(outer[9] == 17 && csum(outer) == 0, "GUE outer {outer:02x?}");
    let udp = &gue[34..42];
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    ensure!(sport >= 0xc000, "GUE source port {sport}");
    ensure!(u16::from_be_bytes([udp[2], udp[3]]) == xdp::GUE_PORT);
    ensure!(u16::from_be_bytes([udp[4], udp[5]]) as usize == 8 + inner.len());
    ensure!(udp[6..8] == [0, 0], "GUE UDP checksum is 0");
    ensure!(gue[42..] == inner[..], "GUE inner packet changed");
    let (code, decapped) = prog_run(dir.path(), decap.program_id()?, &gue)?;
    ensure!(code == XDP_PASS);
    let mut want_plain = eth(NODE_MAC, DIRECTOR_MAC, None, 0x0800);
    want_plain.extend_from_slice(&inner);
    ensure!(decapped == want_plain, "GUE decapsulated {decapped:02x?}");

    // Too big for the tunnel (1500 + 20 > mtu 1500), DF set: ICMP
    // "fragmentation needed" back to the client, next-hop MTU 1480,
    // quoting the first 548 bytes of the packet, checksums right.
    set_forwarding(&mut dp, Forwarding::Ipip)?;
    let big = ipv4(CLIENT, VIP, 6, true, &tcp(1460));
    let mut frame = eth(DIRECTOR_MAC, CLIENT_MAC, Some(0x0123), 0x0800);
    frame.extend_from_slice(&big);
    let (code, icmp) = prog_run(dir.path(), id, &frame)?;
    ensure!(code == XDP_TX, "too big returned {code}");
    ensure!(
        icmp[..18] == eth(CLIENT_MAC, DIRECTOR_MAC, Some(0x0123), 0x0800)[..],
        "ICMP L2 {:02x?}",
        &icmp[..18]
    );
    let ip = &icmp[18..38];
    ensure!(ip[9] == 1 && csum(ip) == 0, "ICMP IP header {ip:02x?}");
    ensure!(ip[12..16] == VIP.octets() && ip[16..20] == CLIENT.octets());
    ensure!(u16::from_be_bytes([ip[2], ip[3]]) as usize == 20 + 8 + 548);
    let msg = &icmp[38..];
    ensure!(msg.len() == 8 + 548, "ICMP length {}", msg.len());
    ensure!(msg[0] == 3 && msg[1] == 4, "type/code {:?}", &msg[..2]);
    ensure!(u16::from_be_bytes([msg[6], msg[7]]) == 1480, "next-hop MTU");
    ensure!(csum(msg) == 0, "ICMP checksum wrong");
    ensure!(msg[8..] == big[..548], "ICMP quote");

    // Without DF it is sent on (the link may drop it), no ICMP.
    let big_no_df = ipv4(CLIENT, VIP, 6, false, &tcp(1460));
    let mut frame = eth(DIRECTOR_MAC, CLIENT_MAC, None, 0x0800);
    frame.extend_from_slice(&big_no_df);
    let (code, out) = prog_run(dir.path(), id, &frame)?;
    ensure!(
        code == XDP_TX && out[14 + 9] == 4,
        "no-DF packet not encapsulated"
    );

    // Not for a VIP: passed untouched.
    let other = ipv4(CLIENT, Ipv4Addr::new(10, 201, 0, 50), 6, true, &tcp(10));
    let mut frame = eth(DIRECTOR_MAC, CLIENT_MAC, None, 0x0800);
    frame.extend_from_slice(&other);
    let (code, out) = prog_run(dir.path(), id, &frame)?;
    ensure!(code == XDP_PASS && out == frame, "non-VIP packet");

    let stats = dp.stats()?;
    ensure!(stats.icmp_too_big == 1, "{stats:?}");
    ensure!(stats.passed == 1, "{stats:?}");
    // Forwarded: L2 DSR, IPIP, GUE, IPIP without DF; not the too-big one.
    ensure!(
        matches!(stats.nodes.as_slice(), [(5, c)] if c.packets == 4),
        "{stats:?}"
    );
    ensure!(
        matches!(stats.vips.as_slice(), [(1, c)] if c.packets == 5),
        "{stats:?}"
    );
    ensure!(stats.flow_misses == 1, "{stats:?}");
    // Dropping the handles detaches the programs.
    let attached = |ns: &str| -> Result<bool> {
        let out = run("ip", &["-n", ns, "link", "show", "dev", "lo"])?;
        Ok(String::from_utf8_lossy(&out.stdout).contains("prog/xdp"))
    };
    ensure!(attached(&ns.0)? && attached(&ns_decap.0)?, "not attached?");
    drop(dp);
    drop(decap);
    ensure!(!attached(&ns.0)?, "director still attached after drop");
    ensure!(!attached(&ns_decap.0)?, "decap still attached after drop");
    Ok(())
}

/// `Options::default()` (what the director uses unless configured) loads:
/// the maps at their full sizes fit and the verifier accepts the program.
#[test]
fn default_options_load() -> Result<()> {
    if !netns_available("default_options_load") {
        return Ok(());
    }
    let ns = Netns::new("dflt")?;
    let started = std::time::Instant::now();
    let dp = {
        let _in = NetnsGuard::enter(&ns.0)?;
        Dataplane::attach("lo", AttachMode::Generic, &Options::default())?
    };
    eprintln!("attached with default options in {:?}", started.elapsed());
    let stats = dp.stats()?;
    ensure!(stats.vips.is_empty() && stats.nodes.is_empty());
    Ok(())
}
