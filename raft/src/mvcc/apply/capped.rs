//! The NOSPACE gate, as etcd's capped applier: while any member's NOSPACE alarm is raised,
//! a command that can add data is refused with [`CommandError::NoSpace`] (naming the
//! members), and everything else (deletions, revocations, compaction, alarms) goes through,
//! so space can be freed and the alarm cleared.
//!
//! It only gates; what a command does is [`ApplyCtx::dispatch`]'s.

use super::ApplyCtx;
use crate::mvcc::MvccError;
use crate::types::{Command, CommandError, CommandResult, RequestOp};

/// An entry's apply behind the NOSPACE gate.
pub(super) struct NoSpaceGate<'c, 'a>(pub &'c mut ApplyCtx<'a>);

impl NoSpaceGate<'_, '_> {
    /// Refuses `cmd` if it adds data while an alarm is raised, else applies it.
    pub(super) fn apply(self, cmd: &Command) -> Result<CommandResult, MvccError> {
        let ctx = self.0;
        if adds_data(cmd) {
            let alarms = ctx.alarms();
            if !alarms.is_empty() {
                return Ok(ctx.rejected(CommandError::NoSpace {
                    members: alarms.iter().copied().collect(),
                }));
            }
        }
        ctx.dispatch(cmd)
    }
}

/// Whether a command can grow the store (and so is refused while a NOSPACE alarm is
/// raised, as etcd does). A transaction counts if either branch puts.
fn adds_data(cmd: &Command) -> bool {
    let puts = |ops: &[RequestOp]| ops.iter().any(|op| matches!(op, RequestOp::Put(_)));
    match cmd {
        Command::Put(_) | Command::LeaseGrant { .. } => true,
        Command::Txn(t) => puts(&t.success) || puts(&t.failure),
        Command::DeleteRange(_)
        | Command::LeaseRevoke { .. }
        | Command::Compact { .. }
        | Command::Alarm { .. } => false,
    }
}
