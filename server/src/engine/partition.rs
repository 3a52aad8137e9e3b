//! A partition: the pointers whose id hashes to it.
//!
//! Two layers share each pointer's cell:
//! - the **replicated state** (version chains, intents of prepared txns, and the records of
//!   txns whose primary is here) changes only through [`Partition::apply`] of a
//!   [`Command`], which is deterministic: it reads no clock, draws no random number and does
//!   no I/O; versions and ids arrive inside the command (see [`super::command`]);
//! - the **leader's layer** (write locks, their prepared marks, lock queues and waiters)
//!   decides who waits: `lock`, `unlock`, `prepare`, `validate`. It is never replicated;
//!   `Prepare` and `PrepareCommit` re-check against the replicated state what it protects.
//!
//! A transaction spanning partitions is driven by the coordinator in [`super::Engine`],
//! which sends each touched partition its share of every step.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use crossbeam_skiplist::SkipMap;
use event_listener::EventListener;

use parking_lot::Mutex;

use super::command::{Command, Outcome, TxnState};
use super::error::Conflict;
use super::gc::Pin;
use super::gc::{DiskPrune, PartitionGc};
use super::guard::{Guards, GuardsDump};
use super::pointer::{
    ChainLookup, ChainPrune, Intent, LockEntry, POINTER_OVERHEAD, PointerCell, PointerState, VersionChain,
    VersionRec,
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
    /// Prepared txns → the pointers they hold intents on here (replicated).
    prepared: Mutex<HashMap<TxnId, Vec<PtrId>>>,
    /// Records of txns whose primary pointer is here (replicated).
    records: Mutex<HashMap<TxnId, TxnState>>,
    /// The primary pointer of each txn prepared or guarding here (replicated): where a
    /// resolver finds its record.
    primaries: Mutex<HashMap<TxnId, PtrId>>,
    /// The closed timestamp (replicated): no commit at or below it is still to come.
    closed: AtomicU64,
    /// The cluster's pins (replicated), by id: only the first partition holds any.
    pins: Mutex<BTreeMap<String, Pin>>,
    /// The cluster's GC horizon (replicated; only the first partition moves it): no member
    /// prunes at or above it.
    horizon: AtomicU64,
    /// Read guards and read floors (replicated; see [`super::guard`]).
    guards: Mutex<Guards>,
    /// Whether `guards` holds anything: the commit path skips its mutex while it does not.
    guarding: AtomicBool,
}

/// A partition's replicated state in a canonical order, for comparing replicas.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct PartitionDump {
    /// Pointer → its hot versions (ascending), whether older ones exist, and its intent.
    pub pointers: BTreeMap<PtrId, (Vec<VersionRec>, bool, Option<Intent>)>,
    pub prepared: BTreeMap<TxnId, Vec<PtrId>>,
    pub records: BTreeMap<TxnId, TxnState>,
    pub primaries: BTreeMap<TxnId, PtrId>,
    pub closed: u64,
    /// The pins, by id.
    pub pins: BTreeMap<String, Pin>,
    /// The cluster's GC horizon.
    pub horizon: u64,
    /// Read guards and floors.
    pub guards: GuardsDump,
}

/// Whether a read of `ptr` that saw `seen` still holds on `chain`: no version newer than
/// `seen` (below `below`, when a commit version bounds what can serialize before it), and,
/// when a version was seen, the chain not emptied by garbage collection (the latest version
/// is always hot, so an empty chain means a tombstone read was collected).
fn changed(ptr: &PtrId, chain: &VersionChain, seen: Option<u64>, below: Option<u64>) -> Result<(), Conflict> {
    let newer = match below {
        None => chain.latest().filter(|v| Some(v.version) != seen),
        Some(cv) => chain.newer_below(seen, cv),
    };
    if let Some(v) = newer {
        return Err(Conflict::Stale {
            ptr: ptr.clone(),
            winner_txn: v.txn.clone(),
            winner_version: v.version,
        });
    }
    if seen.is_some() && chain.is_empty() {
        return Err(Conflict::Collected { ptr: ptr.clone() });
    }
    Ok(())
}

/// What [`Partition::check`] found fine: the written pointers' cells that exist (in
/// order, for the change that follows to reuse), and for a `Prepare` the newest version
/// among them, as the conflict a commit at or below it would be.
struct Checked {
    cells: Vec<Option<Arc<PointerCell>>>,
    newest: Option<Conflict>,
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

    /// The cell of a pointer read at version `seen`, for a check that the read still holds:
    /// `None` when it is gone and was read as absent (nothing to check). Gone after it was
    /// read as present, only garbage collection of a tombstone removes a pointer whole.
    fn read_cell(&self, ptr: &PtrId, seen: Option<u64>) -> Result<Option<Arc<PointerCell>>, Conflict> {
        match self.cell(ptr) {
            None if seen.is_some() => Err(Conflict::Collected { ptr: ptr.clone() }),
            cell => Ok(cell),
        }
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

    /// Who holds `ptr`'s lock, if anyone does.
    pub fn lock_holder(&self, ptr: &str) -> Option<TxnId> {
        self.cell(ptr)?.state.lock().lock.as_ref().map(|l| l.txn.clone())
    }

    /// Releases `ptr`'s lock if `txn` holds it, and unlinks the cell if nothing is left in it.
    pub fn unlock(&self, txn: &TxnId, ptr: &PtrId) {
        let Some(cell) = self.cell(ptr) else { return };
        let mut st = cell.state.lock();
        if st.lock.as_ref().is_some_and(|l| l.txn == *txn) {
            st.lock = None;
            let dead = st.chain.is_empty() && st.intent.is_none();
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
            let Some(cell) = self.read_cell(ptr, *seen)? else { continue };
            let st = cell.state.lock();
            if let Some(l) = &st.lock
                && l.txn != *txn
            {
                return Err(Conflict::Locked { ptr: ptr.clone(), holder: l.txn.clone() });
            }
            if let Some(i) = &st.intent
                && i.txn != *txn
            {
                return Err(Conflict::Locked { ptr: ptr.clone(), holder: i.txn.clone() });
            }
            changed(ptr, &st.chain, *seen, None)?;
        }
        Ok(())
    }

    /// Installs a one-partition commit (`PrepareCommit`) and releases its locks.
    pub fn commit(
        &self,
        txn: &TxnId,
        commit_version: u64,
        trace_id: &Arc<str>,
        writes: &[(PtrId, Option<Bytes>)],
        max_hot: usize,
    ) {
        let cmd = Command::PrepareCommit {
            txn: txn.clone(),
            trace_id: trace_id.clone(),
            commit_version,
            reads: Vec::new(),
            writes: writes.to_vec(),
        };
        self.apply_releasing(&cmd, max_hot, Some(txn));
    }

    // ------------------------------------------------------------ the replicated state

    /// Applies one command to the replicated state (see [`super::command`] for the table).
    /// Deterministic: the same commands in the same order give the same state. `max_hot`
    /// only says how many versions stay in memory; older ones are read from cold storage,
    /// so it changes no answer.
    pub fn apply(&self, cmd: &Command, max_hot: usize) -> Outcome {
        self.apply_releasing(cmd, max_hot, None)
    }

    /// [`Self::apply`], and on the leader, in the same visit of each pointer a commit
    /// installs, releases the lock `leader` holds on it (waking its waiters): one lookup and
    /// one critical section per pointer instead of two.
    pub fn apply_releasing(&self, cmd: &Command, max_hot: usize, leader: Option<&TxnId>) -> Outcome {
        match cmd {
            Command::Prepare { txn, trace_id, prepared_above, reads, writes, primary } => {
                let Checked { cells, newest } = match self.check(txn, reads, writes, None) {
                    Ok(checked) => checked,
                    Err(c) => return Outcome::Conflict(c),
                };
                // A pointer written has a version, or a guarded reader's floor, above the mark
                // (a coordinator whose clock lags the partition's): the commit version must
                // be above it, and readers up to it skip the intents.
                let floor = self.with_guards(|g| g.floor_of(writes.iter().map(|(p, _)| p))).flatten();
                let above = newest.into_iter().chain(floor).max_by_key(|c| c.winner().map_or(0, |(_, v)| v));
                let read_at = above.as_ref().and_then(|c| c.winner()).map_or(0, |(_, v)| v);
                let mark = (*prepared_above).max(read_at);
                for ((ptr, value), cell) in writes.iter().zip(cells) {
                    let intent = Intent {
                        txn: txn.clone(),
                        trace_id: trace_id.clone(),
                        prepared_above: mark,
                        value: value.clone(),
                    };
                    self.with_cell(ptr, cell, |_, st| st.intent = Some(intent));
                }
                self.prepared.lock().insert(txn.clone(), writes.iter().map(|(p, _)| p.clone()).collect());
                self.primaries.lock().insert(txn.clone(), primary.clone());
                match above {
                    Some(conflict) if read_at > *prepared_above => Outcome::PreparedAbove(conflict),
                    _ => Outcome::Prepared,
                }
            }
            Command::Guard { txn, reads, primary } => {
                if let Err(c) = self.check(txn, reads, &[], None) {
                    return Outcome::Conflict(c);
                }
                self.change_guards(|g| g.guard(txn, reads.iter().map(|(p, _)| p.clone())));
                self.primaries.lock().insert(txn.clone(), primary.clone());
                Outcome::Prepared
            }
            Command::PrepareCommit { txn, trace_id, commit_version, reads, writes } => {
                let cells = match self.check(txn, reads, writes, Some(*commit_version)) {
                    Ok(checked) => checked.cells,
                    Err(c) => return Outcome::Conflict(c),
                };
                for ((ptr, value), cell) in writes.iter().zip(cells) {
                    let rec = VersionRec {
                        version: *commit_version,
                        txn: txn.clone(),
                        trace_id: trace_id.clone(),
                        value: value.clone(),
                    };
                    self.with_cell(ptr, cell, |ptr, st| self.install(ptr, st, rec, max_hot, leader));
                }
                Outcome::Committed(*commit_version)
            }
            Command::Commit { txn, commit_version } => {
                self.end(txn, Some(*commit_version), max_hot, leader);
                self.records.lock().remove(txn);
                Outcome::Committed(*commit_version)
            }
            Command::Abort { txn } => {
                self.end(txn, None, max_hot, leader);
                self.records.lock().remove(txn);
                Outcome::Aborted
            }
            Command::Resolve { txn, state } => match state {
                TxnState::Committed(v) => {
                    self.end(txn, Some(*v), max_hot, leader);
                    Outcome::Committed(*v)
                }
                TxnState::Aborted | TxnState::Open => {
                    self.end(txn, None, max_hot, leader);
                    Outcome::Aborted
                }
            },
            Command::TxnRecord { txn, state } => {
                // The first decision stands: a resolver's abort and a coordinator's commit
                // may race through the log, and whichever lands first is the txn's fate.
                // A commit is recorded only while the txn still holds its intents here (the
                // primary is one of its writes): after an abort took them, it is refused.
                let holds_intents = self.prepared.lock().contains_key(txn);
                let mut records = self.records.lock();
                match (records.get(txn).copied(), *state) {
                    (Some(decided @ (TxnState::Committed(_) | TxnState::Aborted)), asked)
                        if decided != asked =>
                    {
                        Outcome::Decided(decided)
                    }
                    (None | Some(TxnState::Open), TxnState::Committed(_)) if !holds_intents => {
                        Outcome::Decided(TxnState::Aborted)
                    }
                    _ => {
                        records.insert(txn.clone(), *state);
                        Outcome::Recorded
                    }
                }
            }
            Command::Close { closed } => {
                // Never past a prepared txn's mark: its commit version is only known to be
                // above that, and a next leader may still install it (by its record).
                let closed = (*closed).min(self.lowest_prepared_mark());
                let before = self.closed.fetch_max(closed, Ordering::SeqCst);
                let now = before.max(closed);
                if self.guarding.load(Ordering::SeqCst) {
                    self.change_guards(|g| g.close(now));
                }
                Outcome::Closed(now)
            }
            Command::Pin { pin } => {
                let mut pins = self.pins.lock();
                pins.retain(|_, p| p.expires_ms > pin.created_ms);
                // A member may already have pruned below the horizon: that is no history to
                // promise. (The leader checked its own horizon, which may lag the cluster's.)
                let horizon = self.horizon.load(Ordering::SeqCst);
                if pin.version < horizon {
                    return Outcome::BelowHorizon(horizon);
                }
                pins.insert(pin.id.clone(), pin.clone());
                Outcome::Pinned
            }
            Command::Unpin { id } => Outcome::Unpinned(self.pins.lock().remove(id)),
            Command::Horizon { horizon, now_ms } => {
                // Never past a pin still live: the leader may have computed its watermark
                // before a pin it accepted meanwhile, whose `Pin` is earlier in the log.
                let held = self
                    .pins
                    .lock()
                    .values()
                    .filter(|p| p.expires_ms > *now_ms)
                    .map(|p| p.version)
                    .min()
                    .unwrap_or(u64::MAX);
                let horizon = (*horizon).min(held);
                let before = self.horizon.fetch_max(horizon, Ordering::SeqCst);
                Outcome::Horizon(before.max(horizon))
            }
        }
    }

    /// Ends `txn` here: its intents installed at `Some(commit_version)` or dropped, its
    /// guards released (leaving floors when committed). Its record, if here, is the caller's.
    fn end(&self, txn: &TxnId, committed: Option<u64>, max_hot: usize, leader: Option<&TxnId>) {
        let ptrs = self.prepared.lock().remove(txn).unwrap_or_default();
        for ptr in &ptrs {
            match committed {
                Some(version) => self.with_cell(ptr, None, |ptr, st| {
                    if let Some(i) = st.intent.take_if(|i| i.txn == *txn) {
                        st.released = true; // readers waiting on the intent go on
                        let rec = VersionRec { version, txn: i.txn, trace_id: i.trace_id, value: i.value };
                        self.install(ptr, st, rec, max_hot, leader);
                    }
                }),
                None => {
                    if let Some(cell) = self.cell(ptr) {
                        let dropped = cell.state.lock().intent.take_if(|i| i.txn == *txn).is_some();
                        if dropped {
                            cell.notify_released();
                        }
                    }
                }
            }
        }
        if self.guarding.load(Ordering::SeqCst) {
            self.change_guards(|g| g.release(txn, committed));
        }
        let mut primaries = self.primaries.lock();
        if !primaries.is_empty() {
            primaries.remove(txn);
        }
    }

    /// The primary pointer of `txn`, while it is prepared or guards reads here.
    pub fn primary_of(&self, txn: &str) -> Option<PtrId> {
        self.primaries.lock().get(txn).cloned()
    }

    /// The lowest `prepared_above` of the txns prepared here (`u64::MAX` when none is).
    fn lowest_prepared_mark(&self) -> u64 {
        let firsts: Vec<PtrId> =
            self.prepared.lock().values().filter_map(|ptrs| ptrs.first().cloned()).collect();
        firsts
            .iter()
            .filter_map(|ptr| self.cell(ptr))
            .filter_map(|cell| cell.state.lock().intent.as_ref().map(|i| i.prepared_above))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// `f` of the guards, when there are any (`None` otherwise: there is nothing to find).
    fn with_guards<R>(&self, f: impl FnOnce(&Guards) -> R) -> Option<R> {
        if !self.guarding.load(Ordering::SeqCst) {
            return None;
        }
        Some(f(&self.guards.lock()))
    }

    /// Changes the guards, keeping [`Self::guarding`] true exactly while they hold anything.
    fn change_guards(&self, f: impl FnOnce(&mut Guards)) {
        let mut g = self.guards.lock();
        f(&mut g);
        self.guarding.store(!g.is_empty(), Ordering::SeqCst);
    }

    /// The closed timestamp: a read at or below it sees every commit it ever will, on any
    /// replica that applied this far.
    pub fn closed(&self) -> u64 {
        self.closed.load(Ordering::SeqCst)
    }

    /// The writes `txn` holds intents for here (pointer, value), ascending, with its trace:
    /// what a `Commit` of it will install.
    pub fn intents_of(&self, txn: &str) -> Vec<(PtrId, Option<Bytes>)> {
        let ptrs = self.prepared.lock().get(txn).cloned().unwrap_or_default();
        let mut out = Vec::with_capacity(ptrs.len());
        for ptr in ptrs {
            if let Some(cell) = self.cell(&ptr)
                && let Some(i) = cell.state.lock().intent.as_ref().filter(|i| &*i.txn == txn)
            {
                out.push((ptr.clone(), i.value.clone()));
            }
        }
        out
    }

    /// The trace of `txn`'s intents here, if it holds any.
    pub fn trace_of_intents(&self, txn: &str) -> Option<Arc<str>> {
        let ptr = self.prepared.lock().get(txn)?.first()?.clone();
        let cell = self.cell(&ptr)?;
        let st = cell.state.lock();
        st.intent.as_ref().filter(|i| &*i.txn == txn).map(|i| i.trace_id.clone())
    }

    /// The txns that hold intents here, ascending (a new leader resolves them by their
    /// records).
    pub fn prepared_txns(&self) -> Vec<TxnId> {
        let mut v: Vec<TxnId> = self.prepared.lock().keys().cloned().collect();
        if let Some(guarding) = self.with_guards(|g| g.txns().cloned().collect::<Vec<_>>()) {
            v.extend(guarding);
        }
        v.sort();
        v.dedup();
        v
    }

    /// The record of `txn`, if its primary is here and it is not yet resolved.
    pub fn record(&self, txn: &str) -> Option<TxnState> {
        self.records.lock().get(txn).copied()
    }

    /// Checks a `Prepare` (`below: None`) or a `PrepareCommit` at `below` against the
    /// replicated state: no other txn's intent on a pointer read or written, and every
    /// pointer read unchanged. For `Prepare` unchanged means its latest version is the one
    /// seen. A `PrepareCommit` carries its commit version: versions above it are later
    /// commits that serialize after this txn, so only a hot version between the one seen
    /// and the commit version is a conflict.
    ///
    fn check(
        &self,
        txn: &TxnId,
        reads: &[(PtrId, Option<u64>)],
        writes: &[(PtrId, Option<Bytes>)],
        below: Option<u64>,
    ) -> Result<Checked, Conflict> {
        let foreign = |ptr: &PtrId, st: &PointerState| match &st.intent {
            Some(i) if i.txn != *txn && below.is_none_or(|cv| i.prepared_above < cv) => {
                Err(Conflict::Locked { ptr: ptr.clone(), holder: i.txn.clone() })
            }
            _ => Ok(()),
        };
        if let (Some(cv), Some((ptr, _))) = (below, writes.first()) {
            let closed = self.closed();
            if cv <= closed {
                return Err(Conflict::Closed { ptr: ptr.clone(), closed });
            }
        }
        if !writes.is_empty() {
            self.with_guards(|g| writes.iter().try_for_each(|(ptr, _)| g.check_write(txn, ptr, below)))
                .transpose()?;
        }
        let mut cells = Vec::with_capacity(writes.len());
        let mut newest: Option<Conflict> = None;
        for (ptr, _) in writes {
            let cell = self.cell(ptr);
            if let Some(cell) = &cell {
                let st = cell.state.lock();
                foreign(ptr, &st)?;
                if let (None, Some(latest)) = (below, st.chain.latest())
                    && newest.as_ref().and_then(Conflict::winner).is_none_or(|(_, v)| v < latest.version)
                {
                    newest = Some(Conflict::Stale {
                        ptr: ptr.clone(),
                        winner_txn: latest.txn.clone(),
                        winner_version: latest.version,
                    });
                }
                // Versions only grow: a commit at or below the latest one (a deposed leader's
                // clock, a replayed command) is refused, never installed out of order.
                if let (Some(cv), Some(latest)) = (below, st.chain.latest())
                    && latest.version >= cv
                {
                    return Err(Conflict::Stale {
                        ptr: ptr.clone(),
                        winner_txn: latest.txn.clone(),
                        winner_version: latest.version,
                    });
                }
            }
            cells.push(cell);
        }
        for (ptr, seen) in reads {
            let Some(cell) = self.read_cell(ptr, *seen)? else { continue };
            let st = cell.state.lock();
            foreign(ptr, &st)?;
            changed(ptr, &st.chain, *seen, below)?;
        }
        Ok(Checked { cells, newest })
    }

    /// Runs `f` on `ptr`'s live cell (`known`, if it is still live), creating it if need
    /// be. If `f` sets [`PointerState::released`], the waiters are woken once the cell's
    /// mutex is dropped.
    fn with_cell<R>(
        &self,
        ptr: &PtrId,
        known: Option<Arc<PointerCell>>,
        f: impl FnOnce(&PtrId, &mut PointerState) -> R,
    ) -> R {
        let mut known = known;
        loop {
            let cell = match known.take() {
                Some(cell) => cell,
                None => self.pointers.get_or_insert_with(ptr.clone(), Default::default).value().clone(),
            };
            let mut st = cell.state.lock();
            if st.dead {
                drop(st);
                std::thread::yield_now();
                continue;
            }
            let out = f(ptr, &mut st);
            let released = std::mem::take(&mut st.released);
            drop(st);
            if released {
                cell.notify_released();
            }
            return out;
        }
    }

    /// Pushes a committed version onto a chain, keeping the accounting and the GC bound;
    /// releases `leader`'s lock on the pointer, if it holds it.
    fn install(
        &self,
        ptr: &PtrId,
        st: &mut PointerState,
        rec: VersionRec,
        max_hot: usize,
        leader: Option<&TxnId>,
    ) {
        let before = footprint(ptr, &st.chain);
        st.chain.push(rec, max_hot);
        self.account(before, footprint(ptr, &st.chain));
        self.lower_prunable_at(&st.chain);
        if let Some(txn) = leader
            && st.lock.as_ref().is_some_and(|l| l.txn == *txn)
        {
            st.lock = None;
            st.released = true;
        }
    }

    /// The replicated state in canonical order: two replicas that applied the same commands
    /// dump equal.
    pub fn dump(&self) -> PartitionDump {
        let mut pointers = BTreeMap::new();
        for e in self.pointers.iter() {
            let st = e.value().state.lock();
            if st.chain.is_empty() && st.intent.is_none() {
                continue; // a cell that only holds a lock: the leader's, not replicated
            }
            let hot = st.chain.hot().map(|v| (**v).clone()).collect();
            pointers.insert(e.key().clone(), (hot, st.chain.has_cold(), st.intent.clone()));
        }
        let prepared = self.prepared.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let records = self.records.lock().iter().map(|(k, v)| (k.clone(), *v)).collect();
        let primaries = self.primaries.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        PartitionDump {
            pointers,
            prepared,
            records,
            primaries,
            closed: self.closed(),
            pins: self.pins.lock().clone(),
            horizon: self.cluster_horizon(),
            guards: self.guards.lock().dump(),
        }
    }

    /// Replaces the replicated state wholesale with `image` (a snapshot a replica installs).
    /// Every live cell is unlinked first, so a holder looks its pointer up again; the
    /// leader's locks on them are gone, which only aborts the txns that held them.
    pub fn restore(&self, image: PartitionDump) {
        for e in self.pointers.iter() {
            let cell = e.value().clone();
            cell.state.lock().dead = true;
            cell.notify_dead();
            e.remove();
        }
        self.bytes.store(0, Ordering::Relaxed);
        self.prunable_at.store(0, Ordering::SeqCst);
        for (ptr, (hot, cold, intent)) in image.pointers {
            let chain = VersionChain::recovered(hot, cold);
            self.bytes.fetch_add(footprint(&ptr, &chain), Ordering::Relaxed);
            let cell = PointerCell::with_chain(chain);
            cell.state.lock().intent = intent;
            self.pointers.insert(ptr, Arc::new(cell));
        }
        *self.prepared.lock() = image.prepared.into_iter().collect();
        *self.records.lock() = image.records.into_iter().collect();
        *self.primaries.lock() = image.primaries.into_iter().collect();
        self.closed.store(image.closed, Ordering::SeqCst);
        *self.pins.lock() = image.pins;
        self.horizon.store(image.horizon, Ordering::SeqCst);
        self.change_guards(|g| g.restore(image.guards));
    }

    /// The cluster's GC horizon as this partition recorded it (0 on any but the first).
    pub fn cluster_horizon(&self) -> u64 {
        self.horizon.load(Ordering::SeqCst)
    }

    /// The pins this partition holds, by id.
    pub fn pins(&self) -> Vec<Pin> {
        self.pins.lock().values().cloned().collect()
    }

    /// Reads the version of `ptr` visible at `at` for `reader` (which may be `None`).
    pub fn read(&self, ptr: &str, at: u64, reader: Option<&TxnId>) -> PartitionRead {
        let Some(cell) = self.cell(ptr) else { return PartitionRead::Absent };
        let st = cell.state.lock();
        if let Some(holder) = st.prepared_for(at, reader) {
            return PartitionRead::Wait { holder: holder.clone(), listener: cell.listen() };
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
            if (st.lock.is_some() || st.intent.is_some())
                && st.chain.latest().is_some_and(|v| v.value.is_none())
            {
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
    fn a_commit_at_or_below_the_latest_version_is_refused() {
        let p = Partition::new(0);
        let x: PtrId = "x".into();
        let write = |txn: &str, v: u64| Command::PrepareCommit {
            txn: txn.into(),
            trace_id: "t".into(),
            commit_version: v,
            reads: vec![],
            writes: vec![(x.clone(), Some(Bytes::from(v.to_string())))],
        };
        assert_eq!(p.apply(&write("a", 20), 8), Outcome::Committed(20));
        for v in [20, 10] {
            assert!(
                matches!(
                    p.apply(&write("b", v), 8),
                    Outcome::Conflict(Conflict::Stale { winner_version: 20, .. })
                ),
                "a write at {v} after one at 20"
            );
        }
        assert_eq!(p.apply(&write("c", 30), 8), Outcome::Committed(30));
        assert!(matches!(p.read("x", 25, None), PartitionRead::Found(v) if v.version == 20));
    }

    #[test]
    fn a_close_stops_below_prepared_intents_and_refuses_commits_at_or_below_it() {
        let p = Partition::new(0);
        let (x, y): (PtrId, PtrId) = ("x".into(), "y".into());
        let prepare = Command::Prepare {
            txn: "a".into(),
            trace_id: "t".into(),
            prepared_above: 50,
            reads: vec![],
            writes: vec![(x.clone(), Some(Bytes::from_static(b"1")))],
            primary: x.clone(),
        };
        assert_eq!(p.apply(&prepare, 8), Outcome::Prepared);
        // The txn's version is only known to be above 50: a close at 90 stops at 50.
        assert_eq!(p.apply(&Command::Close { closed: 90 }, 8), Outcome::Closed(50));
        assert_eq!(p.closed(), 50);
        // Its record's version (here 60) still installs.
        assert_eq!(
            p.apply(&Command::Commit { txn: "a".into(), commit_version: 60 }, 8),
            Outcome::Committed(60)
        );
        assert_eq!(p.apply(&Command::Close { closed: 90 }, 8), Outcome::Closed(90));
        // A close never goes back.
        assert_eq!(p.apply(&Command::Close { closed: 70 }, 8), Outcome::Closed(90));
        let write = |v: u64| Command::PrepareCommit {
            txn: "b".into(),
            trace_id: "t".into(),
            commit_version: v,
            reads: vec![],
            writes: vec![(y.clone(), Some(Bytes::from_static(b"2")))],
        };
        for v in [90, 80] {
            assert!(
                matches!(p.apply(&write(v), 8), Outcome::Conflict(Conflict::Closed { closed: 90, .. })),
                "a commit at {v} after a close at 90"
            );
        }
        assert!(matches!(p.read("y", 95, None), PartitionRead::Absent));
        assert_eq!(p.apply(&write(91), 8), Outcome::Committed(91));
    }

    #[test]
    fn pins_are_replicated_state_and_a_pin_drops_those_expired_at_its_creation() {
        let p = Partition::new(0);
        let pin = |id: &str, created_ms: u64, expires_ms: u64| Command::Pin {
            pin: Pin { id: id.into(), version: 7, created_ms, expires_ms, note: "n".into() },
        };
        assert_eq!(p.apply(&pin("a", 100, 200), 8), Outcome::Pinned);
        assert_eq!(p.apply(&pin("b", 150, 1_000), 8), Outcome::Pinned);
        assert_eq!(p.pins().len(), 2);
        // Created at 300, "c" finds "a" expired (at 200) and drops it.
        assert_eq!(p.apply(&pin("c", 300, 1_000), 8), Outcome::Pinned);
        let ids: Vec<String> = p.pins().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["b", "c"]);
        assert!(
            matches!(p.apply(&Command::Unpin { id: "b".into() }, 8), Outcome::Unpinned(Some(ref pin)) if pin.id == "b")
        );
        assert_eq!(p.apply(&Command::Unpin { id: "b".into() }, 8), Outcome::Unpinned(None));
        // A snapshot carries them.
        let copy = Partition::new(0);
        copy.restore(p.dump());
        assert_eq!(copy.pins(), p.pins());
    }

    #[test]
    fn the_cluster_horizon_stops_at_live_pins_and_refuses_pins_below_it() {
        let p = Partition::new(0);
        let pin = |id: &str, version: u64, expires_ms: u64| Command::Pin {
            pin: Pin { id: id.into(), version, created_ms: 100, expires_ms, note: String::new() },
        };
        let horizon = |horizon: u64, now_ms: u64| Command::Horizon { horizon, now_ms };
        assert_eq!(p.apply(&pin("a", 50, 1_000), 8), Outcome::Pinned);
        // A watermark computed before the pin arrived stops at it while it lives...
        assert_eq!(p.apply(&horizon(80, 500), 8), Outcome::Horizon(50));
        // ...and passes it once it expired, and never goes back.
        assert_eq!(p.apply(&horizon(80, 1_000), 8), Outcome::Horizon(80));
        assert_eq!(p.apply(&horizon(60, 1_000), 8), Outcome::Horizon(80));
        // History below the horizon may be gone somewhere: no pin of it.
        assert_eq!(p.apply(&pin("b", 79, 5_000), 8), Outcome::BelowHorizon(80));
        assert!(p.pins().iter().all(|p| p.id != "b"));
        assert_eq!(p.apply(&pin("c", 80, 5_000), 8), Outcome::Pinned);
        let copy = Partition::new(0);
        copy.restore(p.dump());
        assert_eq!(copy.cluster_horizon(), 80, "a snapshot carries the horizon");
    }

    #[test]
    fn a_txn_record_keeps_its_first_decision_and_commits_only_over_its_intents() {
        let p = Partition::new(0);
        let prepare = |txn: &str| Command::Prepare {
            txn: txn.into(),
            trace_id: "t".into(),
            prepared_above: 10,
            reads: vec![],
            writes: vec![(format!("x{txn}").into(), Some(Bytes::from_static(b"1")))],
            primary: format!("x{txn}").into(),
        };
        let record = |txn: &str, state| Command::TxnRecord { txn: txn.into(), state };
        // A resolver aborts first: the coordinator's late commit is refused, naming the abort.
        assert_eq!(p.apply(&prepare("a"), 4), Outcome::Prepared);
        assert_eq!(p.apply(&record("a", TxnState::Aborted), 4), Outcome::Recorded);
        assert_eq!(p.apply(&record("a", TxnState::Committed(20)), 4), Outcome::Decided(TxnState::Aborted));
        // The coordinator commits first: a resolver's abort is refused, naming the commit,
        // and a re-sent commit at the same version is recorded again.
        assert_eq!(p.apply(&prepare("b"), 4), Outcome::Prepared);
        assert_eq!(p.apply(&record("b", TxnState::Committed(21)), 4), Outcome::Recorded);
        assert_eq!(p.apply(&record("b", TxnState::Aborted), 4), Outcome::Decided(TxnState::Committed(21)));
        assert_eq!(p.apply(&record("b", TxnState::Committed(21)), 4), Outcome::Recorded);
        assert_eq!(p.record("b"), Some(TxnState::Committed(21)));
        // Once an abort dropped the intents (and the record with them), a commit is refused.
        assert_eq!(p.apply(&prepare("c"), 4), Outcome::Prepared);
        assert_eq!(p.apply(&Command::Abort { txn: "c".into() }, 4), Outcome::Aborted);
        assert_eq!(p.apply(&record("c", TxnState::Committed(22)), 4), Outcome::Decided(TxnState::Aborted));
        assert_eq!(p.record("c"), None);
    }

    #[test]
    fn a_guarded_read_orders_every_later_write_above_the_readers_commit() {
        let p = Partition::new(0);
        let (x, y): (PtrId, PtrId) = ("x".into(), "y".into());
        let one = || Some(Bytes::from_static(b"1"));
        let write = |txn: &str, cv: u64, ptr: &PtrId| Command::PrepareCommit {
            txn: txn.into(),
            trace_id: "t".into(),
            commit_version: cv,
            reads: vec![],
            writes: vec![(ptr.clone(), one())],
        };
        let prepare = |txn: &str, above: u64| Command::Prepare {
            txn: txn.into(),
            trace_id: "t".into(),
            prepared_above: above,
            reads: vec![],
            writes: vec![(x.clone(), one())],
            primary: x.clone(),
        };
        let guard = |txn: &str, reads: Vec<(PtrId, Option<u64>)>| Command::Guard {
            txn: txn.into(),
            reads,
            primary: y.clone(),
        };
        assert_eq!(p.apply(&write("w0", 5, &x), 4), Outcome::Committed(5));
        // A guard validates like a prepare: a stale read is refused, and nothing is guarded.
        let stale = Conflict::Stale { ptr: x.clone(), winner_txn: "w0".into(), winner_version: 5 };
        assert_eq!(p.apply(&guard("r0", vec![(x.clone(), None)]), 4), Outcome::Conflict(stale));
        assert_eq!(p.apply(&write("w1", 6, &x), 4), Outcome::Committed(6));
        let w1_read = vec![(x.clone(), Some(6))];
        assert_eq!(p.apply(&guard("r", w1_read.clone()), 4), Outcome::Prepared);
        assert_eq!(p.prepared_txns(), vec![TxnId::from("r")], "a new leader resolves a guard too");
        // While r is undecided, no one else writes what it read, either way.
        let held = Conflict::Locked { ptr: x.clone(), holder: "r".into() };
        assert_eq!(p.apply(&write("w2", 30, &x), 4), Outcome::Conflict(held.clone()));
        assert_eq!(p.apply(&prepare("w3", 8), 4), Outcome::Conflict(held));
        assert_eq!(p.apply(&write("w4", 7, &y), 4), Outcome::Committed(7), "a pointer not read is free");
        // Its commit at 20 leaves a floor: a write at or below it would go under the read.
        assert_eq!(
            p.apply(&Command::Commit { txn: "r".into(), commit_version: 20 }, 4),
            Outcome::Committed(20)
        );
        assert!(p.prepared_txns().is_empty());
        let floor = Conflict::ReadAbove { ptr: x.clone(), reader: "r".into(), read_at: 20 };
        assert_eq!(p.apply(&write("w5", 20, &x), 4), Outcome::Conflict(floor.clone()));
        assert_eq!(p.latest_version("x"), Some(6), "nothing was installed");
        // A prepare is told the floor and its intents wait above it.
        assert_eq!(p.apply(&prepare("w6", 12), 4), Outcome::PreparedAbove(floor));
        assert!(matches!(p.read("x", 20, None), PartitionRead::Found(v) if v.version == 6));
        assert!(matches!(p.read("x", 21, None), PartitionRead::Wait { .. }));
        assert_eq!(p.apply(&Command::Abort { txn: "w6".into() }, 4), Outcome::Aborted);
        // A snapshot carries guards and floors; a replica restored from it refuses alike.
        assert_eq!(p.apply(&guard("r2", vec![(y.clone(), Some(7))]), 4), Outcome::Prepared);
        let q = Partition::new(0);
        q.restore(p.dump());
        assert_eq!(q.dump(), p.dump());
        let on_y = Conflict::Locked { ptr: y.clone(), holder: "r2".into() };
        assert_eq!(q.apply(&write("w7", 40, &y), 4), Outcome::Conflict(on_y));
        let under = Conflict::ReadAbove { ptr: x.clone(), reader: "r".into(), read_at: 20 };
        assert_eq!(q.apply(&write("w8", 19, &x), 4), Outcome::Conflict(under));
        // An aborted reader leaves no floor; a close past a floor drops it (no commit that low
        // can come), and the commit path is back to finding nothing.
        assert_eq!(q.apply(&Command::Abort { txn: "r2".into() }, 4), Outcome::Aborted);
        assert_eq!(q.apply(&write("w9", 8, &y), 4), Outcome::Committed(8));
        assert_eq!(q.apply(&Command::Close { closed: 25 }, 4), Outcome::Closed(25));
        assert_eq!(q.dump().guards, GuardsDump::default());
        assert!(!q.guarding.load(Ordering::SeqCst));
        assert_eq!(q.apply(&write("w10", 26, &x), 4), Outcome::Committed(26));
    }

    #[test]
    fn a_resolver_ends_a_txn_by_its_record_and_leaves_the_record() {
        let p = Partition::new(0);
        let (x, y): (PtrId, PtrId) = ("x".into(), "y".into());
        let prepare = |txn: &str, ptr: &PtrId| Command::Prepare {
            txn: txn.into(),
            trace_id: "t".into(),
            prepared_above: 10,
            reads: vec![],
            writes: vec![(ptr.clone(), Some(Bytes::from_static(b"1")))],
            primary: x.clone(),
        };
        assert_eq!(p.apply(&prepare("a", &x), 4), Outcome::Prepared);
        assert_eq!(p.primary_of("a"), Some(x.clone()), "where a resolver finds the record");
        let record = Command::TxnRecord { txn: "a".into(), state: TxnState::Committed(12) };
        assert_eq!(p.apply(&record, 4), Outcome::Recorded);
        // The resolver's own abort loses to the recorded commit, and it installs that.
        let abort = Command::TxnRecord { txn: "a".into(), state: TxnState::Aborted };
        assert_eq!(p.apply(&abort, 4), Outcome::Decided(TxnState::Committed(12)));
        let resolve = Command::Resolve { txn: "a".into(), state: TxnState::Committed(12) };
        assert_eq!(p.apply(&resolve, 4), Outcome::Committed(12));
        assert!(matches!(p.read("x", 12, None), PartitionRead::Found(v) if v.version == 12));
        assert_eq!(p.primary_of("a"), None);
        assert_eq!(p.record("a"), Some(TxnState::Committed(12)), "other groups' resolvers still read it");
        // An abandoned txn with no record: the resolver's abort is its fate.
        assert_eq!(p.apply(&prepare("b", &y), 4), Outcome::Prepared);
        let abort = Command::TxnRecord { txn: "b".into(), state: TxnState::Aborted };
        assert_eq!(p.apply(&abort, 4), Outcome::Recorded);
        let resolve = Command::Resolve { txn: "b".into(), state: TxnState::Aborted };
        assert_eq!(p.apply(&resolve, 4), Outcome::Aborted);
        assert!(matches!(p.read("y", 100, None), PartitionRead::Absent));
        assert!(p.prepared_txns().is_empty());
        let late = Command::TxnRecord { txn: "b".into(), state: TxnState::Committed(20) };
        assert_eq!(
            p.apply(&late, 4),
            Outcome::Decided(TxnState::Aborted),
            "the coordinator came back too late"
        );
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

    /// One step of a random command log; pointers and txns are picked by index, and the
    /// versions seen are resolved against the replicas' (identical) state.
    #[derive(Debug, Clone)]
    enum Step {
        Prepare {
            reads: Vec<(usize, Seen)>,
            writes: Vec<(usize, bool)>,
        },
        PrepareCommit {
            reads: Vec<(usize, Seen)>,
            writes: Vec<(usize, bool)>,
        },
        Commit(usize),
        Abort(usize),
        Record(usize, bool),
        /// Closes at the clock, give or take: ahead of it, later commits are refused.
        Close(u64),
        /// Pins (id, lifetime in ticks), and unpins by id.
        Pin(u8, u64),
        Unpin(u8),
        /// Raises the cluster's horizon to the clock, give or take.
        Horizon(u64),
        /// Guards reads for a new txn.
        Guard(Vec<(usize, Seen)>),
        /// A resolver ends a txn (committed at the clock, or aborted).
        Resolve(usize, bool),
    }

    #[derive(Debug, Clone, Copy)]
    enum Seen {
        Latest,
        Absent,
        Old(u64),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        let seen = prop_oneof![4 => Just(Seen::Latest), 1 => Just(Seen::Absent), 1 => (0..40u64).prop_map(Seen::Old)];
        let seen2 = seen.clone();
        let reads = proptest::collection::vec((0..5usize, seen), 0..3);
        let writes = proptest::collection::vec((0..5usize, proptest::bool::weighted(0.8)), 1..3);
        prop_oneof![
            3 => (reads.clone(), writes.clone()).prop_map(|(reads, writes)| Step::Prepare { reads, writes }),
            3 => (reads, writes).prop_map(|(reads, writes)| Step::PrepareCommit { reads, writes }),
            2 => (0..8usize).prop_map(Step::Commit),
            1 => (0..8usize).prop_map(Step::Abort),
            1 => (0..8usize, any::<bool>()).prop_map(|(t, c)| Step::Record(t, c)),
            1 => (0..6u64).prop_map(Step::Close),
            1 => (0..4u8, 1..10u64).prop_map(|(id, ttl)| Step::Pin(id, ttl)),
            1 => (0..4u8).prop_map(Step::Unpin),
            1 => (0..6u64).prop_map(Step::Horizon),
            2 => proptest::collection::vec((0..5usize, seen2), 1..3).prop_map(Step::Guard),
            1 => (0..8usize, any::<bool>()).prop_map(|(t, c)| Step::Resolve(t, c)),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Replicas that apply the same command log answer the same and end in the same
        /// state; that is all Raft needs of a partition.
        #[test]
        fn two_replicas_applying_one_log_end_identical(steps in proptest::collection::vec(step(), 1..60)) {
            let (a, b) = (Partition::new(0), Partition::new(0));
            let ptrs: Vec<PtrId> = (0..5).map(|i| PtrId::from(format!("p{i}"))).collect();
            let mut clock = 0u64;
            let mut txns: Vec<TxnId> = Vec::new();
            let mut log = Vec::new();
            for s in steps {
                let seen = |reads: &[(usize, Seen)]| -> Vec<(PtrId, Option<u64>)> {
                    reads.iter().map(|(i, s)| {
                        let latest = a.latest_version(&ptrs[*i]);
                        (ptrs[*i].clone(), match s { Seen::Latest => latest, Seen::Absent => None, Seen::Old(v) => Some(*v) })
                    }).collect()
                };
                let writes = |w: &[(usize, bool)]| -> Vec<(PtrId, Option<Bytes>)> {
                    let mut w: Vec<_> = w.iter().map(|(i, live)| (ptrs[*i].clone(), live.then(|| Bytes::from(format!("{i}"))))).collect();
                    w.sort_by(|x, y| x.0.cmp(&y.0));
                    w.dedup_by(|x, y| x.0 == y.0);
                    w
                };
                clock += 1;
                let cmd = match s {
                    Step::Prepare { reads, writes: w } => {
                        let txn: TxnId = format!("{clock:016x}").into();
                        txns.push(txn.clone());
                        let writes = writes(&w);
                        let primary = writes[0].0.clone();
                        Command::Prepare { txn, trace_id: "t".into(), prepared_above: clock, reads: seen(&reads), writes, primary }
                    }
                    Step::PrepareCommit { reads, writes: w } => Command::PrepareCommit {
                        txn: format!("{clock:016x}").into(), trace_id: "t".into(), commit_version: clock,
                        reads: seen(&reads), writes: writes(&w),
                    },
                    Step::Commit(i) if !txns.is_empty() => Command::Commit { txn: txns[i % txns.len()].clone(), commit_version: clock },
                    Step::Abort(i) if !txns.is_empty() => Command::Abort { txn: txns[i % txns.len()].clone() },
                    Step::Record(i, c) if !txns.is_empty() => Command::TxnRecord {
                        txn: txns[i % txns.len()].clone(),
                        state: if c { TxnState::Committed(clock) } else { TxnState::Open },
                    },
                    Step::Close(d) => Command::Close { closed: (clock + d).saturating_sub(3) },
                    Step::Pin(id, ttl) => Command::Pin {
                        pin: Pin { id: format!("pin{id}"), version: clock, created_ms: clock, expires_ms: clock + ttl, note: String::new() },
                    },
                    Step::Unpin(id) => Command::Unpin { id: format!("pin{id}") },
                    Step::Horizon(d) => Command::Horizon { horizon: (clock + d).saturating_sub(3), now_ms: clock },
                    Step::Resolve(i, c) if !txns.is_empty() => Command::Resolve {
                        txn: txns[i % txns.len()].clone(),
                        state: if c { TxnState::Committed(clock) } else { TxnState::Aborted },
                    },
                    Step::Guard(reads) => {
                        let txn: TxnId = format!("{clock:016x}").into();
                        txns.push(txn.clone());
                        Command::Guard { txn, reads: seen(&reads), primary: ptrs[0].clone() }
                    }
                    _ => continue,
                };
                let (closed, horizon) = (a.closed(), a.cluster_horizon());
                let before = a.dump().guards;
                let (oa, ob) = (a.apply(&cmd, 3), b.apply(&cmd, 3));
                proptest::prop_assert_eq!(&oa, &ob, "{:?}", cmd);
                if let (Command::PrepareCommit { commit_version, writes, .. }, Outcome::Committed(_)) = (&cmd, &oa) {
                    proptest::prop_assert!(*commit_version > closed, "a commit at {} under a close at {}", commit_version, closed);
                    for (ptr, _) in writes {
                        let floor = before.floors.get(ptr).map_or(0, |f| f.0);
                        proptest::prop_assert!(*commit_version > floor, "a write at {} under a read floor at {}", commit_version, floor);
                        proptest::prop_assert!(before.guards.values().all(|g| !g.contains(ptr)), "a write of a guarded pointer");
                    }
                }
                proptest::prop_assert!(a.closed() >= closed, "the closed timestamp went back");
                proptest::prop_assert!(a.cluster_horizon() >= horizon, "the cluster's horizon went back");
                if let (Command::Pin { pin }, Outcome::Pinned) = (&cmd, &oa) {
                    proptest::prop_assert!(pin.version >= horizon, "a pin below the horizon at {}", horizon);
                }
                for pin in a.pins().iter().filter(|p| p.expires_ms > clock) {
                    proptest::prop_assert!(pin.version >= a.cluster_horizon(), "the horizon passed a live pin");
                }
                log.push((cmd, oa));
                proptest::prop_assert_eq!(a.dump(), b.dump());
            }
            // And a third replica that replays the log later, all at once, agrees too.
            let c = Partition::new(0);
            for (cmd, outcome) in &log {
                proptest::prop_assert_eq!(&c.apply(cmd, 3), outcome);
            }
            proptest::prop_assert_eq!(c.dump(), a.dump());
        }
    }

    #[test]
    fn prepare_records_intents_that_block_readers_and_commit_installs_them() {
        let p = Partition::new(0);
        let (x, y): (PtrId, PtrId) = ("x".into(), "y".into());
        let prepare = |txn: &str, reads: Vec<(PtrId, Option<u64>)>| Command::Prepare {
            txn: txn.into(),
            trace_id: "t".into(),
            prepared_above: 10,
            reads,
            writes: vec![(x.clone(), Some(Bytes::from_static(b"1")))],
            primary: x.clone(),
        };
        assert_eq!(p.apply(&prepare("a", vec![(y.clone(), None)]), 4), Outcome::Prepared);
        assert!(matches!(p.read("x", 11, None), PartitionRead::Wait { ref holder, .. } if &**holder == "a"));
        assert!(
            matches!(p.read("x", 10, None), PartitionRead::Absent),
            "a read at or below the mark skips it"
        );
        // Another txn's prepare on the same pointer is refused with the holder named.
        let conflict = Conflict::Locked { ptr: x.clone(), holder: "a".into() };
        assert_eq!(p.apply(&prepare("b", vec![]), 4), Outcome::Conflict(conflict));
        assert_eq!(
            p.apply(&Command::TxnRecord { txn: "a".into(), state: TxnState::Committed(12) }, 4),
            Outcome::Recorded
        );
        assert_eq!(p.record("a"), Some(TxnState::Committed(12)));
        assert_eq!(
            p.apply(&Command::Commit { txn: "a".into(), commit_version: 12 }, 4),
            Outcome::Committed(12)
        );
        assert!(
            matches!(p.read("x", 12, None), PartitionRead::Found(v) if v.version == 12 && &*v.txn == "a")
        );
        assert_eq!(p.record("a"), None, "the record goes with the last commit");
        // A prepare that read y as absent, after y was written, is stale.
        let write_y = Command::PrepareCommit {
            txn: "c".into(),
            trace_id: "t".into(),
            commit_version: 13,
            reads: vec![],
            writes: vec![(y.clone(), Some(Bytes::from_static(b"2")))],
        };
        assert_eq!(p.apply(&write_y, 4), Outcome::Committed(13));
        let stale = Conflict::Stale { ptr: y.clone(), winner_txn: "c".into(), winner_version: 13 };
        assert_eq!(p.apply(&prepare("d", vec![(y.clone(), None)]), 4), Outcome::Conflict(stale));
        // A commit version above a later commit's is no conflict: that commit serializes after.
        let late = Command::PrepareCommit {
            txn: "e".into(),
            trace_id: "t".into(),
            commit_version: 14,
            reads: vec![(y.clone(), Some(13))],
            writes: vec![(x.clone(), None)],
        };
        assert_eq!(p.apply(&late, 4), Outcome::Committed(14));
        assert_eq!(
            p.apply(&Command::Abort { txn: "zz".into() }, 4),
            Outcome::Aborted,
            "unknown txns abort as no-ops"
        );
    }
}
