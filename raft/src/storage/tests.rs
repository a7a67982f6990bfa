//! openraft's own storage test suite run against the sled log store and state machine.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};

use super::*;
use crate::types::RevisionEvents;

struct Silent;

impl ApplyListener for Silent {
    fn applied(&self, _events: Vec<RevisionEvents>) {}
    fn reset(&self, _current_revision: i64) {}
}

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(snapshot_err)?;
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .map_err(snapshot_err)?;
        let mvcc = MvccStore::open(&db).map_err(sm_err)?;
        let (log, sm) = open_stores(
            db,
            dir.path(),
            mvcc,
            Arc::new(Silent),
            crate::metrics::Metrics::new(),
        )?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder)
}
