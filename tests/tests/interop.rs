//! Interop with real peers nobody here wrote: HAProxy and nginx on either
//! side of a node (PROXY v2 both ways), curl, openssl s_client, h2load,
//! sslscan, and a Python grpcio client generated from `proto/`.
//!
//! Everything runs on loopback (127.0.0.x) with free ports; the peers run
//! in the foreground as child processes with their config in a tempdir.
//! A missing peer program skips its test with a printed reason, unless
//! `TANDEM_REQUIRE_PEERS=1` (CI), which makes it a failure.

// Messages built with `..Default::default()` keep compiling as the proto grows.
#![allow(clippy::needless_update)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use control_api::pb::{self, Change, admin_client::AdminClient, change};
use tandem_tests::{Conn, Up, bin, eventually, free_port_block, gate, tandemctl};

/// One test at a time: each runs a whole `tandem up` plus peers, and
/// h2load wants the CPU.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The client address the peers must report: not the 127.0.0.1 every
/// server here listens on, so a proxy that lost it would show.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

/// A child process (a peer or an extra tandem process), killed by PID when
/// dropped.
struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &str, dir: &Path, cmd: &mut Command) -> Result<Daemon> {
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Daemon {
            name: name.to_string(),
            child,
            log,
        })
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails with the log if the process has exited.
    fn alive(&mut self) -> Result<()> {
        if let Some(s) = self.child.try_wait()? {
            bail!("{} exited ({s}):\n{}", self.name, self.output());
        }
        Ok(())
    }

    /// Waits until `addr` accepts TCP connections.
    async fn wait_listening(&mut self, addr: SocketAddr) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.alive()?;
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not listening on {addr} after 20 s:\n{}",
                    self.name,
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A `tandem up` on loopback with free ports, in its own tempdir.
struct Stack {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    up: Up,
    base: u16,
}

impl Stack {
    fn start() -> Result<Stack> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_path_buf();
        let base = free_port_block(91);
        let vip: SocketAddr = format!("127.0.0.1:{}", free_port_block(1)).parse()?;
        let up = Up::start(&dir, vip, base, &[])?;
        Ok(Stack {
            _tmp: tmp,
            dir,
            up,
            base,
        })
    }

    fn vip(&self) -> SocketAddr {
        self.up.vip
    }
    fn ca(&self) -> PathBuf {
        self.up.ca_pem()
    }
    fn control_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.base)
    }
    /// Node i's traffic listener (PROXY optional under `up`).
    fn node(&self, i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 10 + i))
    }

    /// A token `up` made for control (`admin` or `subscriber`), if it
    /// runs control with authentication: the last word of the first line
    /// of `.tandem/<name>.token`.
    fn token(&self, name: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.token_file(name)?).ok()?;
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))?
            .split_whitespace()
            .last()
            .map(str::to_string)
    }

    fn token_file(&self, name: &str) -> Option<PathBuf> {
        let p = self.dir.join(".tandem").join(format!("{name}.token"));
        p.exists().then_some(p)
    }

    async fn apply(&self, changes: Vec<change::Change>) -> Result<u64> {
        let channel = tonic::transport::Endpoint::from_shared(self.control_url())?
            .connect()
            .await?;
        let bearer = self
            .token("admin")
            .map(|t| format!("Bearer {t}").parse::<tonic::metadata::MetadataValue<_>>())
            .transpose()?;
        let mut admin =
            AdminClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
                if let Some(b) = &bearer {
                    req.metadata_mut().insert("authorization", b.clone());
                }
                Ok(req)
            });
        let resp = admin
            .apply(pb::ApplyRequest {
                changes: changes
                    .into_iter()
                    .map(|c| Change { change: Some(c) })
                    .collect(),
                expected_version: 0,
            })
            .await
            .map_err(|s| anyhow::anyhow!("Apply: {}: {}", s.code(), s.message()))?;
        let version = resp.into_inner().version;
        // Wait until every node and the director run it.
        let dir = self.dir.clone();
        eventually(
            "all subscribers on the new version",
            Duration::from_secs(20),
            || {
                let dir = dir.clone();
                async move {
                    let out = tandemctl(&dir, &["status", "-o", "json"]).ok()?;
                    let s: serde_json::Value = serde_json::from_str(&out).ok()?;
                    let all = s["nodes"]
                        .as_array()?
                        .iter()
                        .chain(s["directors"].as_array()?.iter())
                        .all(|n| n["applied_version"].as_u64() >= Some(version));
                    all.then_some(())
                }
            },
        )
        .await?;
        Ok(version)
    }
}

/// A TCP connection to `addr` from `src` (any port).
async fn tcp_from(src: Ipv4Addr, addr: SocketAddr) -> Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((src, 0)))?;
    sock.connect(addr)
        .await
        .with_context(|| format!("connecting {src} -> {addr}"))
}

/// Runs a command to completion with a time limit; returns (success, stdout, stderr).
async fn run(cmd: &mut tokio::process::Command, limit: Duration) -> Result<(bool, String, String)> {
    cmd.kill_on_drop(true).stdin(Stdio::null());
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .with_context(|| format!("{cmd:?} did not finish in {limit:?}"))?
        .with_context(|| format!("running {cmd:?}"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

// ---------------------------------------------------------------------------

/// HAProxy (`mode tcp`, `send-proxy-v2` with `proxy-v2-options
/// ssl,authority,unique-id,crc32c`) in front of a node listener that
/// requires PROXY: the app sees HAProxy's client, not HAProxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_send_proxy_v2_into_a_node() -> Result<()> {
    const T: &str = "haproxy_send_proxy_v2_into_a_node";
    let _s = serial().await;
    let Some(haproxy) = gate::peer(T, "haproxy", "haproxy") else {
        return Ok(());
    };
    let stack = Stack::start()?;
    let dir = stack.dir.clone();
    let ports = free_port_block(3);
    let node_addr = SocketAddr::from(([127, 0, 0, 1], ports));
    let node_admin = SocketAddr::from(([127, 0, 0, 1], ports + 1));
    let hap_addr = SocketAddr::from(([127, 0, 0, 1], ports + 2));

    // An extra node, not in any director pool: it gets routes, clusters
    // and certificates from control like the others.
    let mut cmd = Command::new(bin("tandem"));
    cmd.args([
        "node",
        "--id",
        "node-hap",
        "--listen",
        &node_addr.to_string(),
        "--admin-listen",
        &node_admin.to_string(),
        "--control",
        &stack.control_url(),
        "--proxy-protocol",
        "required",
    ]);
    if let Some(t) = stack.token_file("subscriber") {
        cmd.arg("--token-file").arg(t);
    }
    let mut node = Daemon::spawn("node-behind-haproxy", &dir, &mut cmd)?;
    node.wait_listening(node_admin).await?;
    eventually("node-hap ready", Duration::from_secs(20), || async {
        http_ok(node_admin, "/readyz").await.then_some(())
    })
    .await?;

    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            r#"global
    log stdout format raw local0
defaults
    mode tcp
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind {hap_addr}
    unique-id-format %{{+X}}o\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
    log-format "haproxy: client=%ci:%cp backend=%b/%s"
    default_backend nodes
backend nodes
    server node-hap {node_addr} source 127.0.0.3 send-proxy-v2 proxy-v2-options ssl,authority,unique-id,crc32c
"#
        ),
    )?;
    let (ok, out, err) = run(
        tokio::process::Command::new(&haproxy)
            .arg("-c")
            .arg("-f")
            .arg(&cfg),
        Duration::from_secs(20),
    )
    .await?;
    ensure!(ok, "haproxy -c rejected the config:\n{out}{err}");
    let mut hap = Daemon::spawn(
        "haproxy",
        &dir,
        Command::new(&haproxy).arg("-f").arg(&cfg).arg("-db"),
    )?;
    hap.wait_listening(hap_addr).await?;

    // Through HAProxy, h1 and h2: the app sees 127.0.0.9, the client.
    for h2 in [false, true] {
        let tcp = tcp_from(CLIENT_IP, hap_addr).await?;
        let local = tcp.local_addr()?;
        let mut c = Conn::handshake(tcp, &stack.ca(), h2).await?;
        let a = c.get("/via-haproxy").await?;
        ensure!(a.status == 200, "{a:?}");
        ensure!(
            a.node.as_deref() == Some("node-hap"),
            "served by {:?}",
            a.node
        );
        let j = a.json();
        ensure!(
            j["client"] == CLIENT_IP.to_string() && j["client_source"] == "x-forwarded-for",
            "h2={h2}: the app saw {j}"
        );
        // And PROXY v2 on to the app carries the same client and port.
        let j = c.get("/pp/via-haproxy").await?.json();
        ensure!(
            j["proxy_protocol"]["source"] == local.to_string(),
            "h2={h2}: PROXY to the app says {j}, client was {local}"
        );
    }
    // The node's PROXY requirement is real: without HAProxy's header, no TLS.
    let tcp = tokio::net::TcpStream::connect(node_addr).await?;
    ensure!(
        tokio::time::timeout(
            Duration::from_secs(10),
            Conn::handshake(tcp, &stack.ca(), false)
        )
        .await
        .map(|r| r.is_err())
        .unwrap_or(true),
        "the node served a connection without a PROXY header"
    );
    let log = hap.output();
    ensure!(
        log.contains(&format!("client={CLIENT_IP}:")),
        "haproxy log has no line for client {CLIENT_IP}:\n{log}"
    );
    hap.alive()?;
    node.alive()?;
    Ok(())
}

/// The node sends PROXY v2 to HAProxy (`accept-proxy`) and to nginx
/// (`listen ... proxy_protocol`): both see the true client address (and
/// HAProxy the authority, the SNI the client sent), in their answers and in
/// their logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sends_proxy_v2_to_haproxy_and_nginx() -> Result<()> {
    const T: &str = "node_sends_proxy_v2_to_haproxy_and_nginx";
    let _s = serial().await;
    let Some(haproxy) = gate::peer(T, "haproxy", "haproxy") else {
        return Ok(());
    };
    let Some(nginx) = gate::peer(T, "nginx", "nginx") else {
        return Ok(());
    };
    let Some(curl) = gate::peer(T, "curl", "curl") else {
        return Ok(());
    };
    let stack = Stack::start()?;
    let dir = stack.dir.clone();
    let ports = free_port_block(2);
    let hap_addr = SocketAddr::from(([127, 0, 0, 1], ports));
    let ngx_addr = SocketAddr::from(([127, 0, 0, 1], ports + 1));

    let cfg = dir.join("haproxy-accept.cfg");
    std::fs::write(
        &cfg,
        format!(
            r#"global
    log stdout format raw local0
defaults
    mode http
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend pp
    bind {hap_addr} accept-proxy
    log-format "haproxy-pp: src=%[src] authority=%[fc_pp_authority] path=%HP"
    http-request return status 200 content-type text/plain lf-string "src=%[src] authority=%[fc_pp_authority]"
"#
        ),
    )?;
    let mut hap = Daemon::spawn(
        "haproxy-accept",
        &dir,
        Command::new(&haproxy).arg("-f").arg(&cfg).arg("-db"),
    )?;

    let ngx = dir.join("nginx");
    std::fs::create_dir_all(ngx.join("tmp"))?;
    let n = ngx.display();
    std::fs::write(
        ngx.join("nginx.conf"),
        format!(
            r#"worker_processes 1;
pid {n}/nginx.pid;
error_log {n}/error.log info;
events {{ worker_connections 64; }}
http {{
    log_format pp 'nginx-pp: proxy_protocol_addr=$proxy_protocol_addr remote_addr=$remote_addr "$request"';
    access_log {n}/access.log pp;
    client_body_temp_path {n}/tmp/body;
    proxy_temp_path {n}/tmp/proxy;
    fastcgi_temp_path {n}/tmp/fastcgi;
    uwsgi_temp_path {n}/tmp/uwsgi;
    scgi_temp_path {n}/tmp/scgi;
    server {{
        listen {ngx_addr} proxy_protocol;
        location / {{
            default_type text/plain;
            return 200 "proxy_protocol_addr=$proxy_protocol_addr\n";
        }}
    }}
}}
"#
        ),
    )?;
    let mut nginx_cmd = Command::new(&nginx);
    nginx_cmd
        .arg("-p")
        .arg(&ngx)
        .arg("-c")
        .arg(ngx.join("nginx.conf"))
        .arg("-e")
        .arg(ngx.join("error.log"))
        // One -g only (nginx keeps the last). One process, no workers, so
        // killing it by PID leaves nothing behind; root's tempdir needs root.
        .args([
            "-g",
            if nix::unistd::geteuid().is_root() {
                "daemon off; master_process off; user root;"
            } else {
                "daemon off; master_process off;"
            },
        ]);
    let mut ngx_d = Daemon::spawn("nginx", &dir, &mut nginx_cmd)?;
    hap.wait_listening(hap_addr).await?;
    ngx_d.wait_listening(ngx_addr).await?;

    // Route /via-haproxy and /via-nginx to PROXY v2 clusters of one endpoint each.
    let mut changes = Vec::new();
    for (name, addr) in [("via-haproxy", hap_addr), ("via-nginx", ngx_addr)] {
        changes.push(change::Change::PutCluster(pb::Cluster {
            name: name.into(),
            endpoints: vec![pb::Endpoint {
                address: addr.to_string(),
                weight: 1,
                ..Default::default()
            }],
            proxy_protocol: pb::UpstreamProxyProtocol::V2 as i32,
            // HAProxy checks the CRC32C TLV when present (and drops the
            // connection on a mismatch); nginx skips it.
            proxy_protocol_crc32c: true,
            ..Default::default()
        }));
        changes.push(change::Change::PutRoute(pb::Route {
            name: name.into(),
            path_prefix: format!("/{name}"),
            cluster: name.into(),
            ..Default::default()
        }));
    }
    stack.apply(changes).await?;

    // A real client (curl) from 127.0.0.9 through the director and a node.
    let get = |path: &'static str, http: &'static str| {
        let mut cmd = tokio::process::Command::new(&curl);
        cmd.args(["-sS", "--fail", "--max-time", "10", http, "--interface"])
            .arg(CLIENT_IP.to_string())
            .arg("--cacert")
            .arg(stack.ca())
            .arg("--resolve")
            .arg(format!("localhost:{}:127.0.0.1", stack.vip().port()))
            .arg(format!("https://localhost:{}{path}", stack.vip().port()));
        cmd
    };
    for http in ["--http1.1", "--http2"] {
        let (ok, body, err) =
            run(&mut get("/via-haproxy/x", http), Duration::from_secs(20)).await?;
        ensure!(ok, "curl {http} via haproxy: {err}");
        ensure!(
            body.trim() == format!("src={CLIENT_IP} authority=localhost"),
            "HAProxy accept-proxy answered {body:?}"
        );
        let (ok, body, err) = run(&mut get("/via-nginx/x", http), Duration::from_secs(20)).await?;
        ensure!(ok, "curl {http} via nginx: {err}");
        ensure!(
            body.trim() == format!("proxy_protocol_addr={CLIENT_IP}"),
            "nginx proxy_protocol answered {body:?}"
        );
    }
    // The logs say the same.
    let want_hap = format!("haproxy-pp: src={CLIENT_IP} authority=localhost path=/via-haproxy/x");
    eventually("haproxy log line", Duration::from_secs(5), || async {
        hap.output().contains(&want_hap).then_some(())
    })
    .await
    .with_context(|| format!("haproxy log:\n{}", hap.output()))?;
    let access = ngx.join("access.log");
    let want_ngx = format!("nginx-pp: proxy_protocol_addr={CLIENT_IP} ");
    eventually("nginx access log line", Duration::from_secs(5), || async {
        std::fs::read_to_string(&access)
            .ok()
            .filter(|l| l.contains(&want_ngx) && l.contains("GET /via-nginx/x"))
            .map(|_| ())
    })
    .await
    .with_context(|| {
        format!(
            "nginx access log:\n{}",
            std::fs::read_to_string(&access).unwrap_or_default()
        )
    })?;
    hap.alive()?;
    ngx_d.alive()?;
    Ok(())
}

/// curl over h2 and http/1.1, openssl s_client (ALPN, SNI, certificate),
/// and a short bounded h2load run against the VIP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_openssl_and_h2load_through_the_vip() -> Result<()> {
    const T: &str = "curl_openssl_and_h2load_through_the_vip";
    let _s = serial().await;
    let Some(curl) = gate::peer(T, "curl", "curl") else {
        return Ok(());
    };
    let Some(openssl) = gate::peer(T, "openssl", "openssl") else {
        return Ok(());
    };
    let Some(h2load) = gate::peer(T, "h2load", "nghttp2-client") else {
        return Ok(());
    };
    let stack = Stack::start()?;
    let port = stack.vip().port();

    for (http, want) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (ok, out, err) = run(
            tokio::process::Command::new(&curl)
                .args([
                    "-sS",
                    "--fail",
                    "--max-time",
                    "10",
                    http,
                    "-w",
                    "\n%{http_version}",
                    "--cacert",
                ])
                .arg(stack.ca())
                .arg("--resolve")
                .arg(format!("localhost:{port}:127.0.0.1"))
                .arg(format!("https://localhost:{port}/curl")),
            Duration::from_secs(20),
        )
        .await?;
        ensure!(ok, "curl {http}: {err}");
        let (body, version) = out.rsplit_once('\n').context("curl output")?;
        ensure!(version == want, "curl {http} spoke HTTP/{version}");
        let j: serde_json::Value = serde_json::from_str(body)?;
        ensure!(
            j["client"] == "127.0.0.1" && j["path"] == "/curl",
            "curl {http}: {j}"
        );
    }

    // openssl s_client: ALPN h2, SNI localhost, a chain that verifies
    // against the CA, and the localhost certificate.
    let (_, out, err) = run(
        tokio::process::Command::new(&openssl)
            .args(["s_client", "-connect"])
            .arg(stack.vip().to_string())
            .args([
                "-alpn",
                "h2",
                "-servername",
                "localhost",
                "-verify_return_error",
                "-CAfile",
            ])
            .arg(stack.ca()),
        Duration::from_secs(20),
    )
    .await?;
    ensure!(
        out.contains("ALPN protocol: h2"),
        "s_client -alpn h2:\n{out}{err}"
    );
    ensure!(
        out.contains("Verify return code: 0 (ok)"),
        "s_client verify:\n{out}{err}"
    );
    ensure!(
        out.lines()
            .any(|l| l.contains("subject=") && l.contains("CN = localhost")),
        "s_client certificate:\n{out}"
    );
    ensure!(
        out.contains("Protocol  : TLSv1.3")
            || out.contains("Protocol  : TLSv1.2")
            || out.contains("TLSv1.3"),
        "s_client protocol:\n{out}"
    );
    // Asking for http/1.1 only gets http/1.1.
    let (_, out, _) = run(
        tokio::process::Command::new(&openssl)
            .args(["s_client", "-connect"])
            .arg(stack.vip().to_string())
            .args(["-alpn", "http/1.1", "-servername", "localhost", "-CAfile"])
            .arg(stack.ca()),
        Duration::from_secs(20),
    )
    .await?;
    ensure!(
        out.contains("ALPN protocol: http/1.1"),
        "s_client -alpn http/1.1:\n{out}"
    );

    // h2load: a short bounded run, no errors.
    let (ok, out, err) = run(
        tokio::process::Command::new(&h2load)
            .args([
                "-n", "2000", "-c", "10", "-m", "10", "-t", "1", "-T", "20", "-N", "20",
            ])
            .arg(format!("https://127.0.0.1:{port}/h2load")),
        Duration::from_secs(180),
    )
    .await?;
    eprintln!("h2load:\n{out}");
    ensure!(ok, "h2load failed: {err}\n{out}");
    ensure!(
        out.contains("Application protocol: h2"),
        "h2load did not speak h2:\n{out}"
    );
    ensure!(
        out.contains(
            "2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored, 0 timeout"
        ),
        "h2load requests:\n{out}"
    );
    ensure!(
        out.contains("status codes: 2000 2xx"),
        "h2load status codes:\n{out}"
    );
    Ok(())
}

/// TLS session resumption with `openssl s_client -sess_out/-sess_in`: a
/// session from node-1 resumes on node-1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_resumes_a_session_on_a_node() -> Result<()> {
    const T: &str = "openssl_resumes_a_session_on_a_node";
    let _s = serial().await;
    let Some(openssl) = gate::peer(T, "openssl", "openssl") else {
        return Ok(());
    };
    let stack = Stack::start()?;
    let sess = stack.dir.join("node-1.sess");
    let first = s_client_resume(&openssl, &stack, stack.node(1), &sess, false).await?;
    ensure!(
        first.contains("New, TLSv1.3") || first.contains("New, TLSv1.2"),
        "first handshake:\n{first}"
    );
    let again = s_client_resume(&openssl, &stack, stack.node(1), &sess, true).await?;
    ensure!(
        again.contains("Reused, TLSv1."),
        "same node did not resume:\n{again}"
    );
    Ok(())
}

/// A session from node-1 resumes on node-2: DESIGN.md has session ticket
/// keys shared by all nodes (and rotated by control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_resumes_a_session_across_nodes() -> Result<()> {
    const T: &str = "openssl_resumes_a_session_across_nodes";
    let _s = serial().await;
    let Some(openssl) = gate::peer(T, "openssl", "openssl") else {
        return Ok(());
    };
    let stack = Stack::start()?;
    let sess = stack.dir.join("node-1.sess");
    s_client_resume(&openssl, &stack, stack.node(1), &sess, false).await?;
    let other = s_client_resume(&openssl, &stack, stack.node(2), &sess, true).await?;
    ensure!(
        other.contains("Reused, TLSv1."),
        "node-2 did not resume node-1's session:\n{other}"
    );
    Ok(())
}

/// One s_client run that sends a request and reads to the end (so TLS 1.3
/// tickets arrive), saving or resuming the session in `sess`.
async fn s_client_resume(
    openssl: &Path,
    stack: &Stack,
    addr: SocketAddr,
    sess: &Path,
    resume: bool,
) -> Result<String> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(openssl);
    cmd.args(["s_client", "-connect"])
        .arg(addr.to_string())
        .args([
            "-servername",
            "localhost",
            "-alpn",
            "http/1.1",
            "-ign_eof",
            "-CAfile",
        ])
        .arg(stack.ca())
        .arg(if resume { "-sess_in" } else { "-sess_out" })
        .arg(sess)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("starting openssl s_client")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin
        .write_all(b"GET /resume HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .context("s_client did not finish in 20 s")??;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        text.contains("HTTP/1.1 200"),
        "no HTTP answer over s_client:\n{text}"
    );
    Ok(text)
}

/// sslscan against a node listener: nothing below TLS 1.2 and only AEAD
/// ciphers with forward secrecy; openssl s_client -tls1_1 / -tls1 fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_protocol_below_tls12_and_no_weak_cipher() -> Result<()> {
    const T: &str = "no_protocol_below_tls12_and_no_weak_cipher";
    let _s = serial().await;
    let Some(sslscan) = gate::peer(T, "sslscan", "sslscan") else {
        return Ok(());
    };
    let Some(openssl) = gate::peer(T, "openssl", "openssl") else {
        return Ok(());
    };
    let stack = Stack::start()?;
    let node = stack.node(1);
    let (ok, out, err) = run(
        tokio::process::Command::new(&sslscan)
            .args([
                "--no-colour",
                "--no-heartbleed",
                "--no-compression",
                "--no-fallback",
                "--sni-name=localhost",
            ])
            .arg(node.to_string()),
        Duration::from_secs(120),
    )
    .await?;
    ensure!(ok, "sslscan failed: {err}\n{out}");
    let proto_state = |p: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(p))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
    };
    for p in ["SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"] {
        ensure!(
            proto_state(p).as_deref() == Some("disabled"),
            "sslscan: {p} is {:?}\n{out}",
            proto_state(p)
        );
    }
    ensure!(
        proto_state("TLSv1.2").as_deref() == Some("enabled"),
        "TLS 1.2 not enabled:\n{out}"
    );
    ensure!(
        proto_state("TLSv1.3").as_deref() == Some("enabled"),
        "TLS 1.3 not enabled:\n{out}"
    );
    let accepted: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("Preferred") || l.starts_with("Accepted"))
        .collect();
    ensure!(!accepted.is_empty(), "sslscan listed no cipher:\n{out}");
    for l in &accepted {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (proto, bits, cipher) = (
            f.get(1).copied(),
            f.get(2).copied(),
            f.get(4).copied().unwrap_or(""),
        );
        ensure!(
            matches!(proto, Some("TLSv1.2" | "TLSv1.3")),
            "cipher on {proto:?}: {l}"
        );
        ensure!(
            bits.and_then(|b| b.parse::<u32>().ok())
                .is_some_and(|b| b >= 128),
            "weak key: {l}"
        );
        let aead = cipher.contains("GCM") || cipher.contains("CHACHA20");
        let fs = proto == Some("TLSv1.3") || cipher.starts_with("ECDHE-");
        ensure!(
            aead && fs,
            "weak cipher (not AEAD with forward secrecy): {l}"
        );
    }
    eprintln!("sslscan accepted:\n{}", accepted.join("\n"));

    for flag in ["-tls1_1", "-tls1"] {
        let (ok, out, err) = run(
            tokio::process::Command::new(&openssl)
                .args(["s_client", "-connect"])
                .arg(node.to_string())
                .args([
                    flag,
                    "-cipher",
                    "DEFAULT@SECLEVEL=0",
                    "-servername",
                    "localhost",
                ]),
            Duration::from_secs(20),
        )
        .await?;
        // A failed handshake prints "Cipher is (NONE)" (or nothing at all).
        let got_cipher = out
            .lines()
            .any(|l| l.contains("Cipher is ") && !l.contains("(NONE)"));
        ensure!(
            !got_cipher,
            "s_client {flag} got a session (exit ok={ok}):\n{out}{err}"
        );
    }
    Ok(())
}

/// A Python grpcio client, with stubs generated from proto/ now by
/// grpc_tools.protoc, calls GetState and Status on control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_reads_state_and_status() -> Result<()> {
    const T: &str = "python_grpcio_client_reads_state_and_status";
    let _s = serial().await;
    let Some(python) = python_with_grpc().await else {
        gate::peer(
            T,
            "python3 with grpc and grpc_tools",
            "python3-grpcio python3-grpc-tools",
        );
        return Ok(());
    };
    let stack = Stack::start()?;
    let gen_dir = stack.dir.join("pygen");
    std::fs::create_dir_all(&gen_dir)?;
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let protos: Vec<PathBuf> = std::fs::read_dir(proto.join("tandem/control/v1"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    let (ok, out, err) = run(
        tokio::process::Command::new(&python)
            .args(["-m", "grpc_tools.protoc"])
            .arg(format!("-I{}", proto.display()))
            .arg(format!("--python_out={}", gen_dir.display()))
            .arg(format!("--grpc_python_out={}", gen_dir.display()))
            .args(&protos),
        Duration::from_secs(60),
    )
    .await?;
    ensure!(ok, "grpc_tools.protoc: {out}{err}");
    let script = gen_dir.join("client.py");
    std::fs::write(
        &script,
        r#"import json, sys
import grpc
from tandem.control.v1 import control_pb2, control_pb2_grpc, resources_pb2

target = sys.argv[1]
# The admin bearer token, when control runs with authentication.
md = [("authorization", "Bearer " + sys.argv[2])] if len(sys.argv) > 2 else None
with grpc.insecure_channel(target) as ch:
    grpc.channel_ready_future(ch).result(timeout=10)
    admin = control_pb2_grpc.AdminStub(ch)
    state = admin.GetState(control_pb2.GetStateRequest(), timeout=10, metadata=md)
    status = admin.Status(control_pb2.StatusRequest(), timeout=10, metadata=md)
    try:
        # A Maglev table size that is not prime: refused as invalid input.
        admin.Apply(control_pb2.ApplyRequest(changes=[control_pb2.Change(
            put_service=resources_pb2.Service(name="bad", address="127.0.0.1:1",
                                              table_size=100, node_pool="default"))]),
            timeout=10, metadata=md)
        bad = "accepted"
    except grpc.RpcError as e:
        bad = e.code().name + ": " + (e.details() or "")
print(json.dumps({
    "version": state.version,
    "services": [[s.name, s.address] for s in state.services],
    "nodes": sorted(n.id for n in state.nodes),
    "certificates": [c.name for c in state.certificates],
    "status_version": status.version,
    "subscribers": sorted([s.id, control_pb2.Tier.Name(s.tier), s.connected, s.acked_version]
                          for s in status.subscribers),
    "bad_apply": bad,
}))
"#,
    )?;
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(&script)
        .arg(format!("127.0.0.1:{}", stack.base))
        .args(stack.token("admin"))
        .env("PYTHONPATH", &gen_dir);
    let (ok, out, err) = run(&mut cmd, Duration::from_secs(60)).await?;
    ensure!(ok, "python client failed: {err}\n{out}");
    let j: serde_json::Value =
        serde_json::from_str(out.trim()).with_context(|| format!("python printed {out}"))?;
    eprintln!("python grpcio client: {j}");
    let version = j["version"].as_u64().context("version")?;
    ensure!(version > 0, "{j}");
    ensure!(j["status_version"].as_u64() == Some(version), "{j}");
    ensure!(
        j["nodes"] == serde_json::json!(["node-1", "node-2", "node-3"]),
        "{j}"
    );
    ensure!(
        j["services"][0][0] == "web" && j["services"][0][1] == stack.vip().to_string(),
        "{j}"
    );
    ensure!(j["certificates"] == serde_json::json!(["localhost"]), "{j}");
    let subs = j["subscribers"].as_array().context("subscribers")?;
    for id in ["director-1", "node-1", "node-2", "node-3"] {
        let s = subs
            .iter()
            .find(|s| s[0] == id)
            .with_context(|| format!("{id} not in Status: {j}"))?;
        ensure!(s[2] == true && s[3].as_u64() == Some(version), "{id}: {s}");
    }
    ensure!(
        subs.iter()
            .any(|s| s[0] == "director-1" && s[1] == "TIER_DIRECTOR"),
        "{j}"
    );
    ensure!(
        j["bad_apply"]
            .as_str()
            .is_some_and(|s| s.starts_with("INVALID_ARGUMENT")),
        "an invalid Apply got {}",
        j["bad_apply"]
    );
    Ok(())
}

/// A python3 that can import grpc and grpc_tools (Debian's, which may not
/// be the first python3 on the PATH).
async fn python_with_grpc() -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from("/usr/bin/python3")];
    candidates.extend(gate::which("python3"));
    for p in candidates {
        let ok = run(
            tokio::process::Command::new(&p).args(["-c", "import grpc, grpc_tools.protoc"]),
            Duration::from_secs(20),
        )
        .await
        .is_ok_and(|(ok, _, _)| ok);
        if ok {
            return Some(p);
        }
    }
    None
}

async fn http_ok(addr: SocketAddr, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
