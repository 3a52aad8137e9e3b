//! The transactional engine: MVCC pointers, per-pointer locks, serializable transactions
//! and hash partitions. It has no HTTP, no async runtime and no global state; time comes from
//! an injected [`clock::Clock`], and cold versions from an injected [`cold::ColdStore`].
//!
//! The [`Engine`] is the transaction coordinator. A read-write transaction:
//! 1. reads at its `read_version` (the snapshot), recording what it saw in its read set;
//! 2. stages each write by taking the pointer's lock in the owning partition (`lock`);
//! 3. at commit, freezes its writes on every partition touched (`prepare`), takes a commit
//!    version from the hybrid logical clock, and checks on every partition that nothing it
//!    read has changed or is locked by another transaction (`validate`);
//! 4. hands a [`PreparedCommit`] to the caller, who makes it durable, then installs it
//!    (`commit` on each partition, which also releases the locks).
//!
//! Operations that would wait (for a lock, or for a prepared commit that a read must see)
//! return a listener instead of blocking, so the caller decides how long to wait.

pub mod clock;
pub mod cold;
pub mod command;
pub mod error;
pub mod events;
pub mod gc;
pub mod hlc;
pub mod partition;
pub mod pointer;
pub mod pressure;
pub mod txn;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use bytes::Bytes;
use event_listener::EventListener;

pub use error::{AbortReason, Conflict, EngineError, StorageError};
pub use pointer::VersionRec;
pub use txn::{Phase, Txn};

use clock::Clock;
use cold::ColdStore;
use command::{Command, Outcome, TxnState};
use events::{DiscardEvents, EngineEvent, EventKind, EventSink};
use gc::{HeldBy, PartitionGc, Pin, PinTable, Watermark};
use hlc::Hlc;
use partition::{LockOutcome, Partition, PartitionRead, partition_of};
use pointer::VersionChain;
use pressure::Pressure;
use txn::TxnTable;

/// A pointer id.
pub type PtrId = Arc<str>;
/// A transaction id.
pub type TxnId = Arc<str>;

/// Knobs of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Number of hash partitions; fixed for the life of a data directory.
    pub partitions: u32,
    /// Versions of each pointer kept in memory; older ones are read from cold storage.
    pub hot_versions: usize,
    /// Lease of a transaction when the client does not ask for one.
    pub default_timeout_ms: u64,
    /// Longest lease a client may ask for.
    pub max_timeout_ms: u64,
    /// How long a finished transaction stays queryable.
    pub finished_keep_ms: u64,
    /// How many finished transactions stay queryable at most.
    pub finished_max: usize,
    /// History kept behind now, in milliseconds, unless a transaction or pin holds more.
    pub retention_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            partitions: 64,
            hot_versions: 8,
            default_timeout_ms: 30_000,
            max_timeout_ms: 3_600_000,
            finished_keep_ms: 600_000,
            finished_max: 100_000,
            retention_ms: 24 * 3_600_000,
        }
    }
}

/// How to begin a transaction.
#[derive(Debug, Clone, Default)]
pub struct BeginOptions {
    pub read_only: bool,
    /// Lease in milliseconds (`None`: the default).
    pub timeout_ms: Option<u64>,
    /// Snapshot version for a read-only transaction pinned in the past.
    pub at: Option<u64>,
    /// Trace the transaction belongs to (32 hex digits).
    pub trace_id: Option<Arc<str>>,
    /// Span id of its root span (16 hex digits), when traced.
    pub root_span: Option<Arc<str>>,
    /// The transaction only deletes (a one-shot known up front): allowed under critical
    /// memory pressure, since it frees memory once collected.
    pub frees_memory: bool,
}

/// A pointer recovered from storage.
#[derive(Debug)]
pub struct RecoveredPointer {
    pub ptr: PtrId,
    /// Its newest versions, ascending.
    pub hot: Vec<VersionRec>,
    /// Whether older versions exist in cold storage.
    pub cold_below: bool,
}

/// Result of a read that may have to wait.
#[derive(Debug)]
pub enum ReadStep {
    Done(Option<Arc<VersionRec>>),
    /// A prepared commit may land a version this read must see; retry when it fires.
    Wait(PreparedWait),
}

/// A read waiting for `holder`'s prepared commit on `ptr` to land or abort.
#[derive(Debug)]
pub struct PreparedWait {
    pub ptr: PtrId,
    pub holder: TxnId,
    pub listener: EventListener,
}

/// A page of a listing, and whether more follow.
pub type ListPage = (Vec<(PtrId, Arc<VersionRec>)>, bool);

/// Result of a listing: the page, or a prepared commit to wait for before trying again.
pub type ListStep = Result<ListPage, PreparedWait>;

/// Result of a write that may have to wait for a lock.
#[derive(Debug)]
pub enum WriteStep {
    Staged,
    /// Another transaction holds the lock; retry when the listener fires.
    Wait {
        holder: TxnId,
        listener: EventListener,
    },
}

/// A commit that passed validation and must now be made durable, then installed with
/// [`Engine::finish_commit`] (or undone with [`Engine::fail_commit`]).
#[derive(Debug)]
pub struct PreparedCommit {
    pub txn: Arc<Txn>,
    pub commit_version: u64,
    /// Staged writes, ascending by pointer id.
    pub writes: Vec<(PtrId, Option<Bytes>)>,
    /// Pointers read, with the version seen; re-checked when the commit is applied.
    pub reads: Vec<(PtrId, Option<u64>)>,
    /// The txn's primary pointer when its writes span partitions: they hold `Prepare`d
    /// intents, and its partition's record decides the txn. `None`: one partition, which
    /// validates and installs in one `PrepareCommit`.
    pub primary: Option<PtrId>,
}

/// Outcome of [`Engine::prepare_commit`].
#[derive(Debug)]
pub enum CommitStep {
    /// Nothing to persist (read-only, or no writes): committed at this version.
    Done(u64),
    Prepared(PreparedCommit),
}

/// The engine.
pub struct Engine {
    cfg: EngineConfig,
    hlc: Hlc,
    partitions: Vec<Partition>,
    txns: TxnTable,
    cold: Arc<dyn ColdStore>,
    events: Arc<dyn EventSink>,
    /// The oldest version a read may ask for; raised by garbage collection before it prunes.
    horizon: AtomicU64,
    pins: PinTable,
    /// The memory-pressure level ([`Pressure`] as a number).
    pressure: AtomicU8,
}

impl Engine {
    /// An engine over recovered pointers; the clock starts above `max_version`.
    pub fn new(
        cfg: EngineConfig,
        clock: Arc<dyn Clock>,
        cold: Arc<dyn ColdStore>,
        recovered: impl IntoIterator<Item = RecoveredPointer>,
        max_version: u64,
    ) -> Self {
        let partitions: Vec<Partition> = (0..cfg.partitions.max(1)).map(Partition::new).collect();
        let n = partitions.len() as u32;
        for p in recovered {
            let idx = partition_of(&p.ptr, n) as usize;
            partitions[idx].install_recovered(p.ptr, VersionChain::recovered(p.hot, p.cold_below));
        }
        let hlc = Hlc::new(clock, max_version);
        // Start the clock at now, so that "the latest version" of a fresh store is a moment
        // (the watermark's lag is then measured from it, not from 1970).
        hlc.tick();
        Self {
            hlc,
            cfg,
            partitions,
            txns: TxnTable::default(),
            cold,
            events: Arc::new(DiscardEvents),
            horizon: AtomicU64::new(0),
            pins: PinTable::default(),
            pressure: AtomicU8::new(Pressure::Low as u8),
        }
    }

    /// Starts from a horizon (and pins) recovered from storage.
    pub fn with_gc_state(self, horizon: u64, pins: impl IntoIterator<Item = Pin>) -> Self {
        self.horizon.store(horizon, Ordering::SeqCst);
        for p in pins {
            self.pins.insert(p);
        }
        self
    }

    /// Reports every event to `sink` from now on.
    pub fn with_events(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.events = sink;
        self
    }

    /// Emits an event of `kind` about `txn` and `ptr`, if anyone listens; `fill` adds the rest.
    fn emit(
        &self,
        kind: EventKind,
        txn: Option<&Txn>,
        ptr: Option<&str>,
        fill: impl FnOnce(&mut EngineEvent),
    ) {
        if !self.events.enabled() {
            return;
        }
        let mut e = EngineEvent::new(kind, self.hlc.physical_millis());
        if let Some(t) = txn {
            e.txn = Some(t.id.clone());
            e.trace_id = Some(t.trace_id.clone());
        }
        e.ptr = ptr.map(PtrId::from);
        fill(&mut e);
        self.events.emit(e);
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    fn partition(&self, ptr: &str) -> &Partition {
        &self.partitions[partition_of(ptr, self.partitions.len() as u32) as usize]
    }

    /// The newest version any read can see right now; a fresh snapshot.
    pub fn now_version(&self) -> u64 {
        self.hlc.tick()
    }

    /// The last version issued (no tick).
    pub fn last_version(&self) -> u64 {
        self.hlc.last()
    }

    /// Physical milliseconds of the injected clock.
    pub fn now_millis(&self) -> u64 {
        self.hlc.physical_millis()
    }

    /// Checks that `at` is not in the future, and returns it.
    pub fn check_at(&self, at: u64) -> Result<u64, EngineError> {
        let now = self.hlc.tick();
        if at > now { Err(EngineError::FutureVersion { requested: at, now }) } else { Ok(at) }
    }

    // ---------------------------------------------------------------- transactions

    /// Begins a transaction.
    pub fn begin(&self, opts: BeginOptions) -> Result<Arc<Txn>, EngineError> {
        if !opts.read_only && opts.at.is_none() && !opts.frees_memory && self.pressure() == Pressure::Critical
        {
            return Err(EngineError::Overloaded);
        }
        let start = self.hlc.tick();
        let read_version = match opts.at {
            Some(at) if at > start => return Err(EngineError::FutureVersion { requested: at, now: start }),
            Some(at) => at,
            None => start,
        };
        let timeout_ms =
            opts.timeout_ms.unwrap_or(self.cfg.default_timeout_ms).clamp(1, self.cfg.max_timeout_ms);
        let trace_id = opts.trace_id.unwrap_or_else(|| format!("{:032x}", u128::from(start)).into());
        let id: TxnId = format!("{start:016x}").into();
        let mut txn = Txn::new(
            id,
            read_version,
            opts.read_only || opts.at.is_some(),
            trace_id,
            self.hlc.physical_millis(),
            timeout_ms,
        );
        txn.root_span = opts.root_span;
        let txn = Arc::new(txn);
        self.txns.insert(txn.clone());
        // Registered first, then checked: either garbage collection sees this snapshot and
        // holds the watermark at it, or this sees the raised horizon (see `raise_horizon`).
        let horizon = self.horizon.load(Ordering::SeqCst);
        if read_version < horizon {
            self.txns.discard(&txn.id);
            return Err(EngineError::Gone { requested: read_version, horizon });
        }
        self.emit(EventKind::Begin, Some(&txn), None, |e| e.version = Some(read_version));
        Ok(txn)
    }

    /// Looks a transaction up (active or recently finished).
    pub fn txn(&self, id: &str) -> Result<Arc<Txn>, EngineError> {
        self.txns.get(id).ok_or_else(|| EngineError::TxnNotFound(id.to_string()))
    }

    /// Errors unless the transaction is active; renews its lease.
    pub fn touch(&self, txn: &Txn) -> Result<(), EngineError> {
        let mut inner = txn.inner.lock();
        Self::ensure_active(txn, &inner.phase)?;
        inner.deadline_ms = self.hlc.physical_millis().saturating_add(txn.timeout_ms);
        Ok(())
    }

    fn ensure_active(txn: &Txn, phase: &Phase) -> Result<(), EngineError> {
        match phase {
            Phase::Active => Ok(()),
            Phase::Committing => Err(EngineError::TxnCommitting { txn: txn.id.clone() }),
            Phase::Committed(v) => Err(EngineError::TxnCommitted { txn: txn.id.clone(), version: *v }),
            Phase::Aborted(r) => Err(EngineError::TxnAborted { txn: txn.id.clone(), reason: r.clone() }),
        }
    }

    /// All active transactions.
    pub fn active_txns(&self) -> Vec<Arc<Txn>> {
        self.txns.active()
    }

    pub fn active_txn_count(&self) -> usize {
        self.txns.active_count()
    }

    /// A transaction woken from waiting for `ptr`'s lock will not take it (it failed or
    /// ended): the next waiter gets the turn. A release wakes one lock waiter at a time.
    pub fn pass_lock_turn(&self, ptr: &str) {
        self.partition(ptr).pass_on(ptr);
    }

    /// The transaction holding `ptr`'s lock.
    pub fn lock_holder(&self, ptr: &str) -> Option<TxnId> {
        self.partition(ptr).holder(ptr)
    }

    // ---------------------------------------------------------------- reads

    /// Reads `ptr`: inside `txn` at its snapshot (own writes first, recording the read), or
    /// outside any transaction at version `at`.
    pub fn read(&self, txn: Option<&Txn>, ptr: &str, at: u64) -> Result<ReadStep, EngineError> {
        let Some(txn) = txn else {
            self.check_horizon(at)?;
            let step = self.read_at(ptr, at, None)?.unwrap_or(ReadStep::Done(None));
            // Pruning starts only after the horizon is raised: if this read overlapped it,
            // the horizon says so now.
            self.check_horizon(at)?;
            if let ReadStep::Done(found) = &step {
                let version = found.as_ref().map(|v| v.version);
                self.emit(EventKind::Read, None, Some(ptr), |e| e.version = version);
            }
            return Ok(step);
        };
        {
            let inner = txn.inner.lock();
            Self::ensure_active(txn, &inner.phase)?;
            if let Some(staged) = inner.writes.get(ptr) {
                // Read your own write: it has no version yet, so report the snapshot's.
                let rec = staged.as_ref().map(|value| {
                    Arc::new(VersionRec {
                        version: txn.read_version(),
                        txn: txn.id.clone(),
                        trace_id: txn.trace_id.clone(),
                        value: Some(value.clone()),
                    })
                });
                return Ok(ReadStep::Done(rec));
            }
        }
        let step = self.read_at(ptr, txn.read_version(), Some(&txn.id))?.unwrap_or(ReadStep::Done(None));
        if let ReadStep::Done(found) = &step
            && !txn.read_only
        {
            let mut inner = txn.inner.lock();
            Self::ensure_active(txn, &inner.phase)?;
            inner.reads.entry(ptr.into()).or_insert(found.as_ref().map(|v| v.version));
        }
        if let ReadStep::Done(found) = &step {
            let version = found.as_ref().map(|v| v.version);
            self.emit(EventKind::Read, Some(txn), Some(ptr), |e| e.version = version);
        }
        Ok(step)
    }

    /// The version of `ptr` visible at `at`; `None` inside means absent. A tombstone is
    /// returned as found with no value, so callers can tell "deleted" from "never written".
    fn read_at(&self, ptr: &str, at: u64, reader: Option<&TxnId>) -> Result<Option<ReadStep>, EngineError> {
        match self.partition(ptr).read(ptr, at, reader) {
            PartitionRead::Found(v) => Ok(Some(ReadStep::Done(Some(v)))),
            PartitionRead::Absent => Ok(None),
            PartitionRead::Wait { holder, listener } => {
                Ok(Some(ReadStep::Wait(PreparedWait { ptr: ptr.into(), holder, listener })))
            }
            PartitionRead::Cold => {
                let rec = self.cold.version_at(ptr, at).map_err(EngineError::Storage)?;
                Ok(Some(ReadStep::Done(rec.map(Arc::new))))
            }
        }
    }

    /// Up to `limit` pointers whose id starts with `prefix`, after `after`, that have a live
    /// value at version `at`, in id order. A pointer needing a wait is reported as `Err`.
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        at: u64,
        limit: usize,
    ) -> Result<ListStep, EngineError> {
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        self.check_horizon(at)?;
        let mut iters: Vec<_> =
            self.partitions.iter().map(|p| p.ids_from(start, prefix).peekable()).collect();
        let mut out = Vec::new();
        loop {
            // k-way merge: the smallest head among the partitions.
            let mut best: Option<(usize, PtrId)> = None;
            for (i, it) in iters.iter_mut().enumerate() {
                if let Some(k) = it.peek()
                    && best.as_ref().is_none_or(|(_, b)| k < b)
                {
                    best = Some((i, k.clone()));
                }
            }
            let Some((i, _)) = best else { return self.check_horizon(at).map(|()| Ok((out, false))) };
            let Some(ptr) = iters[i].next() else { return self.check_horizon(at).map(|()| Ok((out, false))) };
            match self.read_at(&ptr, at, None)? {
                Some(ReadStep::Wait(l)) => return Ok(Err(l)),
                Some(ReadStep::Done(Some(v))) if v.value.is_some() => {
                    if out.len() == limit {
                        return self.check_horizon(at).map(|()| Ok((out, true)));
                    }
                    out.push((ptr, v));
                }
                _ => {}
            }
        }
    }

    // ---------------------------------------------------------------- writes

    /// Stages a write (`None` deletes) inside `txn`, taking the pointer's lock.
    pub fn write(&self, txn: &Arc<Txn>, ptr: &str, value: Option<Bytes>) -> Result<WriteStep, EngineError> {
        self.acquire(txn, ptr, Some(value))
    }

    /// Takes `ptr`'s write lock for a locking read (`SELECT ... FOR UPDATE`): once it is
    /// held, no one else can commit `ptr`, so the read that follows stays current until this
    /// transaction commits, and a read-modify-write of a hot pointer queues on the lock
    /// instead of failing validation. When `ptr` has a version newer than the snapshot, the
    /// snapshot moves forward to now, so the read sees it. That is only sound if nothing
    /// read so far has changed since: if something has, the transaction could not commit
    /// anyway and is aborted with that conflict now.
    pub fn lock_for_update(&self, txn: &Arc<Txn>, ptr: &str) -> Result<WriteStep, EngineError> {
        let step = self.acquire(txn, ptr, None)?;
        if !matches!(step, WriteStep::Staged) {
            return Ok(step);
        }
        let latest = self.partition(ptr).latest_version(ptr);
        if latest.is_none_or(|v| v <= txn.read_version()) {
            return Ok(step);
        }
        // The new snapshot is taken before the reads are checked: a commit that lands on a
        // read pointer after the check gets a version above it, so it stays invisible.
        let refreshed = self.hlc.tick();
        let reads: Vec<(PtrId, Option<u64>)> = {
            let inner = txn.inner.lock();
            Self::ensure_active(txn, &inner.phase)?;
            inner.reads.iter().map(|(k, v)| (k.clone(), *v)).collect()
        };
        for (pidx, group) in self.group_pairs(reads) {
            if let Err(conflict) = self.partitions[pidx].validate(&txn.id, &group) {
                self.abort(txn, AbortReason::Conflict(conflict.clone()));
                return Err(EngineError::Conflict { txn: txn.id.clone(), conflict });
            }
        }
        txn.advance_read_version(refreshed);
        Ok(step)
    }

    /// Takes `ptr`'s lock for `txn`, and stages `write` (`Some(None)` deletes) once held.
    fn acquire(
        &self,
        txn: &Arc<Txn>,
        ptr: &str,
        write: Option<Option<Bytes>>,
    ) -> Result<WriteStep, EngineError> {
        if txn.read_only {
            return Err(EngineError::ReadOnly(txn.id.clone()));
        }
        self.touch(txn)?;
        let ptr: PtrId = ptr.into();
        let partition = self.partition(&ptr);
        loop {
            match partition.lock(&txn.id, &ptr) {
                outcome @ (LockOutcome::Acquired | LockOutcome::AlreadyHeld) => {
                    let mut inner = txn.inner.lock();
                    if let Err(e) = Self::ensure_active(txn, &inner.phase) {
                        // The txn ended while we took the lock: give back a lock it did not
                        // already own (those are released by whoever ended it).
                        let owned = inner.locks.contains(&ptr);
                        drop(inner);
                        if !owned {
                            partition.unlock(&txn.id, &ptr);
                        }
                        return Err(e);
                    }
                    inner.locks.insert(ptr.clone());
                    let staged = write.clone().map(|value| {
                        let delete = value.is_none();
                        inner.writes.insert(ptr.clone(), value);
                        delete
                    });
                    drop(inner);
                    if matches!(outcome, LockOutcome::Acquired) {
                        self.emit(EventKind::LockAcquired, Some(txn), Some(&ptr), |_| {});
                    }
                    if let Some(delete) = staged {
                        self.emit(EventKind::Write, Some(txn), Some(&ptr), |e| {
                            if delete {
                                e.reason = Some("delete".into());
                            }
                        });
                    }
                    return Ok(WriteStep::Staged);
                }
                LockOutcome::Held { holder, listener } => {
                    // A holder whose lease ran out is aborted on the spot instead of waited for.
                    if let Some(h) = self.txns.get(&holder)
                        && self.lease_expired(&h)
                    {
                        self.abort(&h, AbortReason::LeaseExpired);
                        continue;
                    }
                    let other = self.trace_of(&holder);
                    self.emit(EventKind::LockWait, Some(txn), Some(&ptr), |e| {
                        e.holder_txn = Some(holder.clone());
                        e.other_trace_id = other;
                    });
                    return Ok(WriteStep::Wait { holder, listener });
                }
            }
        }
    }

    fn lease_expired(&self, txn: &Txn) -> bool {
        let inner = txn.inner.lock();
        inner.phase == Phase::Active && inner.deadline_ms < self.hlc.physical_millis()
    }

    // ---------------------------------------------------------------- commit and abort

    /// Prepares `txn` on every partition it touched, takes its commit version and validates
    /// its reads. On a conflict the transaction is aborted and the conflict returned.
    pub fn prepare_commit(&self, txn: &Arc<Txn>) -> Result<CommitStep, EngineError> {
        let (writes, reads) = {
            let mut inner = txn.inner.lock();
            Self::ensure_active(txn, &inner.phase)?;
            if txn.read_only || inner.writes.is_empty() {
                // A snapshot is serializable at its read version: nothing to validate or persist.
                // Locks taken by locking reads go now.
                inner.phase = Phase::Committed(txn.read_version());
                let locks = std::mem::take(&mut inner.locks);
                drop(inner);
                self.release(txn, locks);
                return Ok(CommitStep::Done(txn.read_version()));
            }
            inner.phase = Phase::Committing;
            let writes: Vec<(PtrId, Option<Bytes>)> =
                inner.writes.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let reads: Vec<(PtrId, Option<u64>)> = inner.reads.iter().map(|(k, v)| (k.clone(), *v)).collect();
            (writes, reads)
        };
        // 1. Freeze the writes. Every read that starts after this sees the prepared mark.
        //    Across partitions each written one also applies `Prepare`: its intents are
        //    what the durable record of the commit resolves after a crash.
        let prepared_above = self.hlc.last();
        let by_partition = self.group_pairs(writes.iter().cloned());
        let primary = (by_partition.len() > 1).then(|| writes[0].0.clone());
        let mut prepared: Vec<usize> = Vec::new();
        for (pidx, group) in &by_partition {
            let _span =
                tracing::debug_span!("partition.prepare", restm.partition = pidx, restm.writes = group.len())
                    .entered();
            let ptrs: Vec<PtrId> = group.iter().map(|(p, _)| p.clone()).collect();
            let mut outcome = self.partitions[*pidx].prepare(&txn.id, &ptrs, prepared_above);
            if outcome.is_ok()
                && let Some(primary) = &primary
            {
                let cmd = Command::Prepare {
                    txn: txn.id.clone(),
                    trace_id: txn.trace_id.clone(),
                    prepared_above,
                    reads: self.reads_in(*pidx, &reads),
                    writes: group.clone(),
                    primary: primary.clone(),
                };
                match self.partitions[*pidx].apply(&cmd, 0) {
                    Outcome::Prepared => prepared.push(*pidx),
                    Outcome::Conflict(c) => outcome = Err(c),
                    other => unreachable!("Prepare answers Prepared or Conflict, not {other:?}"),
                }
            }
            if let Err(conflict) = outcome {
                self.abort_prepared(&txn.id, &prepared);
                self.abort_committing(txn, AbortReason::Conflict(conflict.clone()));
                return Err(EngineError::Conflict { txn: txn.id.clone(), conflict });
            }
        }
        // 2. The commit version: above every version issued so far, so above every version
        //    on the written pointers and above the prepared marks.
        let commit_version = self.hlc.tick();
        // 3. Validate the reads against what is committed or locked now.
        for (pidx, group) in self.group_pairs(reads.iter().cloned()) {
            let _span =
                tracing::debug_span!("partition.validate", restm.partition = pidx, restm.reads = group.len())
                    .entered();
            if let Err(conflict) = self.partitions[pidx].validate(&txn.id, &group) {
                self.abort_prepared(&txn.id, &prepared);
                self.abort_committing(txn, AbortReason::Conflict(conflict.clone()));
                return Err(EngineError::Conflict { txn: txn.id.clone(), conflict });
            }
        }
        Ok(CommitStep::Prepared(PreparedCommit { txn: txn.clone(), commit_version, writes, reads, primary }))
    }

    /// The reads of `reads` that fall in partition `pidx`.
    fn reads_in(&self, pidx: usize, reads: &[(PtrId, Option<u64>)]) -> Vec<(PtrId, Option<u64>)> {
        let n = self.partitions.len() as u32;
        reads.iter().filter(|(p, _)| partition_of(p, n) as usize == pidx).cloned().collect()
    }

    /// Applies `Abort` on the partitions where `txn` prepared intents.
    fn abort_prepared(&self, txn: &TxnId, partitions: &[usize]) {
        let cmd = Command::Abort { txn: txn.clone() };
        for pidx in partitions {
            self.partitions[*pidx].apply(&cmd, 0);
        }
    }

    /// Installs a durable commit and releases its locks. One partition applies
    /// `PrepareCommit`; across partitions the primary's partition records the commit and
    /// each applies `Commit` (the primary's last, which retires the record).
    ///
    /// The commands re-check the reads against the replicated state. On one node the
    /// leader's locks already guarantee they pass, so a conflict here means an invariant
    /// broke after the commit became durable: it is returned, and the txn stays committing
    /// (its outcome is what recovery finds).
    pub fn install_commit(&self, prepared: PreparedCommit) -> Result<u64, Conflict> {
        let PreparedCommit { txn, commit_version, writes, reads, primary } = prepared;
        // Under memory pressure only the latest version of each pointer stays in memory.
        let max_hot = if self.pressure() >= Pressure::High { 1 } else { self.cfg.hot_versions };
        let released: Vec<PtrId> = writes.iter().map(|(p, _)| p.clone()).collect();
        let groups = self.group_pairs(writes);
        let n = self.partitions.len() as u32;
        let primary_idx = primary.as_ref().map(|p| partition_of(p, n) as usize);
        if let Some(pidx) = primary_idx {
            let record =
                Command::TxnRecord { txn: txn.id.clone(), state: TxnState::Committed(commit_version) };
            self.partitions[pidx].apply(&record, max_hot);
        }
        // The primary's partition goes last (BTreeMap order, then the primary).
        let mut order: Vec<_> = groups.into_iter().collect();
        if let Some(pidx) = primary_idx
            && let Some(at) = order.iter().position(|(i, _)| *i == pidx)
        {
            let p = order.remove(at);
            order.push(p);
        }
        for (pidx, group) in order {
            let _span = tracing::debug_span!(
                "partition.commit",
                restm.partition = pidx,
                restm.version = commit_version
            )
            .entered();
            let partition = &self.partitions[pidx];
            let cmd = match primary_idx {
                Some(_) => Command::Commit { txn: txn.id.clone(), commit_version },
                None => Command::PrepareCommit {
                    txn: txn.id.clone(),
                    trace_id: txn.trace_id.clone(),
                    commit_version,
                    reads: self.reads_in(pidx, &reads),
                    writes: group.clone(),
                },
            };
            if let Outcome::Conflict(c) = partition.apply(&cmd, max_hot) {
                tracing::error!(txn = %txn.id, version = commit_version, conflict = %c, "a durable commit failed its re-check");
                return Err(c);
            }
            partition.release(&txn.id, group.iter().map(|(p, _)| p));
        }
        self.emit(EventKind::Commit, Some(&txn), None, |e| e.version = Some(commit_version));
        for ptr in &released {
            self.emit(EventKind::LockReleased, Some(&txn), Some(ptr), |e| e.version = Some(commit_version));
        }
        // Locks of pointers read with a lock but not written are released as they are.
        let read_locks: Vec<PtrId> = {
            let mut inner = txn.inner.lock();
            let locks = std::mem::take(&mut inner.locks);
            locks.into_iter().filter(|p| !inner.writes.contains_key(p)).collect()
        };
        for ptr in read_locks {
            self.partition(&ptr).unlock(&txn.id, &ptr);
            self.emit(EventKind::LockReleased, Some(&txn), Some(&ptr), |_| {});
        }
        {
            let mut inner = txn.inner.lock();
            inner.phase = Phase::Committed(commit_version);
            // The txn stays queryable for a while: keep which pointers it wrote (and whether
            // it deleted them), but not the values, which now live in the version chains.
            for value in inner.writes.values_mut() {
                if value.is_some() {
                    *value = Some(Bytes::new());
                }
            }
        }
        self.finish(&txn);
        Ok(commit_version)
    }

    /// [`Self::install_commit`] for tests and benchmarks, which drive the engine directly
    /// and treat a failed re-check as the bug it is.
    pub fn finish_commit(&self, prepared: PreparedCommit) -> u64 {
        match self.install_commit(prepared) {
            Ok(v) => v,
            Err(c) => panic!("a durable commit failed its re-check: {c}"),
        }
    }

    /// Undoes a prepared commit that could not be made durable.
    pub fn fail_commit(&self, prepared: PreparedCommit, error: StorageError) {
        if prepared.primary.is_some() {
            let n = self.partitions.len() as u32;
            let parts: std::collections::BTreeSet<usize> =
                prepared.writes.iter().map(|(p, _)| partition_of(p, n) as usize).collect();
            self.abort_prepared(&prepared.txn.id, &parts.into_iter().collect::<Vec<_>>());
        }
        self.abort_committing(&prepared.txn, AbortReason::Storage(error));
    }

    /// Aborts an active transaction, releasing its locks. Returns false if it was not active.
    pub fn abort(&self, txn: &Arc<Txn>, reason: AbortReason) -> bool {
        self.end_aborted(txn, reason, false)
    }

    fn abort_committing(&self, txn: &Arc<Txn>, reason: AbortReason) {
        self.end_aborted(txn, reason, true);
    }

    /// Marks `txn` aborted and releases its locks; unless `committing` (the coordinator
    /// undoing its own prepare), only an active transaction can be aborted.
    fn end_aborted(&self, txn: &Arc<Txn>, reason: AbortReason, committing: bool) -> bool {
        let locks = {
            let mut inner = txn.inner.lock();
            if !committing && inner.phase != Phase::Active {
                return false;
            }
            inner.phase = Phase::Aborted(reason.clone());
            inner.writes.clear();
            std::mem::take(&mut inner.locks)
        };
        if self.events.enabled() {
            let now = self.hlc.physical_millis();
            if let Some(mut c) = EngineEvent::from_abort(now, &txn.id, &txn.trace_id, &reason) {
                c.other_trace_id =
                    c.winner_txn.as_ref().or(c.holder_txn.as_ref()).and_then(|o| self.trace_of(o));
                self.events.emit(c);
            }
            self.emit(EventKind::Abort, Some(txn), None, |e| {
                e.reason = Some(reason.to_string());
                e.code = Some(reason.code());
            });
        }
        self.release(txn, locks);
        true
    }

    fn release(&self, txn: &Arc<Txn>, locks: impl IntoIterator<Item = PtrId>) {
        for ptr in locks {
            self.partition(&ptr).unlock(&txn.id, &ptr);
            self.emit(EventKind::LockReleased, Some(txn), Some(&ptr), |_| {});
        }
        self.finish(txn);
    }

    /// The trace id of a transaction the table still knows.
    fn trace_of(&self, txn: &str) -> Option<Arc<str>> {
        self.txns.get(txn).map(|t| t.trace_id.clone())
    }

    fn finish(&self, txn: &Arc<Txn>) {
        let now = self.hlc.physical_millis();
        txn.inner.lock().finished_ms = Some(now);
        self.txns.finish(txn, now);
    }

    /// Aborts every active transaction whose lease ran out, and forgets old finished ones.
    /// Returns the ids aborted.
    pub fn reap_expired(&self) -> Vec<TxnId> {
        let mut reaped = Vec::new();
        for txn in self.txns.active() {
            if self.lease_expired(&txn) && self.abort(&txn, AbortReason::LeaseExpired) {
                reaped.push(txn.id.clone());
            }
        }
        self.txns.forget_finished(
            self.hlc.physical_millis(),
            self.cfg.finished_keep_ms,
            self.cfg.finished_max,
        );
        reaped
    }

    // ---------------------------------------------------------------- garbage collection

    /// The oldest version a read may ask for.
    pub fn horizon(&self) -> u64 {
        self.horizon.load(Ordering::SeqCst)
    }

    /// Refuses a read at `at` below the horizon.
    pub fn check_horizon(&self, at: u64) -> Result<(), EngineError> {
        let horizon = self.horizon();
        if at < horizon { Err(EngineError::Gone { requested: at, horizon }) } else { Ok(()) }
    }

    /// Where the watermark is now, and what holds it there.
    pub fn watermark(&self) -> Watermark {
        let now = self.hlc.physical_millis();
        // Under memory pressure retention shrinks to nothing: only snapshots and pins hold.
        let retention = if self.pressure() >= Pressure::High { 0 } else { self.cfg.retention_ms };
        let by_time = hlc::version_at_millis(now.saturating_sub(retention));
        let latest = self.hlc.last();
        let mut w = if latest < by_time {
            Watermark { version: latest, held_by: HeldBy::Latest }
        } else {
            Watermark { version: by_time, held_by: HeldBy::Retention }
        };
        for txn in self.txns.active() {
            if txn.read_version() < w.version {
                w = Watermark { version: txn.read_version(), held_by: HeldBy::Txn(txn.id.clone()) };
            }
        }
        if let Some(pin) = self.pins.oldest(now)
            && pin.version < w.version
        {
            w = Watermark { version: pin.version, held_by: HeldBy::Pin(pin.id) };
        }
        let horizon = self.horizon();
        if w.version <= horizon {
            // Never back; and whatever holds it, it cannot hold it below what is already gone.
            w.version = horizon;
            if w.held_by == HeldBy::Retention || w.held_by == HeldBy::Latest {
                w.held_by = HeldBy::Horizon;
            }
        }
        w
    }

    /// Raises the horizon to the current watermark before anything is pruned, and returns
    /// the watermark a pass may prune to. A transaction that begins concurrently either is
    /// seen here (the watermark stays at its snapshot) or sees the raised horizon in
    /// [`Engine::begin`] and is refused; both sides use sequentially consistent order.
    pub fn raise_horizon(&self) -> Watermark {
        let mut w = self.watermark();
        let old = self.horizon.fetch_max(w.version, Ordering::SeqCst);
        // A snapshot registered between the first look and the raise pulls it back; nothing
        // was pruned yet, so lowering is safe (reads refused meanwhile were merely cautious).
        let again = self.watermark();
        if again.version < w.version {
            w = again;
            self.horizon.store(w.version.max(old), Ordering::SeqCst);
        }
        w
    }

    /// Prunes partition `idx` to the horizon (raise it first) and says what cold storage
    /// must drop. Takes each pointer's mutex briefly; commits go on meanwhile.
    pub fn gc_partition(&self, idx: usize) -> PartitionGc {
        let horizon = self.horizon();
        // Cold versions are looked for on disk once per hundredth of the retention.
        let cold_every = (self.cfg.retention_ms / 100) << hlc::LOGICAL_BITS;
        self.partitions.get(idx).map(|p| p.gc(horizon, cold_every)).unwrap_or_default()
    }

    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    /// Reports a finished pass as a `gc` event.
    pub fn report_gc(&self, watermark: &Watermark, versions: u64, removed: u64, bytes: u64) {
        self.emit(EventKind::Gc, None, None, |e| {
            e.version = Some(watermark.version);
            e.reason = Some(format!(
                "pruned {versions} versions ({bytes} bytes) and removed {removed} deleted pointers below the watermark"
            ));
        });
    }

    /// The memory-pressure level.
    pub fn pressure(&self) -> Pressure {
        Pressure::from_u8(self.pressure.load(Ordering::SeqCst))
    }

    /// Memory the pointers and their hot versions cost, by the engine's accounting.
    pub fn memory_bytes(&self) -> u64 {
        self.partitions.iter().map(Partition::memory).sum()
    }

    /// Measures memory against `budget` (0: none) and moves the level; returns the change,
    /// if any, with the bytes measured, and reports it as a `pressure` event.
    pub fn update_pressure(&self, budget: u64) -> Option<(Pressure, Pressure, u64)> {
        let used = self.memory_bytes();
        let old = self.pressure();
        let new = old.next(used, budget);
        if new == old {
            return None;
        }
        self.pressure.store(new as u8, Ordering::SeqCst);
        self.emit(EventKind::Pressure, None, None, |e| {
            e.reason = Some(format!(
                "{}: memory {used} of {budget} bytes ({:.0}%), was {}",
                new.as_str(),
                used as f64 * 100.0 / budget.max(1) as f64,
                old.as_str()
            ));
        });
        Some((old, new, used))
    }

    /// Keeps only the latest `keep` versions of each pointer in memory, partition by
    /// partition; returns how many versions left memory.
    pub fn evict_hot(&self, keep: usize) -> u64 {
        self.partitions.iter().map(|p| p.evict(keep)).sum()
    }

    /// Pins history at version `at` for `ttl_ms`.
    pub fn pin(&self, id: String, at: u64, ttl_ms: u64, note: String) -> Result<Pin, EngineError> {
        let now = self.hlc.physical_millis();
        let pin = Pin { id, version: at, created_ms: now, expires_ms: now.saturating_add(ttl_ms), note };
        // Same handshake as `begin`: visible to the watermark first, then checked.
        self.pins.insert(pin.clone());
        let horizon = self.horizon.load(Ordering::SeqCst);
        if at < horizon {
            self.pins.remove(&pin.id);
            return Err(EngineError::Gone { requested: at, horizon });
        }
        Ok(pin)
    }

    pub fn unpin(&self, id: &str) -> Result<Pin, EngineError> {
        self.pins.remove(id).ok_or_else(|| EngineError::PinNotFound(id.to_string()))
    }

    /// Live pins, oldest version first.
    pub fn pins(&self) -> Vec<Pin> {
        let now = self.hlc.physical_millis();
        self.pins.list().into_iter().filter(|p| p.expires_ms > now).collect()
    }

    /// Drops expired pins and returns them.
    pub fn expire_pins(&self) -> Vec<Pin> {
        self.pins.expire(self.hlc.physical_millis())
    }

    // ---------------------------------------------------------------- helpers

    fn group_pairs<T>(
        &self,
        pairs: impl IntoIterator<Item = (PtrId, T)>,
    ) -> BTreeMap<usize, Vec<(PtrId, T)>> {
        let n = self.partitions.len() as u32;
        let mut out: BTreeMap<usize, Vec<(PtrId, T)>> = BTreeMap::new();
        for (p, t) in pairs {
            out.entry(partition_of(&p, n) as usize).or_default().push((p, t));
        }
        out
    }

    /// Pointers and hot versions held in memory.
    pub fn memory_stats(&self) -> (usize, usize) {
        self.partitions.iter().map(Partition::stats).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }
}
