//! One pointer's in-memory state: its hot version chain and its write lock.
//!
//! A [`PointerCell`] is guarded by its own small mutex, so two transactions touching
//! different pointers never contend. Waiters (for the lock, or for a prepared commit to
//! land) park on the cell's [`Event`], which is notified whenever the lock is released.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use event_listener::{Event, EventListener};
use parking_lot::Mutex;

use super::TxnId;

/// One committed version of a pointer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VersionRec {
    pub version: u64,
    /// The transaction that wrote it.
    pub txn: TxnId,
    /// The trace of that transaction.
    pub trace_id: Arc<str>,
    /// The JSON text of the value, `None` for a deletion (a tombstone).
    pub value: Option<Bytes>,
}

/// What a chain knows about the version visible at a read version.
#[derive(Debug, Clone)]
pub enum ChainLookup {
    Found(Arc<VersionRec>),
    /// No version at or below the read version exists.
    Absent,
    /// The answer is older than every hot version: ask cold storage.
    Cold,
}

/// Memory a version costs beyond its value: the record, its `Arc`, and the chain slot.
pub const VERSION_OVERHEAD: u64 = 96;
/// Memory a pointer with versions costs beyond its id: the cell, its skiplist entry, locks.
pub const POINTER_OVERHEAD: u64 = 160;

fn cost(v: &VersionRec) -> u64 {
    VERSION_OVERHEAD + v.value.as_ref().map_or(0, |b| b.len() as u64)
}

/// The newest versions of a pointer, ascending; older ones live only in cold storage.
#[derive(Debug, Default, Clone)]
pub struct VersionChain {
    hot: VecDeque<Arc<VersionRec>>,
    /// Versions older than `hot[0]` exist in cold storage.
    cold_below: bool,
    /// Memory the hot versions cost (values plus [`VERSION_OVERHEAD`] each).
    bytes: u64,
    /// The watermark at which cold versions were last pruned (see [`VersionChain::prune`]).
    cold_checked: u64,
}

impl VersionChain {
    /// A chain recovered from storage: its newest versions, and whether older ones exist.
    pub fn recovered(hot: Vec<VersionRec>, cold_below: bool) -> Self {
        let bytes = hot.iter().map(cost).sum();
        Self { hot: hot.into_iter().map(Arc::new).collect(), cold_below, bytes, cold_checked: 0 }
    }

    /// Memory the hot versions cost.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Keeps only the newest `keep` (at least one) versions in memory; older ones stay
    /// readable from cold storage. Returns how many were evicted.
    pub fn evict(&mut self, keep: usize) -> usize {
        let mut n = 0;
        while self.hot.len() > keep.max(1) {
            if let Some(v) = self.hot.pop_front() {
                self.bytes -= cost(&v);
            }
            self.cold_below = true;
            n += 1;
        }
        n
    }

    pub fn latest(&self) -> Option<&Arc<VersionRec>> {
        self.hot.back()
    }

    pub fn is_empty(&self) -> bool {
        self.hot.is_empty() && !self.cold_below
    }

    pub fn hot_len(&self) -> usize {
        self.hot.len()
    }

    /// The hot versions, ascending.
    pub fn hot(&self) -> impl Iterator<Item = &Arc<VersionRec>> {
        self.hot.iter()
    }

    /// Whether older versions exist in cold storage.
    pub fn has_cold(&self) -> bool {
        self.cold_below
    }

    /// The newest hot version above `seen` (`None`: any) and below `below`, if any: a
    /// commit that landed between a read and a commit version.
    pub fn newer_below(&self, seen: Option<u64>, below: u64) -> Option<&Arc<VersionRec>> {
        let idx = self.hot.partition_point(|v| v.version < below);
        self.hot.get(idx.checked_sub(1)?).filter(|v| seen.is_none_or(|s| v.version > s))
    }

    /// The version visible at `at`.
    pub fn at(&self, at: u64) -> ChainLookup {
        let idx = self.hot.partition_point(|v| v.version <= at);
        if idx > 0 {
            ChainLookup::Found(self.hot[idx - 1].clone())
        } else if self.cold_below {
            ChainLookup::Cold
        } else {
            ChainLookup::Absent
        }
    }

    /// Appends a newer version, keeping at most `max_hot` in memory (always at least one).
    pub fn push(&mut self, rec: VersionRec, max_hot: usize) {
        debug_assert!(self.hot.back().is_none_or(|v| v.version < rec.version));
        self.bytes += cost(&rec);
        self.hot.push_back(Arc::new(rec));
        self.evict(max_hot);
    }
}

/// What pruning a chain below a watermark did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainPrune {
    /// Nothing older than the watermark can go.
    Nothing,
    /// Hot versions older than `keep` (the newest at or below the watermark) were dropped;
    /// cold storage must drop every version below `keep` too.
    Pruned { keep: u64, dropped: usize, bytes: u64 },
    /// Every hot version is above the watermark but older ones exist in cold storage:
    /// there, everything below the newest version at or below the watermark can go.
    ColdOnly,
    /// The latest version is a tombstone at or below the watermark: the pointer is gone
    /// for every readable snapshot, so all of it (`through` and below) can go.
    Tombstone { through: u64, dropped: usize, bytes: u64 },
}

impl VersionChain {
    /// The lowest watermark at which [`Self::prune`] (with `cold_every`) would do anything:
    /// below it every prune is [`ChainPrune::Nothing`]; `u64::MAX` when nothing ever will
    /// until the chain changes.
    pub fn prunable_at(&self, cold_every: u64) -> u64 {
        let mut at = u64::MAX;
        // A second hot version makes the first one prunable once the watermark reaches it.
        if let Some(v) = self.hot.get(1) {
            at = at.min(v.version);
        }
        // A tombstone that is the newest version takes the pointer with it.
        if let Some(v) = self.hot.back().filter(|v| v.value.is_none()) {
            at = at.min(v.version);
        }
        // Cold versions: below the first hot one as soon as it is at or below the watermark,
        // or by the periodic disk check.
        if self.cold_below {
            at = at.min(self.cold_checked.saturating_add(cold_every));
            if let Some(v) = self.hot.front() {
                at = at.min(v.version);
            }
        }
        at
    }

    /// Drops what no snapshot at or above `watermark` can see: every version older than the
    /// newest one at or below it (which stays, so a read at the watermark is still right).
    ///
    /// When every hot version is newer than the watermark, only cold versions can be due,
    /// and which ones is known only on disk: that costs a range scan, so it is asked for
    /// ([`ChainPrune::ColdOnly`]) only once the watermark has moved `cold_every` past the last
    /// such scan. Before, every pass scanned every pointer with cold versions, which under a
    /// long retention found nothing and cost a tenth of the node's CPU.
    pub fn prune(&mut self, watermark: u64, cold_every: u64) -> ChainPrune {
        let at_or_below = self.hot.partition_point(|v| v.version <= watermark);
        if at_or_below == 0 {
            if self.cold_below && watermark >= self.cold_checked.saturating_add(cold_every) {
                self.cold_checked = watermark;
                return ChainPrune::ColdOnly;
            }
            return ChainPrune::Nothing;
        }
        let keep = at_or_below - 1;
        let size = |v: &Arc<VersionRec>| v.value.as_ref().map_or(0, |b| b.len() as u64);
        if keep == self.hot.len() - 1 && self.hot[keep].value.is_none() {
            let through = self.hot[keep].version;
            let bytes = self.hot.iter().map(size).sum();
            let dropped = self.hot.len();
            self.hot.clear();
            self.cold_below = false;
            self.bytes = 0;
            return ChainPrune::Tombstone { through, dropped, bytes };
        }
        if keep == 0 && !self.cold_below {
            return ChainPrune::Nothing;
        }
        let bytes = self.hot.iter().take(keep).map(size).sum();
        for v in self.hot.drain(..keep) {
            self.bytes -= cost(&v);
        }
        self.cold_below = false;
        ChainPrune::Pruned { keep: self.hot[0].version, dropped: keep, bytes }
    }
}

/// The holder of a pointer's write lock.
#[derive(Debug, Clone)]
pub struct LockEntry {
    pub txn: TxnId,
    /// Set once the holder is prepared: its commit version will be above this value, so a
    /// reader at or below it may ignore the pending write, and a reader above must wait.
    pub prepared_above: Option<u64>,
}

/// A prepared transaction's write of a pointer, not yet installed: replicated state, set by
/// `Prepare` and resolved by `Commit` or `Abort` (see [`super::command`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Intent {
    pub txn: TxnId,
    pub trace_id: Arc<str>,
    /// The txn's commit version will be above this (readers above it wait).
    pub prepared_above: u64,
    /// The value to install; `None` deletes.
    pub value: Option<Bytes>,
}

/// Mutable state of a pointer.
#[derive(Debug, Default)]
pub struct PointerState {
    /// Committed versions (replicated).
    pub chain: VersionChain,
    /// A prepared transaction's pending write (replicated).
    pub intent: Option<Intent>,
    /// The write lock (the leader's alone; never replicated).
    pub lock: Option<LockEntry>,
    /// The cell was unlinked from its partition; whoever holds it must look the pointer up again.
    pub dead: bool,
    /// The lock was just released under this mutex: wake the waiters once it is dropped.
    pub released: bool,
}

/// A pointer: its state and the event its waiters park on.
#[derive(Debug, Default)]
pub struct PointerCell {
    pub state: Mutex<PointerState>,
    /// Readers waiting for a prepared write to commit or abort: all of them can go on at
    /// once, so a release wakes them all.
    released: Event,
    /// Transactions waiting for the write lock: only one can take it, so a release wakes the
    /// longest waiter alone (first in, first out). Waking them all made every release of a
    /// hot pointer cost one futile retry per waiter.
    unlocked: Event,
}

impl PointerState {
    /// The prepared transaction whose pending write a read at `at` by `reader` must wait
    /// for: a prepared lock holder (the one-partition path marks only its lock) or an intent.
    pub fn prepared_for(&self, at: u64, reader: Option<&TxnId>) -> Option<&TxnId> {
        let lock = self.lock.as_ref().and_then(|l| l.prepared_above.map(|a| (&l.txn, a)));
        let intent = self.intent.as_ref().map(|i| (&i.txn, i.prepared_above));
        [lock, intent]
            .into_iter()
            .flatten()
            .find(|(txn, above)| at > *above && Some(*txn) != reader)
            .map(|(t, _)| t)
    }
}

impl PointerCell {
    pub fn with_chain(chain: VersionChain) -> Self {
        Self {
            state: Mutex::new(PointerState { chain, intent: None, lock: None, dead: false, released: false }),
            released: Event::new(),
            unlocked: Event::new(),
        }
    }

    /// A reader's listener that fires on the next release. Create it while holding the
    /// state lock so that a release between the check and the wait is never missed.
    pub fn listen(&self) -> EventListener {
        self.released.listen()
    }

    /// A lock waiter's listener, in line behind earlier ones; create it under the state lock.
    /// A waiter that is woken and then does not take the lock must call [`Self::pass_on`].
    /// (Dropping a listener that was woken but not yet polled passes the turn on by itself.)
    pub fn listen_lock(&self) -> EventListener {
        self.unlocked.listen()
    }

    /// The lock was released: wakes every reader and the longest lock waiter (unless one is
    /// already woken and has not run yet: it will find the lock free, or behind a newcomer
    /// whose release wakes the next).
    pub fn notify_released(&self) {
        self.released.notify(usize::MAX);
        self.unlocked.notify(1);
    }

    /// The cell was unlinked: every waiter retries on the pointer's new cell.
    pub fn notify_dead(&self) {
        self.released.notify(usize::MAX);
        self.unlocked.notify(usize::MAX);
    }

    /// A woken lock waiter gives up its turn (its transaction ended): wakes the next one.
    pub fn pass_on(&self) {
        self.unlocked.notify(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(version: u64) -> VersionRec {
        VersionRec { version, txn: "t".into(), trace_id: "x".into(), value: Some(Bytes::from_static(b"1")) }
    }

    #[derive(Debug, Clone)]
    enum ChainOp {
        Push { gap: u64, tombstone: bool, max_hot: usize },
        Evict(usize),
        Prune(u64),
    }

    fn chain_op() -> impl proptest::strategy::Strategy<Value = ChainOp> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (1..20u64, proptest::bool::weighted(0.2), 1..5usize)
                .prop_map(|(gap, tombstone, max_hot)| ChainOp::Push { gap, tombstone, max_hot }),
            1 => (1..4usize).prop_map(ChainOp::Evict),
            2 => (0..200u64).prop_map(ChainOp::Prune),
        ]
    }

    proptest::proptest! {
        /// `prunable_at` is exact: every watermark below it prunes nothing, and at it
        /// something goes. GC skips a partition on the strength of this bound.
        #[test]
        fn prunable_at_is_the_lowest_watermark_that_prunes(
            ops in proptest::collection::vec(chain_op(), 0..40),
            cold_every in 0..30u64,
        ) {
            let (mut c, mut version) = (VersionChain::default(), 0);
            for op in ops {
                match op {
                    ChainOp::Push { gap, tombstone, max_hot } => {
                        version += gap;
                        let value = (!tombstone).then(|| Bytes::from_static(b"1"));
                        c.push(VersionRec { value, ..rec(version) }, max_hot);
                    }
                    ChainOp::Evict(keep) => {
                        c.evict(keep);
                    }
                    ChainOp::Prune(w) => {
                        c.prune(w, cold_every);
                    }
                }
                let bound = c.prunable_at(cold_every);
                for w in (0..bound.min(version + 2 * cold_every + 2)).rev().take(60) {
                    proptest::prop_assert_eq!(c.clone().prune(w, cold_every), ChainPrune::Nothing, "w {} below bound {}", w, bound);
                }
                if bound != u64::MAX {
                    proptest::prop_assert_ne!(c.clone().prune(bound, cold_every), ChainPrune::Nothing);
                }
            }
        }
    }

    #[test]
    fn lookup_finds_newest_at_or_below() {
        let mut c = VersionChain::default();
        assert!(matches!(c.at(10), ChainLookup::Absent));
        c.push(rec(5), 4);
        c.push(rec(9), 4);
        assert!(matches!(c.at(4), ChainLookup::Absent));
        assert!(matches!(c.at(5), ChainLookup::Found(v) if v.version == 5));
        assert!(matches!(c.at(8), ChainLookup::Found(v) if v.version == 5));
        assert!(matches!(c.at(100), ChainLookup::Found(v) if v.version == 9));
    }

    #[test]
    fn pruning_keeps_the_newest_version_at_or_below_the_watermark() {
        let mut c = VersionChain::default();
        for v in 1..=5 {
            c.push(rec(v * 10), 8);
        }
        assert_eq!(c.prune(5, 0), ChainPrune::Nothing);
        assert_eq!(c.prune(10, 0), ChainPrune::Nothing, "the only version at or below stays");
        assert_eq!(c.prune(35, 0), ChainPrune::Pruned { keep: 30, dropped: 2, bytes: 2 });
        assert!(matches!(c.at(35), ChainLookup::Found(v) if v.version == 30));
        assert!(matches!(c.at(29), ChainLookup::Absent), "below the horizon nothing is left");
        assert_eq!(c.prune(35, 0), ChainPrune::Nothing, "idempotent");
        // With older versions in cold storage, they go even if no hot version does.
        let mut c = VersionChain::default();
        for v in 1..=5 {
            c.push(rec(v * 10), 2);
        }
        assert_eq!(c.prune(35, 0), ChainPrune::ColdOnly);
        assert_eq!(c.prune(40, 0), ChainPrune::Pruned { keep: 40, dropped: 0, bytes: 0 });
        assert!(matches!(c.at(35), ChainLookup::Absent));
    }

    #[test]
    fn cold_versions_are_looked_for_once_per_cold_interval() {
        let mut c = VersionChain::default();
        for v in 1..=5 {
            c.push(rec(v * 100), 2);
        }
        // Hot: 400 and 500; 100..300 are cold. Every hot version is above the watermarks.
        assert_eq!(c.prune(150, 100), ChainPrune::ColdOnly);
        assert_eq!(c.prune(200, 100), ChainPrune::Nothing, "not 100 past the last scan yet");
        assert_eq!(c.prune(249, 100), ChainPrune::Nothing);
        assert_eq!(c.prune(250, 100), ChainPrune::ColdOnly);
        assert_eq!(c.prune(450, 100), ChainPrune::Pruned { keep: 400, dropped: 0, bytes: 0 });
    }

    #[test]
    fn a_tombstone_below_the_watermark_removes_the_pointer() {
        let mut c = VersionChain::default();
        c.push(rec(10), 8);
        c.push(VersionRec { value: None, ..rec(20) }, 8);
        assert_eq!(c.prune(15, 0), ChainPrune::Nothing);
        assert_eq!(c.prune(20, 0), ChainPrune::Tombstone { through: 20, dropped: 2, bytes: 1 });
        assert!(c.is_empty());
    }

    #[test]
    fn eviction_sends_old_reads_to_cold_storage() {
        let mut c = VersionChain::default();
        for v in 1..=5 {
            c.push(rec(v * 10), 2);
        }
        assert_eq!(c.hot_len(), 2);
        assert!(matches!(c.at(35), ChainLookup::Cold));
        assert!(matches!(c.at(45), ChainLookup::Found(v) if v.version == 40));
        assert!(!c.is_empty());
    }
}
