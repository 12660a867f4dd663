//! Checks of the deployment artifacts under `deploy/` that need no container
//! engine: every YAML file parses; every container's command line uses
//! subcommands and flags the real binaries accept; probes, ports and
//! addresses agree across the files; the TOML documents the seed loads are
//! accepted by a real `tandem control`; the Dockerfile's COPY sources exist;
//! the shell scripts parse.
//!
//! What these checks cannot show (an image that builds, containers that
//! start, traffic through kind) is stated in docs/deploy.md.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_yaml::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn deploy() -> PathBuf {
    root().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn yaml_files() -> Vec<PathBuf> {
    let mut all = Vec::new();
    files_under(&deploy(), &mut all);
    let mut yaml: Vec<PathBuf> = all
        .into_iter()
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    yaml.sort();
    yaml
}

/// Every document of a YAML file, with `<<` merge keys applied.
fn documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(&text) {
        let mut v = Value::deserialize(de).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        v.apply_merge()
            .unwrap_or_else(|e| panic!("{}: merge keys: {e}", path.display()));
        if !v.is_null() {
            docs.push(v);
        }
    }
    docs
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(seq)) => seq.iter().map(s).collect(),
        Some(Value::String(one)) => one.split_whitespace().map(str::to_string).collect(),
        Some(other) => panic!("expected a list of strings, got {other:?}"),
    }
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for key in path {
        cur = cur.get(*key)?;
    }
    Some(cur)
}

/// The long flags (`--name`) a `--help` text lists.
fn help_flags(bin: &Path, args: &[&str]) -> BTreeSet<String> {
    let out = Command::new(bin)
        .args(args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("running {} {args:?} --help: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} {args:?} --help failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut flags = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim_start();
        // Option lines: "-h, --help", "--listen <LISTEN>".
        let b = line.as_bytes();
        let line = if b.len() > 4 && b[0] == b'-' && b[1] != b'-' && &line[2..4] == ", " {
            &line[4..]
        } else {
            line
        };
        if let Some(rest) = line.strip_prefix("--") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            flags.insert(name);
        }
    }
    flags
}

/// The subcommands a `--help` text lists.
fn help_subcommands(bin: &Path, args: &[&str]) -> BTreeSet<String> {
    let out = Command::new(bin).args(args).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut subs = BTreeSet::new();
    let mut in_commands = false;
    for line in text.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands {
            if !line.starts_with("  ") {
                break;
            }
            if let Some(word) = line.split_whitespace().next() {
                subs.insert(word.to_string());
            }
        }
    }
    subs
}

fn tandem() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tandem"))
}

/// tandemctl is another package's binary: found next to `tandem` when it has
/// been built (always under `cargo test --workspace`).
fn tandemctl() -> Option<PathBuf> {
    let p = tandem().with_file_name(format!("tandemctl{}", std::env::consts::EXE_SUFFIX));
    p.exists().then_some(p)
}

/// A container of compose.yaml or a pod template.
#[derive(Debug, Clone)]
struct Container {
    origin: String,
    /// The whole command line, entrypoint first (`tandem` when the image's
    /// entrypoint is used).
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    /// Kubernetes: port name -> number.
    ports: BTreeMap<String, u16>,
    probes: Vec<(String, String, String)>, // (kind, path, port as written)
    raw: Value,
}

impl Container {
    fn sub(&self) -> Option<&str> {
        (self.argv.first().map(String::as_str) == Some("tandem"))
            .then(|| self.argv.get(1).map(String::as_str))
            .flatten()
    }

    /// The values of a flag (`--flag VALUE` or `--flag=VALUE`).
    fn flag(&self, name: &str) -> Vec<String> {
        let long = format!("--{name}");
        let mut out = Vec::new();
        let mut it = self.argv.iter();
        while let Some(a) = it.next() {
            if *a == long {
                out.push(it.next().cloned().unwrap_or_default());
            } else if let Some(v) = a.strip_prefix(&format!("{long}=")) {
                out.push(v.to_string());
            }
        }
        out
    }

    fn flag1(&self, name: &str) -> Option<String> {
        self.flag(name).into_iter().next()
    }

    fn port_of(&self, written: &str) -> u16 {
        written.parse().unwrap_or_else(|_| {
            *self.ports.get(written).unwrap_or_else(|| {
                panic!(
                    "{}: probe port {written:?} names no container port",
                    self.origin
                )
            })
        })
    }
}

fn port_in(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

fn compose() -> Value {
    documents(&deploy().join("compose.yaml")).remove(0)
}

fn compose_containers() -> Vec<Container> {
    let doc = compose();
    let services = doc["services"].as_mapping().expect("compose services");
    let mut out = Vec::new();
    for (name, svc) in services {
        let name = s(name);
        let mut argv = strings(svc.get("entrypoint"));
        if argv.is_empty() {
            argv.push("tandem".into()); // the image's ENTRYPOINT
        }
        argv.extend(strings(svc.get("command")));
        let mut env = BTreeMap::new();
        if let Some(Value::Mapping(m)) = svc.get("environment") {
            for (k, v) in m {
                env.insert(s(k), s(v));
            }
        }
        out.push(Container {
            origin: format!("compose.yaml services.{name}"),
            argv,
            env,
            ports: BTreeMap::new(),
            probes: Vec::new(),
            raw: svc.clone(),
        });
    }
    out
}

fn manifest_files() -> Vec<PathBuf> {
    yaml_files()
        .into_iter()
        .filter(|p| {
            let p = p.to_string_lossy();
            p.contains("/kind/manifests/") || p.contains("/kind/xdp/")
        })
        .collect()
}

fn k8s_objects() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for f in manifest_files() {
        if f.ends_with("kustomization.yaml") {
            continue;
        }
        for d in documents(&f) {
            out.push((f.clone(), d));
        }
    }
    out
}

fn k8s_containers() -> Vec<Container> {
    let mut out = Vec::new();
    for (file, obj) in k8s_objects() {
        let Some(spec) = get(&obj, &["spec", "template", "spec"]) else {
            continue;
        };
        let obj_name = format!(
            "{} {}/{}",
            file.strip_prefix(deploy()).unwrap().display(),
            s(&obj["kind"]),
            s(&obj["metadata"]["name"])
        );
        for list in ["initContainers", "containers"] {
            for c in spec
                .get(list)
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let mut argv = strings(c.get("command"));
                if argv.is_empty() {
                    argv.push("tandem".into());
                }
                argv.extend(strings(c.get("args")));
                let mut env = BTreeMap::new();
                for e in c
                    .get("env")
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                {
                    if let Some(v) = e.get("value") {
                        env.insert(s(&e["name"]), s(v));
                    } else {
                        env.insert(s(&e["name"]), String::from("<from>"));
                    }
                }
                let mut ports = BTreeMap::new();
                for p in c
                    .get("ports")
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                {
                    let n: u16 = s(&p["containerPort"]).parse().unwrap();
                    if let Some(name) = p.get("name") {
                        ports.insert(s(name), n);
                    }
                }
                let mut probes = Vec::new();
                for kind in ["readinessProbe", "livenessProbe", "startupProbe"] {
                    if let Some(h) = c.get(kind).and_then(|p| p.get("httpGet")) {
                        probes.push((kind.to_string(), s(&h["path"]), s(&h["port"])));
                    }
                }
                out.push(Container {
                    origin: format!("{obj_name} container {}", s(&c["name"])),
                    argv,
                    env,
                    ports,
                    probes,
                    raw: c.clone(),
                });
            }
        }
    }
    out
}

/// The helper scripts the image carries (deploy/scripts, COPY'd to
/// /usr/local/bin) and the subcommands each accepts.
fn script_subcommands(name: &str) -> Option<BTreeSet<String>> {
    let path = deploy().join("scripts").join(name);
    let text = std::fs::read_to_string(path).ok()?;
    // The `case "${1:-...}" in` arms: `    apply)`, `    gen-cert) ...`.
    let mut subs = BTreeSet::new();
    let mut in_case = false;
    for line in text.lines() {
        if line.starts_with("case \"${1") {
            in_case = true;
            continue;
        }
        if in_case {
            if line.starts_with("esac") {
                break;
            }
            let t = line.trim_start();
            if line.starts_with("    ")
                && !line.starts_with("     ")
                && let Some((arm, _)) = t.split_once(')')
            {
                for a in arm.split('|') {
                    let a = a.trim();
                    if !a.starts_with('-') && a != "*" {
                        subs.insert(a.to_string());
                    }
                }
            }
        }
    }
    Some(subs)
}

#[test]
fn every_yaml_file_parses() {
    let files = yaml_files();
    assert!(
        files.len() >= 9,
        "expected the compose file and the kind manifests, found {files:?}"
    );
    for f in &files {
        let docs = documents(f);
        assert!(!docs.is_empty(), "{}: no document", f.display());
    }
    // Kubernetes objects are complete: kind, apiVersion, name; namespaced
    // ones name their namespace (kubectl apply -f works without -n).
    for (file, obj) in k8s_objects() {
        let kind = obj.get("kind").map(s).unwrap_or_default();
        assert!(
            !kind.is_empty(),
            "{}: a document without kind",
            file.display()
        );
        assert!(
            obj.get("apiVersion").is_some(),
            "{}: {kind} without apiVersion",
            file.display()
        );
        let name = get(&obj, &["metadata", "name"]).map(s).unwrap_or_default();
        assert!(
            !name.is_empty(),
            "{}: {kind} without metadata.name",
            file.display()
        );
        if kind != "Namespace" {
            assert!(
                get(&obj, &["metadata", "namespace"]).is_some(),
                "{}: {kind}/{name} without metadata.namespace",
                file.display()
            );
        }
    }
    // The kustomization lists every manifest in its directory.
    let kdir = deploy().join("kind/manifests");
    let k = documents(&kdir.join("kustomization.yaml")).remove(0);
    let listed: BTreeSet<String> = strings(k.get("resources")).into_iter().collect();
    for r in &listed {
        assert!(kdir.join(r).exists(), "kustomization names a missing {r}");
    }
    for f in std::fs::read_dir(&kdir).unwrap() {
        let n = f.unwrap().file_name().to_string_lossy().into_owned();
        if n.ends_with(".yaml") && n != "kustomization.yaml" {
            assert!(listed.contains(&n), "kustomization.yaml does not list {n}");
        }
    }
    // kind: one control plane, three workers.
    let cluster = documents(&deploy().join("kind/cluster.yaml")).remove(0);
    let roles: Vec<String> = cluster["nodes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|n| s(&n["role"]))
        .collect();
    assert_eq!(roles, ["control-plane", "worker", "worker", "worker"]);
}

#[test]
fn commands_use_real_subcommands_and_flags() {
    let bin = tandem();
    let subs = help_subcommands(&bin, &[]);
    let mut flags: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut checked = 0;
    let mut containers = compose_containers();
    containers.extend(k8s_containers());
    for c in &containers {
        let entry = c.argv[0].as_str();
        match entry {
            "tandem" => {
                let sub = c
                    .sub()
                    .unwrap_or_else(|| panic!("{}: no tandem subcommand", c.origin));
                assert!(
                    subs.contains(sub),
                    "{}: `tandem {sub}` is not a subcommand ({subs:?})",
                    c.origin
                );
                let known = flags
                    .entry(sub.to_string())
                    .or_insert_with(|| help_flags(&bin, &[sub]));
                for a in c.argv[2..].iter() {
                    if let Some(f) = a.strip_prefix("--") {
                        let name = f.split('=').next().unwrap();
                        assert!(
                            known.contains(name),
                            "{}: `tandem {sub}` has no flag --{name} (it has {known:?})",
                            c.origin
                        );
                        checked += 1;
                    } else if a.starts_with('-') {
                        panic!("{}: use long flags only, not {a}", c.origin);
                    }
                }
                // Every tier but the demo app serves its admin endpoint
                // somewhere a probe can reach.
                if sub != "demo-app" {
                    let admin = c
                        .flag1("admin-listen")
                        .unwrap_or_else(|| panic!("{}: no --admin-listen", c.origin));
                    assert!(
                        !admin.starts_with("127.") && !admin.starts_with("localhost"),
                        "{}: --admin-listen {admin} is unreachable from outside the container",
                        c.origin
                    );
                }
                // With auth on, every subscriber presents a token.
                if sub == "node" || sub == "director" {
                    assert!(
                        c.flag1("token-file").is_some(),
                        "{}: no --token-file (control requires one)",
                        c.origin
                    );
                }
                if sub == "control" {
                    assert!(
                        c.flag1("admin-token-file").is_some()
                            && c.flag1("subscriber-token-file").is_some(),
                        "{}: control without token files runs with auth off",
                        c.origin
                    );
                }
            }
            script @ ("tandem-seed" | "tandem-register" | "tandem-healthcheck") => {
                let accepted = script_subcommands(script)
                    .unwrap_or_else(|| panic!("{}: deploy/scripts/{script} missing", c.origin));
                if let Some(arg) = c.argv.get(1) {
                    assert!(
                        accepted.contains(arg),
                        "{}: `{script} {arg}`: it accepts {accepted:?}",
                        c.origin
                    );
                }
                checked += 1;
            }
            other => panic!("{}: unexpected entrypoint {other:?}", c.origin),
        }
    }
    // preStop hooks and exec probes call the scripts with real subcommands.
    for c in k8s_containers() {
        for path in [
            &["lifecycle", "preStop", "exec", "command"][..],
            &["startupProbe", "exec", "command"][..],
        ] {
            let cmd = strings(get(&c.raw, path));
            if let Some(first) = cmd.first()
                && first.starts_with("tandem-")
            {
                let accepted = script_subcommands(first).unwrap();
                assert!(accepted.contains(&cmd[1]), "{}: {cmd:?}", c.origin);
            }
        }
    }
    assert!(checked > 40, "only {checked} flags checked");

    // tandemctl as the scripts call it.
    if let Some(ctl) = tandemctl() {
        for (args, want) in [
            (
                &["node", "add"][..],
                &["address", "admin-address", "pool", "weight"][..],
            ),
            (
                &["apply"][..],
                &["file", "dry-run", "prune", "token-file", "control"][..],
            ),
            (&["node", "list"][..], &["output"][..]),
            (&["service", "list"][..], &["output"][..]),
            (&["state", "export"][..], &["control"][..]),
        ] {
            let have = help_flags(&ctl, args);
            for w in want {
                assert!(
                    have.contains(*w),
                    "tandemctl {args:?} has no --{w}: {have:?}"
                );
            }
        }
        for (args, sub) in [
            (&["node"][..], "drain"),
            (&["node"][..], "remove"),
            (&[][..], "status"),
        ] {
            assert!(
                help_subcommands(&ctl, args).contains(sub),
                "tandemctl {args:?} {sub}"
            );
        }
    } else {
        eprintln!("tandemctl is not built next to tandem; its flags were not checked");
    }
}

#[test]
fn probes_hit_the_admin_endpoint() {
    for c in k8s_containers() {
        let Some(sub) = c.sub() else { continue };
        let probe_port = if sub == "demo-app" {
            port_in(&c.flag1("listen").unwrap())
        } else {
            port_in(&c.flag1("admin-listen").unwrap())
        };
        if sub != "demo-app" {
            assert!(
                c.probes
                    .iter()
                    .any(|(k, p, _)| k == "readinessProbe" && p == "/readyz"),
                "{}: readiness must be /readyz",
                c.origin
            );
        }
        for (kind, path, port) in &c.probes {
            if sub != "demo-app" {
                assert!(
                    path == "/healthz" || path == "/readyz",
                    "{}: {kind} path {path}",
                    c.origin
                );
            }
            assert_eq!(
                c.port_of(port),
                probe_port,
                "{}: {kind} port {port} is not the admin port",
                c.origin
            );
        }
        // Every address the command line binds has a container port.
        for flag in ["listen", "admin-listen", "proxy-listen"] {
            if let Some(a) = c.flag1(flag) {
                let p = port_in(&a);
                assert!(
                    c.ports.values().any(|v| *v == p),
                    "{}: --{flag} port {p} is not a containerPort",
                    c.origin
                );
            }
        }
    }
    // Compose health checks (the image's HEALTHCHECK reads TANDEM_HEALTH_URL).
    for c in compose_containers() {
        let Some(sub) = c.sub() else { continue };
        let url = c
            .env
            .get("TANDEM_HEALTH_URL")
            .unwrap_or_else(|| panic!("{}: no TANDEM_HEALTH_URL", c.origin));
        let hostport = url
            .strip_prefix("http://")
            .and_then(|r| r.split('/').next())
            .unwrap();
        let path = &url["http://".len() + hostport.len()..];
        let want = if sub == "demo-app" {
            port_in(&c.flag1("listen").unwrap())
        } else {
            assert_eq!(path, "/healthz", "{}", c.origin);
            port_in(&c.flag1("admin-listen").unwrap())
        };
        assert_eq!(port_in(hostport), want, "{}: health URL {url}", c.origin);
    }
}

fn seed_documents() -> Vec<(String, String, String)> {
    // (origin, TOML text, the seed container's TANDEM_TLS_DIR)
    let mut out = Vec::new();
    let seed = compose_containers()
        .into_iter()
        .find(|c| c.argv[..] == ["tandem-seed", "apply"])
        .expect("a compose service running tandem-seed apply");
    let doc_mount = seed.env["TANDEM_SEED_FILE"].clone();
    let vols = strings(seed.raw.get("volumes"));
    let src = vols
        .iter()
        .find_map(|v| {
            let mut parts = v.split(':');
            let (src, dst) = (parts.next()?, parts.next()?);
            (dst == doc_mount).then(|| src.to_string())
        })
        .expect("the seed file is mounted into the seed service");
    out.push((
        format!("deploy/{src}"),
        read(&deploy().join(&src)),
        seed.env["TANDEM_TLS_DIR"].clone(),
    ));

    let objs = k8s_objects();
    let job = k8s_containers()
        .into_iter()
        .find(|c| c.argv[..] == ["tandem-seed", "apply"])
        .expect("a Kubernetes container running tandem-seed apply");
    let cm = objs
        .iter()
        .find(|(_, o)| s(&o["kind"]) == "ConfigMap" && s(&o["metadata"]["name"]) == "tandem-seed")
        .expect("ConfigMap tandem-seed");
    let file = Path::new(&job.env["TANDEM_SEED_FILE"]);
    let key = file.file_name().unwrap().to_string_lossy().into_owned();
    let mount = job.raw["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| Path::new(&s(&m["mountPath"])) == file.parent().unwrap())
        .expect("the seed ConfigMap is mounted where TANDEM_SEED_FILE points");
    assert_eq!(s(&mount["name"]), "seed");
    out.push((
        format!("ConfigMap tandem-seed key {key}"),
        s(&cm.1["data"][key.as_str()]),
        job.env["TANDEM_TLS_DIR"].clone(),
    ));
    out
}

/// A running `tandem control` with authentication on; killed on drop.
struct Control {
    child: Child,
    addr: SocketAddr,
    admin_token: String,
    _dir: tempfile::TempDir,
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_control() -> Control {
    let dir = tempfile::tempdir().unwrap();
    // The token-file format tandem-seed writes: `NAME HEX`.
    let admin_token = "0123456789abcdef0123456789abcdef".to_string();
    std::fs::write(
        dir.path().join("admin.token"),
        format!("admin {admin_token}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("subscriber.token"),
        "subscriber fedcba9876543210fedcba9876543210\n",
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(tandem())
        .arg("control")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(dir.path().join("state"))
        .arg("--admin-token-file")
        .arg(dir.path().join("admin.token"))
        .arg("--subscriber-token-file")
        .arg(dir.path().join("subscriber.token"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting tandem control");
    Control {
        child,
        addr,
        admin_token,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_documents_load_into_a_real_control() {
    use control_api::auth::BearerInterceptor;
    use control_api::pb::{self, admin_client::AdminClient};

    for (origin, text, tls_dir) in seed_documents() {
        // The certificate files the document names are where the seed
        // container has them (TANDEM_TLS_DIR); here they are made fresh.
        let mut doc: toml::Table =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{origin}: {e}"));
        let tmp = tempfile::tempdir().unwrap();
        let mut sni_total = 0;
        for cert in doc
            .get_mut("certificates")
            .and_then(|c| c.as_array_mut())
            .expect("a certificate")
        {
            let t = cert.as_table_mut().unwrap();
            let names: Vec<String> = t["sni_names"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            sni_total += names.len();
            for (field, file) in [("cert_file", "tls.crt"), ("key_file", "tls.key")] {
                let written = t[field].as_str().unwrap();
                assert_eq!(
                    Path::new(written),
                    Path::new(&tls_dir).join(file),
                    "{origin}: {field} is not in the seed's TANDEM_TLS_DIR"
                );
                t.insert(
                    field.into(),
                    tmp.path().join(file).display().to_string().into(),
                );
            }
            let key = rcgen::KeyPair::generate().unwrap();
            let c = rcgen::CertificateParams::new(names)
                .unwrap()
                .self_signed(&key)
                .unwrap();
            std::fs::write(tmp.path().join("tls.crt"), c.pem()).unwrap();
            std::fs::write(tmp.path().join("tls.key"), key.serialize_pem()).unwrap();
        }
        assert!(sni_total > 0);
        let desired =
            control_api::config::from_toml_str(&toml::to_string(&doc).unwrap(), tmp.path())
                .unwrap_or_else(|e| panic!("{origin}: {e}"));

        let control = start_control();
        let url = format!("http://{}", control.addr);
        let deadline = Instant::now() + Duration::from_secs(20);
        let channel = loop {
            match tonic::transport::Endpoint::from_shared(url.clone())
                .unwrap()
                .connect()
                .await
            {
                Ok(ch) => break ch,
                Err(e) if Instant::now() > deadline => panic!("control did not start: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        // Without the token, control refuses (auth is on, as deployed).
        let mut anon = AdminClient::new(channel.clone());
        assert!(
            anon.get_state(pb::GetStateRequest::default())
                .await
                .is_err()
        );

        let mut admin = AdminClient::with_interceptor(
            channel,
            BearerInterceptor::new(&control.admin_token).unwrap(),
        );
        let current = admin
            .get_state(pb::GetStateRequest::default())
            .await
            .unwrap()
            .into_inner();
        let diff = control_api::config::diff(&current, &desired, false);
        assert!(!diff.is_empty(), "{origin}: nothing to apply");
        admin
            .apply(pb::ApplyRequest {
                changes: diff.changes,
                expected_version: current.version,
            })
            .await
            .unwrap_or_else(|e| panic!("{origin}: control refused the document: {e}"));
        let state = admin
            .get_state(pb::GetStateRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(state.services.len(), desired.services.len(), "{origin}");
        assert_eq!(state.clusters.len(), desired.clusters.len(), "{origin}");
        assert_eq!(state.routes.len(), desired.routes.len(), "{origin}");
        assert_eq!(state.certificates.len(), 1, "{origin}");
        assert_eq!(state.nodes.len(), desired.nodes.len(), "{origin}");
        // Applying again changes nothing (what a re-run seed relies on).
        // GetState leaves private keys out; the document's key is compared
        // with the stored one by fingerprint.
        let again = control_api::config::diff(&state, &desired, false);
        assert!(again.entries.is_empty(), "{origin}: {:?}", again.entries);
    }
}

/// Addresses and ports agree across compose.yaml and its seed document.
#[test]
fn compose_topology_is_consistent() {
    let doc = compose();
    let containers = compose_containers();
    let by_name = |n: &str| {
        containers
            .iter()
            .find(|c| c.origin.ends_with(&format!("services.{n}")))
            .unwrap_or_else(|| panic!("compose service {n}"))
    };
    let ip = |n: &str| {
        s(
            get(&doc, &["services", n, "networks", "tandem", "ipv4_address"])
                .unwrap_or_else(|| panic!("{n} has no fixed address")),
        )
    };
    let count = |sub: &str| containers.iter().filter(|c| c.sub() == Some(sub)).count();
    assert_eq!(count("control"), 1);
    assert_eq!(count("director"), 2);
    assert_eq!(count("node"), 3);
    assert_eq!(count("demo-app"), 2);
    let (_, text, _) = seed_documents().remove(0);
    let seed: toml::Table = toml::from_str(&text).unwrap();
    let vip = seed["services"][0]["address"].as_str().unwrap();
    let director_ips: BTreeSet<String> = ["director-1", "director-2"]
        .iter()
        .map(|d| format!("{}/32", ip(d)))
        .collect();
    for d in ["director-1", "director-2"] {
        let published: Vec<String> = strings(get(&doc, &["services", d, "ports"]));
        assert!(
            published.iter().any(|p| port_in(p) == port_in(vip)),
            "{d} does not publish the VIP port {vip}: {published:?}"
        );
    }
    for node in seed["nodes"].as_array().unwrap() {
        let id = node["id"].as_str().unwrap();
        let c = by_name(id);
        assert_eq!(c.flag1("id").as_deref(), Some(id));
        let want = format!("{}:{}", ip(id), port_in(&c.flag1("listen").unwrap()));
        assert_eq!(node["address"].as_str().unwrap(), want, "{id} address");
        let want = format!("{}:{}", ip(id), port_in(&c.flag1("admin-listen").unwrap()));
        assert_eq!(node["admin_address"].as_str().unwrap(), want, "{id} admin");
        let trusted: BTreeSet<String> = c.flag("trusted-proxy").into_iter().collect();
        assert_eq!(
            trusted, director_ips,
            "{id}: PROXY headers from the directors only"
        );
    }
    let mut app_addrs = BTreeSet::new();
    for app in ["app-1", "app-2"] {
        let c = by_name(app);
        app_addrs.insert(format!(
            "{}:{}",
            ip(app),
            port_in(&c.flag1("listen").unwrap())
        ));
        app_addrs.insert(format!(
            "{}:{}",
            ip(app),
            port_in(&c.flag1("proxy-listen").unwrap())
        ));
    }
    let mut endpoints = BTreeSet::new();
    for cl in seed["clusters"].as_array().unwrap() {
        for e in cl["endpoints"].as_array().unwrap() {
            endpoints.insert(e["address"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(endpoints, app_addrs, "cluster endpoints are the demo apps");
    // Token files: every path a flag names is on a volume the container mounts.
    for c in &containers {
        for f in ["token-file", "admin-token-file", "subscriber-token-file"] {
            for path in c.flag(f) {
                let vols = strings(c.raw.get("volumes"));
                assert!(
                    vols.iter()
                        .any(|v| v.split(':').nth(1).is_some_and(|m| path.starts_with(m))),
                    "{}: {path} is on no mounted volume",
                    c.origin
                );
            }
        }
    }
}

/// Ports, addresses and Secrets agree across the Kubernetes manifests.
#[test]
fn kubernetes_wiring_is_consistent() {
    let objs = k8s_objects();
    let find = |kind: &str, name: &str, ns: &str| {
        objs.iter()
            .find(|(_, o)| {
                s(&o["kind"]) == kind
                    && s(&o["metadata"]["name"]) == name
                    && get(o, &["metadata", "namespace"]).map(s).as_deref() == Some(ns)
            })
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| panic!("{kind}/{name} in {ns}"))
    };
    let containers = k8s_containers();
    let cluster = documents(&deploy().join("kind/cluster.yaml")).remove(0);
    let pod_subnet = s(&cluster["networking"]["podSubnet"]);

    // Nodes: registration sidecar and node agree on ports; PDB; drain.
    let node = containers
        .iter()
        .find(|c| c.sub() == Some("node") && c.origin.contains("manifests/"))
        .unwrap();
    let reg = containers
        .iter()
        .find(|c| c.argv[..] == ["tandem-register", "run"])
        .unwrap();
    assert_eq!(
        reg.env["TANDEM_NODE_PORT"].parse::<u16>().unwrap(),
        port_in(&node.flag1("listen").unwrap())
    );
    assert_eq!(
        reg.env["TANDEM_NODE_ADMIN_PORT"].parse::<u16>().unwrap(),
        port_in(&node.flag1("admin-listen").unwrap())
    );
    assert_eq!(
        s(&reg.raw["restartPolicy"]),
        "Always",
        "register is a native sidecar"
    );
    assert_eq!(node.flag1("id").as_deref(), Some("$(POD_NAME)"));
    assert_eq!(
        node.flag("trusted-proxy"),
        std::slice::from_ref(&pod_subnet)
    );
    assert_eq!(
        strings(get(&node.raw, &["lifecycle", "preStop", "exec", "command"])),
        ["tandem-register", "drain"]
    );
    let dep = find("Deployment", "tandem-node", "tandem");
    assert_eq!(s(&dep["spec"]["replicas"]), "3");
    let grace: u64 = s(&dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
        .parse()
        .unwrap();
    let drain: u64 = node.flag1("drain-timeout-secs").unwrap().parse().unwrap();
    let propagation: u64 = node.env["TANDEM_DRAIN_PROPAGATION_SECS"].parse().unwrap();
    assert!(
        grace > drain + propagation,
        "terminationGracePeriodSeconds {grace} <= preStop {propagation} + drain {drain}"
    );
    find("PodDisruptionBudget", "tandem-node", "tandem");

    // Directors: the Service sends the VIP port with client addresses kept.
    let svc = find("Service", "tandem-director", "tandem");
    assert_eq!(s(&svc["spec"]["externalTrafficPolicy"]), "Local");
    assert!(matches!(
        s(&svc["spec"]["type"]).as_str(),
        "NodePort" | "LoadBalancer"
    ));
    let seeds = seed_documents();
    let seed: toml::Table = toml::from_str(&seeds[1].1).unwrap();
    let vip = seed["services"][0]["address"].as_str().unwrap();
    let target = s(&svc["spec"]["ports"][0]["targetPort"]);
    assert_eq!(target.parse::<u16>().unwrap(), port_in(vip));
    let node_port = s(&svc["spec"]["ports"][0]["nodePort"]);
    let mapped: Vec<String> = cluster["nodes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|n| n.get("extraPortMappings"))
        .flat_map(|m| {
            m.as_sequence()
                .unwrap()
                .iter()
                .map(|p| s(&p["containerPort"]))
        })
        .collect();
    assert!(
        mapped.contains(&node_port),
        "kind maps the NodePort {node_port} to the host"
    );
    find("DaemonSet", "tandem-director", "tandem");

    // Apps: the seed's cluster endpoints are the apps' Service.
    let apps = find("Service", "tandem-demo-app", "tandem");
    let cip = s(&apps["spec"]["clusterIP"]);
    let svc_subnet = s(&cluster["networking"]["serviceSubnet"]);
    let prefix = svc_subnet.split('.').take(2).collect::<Vec<_>>().join(".");
    assert!(
        cip.starts_with(&format!("{prefix}.")),
        "{cip} outside {svc_subnet}"
    );
    let ports: BTreeSet<String> = apps["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| format!("{cip}:{}", s(&p["port"])))
        .collect();
    for cl in seed["clusters"].as_array().unwrap() {
        for e in cl["endpoints"].as_array().unwrap() {
            let a = e["address"].as_str().unwrap();
            assert!(
                ports.contains(a),
                "cluster endpoint {a} is not a port of {ports:?}"
            );
        }
    }

    // Control: a volume claim for the state; token files from the Secret.
    let sts = find("StatefulSet", "tandem-control", "tandem");
    assert!(sts["spec"]["volumeClaimTemplates"].as_sequence().is_some());
    // Every token file a container names is an item of a mounted Secret volume.
    for (_, obj) in &objs {
        let Some(spec) = get(obj, &["spec", "template", "spec"]) else {
            continue;
        };
        let volumes = spec.get("volumes").and_then(Value::as_sequence);
        for list in ["initContainers", "containers"] {
            for c in spec
                .get(list)
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let mut argv = strings(c.get("args"));
                argv.extend(strings(c.get("command")));
                let mut files: Vec<String> = Vec::new();
                let mut it = argv.iter();
                while let Some(a) = it.next() {
                    if a.ends_with("token-file") {
                        files.push(it.next().unwrap().clone());
                    }
                }
                for e in c
                    .get("env")
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                {
                    if s(&e["name"]).ends_with("TOKEN_FILE") {
                        files.push(s(&e["value"]));
                    }
                }
                for f in files {
                    let f = Path::new(&f);
                    let mount = c["volumeMounts"]
                        .as_sequence()
                        .unwrap()
                        .iter()
                        .find(|m| Path::new(&s(&m["mountPath"])) == f.parent().unwrap())
                        .unwrap_or_else(|| panic!("{}: nothing mounted at {f:?}", s(&c["name"])));
                    let vol = volumes
                        .unwrap()
                        .iter()
                        .find(|v| v["name"] == mount["name"])
                        .unwrap();
                    let secret = &vol["secret"];
                    assert_eq!(s(&secret["secretName"]), "tandem-tokens");
                    let items: Vec<String> = secret["items"]
                        .as_sequence()
                        .unwrap()
                        .iter()
                        .map(|i| s(&i["path"]))
                        .collect();
                    let name = f.file_name().unwrap().to_string_lossy().into_owned();
                    assert!(
                        items.contains(&name),
                        "{}: {name} not in {items:?}",
                        s(&c["name"])
                    );
                    // Group-readable by the pod's fsGroup (the user is not root).
                    assert_eq!(s(&spec["securityContext"]["fsGroup"]), "10001");
                }
            }
        }
    }
    // e2e.sh makes the Secret with every key the manifests read.
    let e2e = read(&deploy().join("kind/e2e.sh"));
    for key in ["admin.token", "register.token", "subscriber.token"] {
        assert!(
            e2e.contains(&format!("--from-literal={key}=")),
            "e2e.sh makes no {key}"
        );
    }
}

#[test]
fn dockerfile_copy_sources_exist() {
    let text = read(&deploy().join("docker/Dockerfile"));
    let ignore = read(&root().join(".dockerignore"));
    let mut copied = 0;
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("COPY ") else {
            continue;
        };
        if rest.contains("--from=") {
            continue;
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        for src in &words[..words.len() - 1] {
            assert!(
                root().join(src).exists(),
                "Dockerfile COPY {src}: no such file"
            );
            // Not excluded from the build context.
            for pat in ignore.lines().map(str::trim) {
                assert!(
                    *src == "." || pat.is_empty() || pat.starts_with('#') || !src.starts_with(pat),
                    "COPY {src} is excluded by .dockerignore ({pat})"
                );
            }
            copied += 1;
        }
    }
    assert!(copied >= 4);
    // Every helper a container runs is in the image.
    for c in compose_containers().into_iter().chain(k8s_containers()) {
        if c.argv[0].starts_with("tandem-") {
            assert!(
                text.contains(&format!("deploy/scripts/{}", c.argv[0])),
                "{}: {} is not copied into the image",
                c.origin,
                c.argv[0]
            );
        }
    }
    // The manifests name the tag e2e.sh builds; compose defaults to it.
    let e2e = read(&deploy().join("kind/e2e.sh"));
    for c in k8s_containers() {
        let image = s(&c.raw["image"]);
        assert!(
            e2e.contains(&format!("image={image}")),
            "{}: image {image}",
            c.origin
        );
    }
}

#[test]
fn shell_scripts_parse() {
    let mut all = Vec::new();
    files_under(&deploy(), &mut all);
    let scripts: Vec<PathBuf> = all
        .into_iter()
        .filter(|p| read(p).starts_with("#!"))
        .collect();
    assert!(scripts.len() >= 5, "{scripts:?}");
    let shellcheck = Command::new("shellcheck").arg("--version").output().is_ok();
    for s in &scripts {
        let shell = if read(s).starts_with("#!/bin/sh") {
            "sh"
        } else {
            "bash"
        };
        let out = Command::new(shell).arg("-n").arg(s).output().unwrap();
        assert!(
            out.status.success(),
            "{shell} -n {}: {}",
            s.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        if shellcheck {
            let out = Command::new("shellcheck").arg(s).output().unwrap();
            assert!(
                out.status.success(),
                "shellcheck {}:\n{}",
                s.display(),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(s).unwrap().permissions().mode();
            assert!(mode & 0o111 != 0, "{} is not executable", s.display());
        }
    }
    if !shellcheck {
        eprintln!("shellcheck is not installed; only `bash -n` ran");
    }
}

/// tandem-seed's own helpers work here: the tokens it writes are the format
/// control reads, and twice is once.
#[test]
fn seed_script_makes_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let script = deploy().join("scripts/tandem-seed");
    for _ in 0..2 {
        let out = Command::new("bash")
            .arg(&script)
            .arg("tokens")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (file, name) in [("admin.token", "admin"), ("subscriber.token", "subscriber")] {
        let text = read(&dir.path().join(file));
        let words: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(words.len(), 2, "{text:?}");
        assert_eq!(words[0], name);
        assert_eq!(words[1].len(), 64);
        assert_eq!(
            control_api::auth::read_token_file(&dir.path().join(file)).unwrap(),
            words[1]
        );
    }
}
