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
//!
//! The coordinator's rooms: `life` (begin, leases, aborts), `read` (reads and listings),
//! `locking` (writes and locking reads), `commit` (prepare, validate, install) and
//! `horizon` (watermark, pins, pressure). A partition's replicated state changes only
//! through [`partition::Partition::apply`] of a [`command::Command`].

pub mod clock;
mod closed;
pub mod cold;
pub mod command;
mod commit;
pub mod error;
pub mod events;
pub mod gc;
pub mod guard;
pub mod hlc;
mod horizon;
mod life;
mod locking;
pub mod partition;
pub mod pointer;
pub mod pressure;
mod read;
pub mod txn;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use bytes::Bytes;
use event_listener::EventListener;

pub use error::{AbortReason, Conflict, EngineError, StorageError};
pub use pointer::VersionRec;
pub use txn::{Phase, Txn};

use clock::Clock;
use cold::ColdStore;
use events::{DiscardEvents, EngineEvent, EventKind, EventSink};
use gc::{Pin, PinTable};
use hlc::Hlc;
use partition::{Partition, partition_of};
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
    /// The node's id in a cluster: its txn ids name it (`n2-…`), since two nodes' clocks can
    /// tick the same value. `None` on a node of its own.
    pub node_id: Option<u64>,
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
            node_id: None,
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
    /// The commit version is above this (the `Prepare` commands carry it).
    pub prepared_above: u64,
    /// Coordinated beside other coordinators (partitions in groups of their own, led
    /// anywhere): every commit is two-phase with a primary, every partition read is
    /// guarded, and the commit version is picked once the prepares answered
    /// ([`Engine::repick_commit_version`]).
    pub across_groups: bool,
    /// Across groups, a one-partition commit whose group another member leads: that
    /// leader picks the commit version and installs the writes in one `PrepareCommit`
    /// (`Cluster::commit_one`), and `commit_version` is a stand-in until it answers
    /// ([`Engine::adopt_commit_version`]).
    pub at_leader: bool,
}

/// The commands that make a prepared commit, partition by partition, when partitions are
/// replicated: each is proposed to its partition's log, and the steps go in order.
#[derive(Debug, Clone)]
pub struct CommitPlan {
    /// `Prepare` on every written partition (empty for a one-partition commit), and across
    /// groups `Guard` on every partition read.
    pub prepare: Vec<(u32, command::Command)>,
    /// The committed record on the primary's partition: the commit point.
    pub record: Option<(u32, command::Command)>,
    /// `Commit` on every written partition, the primary's last; or the one `PrepareCommit`.
    pub install: Vec<(u32, command::Command)>,
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
    partitions: Arc<[Partition]>,
    txns: TxnTable,
    cold: Arc<dyn ColdStore>,
    events: Arc<dyn EventSink>,
    /// The oldest version a read may ask for; raised by garbage collection before it prunes.
    horizon: AtomicU64,
    pins: PinTable,
    /// The memory-pressure level ([`Pressure`] as a number).
    pressure: AtomicU8,
    /// Replicated commits' versions not yet landed: what the leader may close.
    in_flight: closed::InFlight,
    /// Of those, the one-partition commits this node proposes where every member
    /// coordinates: a peer's read barrier waits for those at or below its reader's clock
    /// (see [`Engine::landing_at_or_below`]).
    landing: closed::InFlight,
    /// The cluster's GC horizon, which caps this member's watermark: `u64::MAX` on a
    /// node of its own, 0 on a member until its log says more.
    cluster_horizon: AtomicU64,
    /// The watermark this member last promised the cluster (see
    /// [`Engine::promise_watermark`]): no txn begins below it.
    promised: AtomicU64,
    /// Told the locks an aborted txn gave up (see [`Engine::on_abort_release`]).
    abort_hook: std::sync::OnceLock<AbortHook>,
}

/// What [`Engine::on_abort_release`] calls: the txn, and the pointers whose locks it held.
pub type AbortHook = Box<dyn Fn(&TxnId, &[PtrId]) + Send + Sync>;

impl Engine {
    /// An engine over recovered pointers; the clock starts above `max_version`.
    pub fn new(
        cfg: EngineConfig,
        clock: Arc<dyn Clock>,
        cold: Arc<dyn ColdStore>,
        recovered: impl IntoIterator<Item = RecoveredPointer>,
        max_version: u64,
    ) -> Self {
        let partitions: Arc<[Partition]> = (0..cfg.partitions.max(1)).map(Partition::new).collect();
        let n = partitions.len() as u32;
        for p in recovered {
            let idx = partition_of(&p.ptr, n) as usize;
            partitions[idx].install_recovered(p.ptr, VersionChain::recovered(p.hot, p.cold_below));
        }
        let hlc = Hlc::new(clock, max_version);
        // Start the clock at now, so that "the latest version" of a fresh store is a moment
        // (the watermark's lag is then measured from it, not from 1970).
        hlc.tick();
        let cluster_horizon = AtomicU64::new(if cfg.node_id.is_some() { 0 } else { u64::MAX });
        Self {
            cluster_horizon,
            promised: AtomicU64::new(0),
            hlc,
            cfg,
            partitions,
            txns: TxnTable::default(),
            cold,
            events: Arc::new(DiscardEvents),
            horizon: AtomicU64::new(0),
            pins: PinTable::default(),
            pressure: AtomicU8::new(Pressure::Low as u8),
            in_flight: closed::InFlight::default(),
            landing: closed::InFlight::default(),
            abort_hook: std::sync::OnceLock::new(),
        }
    }

    /// Calls `hook` with the locks of every txn aborted from now on, however it ended
    /// (its client, a lock timeout, its lease, a conflict): a cluster member releases the
    /// locks its txns took at other members by it. Set once; later calls are ignored.
    pub fn on_abort_release(&self, hook: AbortHook) {
        let _ = self.abort_hook.set(hook);
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
    pub(super) fn emit(
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

    /// The partitions, shared: a replicated node's state machine applies to them.
    pub fn shared_partitions(&self) -> Arc<[Partition]> {
        self.partitions.clone()
    }

    /// Moves the clock above `version` (a version applied from a replicated log, so that
    /// this node's next versions are above it should it lead).
    pub fn observe_version(&self, version: u64) {
        self.hlc.observe(version);
    }

    pub(super) fn partition(&self, ptr: &str) -> &Partition {
        &self.partitions[self.partition_index(ptr)]
    }

    /// The partition `ptr` lives on.
    pub fn partition_of(&self, ptr: &str) -> u32 {
        self.partition_index(ptr) as u32
    }

    /// The index of `ptr`'s partition.
    pub(super) fn partition_index(&self, ptr: &str) -> usize {
        partition_of(ptr, self.partitions.len() as u32) as usize
    }

    /// The highest timestamp this node, leading, may close on its partitions now (see
    /// [`closed`]).
    pub fn closable(&self) -> u64 {
        self.in_flight.closable(&self.hlc)
    }

    /// How many replicated commits hold the closed timestamp back.
    pub fn commits_in_flight(&self) -> usize {
        self.in_flight.holding()
    }

    /// Forgets the commits in flight (this node lost the lead).
    pub fn forget_in_flight(&self) {
        self.in_flight.forget();
        self.landing.forget();
    }

    /// Where every member coordinates, a one-partition commit is one `PrepareCommit` whose
    /// version this node, the partition's leader, picked: a reader on another replica at a
    /// snapshot at or above it must not read before it lands. A listener for the next
    /// landing when one at or below `at` is still out, or `None`.
    pub fn landing_at_or_below(&self, at: u64) -> Option<event_listener::EventListener> {
        self.landing.at_or_below(at)
    }

    /// Issues a commit version for a one-partition commit a peer coordinates in a group
    /// this node leads (`Cluster::commit_one`), held in flight and landing as this node's
    /// own are, until [`Self::settle_abandoned`].
    pub fn issue_for_peer(&self) -> u64 {
        self.in_flight.issue_with(&self.landing, &self.hlc)
    }

    /// An abandoned one-partition commit at `version` has settled (a later entry of this
    /// node's landed in its log, or it no longer leads the group): it holds nothing back.
    pub fn settle_abandoned(&self, version: u64) {
        self.in_flight.release(version);
        self.landing.release(version);
    }

    /// `ptr`'s partition's closed timestamp: a read at or below it is served from this
    /// node's own state.
    pub fn closed_for(&self, ptr: &str) -> u64 {
        self.partition(ptr).closed()
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

    pub(super) fn group_pairs<T>(
        &self,
        pairs: impl IntoIterator<Item = (PtrId, T)>,
    ) -> BTreeMap<usize, Vec<(PtrId, T)>> {
        let mut out: BTreeMap<usize, Vec<(PtrId, T)>> = BTreeMap::new();
        for (p, t) in pairs {
            out.entry(self.partition_index(&p)).or_default().push((p, t));
        }
        out
    }

    /// Pointers and hot versions held in memory.
    pub fn memory_stats(&self) -> (usize, usize) {
        self.partitions.iter().map(Partition::stats).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }
}
