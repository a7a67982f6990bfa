//! The state machine's cost per put, alone: applies batches of puts to an [`MvccStore`]
//! over a sled database in a temporary directory, configured as a member's, and prints the
//! time per put. No Raft, no network, no fsync (the log's flush is not part of apply).
//!
//! Under `valgrind --tool=callgrind` it gives instruction counts per put that repeat from
//! run to run on this noisy machine, so a change to apply can be judged before and after:
//!
//! ```text
//! cargo build --release -p miniku-store --example apply_cost
//! valgrind --tool=callgrind target/release/examples/apply_cost 200 32
//! ```
//!
//! Arguments: batches (default 2,000), puts per batch (32), value bytes (256), and
//! `delete` to time one range deletion of every key afterwards (what `etcdctl check perf`
//! sends when it cleans up). Keys are fresh, as in `miniku-bench put`.

use std::time::Instant;

use miniku_store::mvcc::MvccStore;
use miniku_store::types::{Command, DeleteOp, PutOp};

fn arg(n: usize, default: usize) -> anyhow::Result<usize> {
    Ok(match std::env::args().nth(n) {
        Some(s) => s.parse()?,
        None => default,
    })
}

fn main() -> anyhow::Result<()> {
    let batches = arg(1, 2_000)?;
    let per_batch = arg(2, 32)?.max(1);
    let value = vec![b'x'; arg(3, 256)?];
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new()
        .path(dir.path().join("db"))
        .cache_capacity(16 * 1024 * 1024)
        .flush_every_ms(Some(100))
        .open()?;
    let mvcc = MvccStore::open(&db)?;
    let started = Instant::now();
    let mut next_key = 0usize;
    for index in 1..=batches as u64 {
        let commands: Vec<Command> = (0..per_batch)
            .map(|_| {
                next_key += 1;
                Command::Put(PutOp {
                    key: format!("p{next_key:07}").into_bytes(),
                    value: value.clone(),
                    lease: 0,
                    prev_kv: false,
                })
            })
            .collect();
        let log_id = openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index);
        mvcc.apply_batch(log_id, &commands, None)?;
    }
    let elapsed = started.elapsed();
    let puts = batches * per_batch;
    println!(
        "{puts} puts in {batches} batches of {per_batch}: {:.1} µs per put, revision {}",
        elapsed.as_secs_f64() * 1e6 / puts as f64,
        mvcc.current_revision()
    );
    if std::env::args().nth(4).as_deref() == Some("delete") {
        let started = Instant::now();
        let delete = Command::DeleteRange(DeleteOp {
            key: b"p".to_vec(),
            range_end: b"q".to_vec(),
            prev_kv: false,
        });
        let log_id =
            openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), batches as u64 + 1);
        mvcc.apply_batch(log_id, &[delete], None)?;
        println!(
            "one range deletion of {puts} keys: {:.0} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}
