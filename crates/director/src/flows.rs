//! The flow table: every open flow, the node it is bound to, and a way to end
//! it. Proxy mode pins a flow to its node by construction (the relay holds
//! the node connection); the table is what lets the director see and manage
//! those flows: drain deadlines, counts per node, shutdown.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct Entry {
    service: String,
    node: String,
    client: SocketAddr,
    cancel: CancellationToken,
    /// When set, the flow is closed at this instant (its node is draining).
    deadline: Option<Instant>,
}

/// Open flows, by id.
#[derive(Debug, Default)]
pub struct FlowTable {
    next: AtomicU64,
    flows: Mutex<HashMap<u64, Entry>>,
}

/// Removes its flow from the table when dropped.
pub struct FlowGuard<'a> {
    table: &'a FlowTable,
    id: u64,
    pub cancel: CancellationToken,
}

impl Drop for FlowGuard<'_> {
    fn drop(&mut self) {
        self.table.lock().remove(&self.id);
    }
}

impl FlowTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.flows.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, service: &str, node: &str, client: SocketAddr) -> FlowGuard<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        self.lock().insert(
            id,
            Entry {
                service: service.to_string(),
                node: node.to_string(),
                client,
                cancel: cancel.clone(),
                deadline: None,
            },
        );
        FlowGuard {
            table: self,
            id,
            cancel,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Flows of `service` bound to a node not in `serving` get `deadline`
    /// (if they have none yet); flows whose node serves again lose theirs.
    pub fn set_drain_deadlines(&self, service: &str, serving: &HashSet<String>, deadline: Instant) {
        for e in self.lock().values_mut().filter(|e| e.service == service) {
            if serving.contains(&e.node) {
                e.deadline = None;
            } else if e.deadline.is_none() {
                tracing::debug!(service, node = %e.node, client = %e.client, "flow on a draining node: closing at the drain deadline");
                e.deadline = Some(deadline);
            }
        }
    }

    /// Closes flows whose deadline has passed; returns how many.
    pub fn reap(&self, now: Instant) -> usize {
        let mut n = 0;
        for e in self.lock().values() {
            if e.deadline.is_some_and(|d| d <= now) && !e.cancel.is_cancelled() {
                tracing::info!(service = %e.service, node = %e.node, client = %e.client, "drain timeout: closing flow");
                e.cancel.cancel();
                n += 1;
            }
        }
        n
    }

    /// Closes every flow (end of a drain on shutdown).
    pub fn cancel_all(&self) {
        for e in self.lock().values() {
            e.cancel.cancel();
        }
    }
}
