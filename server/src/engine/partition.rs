//! A partition: the pointers whose id hashes to it, changed only through a small set of
//! commands (`lock`, `unlock`, `prepare`, `validate`, `commit`).
//!
//! A partition is the unit that a later cluster places on a node and replicates, so every
//! command is deterministic: it reads no clock and draws no random number; times and ids
//! arrive as arguments. A transaction spanning partitions is driven by the coordinator in
//! [`super::Engine`], which sends each touched partition its share of every step.

use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use crossbeam_skiplist::SkipMap;
use event_listener::EventListener;

use super::error::Conflict;
use super::gc::{DiskPrune, PartitionGc};
use super::pointer::{
    ChainLookup, ChainPrune, LockEntry, POINTER_OVERHEAD, PointerCell, VersionChain, VersionRec,
};
use super::{PtrId, TxnId};

/// The partition of a pointer: a stable hash (xxh3, fixed seed) of its id modulo the
/// partition count. It ends up on disk and on the wire, so it must never change.
pub fn partition_of(ptr: &str, partitions: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(ptr.as_bytes()) % u64::from(partitions.max(1))) as u32
}

/// Result of the `lock` command.
#[derive(Debug)]
pub enum LockOutcome {
    /// The lock is now held by the caller.
    Acquired,
    /// The caller already held it.
    AlreadyHeld,
    /// Another transaction holds it; the listener fires when it is released.
    Held { holder: TxnId, listener: EventListener },
}

/// Result of a read.
#[derive(Debug)]
pub enum PartitionRead {
    Found(Arc<VersionRec>),
    Absent,
    /// Older than every hot version; ask cold storage.
    Cold,
    /// A prepared transaction (`holder`) may commit a version visible at this read version:
    /// wait.
    Wait {
        holder: TxnId,
        listener: EventListener,
    },
}

/// The pointers of one partition, ordered by id.
#[derive(Debug, Default)]
pub struct Partition {
    pub id: u32,
    pointers: SkipMap<PtrId, Arc<PointerCell>>,
    /// Memory the partition's pointers and hot versions cost (see [`Partition::memory`]).
    bytes: AtomicU64,
    /// No pointer has anything to prune below this watermark (a lower bound of every
    /// chain's [`VersionChain::prunable_at`]), so a GC pass below it need not walk the
    /// partition. Commits and evictions lower it; a pass that walks sets it anew. Starts
    /// at 0: the first pass walks.
    prunable_at: AtomicU64,
    /// The `cold_every` the bound was computed with; a pass with another one walks.
    cold_every: AtomicU64,
}

/// Memory a pointer costs with a chain of `chain_bytes` (nothing while it has no version).
fn footprint(ptr: &str, chain: &VersionChain) -> u64 {
    if chain.hot_len() == 0 { 0 } else { POINTER_OVERHEAD + ptr.len() as u64 + chain.bytes() }
}

impl Partition {
    pub fn new(id: u32) -> Self {
        Self { id, pointers: SkipMap::new(), ..Default::default() }
    }

    /// Installs a recovered pointer.
    pub fn install_recovered(&self, ptr: PtrId, chain: VersionChain) {
        self.bytes.fetch_add(footprint(&ptr, &chain), Ordering::Relaxed);
        self.pointers.insert(ptr, Arc::new(PointerCell::with_chain(chain)));
    }

    /// Memory the pointers with versions and their hot versions cost, by the engine's
    /// accounting: values plus a fixed overhead per version and per pointer.
    pub fn memory(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn account(&self, before: u64, after: u64) {
        if after >= before {
            self.bytes.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.bytes.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// `Evict { keep }`: keeps only the newest `keep` versions of each pointer in memory.
    /// Returns how many versions left memory (they stay readable from cold storage).
    pub fn evict(&self, keep: usize) -> u64 {
        let mut n = 0;
        for entry in self.pointers.iter() {
            let cell = entry.value();
            let mut st = cell.state.lock();
            let before = footprint(entry.key(), &st.chain);
            n += st.chain.evict(keep) as u64;
            self.account(before, footprint(entry.key(), &st.chain));
            self.lower_prunable_at(&st.chain);
        }
        n
    }

    /// A chain changed: GC must not skip this partition once the watermark reaches what
    /// became prunable. Called under the pointer's mutex, so a pass either sees the change
    /// in its walk or finds the lowered bound when it ends.
    fn lower_prunable_at(&self, chain: &VersionChain) {
        self.prunable_at
            .fetch_min(chain.prunable_at(self.cold_every.load(Ordering::SeqCst)), Ordering::SeqCst);
    }

    /// The newest committed version of `ptr` (the newest is always in memory).
    pub fn latest_version(&self, ptr: &str) -> Option<u64> {
        self.cell(ptr).and_then(|c| c.state.lock().chain.latest().map(|v| v.version))
    }

    fn cell(&self, ptr: &str) -> Option<Arc<PointerCell>> {
        self.pointers.get(ptr).map(|e| e.value().clone())
    }

    /// Number of pointers, hot versions and locks held; for introspection.
    pub fn stats(&self) -> (usize, usize) {
        let mut versions = 0;
        for e in self.pointers.iter() {
            versions += e.value().state.lock().chain.hot_len();
        }
        (self.pointers.len(), versions)
    }

    /// `Lock { txn, ptr }`: takes the pointer's write lock, or says who holds it.
    pub fn lock(&self, txn: &TxnId, ptr: &PtrId) -> LockOutcome {
        loop {
            let cell = self.pointers.get_or_insert_with(ptr.clone(), Default::default).value().clone();
            let mut st = cell.state.lock();
            if st.dead {
                drop(st);
                std::thread::yield_now();
                continue;
            }
            return match &st.lock {
                None => {
                    st.lock = Some(LockEntry { txn: txn.clone(), prepared_above: None });
                    LockOutcome::Acquired
                }
                Some(l) if l.txn == *txn => LockOutcome::AlreadyHeld,
                Some(l) => LockOutcome::Held { holder: l.txn.clone(), listener: cell.listen_lock() },
            };
        }
    }

    /// Releases `ptr`'s lock if `txn` holds it, and unlinks the cell if nothing is left in it.
    pub fn unlock(&self, txn: &TxnId, ptr: &PtrId) {
        let Some(cell) = self.cell(ptr) else { return };
        let mut st = cell.state.lock();
        if st.lock.as_ref().is_some_and(|l| l.txn == *txn) {
            st.lock = None;
            let dead = st.chain.is_empty();
            if dead {
                st.dead = true;
                self.pointers.remove(ptr);
            }
            drop(st);
            if dead { cell.notify_dead() } else { cell.notify_released() }
        }
    }

    /// A lock waiter on `ptr` that was woken gives its turn to the next (see
    /// [`PointerCell::pass_on`]).
    pub fn pass_on(&self, ptr: &str) {
        if let Some(cell) = self.cell(ptr) {
            cell.pass_on();
        }
    }

    /// The transaction holding `ptr`'s lock, if any.
    pub fn holder(&self, ptr: &str) -> Option<TxnId> {
        self.cell(ptr).and_then(|c| c.state.lock().lock.as_ref().map(|l| l.txn.clone()))
    }

    /// `Prepare { txn, ptrs }`: freezes the txn's staged writes. Its commit version will be
    /// above `prepared_above`. Fails on the first pointer whose lock the txn does not hold.
    pub fn prepare(&self, txn: &TxnId, ptrs: &[PtrId], prepared_above: u64) -> Result<(), Conflict> {
        for ptr in ptrs {
            let cell = self.cell(ptr).ok_or_else(|| Conflict::LockLost { ptr: ptr.clone() })?;
            let mut st = cell.state.lock();
            match st.lock.as_mut() {
                Some(l) if l.txn == *txn => l.prepared_above = Some(prepared_above),
                Some(l) => return Err(Conflict::Locked { ptr: ptr.clone(), holder: l.txn.clone() }),
                None => return Err(Conflict::LockLost { ptr: ptr.clone() }),
            }
        }
        Ok(())
    }

    /// `Validate { txn, reads }`: every pointer read must still have the version the txn saw
    /// and must not be locked by another transaction.
    pub fn validate(&self, txn: &TxnId, reads: &[(PtrId, Option<u64>)]) -> Result<(), Conflict> {
        for (ptr, seen) in reads {
            let Some(cell) = self.cell(ptr) else {
                if seen.is_none() {
                    continue;
                }
                // The pointer vanished entirely; only garbage collection of a tombstone does that.
                return Err(Conflict::Collected { ptr: ptr.clone() });
            };
            let st = cell.state.lock();
            if let Some(l) = &st.lock
                && l.txn != *txn
            {
                return Err(Conflict::Locked { ptr: ptr.clone(), holder: l.txn.clone() });
            }
            let latest = st.chain.latest();
            if latest.map(|v| v.version) != *seen {
                // A newer version replaced the one read, or garbage collection removed the
                // tombstone that was read (the latest version is always hot, so an empty
                // chain means that), as when the whole pointer is gone above.
                return Err(match latest {
                    Some(v) => Conflict::Stale {
                        ptr: ptr.clone(),
                        winner_txn: v.txn.clone(),
                        winner_version: v.version,
                    },
                    None => Conflict::Collected { ptr: ptr.clone() },
                });
            }
        }
        Ok(())
    }

    /// `Commit { txn, commit_version }`: installs the staged writes and releases the locks.
    pub fn commit(
        &self,
        txn: &TxnId,
        commit_version: u64,
        trace_id: &Arc<str>,
        writes: &[(PtrId, Option<Bytes>)],
        max_hot: usize,
    ) {
        for (ptr, value) in writes {
            let Some(cell) = self.cell(ptr) else { continue };
            let mut st = cell.state.lock();
            if st.lock.as_ref().is_none_or(|l| l.txn != *txn) {
                continue;
            }
            let before = footprint(ptr, &st.chain);
            st.chain.push(
                VersionRec {
                    version: commit_version,
                    txn: txn.clone(),
                    trace_id: trace_id.clone(),
                    value: value.clone(),
                },
                max_hot,
            );
            self.account(before, footprint(ptr, &st.chain));
            self.lower_prunable_at(&st.chain);
            st.lock = None;
            drop(st);
            cell.notify_released();
        }
    }

    /// Reads the version of `ptr` visible at `at` for `reader` (which may be `None`).
    pub fn read(&self, ptr: &str, at: u64, reader: Option<&TxnId>) -> PartitionRead {
        let Some(cell) = self.cell(ptr) else { return PartitionRead::Absent };
        let st = cell.state.lock();
        if let Some(l) = &st.lock
            && let Some(above) = l.prepared_above
            && at > above
            && Some(&l.txn) != reader
        {
            return PartitionRead::Wait { holder: l.txn.clone(), listener: cell.listen() };
        }
        match st.chain.at(at) {
            ChainLookup::Found(v) => PartitionRead::Found(v),
            ChainLookup::Absent => PartitionRead::Absent,
            ChainLookup::Cold => PartitionRead::Cold,
        }
    }

    /// `Gc { watermark }`: prunes every pointer's history below `watermark` (see
    /// [`super::gc`]), one pointer's mutex at a time, and says what cold storage must drop.
    ///
    /// A partition with nothing prunable below `watermark` is not walked at all (see
    /// `prunable_at`): with a long retention most passes find nothing, and walking every
    /// pointer of a big store each second cost CPU for nothing.
    pub fn gc(&self, watermark: u64, cold_every: u64) -> PartitionGc {
        let mut out = PartitionGc::default();
        let same_cold_every = self.cold_every.swap(cold_every, Ordering::SeqCst) == cold_every;
        if same_cold_every && watermark < self.prunable_at.load(Ordering::SeqCst) {
            return out;
        }
        // Commits during the walk lower the bound again; the walk adds what it leaves behind.
        self.prunable_at.store(u64::MAX, Ordering::SeqCst);
        let mut next = u64::MAX;
        for entry in self.pointers.iter() {
            let ptr = entry.key().clone();
            let cell = entry.value().clone();
            let mut st = cell.state.lock();
            if st.dead {
                continue;
            }
            if st.lock.is_some() && st.chain.latest().is_some_and(|v| v.value.is_none()) {
                // A writer is about to put something after the tombstone: leave the pointer be.
                next = next.min(st.chain.prunable_at(cold_every));
                continue;
            }
            let before = footprint(&ptr, &st.chain);
            let outcome = st.chain.prune(watermark, cold_every);
            self.account(before, footprint(&ptr, &st.chain));
            // (A removed pointer's chain is empty: its bound is u64::MAX.)
            next = next.min(st.chain.prunable_at(cold_every));
            match outcome {
                ChainPrune::Nothing => {}
                ChainPrune::ColdOnly => out.disk.push(DiskPrune::KeepNewestAtOrBelow { ptr, at: watermark }),
                ChainPrune::Pruned { keep, dropped, bytes } => {
                    out.versions += dropped as u64;
                    out.bytes += bytes;
                    out.disk.push(DiskPrune::Below { ptr, version: keep });
                }
                ChainPrune::Tombstone { through, dropped, bytes } => {
                    out.versions += dropped as u64;
                    out.bytes += bytes;
                    out.removed += 1;
                    st.dead = true;
                    self.pointers.remove(&ptr);
                    drop(st);
                    cell.notify_dead();
                    out.disk.push(DiskPrune::Through { ptr, version: through });
                }
            }
        }
        self.prunable_at.fetch_min(next, Ordering::SeqCst);
        out
    }

    /// Pointer ids in order, starting after `after` (or at `start`), all starting with `prefix`.
    pub fn ids_from<'a>(
        &'a self,
        start: Bound<&'a str>,
        prefix: &'a str,
    ) -> impl Iterator<Item = PtrId> + 'a {
        let start: Bound<&str> = start;
        self.pointers
            .range::<str, _>((start, Bound::Unbounded))
            .map(|e| e.key().clone())
            .take_while(move |k| k.starts_with(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_hash_is_stable() {
        // These values are on disk and on the wire: they must never change.
        assert_eq!(partition_of("a", 64), partition_of("a", 64));
        assert_eq!(partition_of("account/1", 64), (xxhash_rust::xxh3::xxh3_64(b"account/1") % 64) as u32);
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2d06800538d394c2);
    }

    #[test]
    fn lock_is_exclusive_and_reentrant() {
        let p = Partition::new(0);
        let (a, b): (TxnId, TxnId) = ("a".into(), "b".into());
        let x: PtrId = "x".into();
        assert!(matches!(p.lock(&a, &x), LockOutcome::Acquired));
        assert!(matches!(p.lock(&a, &x), LockOutcome::AlreadyHeld));
        assert!(matches!(p.lock(&b, &x), LockOutcome::Held { holder, .. } if holder == a));
        p.unlock(&a, &x);
        assert!(matches!(p.lock(&b, &x), LockOutcome::Acquired));
    }

    #[test]
    fn empty_cells_are_unlinked_on_unlock() {
        let p = Partition::new(0);
        let a: TxnId = "a".into();
        let x: PtrId = "x".into();
        p.lock(&a, &x);
        p.unlock(&a, &x);
        assert_eq!(p.stats().0, 0);
    }

    /// Polls a listener once: has it fired?
    fn fired(l: &mut EventListener) -> bool {
        use std::future::Future;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        std::pin::Pin::new(l).poll(&mut cx).is_ready()
    }

    fn held(outcome: LockOutcome) -> EventListener {
        match outcome {
            LockOutcome::Held { listener, .. } => listener,
            _ => panic!("expected the lock to be held"),
        }
    }

    #[test]
    fn a_release_wakes_every_reader_but_one_lock_waiter_in_arrival_order() {
        let p = Partition::new(0);
        let [a, b, c, d]: [TxnId; 4] = ["a".into(), "b".into(), "c".into(), "d".into()];
        let x: PtrId = "x".into();
        p.lock(&a, &x);
        let (mut lb, mut lc, mut ld) = (held(p.lock(&b, &x)), held(p.lock(&c, &x)), held(p.lock(&d, &x)));
        p.prepare(&a, std::slice::from_ref(&x), 100).unwrap();
        let mut readers: Vec<EventListener> = (0..2)
            .map(|_| match p.read("x", 101, None) {
                PartitionRead::Wait { listener, .. } => listener,
                _ => panic!("a read above a prepared write waits"),
            })
            .collect();
        assert!(!fired(&mut lb) && !fired(&mut readers[0]));
        p.commit(&a, 105, &"t".into(), &[(x.clone(), Some(Bytes::from_static(b"1")))], 4);
        assert!(readers.iter_mut().all(fired), "every reader goes on");
        assert!(fired(&mut lb), "the first waiter gets the turn");
        assert!(!fired(&mut lc) && !fired(&mut ld), "the others sleep on");
        // b was woken but gives up (say its lease ran out): c is next, d still sleeps.
        p.pass_on(&x);
        assert!(fired(&mut lc) && !fired(&mut ld));
        assert!(matches!(p.lock(&c, &x), LockOutcome::Acquired));
        p.unlock(&c, &x);
        assert!(fired(&mut ld));
    }

    #[test]
    fn a_woken_waiter_dropped_before_it_runs_passes_its_turn_on() {
        let p = Partition::new(0);
        let [a, b, c]: [TxnId; 3] = ["a".into(), "b".into(), "c".into()];
        let x: PtrId = "x".into();
        p.lock(&a, &x);
        p.commit(&a, 5, &"t".into(), &[(x.clone(), Some(Bytes::from_static(b"1")))], 4);
        p.lock(&a, &x);
        let (lb, mut lc) = (held(p.lock(&b, &x)), held(p.lock(&c, &x)));
        p.unlock(&a, &x);
        assert!(!fired(&mut lc));
        drop(lb); // b timed out just as it was woken
        assert!(fired(&mut lc));
    }

    #[test]
    fn an_unlinked_cell_wakes_every_lock_waiter() {
        let p = Partition::new(0);
        let [a, b, c]: [TxnId; 3] = ["a".into(), "b".into(), "c".into()];
        let x: PtrId = "x".into();
        p.lock(&a, &x);
        let (mut lb, mut lc) = (held(p.lock(&b, &x)), held(p.lock(&c, &x)));
        p.unlock(&a, &x); // nothing was ever written: the cell goes
        assert!(fired(&mut lb) && fired(&mut lc), "both retry on the new cell");
    }

    #[test]
    fn gc_walks_a_partition_only_once_something_in_it_is_prunable() {
        let p = Partition::new(0);
        let a: TxnId = "a".into();
        let x: PtrId = "x".into();
        let bound = || p.prunable_at.load(Ordering::SeqCst);
        let write = |version: u64, value: Option<&'static [u8]>, max_hot: usize| {
            p.lock(&a, &x);
            p.commit(&a, version, &"t".into(), &[(x.clone(), value.map(Bytes::from_static))], max_hot);
        };
        assert_eq!(bound(), 0, "a new (or recovered) partition is walked by the first pass");
        write(10, Some(b"1"), 8);
        assert!(p.gc(5, 0).disk.is_empty());
        assert_eq!(bound(), u64::MAX, "one version: nothing to prune until something changes");
        write(20, Some(b"2"), 8);
        assert_eq!(bound(), 20, "the commit made v10 prunable from watermark 20");
        let skipped = p.gc(19, 0);
        assert!(skipped.versions == 0 && skipped.disk.is_empty());
        assert_eq!(p.gc(20, 0).versions, 1);
        assert_eq!(bound(), u64::MAX);
        write(30, None, 8);
        assert_eq!(bound(), 30, "a tombstone goes once the watermark reaches it");
        assert_eq!(p.gc(30, 0).removed, 1);
        // Eviction to cold storage: the disk check is due every cold_every.
        write(40, Some(b"4"), 8);
        write(50, Some(b"5"), 1);
        assert_eq!(bound(), 0, "v40 went to cold storage, never checked");
        assert_eq!(p.gc(45, 0).disk.len(), 1, "cold versions are looked for on disk");
        assert_eq!(bound(), 45);
        // A pass with another cold_every walks whatever the bound says; the next disk
        // check is due at 45 + 10, but v50 reaching the watermark comes first.
        assert!(p.gc(46, 10).disk.is_empty());
        assert_eq!(bound(), 50);
        assert!(p.gc(49, 10).disk.is_empty());
        assert_eq!(p.gc(50, 10).disk, vec![DiskPrune::Below { ptr: x.clone(), version: 50 }]);
        assert_eq!(bound(), u64::MAX);
    }

    #[test]
    fn prepared_writes_block_only_reads_that_could_see_them() {
        let p = Partition::new(0);
        let a: TxnId = "a".into();
        let x: PtrId = "x".into();
        p.lock(&a, &x);
        p.prepare(&a, std::slice::from_ref(&x), 100).unwrap();
        assert!(matches!(p.read("x", 100, None), PartitionRead::Absent));
        assert!(matches!(p.read("x", 101, None), PartitionRead::Wait { .. }));
        assert!(matches!(p.read("x", 101, Some(&a)), PartitionRead::Absent));
        p.commit(&a, 105, &"t".into(), &[(x.clone(), Some(Bytes::from_static(b"1")))], 4);
        assert!(matches!(p.read("x", 105, None), PartitionRead::Found(v) if v.version == 105));
    }
}
