//! The demo app as a user reaches it: over a socket, with and without
//! X-Forwarded-For, and behind a PROXY v2 header.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn request(addr: SocketAddr, prefix: &[u8], headers: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("demo app not reachable: {e}"),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(prefix).expect("write");
    write!(
        s,
        "GET /some/path HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n{headers}\r\n"
    )
    .expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn body(resp: &str) -> serde_json::Value {
    let (_, b) = resp.split_once("\r\n\r\n").expect("http response");
    serde_json::from_str(b.trim()).expect("json body")
}

#[test]
fn demo_app_reports_the_client_it_saw() {
    let plain: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let pp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "demo-app",
            "--name",
            "app-7",
            "--listen",
            &plain.to_string(),
            "--proxy-listen",
            &pp.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start demo app");
    let _guard = Kill(child);

    let j = body(&request(plain, b"", ""));
    assert_eq!(j["instance"], "app-7");
    assert_eq!(j["client"], "127.0.0.1");
    assert_eq!(j["client_source"], "socket");
    assert_eq!(j["host"], "example.test");
    assert_eq!(j["path"], "/some/path");

    let j = body(&request(
        plain,
        b"",
        "X-Forwarded-For: 198.51.100.1, 203.0.113.5\r\n",
    ));
    assert_eq!(j["client"], "203.0.113.5");
    assert_eq!(j["client_source"], "x-forwarded-for");

    let header = proxy_protocol::Header::proxy("203.0.113.77:41000".parse().expect("a"), pp)
        .with_tlv(proxy_protocol::tlv::AUTHORITY, b"shop.example".to_vec())
        .to_bytes()
        .expect("encode");
    let j = body(&request(pp, &header, "X-Forwarded-For: 10.9.9.9\r\n"));
    assert_eq!(
        j["client"], "203.0.113.77",
        "PROXY header wins over XFF: {j}"
    );
    assert_eq!(j["client_source"], "proxy-protocol");
    assert_eq!(j["proxy_protocol"]["authority"], "shop.example");

    // No PROXY header where one is required: the connection is refused.
    let resp = request(pp, b"", "");
    assert!(
        resp.is_empty(),
        "expected a closed connection, got {resp:?}"
    );
}
