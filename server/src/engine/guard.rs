//! Read guards and read floors: what a transaction's reads leave on a partition that a
//! coordinator elsewhere validated them on.
//!
//! On one node, or while one Raft group holds every partition, the leader's locks order a
//! writer after every reader it could invalidate (Silo's order: reads are validated after
//! the commit version is chosen, under the write locks). When the partitions a txn touches
//! are led by other nodes, no one lock table sees both the reader and the writer, so the
//! order has to live in the replicated state, where every replica and every next leader
//! finds it:
//!
//! - a [`Guard`](super::command::Command::Guard) validates a txn's reads on the partition
//!   and, from then until the txn's `Commit` or `Abort` there, makes any other txn's write
//!   of a guarded pointer a conflict (the reader's commit version is not known yet);
//! - the guarding txn's `Commit` at `V` leaves a *read floor* of `V` on each pointer it
//!   read: a later write of it must commit above `V`, so it serializes after the reader,
//!   which did not see it. A one-partition commit at or below the floor is refused; a
//!   `Prepare` is told the floor (`Outcome::PreparedAbove`) and its coordinator picks a
//!   commit version above it.
//!
//! A floor at or below the partition's closed timestamp is dropped when a `Close` passes
//! it: no commit that low can come any more. Everything here changes only inside
//! `Partition::apply`, so it is as deterministic as the rest of the replicated state.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::error::Conflict;
use super::{PtrId, TxnId};

/// One partition's guards and floors (replicated).
#[derive(Debug, Default)]
pub struct Guards {
    /// Guarding txn → the pointers it read here.
    by_txn: HashMap<TxnId, Vec<PtrId>>,
    /// Pointer → the txns guarding it.
    by_ptr: HashMap<PtrId, BTreeSet<TxnId>>,
    /// Pointer → the highest commit version of a txn that read it under a guard, and that
    /// txn (named in the conflicts the floor causes).
    floors: HashMap<PtrId, (u64, TxnId)>,
}

/// [`Guards`] in a canonical order, for snapshots and for comparing replicas.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct GuardsDump {
    pub guards: BTreeMap<TxnId, Vec<PtrId>>,
    pub floors: BTreeMap<PtrId, (u64, TxnId)>,
}

impl Guards {
    /// Whether there is neither a guard nor a floor: the checks have nothing to find.
    pub fn is_empty(&self) -> bool {
        self.by_txn.is_empty() && self.floors.is_empty()
    }

    /// Whether `txn` guards reads here.
    pub fn guards(&self, txn: &str) -> bool {
        self.by_txn.contains_key(txn)
    }

    /// The txns guarding reads here.
    pub fn txns(&self) -> impl Iterator<Item = &TxnId> {
        self.by_txn.keys()
    }

    /// Guards `ptrs` for `txn` (adding to what it already guards).
    pub fn guard(&mut self, txn: &TxnId, ptrs: impl IntoIterator<Item = PtrId>) {
        let held = self.by_txn.entry(txn.clone()).or_default();
        for ptr in ptrs {
            if self.by_ptr.entry(ptr.clone()).or_default().insert(txn.clone()) {
                held.push(ptr);
            }
        }
    }

    /// Drops `txn`'s guards; committed at `Some(v)`, each pointer it guarded keeps a floor of
    /// at least `v`.
    pub fn release(&mut self, txn: &TxnId, committed: Option<u64>) {
        let Some(ptrs) = self.by_txn.remove(txn) else { return };
        for ptr in ptrs {
            if let Some(set) = self.by_ptr.get_mut(&ptr) {
                set.remove(txn);
                if set.is_empty() {
                    self.by_ptr.remove(&ptr);
                }
            }
            if let Some(v) = committed {
                let floor = self.floors.entry(ptr).or_insert((0, txn.clone()));
                if v > floor.0 {
                    *floor = (v, txn.clone());
                }
            }
        }
    }

    /// Drops the floors at or below `closed`: no commit that low can land any more.
    pub fn close(&mut self, closed: u64) {
        self.floors.retain(|_, (v, _)| *v > closed);
    }

    /// Whether `txn` may write `ptr`: no other txn guards it, and (for a commit at
    /// `Some(cv)`) its floor is below `cv`.
    pub fn check_write(&self, txn: &TxnId, ptr: &PtrId, cv: Option<u64>) -> Result<(), Conflict> {
        if let Some(reader) = self.by_ptr.get(ptr).and_then(|set| set.iter().find(|t| *t != txn)) {
            return Err(Conflict::Locked { ptr: ptr.clone(), holder: reader.clone() });
        }
        if let (Some(cv), Some((floor, reader))) = (cv, self.floors.get(ptr))
            && cv <= *floor
            && reader != txn
        {
            return Err(Conflict::ReadAbove { ptr: ptr.clone(), reader: reader.clone(), read_at: *floor });
        }
        Ok(())
    }

    /// The highest floor among `ptrs`, as the conflict a commit at or below it would be.
    pub fn floor_of<'a>(&self, ptrs: impl IntoIterator<Item = &'a PtrId>) -> Option<Conflict> {
        let (ptr, (read_at, reader)) = ptrs
            .into_iter()
            .filter_map(|p| self.floors.get(p).map(|f| (p, f)))
            .max_by_key(|(_, (v, _))| *v)?;
        Some(Conflict::ReadAbove { ptr: ptr.clone(), reader: reader.clone(), read_at: *read_at })
    }

    pub fn dump(&self) -> GuardsDump {
        GuardsDump {
            guards: self.by_txn.iter().map(|(t, ps)| (t.clone(), ps.clone())).collect(),
            floors: self.floors.iter().map(|(p, f)| (p.clone(), f.clone())).collect(),
        }
    }

    pub fn restore(&mut self, image: GuardsDump) {
        *self = Self::default();
        for (txn, ptrs) in image.guards {
            self.guard(&txn, ptrs);
        }
        self.floors = image.floors.into_iter().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_blocks_other_writers_until_release_and_a_commit_leaves_a_floor() {
        let mut g = Guards::default();
        let (r, w, x): (TxnId, TxnId, PtrId) = ("r".into(), "w".into(), "x".into());
        g.guard(&r, [x.clone()]);
        assert_eq!(g.check_write(&w, &x, None), Err(Conflict::Locked { ptr: x.clone(), holder: r.clone() }));
        assert_eq!(g.check_write(&r, &x, Some(3)), Ok(()), "its own guard does not stop a txn");
        g.release(&r, Some(10));
        assert!(!g.guards("r"));
        let below = Conflict::ReadAbove { ptr: x.clone(), reader: r.clone(), read_at: 10 };
        assert_eq!(g.check_write(&w, &x, Some(10)), Err(below));
        assert_eq!(g.check_write(&w, &x, Some(11)), Ok(()));
        assert_eq!(g.floor_of([&x]).and_then(|c| c.winner().map(|(_, v)| v)), Some(10));
        // An aborted reader leaves no floor, and a floor never goes down.
        g.guard(&w, [x.clone()]);
        g.release(&w, None);
        g.guard(&w, [x.clone()]);
        g.release(&w, Some(4));
        let floor = Conflict::ReadAbove { ptr: x.clone(), reader: r.clone(), read_at: 10 };
        assert_eq!(g.floor_of([&x]), Some(floor.clone()));
        g.close(9);
        assert_eq!(g.floor_of([&x]), Some(floor));
        g.close(10);
        assert!(g.is_empty(), "a close at the floor drops it");
    }
}
