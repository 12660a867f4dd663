//! Helpers for Tandem's workspace-level tests: start the real binaries, talk
//! to them with real clients, clean up whatever happens.
#![forbid(unsafe_code)]

pub mod gate;
pub mod l2lab;
pub mod load;
pub mod netns;
pub mod pki;
pub mod xdplab;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

/// Path of a workspace binary (`tandem`, `tandemctl`), next to the test
/// executables. The first call builds both with the cargo that runs the
/// tests (a no-op when `cargo test --workspace` already did), so a test
/// never runs a stale binary.
pub fn bin(name: &str) -> PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "tandem", "-p", "tandemctl"]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(
            status.success(),
            "cargo build -p tandem -p tandemctl failed"
        );
    });
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join(name)
}

/// A block of `n` consecutive free loopback ports (checked by binding them).
pub fn free_port_block(n: u16) -> u16 {
    let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64 ^ rand_seed();
    for attempt in 0..200u64 {
        let base = 20000
            + ((seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(attempt * 7919))
                % 30000) as u16;
        let held: Vec<_> = (0..n)
            .map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == n as usize {
            return base;
        }
    }
    panic!("no block of {n} free ports found");
}

fn rand_seed() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A running `tandem up`, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Up {
    pub child: Child,
    pub dir: PathBuf,
    pub vip: SocketAddr,
    pub base_port: u16,
    pub output: Arc<Mutex<Vec<String>>>,
}

impl Up {
    /// Starts `tandem up` in `dir` and waits until it prints that it is up.
    pub fn start(dir: &Path, vip: SocketAddr, base_port: u16, extra: &[&str]) -> Result<Up> {
        let mut child = Command::new(bin("tandem"))
            .current_dir(dir)
            .args([
                "up",
                "--vip",
                &vip.to_string(),
                "--base-port",
                &base_port.to_string(),
                "--drain-timeout-secs",
                "5",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting tandem up")?;
        let stdout = child.stdout.take().context("stdout")?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    eprintln!("[tandem up] {line}");
                    if line.starts_with("Tandem is up") {
                        let _ = tx.send(());
                    }
                    output.lock().expect("lock").push(line);
                }
            });
        }
        let mut up = Up {
            child,
            dir: dir.to_path_buf(),
            vip,
            base_port,
            output,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
                return Ok(up);
            }
            if let Ok(Some(status)) = up.child.try_wait() {
                bail!(
                    "tandem up exited early with {status}; logs in {}",
                    dir.join(".tandem/logs").display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "tandem up did not come up in 120 s; logs in {}",
                    dir.join(".tandem/logs").display()
                );
            }
        }
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join(".tandem/ca.pem")
    }

    /// PIDs of the processes `up` started (its direct children).
    pub fn children(&self) -> Vec<(i32, String)> {
        children_of(self.child.id() as i32)
    }

    /// Stops `up` as Ctrl-C would and waits for it; returns its exit status.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("tandem up did not stop within 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let kids = self.children();
            let _ = self.stop();
            // Whatever is left of our own children: kill them by PID.
            for (pid, _) in kids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Direct children of `parent`, with their command lines.
pub fn children_of(parent: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Field 4 (ppid) follows the ")" that ends the command name.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(parent) {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .replace('\0', " ")
                        .trim()
                        .to_string()
                })
                .unwrap_or_default();
            out.push((pid, cmd));
        }
    }
    out
}

/// A TLS client config trusting the CA in `ca_pem`, offering `alpn`.
pub fn tls_config(ca_pem: &Path, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).context("reading CA")? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// An HTTP answer as a user sees it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub version: hyper::Version,
    pub node: Option<String>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// One client connection through TLS, kept open across requests.
pub struct Conn {
    sender: Sender,
    pub local: SocketAddr,
    pub alpn: Option<Vec<u8>>,
}

impl Conn {
    /// Connects to `addr` with SNI `localhost`; h2 if `h2`, else http/1.1.
    pub async fn open(addr: SocketAddr, ca_pem: &Path, h2: bool) -> Result<Conn> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        Conn::handshake(tcp, ca_pem, h2).await
    }

    /// TLS (SNI `localhost`) and HTTP on a TCP connection the caller made
    /// (a chosen source port, a socket mark, a namespace).
    pub async fn handshake(tcp: tokio::net::TcpStream, ca_pem: &Path, h2: bool) -> Result<Conn> {
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let connector = tokio_rustls::TlsConnector::from(tls_config(ca_pem, alpn)?);
        let local = tcp.local_addr()?;
        let name = ServerName::try_from("localhost")?;
        let tls = connector
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        let negotiated = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        let io = TokioIo::new(tls);
        let sender = if negotiated.as_deref() == Some(b"h2") {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Sender::H1(s)
        };
        Ok(Conn {
            sender,
            local,
            alpn: negotiated,
        })
    }

    pub async fn get(&mut self, path: &str) -> Result<Answer> {
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                let req = Request::get(path)
                    .header("host", "localhost")
                    .body(Empty::new())?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                let req = Request::get(format!("https://localhost{path}")).body(Empty::new())?;
                s.send_request(req).await?
            }
        };
        let status = resp.status().as_u16();
        let version = resp.version();
        let node = resp
            .headers()
            .get("x-tandem-node")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            version,
            node,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// One request on a new connection.
pub async fn get_once(addr: SocketAddr, ca_pem: &Path, h2: bool, path: &str) -> Result<Answer> {
    Conn::open(addr, ca_pem, h2).await?.get(path).await
}

/// Runs tandemctl in `dir`; returns stdout, or an error with stderr.
pub fn tandemctl(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin("tandemctl"))
        .current_dir(dir)
        .args(args)
        .output()
        .context("running tandemctl")?;
    if !out.status.success() {
        return Err(anyhow!(
            "tandemctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `f` until it returns Some, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
