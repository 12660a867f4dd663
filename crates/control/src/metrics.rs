//! The control service's Prometheus metrics.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Outcome of one Apply call, the `result` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyResult {
    Ok,
    Invalid,
    Aborted,
    Error,
}

impl ApplyResult {
    fn label(self) -> &'static str {
        match self {
            ApplyResult::Ok => "ok",
            ApplyResult::Invalid => "invalid",
            ApplyResult::Aborted => "aborted",
            ApplyResult::Error => "error",
        }
    }
}

/// `tandem_control_*` metrics.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    changes: Family<Vec<(String, String)>, Counter>,
    version: Gauge<u64, AtomicU64>,
    subscribers_connected: Gauge<u64, AtomicU64>,
    watch_refused: Family<Vec<(String, String)>, Counter>,
    store: StoreMetrics,
}

/// The state store's metrics (any backend).
#[derive(Clone, Debug)]
struct StoreMetrics {
    commit_seconds: Histogram,
    errors: Family<Vec<(String, String)>, Counter>,
    reloaded: Counter,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            // 0.25 ms to about 4 s.
            commit_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 15)),
            errors: Family::default(),
            reloaded: Counter::default(),
        }
    }
}

/// Why a watch was refused before it started, the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchRefusal {
    /// Reconnecting faster than the per-id rate allows.
    Rate,
    /// Watching as an id its credential does not name.
    Identity,
}

impl WatchRefusal {
    fn label(self) -> &'static str {
        match self {
            WatchRefusal::Rate => "rate",
            WatchRefusal::Identity => "identity",
        }
    }
}

impl Metrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tandem_control_changes",
            "Apply calls by result (ok, invalid, aborted, error)",
            self.changes.clone(),
        );
        registry.register(
            "tandem_control_version",
            "Current version of the desired state",
            self.version.clone(),
        );
        registry.register(
            "tandem_control_subscribers_connected",
            "Subscribers (directors, nodes) with an open watch stream",
            self.subscribers_connected.clone(),
        );
        registry.register(
            "tandem_control_watch_refused",
            "Watch streams refused after the hello, by reason (rate: reconnects over the per-id limit; identity: id not the credential's)",
            self.watch_refused.clone(),
        );
        for r in [WatchRefusal::Rate, WatchRefusal::Identity] {
            let _ = self
                .watch_refused
                .get_or_create(&vec![("reason".to_string(), r.label().to_string())]);
        }
        registry.register(
            "tandem_control_store_commit_seconds",
            "Time to commit one change to the state store (redb fsync, etcd transaction)",
            self.store.commit_seconds.clone(),
        );
        registry.register(
            "tandem_control_store_errors",
            "Failed state store operations by op (load, commit, audit; with etcd also watch, publish, peers)",
            self.store.errors.clone(),
        );
        for op in ["load", "commit", "audit"] {
            let _ = self
                .store
                .errors
                .get_or_create(&vec![("op".to_string(), op.to_string())]);
        }
        registry.register(
            "tandem_control_state_reloaded",
            "Newer states loaded from the shared store, committed by another control instance",
            self.store.reloaded.clone(),
        );
        // Make every result visible at 0.
        for r in [ApplyResult::Ok, ApplyResult::Invalid, ApplyResult::Aborted] {
            let _ = self.changes.get_or_create(&labels(r));
        }
    }

    pub fn apply(&self, result: ApplyResult) {
        self.changes.get_or_create(&labels(result)).inc();
    }

    pub fn set_version(&self, v: u64) {
        self.version.set(v);
    }

    pub fn watch_refused(&self, reason: WatchRefusal) {
        self.watch_refused
            .get_or_create(&vec![("reason".to_string(), reason.label().to_string())])
            .inc();
    }

    /// One successful store commit took `seconds`.
    pub fn store_commit(&self, seconds: f64) {
        self.store.commit_seconds.observe(seconds);
    }

    /// A store operation (`load`, `commit`, `audit`, `watch`) failed.
    pub fn store_error(&self, op: &str) {
        self.store
            .errors
            .get_or_create(&vec![("op".to_string(), op.to_string())])
            .inc();
    }

    /// A newer state committed by another instance was loaded.
    pub fn state_reloaded(&self) {
        self.store.reloaded.inc();
    }

    pub fn set_subscribers_connected(&self, n: u64) {
        self.subscribers_connected.set(n);
    }
}

fn labels(r: ApplyResult) -> Vec<(String, String)> {
    vec![("result".to_string(), r.label().to_string())]
}
