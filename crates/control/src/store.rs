//! Durable storage of the desired state.
//!
//! The whole [`Snapshot`] (with its version) is stored as one value. The
//! [`Store`] trait keeps the backend replaceable (a replicated store such as
//! etcd can follow); [`RedbStore`] is the embedded default and
//! [`MemoryStore`] serves tests.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use control_api::pb::{AuditRecord, Snapshot};
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
}

/// Durable storage of the whole desired state.
pub trait Store: Send + Sync + 'static {
    /// The stored snapshot, or `None` when nothing was ever saved.
    fn load(&self) -> Result<Option<Snapshot>, StoreError>;
    /// Replaces the stored snapshot; durable once this returns `Ok`.
    fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError>;
    /// Replaces the stored snapshot and appends its audit record, both or
    /// neither; durable once this returns `Ok`. Backends without an audit
    /// trail only save the snapshot.
    fn commit(&self, snapshot: &Snapshot, audit: &AuditRecord) -> Result<(), StoreError> {
        let _ = audit;
        self.save(snapshot)
    }
    /// The newest `limit` audit records, newest first.
    fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let _ = limit;
        Ok(Vec::new())
    }
}

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
        Ok(Self { db })
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

    fn commit(&self, snapshot: &Snapshot, audit: &AuditRecord) -> Result<(), StoreError> {
        let bytes = snapshot.encode_to_vec();
        let record = audit.encode_to_vec();
        // One transaction: the state and its record, or neither.
        let txn = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut table = txn.open_table(TABLE).map_err(redb::Error::from)?;
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

    fn commit(&self, snapshot: &Snapshot, audit: &AuditRecord) -> Result<(), StoreError> {
        let mut log = self.audit.lock().map_err(|_| StoreError::Poisoned)?;
        self.save(snapshot)?;
        log.push(audit.clone());
        Ok(())
    }

    fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let log = self.audit.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(log.iter().rev().take(limit).cloned().collect())
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
            store.commit(&sample(v), &record)?;
        }
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
        Ok(())
    }
}
