//! openraft's log store and state machine over sled (being written on the `engine` branch).
use std::path::Path;

use crate::metrics::Metrics;
use crate::mvcc::MvccStore;
use crate::watch::WatchHub;

pub struct LogStore;
pub struct StateMachineStore;

pub async fn open(
    _db: sled::Db,
    _dir: &Path,
    _metrics: Metrics,
) -> Result<(LogStore, StateMachineStore, MvccStore, WatchHub), String> {
    todo!()
}
