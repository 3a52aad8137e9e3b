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
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// The newest versions of a pointer, ascending; older ones live only in cold storage.
#[derive(Debug, Default)]
pub struct VersionChain {
    hot: VecDeque<Arc<VersionRec>>,
    /// Versions older than `hot[0]` exist in cold storage.
    cold_below: bool,
}

impl VersionChain {
    /// A chain recovered from storage: its newest versions, and whether older ones exist.
    pub fn recovered(hot: Vec<VersionRec>, cold_below: bool) -> Self {
        Self { hot: hot.into_iter().map(Arc::new).collect(), cold_below }
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
        self.hot.push_back(Arc::new(rec));
        while self.hot.len() > max_hot.max(1) {
            self.hot.pop_front();
            self.cold_below = true;
        }
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

/// Mutable state of a pointer.
#[derive(Debug, Default)]
pub struct PointerState {
    pub chain: VersionChain,
    pub lock: Option<LockEntry>,
    /// The cell was unlinked from its partition; whoever holds it must look the pointer up again.
    pub dead: bool,
}

/// A pointer: its state and the event its waiters park on.
#[derive(Debug, Default)]
pub struct PointerCell {
    pub state: Mutex<PointerState>,
    released: Event,
}

impl PointerCell {
    pub fn with_chain(chain: VersionChain) -> Self {
        Self { state: Mutex::new(PointerState { chain, lock: None, dead: false }), released: Event::new() }
    }

    /// A listener that fires on the next release. Create it while holding the state lock so
    /// that a release between the check and the wait is never missed.
    pub fn listen(&self) -> EventListener {
        self.released.listen()
    }

    /// Wakes every waiter.
    pub fn notify_released(&self) {
        self.released.notify(usize::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(version: u64) -> VersionRec {
        VersionRec { version, txn: "t".into(), trace_id: "x".into(), value: Some(Bytes::from_static(b"1")) }
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
