//! Durable storage of the desired state.
//!
//! The whole [`Snapshot`] (with its version) is stored as one value. The
//! [`Store`] trait keeps the backend replaceable: [`RedbStore`] is the
//! embedded default, [`EtcdStore`](crate::store_etcd::EtcdStore) lets several
//! control instances share one state, and [`MemoryStore`] serves tests.
//!
//! Every change is a [`Store::commit`] on a named base version: a backend
//! refuses it with [`StoreError::Conflict`] when the stored state is no longer
//! that version (another control instance committed first), so two changes
//! can never both be built on the same base.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use control_api::pb::{AuditRecord, Snapshot, SubscriberStatus};
use prost::Message;

/// Errors of the durable store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening state database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("state database: {0}")]
    Db(#[from] redb::Error),
    #[error("stored state is corrupt: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("state store poisoned")]
    Poisoned,
    /// The stored state is no longer the version the change was built on:
    /// another control instance committed first. Nothing was written; read
    /// the state again and retry.
    #[error(
        "state changed concurrently: the change was based on version {base}, the store holds version {current}; read it again and retry"
    )]
    Conflict { base: u64, current: u64 },
    /// The backend (etcd) could not be reached or did not answer in time.
    /// Safe to retry: a change named by its base version is refused with
    /// `Conflict` if an earlier attempt did land after all.
    #[error("state store {backend} unavailable during {op}: {reason}")]
    Unavailable {
        backend: String,
        op: &'static str,
        reason: String,
    },
    /// The backend answered with something this version does not expect.
    #[error("state store {backend}: {reason}")]
    Backend { backend: String, reason: String },
}

impl StoreError {
    /// Whether the same call may succeed later unchanged (the backend was
    /// unreachable), as opposed to a conflict or corrupt data.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// What a store's [`Store::watch`] reports.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreEvent {
    /// A snapshot now stored (committed by this or another instance; the
    /// receiver keeps only versions newer than its own).
    /// (Boxed: a snapshot is large next to the error.)
    Snapshot(Box<Snapshot>),
    /// The watch failed and is being re-established (with backoff).
    Error(String),
}

/// Which backend holds the state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// `<data_dir>/control.redb` (the default): one instance.
    #[default]
    Redb,
    /// A shared etcd cluster: several control instances, one state.
    Etcd(EtcdConfig),
}

/// Where the etcd backend keeps the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix: the snapshot is `<prefix>/snapshot`, the audit trail
    /// `<prefix>/audit/<version, 20 digits>`.
    pub prefix: String,
    /// Connecting to an endpoint gives up after this long.
    pub connect_timeout: Duration,
    /// Every request gives up after this long (then `Unavailable`).
    pub request_timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            prefix: "/tandem".to_string(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Durable storage of the whole desired state.
pub trait Store: Send + Sync + 'static {
    /// The stored snapshot, or `None` when nothing was ever saved.
    fn load(&self) -> Result<Option<Snapshot>, StoreError>;
    /// Replaces the stored snapshot; durable once this returns `Ok`.
    fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError>;
    /// Replaces the stored snapshot and appends its audit record, both or
    /// neither, if the stored snapshot is still at `base_version` (0: none
    /// stored); otherwise [`StoreError::Conflict`] and nothing is written.
    /// Durable once this returns `Ok`.
    fn commit(
        &self,
        base_version: u64,
        snapshot: &Snapshot,
        audit: &AuditRecord,
    ) -> Result<(), StoreError>;
    /// The newest `limit` audit records, newest first.
    fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError>;
    /// Snapshots committed to the store (by any instance), for a backend
    /// shared by several control instances; `None` for a private one. Called
    /// once; the stream ends when the store is dropped.
    fn watch(&self) -> Option<tokio::sync::mpsc::Receiver<StoreEvent>> {
        None
    }
    /// The backend, for logs ("redb /var/lib/tandem/control.redb").
    fn describe(&self) -> String;
    /// Shares this instance's subscriber table with the other instances of
    /// a shared store. Call again within [`PEER_TABLE_TTL`]: a table that is
    /// not renewed disappears (its instance is gone). No-op by default.
    fn publish_subscribers(&self, table: &[SubscriberStatus]) -> Result<(), StoreError> {
        let _ = table;
        Ok(())
    }
    /// The subscriber tables the other live instances published.
    fn peer_subscribers(&self) -> Result<Vec<Vec<SubscriberStatus>>, StoreError> {
        Ok(Vec::new())
    }
}

/// How long a published subscriber table outlives its last renewal.
pub const PEER_TABLE_TTL: Duration = Duration::from_secs(10);

const TABLE: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("state");
const KEY: &str = "snapshot";
/// Audit records by the version they produced.
const AUDIT: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit");

/// File name of the embedded database inside the data directory.
pub const DB_FILE: &str = "control.redb";

/// The embedded store: `<data_dir>/control.redb`, one committed (fsynced)
/// write transaction per change.
pub struct RedbStore {
    db: redb::Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates) `<data_dir>/control.redb`. The data directory must exist.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(DB_FILE);
        let db = redb::Database::create(&path).map_err(|e| StoreError::Open {
            path: path.clone(),
            source: e.into(),
        })?;
        Ok(Self { db, path })
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Option<Snapshot>, StoreError> {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let table = match txn.open_table(TABLE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(redb::Error::from(e).into()),
        };
        match table.get(KEY).map_err(redb::Error::from)? {
            Some(v) => Ok(Some(Snapshot::decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let bytes = snapshot.encode_to_vec();
        // Default durability is Immediate: commit returns after fsync.
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut table = txn.open_table(TABLE).map_err(redb::Error::from)?;
            table
                .insert(KEY, bytes.as_slice())
                .map_err(redb::Error::from)?;
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    fn commit(
        &self,
        base_version: u64,
        snapshot: &Snapshot,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        let bytes = snapshot.encode_to_vec();
        let record = audit.encode_to_vec();
        use redb::ReadableTable;
        // One transaction: the state and its record, or neither. Write
        // transactions are serialized, so the check below cannot race.
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut table = txn.open_table(TABLE).map_err(redb::Error::from)?;
            let current = match table.get(KEY).map_err(redb::Error::from)? {
                Some(v) => Snapshot::decode(v.value())?.version,
                None => 0,
            };
            if current != base_version {
                return Err(StoreError::Conflict {
                    base: base_version,
                    current,
                });
            }
            table
                .insert(KEY, bytes.as_slice())
                .map_err(redb::Error::from)?;
            let mut log = txn.open_table(AUDIT).map_err(redb::Error::from)?;
            log.insert(audit.version, record.as_slice())
                .map_err(redb::Error::from)?;
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        use redb::{ReadableDatabase, ReadableTable};
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let table = match txn.open_table(AUDIT) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(redb::Error::from(e).into()),
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(redb::Error::from)?.rev().take(limit) {
            let (_, v) = entry.map_err(redb::Error::from)?;
            out.push(AuditRecord::decode(v.value())?);
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("redb {}", self.path.display())
    }
}

/// A store that keeps the snapshot in memory only (tests, ephemeral runs).
#[derive(Debug, Default)]
pub struct MemoryStore {
    snapshot: Mutex<Option<Vec<u8>>>,
    audit: Mutex<Vec<AuditRecord>>,
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Option<Snapshot>, StoreError> {
        let guard = self.snapshot.lock().map_err(|_| StoreError::Poisoned)?;
        match guard.as_deref() {
            Some(b) => Ok(Some(Snapshot::decode(b)?)),
            None => Ok(None),
        }
    }

    fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let mut guard = self.snapshot.lock().map_err(|_| StoreError::Poisoned)?;
        *guard = Some(snapshot.encode_to_vec());
        Ok(())
    }

    fn commit(
        &self,
        base_version: u64,
        snapshot: &Snapshot,
        audit: &AuditRecord,
    ) -> Result<(), StoreError> {
        // The audit lock serializes commits, so check and write are one step.
        let mut log = self.audit.lock().map_err(|_| StoreError::Poisoned)?;
        let current = self.load()?.map_or(0, |s| s.version);
        if current != base_version {
            return Err(StoreError::Conflict {
                base: base_version,
                current,
            });
        }
        self.save(snapshot)?;
        log.push(audit.clone());
        Ok(())
    }

    fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let log = self.audit.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(log.iter().rev().take(limit).cloned().collect())
    }

    fn describe(&self) -> String {
        "memory".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use control_api::pb::Node;

    fn sample(version: u64) -> Snapshot {
        Snapshot {
            version,
            nodes: vec![Node {
                id: "node-1".into(),
                address: "127.0.0.1:9443".into(),
                weight: 100,
                pool: "default".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn redb_round_trip_and_reopen() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(e.into()))?;
        {
            let store = RedbStore::open(dir.path())?;
            assert_eq!(store.load()?, None);
            store.save(&sample(1))?;
            store.save(&sample(2))?;
            assert_eq!(store.load()?, Some(sample(2)));
        }
        let store = RedbStore::open(dir.path())?;
        assert_eq!(store.load()?, Some(sample(2)));
        assert!(store.audit(10)?.is_empty());
        for v in 3..=5 {
            let record = AuditRecord {
                version: v,
                who: "alice".into(),
                changes: vec![format!("put node node-{v}")],
                ..Default::default()
            };
            store.commit(v - 1, &sample(v), &record)?;
        }
        // A stale base is refused and changes nothing.
        let stale = AuditRecord {
            version: 6,
            ..Default::default()
        };
        assert!(matches!(
            store.commit(4, &sample(6), &stale),
            Err(StoreError::Conflict {
                base: 4,
                current: 5
            })
        ));
        drop(store);
        let store = RedbStore::open(dir.path())?;
        assert_eq!(store.load()?, Some(sample(5)));
        let versions: Vec<u64> = store.audit(2)?.iter().map(|r| r.version).collect();
        assert_eq!(versions, vec![5, 4]);
        Ok(())
    }

    #[test]
    fn memory_round_trip() -> Result<(), StoreError> {
        let store = MemoryStore::default();
        assert_eq!(store.load()?, None);
        store.save(&sample(3))?;
        assert_eq!(store.load()?, Some(sample(3)));
        let record = AuditRecord {
            version: 4,
            ..Default::default()
        };
        assert!(matches!(
            store.commit(2, &sample(4), &record),
            Err(StoreError::Conflict {
                base: 2,
                current: 3
            })
        ));
        store.commit(3, &sample(4), &record)?;
        assert_eq!(store.load()?, Some(sample(4)));
        assert_eq!(store.audit(10)?, vec![record]);
        Ok(())
    }
}
