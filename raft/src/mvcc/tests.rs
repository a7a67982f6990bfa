//! Unit tests of the MVCC state: revisions, versions, ranges, history, transactions, leases,
//! compaction, restart and snapshot export/import, against a real sled database.

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    db: sled::Db,
    store: MvccStore,
    index: u64,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("open sled");
        let store = MvccStore::open(&db).expect("open mvcc");
        Fixture {
            _dir: dir,
            db,
            store,
            index: 0,
        }
    }

    fn apply(&mut self, cmds: Vec<Command>) -> Applied {
        self.index += 1;
        let log_id = openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), self.index);
        self.store.apply_batch(log_id, &cmds, None).expect("apply")
    }

    fn one(&mut self, cmd: Command) -> CommandResult {
        self.apply(vec![cmd]).results.remove(0)
    }

    fn put(&mut self, key: &str, value: &str) -> i64 {
        self.one(put(key, value, 0)).revision()
    }

    fn get(&self, key: &str) -> Option<KeyValue> {
        self.store
            .range(&RangeOp {
                key: key.into(),
                ..Default::default()
            })
            .expect("range")
            .kvs
            .pop()
    }
}

fn put(key: &str, value: &str, lease: i64) -> Command {
    Command::Put(PutOp {
        key: key.into(),
        value: value.into(),
        lease,
        prev_kv: true,
    })
}

fn prefix(p: &str) -> RangeOp {
    RangeOp {
        key: p.into(),
        range_end: prefix_end(p.as_bytes()),
        ..Default::default()
    }
}

#[test]
fn every_write_takes_one_revision_and_versions_count_changes() {
    let mut f = Fixture::new();
    assert_eq!(f.store.current_revision(), 1);
    assert_eq!(f.put("a", "1"), 2);
    assert_eq!(f.put("a", "2"), 3);
    assert_eq!(f.put("b", "1"), 4);
    let a = f.get("a").expect("a exists");
    assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 3, 2));
    assert_eq!(a.value, b"2".to_vec());
    // Deleting a missing key writes nothing.
    let r = f.one(Command::DeleteRange(DeleteOp {
        key: b"zz".to_vec(),
        ..Default::default()
    }));
    assert_eq!(r.revision(), 4);
    // Delete then re-create restarts version and create_revision.
    f.one(Command::DeleteRange(DeleteOp {
        key: b"a".to_vec(),
        ..Default::default()
    }));
    assert_eq!(f.put("a", "3"), 6);
    let a = f.get("a").expect("a exists");
    assert_eq!((a.create_revision, a.version), (6, 1));
}

#[test]
fn ranges_respect_limit_count_and_prefix() {
    let mut f = Fixture::new();
    for k in ["p/1", "p/2", "p/3", "q/1"] {
        f.put(k, "v");
    }
    let r = f
        .store
        .range(&RangeOp {
            limit: 2,
            ..prefix("p/")
        })
        .expect("range");
    assert_eq!(r.count, 3);
    assert!(r.more);
    assert_eq!(r.kvs.len(), 2);
    let all = f
        .store
        .range(&RangeOp {
            key: vec![0],
            range_end: vec![0],
            count_only: true,
            ..Default::default()
        })
        .expect("range");
    assert_eq!((all.count, all.kvs.len()), (4, 0));
}

#[test]
fn historical_reads_see_the_past() {
    let mut f = Fixture::new();
    let r1 = f.put("k", "old");
    f.put("k", "new");
    f.one(Command::DeleteRange(DeleteOp {
        key: b"k".to_vec(),
        ..Default::default()
    }));
    let at = |rev: i64| {
        f.store
            .range(&RangeOp {
                key: b"k".to_vec(),
                revision: rev,
                ..Default::default()
            })
            .expect("range")
    };
    assert_eq!(at(r1).kvs[0].value, b"old".to_vec());
    assert_eq!(at(r1 + 1).kvs[0].value, b"new".to_vec());
    assert_eq!(at(r1 + 2).count, 0);
    assert_eq!(at(1).count, 0);
    assert!(matches!(
        f.store.range(&RangeOp {
            key: b"k".to_vec(),
            revision: 99,
            ..Default::default()
        }),
        Err(CommandError::FutureRevision { .. })
    ));
}

#[test]
fn transaction_writes_at_one_revision_and_reads_its_own_writes() {
    let mut f = Fixture::new();
    f.put("x", "0");
    let txn = Command::Txn(TxnOp {
        compare: vec![Compare {
            key: b"x".to_vec(),
            range_end: vec![],
            target: CompareTarget::Value(b"0".to_vec()),
            result: CompareResult::Equal,
        }],
        success: vec![
            RequestOp::Put(PutOp {
                key: b"x".to_vec(),
                value: b"1".to_vec(),
                ..Default::default()
            }),
            RequestOp::Put(PutOp {
                key: b"y".to_vec(),
                value: b"1".to_vec(),
                ..Default::default()
            }),
            RequestOp::Range(RangeOp {
                key: b"x".to_vec(),
                range_end: b"z".to_vec(),
                ..Default::default()
            }),
        ],
        failure: vec![],
    });
    let applied = f.apply(vec![txn.clone()]);
    match &applied.results[0] {
        CommandResult::Txn {
            revision,
            succeeded,
            responses,
        } => {
            assert_eq!(*revision, 3);
            assert!(*succeeded);
            assert!(matches!(&responses[2], ResponseOp::Range(r) if r.count == 2));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(applied.events.len(), 1);
    assert_eq!(applied.events[0].events.len(), 2);
    // Again: the compare fails, nothing is written.
    match f.one(txn) {
        CommandResult::Txn {
            revision,
            succeeded,
            ..
        } => assert_eq!((revision, succeeded), (3, false)),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn value_compare_on_a_missing_key_fails_and_version_compare_sees_zero() {
    let mut f = Fixture::new();
    let cmp = |target| {
        Command::Txn(TxnOp {
            compare: vec![Compare {
                key: b"missing".to_vec(),
                range_end: vec![],
                target,
                result: CompareResult::Equal,
            }],
            ..Default::default()
        })
    };
    let succeeded = |r: CommandResult| {
        matches!(
            r,
            CommandResult::Txn {
                succeeded: true,
                ..
            }
        )
    };
    assert!(!succeeded(f.one(cmp(CompareTarget::Value(vec![])))));
    assert!(succeeded(f.one(cmp(CompareTarget::Version(0)))));
}

#[test]
fn revoking_a_lease_deletes_its_keys_in_one_revision() {
    let mut f = Fixture::new();
    let id = match f.one(Command::LeaseGrant { id: 0, ttl: 10 }) {
        CommandResult::LeaseGrant { id, ttl, .. } => {
            assert_eq!(ttl, 10);
            id
        }
        other => panic!("unexpected {other:?}"),
    };
    assert!(matches!(
        f.one(put("a", "1", id + 100)),
        CommandResult::Rejected {
            error: CommandError::LeaseNotFound(_),
            ..
        }
    ));
    f.one(put("a", "1", id));
    f.one(put("b", "1", id));
    f.one(put("c", "1", id));
    f.one(put("c", "2", 0)); // moved off the lease
    let lease = f.store.lease(id).expect("lease");
    assert_eq!(lease.keys, vec![b"a".to_vec(), b"b".to_vec()]);
    let applied = f.apply(vec![Command::LeaseRevoke { id }]);
    assert_eq!(applied.events.len(), 1);
    assert_eq!(applied.events[0].events.len(), 2);
    assert!(f.get("a").is_none() && f.get("b").is_none() && f.get("c").is_some());
    assert!(f.store.lease(id).is_none());
    assert!(matches!(
        f.one(Command::LeaseRevoke { id }),
        CommandResult::Rejected { .. }
    ));
}

#[test]
fn compaction_keeps_what_reads_and_watches_at_or_after_it_need() {
    let mut f = Fixture::new();
    f.put("a", "1"); // 2
    f.put("a", "2"); // 3
    f.put("b", "1"); // 4
    f.one(Command::DeleteRange(DeleteOp {
        key: b"b".to_vec(),
        ..Default::default()
    })); // 5
    f.put("c", "1"); // 6
    assert!(matches!(
        f.one(Command::Compact { revision: 5 }),
        CommandResult::Compact { revision: 6 }
    ));
    assert_eq!(f.store.compact_revision(), 5);
    let at5 = f
        .store
        .range(&RangeOp {
            key: vec![0],
            range_end: vec![0],
            revision: 5,
            ..Default::default()
        })
        .expect("read at compact revision");
    assert_eq!(at5.count, 1);
    assert_eq!(at5.kvs[0].value, b"2".to_vec());
    assert!(matches!(
        f.store.range(&RangeOp {
            key: b"a".to_vec(),
            revision: 4,
            ..Default::default()
        }),
        Err(CommandError::Compacted {
            compact_revision: 5,
            ..
        })
    ));
    // The delete at exactly the compact revision is still delivered to a watch from there.
    let ev = f.store.events_between(5, 100, 10).expect("history");
    assert_eq!(
        ev.iter().map(|r| r.revision).collect::<Vec<_>>(),
        vec![5, 6]
    );
    assert_eq!(ev[0].events[0].kind, EventType::Delete);
    assert!(f.store.events_between(4, 100, 10).is_err());
    assert!(matches!(
        f.one(Command::Compact { revision: 4 }),
        CommandResult::Rejected { .. }
    ));
}

#[test]
fn history_comes_in_whole_revisions_with_prev_kv() {
    let mut f = Fixture::new();
    f.put("a", "1");
    f.apply(vec![put("a", "2", 0), put("b", "1", 0)]);
    f.one(Command::DeleteRange(DeleteOp {
        key: b"a".to_vec(),
        range_end: b"c".to_vec(),
        prev_kv: false,
    }));
    let ev = f.store.events_between(2, 100, 2).expect("history");
    assert_eq!(
        ev.iter().map(|r| r.revision).collect::<Vec<_>>(),
        vec![2, 3]
    );
    let all = f.store.events_between(2, 100, 100).expect("history");
    assert_eq!(all.len(), 4);
    let del = &all[3];
    assert_eq!(del.events.len(), 2);
    assert_eq!(
        del.events[0].prev_kv.as_ref().map(|p| p.value.clone()),
        Some(b"2".to_vec())
    );
    assert_eq!(del.events[0].kv.mod_revision, 5);
}

#[test]
fn state_survives_reopening_the_database() {
    let mut f = Fixture::new();
    f.put("a", "1");
    f.put("a", "2");
    f.one(Command::LeaseGrant { id: 7, ttl: 5 });
    let last = f.store.last_applied();
    drop(f.store);
    let store = MvccStore::open(&f.db).expect("reopen");
    assert_eq!(store.current_revision(), 3);
    assert_eq!(store.last_applied(), last);
    assert_eq!(store.leases(), vec![(7, 5)]);
    let old = store
        .range(&RangeOp {
            key: b"a".to_vec(),
            revision: 2,
            ..Default::default()
        })
        .expect("history after reopen");
    assert_eq!(old.kvs[0].value, b"1".to_vec());
}

fn export(store: &MvccStore) -> (Vec<u8>, Exported) {
    let mut data = Vec::new();
    let exported = store.export_to(&mut data).expect("export");
    (data, exported)
}

#[test]
fn export_then_import_reproduces_the_state() {
    let mut src = Fixture::new();
    src.put("a", "1");
    src.put("b", "2");
    src.one(Command::LeaseGrant { id: 3, ttl: 9 });
    let (data, exported) = export(&src.store);
    assert_eq!(exported.bytes, data.len() as u64);
    let mut dst = Fixture::new();
    dst.put("junk", "x");
    let rev = dst
        .store
        .import(&data, exported.last_applied, &exported.membership)
        .expect("import");
    assert_eq!(rev, 3);
    assert!(dst.get("junk").is_none());
    assert_eq!(dst.get("b").map(|kv| kv.value), Some(b"2".to_vec()));
    assert_eq!(dst.store.last_applied(), exported.last_applied);
    assert_eq!(dst.store.leases(), vec![(3, 9)]);
    assert_eq!(
        dst.store.events_between(2, 3, 10).expect("history").len(),
        2
    );
}

/// Everything a member's state answers: every pair, every revision of history, leases
/// with their keys, and the revisions.
fn observable(store: &MvccStore) -> String {
    let all = store
        .range(&RangeOp {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .expect("range");
    let history = store
        .events_between(store.compact_revision().max(1), i64::MAX, usize::MAX)
        .expect("history");
    let leases: Vec<_> = store
        .leases()
        .into_iter()
        .map(|(id, _)| store.lease(id))
        .collect();
    format!(
        "{:?}\n{:?}\n{:?}\n{} {}",
        all.kvs,
        history,
        leases,
        store.current_revision(),
        store.compact_revision()
    )
}

/// Applies commands through its own handle on the first write: the export goes on while
/// the state machine changes, as it does on a busy member.
struct ApplyingWriter {
    store: MvccStore,
    next_index: u64,
    pending: Option<Vec<Command>>,
    out: Vec<u8>,
}

impl std::io::Write for ApplyingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(cmds) = self.pending.take() {
            for cmd in cmds {
                self.next_index += 1;
                let log_id =
                    openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), self.next_index);
                self.store
                    .apply_batch(log_id, &[cmd], None)
                    .map_err(std::io::Error::other)?;
            }
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn an_export_holds_the_state_it_started_at_while_writes_go_on() {
    // The same history on two stores; `busy` goes on changing while it exports.
    let setup = |f: &mut Fixture| {
        f.one(Command::LeaseGrant { id: 5, ttl: 30 });
        f.put("keep", "1");
        f.put("change", "1");
        f.put("change", "2");
        f.put("gone", "1");
        f.one(put("leased", "1", 5));
        f.put("old", "1");
        f.one(Command::Compact { revision: 4 });
    };
    let mut busy = Fixture::new();
    setup(&mut busy);
    let mut reference = Fixture::new();
    setup(&mut reference);
    let expected = observable(&reference.store);

    let later = vec![
        put("change", "3", 0),
        put("change", "4", 0),
        Command::DeleteRange(DeleteOp {
            key: b"gone".to_vec(),
            ..Default::default()
        }),
        put("leased", "2", 0),
        put("new", "1", 0),
        Command::LeaseRevoke { id: 5 },
    ];
    let mut writer = ApplyingWriter {
        store: busy.store.clone(),
        next_index: busy.index,
        pending: Some(later),
        out: Vec::new(),
    };
    let exported = busy.store.export_to(&mut writer).expect("export");
    assert!(
        writer.pending.is_none(),
        "the writes went on during the export"
    );
    assert!(busy.store.current_revision() > exported.revision);
    assert_eq!(exported.revision, reference.store.current_revision());

    let dst = Fixture::new();
    dst.store
        .import(&writer.out, exported.last_applied, &exported.membership)
        .expect("import");
    assert_eq!(observable(&dst.store), expected);
    assert_eq!(dst.store.last_applied(), reference.store.last_applied());
}

#[test]
fn a_nospace_alarm_refuses_what_adds_data_until_cleared_and_survives_a_restart() {
    let mut f = Fixture::new();
    // Members 1..=3; an alarm for a non-member is ignored.
    f.index += 1;
    let log_id = openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), f.index);
    let nodes: BTreeMap<NodeId, MemberNode> = (1..=3)
        .map(|id| {
            (
                id,
                MemberNode {
                    addr: format!("127.0.0.1:{id}"),
                },
            )
        })
        .collect();
    let membership = openraft::Membership::new(vec![nodes.keys().copied().collect()], nodes);
    f.store
        .apply_batch(
            log_id,
            &[],
            Some(StoredMembership::new(Some(log_id), membership)),
        )
        .expect("membership");
    f.one(Command::Alarm {
        member: 9,
        raise: true,
    });
    assert!(f.store.alarms().is_empty(), "a non-member raised an alarm");
    f.put("a", "1");
    let rev = f.store.current_revision();
    assert_eq!(
        f.one(Command::Alarm {
            member: 3,
            raise: true
        }),
        CommandResult::Alarm { revision: rev }
    );
    assert_eq!(f.store.alarms(), vec![3]);
    let no_space = CommandResult::Rejected {
        revision: rev,
        error: CommandError::NoSpace { members: vec![3] },
    };
    assert_eq!(f.one(put("b", "1", 0)), no_space);
    assert_eq!(f.one(Command::LeaseGrant { id: 0, ttl: 10 }), no_space);
    let txn_put = Command::Txn(TxnOp {
        compare: vec![],
        success: vec![RequestOp::Put(PutOp {
            key: b"c".to_vec(),
            value: b"1".to_vec(),
            lease: 0,
            prev_kv: false,
        })],
        failure: vec![],
    });
    assert_eq!(f.one(txn_put.clone()), no_space);
    // Deletes and compaction still work; nothing else changed.
    assert!(f.get("b").is_none());
    let deleted = f.one(Command::DeleteRange(DeleteOp {
        key: b"a".to_vec(),
        range_end: vec![],
        prev_kv: false,
    }));
    assert!(matches!(
        deleted,
        CommandResult::DeleteRange { deleted: 1, .. }
    ));
    assert!(matches!(
        f.one(Command::Compact { revision: rev }),
        CommandResult::Compact { .. }
    ));

    // The alarm is part of the persisted state.
    let reopened = MvccStore::open(&f.db).expect("reopen");
    assert_eq!(reopened.alarms(), vec![3]);

    f.one(Command::Alarm {
        member: 3,
        raise: false,
    });
    assert!(f.store.alarms().is_empty());
    assert!(matches!(f.one(txn_put), CommandResult::Txn { .. }));
    assert!(f.get("c").is_some());
}
