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

#[tokio::test]
async fn a_log_kept_in_sled_by_an_older_release_moves_into_the_log_files() {
    use openraft::{CommittedLeaderId, EntryPayload};
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::Config::new()
        .path(dir.path().join("db"))
        .open()
        .expect("sled");
    let old = db.open_tree("raft_log").expect("tree");
    for index in 1..=3u64 {
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), index),
            payload: EntryPayload::Blank,
        };
        old.insert(index.to_be_bytes(), encode(&entry).expect("encode"))
            .expect("insert");
    }
    drop(old);
    let mvcc = MvccStore::open(&db).expect("mvcc");
    let (mut log, _sm) = open_stores(
        db.clone(),
        dir.path(),
        mvcc,
        Arc::new(Silent),
        crate::metrics::Metrics::new(),
    )
    .expect("open");
    let entries = log.try_get_log_entries(0..).await.expect("read");
    let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, vec![1, 2, 3]);
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_log_id.map(|l| l.index), Some(3));
    assert!(!db.tree_names().iter().any(|n| n.as_ref() == b"raft_log"));
}

#[test]
fn a_snapshot_older_than_the_one_on_disk_never_replaces_it() {
    use openraft::CommittedLeaderId;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = SnapshotPath {
        path: dir.path().join(SNAPSHOT_FILE),
        writing: Arc::default(),
    };
    let meta = |index| SnapshotMeta {
        last_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), index)),
        last_membership: StoredMembership::default(),
        snapshot_id: format!("s{index}"),
    };
    let write = |index: u64, payload: &'static [u8]| {
        write_snapshot_file(&file, |out| {
            out.write_all(payload).map_err(snapshot_err)?;
            Ok(meta(index))
        })
        .expect("write")
    };
    write(20, b"newer");
    write(10, b"older");
    let kept = parse_snapshot_file(std::fs::read(&file.path).expect("read")).expect("parse");
    assert_eq!(kept.meta.snapshot_id, "s20");
    assert_eq!(kept.data, b"newer".to_vec());
    assert_eq!(
        read_snapshot_meta(&file.path)
            .expect("meta")
            .map(|m| m.snapshot_id),
        Some("s20".to_string())
    );
    write(30, b"newest");
    let kept = parse_snapshot_file(std::fs::read(&file.path).expect("read")).expect("parse");
    assert_eq!(kept.data, b"newest".to_vec());
}
