//! A bounded load generator: a fixed number of requests over a few
//! concurrent tasks, each on keep-alive connections of a fixed number of
//! requests, with an overall deadline. It counts successes and failures.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::{Answer, Conn};

/// How much load, and how fast.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Requests in all.
    pub total: usize,
    /// Concurrent tasks (each with one connection at a time).
    pub concurrency: usize,
    /// Requests per connection before a task opens a new one.
    pub per_conn: usize,
    /// Pause after each request (paces the load so it spans an event).
    pub pause: Duration,
    /// Whatever has not finished by then counts as failed.
    pub deadline: Duration,
    pub path: String,
}

/// One connection the load opened.
#[derive(Clone, Debug)]
pub struct ConnRecord {
    pub opened: Instant,
    /// What the connect function said about it (e.g. the director).
    pub tag: u32,
    /// The node that answered its first request.
    pub node: Option<String>,
}

#[derive(Debug)]
pub struct LoadReport {
    pub total: usize,
    pub ok: usize,
    pub failed: usize,
    /// The first few failures, with what went wrong.
    pub errors: Vec<String>,
    pub conns: Vec<ConnRecord>,
    /// Successful requests per node (x-tandem-node).
    pub by_node: BTreeMap<String, usize>,
    pub started: Instant,
    pub elapsed: Duration,
}

impl LoadReport {
    fn new(total: usize) -> Self {
        LoadReport {
            total,
            ok: 0,
            failed: 0,
            errors: Vec::new(),
            conns: Vec::new(),
            by_node: BTreeMap::new(),
            started: Instant::now(),
            elapsed: Duration::ZERO,
        }
    }

    fn fail(&mut self, what: String) {
        self.failed += 1;
        if self.errors.len() < 10 {
            self.errors.push(what);
        }
    }

    /// Nodes that connections opened after `t` reached, with counts.
    pub fn nodes_of_conns_after(&self, t: Instant) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for c in self.conns.iter().filter(|c| c.opened > t) {
            if let Some(n) = &c.node {
                *m.entry(n.clone()).or_insert(0) += 1;
            }
        }
        m
    }

    pub fn summary(&self) -> String {
        format!(
            "{} requests: {} ok, {} failed in {:.1?} over {} connections; per node {:?}; first errors {:?}",
            self.total,
            self.ok,
            self.failed,
            self.elapsed,
            self.conns.len(),
            self.by_node,
            self.errors
        )
    }
}

pub type ConnectFn =
    Arc<dyn Fn(usize) -> Pin<Box<dyn Future<Output = Result<(Conn, u32)>> + Send>> + Send + Sync>;
pub type CheckFn = Arc<dyn Fn(&Answer) -> Result<()> + Send + Sync>;

/// Running load.
pub struct Load {
    done: Arc<AtomicUsize>,
    next: Arc<AtomicUsize>,
    limit: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<LoadReport>,
}

impl Load {
    /// Starts the load in the background. `connect(i)` opens the i-th
    /// connection; `check` says whether an answer counts as a success.
    pub fn start(spec: LoadSpec, connect: ConnectFn, check: CheckFn) -> Load {
        let done = Arc::new(AtomicUsize::new(0));
        let next = Arc::new(AtomicUsize::new(0));
        let limit = Arc::new(AtomicUsize::new(spec.total));
        let task = tokio::spawn(run(
            spec,
            connect,
            check,
            done.clone(),
            next.clone(),
            limit.clone(),
        ));
        Load {
            done,
            next,
            limit,
            task,
        }
    }

    /// Lets the requests already started finish and starts no more: the
    /// load then ends with fewer than `total` requests (all counted).
    pub fn stop(&self) {
        let claimed = self.next.load(Ordering::SeqCst);
        self.limit.fetch_min(claimed, Ordering::SeqCst);
    }

    /// Runs `n` more requests, then stops.
    pub async fn finish_after(self, n: usize) -> LoadReport {
        self.until(self.done() + n).await;
        self.stop();
        self.finish().await
    }

    /// Requests finished (either way) so far.
    pub fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits until at least `n` requests have finished (or the load ended).
    pub async fn until(&self, n: usize) {
        while self.done() < n && !self.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn finish(self) -> LoadReport {
        match self.task.await {
            Ok(r) => r,
            Err(e) => {
                let mut r = LoadReport::new(0);
                r.fail(format!("load task failed: {e}"));
                r
            }
        }
    }
}

async fn run(
    spec: LoadSpec,
    connect: ConnectFn,
    check: CheckFn,
    done: Arc<AtomicUsize>,
    next: Arc<AtomicUsize>,
    limit: Arc<AtomicUsize>,
) -> LoadReport {
    let report = Arc::new(Mutex::new(LoadReport::new(spec.total)));
    let conns = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..spec.concurrency.max(1) {
        let (spec, connect, check) = (spec.clone(), connect.clone(), check.clone());
        let (report, next, conns, done) =
            (report.clone(), next.clone(), conns.clone(), done.clone());
        let limit = limit.clone();
        tasks.spawn(async move {
            let mut conn: Option<(Conn, usize, usize)> = None; // (conn, record index, used)
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= limit.load(Ordering::SeqCst) {
                    return;
                }
                if conn
                    .as_ref()
                    .is_some_and(|(_, _, used)| *used >= spec.per_conn)
                {
                    conn = None;
                }
                if conn.is_none() {
                    let k = conns.fetch_add(1, Ordering::Relaxed);
                    let opened = Instant::now();
                    match tokio::time::timeout(Duration::from_secs(10), connect(k)).await {
                        Ok(Ok((c, tag))) => {
                            let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
                            r.conns.push(ConnRecord {
                                opened,
                                tag,
                                node: None,
                            });
                            conn = Some((c, r.conns.len() - 1, 0));
                        }
                        Ok(Err(e)) => {
                            report
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .fail(format!("request {i}: connect #{k}: {e:#}"));
                            done.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(spec.pause).await;
                            continue;
                        }
                        Err(_) => {
                            report
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .fail(format!("request {i}: connect #{k} timed out"));
                            done.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                let (c, idx, used) = conn.as_mut().expect("connection");
                *used += 1;
                let res = tokio::time::timeout(Duration::from_secs(10), c.get(&spec.path)).await;
                let outcome = match res {
                    Ok(Ok(a)) => match check(&a) {
                        Ok(()) => Ok(a),
                        Err(e) => Err(format!("request {i}: {e:#}")),
                    },
                    Ok(Err(e)) => Err(format!("request {i}: {e:#}")),
                    Err(_) => Err(format!("request {i}: no answer in 10 s")),
                };
                {
                    let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
                    match outcome {
                        Ok(a) => {
                            r.ok += 1;
                            if let Some(n) = &a.node {
                                *r.by_node.entry(n.clone()).or_insert(0) += 1;
                                let rec = &mut r.conns[*idx];
                                if rec.node.is_none() {
                                    rec.node = Some(n.clone());
                                }
                            }
                        }
                        Err(e) => {
                            r.fail(e);
                            conn = None;
                        }
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(spec.pause).await;
            }
        });
    }
    let all = async { while tasks.join_next().await.is_some() {} };
    let timed_out = tokio::time::timeout(spec.deadline, all).await.is_err();
    let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
    // Requests run: every claimed index below the (possibly lowered) limit.
    let total = next
        .load(Ordering::SeqCst)
        .min(limit.load(Ordering::SeqCst));
    let mut out = LoadReport::new(total);
    std::mem::swap(&mut out, &mut r);
    drop(r);
    out.total = total;
    out.started = started;
    out.elapsed = started.elapsed();
    if timed_out {
        let missing = out.total.saturating_sub(out.ok + out.failed);
        out.failed += missing;
        out.errors.push(format!(
            "deadline {:?}: {missing} requests never finished",
            spec.deadline
        ));
    }
    out
}
