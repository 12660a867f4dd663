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
use crate::store::{RedbStore, Store, StoreError, StoreEvent};
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
    /// Another control instance committed a change on the same base first
    /// (shared store). Nothing was changed.
    #[error(
        "state changed concurrently: version {current} was committed by another control instance while this change was based on version {base}; read the state again and retry"
    )]
    Concurrent { base: u64, current: u64 },
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
            ApplyError::Aborted { .. } | ApplyError::Concurrent { .. } => {
                tonic::Status::aborted(msg)
            }
            ApplyError::Store(StoreError::Backend { .. }) => {
                tonic::Status::failed_precondition(msg)
            }
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
    /// The store is shared with other control instances (it has a watch).
    shared_store: std::sync::atomic::AtomicBool,
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

/// Times a change without a base version is applied again after another
/// instance committed first, before it is refused with `ABORTED`.
const MAX_CONFLICT_RETRIES: u32 = 5;

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
        let state = Arc::new(State {
            store,
            shared_store: std::sync::atomic::AtomicBool::new(false),
            current,
            apply_lock: tokio::sync::Mutex::new(()),
            subscribers: std::sync::Mutex::new(Subscribers::default()),
            metrics,
            registry: Arc::new(registry),
            readiness: Readiness::default(),
        });
        state.follow_store();
        Ok(state)
    }

    /// With a store shared by several control instances: adopts every newer
    /// snapshot another instance commits, so this instance's subscribers get
    /// it too. The task ends when the state (and so the store) is dropped.
    fn follow_store(self: &Arc<Self>) {
        let Some(mut events) = self.store.watch() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                store = %self.store.describe(),
                "no async runtime: changes made through other control instances will not be seen"
            );
            return;
        };
        self.shared_store
            .store(true, std::sync::atomic::Ordering::Release);
        runtime.spawn(publish_subscribers(Arc::downgrade(self)));
        let state = Arc::downgrade(self);
        runtime.spawn(async move {
            while let Some(event) = events.recv().await {
                let Some(state) = state.upgrade() else { break };
                match event {
                    StoreEvent::Snapshot(snapshot) => {
                        let _guard = state.apply_lock.lock().await;
                        state.adopt(*snapshot);
                    }
                    StoreEvent::Error(reason) => {
                        state.metrics.store_error("watch");
                        tracing::debug!(%reason, "state store watch failed; retrying");
                    }
                }
            }
        });
    }

    /// Publishes `snapshot`, read from the store, if it is newer than the
    /// current one (another instance committed it). Call with the apply
    /// lock held. Returns whether it was newer.
    fn adopt(&self, snapshot: Snapshot) -> bool {
        let current = self.version();
        if snapshot.version <= current {
            return false;
        }
        let version = snapshot.version;
        self.current.send_replace(Arc::new(snapshot));
        self.metrics.set_version(version);
        self.metrics.state_reloaded();
        tracing::info!(
            version,
            previous = current,
            "loaded state committed by another control instance"
        );
        true
    }

    /// Reads the stored snapshot and adopts it if newer (after a conflict).
    async fn reload(&self) -> Result<(), ApplyError> {
        let store = self.store.clone();
        let loaded = tokio::task::spawn_blocking(move || store.load())
            .await
            .map_err(|e| ApplyError::Task(e.to_string()))?;
        match loaded {
            Ok(Some(snapshot)) => {
                self.adopt(snapshot);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                self.metrics.store_error("load");
                Err(e.into())
            }
        }
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

    /// The control service's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
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
                Err(ApplyError::Aborted { .. } | ApplyError::Concurrent { .. }) => {
                    ApplyResult::Aborted
                }
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
        let mut attempt = 1;
        loop {
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
                peer: peer.clone().unwrap_or_default(),
            };
            let store = self.store.clone();
            let started = std::time::Instant::now();
            let committed = tokio::task::spawn_blocking(move || {
                store.commit(base.version, &next, &record).map(|()| next)
            })
            .await
            .map_err(|e| ApplyError::Task(e.to_string()))?;
            match committed {
                Ok(next) => {
                    self.metrics.store_commit(started.elapsed().as_secs_f64());
                    let version = next.version;
                    self.current.send_replace(Arc::new(next));
                    self.metrics.set_version(version);
                    tracing::info!(version, changes = changes.len(), who = %who.name, "applied change");
                    return Ok(version);
                }
                Err(StoreError::Conflict { base, current }) => {
                    // Another instance committed first: catch up with it.
                    self.reload().await?;
                    // A change that named its base is refused; one that did
                    // not is applied again on the newer state, a few times.
                    if expected_version != 0 || attempt >= MAX_CONFLICT_RETRIES {
                        return Err(ApplyError::Concurrent {
                            base,
                            current: current.max(self.version()),
                        });
                    }
                    tracing::info!(
                        base,
                        current,
                        attempt,
                        "state changed concurrently; applying the change again on the newer state"
                    );
                    attempt += 1;
                }
                Err(e) => {
                    self.metrics.store_error("commit");
                    return Err(e.into());
                }
            }
        }
    }

    /// The newest `limit` audit records, newest first.
    pub async fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || store.audit(limit))
            .await
            .map_err(|_| StoreError::Poisoned)?;
        if result.is_err() {
            self.metrics.store_error("audit");
        }
        result
    }

    /// The store holding the state (for logs).
    pub fn store_description(&self) -> String {
        self.store.describe()
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

    /// [`State::status`], and with a shared store also the subscribers of
    /// the other control instances: per id, the entry of an instance it is
    /// connected to, else the one that saw it last. If the store cannot be
    /// read, this instance's subscribers only.
    pub async fn status_all(&self) -> StatusResponse {
        let mut status = self.status();
        if !self.shared_store.load(std::sync::atomic::Ordering::Acquire) {
            return status;
        }
        let store = self.store.clone();
        let peers = match tokio::task::spawn_blocking(move || store.peer_subscribers()).await {
            Ok(Ok(peers)) => peers,
            Ok(Err(e)) => {
                self.metrics.store_error("peers");
                tracing::warn!(error = %e, "status: the other instances' subscribers are unknown");
                return status;
            }
            Err(e) => {
                tracing::warn!(error = %e, "status: reading the other instances' subscribers failed");
                return status;
            }
        };
        let mut by_id: BTreeMap<String, SubscriberStatus> = status
            .subscribers
            .drain(..)
            .map(|s| (s.id.clone(), s))
            .collect();
        for entry in peers.into_iter().flatten() {
            match by_id.get(&entry.id) {
                Some(have)
                    if (have.connected, have.last_seen_unix_ms)
                        >= (entry.connected, entry.last_seen_unix_ms) => {}
                _ => {
                    by_id.insert(entry.id.clone(), entry);
                }
            }
        }
        status.subscribers = by_id.into_values().collect();
        status
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

/// How often a changed subscriber table is published to a shared store, and
/// how often an unchanged one is renewed (well within `PEER_TABLE_TTL`).
const PUBLISH_CHANGED: std::time::Duration = std::time::Duration::from_secs(1);
const PUBLISH_RENEW: std::time::Duration = std::time::Duration::from_secs(3);

/// Publishes this instance's subscriber table to the shared store while the
/// state lives.
async fn publish_subscribers(state: std::sync::Weak<State>) {
    let mut last: Option<(Vec<SubscriberStatus>, std::time::Instant)> = None;
    loop {
        tokio::time::sleep(PUBLISH_CHANGED).await;
        let Some(s) = state.upgrade() else { return };
        let table = s.status().subscribers;
        let due = match &last {
            Some((sent, at)) => *sent != table || at.elapsed() >= PUBLISH_RENEW,
            None => true,
        };
        if !due {
            continue;
        }
        let store = s.store.clone();
        let copy = table.clone();
        match tokio::task::spawn_blocking(move || store.publish_subscribers(&copy)).await {
            Ok(Ok(())) => last = Some((table, std::time::Instant::now())),
            Ok(Err(e)) => {
                s.metrics.store_error("publish");
                tracing::debug!(error = %e, "publishing the subscriber table failed; retrying");
            }
            Err(e) => tracing::warn!(error = %e, "publishing the subscriber table failed"),
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
