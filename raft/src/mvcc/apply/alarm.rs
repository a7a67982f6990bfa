//! NOSPACE alarms in an entry: raising and clearing a member's alarm, and the alarm set as
//! this entry sees it (what the NOSPACE gate in [`super::capped`] checks).
//!
//! It decides who may hold an alarm (a current member); when a member raises one is the
//! disk guard's decision, not this module's.

use std::collections::BTreeSet;

use super::ApplyCtx;
use crate::types::{CommandResult, NodeId};

impl ApplyCtx<'_> {
    /// The alarm set as of this point of the entry.
    pub(super) fn alarms(&self) -> &BTreeSet<NodeId> {
        self.alarms.as_ref().unwrap_or(&self.st.alarms)
    }

    /// Raises (`raise`) or clears `member`'s alarm. A member that was removed cannot raise
    /// an alarm any more (its process may still be running); clearing is always allowed.
    pub(super) fn alarm(&mut self, member: NodeId, raise: bool) -> CommandResult {
        let mut alarms = self.alarms().clone();
        let is_member = self
            .st
            .membership
            .membership()
            .nodes()
            .any(|(id, _)| *id == member);
        if !raise {
            alarms.remove(&member);
        } else if is_member {
            alarms.insert(member);
        }
        self.alarms = Some(alarms);
        CommandResult::Alarm {
            revision: self.revision,
        }
    }
}
