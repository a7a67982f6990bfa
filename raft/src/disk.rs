//! The disk-space guard of one member: watches the free space of the filesystem holding the
//! data directory and the database's size, and raises or clears this member's NOSPACE alarm
//! through Raft (etcd's `--quota-backend-bytes` alarm, plus a free-space reserve).
//!
//! The alarm is replicated state ([`crate::types::Command::Alarm`]); the state machine is what
//! refuses writes while any member's alarm is raised, so every member refuses the same
//! commands. The reserve exists so that the alarm is raised while there is still room to
//! append it (and the deletes and compactions that free space) to the log. Unlike etcd, a
//! member clears its own alarm once it has space again.
//!
//! Also owns [`probe_writable`], which a member whose storage already failed uses to tell
//! when its data directory can be written again. This module does not touch the data.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use crate::mvcc::MvccStore;
use crate::proposer::Proposer;
use crate::types::{Command, NodeId};

/// When the alarm goes up and comes down.
#[derive(Clone, Debug)]
pub struct SpaceLimits {
    /// Raise the alarm when the data directory's filesystem has less free space than this.
    pub min_free_bytes: u64,
    /// Raise the alarm when the database files are larger than this (etcd's quota).
    pub quota_bytes: u64,
    /// How often to look at the free space (the database size is read every tenth look).
    /// Short, because a burst of writes can eat a reserve quickly: statvfs is cheap.
    pub check_interval: Duration,
}

impl Default for SpaceLimits {
    fn default() -> Self {
        SpaceLimits {
            min_free_bytes: 128 * 1024 * 1024,
            quota_bytes: 8 * 1024 * 1024 * 1024,
            check_interval: Duration::from_millis(100),
        }
    }
}

/// What one look at the disk found.
#[derive(Clone, Copy, Debug)]
pub struct SpaceReading {
    pub free_bytes: u64,
    pub db_bytes: u64,
}

impl SpaceLimits {
    /// Whether the alarm should be up, given whether it is up now. Clearing needs half the
    /// reserve again on top, so the alarm does not flap at the edge.
    pub fn wants_alarm(&self, now_raised: bool, r: SpaceReading) -> bool {
        if r.db_bytes >= self.quota_bytes {
            return true;
        }
        let needed = if now_raised {
            self.min_free_bytes.saturating_add(self.min_free_bytes / 2)
        } else {
            self.min_free_bytes
        };
        r.free_bytes < needed
    }
}

/// Watches the disk until `stop` turns true.
pub struct DiskGuard {
    pub id: NodeId,
    pub data_dir: PathBuf,
    pub db: sled::Db,
    pub mvcc: MvccStore,
    pub proposer: Proposer,
    pub limits: SpaceLimits,
}

impl DiskGuard {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.limits.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut db_bytes = 0;
        for n in 0u64.. {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if n.is_multiple_of(10) {
                match self.db.size_on_disk() {
                    Ok(b) => db_bytes = b,
                    Err(e) => tracing::warn!(error = %e, "cannot read the database size"),
                }
            }
            let reading = match fs2::available_space(&self.data_dir) {
                Ok(free_bytes) => SpaceReading {
                    free_bytes,
                    db_bytes,
                },
                Err(e) => {
                    tracing::warn!(error = %e, dir = %self.data_dir.display(), "cannot read disk space");
                    continue;
                }
            };
            let raised = self.mvcc.alarms().contains(&self.id);
            let want = self.limits.wants_alarm(raised, reading);
            if want == raised {
                continue;
            }
            if want {
                tracing::error!(
                    free_bytes = reading.free_bytes,
                    db_bytes = reading.db_bytes,
                    min_free_bytes = self.limits.min_free_bytes,
                    quota_bytes = self.limits.quota_bytes,
                    "out of disk space: raising the NOSPACE alarm (writes that add data are refused cluster-wide)"
                );
            } else {
                tracing::warn!(
                    free_bytes = reading.free_bytes,
                    db_bytes = reading.db_bytes,
                    "disk space is back: clearing the NOSPACE alarm"
                );
            }
            let cmd = Command::Alarm {
                member: self.id,
                raise: want,
            };
            if let Err(e) = self.proposer.propose(cmd).await {
                tracing::warn!(error = %e, raise = want, "could not change the NOSPACE alarm; retrying");
            }
        }
    }
}

/// Whether `dir` can take writes again: more than `min_free_bytes` free, and a probe file
/// can be written, fsync'd and removed.
pub fn probe_writable(dir: &Path, min_free_bytes: u64) -> Result<(), String> {
    let free = fs2::available_space(dir).map_err(|e| format!("statvfs: {e}"))?;
    if free < min_free_bytes {
        return Err(format!(
            "{free} bytes free, fewer than the {min_free_bytes} reserved"
        ));
    }
    let probe = dir.join(".write-probe");
    let result = (|| {
        let mut f = std::fs::File::create(&probe)?;
        f.write_all(&[0u8; 4096])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&probe);
    result.map_err(|e| format!("cannot write {}: {e}", probe.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SpaceLimits {
        SpaceLimits {
            min_free_bytes: 100,
            quota_bytes: 1000,
            check_interval: Duration::from_secs(1),
        }
    }

    fn at(free_bytes: u64, db_bytes: u64) -> SpaceReading {
        SpaceReading {
            free_bytes,
            db_bytes,
        }
    }

    #[test]
    fn raises_below_the_reserve_and_clears_with_margin() {
        let l = limits();
        assert!(!l.wants_alarm(false, at(100, 10)));
        assert!(l.wants_alarm(false, at(99, 10)));
        // Raised: stays up until half the reserve again is free.
        assert!(l.wants_alarm(true, at(120, 10)));
        assert!(l.wants_alarm(true, at(149, 10)));
        assert!(!l.wants_alarm(true, at(150, 10)));
    }

    #[test]
    fn raises_over_the_quota_whatever_the_free_space() {
        let l = limits();
        assert!(l.wants_alarm(false, at(u64::MAX, 1000)));
        assert!(l.wants_alarm(true, at(u64::MAX, 5000)));
        assert!(!l.wants_alarm(true, at(u64::MAX, 999)));
    }

    #[test]
    fn probe_needs_space_and_a_writable_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(probe_writable(dir.path(), 0).is_ok());
        assert!(probe_writable(dir.path(), u64::MAX).is_err());
        assert!(probe_writable(&dir.path().join("missing"), 0).is_err());
    }
}
