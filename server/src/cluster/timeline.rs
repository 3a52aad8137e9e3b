//! The leader timeline: every change of a group's leader, term or membership (voters and
//! learners) this member saw, with the moment it saw it, so `GET /cluster` with
//! `X-reSTM-At` answers who led each group then, and who its members were. It is this member's view (a member sees a change when its Raft metrics do, within
//! a heartbeat of the others), bounded, and pruned behind the GC horizon like versions:
//! the newest change at or below the horizon is kept, so a moment at the horizon still
//! has an answer.
//!
//! [`Timeline::open`] keeps it in the node's database too (the `timeline` keyspace, one
//! key per change in the order seen), so a restarted member still answers who led before
//! it went down. It is written without an fsync of its own: a crash may lose the last
//! changes seen, which are history for people, not state anything is decided by.

use std::collections::VecDeque;
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::raft::replica::Replica;
use crate::raft::state_machine::Observer;
use crate::raft::{GroupId, NodeId};

/// Changes kept at most, whatever the horizon.
const CAPACITY: usize = 4096;

/// One change: from `version` on (as this member's clock had it), `group` was led by
/// `leader` (`None`: no leader, an election under way) in `term`, with these voters and
/// learners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// The changes, oldest first, each with its key in the store.
#[derive(Default)]
pub struct Timeline {
    changes: Mutex<VecDeque<(u64, Change)>>,
    store: Option<Keyspace>,
}

impl Timeline {
    /// The timeline kept in `db`, with the changes it holds from before.
    pub fn open(db: &Database) -> Result<Self, fjall::Error> {
        let store = db.keyspace("timeline", KeyspaceCreateOptions::default)?;
        let mut changes = VecDeque::new();
        for item in store.iter() {
            let (key, value) = item.into_inner()?;
            let key = <[u8; 8]>::try_from(&key[..]).map(u64::from_be_bytes);
            match (key, postcard::from_bytes::<Change>(&value)) {
                (Ok(key), Ok(change)) => changes.push_back((key, change)),
                // Unreadable (written by another version): history only, left out.
                _ => tracing::warn!("an unreadable leader timeline entry, skipped"),
            }
        }
        Ok(Self { changes: Mutex::new(changes), store: Some(store) })
    }

    /// Records `change` if it differs from the group's last (in leader, term or members).
    pub fn record(&self, change: Change) {
        let mut changes = self.changes.lock();
        let last = changes.iter().rev().find(|(_, c)| c.group == change.group);
        if last.is_some_and(|(_, l)| l.same(&change)) {
            return;
        }
        // Versions only rise: a change seen is never before one seen earlier.
        let floor = changes.back().map_or(0, |(_, c)| c.version);
        let key = changes.back().map_or(0, |(k, _)| k + 1);
        let change = Change { version: change.version.max(floor), ..change };
        if let Some(store) = &self.store {
            let written = postcard::to_allocvec(&change)
                .map_err(|e| e.to_string())
                .and_then(|bytes| store.insert(key.to_be_bytes(), bytes).map_err(|e| e.to_string()));
            if let Err(e) = written {
                tracing::warn!(error = %e, "keeping a leader change in the timeline's store");
            }
        }
        changes.push_back((key, change));
        if changes.len() > CAPACITY
            && let Some((key, _)) = changes.pop_front()
        {
            self.forget(key);
        }
    }

    /// Removes the change under `key` from the store.
    fn forget(&self, key: u64) {
        if let Some(store) = &self.store
            && let Err(e) = store.remove(key.to_be_bytes())
        {
            tracing::warn!(error = %e, "dropping a leader change from the timeline's store");
        }
    }

    /// Every group's leader and term as of `at`: the last change at or below it (a group
    /// with none is left out: this member had not seen it yet, or it was pruned).
    pub fn as_of(&self, at: u64) -> Vec<Change> {
        let changes = self.changes.lock();
        let mut out: Vec<Change> = Vec::new();
        for (_, c) in changes.iter().take_while(|(_, c)| c.version <= at) {
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
        let upto: Vec<Change> =
            changes.iter().take_while(|(_, c)| c.version <= at).map(|(_, c)| c.clone()).collect();
        upto[upto.len().saturating_sub(limit)..].to_vec()
    }

    /// Drops what is below `horizon`, but for each group's newest change at or below it.
    pub fn prune(&self, horizon: u64) {
        let mut changes = self.changes.lock();
        // Oldest first: the last one at or below the horizon per group stands.
        let mut standing: Vec<(GroupId, usize)> = Vec::new();
        for (i, (_, c)) in changes.iter().enumerate().take_while(|(_, (_, c))| c.version <= horizon) {
            match standing.iter_mut().find(|(g, _)| *g == c.group) {
                Some(s) => s.1 = i,
                None => standing.push((c.group, i)),
            }
        }
        let mut i = 0;
        let mut dropped = Vec::new();
        changes.retain(|(key, c)| {
            let keep = c.version > horizon || standing.iter().any(|(_, at)| *at == i);
            i += 1;
            if !keep {
                dropped.push(*key);
            }
            keep
        });
        drop(changes);
        for key in dropped {
            self.forget(key);
        }
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
    fn a_reopened_timeline_holds_what_was_recorded_and_pruned() {
        let dir = std::env::temp_dir().join(format!("restm-timeline-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let db = Database::builder(&dir).open().unwrap();
            let t = Timeline::open(&db).unwrap();
            for (v, g, l) in [(10, 0, 1), (11, 1, 2), (20, 0, 3), (30, 0, 1)] {
                t.record(change(v, g, Some(l), v));
            }
            t.prune(25);
        }
        let db = Database::builder(&dir).open().unwrap();
        let t = Timeline::open(&db).unwrap();
        assert_eq!(
            t.until(u64::MAX, 10),
            vec![change(11, 1, Some(2), 11), change(20, 0, Some(3), 20), change(30, 0, Some(1), 30)]
        );
        // A change after the restart goes after them, keyed after them.
        t.record(change(5, 1, Some(3), 40));
        assert_eq!(t.until(u64::MAX, 10).last(), Some(&change(30, 1, Some(3), 40)));
        drop(t);
        drop(db);
        let db = Database::builder(&dir).open().unwrap();
        assert_eq!(Timeline::open(&db).unwrap().until(u64::MAX, 10).len(), 4);
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn versions_never_go_back() {
        let t = Timeline::default();
        t.record(change(10, 0, Some(1), 1));
        t.record(change(8, 1, Some(2), 1));
        assert_eq!(t.until(u64::MAX, 10)[1].version, 10);
    }
}
