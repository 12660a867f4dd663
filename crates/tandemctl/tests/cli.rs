//! Runs the built `tandemctl` against an in-process control service.

mod common;

use common::{Control, TestResult, ctl, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_drain_and_status_json() -> TestResult {
    let dir = tempfile::tempdir()?;
    let control = Control::start(&dir.path().join("control")).await?;
    let cwd = dir.path();
    let c = control.url.as_str();

    let out = ctl(
        cwd,
        &[
            "--control",
            c,
            "node",
            "add",
            "node-1",
            "--address",
            "127.0.0.1:9401",
            "--admin-address",
            "127.0.0.1:9481",
        ],
    )
    .await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "node-1: added (version 1)\n");

    let out = ctl(cwd, &["--control", c, "node", "drain", "node-1"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "node-1: ACTIVE -> DRAINING (version 2)\n"
    );

    let out = ctl(cwd, &["--control", c, "node", "weight", "node-1", "50"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "node-1: weight 100 -> 50 (version 3)\n");

    let out = ctl(cwd, &["--control", c, "status", "-o", "json"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["version"], 3);
    assert_eq!(v["nodes"][0]["id"], "node-1");
    assert_eq!(v["nodes"][0]["address"], "127.0.0.1:9401");
    assert_eq!(v["nodes"][0]["admin_address"], "127.0.0.1:9481");
    assert_eq!(v["nodes"][0]["state"], "DRAINING");
    assert_eq!(v["nodes"][0]["weight"], 50);
    assert_eq!(v["nodes"][0]["pool"], "default");
    assert_eq!(v["nodes"][0]["connected"], false);
    assert_eq!(v["nodes"][0]["applied_version"], 0);
    assert_eq!(v["directors"], serde_json::json!([]));

    // The table form works too.
    let out = ctl(cwd, &["--control", c, "status"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(t.contains("version 3"), "{t}");
    assert!(
        t.lines()
            .any(|l| l.starts_with("node-1") && l.contains("DRAINING")),
        "{t}"
    );

    let out = ctl(cwd, &["--control", c, "node", "remove", "node-1"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "node-1: removed (version 4)\n");

    control.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_clear_and_exit_1() -> TestResult {
    let dir = tempfile::tempdir()?;
    let control = Control::start(&dir.path().join("control")).await?;
    let cwd = dir.path();
    let url = control.url.clone();
    let c = url.as_str();

    let out = ctl(
        cwd,
        &[
            "--control",
            c,
            "node",
            "add",
            "node-9",
            "--address",
            "127.0.0.1",
        ],
    )
    .await?;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: invalid argument: nodes[\"node-9\"].address: \"127.0.0.1\" is not ip:port\n"
    );

    let out = ctl(cwd, &["--control", c, "node", "drain", "ghost"]).await?;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "error: not found: no node \"ghost\"\n");

    // Found through .tandem/tandemctl.toml in the current directory.
    std::fs::create_dir_all(cwd.join(".tandem"))?;
    std::fs::write(
        cwd.join(".tandem/tandemctl.toml"),
        format!("control = \"{c}\"\n"),
    )?;
    let out = ctl(cwd, &["node", "list", "-o", "json"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout)?,
        serde_json::json!([])
    );

    control.stop().await?;

    // Nothing listens there any more.
    let out = ctl(cwd, &["--control", c, "status"]).await?;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!("error: cannot reach control at {c}: connection refused\n")
    );
    Ok(())
}

/// `tandemctl status | head -0`: the reader is gone before anything is
/// written; tandemctl ends quietly (exit 0, nothing on stderr), as other
/// command-line tools do, instead of panicking on the broken pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_stdout_ends_quietly() -> TestResult {
    let dir = tempfile::tempdir()?;
    let control = Control::start(&dir.path().join("control")).await?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandemctl"))
        .args(["--control", control.url.as_str(), "status"])
        .current_dir(dir.path())
        .env_remove("TANDEM_CONTROL")
        .env_remove("TANDEM_TOKEN_FILE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    drop(child.stdout.take());
    let out = child.wait_with_output().await?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    control.stop().await?;
    Ok(())
}
