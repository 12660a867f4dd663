//! The control service's Prometheus metrics.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

    pub fn set_subscribers_connected(&self, n: u64) {
        self.subscribers_connected.set(n);
    }
}

fn labels(r: ApplyResult) -> Vec<(String, String)> {
    vec![("result".to_string(), r.label().to_string())]
}
