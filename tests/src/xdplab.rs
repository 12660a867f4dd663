//! A lab for the director's xdp mode: one L2 segment (the [`Lab`]'s bridge)
//! in 10.202.0.0/24 with a client, control, a director in xdp mode, nodes
//! holding the VIP on `lo`, and demo apps, each in its own namespace.
//!
//! ```text
//!   client 10.202.0.100 ── route VIP via 10.202.0.11 ──> director 10.202.0.11 (XDP on eth0)
//!      ^                                                     │ dst MAC := node's, XDP_TX
//!      │ replies straight from the node (DSR)               v
//!      └──────────────────────────────────────── node-1..3 10.202.0.21..23 (VIP on lo)
//!   control 10.202.0.2                                       └─> app-1,2 10.202.0.31,32
//! ```
//!
//! What the kernel needs for this (see `crates/xdp`): the client's veth
//! sends no TSO/GSO super-packets and computes its own checksums (generic
//! mode drops super-packets; native XDP_TX loses checksum offload), and in
//! native mode the peer of the director's veth (its switch port) runs an XDP
//! program, else XDP_TX'd frames are dropped.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use anyhow::{Context, Result, bail, ensure};

use crate::netns::Lab;

pub const CONTROL: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 2);
pub const DIRECTOR: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 11);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 100);
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 202, 1, 10);

pub fn node_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 202, 0, 20 + i as u8)
}

pub fn app_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 202, 0, 30 + i as u8)
}

/// Runs `ip netns exec NS PROGRAM ARGS`, failing with its stderr.
pub fn exec_in(netns: &str, program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} in {netns}"))?;
    ensure!(
        out.status.success(),
        "{program} {} in {netns} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Turns off TSO/GSO and tx checksum offload on `ifname` in `netns`.
pub fn offloads_off(netns: &str, ifname: &str) -> Result<()> {
    if crate::gate::which("ethtool").is_none() {
        bail!("ethtool not found (apt-get install ethtool): needed to turn off veth offloads");
    }
    exec_in(
        netns,
        "ethtool",
        &["-K", ifname, "tx", "off", "tso", "off", "gso", "off"],
    )?;
    Ok(())
}

/// RX and TX packet counters of `ifname` in `netns`.
pub fn link_packets(netns: &str, ifname: &str) -> Result<(u64, u64)> {
    let read = |what: &str| -> Result<u64> {
        let s = exec_in(
            netns,
            "cat",
            &[&format!("/sys/class/net/{ifname}/statistics/{what}")],
        )?;
        s.trim()
            .parse()
            .with_context(|| format!("{what} of {ifname} in {netns}: {s:?}"))
    };
    Ok((read("rx_packets")?, read("tx_packets")?))
}

/// An XDP_PASS program held on an interface of another namespace by a
/// thread living in that namespace; dropped, it detaches there.
pub struct PassGuard {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PassGuard {
    pub fn attach(netns: &str, ifname: &str, mode: xdp::AttachMode) -> Result<PassGuard> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let netns = netns.to_string();
        let ifname = ifname.to_string();
        let thread = std::thread::spawn(move || {
            let attached = (|| -> Result<xdp::Pass> {
                let f = std::fs::File::open(format!("/run/netns/{netns}"))
                    .with_context(|| format!("opening netns {netns}"))?;
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering netns {netns}"))?;
                xdp::Pass::attach(&ifname, mode)
                    .with_context(|| format!("XDP pass program on {ifname} in {netns}"))
            })();
            match attached {
                Ok(pass) => {
                    let _ = ready_tx.send(Ok(()));
                    let _ = stop_rx.recv();
                    drop(pass);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
        ready_rx.recv().context("pass program thread ended")??;
        Ok(PassGuard {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for PassGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The hosts of the xdp lab on `lab`'s bridge: client, control, director,
/// `nodes` nodes and two apps; the client routes the VIP via the director;
/// offloads off where the data plane needs it. In native mode the
/// director's switch port gets an XDP_PASS program (returned: keep it).
pub fn build(lab: &Lab, nodes: u32, mode: xdp::AttachMode) -> Result<Option<PassGuard>> {
    lab.add_host("client", CLIENT)?;
    lab.add_host("control", CONTROL)?;
    lab.add_host("director", DIRECTOR)?;
    for i in 1..=nodes {
        lab.add_host(&format!("node{i}"), node_ip(i))?;
    }
    for i in 1..=2 {
        lab.add_host(&format!("app{i}"), app_ip(i))?;
    }
    lab.ip_in(
        "client",
        &[
            "route",
            "add",
            &format!("{VIP}/32"),
            "via",
            &DIRECTOR.to_string(),
        ],
    )?;
    offloads_off(&lab.host("client")?.netns, "eth0")?;
    let pass = match mode {
        xdp::AttachMode::Native => Some(PassGuard::attach(
            &format!("{}-sw", lab.prefix()),
            "v-director",
            xdp::AttachMode::Native,
        )?),
        xdp::AttachMode::Generic => None,
    };
    Ok(pass)
}
