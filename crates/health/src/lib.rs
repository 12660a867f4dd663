//! Active health checking, shared by the director (checks nodes) and the
//! node (checks app endpoints).
//!
//! The decision logic ([`Tracker`]) is pure: it takes probe results and says
//! when a target goes down (after `fall` consecutive failures) or up (after
//! `rise` consecutive successes). The probes ([`probe`]) and the per-target
//! loops ([`Checker`]) are the I/O at the edge.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What a probe does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Probe {
    /// A TCP connect succeeds.
    Tcp,
    /// `GET path` answers with a status in 200..=399 (or `expect_status` if set).
    Http {
        path: String,
        expect_status: Option<u16>,
    },
}

/// How and how often a target is checked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckSpec {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down target up.
    pub rise: u32,
    /// Consecutive failures that take an up target down.
    pub fall: u32,
    /// Send a PROXY v2 LOCAL header first (the target expects PROXY from us).
    pub proxy_local: bool,
}

impl Default for CheckSpec {
    fn default() -> Self {
        CheckSpec {
            probe: Probe::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 2,
            proxy_local: false,
        }
    }
}

/// A change of a target's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

/// Rise/fall state of one target. Starts up (optimistic): a new target takes
/// traffic at once and leaves after `fall` failures, as HAProxy's default.
#[derive(Clone, Debug)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    healthy: bool,
    streak: u32,
}

impl Tracker {
    pub fn new(rise: u32, fall: u32, healthy: bool) -> Tracker {
        Tracker {
            rise: rise.max(1),
            fall: fall.max(1),
            healthy,
            streak: 0,
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Records one probe result; returns the transition it caused, if any.
    pub fn record(&mut self, success: bool) -> Option<Transition> {
        if success == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.healthy { self.fall } else { self.rise };
        if self.streak >= needed {
            self.healthy = success;
            self.streak = 0;
            Some(if success {
                Transition::Up
            } else {
                Transition::Down
            })
        } else {
            None
        }
    }
}

/// Why a probe failed.
#[derive(Debug)]
pub enum ProbeError {
    Timeout,
    Connect(std::io::Error),
    Io(std::io::Error),
    BadResponse(String),
    Status(u16),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Timeout => write!(f, "timed out"),
            ProbeError::Connect(e) => write!(f, "connect: {e}"),
            ProbeError::Io(e) => write!(f, "i/o: {e}"),
            ProbeError::BadResponse(s) => write!(f, "bad response: {s}"),
            ProbeError::Status(s) => write!(f, "status {s}"),
        }
    }
}

/// Runs one probe against `addr`.
pub async fn probe(spec: &CheckSpec, addr: SocketAddr) -> Result<(), ProbeError> {
    match tokio::time::timeout(spec.timeout, probe_inner(spec, addr)).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout),
    }
}

async fn probe_inner(spec: &CheckSpec, addr: SocketAddr) -> Result<(), ProbeError> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    if spec.proxy_local {
        let header = proxy_protocol::Header::local()
            .to_bytes()
            .map_err(|e| ProbeError::BadResponse(e.to_string()))?;
        s.write_all(&header).await.map_err(ProbeError::Io)?;
    }
    let Probe::Http {
        path,
        expect_status,
    } = &spec.probe
    else {
        return Ok(());
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: tandem-health\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.map_err(ProbeError::Io)?;
    // The status line is all we need.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 1024 {
        let n = s.read(&mut chunk).await.map_err(ProbeError::Io)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(ProbeError::BadResponse(format!("{line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ProbeError::BadResponse(format!("{line:?}")));
    }
    let code: u16 = code
        .parse()
        .map_err(|_| ProbeError::BadResponse(format!("{line:?}")))?;
    let ok = match expect_status {
        Some(want) => code == *want,
        None => (200..400).contains(&code),
    };
    if ok {
        Ok(())
    } else {
        Err(ProbeError::Status(code))
    }
}

/// A target to check: an id and where to probe.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub id: String,
    pub addr: SocketAddr,
    pub spec: CheckSpec,
}

/// Health of every target, as last decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthMap {
    /// id -> (healthy, last failure reason if any).
    pub targets: HashMap<String, (bool, String)>,
}

impl HealthMap {
    /// Unknown targets count as healthy (they start optimistic).
    pub fn is_healthy(&self, id: &str) -> bool {
        self.targets.get(id).is_none_or(|(h, _)| *h)
    }
}

struct Running {
    target: Target,
    stop: CancellationToken,
}

/// Runs one probe loop per target and publishes the [`HealthMap`] whenever a
/// target changes state.
pub struct Checker {
    running: Mutex<HashMap<String, Running>>,
    tx: Arc<watch::Sender<HealthMap>>,
    shutdown: CancellationToken,
}

impl Checker {
    pub fn new(shutdown: CancellationToken) -> (Checker, watch::Receiver<HealthMap>) {
        let (tx, rx) = watch::channel(HealthMap::default());
        (
            Checker {
                running: Mutex::new(HashMap::new()),
                tx: Arc::new(tx),
                shutdown,
            },
            rx,
        )
    }

    /// Sets the targets: starts loops for new ones, stops loops for removed
    /// ones, restarts a loop whose address or spec changed. Must be called
    /// inside a tokio runtime.
    pub fn set_targets(&self, targets: Vec<Target>) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let wanted: HashMap<String, Target> =
            targets.into_iter().map(|t| (t.id.clone(), t)).collect();
        running.retain(|id, r| {
            let keep = wanted.get(id).is_some_and(|t| *t == r.target);
            if !keep {
                r.stop.cancel();
            }
            keep
        });
        let mut removed = false;
        self.tx.send_if_modified(|m| {
            let before = m.targets.len();
            m.targets.retain(|id, _| wanted.contains_key(id));
            removed = m.targets.len() != before;
            removed
        });
        for (id, t) in wanted {
            if running.contains_key(&id) {
                continue;
            }
            let stop = self.shutdown.child_token();
            tokio::spawn(probe_loop(t.clone(), self.tx.clone(), stop.clone()));
            running.insert(id, Running { target: t, stop });
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for r in running.values() {
            r.stop.cancel();
        }
    }
}

async fn probe_loop(t: Target, tx: Arc<watch::Sender<HealthMap>>, stop: CancellationToken) {
    let mut tracker = Tracker::new(t.spec.rise, t.spec.fall, true);
    let mut tick = tokio::time::interval(t.spec.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let result = probe(&t.spec, t.addr).await;
        let reason = result
            .as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        if let Some(change) = tracker.record(result.is_ok()) {
            match change {
                Transition::Down => {
                    tracing::warn!(target_id = %t.id, addr = %t.addr, reason = %reason, "health check: DOWN")
                }
                Transition::Up => {
                    tracing::info!(target_id = %t.id, addr = %t.addr, "health check: UP")
                }
            }
        }
        let healthy = tracker.healthy();
        if stop.is_cancelled() {
            return;
        }
        tx.send_if_modified(|m| {
            let new = (
                healthy,
                if healthy {
                    String::new()
                } else {
                    reason.clone()
                },
            );
            match m.targets.get_mut(&t.id) {
                // First result for this target: publish it, up or down.
                None => {
                    m.targets.insert(t.id.clone(), new);
                    true
                }
                Some(entry) if entry.0 != new.0 || (!healthy && entry.1.is_empty()) => {
                    *entry = new;
                    true
                }
                Some(_) => false,
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_successes() {
        let mut t = Tracker::new(2, 3, true);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(Transition::Down));
        assert!(!t.healthy());
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None, "a failure resets the rise streak");
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(Transition::Up));
        assert!(t.healthy());
    }

    #[test]
    fn a_success_resets_the_fall_streak() {
        let mut t = Tracker::new(1, 2, true);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(Transition::Down));
    }

    #[tokio::test]
    async fn checker_publishes_first_results_and_changes() {
        let up = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let up_addr = up.local_addr().expect("addr");
        let down_addr = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let spec = CheckSpec {
            interval: Duration::from_millis(20),
            rise: 1,
            fall: 1,
            ..CheckSpec::default()
        };
        let (checker, mut rx) = Checker::new(CancellationToken::new());
        checker.set_targets(vec![
            Target {
                id: "up".into(),
                addr: up_addr,
                spec: spec.clone(),
            },
            Target {
                id: "down".into(),
                addr: down_addr,
                spec,
            },
        ]);
        let map = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                rx.changed().await.expect("checker alive");
                let m = rx.borrow_and_update().clone();
                if m.targets.len() == 2 && !m.is_healthy("down") {
                    return m;
                }
            }
        })
        .await
        .expect("both targets reported");
        assert!(map.is_healthy("up"));
        assert!(
            map.targets["down"].1.contains("connect"),
            "{:?}",
            map.targets["down"]
        );
        drop(up);
    }

    #[tokio::test]
    async fn http_probe_reads_the_status_line() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = l.accept().await.expect("accept");
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let spec = CheckSpec {
            probe: Probe::Http {
                path: "/healthz".into(),
                expect_status: None,
            },
            ..CheckSpec::default()
        };
        assert!(probe(&spec, addr).await.is_ok());
        assert!(matches!(
            probe(&spec, addr).await,
            Err(ProbeError::Status(503))
        ));
        // Nothing listens any more: connect fails.
        let spec = CheckSpec {
            probe: Probe::Tcp,
            ..CheckSpec::default()
        };
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        assert!(probe(&spec, closed).await.is_err());
    }
}
