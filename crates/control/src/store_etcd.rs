//! The etcd backend: several control instances share one state.
//!
//! Layout under the prefix (default `/tandem`):
//! - `<prefix>/snapshot`: the whole [`Snapshot`] (protobuf), one value;
//! - `<prefix>/audit/<version, 20 digits>`: the [`AuditRecord`] of each version.
//!
//! A commit is one etcd transaction: *if* the snapshot key's mod revision is
//! still the one this instance last saw for the base version, put the new
//! snapshot and its audit record; *else* read the snapshot and answer
//! [`StoreError::Conflict`] with the version found. So two instances can never
//! both commit on the same base, and versions stay identical everywhere.
//!
//! Subscriber status is per instance; each instance also publishes its
//! table under `<prefix>/subscribers/<instance>` with a lease of
//! [`PEER_TABLE_TTL`], renewed by every publish, so the Status RPC of any
//! instance can show every subscriber and a dead instance's table expires.
//!
//! [`Store::watch`] follows the snapshot key: the current value first, then
//! every put, reconnecting with backoff (and reading the key again, so
//! nothing is missed) when etcd goes away.
//!
//! etcd-client is async; [`Store`] is called from blocking threads. The store
//! runs its own small runtime (one worker thread) and the blocking calls wait
//! on it, bounded by the request timeout, from any thread.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use control_api::pb::{AuditRecord, Snapshot, StatusResponse, SubscriberStatus};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use prost::Message;
use tokio::sync::mpsc;

use crate::store::{EtcdConfig, PEER_TABLE_TTL, Store, StoreError, StoreEvent};

/// Largest message taken from etcd (its own request limit is lower, 1.5 MiB
/// by default: `--max-request-bytes` bounds the snapshot size).
const MAX_MESSAGE: usize = 64 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The stored snapshot this instance last saw: its version and the etcd
/// revision that wrote it. A commit on `version` requires `mod_revision`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Seen {
    version: u64,
    mod_revision: i64,
}

struct Shared {
    client: Client,
    snapshot_key: String,
    audit_prefix: String,
    /// `<prefix>/subscribers/`, and this instance's key under it.
    peers_prefix: String,
    own_peer_key: String,
    backend: String,
    seen: Mutex<Seen>,
}

impl Shared {
    /// Records a stored snapshot seen at `mod_revision`, if newer.
    fn saw(&self, version: u64, mod_revision: i64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if mod_revision >= seen.mod_revision {
            *seen = Seen {
                version,
                mod_revision,
            };
        }
    }

    fn seen(&self) -> Seen {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unavailable(&self, op: &'static str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable {
            backend: self.backend.clone(),
            op,
            reason: e.to_string(),
        }
    }

    /// A failed etcd request: `Unavailable` (retry later) unless etcd
    /// refused the request itself (too large, invalid), which retrying does
    /// not fix.
    fn etcd_error(&self, op: &'static str, e: etcd_client::Error) -> StoreError {
        if let etcd_client::Error::GRpcStatus(status) = &e
            && matches!(
                status.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::OutOfRange
            )
        {
            return StoreError::Backend {
                backend: self.backend.clone(),
                reason: format!("etcd refused the {op}: {}", status.message()),
            };
        }
        self.unavailable(op, e)
    }

    fn decode(&self, kv: &KeyValue) -> Result<Snapshot, StoreError> {
        Ok(Snapshot::decode(kv.value())?)
    }
}

/// The state in etcd. See the module documentation.
pub struct EtcdStore {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    request_timeout: Duration,
    watching: Mutex<bool>,
    /// A subscriber table was published (to remove on drop).
    published: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("backend", &self.shared.backend)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Prepares a client for `config.endpoints`. etcd is contacted on the
    /// first call, not here: this fails only on a malformed configuration.
    pub fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        let prefix = config.prefix.trim_end_matches('/').to_string();
        let backend = format!("etcd {} prefix {prefix:?}", config.endpoints.join(","));
        let invalid = |reason: String| StoreError::Backend {
            backend: backend.clone(),
            reason,
        };
        if config.endpoints.is_empty() {
            return Err(invalid("no etcd endpoints given".to_string()));
        }
        if !prefix.starts_with('/') {
            return Err(invalid(format!(
                "the key prefix {:?} must start with '/'",
                config.prefix
            )));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("control-etcd")
            .enable_all()
            .build()
            .map_err(|e| invalid(format!("starting its runtime: {e}")))?;
        let options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        let endpoints = config.endpoints.clone();
        let client = wait(
            &runtime,
            config.request_timeout + config.connect_timeout,
            async move { Client::connect(endpoints, Some(options)).await },
        )
        .map_err(|e| invalid(format!("connecting: {e}")))?
        .map_err(|e| invalid(format!("connecting: {e}")))?;
        // Names this instance's subscriber table; new at every start.
        let instance: u64 = rand::random();
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                snapshot_key: format!("{prefix}/snapshot"),
                audit_prefix: format!("{prefix}/audit/"),
                peers_prefix: format!("{prefix}/subscribers/"),
                own_peer_key: format!("{prefix}/subscribers/{instance:016x}"),
                backend,
                seen: Mutex::new(Seen::default()),
            }),
            runtime: Some(runtime),
            // Room for the client's own timeout to answer first.
            request_timeout: config.request_timeout + Duration::from_secs(1),
            watching: Mutex::new(false),
            published: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Runs `f` on the store's runtime and waits for it.
    fn call<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let Some(rt) = &self.runtime else {
            return Err(self.shared.unavailable(op, "store closed"));
        };
        match wait(rt, self.request_timeout, f) {
            Ok(r) => r,
            Err(e) => Err(self.shared.unavailable(op, e)),
        }
    }

    /// The audit key of `version`: sorts like the number.
    fn audit_key(&self, version: u64) -> String {
        format!("{}{version:020}", self.shared.audit_prefix)
    }
}

/// Why a wait for the store's runtime ended without an answer.
#[derive(Debug, thiserror::Error)]
enum WaitError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the store's runtime stopped")]
    Stopped,
}

/// Spawns `f` on `rt` and blocks this thread until it finishes. Works from
/// any thread, also one that runs another runtime (briefly blocking it).
fn wait<T, F>(rt: &tokio::runtime::Runtime, timeout: Duration, f: F) -> Result<T, WaitError>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(f.await);
    });
    match rx.recv_timeout(timeout) {
        Ok(v) => Ok(v),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(WaitError::Timeout(timeout)),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(WaitError::Stopped),
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside async code; this
        // does not wait (the watch task and open requests are abandoned).
        if let Some(rt) = self.runtime.take() {
            if self.published.load(std::sync::atomic::Ordering::Acquire) {
                // Take this instance's subscribers out of the shared status
                // now rather than at lease expiry (bounded: etcd may be down).
                let shared = self.shared.clone();
                let _ = wait(&rt, Duration::from_millis(500), async move {
                    shared
                        .client
                        .kv_client()
                        .delete(shared.own_peer_key.clone(), None)
                        .await
                });
            }
            rt.shutdown_background();
        }
    }
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Option<Snapshot>, StoreError> {
        let shared = self.shared.clone();
        self.call("load", async move {
            let mut kv = shared
                .client
                .kv_client()
                .max_decoding_message_size(MAX_MESSAGE);
            let resp = kv
                .get(shared.snapshot_key.clone(), None)
                .await
                .map_err(|e| shared.etcd_error("load", e))?;
            match resp.kvs().first() {
                Some(kv) => {
                    let snapshot = shared.decode(kv)?;
                    shared.saw(snapshot.version, kv.mod_revision());
                    Ok(Some(snapshot))
                }
                None => Ok(None),
            }
        })
    }

    fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        let bytes = snapshot.encode_to_vec();
        let version = snapshot.version;
        self.call("save", async move {
            let mut kv = shared.client.kv_client();
            let resp = kv
                .put(shared.snapshot_key.clone(), bytes, None)
                .await
                .map_err(|e| shared.etcd_error("save", e))?;
            if let Some(h) = resp.header() {
                shared.saw(version, h.revision());
            }
            Ok(())
        })
    }

    fn commit(
        &self,
        base_version: u64,
        snapshot: &Snapshot,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let seen = self.shared.seen();
        if seen.version != base_version {
            // This instance already saw a newer (or other) stored version.
            return Err(StoreError::Conflict {
                base: base_version,
                current: seen.version,
            });
        }
        let shared = self.shared.clone();
        let bytes = snapshot.encode_to_vec();
        let record = audit.encode_to_vec();
        let audit_key = self.audit_key(audit.version);
        let version = snapshot.version;
        self.call("commit", async move {
            let key = shared.snapshot_key.clone();
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    seen.mod_revision,
                )])
                .and_then([
                    TxnOp::put(key.clone(), bytes, None),
                    TxnOp::put(audit_key, record, None),
                ])
                .or_else([TxnOp::get(key, None)]);
            let resp = shared
                .client
                .kv_client()
                .max_decoding_message_size(MAX_MESSAGE)
                .txn(txn)
                .await
                .map_err(|e| shared.etcd_error("commit", e))?;
            if resp.succeeded() {
                let revision =
                    resp.header()
                        .map(|h| h.revision())
                        .ok_or_else(|| StoreError::Backend {
                            backend: shared.backend.clone(),
                            reason: "transaction answer without a header".to_string(),
                        })?;
                shared.saw(version, revision);
                return Ok(());
            }
            // Someone else committed: learn what is stored now.
            let mut current = 0;
            for op in resp.op_responses() {
                if let TxnOpResponse::Get(get) = op
                    && let Some(kv) = get.kvs().first()
                {
                    let stored = shared.decode(kv)?;
                    shared.saw(stored.version, kv.mod_revision());
                    current = stored.version;
                }
            }
            Err(StoreError::Conflict {
                base: base_version,
                current,
            })
        })
    }

    fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let shared = self.shared.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call("audit", async move {
            let options = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Key, SortOrder::Descend)
                .with_limit(limit);
            let resp = shared
                .client
                .kv_client()
                .max_decoding_message_size(MAX_MESSAGE)
                .get(shared.audit_prefix.clone(), Some(options))
                .await
                .map_err(|e| shared.etcd_error("audit", e))?;
            resp.kvs()
                .iter()
                .map(|kv| Ok(AuditRecord::decode(kv.value())?))
                .collect()
        })
    }

    fn watch(&self) -> Option<mpsc::Receiver<StoreEvent>> {
        let rt = self.runtime.as_ref()?;
        let mut watching = self.watching.lock().unwrap_or_else(|p| p.into_inner());
        if *watching {
            return None;
        }
        *watching = true;
        let (tx, rx) = mpsc::channel(16);
        rt.spawn(follow(self.shared.clone(), tx));
        Some(rx)
    }

    fn describe(&self) -> String {
        self.shared.backend.clone()
    }

    fn publish_subscribers(&self, table: &[SubscriberStatus]) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        let bytes = StatusResponse {
            version: 0,
            subscribers: table.to_vec(),
        }
        .encode_to_vec();
        self.published
            .store(true, std::sync::atomic::Ordering::Release);
        self.call("publish", async move {
            // A fresh lease each time: the key moves to it, the previous
            // one expires on its own. Two small requests per renewal.
            let mut client = shared.client.clone();
            let ttl = i64::try_from(PEER_TABLE_TTL.as_secs()).unwrap_or(10);
            let lease = client
                .lease_grant(ttl, None)
                .await
                .map_err(|e| shared.etcd_error("publish", e))?;
            client
                .put(
                    shared.own_peer_key.clone(),
                    bytes,
                    Some(PutOptions::new().with_lease(lease.id())),
                )
                .await
                .map_err(|e| shared.etcd_error("publish", e))?;
            Ok(())
        })
    }

    fn peer_subscribers(&self) -> Result<Vec<Vec<SubscriberStatus>>, StoreError> {
        let shared = self.shared.clone();
        self.call("peers", async move {
            let resp = shared
                .client
                .kv_client()
                .max_decoding_message_size(MAX_MESSAGE)
                .get(
                    shared.peers_prefix.clone(),
                    Some(GetOptions::new().with_prefix()),
                )
                .await
                .map_err(|e| shared.etcd_error("peers", e))?;
            resp.kvs()
                .iter()
                .filter(|kv| kv.key() != shared.own_peer_key.as_bytes())
                .map(|kv| Ok(StatusResponse::decode(kv.value())?.subscribers))
                .collect()
        })
    }
}

/// Reads the snapshot key, then watches it from the next revision; on any
/// failure waits (exponential backoff) and starts over. Ends when the
/// receiver is gone.
async fn follow(shared: Arc<Shared>, tx: mpsc::Sender<StoreEvent>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match follow_once(&shared, &tx, &mut backoff).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(backend = %shared.backend, error = %e, retry_in = ?backoff, "etcd watch failed");
                if tx.send(StoreEvent::Error(e.to_string())).await.is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One watch session. `Ok` when the receiver went away.
async fn follow_once(
    shared: &Shared,
    tx: &mpsc::Sender<StoreEvent>,
    backoff: &mut Duration,
) -> Result<(), StoreError> {
    let key = shared.snapshot_key.clone();
    let mut kv = shared
        .client
        .kv_client()
        .max_decoding_message_size(MAX_MESSAGE);
    let resp = kv
        .get(key.clone(), None)
        .await
        .map_err(|e| shared.etcd_error("watch", e))?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    if let Some(kv) = resp.kvs().first()
        && !deliver(shared, tx, kv).await?
    {
        return Ok(());
    }
    let mut stream = shared
        .client
        .watch_client()
        .max_decoding_message_size(MAX_MESSAGE)
        .watch(
            key,
            Some(WatchOptions::new().with_start_revision(revision + 1)),
        )
        .await
        .map_err(|e| shared.etcd_error("watch", e))?;
    tracing::debug!(backend = %shared.backend, revision, "watching the etcd state");
    *backoff = BACKOFF_MIN;
    loop {
        let msg = tokio::select! {
            _ = tx.closed() => return Ok(()),
            msg = stream.message() => msg.map_err(|e| shared.etcd_error("watch", e))?,
        };
        let Some(msg) = msg else {
            return Err(shared.unavailable("watch", "etcd ended the watch stream"));
        };
        if msg.canceled() {
            return Err(shared.unavailable(
                "watch",
                format!(
                    "etcd cancelled the watch (compacted at {}): {}",
                    msg.compact_revision(),
                    msg.cancel_reason()
                ),
            ));
        }
        for event in msg.events() {
            match (event.event_type(), event.kv()) {
                (EventType::Put, Some(kv)) => {
                    if !deliver(shared, tx, kv).await? {
                        return Ok(());
                    }
                }
                (EventType::Delete, _) => {
                    tracing::warn!(key = %shared.snapshot_key, "the state key was deleted in etcd; keeping the last state");
                }
                (EventType::Put, None) => {}
            }
        }
    }
}

/// Decodes and sends one stored snapshot. `Ok(false)`: receiver gone.
async fn deliver(
    shared: &Shared,
    tx: &mpsc::Sender<StoreEvent>,
    kv: &KeyValue,
) -> Result<bool, StoreError> {
    let snapshot = shared.decode(kv)?;
    shared.saw(snapshot.version, kv.mod_revision());
    Ok(tx
        .send(StoreEvent::Snapshot(Box::new(snapshot)))
        .await
        .is_ok())
}
