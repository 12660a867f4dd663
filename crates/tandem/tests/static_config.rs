//! Both tiers run from static TOML files with no control service, as a user
//! who wants only an L4 balancer or only an L7 proxy would run them: a
//! director in front of a node in front of the demo app, bytes end to end,
//! and a SIGHUP reload of the node's file.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

fn spawn(args: &[&str]) -> Kill {
    Kill(
        Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tandem"),
    )
}

/// A plain HTTP/1.1 GET; returns the response text.
fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: static.test\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn eventually(addr: SocketAddr, path: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = get(addr, path)
            && r.contains(want)
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no answer containing {want:?} from {addr}{path}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
}

#[test]
fn director_and_node_run_from_static_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, app2) = (free_addr(), free_addr());
    let (node_tls, node_plain, vip) = (free_addr(), free_addr(), free_addr());
    let _app = spawn(&["demo-app", "--name", "app-a", "--listen", &app.to_string()]);
    let _app2 = spawn(&["demo-app", "--name", "app-b", "--listen", &app2.to_string()]);

    // A certificate, so the node is ready; routes go to app-a.
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    write(&dir.path().join("cert.pem"), &key.cert.pem());
    write(
        &dir.path().join("key.pem"),
        &key.signing_key.serialize_pem(),
    );
    let node_cfg = dir.path().join("node.toml");
    let node_doc = |endpoint: SocketAddr| {
        format!(
            r#"
[[clusters]]
name = "app"
lb_policy = "round_robin"
endpoints = [{{ address = "{endpoint}", weight = 1 }}]

[[routes]]
name = "all"
cluster = "app"

[[certificates]]
name = "local"
sni_names = ["localhost"]
cert_file = "cert.pem"
key_file = "key.pem"
default = true
"#
        )
    };
    write(&node_cfg, &node_doc(app));
    let node = spawn(&[
        "node",
        "--id",
        "node-static",
        "--config",
        node_cfg.to_str().expect("utf8"),
        "--listen",
        &node_tls.to_string(),
        "--plain-listen",
        &node_plain.to_string(),
    ]);

    // The director's file names the node's plain listener as its one node.
    let dir_cfg = dir.path().join("director.toml");
    write(
        &dir_cfg,
        &format!(
            r#"
[[services]]
name = "web"
address = "{vip}"
node_pool = "default"

[[nodes]]
id = "node-static"
address = "{node_plain}"
weight = 100
state = "ACTIVE"
"#
        ),
    );
    let _director = spawn(&[
        "director",
        "--id",
        "d-static",
        "--config",
        dir_cfg.to_str().expect("utf8"),
    ]);

    // Client -> director (PROXY v2) -> node (plain HTTP) -> app: the app saw
    // the client's address, in X-Forwarded-For, as http.
    let r = eventually(vip, "/hello", "app-a");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("x-tandem-node: node-static"), "{r}");
    assert!(r.contains(r#""client":"127.0.0.1""#), "{r}");
    assert!(r.contains(r#""x_forwarded_proto":"http""#), "{r}");

    // SIGHUP reloads the node's file: the route now goes to app-b.
    write(&node_cfg, &node_doc(app2));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node.0.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    eventually(vip, "/hello", "app-b");

    // A broken file is refused; the running config stays.
    write(&node_cfg, "this is [not toml");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node.0.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    std::thread::sleep(Duration::from_millis(300));
    eventually(vip, "/hello", "app-b");
}

#[test]
fn a_bad_static_file_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bad.toml");
    write(
        &cfg,
        "[[services]]\nname = \"web\"\naddress = \"not-an-address\"\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["director", "--config", cfg.to_str().expect("utf8")])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not-an-address"),
        "error should name the bad value: {err}"
    );
}
