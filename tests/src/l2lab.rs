//! An L2 lab for the director's XDP data plane: a client, a director and
//! nodes on one Ethernet bridge, in network namespaces, with addresses in
//! 10.201.0.0/24 (10.200.0.0/16 belongs to [`crate::netns`]).
//!
//! ```text
//!   client 10.201.0.2 ──┐
//!   director 10.201.0.3 ─┤ br0 (switch namespace)
//!   node-1 10.201.0.11 ──┤   VIP 10.201.0.100 on each node's lo
//!   node-2 10.201.0.12 ──┤   (arp_ignore=1, arp_announce=2)
//!   node-3 10.201.0.13 ──┘
//! ```
//!
//! With [`LabOptions::ipv6`], every host also has `fd00:201::<last octet>`
//! and the nodes hold [`VIP6`] (`fd00:201::100`) on `lo` as well.
//!
//! The client routes the VIP via the director; nodes answer the client
//! directly (direct server return). Every host's interface is `eth0`; its
//! bridge port in the switch namespace is `p-<host>`. Names are
//! `tdm-x<pid>-<n>-<host>` (unique per process and lab); dropping the
//! [`XdpLab`] kills its processes by PID and deletes its namespaces (which
//! removes the veths), also when a test fails.
//!
//! Each node can run [`XdpLab::start_http`]: a tiny HTTP/1.1 server on
//! VIP:port that answers `<node name> <peer ip>:<peer port> <bytes of
//! request body>\n`, so a test sees which node answered and which client
//! address it saw.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

pub const CLIENT: &str = "client";
pub const DIRECTOR: &str = "director";
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
pub const DIRECTOR_ADDR: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 3);
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 100);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x201, 0, 0, 0, 0, 0, 0x100);

/// The IPv6 address of a lab host with IPv4 address `v4`: fd00:201::<last
/// octet, in hex digits as written in decimal, e.g. ::11 for .11>.
pub fn v6_of(v4: Ipv4Addr) -> Ipv6Addr {
    let last = v4.octets()[3] as u16;
    let as_hex = (last / 100) * 0x100 + ((last / 10) % 10) * 0x10 + last % 10;
    Ipv6Addr::new(0xfd00, 0x201, 0, 0, 0, 0, 0, as_hex)
}

/// Address of node `i` (1-based): 10.201.0.1i.
pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 201, 0, 10 + i as u8)
}

pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// Runs `program ARGS`, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub netns: String,
    pub addr: Ipv4Addr,
    /// With [`LabOptions::ipv6`].
    pub addr6: Option<Ipv6Addr>,
    pub mac: [u8; 6],
}

#[derive(Clone, Debug)]
pub struct LabOptions {
    pub nodes: usize,
    /// MTU of the client's eth0.
    pub client_mtu: u32,
    /// MTU of every other link (director, nodes, bridge ports): room for
    /// encapsulation.
    pub link_mtu: u32,
    /// Also IPv6 addresses (fd00:201::/64) and the IPv6 VIP.
    pub ipv6: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            nodes: 3,
            client_mtu: 1500,
            link_mtu: 1600,
            ipv6: false,
        }
    }
}

/// Receive and transmit packet counters of an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
}

pub struct XdpLab {
    prefix: String,
    switch: String,
    created: Vec<String>,
    hosts: Vec<Host>,
    children: Vec<Child>,
    link_mtu: u32,
    ipv6: bool,
}

static LABS: AtomicU32 = AtomicU32::new(0);

impl XdpLab {
    /// Client, director and `opts.nodes` nodes on a bridge; the VIP routed
    /// via the director on the client and bound to every node's `lo`.
    pub fn new(opts: &LabOptions) -> Result<XdpLab> {
        sweep_dead_labs();
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("tdm-x{}-{n}", std::process::id());
        let mut lab = XdpLab {
            switch: format!("{prefix}-sw"),
            prefix,
            created: Vec::new(),
            hosts: Vec::new(),
            children: Vec::new(),
            link_mtu: opts.link_mtu,
            ipv6: opts.ipv6,
        };
        let sw = lab.switch.clone();
        lab.add_netns(&sw)?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &sw,
            "link",
            "set",
            "br0",
            "mtu",
            &opts.link_mtu.to_string(),
            "up",
        ])?;
        lab.add_host(CLIENT, CLIENT_ADDR, opts.client_mtu)?;
        lab.add_host(DIRECTOR, DIRECTOR_ADDR, opts.link_mtu)?;
        for i in 1..=opts.nodes {
            lab.add_host(&node_name(i), node_addr(i), opts.link_mtu)?;
        }
        lab.ip_in(
            CLIENT,
            &[
                "route",
                "add",
                &format!("{VIP}/32"),
                "via",
                &DIRECTOR_ADDR.to_string(),
            ],
        )?;
        if opts.ipv6 {
            lab.ip_in(
                CLIENT,
                &[
                    "-6",
                    "route",
                    "add",
                    &format!("{VIP6}/128"),
                    "via",
                    &v6_of(DIRECTOR_ADDR).to_string(),
                ],
            )?;
        }
        for i in 1..=opts.nodes {
            lab.bind_vip(&node_name(i))?;
        }
        Ok(lab)
    }

    fn add_netns(&mut self, name: &str) -> Result<()> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    fn add_host(&mut self, name: &str, addr: Ipv4Addr, mtu: u32) -> Result<()> {
        let netns = format!("{}-{name}", self.prefix);
        self.add_netns(&netns)?;
        // IPv4 only unless asked (no neighbour discovery noise in the
        // counters); with IPv6, no duplicate address detection delay.
        let v6 = if self.ipv6 { "0" } else { "1" };
        run(
            "ip",
            &[
                "netns",
                "exec",
                &netns,
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv6.conf.all.disable_ipv6={v6}"),
                &format!("net.ipv6.conf.default.disable_ipv6={v6}"),
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.default.router_solicitations=0",
            ],
        )?;
        let port = format!("p-{name}");
        ensure!(port.len() <= 15, "host name {name:?} too long for a link");
        let sw = self.switch.clone();
        ip(&[
            "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &netns,
        ])?;
        ip(&[
            "-n",
            &sw,
            "link",
            "set",
            &port,
            "mtu",
            &self.link_mtu.to_string(),
            "master",
            "br0",
            "up",
        ])?;
        ip(&[
            "-n",
            &netns,
            "link",
            "set",
            "eth0",
            "mtu",
            &mtu.to_string(),
            "up",
        ])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        let addr6 = self.ipv6.then(|| v6_of(addr));
        if let Some(a6) = addr6 {
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{a6}/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
        }
        let mac = link_mac(&netns, "eth0")?;
        self.hosts.push(Host {
            name: name.to_string(),
            netns,
            addr,
            addr6,
            mac,
        });
        Ok(())
    }

    /// VIP/32 on `host`'s lo, with ARP answered only for eth0's own address.
    fn bind_vip(&self, host: &str) -> Result<()> {
        for (k, v) in [
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
            ("net.ipv4.conf.eth0.arp_ignore", "1"),
            ("net.ipv4.conf.eth0.arp_announce", "2"),
        ] {
            self.exec(host, &["sysctl", "-q", "-w", &format!("{k}={v}")])?;
        }
        self.ip_in(host, &["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        if self.ipv6 {
            self.ip_in(
                host,
                &["addr", "add", &format!("{VIP6}/128"), "dev", "lo", "nodad"],
            )?;
        }
        Ok(())
    }

    pub fn host(&self, name: &str) -> Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .with_context(|| format!("no host {name:?} in the lab"))
    }

    /// The switch namespace (holds br0 and the `p-<host>` ports).
    pub fn switch_netns(&self) -> &str {
        &self.switch
    }

    pub fn nodes(&self) -> Vec<&Host> {
        self.hosts
            .iter()
            .filter(|h| h.name.starts_with("node-"))
            .collect()
    }

    /// `ip -n <host's netns> ARGS`.
    pub fn ip_in(&self, host: &str, args: &[&str]) -> Result<()> {
        let ns = self.host(host)?.netns.clone();
        let mut full = vec!["-n", ns.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// `ip netns exec <host's netns> ARGS`, failing unless it succeeds.
    pub fn exec(&self, host: &str, args: &[&str]) -> Result<Output> {
        let ns = self.host(host)?.netns.clone();
        let mut full = vec!["netns", "exec", ns.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `ip netns exec <host's netns> ARGS`, whatever its exit status.
    pub fn exec_any(&self, host: &str, args: &[&str]) -> Result<Output> {
        let ns = self.host(host)?.netns.clone();
        Command::new("ip")
            .args(["netns", "exec", ns.as_str()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running ip netns exec")
    }

    /// Turns off checksum and segmentation offloads on `host`'s eth0: XDP
    /// in native mode cannot finish a partial checksum, and generic-mode
    /// XDP_TX cannot send a GSO super-packet. Needs ethtool.
    pub fn disable_offloads(&self, host: &str) -> Result<()> {
        let ethtool =
            crate::gate::which("ethtool").context("ethtool not found (apt-get install ethtool)")?;
        let ethtool = ethtool.to_string_lossy().into_owned();
        self.exec(
            host,
            &[
                &ethtool, "-K", "eth0", "tx", "off", "tso", "off", "gso", "off",
            ],
        )?;
        Ok(())
    }

    /// Moves the calling thread into `host`'s network namespace until the
    /// guard is dropped ("switch" for the switch namespace). Interfaces
    /// named from then on (XDP attach) are the host's.
    pub fn enter(&self, host: &str) -> Result<NetnsGuard> {
        let ns = if host == "switch" {
            self.switch.clone()
        } else {
            self.host(host)?.netns.clone()
        };
        NetnsGuard::enter(&ns)
    }

    /// `host`'s eth0 counters.
    pub fn counters(&self, host: &str) -> Result<LinkCounters> {
        let read = |what: &str| -> Result<u64> {
            let out = self.exec(
                host,
                &["cat", &format!("/sys/class/net/eth0/statistics/{what}")],
            )?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .with_context(|| format!("parsing {what} of {host}"))
        };
        Ok(LinkCounters {
            rx_packets: read("rx_packets")?,
            tx_packets: read("tx_packets")?,
        })
    }

    /// Starts the HTTP server on node `host`, bound to VIP:`port`; returns
    /// once it listens.
    pub fn start_http(&mut self, host: &str, port: u16) -> Result<()> {
        self.start_http_at(host, IpAddr::V4(VIP), port)
    }

    /// Starts the HTTP server on `host`, bound to `addr`:`port`; returns
    /// once it listens. Answers `<host> <peer>:<port> <body bytes>` (an IPv6
    /// peer in brackets).
    pub fn start_http_at(&mut self, host: &str, addr: IpAddr, port: u16) -> Result<()> {
        let ns = self.host(host)?.netns.clone();
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "python3",
                "-u",
                "-c",
                HTTP_SERVER,
                host,
            ])
            .args([addr.to_string(), port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting python3 http server")?;
        let stdout = child.stdout.take().context("server stdout")?;
        self.children.push(child);
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the server's ready line")?;
        if line.trim() != "listening" {
            bail!("http server on {host} did not start: {line:?}");
        }
        Ok(())
    }

    /// `curl` from the client: `count` requests to http://VIP:port/, each on
    /// a new connection (so each is a new flow), stopping at the first
    /// failure. Returns the answer lines.
    pub fn curl_many(&self, port: u16, count: u32) -> Result<Vec<String>> {
        self.curl_many_at(SocketAddr::new(IpAddr::V4(VIP), port), count)
    }

    /// As [`XdpLab::curl_many`], to any address.
    pub fn curl_many_at(&self, to: SocketAddr, count: u32) -> Result<Vec<String>> {
        let url = format!("http://{to}/");
        let mut args = vec![
            "curl",
            "-sS",
            "-g",
            // The first failed request ends the run: a broken data plane
            // fails the test in seconds, not count * max-time.
            "--fail-early",
            "--max-time",
            "5",
            "-H",
            "Connection: close",
        ];
        args.extend(std::iter::repeat_n(url.as_str(), count as usize));
        let out = self.exec_any(CLIENT, &args)?;
        if !out.stderr.is_empty() {
            eprintln!("curl: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }
}

impl Drop for XdpLab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        for ns in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("xdp lab clean-up: {e}");
            }
        }
    }
}

/// The calling thread in another network namespace; dropping it returns
/// the thread to the namespace it was in.
pub struct NetnsGuard {
    back: File,
}

impl NetnsGuard {
    pub fn enter(netns: &str) -> Result<NetnsGuard> {
        let back = File::open("/proc/thread-self/ns/net").context("opening own netns")?;
        let target = File::open(format!("/run/netns/{netns}"))
            .with_context(|| format!("opening netns {netns}"))?;
        nix::sched::setns(target.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering netns {netns}"))?;
        Ok(NetnsGuard { back })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = nix::sched::setns(self.back.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET) {
            eprintln!("returning to the original netns: {e}");
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    run("ip", args).map(|_| ())
}

/// The MAC of `dev` in `netns`.
pub fn link_mac(netns: &str, dev: &str) -> Result<[u8; 6]> {
    let out = run("ip", &["-n", netns, "-o", "link", "show", "dev", dev])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let s = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .with_context(|| format!("no link/ether in {text:?}"))?;
    parse_mac(s)
}

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    ensure!(parts.len() == 6, "bad MAC {s:?}");
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).with_context(|| format!("bad MAC {s:?}"))?;
    }
    Ok(mac)
}

/// Deletes `tdm-x<pid>-...` namespaces whose test process is gone.
fn sweep_dead_labs() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("tdm-x")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("deleting namespace {name} left by a dead test run");
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The node's HTTP server: argv = name, address, port.
const HTTP_SERVER: &str = r#"
import http.server, socket, sys
name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        got = 0
        while got < n:
            chunk = self.rfile.read(min(65536, n - got))
            if not chunk:
                break
            got += len(chunk)
        ip, p = self.client_address[0], self.client_address[1]
        if ":" in ip:
            ip = f"[{ip}]"
        body = f"{name} {ip}:{p} {got}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = answer
    do_POST = answer
    def log_message(self, *args):
        pass
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = S((host, port), H)
print("listening", flush=True)
s.serve_forever()
"#;
