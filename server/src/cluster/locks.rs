//! Pointer locks that coordinators on other members hold at a partition's leader.
//!
//! Where every member coordinates its own txns, a txn's locks in its coordinator's memory
//! order it only against the other txns of that member. The paper puts a pointer's lock
//! with the pointer: so a coordinator that does not lead a written pointer's group also
//! takes the lock at the group's leader (`Request::Lock`), waiting there as a local writer
//! waits, and a writer or reader on the leader finds it like any other lock. The leader
//! keeps such locks in the partition's own lock table and, beside it, [`RemoteLocks`]: who
//! holds what since when, so that it can release them.
//!
//! A remote lock goes when:
//! - its txn's `Commit` or `Abort` on the partition comes through the leader
//!   ([`RemoteLocks::ended`]);
//! - its coordinator ends the txn otherwise and says so (`Request::Unlock`);
//! - its coordinator went silent, or answers that it no longer runs the txn (the sweep in
//!   [`super::Cluster::sweep_locks`], and a waiter that finds it silent).
//!
//! A `Prepare` or `Guard` a remote coordinator proposes is checked against the lock table
//! first ([`RemoteLocks::admit`]): its writes take their locks if they are free, and a
//! pointer written or read under another txn's lock is a conflict naming the holder, as on
//! one node. Locks are the leader's memory only: a new leader starts without them, which
//! may let a txn through that would have waited, never a wrong commit, since every
//! `Prepare` re-validates against the replicated state.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use parking_lot::Mutex;

use crate::engine::command::Command;
use crate::engine::partition::{LockOutcome, Partition};
use crate::engine::{Conflict, PtrId, TxnId};

/// The locks remote coordinators hold at this node, by txn.
#[derive(Default)]
pub struct RemoteLocks {
    held: Mutex<HashMap<TxnId, Held>>,
    /// Txns whose coordinator said they ended (`Request::Unlock`), for [`ENDED_KEPT`]: a
    /// lock request of theirs still waiting here gives up rather than take the lock.
    ended: Mutex<HashMap<TxnId, Instant>>,
}

/// How long an ended txn is remembered: longer than any lock wait.
const ENDED_KEPT: std::time::Duration = std::time::Duration::from_secs(120);

/// One txn's remote locks here.
struct Held {
    since: Instant,
    /// (partition, pointer)
    ptrs: BTreeSet<(u32, PtrId)>,
}

impl RemoteLocks {
    /// Records that `txn` holds `ptr`'s lock on `partition`.
    pub fn record(&self, txn: &TxnId, partition: u32, ptr: &PtrId) {
        let mut held = self.held.lock();
        let entry =
            held.entry(txn.clone()).or_insert_with(|| Held { since: Instant::now(), ptrs: BTreeSet::new() });
        entry.ptrs.insert((partition, ptr.clone()));
    }

    /// Releases `txn`'s locks on `ptrs` (every one it holds here for `None`), waking their
    /// waiters.
    pub fn release(&self, partitions: &[Partition], txn: &TxnId, ptrs: Option<&[PtrId]>) {
        let released: Vec<(u32, PtrId)> = {
            let mut held = self.held.lock();
            let Some(entry) = held.get_mut(txn) else { return };
            let gone: Vec<(u32, PtrId)> = match ptrs {
                None => std::mem::take(&mut entry.ptrs).into_iter().collect(),
                Some(ptrs) => {
                    let gone: Vec<_> = entry.ptrs.iter().filter(|(_, p)| ptrs.contains(p)).cloned().collect();
                    for g in &gone {
                        entry.ptrs.remove(g);
                    }
                    gone
                }
            };
            if entry.ptrs.is_empty() {
                held.remove(txn);
            }
            gone
        };
        for (partition, ptr) in released {
            if let Some(p) = partitions.get(partition as usize) {
                p.unlock(txn, &ptr);
            }
        }
    }

    /// `txn`'s coordinator ended it: its locks here go, and a request of its still
    /// waiting for one gives up.
    pub fn end(&self, partitions: &[Partition], txn: &TxnId, ptrs: &[PtrId]) {
        {
            let mut ended = self.ended.lock();
            let now = Instant::now();
            ended.retain(|_, at| now.duration_since(*at) < ENDED_KEPT);
            ended.insert(txn.clone(), now);
        }
        self.release(partitions, txn, Some(ptrs));
    }

    /// Whether `txn`'s coordinator said it ended.
    pub fn has_ended(&self, txn: &str) -> bool {
        self.ended.lock().contains_key(txn)
    }

    /// A command of `txn` ended it on `partition` (`Commit`, `Abort`, `Resolve`): its locks
    /// there go.
    pub fn ended(&self, partitions: &[Partition], partition: u32, cmd: &Command) {
        let txn = match cmd {
            Command::Commit { txn, .. } | Command::Abort { txn } | Command::Resolve { txn, .. } => txn,
            _ => return,
        };
        let ptrs: Vec<PtrId> = {
            let held = self.held.lock();
            let Some(entry) = held.get(txn) else { return };
            entry.ptrs.iter().filter(|(p, _)| *p == partition).map(|(_, ptr)| ptr.clone()).collect()
        };
        if !ptrs.is_empty() {
            self.release(partitions, txn, Some(&ptrs));
        }
    }

    /// Checks a remote coordinator's `Prepare` or `Guard` on `partition` against the lock
    /// table: each pointer written takes its lock (or already has it), and no pointer
    /// written or read is locked by another txn. A conflict names the holder.
    pub fn admit(&self, partitions: &[Partition], partition: u32, cmd: &Command) -> Result<(), Conflict> {
        let Some(part) = partitions.get(partition as usize) else { return Ok(()) };
        let (txn, writes, reads) = match cmd {
            Command::Prepare { txn, writes, reads, .. } => (txn, writes.as_slice(), reads.as_slice()),
            Command::Guard { txn, reads, .. } => (txn, &[][..], reads.as_slice()),
            _ => return Ok(()),
        };
        for (ptr, _) in reads {
            if let Some(holder) = part.lock_holder(ptr).filter(|h| h != txn) {
                return Err(Conflict::Locked { ptr: ptr.clone(), holder });
            }
        }
        for (ptr, _) in writes {
            match part.lock(txn, ptr) {
                LockOutcome::Acquired => self.record(txn, partition, ptr),
                LockOutcome::AlreadyHeld => {}
                LockOutcome::Held { holder, .. } => {
                    return Err(Conflict::Locked { ptr: ptr.clone(), holder });
                }
            }
        }
        Ok(())
    }

    /// The txns holding locks here since before `before`, by age.
    pub fn older_than(&self, before: Instant) -> Vec<TxnId> {
        let held = self.held.lock();
        let mut old: Vec<(Instant, TxnId)> =
            held.iter().filter(|(_, h)| h.since < before).map(|(t, h)| (h.since, t.clone())).collect();
        old.sort();
        old.into_iter().map(|(_, t)| t).collect()
    }

    /// How many txns hold remote locks here.
    pub fn len(&self) -> usize {
        self.held.lock().len()
    }

    /// Whether no remote coordinator holds a lock here.
    pub fn is_empty(&self) -> bool {
        self.held.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_prepare_takes_its_locks_and_conflicts_with_anothers() {
        let parts: Vec<Partition> = (0..2).map(Partition::new).collect();
        let locks = RemoteLocks::default();
        let (x, y): (PtrId, PtrId) = ("x".into(), "y".into());
        let prepare = |txn: &str, reads: Vec<(PtrId, Option<u64>)>, writes: Vec<PtrId>| Command::Prepare {
            txn: txn.into(),
            trace_id: "t".into(),
            prepared_above: 1,
            reads,
            writes: writes.into_iter().map(|p| (p, Some(Bytes::from_static(b"1")))).collect(),
            primary: x.clone(),
        };
        assert_eq!(locks.admit(&parts, 0, &prepare("a", vec![], vec![x.clone()])), Ok(()));
        assert_eq!(parts[0].lock_holder(&x).as_deref(), Some("a"));
        // Again for the same txn: it holds it already.
        assert_eq!(locks.admit(&parts, 0, &prepare("a", vec![], vec![x.clone()])), Ok(()));
        // Another txn writing or reading it loses to the holder.
        let lost = Conflict::Locked { ptr: x.clone(), holder: "a".into() };
        assert_eq!(locks.admit(&parts, 0, &prepare("b", vec![], vec![x.clone()])), Err(lost.clone()));
        let guard = Command::Guard { txn: "b".into(), reads: vec![(x.clone(), None)], primary: y.clone() };
        assert_eq!(locks.admit(&parts, 0, &guard), Err(lost));
        // A commit through this leader releases it.
        locks.ended(&parts, 0, &Command::Commit { txn: "a".into(), commit_version: 5 });
        assert_eq!(parts[0].lock_holder(&x), None);
        assert!(locks.is_empty());
        assert_eq!(locks.admit(&parts, 0, &guard), Ok(()));
    }

    #[test]
    fn release_frees_what_it_names_or_everything() {
        let parts: Vec<Partition> = (0..2).map(Partition::new).collect();
        let locks = RemoteLocks::default();
        let (x, y): (PtrId, PtrId) = ("x".into(), "y".into());
        for (p, ptr) in [(0, &x), (1, &y)] {
            assert!(matches!(parts[p as usize].lock(&"a".into(), ptr), LockOutcome::Acquired));
            locks.record(&"a".into(), p, ptr);
        }
        locks.release(&parts, &"a".into(), Some(std::slice::from_ref(&x)));
        assert_eq!(parts[0].lock_holder(&x), None);
        assert_eq!(parts[1].lock_holder(&y).as_deref(), Some("a"));
        assert_eq!(
            locks.older_than(Instant::now() + std::time::Duration::from_secs(1)),
            vec![TxnId::from("a")]
        );
        locks.release(&parts, &"a".into(), None);
        assert_eq!(parts[1].lock_holder(&y), None);
        assert_eq!(locks.len(), 0);
    }
}
