//! `get`, `set` (with `--if-version`), `-o yaml`, YAML documents, key
//! fingerprints and mTLS, as a user of the built `tandemctl` sees them.

mod common;

use std::path::Path;

use common::{Control, Pki, TestResult, ctl_env, fails, ok, text};
use serde_json::Value;

fn lower(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_set_and_yaml_round_trip() -> TestResult {
    let dir = tempfile::tempdir()?;
    let control = Control::start(&dir.path().join("control")).await?;
    let cwd = dir.path();
    let c = control.url.as_str();

    ok(
        cwd,
        &[
            "--control",
            c,
            "node",
            "add",
            "n1",
            "--address",
            "127.0.0.1:8001",
            "--mac",
            "02:00:0a:00:00:01",
            "--tunnel-address",
            "10.9.0.1",
        ],
    )
    .await?;
    let n: Value = serde_json::from_str(
        &ok(cwd, &["--control", c, "-o", "json", "node", "get", "n1"]).await?,
    )?;
    assert_eq!(n["address"], "127.0.0.1:8001");
    assert_eq!(n["mac"], "02:00:0a:00:00:01");
    assert_eq!(n["tunnel_address"], "10.9.0.1");
    assert_eq!(n["weight"], 100);

    // set: only the named fields change, and the output says what changed.
    let out = ok(
        cwd,
        &[
            "--control",
            c,
            "node",
            "set",
            "n1",
            "--weight",
            "7",
            "--state",
            "draining",
        ],
    )
    .await?;
    assert!(out.contains("weight: 100 -> 7"), "{out}");
    assert!(out.contains("ACTIVE -> DRAINING"), "{out}");
    let y: Value = serde_norway::from_str(
        &ok(cwd, &["--control", c, "-o", "yaml", "node", "get", "n1"]).await?,
    )?;
    assert_eq!(y["weight"], 7);
    assert_eq!(lower(&y["state"]), "draining");
    assert_eq!(
        y["mac"], "02:00:0a:00:00:01",
        "set kept the fields it was not given"
    );
    // Table output of get: one row per field.
    let t = ok(cwd, &["--control", c, "node", "get", "n1"]).await?;
    assert!(
        t.lines()
            .any(|l| l.starts_with("weight") && l.trim_end().ends_with('7')),
        "{t}"
    );

    // Optimistic concurrency: a stale --if-version is refused, clearly.
    let err = fails(
        cwd,
        &[
            "--control",
            c,
            "node",
            "set",
            "n1",
            "--weight",
            "9",
            "--if-version",
            "1",
        ],
    )
    .await?;
    assert!(
        err.contains("conflict") && err.contains("--if-version 1"),
        "{err}"
    );
    let y: Value = serde_norway::from_str(
        &ok(cwd, &["--control", c, "-o", "yaml", "node", "get", "n1"]).await?,
    )?;
    assert_eq!(y["weight"], 7, "the refused set changed nothing");

    // The server's refusal, with its field path.
    let err = fails(
        cwd,
        &[
            "--control",
            c,
            "node",
            "set",
            "n1",
            "--mac",
            "zz:00:00:00:00:00",
        ],
    )
    .await?;
    assert!(
        err.contains("invalid argument") && err.contains("mac"),
        "{err}"
    );

    // Services: xdp forwarding on add and set.
    ok(
        cwd,
        &[
            "--control",
            c,
            "service",
            "add",
            "web",
            "--address",
            "10.0.0.10:80",
            "--xdp-forwarding",
            "gue",
        ],
    )
    .await?;
    let s: Value = serde_json::from_str(
        &ok(
            cwd,
            &["--control", c, "-o", "json", "service", "get", "web"],
        )
        .await?,
    )?;
    assert_eq!(lower(&s["xdp_forwarding"]), "gue");
    ok(
        cwd,
        &[
            "--control",
            c,
            "service",
            "set",
            "web",
            "--xdp-forwarding",
            "l2_dsr",
            "--table-size",
            "251",
        ],
    )
    .await?;
    let s: Value = serde_json::from_str(
        &ok(
            cwd,
            &["--control", c, "-o", "json", "service", "get", "web"],
        )
        .await?,
    )?;
    assert_eq!(s["table_size"], 251);
    assert_ne!(lower(&s["xdp_forwarding"]), "gue");

    // Clusters and routes.
    ok(
        cwd,
        &[
            "--control",
            c,
            "cluster",
            "add",
            "app",
            "--endpoint",
            "127.0.0.1:9001",
        ],
    )
    .await?;
    ok(
        cwd,
        &[
            "--control",
            c,
            "route",
            "add",
            "r",
            "--cluster",
            "app",
            "--path-prefix",
            "/api",
        ],
    )
    .await?;
    ok(
        cwd,
        &[
            "--control",
            c,
            "cluster",
            "set",
            "app",
            "--endpoint",
            "127.0.0.1:9002=3",
            "--lb",
            "least-request",
        ],
    )
    .await?;
    ok(
        cwd,
        &[
            "--control",
            c,
            "route",
            "set",
            "r",
            "--host",
            "api.example.com",
        ],
    )
    .await?;
    let cl: Value = serde_json::from_str(
        &ok(
            cwd,
            &["--control", c, "-o", "json", "cluster", "get", "app"],
        )
        .await?,
    )?;
    assert_eq!(cl["endpoints"][0]["address"], "127.0.0.1:9002");
    assert_eq!(cl["endpoints"][0]["weight"], 3);
    let r: Value = serde_json::from_str(
        &ok(cwd, &["--control", c, "-o", "json", "route", "get", "r"]).await?,
    )?;
    assert_eq!(r["host"], "api.example.com");
    assert_eq!(r["path_prefix"], "/api");

    // YAML export, remove, apply the YAML back: the user reads the same.
    let yaml = dir.path().join("state.yaml");
    ok(
        cwd,
        &[
            "--control",
            c,
            "state",
            "export",
            "--format",
            "yaml",
            "--out",
            yaml.to_str().unwrap_or_default(),
        ],
    )
    .await?;
    ok(cwd, &["--control", c, "route", "remove", "r"]).await?;
    ok(cwd, &["--control", c, "node", "remove", "n1"]).await?;
    let dry = ok(
        cwd,
        &[
            "--control",
            c,
            "apply",
            "-f",
            yaml.to_str().unwrap_or_default(),
            "--dry-run",
        ],
    )
    .await?;
    assert!(dry.contains("n1") && dry.contains("dry run"), "{dry}");
    ok(
        cwd,
        &[
            "--control",
            c,
            "apply",
            "-f",
            yaml.to_str().unwrap_or_default(),
        ],
    )
    .await?;
    let y: Value = serde_norway::from_str(
        &ok(cwd, &["--control", c, "-o", "yaml", "node", "get", "n1"]).await?,
    )?;
    assert_eq!(y["weight"], 7);
    assert_eq!(y["tunnel_address"], "10.9.0.1");
    // A YAML file without the extension is recognised by its content.
    let plain = dir.path().join("desired");
    std::fs::write(&plain, std::fs::read_to_string(&yaml)?)?;
    let again = ok(
        cwd,
        &[
            "--control",
            c,
            "apply",
            "-f",
            plain.to_str().unwrap_or_default(),
        ],
    )
    .await?;
    assert!(again.contains("no changes"), "{again}");

    control.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_get_shows_fingerprint_never_the_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    let control = Control::start(&dir.path().join("control")).await?;
    let cwd = dir.path();
    let c = control.url.as_str();
    let ck = rcgen::generate_simple_self_signed(vec!["api.example.com".to_string()])?;
    let key_pem = ck.signing_key.serialize_pem();
    std::fs::write(cwd.join("c.pem"), ck.cert.pem())?;
    std::fs::write(cwd.join("k.pem"), &key_pem)?;
    ok(
        cwd,
        &[
            "--control",
            c,
            "cert",
            "add",
            "api",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--sni",
            "api.example.com",
        ],
    )
    .await?;
    let want = control_api::config::key_fingerprint(&key_pem);

    let got = ok(cwd, &["--control", c, "-o", "json", "cert", "get", "api"]).await?;
    assert!(!got.contains("PRIVATE KEY"), "{got}");
    let v: Value = serde_json::from_str(&got)?;
    assert_eq!(v["private_key_fingerprint"], want.as_str());
    let list = ok(cwd, &["--control", c, "cert", "list"]).await?;
    assert!(list.contains(&want), "{list}");
    assert!(!list.contains("PRIVATE KEY"));

    // set without a new key keeps the key control has.
    ok(
        cwd,
        &[
            "--control",
            c,
            "cert",
            "set",
            "api",
            "--sni",
            "api.example.com",
            "--sni",
            "www.example.com",
            "--default",
            "true",
        ],
    )
    .await?;
    let v: Value = serde_json::from_str(
        &ok(cwd, &["--control", c, "-o", "json", "cert", "get", "api"]).await?,
    )?;
    assert_eq!(v["private_key_fingerprint"], want.as_str());
    assert_eq!(v["default"], true);
    assert_eq!(v["sni_names"][1], "www.example.com");
    control.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_admin_and_subscriber_certificates() -> TestResult {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new()?;
    let control = Control::start_mtls(&dir.path().join("control"), &pki).await?;
    let cwd = dir.path();
    let c = control.url.as_str();
    let ca = cwd.join("ca.pem");
    std::fs::write(&ca, pki.ca_pem())?;
    let (admin_cert, admin_key) = pki.client_files(cwd, "admin", "spiffe://tandem/admin/ops")?;
    let (sub_cert, sub_key) = pki.client_files(cwd, "sub", "spiffe://tandem/subscriber/node-1")?;
    let p = |p: &Path| p.to_str().unwrap_or_default().to_string();

    // Flags.
    let out = ok(
        cwd,
        &[
            "--control",
            c,
            "--ca",
            &p(&ca),
            "--client-cert",
            &p(&admin_cert),
            "--client-key",
            &p(&admin_key),
            "node",
            "add",
            "n1",
            "--address",
            "127.0.0.1:8001",
        ],
    )
    .await?;
    assert!(out.contains("added"), "{out}");
    // Environment.
    let out = ctl_env(
        cwd,
        &[
            ("TANDEM_CONTROL", c),
            ("TANDEM_CA", &p(&ca)),
            ("TANDEM_CERT", &p(&sub_cert)),
            ("TANDEM_KEY", &p(&sub_key)),
        ],
        &["node", "add", "n2", "--address", "127.0.0.1:8002"],
    )
    .await?;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("permission denied"), "{err}");
    // Config file, relative paths.
    std::fs::create_dir_all(cwd.join(".tandem"))?;
    std::fs::write(
        cwd.join(".tandem/tandemctl.toml"),
        format!(
            "control = \"{c}\"\nca = \"../ca.pem\"\ncert = \"../admin.pem\"\nkey = \"../admin.key\"\n"
        ),
    )?;
    let list = ok(cwd, &["node", "list"]).await?;
    assert!(list.contains("n1") && !list.contains("n2"), "{list}");
    std::fs::remove_file(cwd.join(".tandem/tandemctl.toml"))?;

    // No client certificate: refused.
    let err = fails(cwd, &["--control", c, "--ca", &p(&ca), "node", "list"]).await?;
    assert!(
        err.contains("failed") && err.contains("client certificate"),
        "{err}"
    );
    // https without a CA: a clear local error.
    let err = fails(cwd, &["--control", c, "node", "list"]).await?;
    assert!(err.contains("no CA"), "{err}");
    control.stop().await
}
