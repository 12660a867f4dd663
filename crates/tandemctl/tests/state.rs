//! `tandemctl` with credentials: apply -f (diff, dry run, prune), audit,
//! state export and import, against an in-process control over gRPC.

use std::path::Path;

mod common;

use common::{Control, TestResult, ctl_env, text};
use control::{Auth, Role, ServeOptions};

const ADMIN: &str = "admin-token-0123456789abcdef";
const SUB: &str = "subscriber-token-0123456789ab";

async fn start_control(data_dir: &Path) -> Result<Control, Box<dyn std::error::Error>> {
    let options = ServeOptions {
        auth: Auth::disabled()
            .with_token(Role::Admin, "ops", ADMIN)
            .with_token(Role::Subscriber, "fleet", SUB),
        ..ServeOptions::default()
    };
    Control::start_with(data_dir, options).await
}

async fn ctl(
    cwd: &Path,
    envs: &[(&str, &str)],
    args: &[&str],
) -> Result<std::process::Output, Box<dyn std::error::Error>> {
    ctl_env(cwd, envs, args).await
}

const DOC: &str = r#"
[[services]]
name = "web"
address = "127.0.0.1:18443"
node_pool = "default"
hash = "source_ip"

[[nodes]]
id = "node-1"
address = "127.0.0.1:19410"
weight = 100
pool = "default"

[[nodes]]
id = "node-2"
address = "127.0.0.1:19411"
weight = 100
pool = "default"
state = "DRAINING"

[[clusters]]
name = "app"
lb_policy = "round_robin"
endpoints = [{ address = "127.0.0.1:18080", weight = 1 }]

[[routes]]
name = "all"
cluster = "app"

[[certificates]]
name = "site"
sni_names = ["example.com"]
cert_file = "site.pem"
key_file = "site.key"
default = true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_apply_audit_export_import() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cwd = dir.path();
    let control = start_control(&cwd.join("data")).await?;
    let c = control.url.as_str();
    let ck = rcgen::generate_simple_self_signed(vec!["example.com".to_string()])?;
    std::fs::write(cwd.join("site.pem"), ck.cert.pem())?;
    std::fs::write(cwd.join("site.key"), ck.signing_key.serialize_pem())?;
    std::fs::write(cwd.join("desired.toml"), DOC)?;
    std::fs::write(cwd.join("admin.token"), format!("{ADMIN}\n"))?;
    std::fs::write(cwd.join("sub.token"), format!("# fleet\nfleet {SUB}\n"))?;
    std::fs::write(cwd.join("wrong.token"), "wrong-token-0123456789abcdef\n")?;

    // Missing, wrong and under-privileged credentials are refused, clearly.
    let out = ctl(cwd, &[], &["--control", c, "status"]).await?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unauthenticated"),
        "{}",
        text(&out.stderr)
    );
    let out = ctl(
        cwd,
        &[],
        &["--control", c, "--token-file", "wrong.token", "status"],
    )
    .await?;
    assert!(
        text(&out.stderr).contains("unauthenticated"),
        "{}",
        text(&out.stderr)
    );
    let out = ctl(
        cwd,
        &[("TANDEM_TOKEN_FILE", "sub.token")],
        &["--control", c, "status"],
    )
    .await?;
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        text(&out.stderr)
    );

    // The admin token from .tandem/tandemctl.toml.
    std::fs::create_dir_all(cwd.join(".tandem"))?;
    std::fs::write(
        cwd.join(".tandem/tandemctl.toml"),
        format!("control = \"{c}\"\ntoken_file = \"../admin.token\"\n"),
    )?;

    // Dry run: the diff, nothing applied.
    let out = ctl(cwd, &[], &["apply", "-f", "desired.toml", "--dry-run"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    for line in [
        "+ service web",
        "+ node node-1",
        "+ node node-2",
        "+ cluster app",
        "+ route all",
        "+ certificate site",
        "dry run: nothing applied (version 0)",
    ] {
        assert!(shown.contains(line), "missing {line:?} in {shown}");
    }
    // Apply: one batch, one version.
    let out = ctl(cwd, &[], &["apply", "-f", "desired.toml"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("applied (version 1)"),
        "{}",
        text(&out.stdout)
    );
    // Again: nothing to do.
    let out = ctl(cwd, &[], &["apply", "-f", "desired.toml"]).await?;
    assert!(
        text(&out.stdout).contains("no changes (version 1)"),
        "{}",
        text(&out.stdout)
    );

    // A changed document: a field diff; without --prune nothing is removed.
    let changed = DOC
        .replace(
            "weight = 100\npool = \"default\"\nstate = \"DRAINING\"",
            "weight = 50\npool = \"default\"\nstate = \"DRAINING\"",
        )
        .replace("[[routes]]\nname = \"all\"\ncluster = \"app\"\n", "");
    std::fs::write(cwd.join("changed.toml"), &changed)?;
    let out = ctl(cwd, &[], &["apply", "-f", "changed.toml"]).await?;
    let shown = text(&out.stdout);
    assert!(
        shown.contains("~ node node-2: weight: 100 -> 50"),
        "{shown}"
    );
    assert!(!shown.contains("- route all"), "{shown}");
    let out = ctl(cwd, &[], &["apply", "-f", "changed.toml", "--prune"]).await?;
    let shown = text(&out.stdout);
    assert!(
        shown.contains("- route all") && shown.contains("applied (version 3)"),
        "{shown}"
    );

    // Audit, newest first, with who.
    let out = ctl(cwd, &[], &["-o", "json", "audit"]).await?;
    let audit: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(audit[0]["version"], 3);
    assert_eq!(audit[0]["who"], "ops");
    assert_eq!(audit[0]["changes"][0], "delete route all");
    assert_eq!(audit[2]["changes"].as_array().map(Vec::len), Some(6));

    // Export (keys included) in both formats, then wreck the state and
    // import the backup: back to the same content.
    let out = ctl(cwd, &[], &["state", "export", "--out", "backup.toml"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let backup = std::fs::read_to_string(cwd.join("backup.toml"))?;
    assert!(
        backup.contains("PRIVATE KEY") && backup.contains("state = \"DRAINING\""),
        "{backup}"
    );
    let out = ctl(
        cwd,
        &[],
        &["state", "export", "--format", "pb", "--out", "backup.pb"],
    )
    .await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = control_api::config::load_file(&cwd.join("backup.toml"))?;

    std::fs::write(
        cwd.join("other.toml"),
        "[[nodes]]\nid = \"node-9\"\naddress = \"127.0.0.1:19999\"\nweight = 1\npool = \"default\"\n",
    )?;
    let out = ctl(cwd, &[], &["state", "import", "other.toml"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = ctl(cwd, &[], &["-o", "json", "node", "list"]).await?;
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(nodes.as_array().map(Vec::len), Some(1));

    for file in ["backup.pb", "backup.toml"] {
        let out = ctl(cwd, &[], &["state", "import", file]).await?;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = ctl(cwd, &[], &["state", "export", "--out", "again.toml"]).await?;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let mut after = control_api::config::load_file(&cwd.join("again.toml"))?;
        after.version = before.version;
        assert_eq!(after, before, "import of {file}");
    }
    control.stop().await
}
