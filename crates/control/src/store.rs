//! Durable storage of the desired state.
//!
//! The whole [`Snapshot`] (with its version) is stored as one value. The
//! [`Store`] trait keeps the backend replaceable (a replicated store such as
//! etcd can follow); [`RedbStore`] is the embedded default and
//! [`MemoryStore`] serves tests.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use control_api::pb::Snapshot;
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
}

const TABLE: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("state");
const KEY: &str = "snapshot";

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
}

/// A store that keeps the snapshot in memory only (tests, ephemeral runs).
#[derive(Debug, Default)]
pub struct MemoryStore {
    snapshot: Mutex<Option<Vec<u8>>>,
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
