//! Task set ordering (SAM-5 8.6): which tasks of one task set may execute now.
//!
//! lunlock keeps one task set per I_T nexus per logical unit (Control mode page TST = 001b, SPC-4 7.5.8), so this
//! is the order among the commands one session sends to one LU. The transport delivers commands in CmdSN order
//! (RFC 7143 3.2.2.1); that is the arrival order "older" refers to.
//! - SIMPLE (and untagged): enabled when no older ORDERED or HEAD OF QUEUE task is still in the task set.
//! - ORDERED: enabled when no older task of any kind is still in the task set.
//! - HEAD OF QUEUE: enabled at once, ahead of every dormant task.
//!
//! Enabled tasks run concurrently and complete in any order. ACA is not supported: the runtime refuses the ACA
//! attribute before a task enters the set (see [`aca_refusal`]).

use crate::sense::{Condition, Sense};
use crate::TaskAttribute;
use std::collections::VecDeque;

#[derive(Debug)]
struct Entry {
    key: u64,
    attribute: TaskAttribute,
    enabled: bool,
}

/// The tasks of one task set, oldest first.
#[derive(Debug, Default)]
pub struct TaskSet {
    entries: VecDeque<Entry>,
}

impl TaskSet {
    /// Adds a task; true when it may execute now, false when it stays dormant until [`TaskSet::complete`] of an
    /// older task enables it.
    pub fn arrive(&mut self, key: u64, attribute: TaskAttribute) -> bool {
        let enabled = self.may_enter(attribute, self.entries.len());
        self.entries.push_back(Entry {
            key,
            attribute,
            enabled,
        });
        enabled
    }

    /// Removes a task (completed or aborted) and returns the dormant tasks that may execute now, oldest first.
    pub fn complete(&mut self, key: u64) -> Vec<u64> {
        self.entries.retain(|e| e.key != key);
        let mut enabled = Vec::new();
        for index in 0..self.entries.len() {
            if !self.entries[index].enabled && self.may_enter(self.entries[index].attribute, index)
            {
                self.entries[index].enabled = true;
                enabled.push(self.entries[index].key);
            }
        }
        enabled
    }

    /// Tasks in the set, enabled or dormant.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a task with `attribute` and the first `older` entries before it may be enabled.
    fn may_enter(&self, attribute: TaskAttribute, older: usize) -> bool {
        let mut before = self.entries.iter().take(older);
        match attribute {
            TaskAttribute::HeadOfQueue => true,
            TaskAttribute::Ordered => older == 0,
            TaskAttribute::Simple | TaskAttribute::Untagged | TaskAttribute::Aca => {
                before.all(|e| {
                    !matches!(
                        e.attribute,
                        TaskAttribute::Ordered | TaskAttribute::HeadOfQueue
                    )
                })
            }
        }
    }
}

/// The answer to a command with the ACA task attribute when no ACA condition exists, which in lunlock is always
/// (it does not support ACA: NACA=1 is refused in the CDB's control byte, SAM-5 5.2): CHECK CONDITION, ILLEGAL
/// REQUEST, INVALID MESSAGE ERROR (SAM-5 8.6.5).
pub fn aca_refusal(attribute: TaskAttribute) -> Option<Sense> {
    (attribute == TaskAttribute::Aca).then(|| Sense::new(Condition::InvalidMessageError))
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskAttribute::*;

    #[test]
    fn simple_tasks_run_together_and_an_ordered_task_waits_for_all_older_ones() {
        let mut set = TaskSet::default();
        assert!(set.arrive(1, Simple));
        assert!(set.arrive(2, Simple));
        assert!(!set.arrive(3, Ordered));
        assert!(
            !set.arrive(4, Simple),
            "a simple task waits for an older ordered one"
        );
        assert_eq!(set.complete(2), Vec::<u64>::new());
        assert_eq!(set.complete(1), vec![3]);
        assert_eq!(set.complete(3), vec![4]);
        assert_eq!(set.complete(4), Vec::<u64>::new());
        assert!(set.is_empty());
    }

    #[test]
    fn head_of_queue_runs_at_once_and_holds_back_later_simple_tasks() {
        let mut set = TaskSet::default();
        assert!(set.arrive(1, Simple));
        assert!(!set.arrive(2, Ordered));
        assert!(set.arrive(3, HeadOfQueue), "head of queue enters enabled");
        assert!(!set.arrive(4, Simple));
        assert_eq!(set.complete(3), Vec::<u64>::new(), "2 still waits for 1");
        assert_eq!(set.complete(1), vec![2]);
        assert_eq!(set.complete(2), vec![4]);
    }

    #[test]
    fn only_the_aca_attribute_is_refused() {
        assert!(aca_refusal(Aca).is_some());
        for attribute in [Simple, Ordered, HeadOfQueue, Untagged] {
            assert!(aca_refusal(attribute).is_none());
        }
    }
}
