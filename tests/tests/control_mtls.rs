//! The real binaries over mTLS: `tandem control --tls-cert --tls-key
//! --client-ca`, a director and a node with `--control-ca --control-cert
//! --control-key` (each certificate naming its subscriber id), and
//! `tandemctl --ca --client-cert --client-key`. Both tiers converge; a node
//! presenting another id's certificate is refused and says so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use tandem_tests::{bin, eventually, free_port_block};

/// Kills and reaps a child process on drop (also when the test fails).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Result<Pki> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(p, KeyPair::generate()?)?;
        std::fs::write(dir.join("ca.pem"), issuer.pem())?;
        Ok(Pki {
            issuer,
            dir: dir.to_path_buf(),
        })
    }

    fn ca(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }

    /// Writes NAME.pem and NAME.key; returns their paths as strings.
    fn leaf(&self, name: &str, san: SanType) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.subject_alt_names.push(san);
        let cert = p.signed_by(&key, &self.issuer)?;
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem())?;
        std::fs::write(&k, key.serialize_pem())?;
        Ok((c.display().to_string(), k.display().to_string()))
    }

    fn client(&self, name: &str, uri: &str) -> Result<(String, String)> {
        self.leaf(name, SanType::URI(uri.try_into()?))
    }
}

fn spawn(args: &[&str], log: &Path) -> Result<Proc> {
    let log = std::fs::File::create(log)?;
    let child = Command::new(bin("tandem"))
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("TANDEM_CONTROL")
        .env_remove("TANDEM_TOKEN_FILE")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting tandem")?;
    Ok(Proc(child))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn director_and_node_converge_over_mtls() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let pki = Pki::new(d)?;
    let (server_cert, server_key) =
        pki.leaf("control", SanType::IpAddress([127, 0, 0, 1].into()))?;
    let (admin_cert, admin_key) = pki.client("ops", "spiffe://tandem/admin/ops")?;
    let (node_cert, node_key) = pki.client("node-1", "spiffe://tandem/subscriber/node-1")?;
    let (dir_cert, dir_key) = pki.client("director-1", "spiffe://tandem/subscriber/director-1")?;

    let base = free_port_block(4);
    let control_addr = format!("127.0.0.1:{base}");
    let node_addr = format!("127.0.0.1:{}", base + 1);
    let vip = format!("127.0.0.1:{}", base + 2);
    let url = format!("https://{control_addr}");
    let data = d.join("control-data").display().to_string();
    let _control = spawn(
        &[
            "control",
            "--listen",
            &control_addr,
            "--data-dir",
            &data,
            "--tls-cert",
            &server_cert,
            "--tls-key",
            &server_key,
            "--client-ca",
            &pki.ca(),
        ],
        &d.join("control.log"),
    )?;

    let ca = pki.ca();
    let ctl = |args: &[&str]| -> Result<String> {
        let mut all = vec![
            "--control",
            &url,
            "--ca",
            &ca,
            "--client-cert",
            &admin_cert,
            "--client-key",
            &admin_key,
        ];
        all.extend_from_slice(args);
        tandem_tests::tandemctl(d, &all)
    };
    eventually(
        "control answering over mTLS",
        Duration::from_secs(20),
        || async { ctl(&["status"]).ok() },
    )
    .await?;
    ctl(&["node", "add", "node-1", "--address", &node_addr])?;
    ctl(&["service", "add", "web", "--address", &vip])?;

    let _node = spawn(
        &[
            "node",
            "--id",
            "node-1",
            "--listen",
            &node_addr,
            "--control",
            &url,
            "--control-ca",
            &ca,
            "--control-cert",
            &node_cert,
            "--control-key",
            &node_key,
        ],
        &d.join("node.log"),
    )?;
    let _director = spawn(
        &[
            "director",
            "--id",
            "director-1",
            "--control",
            &url,
            "--control-ca",
            &ca,
            "--control-cert",
            &dir_cert,
            "--control-key",
            &dir_key,
        ],
        &d.join("director.log"),
    )?;
    // A node that shows node-1's certificate but says it is node-2.
    let impostor_log = d.join("impostor.log");
    let _impostor = spawn(
        &[
            "node",
            "--id",
            "node-2",
            "--listen",
            &format!("127.0.0.1:{}", base + 3),
            "--control",
            &url,
            "--control-ca",
            &ca,
            "--control-cert",
            &node_cert,
            "--control-key",
            &node_key,
        ],
        &impostor_log,
    )?;

    let status = eventually(
        "node-1 and director-1 in sync",
        Duration::from_secs(30),
        || async {
            let s: serde_json::Value =
                serde_json::from_str(&ctl(&["-o", "json", "status"]).ok()?).ok()?;
            let v = s["version"].as_u64()?;
            let node_ok = s["nodes"].as_array()?.iter().any(|n| {
                n["id"] == "node-1"
                    && n["connected"] == true
                    && n["applied_version"].as_u64() == Some(v)
            });
            let dir_ok = s["directors"].as_array()?.iter().any(|n| {
                n["id"] == "director-1"
                    && n["connected"] == true
                    && n["applied_version"].as_u64() == Some(v)
            });
            (node_ok && dir_ok).then_some(s)
        },
    )
    .await?;

    // The impostor never got in: control refused it for its id, and it says so.
    let refused = eventually(
        "the impostor's refusal in its log",
        Duration::from_secs(20),
        || async {
            let log = std::fs::read_to_string(&impostor_log).ok()?;
            log.contains("may only watch as").then_some(())
        },
    )
    .await;
    ensure!(
        refused.is_ok(),
        "impostor log: {}",
        std::fs::read_to_string(&impostor_log).unwrap_or_default()
    );
    let impostor_in = status["directors"]
        .as_array()
        .into_iter()
        .chain(status["nodes"].as_array())
        .flatten()
        .any(|s| s["id"] == "node-2" && s["connected"] == true);
    ensure!(
        !impostor_in,
        "node-2 connected with node-1's certificate: {status}"
    );

    // A subscriber certificate cannot change the state.
    let as_node = tandem_tests::tandemctl(
        d,
        &[
            "--control",
            &url,
            "--ca",
            &ca,
            "--client-cert",
            &node_cert,
            "--client-key",
            &node_key,
            "node",
            "drain",
            "node-1",
        ],
    );
    let err = as_node.err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(err.contains("permission denied"), "{err}");
    Ok(())
}
