//! The leader timeline: every change of a group's leader, term or membership (voters and
//! learners) this member saw, with the moment it saw it, so `GET /cluster` with
//! `X-reSTM-At` answers who led each group then, and who its members were. It is this member's view (a member sees a change when its Raft metrics do, within
//! a heartbeat of the others), bounded, and pruned behind the GC horizon like versions:
//! the newest change at or below the horizon is kept, so a moment at the horizon still
//! has an answer.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::raft::replica::Replica;
use crate::raft::state_machine::Observer;
use crate::raft::{GroupId, NodeId};

/// Changes kept at most, whatever the horizon.
const CAPACITY: usize = 4096;

/// One change: from `version` on (as this member's clock had it), `group` was led by
/// `leader` (`None`: no leader, an election under way) in `term`, with these voters and
/// learners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub version: u64,
    pub group: GroupId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

impl Change {
    /// Whether `other` says the same of the group (all but the moment).
    fn same(&self, other: &Change) -> bool {
        (self.leader, self.term, &self.voters, &self.learners)
            == (other.leader, other.term, &other.voters, &other.learners)
    }
}

/// The changes, oldest first.
#[derive(Debug, Default)]
pub struct Timeline {
    changes: Mutex<VecDeque<Change>>,
}

impl Timeline {
    /// Records `change` if it differs from the group's last (in leader, term or members).
    pub fn record(&self, change: Change) {
        let mut changes = self.changes.lock();
        let last = changes.iter().rev().find(|c| c.group == change.group);
        if last.is_some_and(|l| l.same(&change)) {
            return;
        }
        // Versions only rise: a change seen is never before one seen earlier.
        let floor = changes.back().map_or(0, |c| c.version);
        changes.push_back(Change { version: change.version.max(floor), ..change });
        if changes.len() > CAPACITY {
            changes.pop_front();
        }
    }

    /// Every group's leader and term as of `at`: the last change at or below it (a group
    /// with none is left out: this member had not seen it yet, or it was pruned).
    pub fn as_of(&self, at: u64) -> Vec<Change> {
        let changes = self.changes.lock();
        let mut out: Vec<Change> = Vec::new();
        for c in changes.iter().take_while(|c| c.version <= at) {
            match out.iter_mut().find(|o| o.group == c.group) {
                Some(o) => *o = c.clone(),
                None => out.push(c.clone()),
            }
        }
        out.sort_by_key(|c| c.group);
        out
    }

    /// The changes at or below `at`, the newest `limit` of them, oldest first.
    pub fn until(&self, at: u64, limit: usize) -> Vec<Change> {
        let changes = self.changes.lock();
        let upto: Vec<Change> = changes.iter().take_while(|c| c.version <= at).cloned().collect();
        upto[upto.len().saturating_sub(limit)..].to_vec()
    }

    /// Drops what is below `horizon`, but for each group's newest change at or below it.
    pub fn prune(&self, horizon: u64) {
        let mut changes = self.changes.lock();
        // Oldest first: the last one at or below the horizon per group stands.
        let mut standing: Vec<(GroupId, usize)> = Vec::new();
        for (i, c) in changes.iter().enumerate().take_while(|(_, c)| c.version <= horizon) {
            match standing.iter_mut().find(|(g, _)| *g == c.group) {
                Some(s) => s.1 = i,
                None => standing.push((c.group, i)),
            }
        }
        let mut i = 0;
        changes.retain(|c| {
            let keep = c.version > horizon || standing.iter().any(|(_, at)| *at == i);
            i += 1;
            keep
        });
    }

    /// Watches `replica`'s Raft metrics for as long as it runs, recording each change of
    /// its leader, term or membership at `observer`'s clock.
    pub fn follow(self: &Arc<Self>, replica: &Replica, observer: Arc<dyn Observer>) {
        let timeline = Arc::downgrade(self);
        let group = replica.group();
        let mut watch = replica.watch();
        tokio::spawn(async move {
            loop {
                let (leader, term, voters, learners) = {
                    let m = watch.borrow_and_update();
                    let membership = m.membership_config.membership();
                    (
                        m.current_leader,
                        m.current_term,
                        membership.voter_ids().collect(),
                        membership.learner_ids().collect(),
                    )
                };
                let Some(t) = timeline.upgrade() else { return };
                t.record(Change { version: observer.now_version(), group, leader, term, voters, learners });
                drop(t);
                if watch.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(version: u64, group: GroupId, leader: Option<NodeId>, term: u64) -> Change {
        Change { version, group, leader, term, voters: vec![1, 2, 3], learners: vec![] }
    }

    #[test]
    fn a_membership_change_is_a_change() {
        let t = Timeline::default();
        t.record(change(10, 0, Some(1), 1));
        t.record(Change { learners: vec![4], ..change(20, 0, Some(1), 1) });
        t.record(Change { voters: vec![1, 2, 3, 4], ..change(30, 0, Some(1), 1) });
        t.record(Change { voters: vec![1, 2, 3, 4], ..change(31, 0, Some(1), 1) }); // the same
        assert_eq!(t.until(u64::MAX, 10).len(), 3);
        assert_eq!(t.as_of(25)[0].learners, vec![4]);
        assert_eq!(t.as_of(35)[0].voters, vec![1, 2, 3, 4]);
    }

    #[test]
    fn as_of_answers_each_groups_leader_then() {
        let t = Timeline::default();
        t.record(change(10, 0, Some(1), 1));
        t.record(change(11, 1, Some(2), 1));
        t.record(change(12, 0, Some(1), 1)); // the same: not a change
        t.record(change(20, 0, None, 2));
        t.record(change(25, 0, Some(3), 2));
        assert_eq!(t.as_of(9), vec![]);
        assert_eq!(t.as_of(15), vec![change(10, 0, Some(1), 1), change(11, 1, Some(2), 1)]);
        assert_eq!(t.as_of(22), vec![change(20, 0, None, 2), change(11, 1, Some(2), 1)]);
        assert_eq!(t.as_of(u64::MAX)[0], change(25, 0, Some(3), 2));
        assert_eq!(t.until(22, 2), vec![change(11, 1, Some(2), 1), change(20, 0, None, 2)]);
    }

    #[test]
    fn pruning_keeps_each_groups_newest_at_the_horizon() {
        let t = Timeline::default();
        for (v, g, l) in [(10, 0, 1), (11, 1, 2), (20, 0, 3), (30, 0, 1)] {
            t.record(change(v, g, Some(l), v));
        }
        t.prune(25);
        assert_eq!(
            t.until(u64::MAX, 10),
            vec![change(11, 1, Some(2), 11), change(20, 0, Some(3), 20), change(30, 0, Some(1), 30)]
        );
        assert_eq!(t.as_of(25)[0].leader, Some(3));
    }

    #[test]
    fn versions_never_go_back() {
        let t = Timeline::default();
        t.record(change(10, 0, Some(1), 1));
        t.record(change(8, 1, Some(2), 1));
        assert_eq!(t.until(u64::MAX, 10)[1].version, 10);
    }
}
