//! The node side of a director in xdp mode: the VIPs on `lo` (with the ARP
//! sysctls that keep the node from answering ARP for them), and the decap
//! program for IPIP/GUE.
//!
//! With L2 DSR the director only rewrites the destination MAC: the packet
//! still says "to VIP", so the node must hold the VIP locally, on `lo` where
//! it does not claim it on the wire (`arp_ignore=1`: answer ARP only for
//! addresses of the receiving interface; `arp_announce=2`: never use the VIP
//! as the source of an ARP request). The node's listener must accept on
//! VIP:port: listen on `0.0.0.0:PORT` (or `[::]:PORT`), PROXY protocol
//! `optional`; the client's direct connection carries no PROXY header and
//! the client address is the socket peer.

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

#[derive(clap::Args, Debug, Default)]
pub struct VipArgs {
    /// VIPs a director in xdp mode sends here: each is added to `lo` (/32 or
    /// /128) with net.ipv4.conf.all.arp_ignore=1 and arp_announce=2, and
    /// removed on exit. Repeat or separate with commas.
    #[arg(long = "vip", value_name = "IP", value_delimiter = ',')]
    pub vips: Vec<IpAddr>,
    /// The VIPs (and ARP sysctls) are set up by the operator: add nothing,
    /// remove nothing.
    #[arg(long)]
    pub vip_external: bool,
    /// Attach the IPIP/GUE decapsulation program to this interface (for
    /// services forwarded with IPIP or GUE).
    #[arg(long, value_name = "IF")]
    pub decap: Option<String>,
    /// Where the decap program runs.
    #[arg(long, value_enum, default_value = "native", requires = "decap")]
    pub decap_attach: crate::XdpAttachArg,
    /// Decapsulate only packets to these outer destinations (default: any).
    #[arg(long, value_name = "IP", value_delimiter = ',', requires = "decap")]
    pub decap_destination: Vec<IpAddr>,
}

/// Undoes the setup when dropped: removes the VIPs this process added and
/// detaches the decap program.
#[derive(Debug, Default)]
pub struct VipGuard {
    added: Vec<IpAddr>,
    decap: Option<xdp::Decap>,
}

impl Drop for VipGuard {
    fn drop(&mut self) {
        for ip in self.added.drain(..) {
            match ip_cmd(&["addr", "del", &host_prefix(ip), "dev", "lo"]) {
                Ok(()) => tracing::info!(vip = %ip, "VIP removed from lo"),
                Err(e) => tracing::warn!(vip = %ip, error = %format!("{e:#}"), "cannot remove VIP"),
            }
        }
        if let Some(d) = self.decap.take() {
            let n = d.decapsulated().map(|c| c.packets).unwrap_or(0);
            drop(d);
            tracing::info!(decapsulated = n, "decap program detached");
        }
    }
}

fn host_prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

fn ip_cmd(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (iproute2); install iproute2")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value} to {path}"))
}

/// Sets up the VIPs and the decap program as `args` ask. `listen` is the
/// node's TLS listener, checked to accept on the VIPs.
pub fn setup(args: &VipArgs, listen: SocketAddr) -> Result<VipGuard> {
    let mut guard = VipGuard::default();
    let needs_root = (!args.vips.is_empty() && !args.vip_external) || args.decap.is_some();
    if needs_root && !nix::unistd::geteuid().is_root() {
        bail!(
            "--vip (without --vip-external) and --decap need root: they add addresses to lo, \
             set ARP sysctls and attach an XDP program"
        );
    }
    if !args.vips.is_empty() && !listen.ip().is_unspecified() && !args.vips.contains(&listen.ip()) {
        tracing::warn!(
            %listen,
            "the node listens on a specific address, so packets to the VIPs will not reach it; \
             listen on 0.0.0.0:PORT (or [::]:PORT) with PORT the VIP's port"
        );
    }
    if !args.vips.is_empty() && !args.vip_external {
        if args.vips.iter().any(IpAddr::is_ipv4) {
            sysctl("/proc/sys/net/ipv4/conf/all/arp_ignore", "1")?;
            sysctl("/proc/sys/net/ipv4/conf/all/arp_announce", "2")?;
        }
        for ip in &args.vips {
            match ip_cmd(&["addr", "add", &host_prefix(*ip), "dev", "lo"]) {
                Ok(()) => {
                    tracing::info!(vip = %ip, "VIP added to lo");
                    guard.added.push(*ip);
                }
                // Someone else put it there: use it, leave it on exit.
                Err(e) if format!("{e:#}").contains("File exists") => {
                    tracing::info!(vip = %ip, "VIP already on lo; left in place on exit");
                }
                Err(e) => return Err(e).with_context(|| format!("adding VIP {ip} to lo")),
            }
        }
    }
    if let Some(ifname) = &args.decap {
        let mut d = xdp::Decap::attach(ifname, args.decap_attach.into())
            .with_context(|| format!("attaching the decap program to {ifname}"))?;
        for ip in &args.decap_destination {
            d.accept_tunnel_destination(*ip)
                .with_context(|| format!("accepting tunnel destination {ip}"))?;
        }
        tracing::info!(interface = %ifname, destinations = ?args.decap_destination, "decap program attached (IPIP, GUE)");
        guard.decap = Some(d);
    }
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::{Cli, Command};

    #[test]
    fn node_vip_flags_parse() {
        let cli = Cli::try_parse_from([
            "tandem",
            "node",
            "--listen",
            "0.0.0.0:443",
            "--vip",
            "10.202.1.10,fd00::10",
            "--vip",
            "10.202.1.11",
            "--decap",
            "eth0",
            "--decap-attach",
            "generic",
        ])
        .expect("parses");
        let Command::Node(a) = cli.command else {
            panic!("not a node command");
        };
        assert_eq!(
            a.vip.vips,
            ["10.202.1.10", "fd00::10", "10.202.1.11"]
                .map(|s| s.parse::<std::net::IpAddr>().expect("ip"))
        );
        assert!(!a.vip.vip_external);
        assert_eq!(a.vip.decap.as_deref(), Some("eth0"));
        assert_eq!(a.vip.decap_attach, crate::XdpAttachArg::Generic);
        // Not an address.
        assert!(Cli::try_parse_from(["tandem", "node", "--vip", "10.202.1"]).is_err());
        // Decap options without --decap.
        assert!(Cli::try_parse_from(["tandem", "node", "--decap-attach", "generic"]).is_err());
    }

    #[test]
    fn director_xdp_flags_parse() {
        let cli = Cli::try_parse_from([
            "tandem",
            "director",
            "--mode",
            "xdp",
            "--xdp-interface",
            "eth0",
            "--xdp-attach",
            "generic",
            "--xdp-tunnel-source",
            "10.202.0.11,fd00::11",
            "--xdp-mtu",
            "1400",
        ])
        .expect("parses");
        let Command::Director(a) = cli.command else {
            panic!("not a director command");
        };
        let c = a.xdp.config().expect("valid").expect("xdp mode");
        assert_eq!(c.interface, "eth0");
        assert_eq!(c.attach, xdp::AttachMode::Generic);
        assert_eq!(c.options.mtu, 1400);
        assert_eq!(
            c.options.tunnel_source_v4,
            Some("10.202.0.11".parse().expect("ip"))
        );
        assert_eq!(
            c.options.tunnel_source_v6,
            Some("fd00::11".parse().expect("ip"))
        );
        // Proxy mode is the default and has no xdp settings.
        let cli = Cli::try_parse_from(["tandem", "director"]).expect("parses");
        let Command::Director(a) = cli.command else {
            panic!("not a director command");
        };
        assert!(a.xdp.config().expect("valid").is_none());
        // xdp mode needs an interface; two IPv4 tunnel sources are refused.
        assert!(Cli::try_parse_from(["tandem", "director", "--mode", "xdp"]).is_err());
        let cli = Cli::try_parse_from([
            "tandem",
            "director",
            "--mode",
            "xdp",
            "--xdp-interface",
            "eth0",
            "--xdp-tunnel-source",
            "10.0.0.1,10.0.0.2",
        ])
        .expect("parses");
        let Command::Director(a) = cli.command else {
            panic!("not a director command");
        };
        assert!(a.xdp.config().is_err());
    }
}
