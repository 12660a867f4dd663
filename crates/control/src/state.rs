//! The current desired state: the snapshot in memory, its version, the
//! fan-out to watchers, and the table of subscribers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use control_api::pb::{AuditRecord, Change, Snapshot, StatusResponse, SubscriberStatus, Tier};
use observe::Readiness;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::auth::Principal;
use crate::changes::{ChangeError, apply_changes, describe};
use crate::metrics::{ApplyResult, Metrics};
use crate::store::{RedbStore, Store, StoreError};
use crate::validate::{ValidationError, validate};

/// Why an Apply was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("no changes given")]
    Empty,
    #[error("state is at version {current}, not the expected {expected}; read it again and retry")]
    Aborted { current: u64, expected: u64 },
    #[error(transparent)]
    Change(#[from] ChangeError),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("saving the state: {0}")]
    Store(#[from] StoreError),
    #[error("apply task failed: {0}")]
    Task(String),
}

impl From<ApplyError> for tonic::Status {
    fn from(e: ApplyError) -> Self {
        let msg = e.to_string();
        match e {
            ApplyError::Empty | ApplyError::Invalid(_) => tonic::Status::invalid_argument(msg),
            ApplyError::Change(ChangeError::NotFound { .. }) => tonic::Status::not_found(msg),
            ApplyError::Change(_) => tonic::Status::invalid_argument(msg),
            ApplyError::Aborted { .. } => tonic::Status::aborted(msg),
            ApplyError::Store(_) => tonic::Status::unavailable(msg),
            ApplyError::Task(_) => tonic::Status::internal(msg),
        }
    }
}

#[derive(Debug)]
struct Entry {
    tier: Tier,
    /// Watch streams open for this id right now.
    open_streams: u32,
    /// The latest stream for this id: only its answers are recorded.
    latest_stream: u64,
    acked_version: u64,
    last_error: String,
    last_seen_unix_ms: u64,
    node_health: Vec<control_api::pb::NodeHealth>,
    /// Version of the last snapshot sent to the latest stream.
    sent_version: u64,
    /// Newest version whose (filtered) config equals the one sent: an ACK
    /// of `sent_version` stands for it too.
    equivalent_version: u64,
}

#[derive(Debug, Default)]
struct Subscribers {
    by_id: BTreeMap<String, Entry>,
    next_stream: u64,
}

impl Subscribers {
    fn connected(&self) -> u64 {
        self.by_id.values().filter(|e| e.open_streams > 0).count() as u64
    }
}

/// The control service's state. Shared as `Arc<State>`.
pub struct State {
    store: Arc<dyn Store>,
    current: watch::Sender<Arc<Snapshot>>,
    apply_lock: tokio::sync::Mutex<()>,
    subscribers: std::sync::Mutex<Subscribers>,
    metrics: Metrics,
    registry: Arc<Registry>,
    readiness: Readiness,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl State {
    /// Opens the embedded store in `data_dir` (created if missing) and loads
    /// the last saved snapshot, or starts empty at version 0.
    pub fn open(data_dir: &Path) -> Result<Arc<State>, crate::ControlError> {
        std::fs::create_dir_all(data_dir).map_err(|source| crate::ControlError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let store = RedbStore::open(data_dir)?;
        Ok(Self::with_store(Arc::new(store))?)
    }

    /// Loads the state from any store.
    pub fn with_store(store: Arc<dyn Store>) -> Result<Arc<State>, StoreError> {
        let snapshot = store.load()?.unwrap_or_default();
        if let Err(e) = validate(&snapshot) {
            // Rules may have become stricter since it was saved; keep serving it.
            tracing::warn!(version = snapshot.version, error = %e, "stored state does not pass validation");
        }
        tracing::info!(
            version = snapshot.version,
            services = snapshot.services.len(),
            nodes = snapshot.nodes.len(),
            clusters = snapshot.clusters.len(),
            routes = snapshot.routes.len(),
            certificates = snapshot.certificates.len(),
            "loaded control state"
        );
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.set_version(snapshot.version);
        let (current, _) = watch::channel(Arc::new(snapshot));
        Ok(Arc::new(State {
            store,
            current,
            apply_lock: tokio::sync::Mutex::new(()),
            subscribers: std::sync::Mutex::new(Subscribers::default()),
            metrics,
            registry: Arc::new(registry),
            readiness: Readiness::default(),
        }))
    }

    /// The current snapshot (its `version` field is the current version).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.borrow().clone()
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.current.borrow().version
    }

    /// A receiver that sees every new snapshot (bursts coalesce).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.current.subscribe()
    }

    /// The metrics registry (for the admin endpoint).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Readiness of the service: true while the gRPC server is serving.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Applies a batch atomically: every change in order on a copy, validate
    /// the result, save it, then publish it as version + 1. Calls are
    /// serialized. Returns the new version.
    ///
    /// The work runs in its own task, so a caller that goes away (a cancelled
    /// RPC) cannot leave a save without its publish.
    pub async fn apply(
        self: &Arc<Self>,
        changes: Vec<Change>,
        expected_version: u64,
    ) -> Result<u64, ApplyError> {
        self.apply_as(changes, expected_version, Principal::anonymous(), None)
            .await
    }

    /// [`State::apply`] on behalf of `who` (calling from `peer`), recorded
    /// in the audit trail together with the new state.
    pub async fn apply_as(
        self: &Arc<Self>,
        changes: Vec<Change>,
        expected_version: u64,
        who: Principal,
        peer: Option<String>,
    ) -> Result<u64, ApplyError> {
        let this = self.clone();
        let result = tokio::spawn(async move {
            let result = this
                .apply_serialized(&changes, expected_version, &who, peer)
                .await;
            this.metrics.apply(match &result {
                Ok(_) => ApplyResult::Ok,
                Err(ApplyError::Aborted { .. }) => ApplyResult::Aborted,
                Err(ApplyError::Store(_) | ApplyError::Task(_)) => ApplyResult::Error,
                Err(_) => ApplyResult::Invalid,
            });
            result
        })
        .await
        .map_err(|e| ApplyError::Task(e.to_string()))?;
        if let Err(e) = &result {
            tracing::info!(error = %e, "change refused");
        }
        result
    }

    async fn apply_serialized(
        &self,
        changes: &[Change],
        expected_version: u64,
        who: &Principal,
        peer: Option<String>,
    ) -> Result<u64, ApplyError> {
        if changes.is_empty() {
            return Err(ApplyError::Empty);
        }
        let _guard = self.apply_lock.lock().await;
        let base = self.snapshot();
        if expected_version != 0 && expected_version != base.version {
            return Err(ApplyError::Aborted {
                current: base.version,
                expected: expected_version,
            });
        }
        let mut next = apply_changes(&base, changes)?;
        validate(&next)?;
        next.version = base.version + 1;
        let record = AuditRecord {
            version: next.version,
            unix_ms: now_unix_ms(),
            who: who.name.clone(),
            role: who.role_name().to_string(),
            changes: changes.iter().map(describe).collect(),
            peer: peer.unwrap_or_default(),
        };
        let store = self.store.clone();
        let next = tokio::task::spawn_blocking(move || store.commit(&next, &record).map(|()| next))
            .await
            .map_err(|e| ApplyError::Task(e.to_string()))??;
        let version = next.version;
        self.current.send_replace(Arc::new(next));
        self.metrics.set_version(version);
        tracing::info!(version, changes = changes.len(), who = %who.name, "applied change");
        Ok(version)
    }

    /// The newest `limit` audit records, newest first.
    pub async fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.audit(limit))
            .await
            .map_err(|_| StoreError::Poisoned)?
    }

    /// Every subscriber (sorted by id) and the current version.
    pub fn status(&self) -> StatusResponse {
        let version = self.version();
        let subs = self.lock_subscribers();
        StatusResponse {
            version,
            subscribers: subs
                .by_id
                .iter()
                .map(|(id, e)| SubscriberStatus {
                    id: id.clone(),
                    tier: e.tier as i32,
                    connected: e.open_streams > 0,
                    acked_version: e.acked_version,
                    last_error: e.last_error.clone(),
                    last_seen_unix_ms: e.last_seen_unix_ms,
                    node_health: e.node_health.clone(),
                })
                .collect(),
        }
    }

    fn lock_subscribers(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        // The table stays consistent even if a holder panicked.
        self.subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a new watch stream for `id`. The later of two streams with the
    /// same id wins: only its answers are recorded. Dropping the returned
    /// handle records the stream's end.
    pub fn connect(self: &Arc<Self>, id: &str, tier: Tier) -> SubscriberHandle {
        let mut subs = self.lock_subscribers();
        subs.next_stream += 1;
        let stream = subs.next_stream;
        let now = now_unix_ms();
        let e = subs.by_id.entry(id.to_string()).or_insert_with(|| Entry {
            tier,
            open_streams: 0,
            latest_stream: 0,
            acked_version: 0,
            last_error: String::new(),
            last_seen_unix_ms: now,
            node_health: Vec::new(),
            sent_version: 0,
            equivalent_version: 0,
        });
        e.tier = tier;
        e.open_streams += 1;
        e.latest_stream = stream;
        e.last_seen_unix_ms = now;
        e.sent_version = 0;
        e.equivalent_version = 0;
        let open = e.open_streams;
        let connected = subs.connected();
        drop(subs);
        self.metrics.set_subscribers_connected(connected);
        tracing::info!(id, tier = ?tier, streams = open, "subscriber connected");
        SubscriberHandle {
            state: self.clone(),
            id: id.to_string(),
            stream,
        }
    }
}

/// One open watch stream of a subscriber. Dropping it marks the stream closed.
#[derive(Debug)]
pub struct SubscriberHandle {
    state: Arc<State>,
    id: String,
    stream: u64,
}

impl SubscriberHandle {
    /// Records an answer: an ACK (empty `error`) of `version`, or a NACK.
    pub fn answer(&self, version: u64, error: &str) {
        let mut subs = self.state.lock_subscribers();
        let Some(e) = subs.by_id.get_mut(&self.id) else {
            return;
        };
        if e.latest_stream != self.stream {
            // A newer stream for this id took over; this one's answers are stale.
            return;
        }
        e.last_seen_unix_ms = now_unix_ms();
        if error.is_empty() {
            e.acked_version = if version == e.sent_version {
                e.equivalent_version.max(version)
            } else {
                version
            };
            e.last_error.clear();
            drop(subs);
            tracing::debug!(id = %self.id, version, "subscriber ACK");
        } else {
            e.last_error = error.to_string();
            drop(subs);
            tracing::warn!(id = %self.id, version, error, "subscriber NACK: refused the config");
        }
    }

    /// Records that `version` was sent on this stream.
    pub fn sent(&self, version: u64) {
        self.with_entry(|e| {
            e.sent_version = version;
            e.equivalent_version = version;
        });
    }

    /// Records that `version` changed nothing this subscriber sees: nothing
    /// is sent, and an ACK of what was sent stands for `version` too.
    pub fn unchanged(&self, version: u64) {
        self.with_entry(|e| {
            e.equivalent_version = version;
            // It applied what was sent (or an equivalent since): it runs
            // `version` too.
            if e.sent_version != 0 && e.acked_version >= e.sent_version && e.last_error.is_empty() {
                e.acked_version = version;
            }
        });
    }

    fn with_entry(&self, f: impl FnOnce(&mut Entry)) {
        let mut subs = self.state.lock_subscribers();
        if let Some(e) = subs.by_id.get_mut(&self.id)
            && e.latest_stream == self.stream
        {
            f(e);
        }
    }

    /// Records the node health this subscriber (a director) reports.
    pub fn report_health(&self, mut nodes: Vec<control_api::pb::NodeHealth>) {
        let mut subs = self.state.lock_subscribers();
        let Some(e) = subs.by_id.get_mut(&self.id) else {
            return;
        };
        if e.latest_stream != self.stream {
            return;
        }
        e.last_seen_unix_ms = now_unix_ms();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        for n in nodes.iter().filter(|n| !n.healthy) {
            tracing::info!(reporter = %self.id, node = %n.node_id, detail = %n.detail, "node reported unhealthy");
        }
        e.node_health = nodes;
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for SubscriberHandle {
    fn drop(&mut self) {
        let mut subs = self.state.lock_subscribers();
        let mut left = 0;
        if let Some(e) = subs.by_id.get_mut(&self.id) {
            e.open_streams = e.open_streams.saturating_sub(1);
            left = e.open_streams;
        }
        let connected = subs.connected();
        drop(subs);
        self.state.metrics.set_subscribers_connected(connected);
        tracing::info!(id = %self.id, streams = left, "subscriber disconnected");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use control_api::pb::{Node, change};

    fn put_node(id: &str, addr: &str) -> Change {
        Change {
            change: Some(change::Change::PutNode(Node {
                id: id.into(),
                address: addr.into(),
                weight: 100,
                pool: "default".into(),
                ..Default::default()
            })),
        }
    }

    #[tokio::test]
    async fn versions_and_refusals() {
        let state = State::with_store(Arc::new(MemoryStore::default())).expect("opens");
        assert_eq!(state.version(), 0);
        let mut rx = state.subscribe();
        let v = state
            .apply(vec![put_node("a", "127.0.0.1:1")], 0)
            .await
            .expect("applies");
        assert_eq!(v, 1);
        assert!(rx.has_changed().expect("open"));
        assert_eq!(rx.borrow_and_update().nodes.len(), 1);

        assert!(matches!(
            state.apply(vec![], 0).await,
            Err(ApplyError::Empty)
        ));
        assert!(matches!(
            state.apply(vec![put_node("b", "127.0.0.1:2")], 7).await,
            Err(ApplyError::Aborted {
                current: 1,
                expected: 7
            })
        ));
        // Half-valid batch: nothing applied.
        assert!(matches!(
            state
                .apply(vec![put_node("b", "127.0.0.1:2"), put_node("c", "nope")], 1)
                .await,
            Err(ApplyError::Invalid(_))
        ));
        assert_eq!(state.version(), 1);
        assert_eq!(state.snapshot().nodes.len(), 1);
        assert!(!rx.has_changed().expect("open"));
    }

    #[test]
    fn later_stream_wins_and_connected_while_any_open() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let _enter = rt.enter();
        let state = State::with_store(Arc::new(MemoryStore::default())).expect("opens");
        let first = state.connect("n1", Tier::Node);
        let second = state.connect("n1", Tier::Node);
        first.answer(5, "");
        second.answer(3, "");
        let s = state.status();
        assert_eq!(s.subscribers.len(), 1);
        assert_eq!(s.subscribers[0].acked_version, 3);
        drop(second);
        assert!(state.status().subscribers[0].connected);
        drop(first);
        assert!(!state.status().subscribers[0].connected);
    }
}
