//! Imperative add/remove of routes, clusters, services and certificates,
//! with the built `tandemctl` against an in-process control service.

mod common;

use common::{Control, TestResult, fails, ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_remove_routes_clusters_services_and_certs() -> TestResult {
    let dir = tempfile::tempdir()?;
    let control = Control::start(&dir.path().join("control")).await?;
    let cwd = dir.path();
    let c = control.url.as_str();

    let out = ok(
        cwd,
        &[
            "--control",
            c,
            "cluster",
            "add",
            "app",
            "--endpoint",
            "127.0.0.1:8080",
            "--endpoint",
            "127.0.0.1:8081=3",
            "--proxy-protocol",
            "v2",
        ],
    )
    .await?;
    assert_eq!(out, "cluster app: added (version 1)\n");
    let err = fails(
        cwd,
        &[
            "--control",
            c,
            "cluster",
            "add",
            "app",
            "--endpoint",
            "127.0.0.1:8080",
        ],
    )
    .await?;
    assert!(err.contains("already exists"), "{err}");
    let err = fails(
        cwd,
        &[
            "--control",
            c,
            "cluster",
            "add",
            "bad",
            "--endpoint",
            "nowhere",
        ],
    )
    .await?;
    assert!(
        err.contains("nowhere"),
        "the server names the bad address: {err}"
    );

    let err = fails(
        cwd,
        &["--control", c, "route", "add", "r", "--cluster", "missing"],
    )
    .await?;
    assert!(
        err.contains("missing"),
        "a route to a missing cluster is refused: {err}"
    );
    ok(
        cwd,
        &[
            "--control",
            c,
            "route",
            "add",
            "api",
            "--cluster",
            "app",
            "--host",
            "api.example.com",
            "--path-prefix",
            "/v1",
        ],
    )
    .await?;
    ok(
        cwd,
        &[
            "--control",
            c,
            "service",
            "add",
            "web",
            "--address",
            "127.0.0.1:8443",
            "--hash",
            "source-ip",
        ],
    )
    .await?;

    let key = rcgen::generate_simple_self_signed(vec!["api.example.com".to_string()])?;
    std::fs::write(cwd.join("c.pem"), key.cert.pem())?;
    std::fs::write(cwd.join("k.pem"), key.signing_key.serialize_pem())?;
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
            "--default",
        ],
    )
    .await?;

    // What a user reads back.
    let routes = ok(cwd, &["--control", c, "-o", "json", "route", "list"]).await?;
    assert!(
        routes.contains("api.example.com") && routes.contains("/v1"),
        "{routes}"
    );
    let clusters = ok(cwd, &["--control", c, "-o", "json", "cluster", "list"]).await?;
    assert!(clusters.contains("127.0.0.1:8081"), "{clusters}");
    let services = ok(cwd, &["--control", c, "service", "list"]).await?;
    assert!(services.contains("127.0.0.1:8443"), "{services}");
    let certs = ok(cwd, &["--control", c, "cert", "list"]).await?;
    assert!(
        certs.contains("api.example.com") && !certs.contains("PRIVATE KEY"),
        "{certs}"
    );

    // A cluster in use cannot go; after its route is gone it can.
    let err = fails(cwd, &["--control", c, "cluster", "remove", "app"]).await?;
    assert!(err.contains("api"), "names the route that uses it: {err}");
    ok(cwd, &["--control", c, "route", "remove", "api"]).await?;
    let out = ok(
        cwd,
        &["--control", c, "-o", "json", "cluster", "remove", "app"],
    )
    .await?;
    assert!(out.contains("\"removed\""), "{out}");
    let err = fails(cwd, &["--control", c, "service", "remove", "nope"]).await?;
    assert!(err.contains("not found"), "{err}");
    ok(cwd, &["--control", c, "service", "remove", "web"]).await?;
    ok(cwd, &["--control", c, "cert", "remove", "api"]).await?;
    control.stop().await
}
