//! A lab of network namespaces: hosts on one bridge, each with its own
//! 10.200.x.y address, and the processes that run in them.
//!
//! The bridge lives in its own "switch" namespace and every veth pair is
//! created there, so nothing is added to (or named in) the machine's root
//! namespace. The bridge has no address and no host has a default route:
//! nothing leaves the lab. Names are unique per process and lab
//! (`tdm-<pid>-<n>-<host>`), so parallel or aborted runs do not collide.
//!
//! Dropping the [`Lab`] kills its processes (by PID) and deletes its
//! namespaces, which also removes their veth links; this runs on test
//! failure and on panic too.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (iproute2)")?;
    ensure!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// How to (re)start a process of the lab.
#[derive(Clone, Debug)]
struct Spec {
    host: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

struct Proc {
    spec: Spec,
    child: Option<Child>,
    log: PathBuf,
}

/// One host of the lab.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub netns: String,
    pub addr: Ipv4Addr,
}

/// A set of namespaces on one bridge and the processes running in them.
pub struct Lab {
    prefix: String,
    switch: String,
    hosts: Mutex<BTreeMap<String, Host>>,
    /// Every namespace created, in order (deleted in reverse).
    created: Mutex<Vec<String>>,
    procs: Mutex<BTreeMap<String, Proc>>,
    pub dir: tempfile::TempDir,
}

static LABS: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// A lab with only its switch namespace and bridge.
    pub fn new() -> Result<Lab> {
        sweep_dead_labs();
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("tdm-{}-{n}", std::process::id());
        let lab = Lab {
            switch: format!("{prefix}-sw"),
            prefix,
            hosts: Mutex::new(BTreeMap::new()),
            created: Mutex::new(Vec::new()),
            procs: Mutex::new(BTreeMap::new()),
            dir: tempfile::Builder::new().prefix("tandem-lab-").tempdir()?,
        };
        lab.add_netns(&lab.switch)?;
        ip(&["-n", &lab.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lab.switch, "link", "set", "br0", "up"])?;
        Ok(lab)
    }

    fn add_netns(&self, name: &str) -> Result<()> {
        ip(&["netns", "add", name])?;
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    /// Adds a host `name` with address `addr`/24 on the bridge. No default
    /// route: it reaches only the lab.
    pub fn add_host(&self, name: &str, addr: Ipv4Addr) -> Result<Host> {
        ensure!(
            addr.octets()[0] == 10 && (200..=202).contains(&addr.octets()[1]),
            "lab addresses are in 10.200.0.0/16 .. 10.202.0.0/16"
        );
        let netns = format!("{}-{name}", self.prefix);
        self.add_netns(&netns)?;
        let port = format!("v-{name}");
        ensure!(
            port.len() <= 15,
            "host name {name:?} too long for a link name"
        );
        // Both ends are made in the switch namespace; one moves to the host.
        ip(&[
            "-n",
            &self.switch,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns,
        ])?;
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        let host = Host {
            name: name.to_string(),
            netns,
            addr,
        };
        self.hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), host.clone());
        Ok(host)
    }

    pub fn host(&self, name: &str) -> Result<Host> {
        self.hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .with_context(|| format!("no host {name:?} in the lab"))
    }

    /// Runs `ip -n <host's netns> ARGS`.
    pub fn ip_in(&self, host: &str, args: &[&str]) -> Result<()> {
        let h = self.host(host)?;
        let mut full = vec!["-n", h.netns.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Moves the calling thread into `host`'s network namespace: sockets it
    /// (and threads and processes it starts) opens from now on are the
    /// host's.
    pub fn enter(&self, host: &str) -> Result<()> {
        let h = self.host(host)?;
        let f = File::open(format!("/run/netns/{}", h.netns))
            .with_context(|| format!("opening netns {}", h.netns))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering netns {}", h.netns))
    }

    /// Starts `program ARGS` on `host` as process `name` (`ip netns exec`
    /// execs the program, so the PID is the program's). Output goes to
    /// `<lab dir>/<name>.log`.
    pub fn spawn(&self, name: &str, host: &str, program: &Path, args: &[String]) -> Result<u32> {
        self.spawn_env(name, host, program, args, &[])
    }

    /// `tandem control` in `host`: gRPC on `ip:9400`, admin on `ip:9401`,
    /// state in the lab's directory.
    pub fn spawn_control(&self, host: &str, tandem: &Path, ip: Ipv4Addr) -> Result<u32> {
        let data = self.dir.path().join("control-data");
        self.spawn_env(
            "control",
            host,
            tandem,
            &[
                "control".into(),
                "--listen".into(),
                format!("{ip}:9400"),
                "--admin-listen".into(),
                format!("{ip}:9401"),
                "--data-dir".into(),
                data.display().to_string(),
            ],
            &[("RUST_LOG", "info")],
        )
    }

    /// `tandem demo-app` named `name` in `host` on `ip:8080`, and with
    /// `proxy_listen` also a PROXY v2 listener on `ip:8081`.
    pub fn spawn_demo_app(
        &self,
        name: &str,
        host: &str,
        tandem: &Path,
        ip: Ipv4Addr,
        proxy_listen: bool,
    ) -> Result<u32> {
        let mut args = vec![
            "demo-app".into(),
            "--name".into(),
            name.to_string(),
            "--listen".into(),
            format!("{ip}:8080"),
        ];
        if proxy_listen {
            args.extend(["--proxy-listen".into(), format!("{ip}:8081")]);
        }
        self.spawn(name, host, tandem, &args)
    }

    pub fn spawn_env(
        &self,
        name: &str,
        host: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<u32> {
        let spec = Spec {
            host: host.to_string(),
            program: program.to_path_buf(),
            args: args.to_vec(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let log = self.dir.path().join(format!("{name}.log"));
        let mut proc = Proc {
            spec,
            child: None,
            log,
        };
        let pid = self.start(&mut proc)?;
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        ensure!(!procs.contains_key(name), "process {name} exists");
        procs.insert(name.to_string(), proc);
        Ok(pid)
    }

    fn start(&self, proc: &mut Proc) -> Result<u32> {
        let h = self.host(&proc.spec.host)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&proc.log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &h.netns])
            .arg(&proc.spec.program)
            .args(&proc.spec.args)
            .envs(proc.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} on {}", proc.spec.program.display(), h.name))?;
        let pid = child.id();
        proc.child = Some(child);
        Ok(pid)
    }

    /// PID of a running process.
    pub fn pid(&self, name: &str) -> Option<u32> {
        let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        procs.get(name)?.child.as_ref().map(Child::id)
    }

    /// Sends `signal` to process `name` and, for SIGKILL/SIGTERM, waits up
    /// to `wait` for it to exit (killing it if SIGTERM was not enough).
    pub fn signal(
        &self,
        name: &str,
        signal: nix::sys::signal::Signal,
        wait: Duration,
    ) -> Result<()> {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        let proc = procs
            .get_mut(name)
            .with_context(|| format!("no process {name}"))?;
        let Some(child) = proc.child.as_mut() else {
            bail!("process {name} is not running");
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)
            .with_context(|| format!("kill -{signal} {name}"))?;
        let deadline = Instant::now() + wait;
        loop {
            if child.try_wait()?.is_some() {
                proc.child = None;
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                proc.child = None;
                bail!("{name} did not exit within {wait:?} of {signal}; killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9, and reap.
    pub fn kill9(&self, name: &str) -> Result<()> {
        self.signal(
            name,
            nix::sys::signal::Signal::SIGKILL,
            Duration::from_secs(10),
        )
    }

    /// Starts process `name` again with the same host, program and arguments.
    pub fn restart(&self, name: &str) -> Result<u32> {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        let proc = procs
            .get_mut(name)
            .with_context(|| format!("no process {name}"))?;
        ensure!(
            proc.child
                .as_mut()
                .is_none_or(|c| c.try_wait().ok().flatten().is_some()),
            "{name} still runs"
        );
        self.start(proc)
    }

    /// Names of processes that have exited on their own.
    pub fn exited(&self) -> Vec<(String, std::process::ExitStatus)> {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (name, p) in procs.iter_mut() {
            if let Some(c) = p.child.as_mut()
                && let Ok(Some(s)) = c.try_wait()
            {
                out.push((name.clone(), s));
                p.child = None;
            }
        }
        out
    }

    /// Prints the last lines of every process log (for a failed test).
    pub fn dump_logs(&self, lines: usize) {
        let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        for (name, p) in procs.iter() {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            eprintln!(
                "----- {name} ({}), last {} lines -----",
                p.log.display(),
                all.len() - from
            );
            for l in &all[from..] {
                eprintln!("{l}");
            }
        }
    }

    /// The lab's namespaces, for checking clean-up.
    pub fn namespaces(&self) -> Vec<String> {
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        for p in procs.values_mut() {
            if let Some(c) = p.child.as_mut() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for p in procs.values_mut() {
            if let Some(mut c) = p.child.take() {
                let _ = c.wait();
            }
        }
        let created = std::mem::take(&mut *self.created.lock().unwrap_or_else(|p| p.into_inner()));
        for ns in created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("lab clean-up: {e}");
            }
        }
        if std::env::var_os("TANDEM_KEEP_LAB").is_some() {
            let dir = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("placeholder tempdir"),
            );
            eprintln!("lab files kept in {}", dir.keep().display());
        }
    }
}

/// Namespaces named like a lab of this process (`tdm-<pid>-`).
pub fn leftover_namespaces() -> Vec<String> {
    let prefix = format!("tdm-{}-", std::process::id());
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Deletes namespaces of labs whose test process is gone (a run killed
/// before its clean-up could run): `tdm-<pid>-...` with no process <pid>.
fn sweep_dead_labs() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("tdm-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("deleting namespace {name} left by a dead test run");
            let _ = ip(&["netns", "del", &name]);
        }
    }
}
