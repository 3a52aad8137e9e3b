//! A node: the engine, its fjall store and the group committer, driven asynchronously.
//!
//! The engine never blocks: where it would wait (for a lock, or for a prepared commit a read
//! must see) it hands back a listener. This module does the waiting, with the lock timeout,
//! makes prepared commits durable before they are installed, and runs the lease reaper.
//! HTTP handlers call only this.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::Instrument;

use crate::engine::clock::SystemClock;
use crate::engine::events::{EventSink, Tee};
use crate::engine::{
    AbortReason, BeginOptions, CommitStep, Conflict, Engine, EngineConfig, EngineError, ListPage,
    PreparedWait, PtrId, ReadStep, StorageError, Txn, VersionRec, WriteStep,
};
use crate::metrics::Metrics;
use crate::storage::group_commit::{CommitFailure, GroupCommitter};
use crate::storage::{CommitRecord, Durability, SharedStore, Store};

/// Longest a read waits for a prepared commit to land before giving up.
const PREPARED_WAIT: Duration = Duration::from_secs(10);

/// Settings of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// Partition count for a new data directory (`None`: 64, or what the directory has).
    pub partitions: Option<u32>,
    pub engine: EngineConfig,
    /// Longest a write waits for another transaction's lock.
    pub lock_timeout: Duration,
    pub durability: Durability,
    /// How often expired leases are looked for.
    pub reap_every: Duration,
    /// How often garbage collection looks for history below the watermark (and memory
    /// pressure is measured).
    pub gc_every: Duration,
    /// Memory the engine may hold, in bytes (0: no budget, no pressure levels).
    pub memory_budget: u64,
}

/// What garbage collection has done since the node started.
#[derive(Debug, Clone, Default)]
pub struct GcTotals {
    pub passes: u64,
    pub versions_memory: u64,
    pub bytes_memory: u64,
    pub versions_disk: u64,
    pub bytes_disk: u64,
    pub pointers_removed: u64,
    /// The last pass that pruned anything: when (ms), to which watermark, and how long it took.
    pub last_pass_ms: Option<u64>,
    pub last_watermark: u64,
    pub last_elapsed_ms: u64,
}

/// A precondition of a one-shot transaction, checked at its snapshot and validated at commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// The pointer's live version must be this one; `None`: the pointer must be absent.
    Version(Option<u64>),
    /// The pointer must have a live value.
    Exists,
}

/// A running node.
pub struct Node {
    pub engine: Arc<Engine>,
    pub store: SharedStore,
    committer: GroupCommitter,
    pub config: NodeConfig,
    pub metrics: Arc<Metrics>,
    /// Transactions waiting for a lock now: txn → (pointer, since when, in ms).
    waits: dashmap::DashMap<crate::engine::TxnId, (PtrId, u64)>,
    gc: parking_lot::Mutex<GcTotals>,
    /// The horizon the last completed pass pruned to; a pass with nothing new skips the walk.
    pruned_to: std::sync::atomic::AtomicU64,
}

impl Node {
    /// Opens the data directory, recovers, and starts the committer.
    pub fn open(
        config: NodeConfig,
        events: Arc<dyn EventSink>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Node>, StorageError> {
        Self::open_with(config, events, metrics, |store| Arc::new(store))
    }

    /// Opens the data directory and runs the node over `wrap(store)`: a test wraps the real
    /// store in one that injects faults (`storage::fault`).
    pub fn open_with(
        mut config: NodeConfig,
        events: Arc<dyn EventSink>,
        metrics: Arc<Metrics>,
        wrap: impl FnOnce(Store) -> SharedStore,
    ) -> Result<Arc<Node>, StorageError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| StorageError::backend("creating the data directory", e))?;
        let started = std::time::Instant::now();
        let (store, recovered) =
            Store::open(&config.data_dir, config.partitions, config.engine.hot_versions)?;
        tracing::info!(
            pointers = recovered.pointers.len(),
            versions = recovered.versions,
            partitions = recovered.partitions,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered data directory"
        );
        config.engine.partitions = recovered.partitions;
        let (horizon, pins) = store.gc_state()?;
        let store = wrap(store);
        let engine = Arc::new(
            Engine::new(
                config.engine.clone(),
                Arc::new(SystemClock),
                store.clone(),
                recovered.pointers,
                recovered.max_version,
            )
            .with_events(Arc::new(Tee(vec![events, metrics.clone()])))
            .with_gc_state(horizon, pins),
        );
        let committer = GroupCommitter::start(store.clone(), config.durability)
            .map_err(|e| StorageError::backend("starting the commit thread", e))?;
        Ok(Arc::new(Node {
            engine,
            store,
            committer,
            config,
            metrics,
            waits: Default::default(),
            gc: Default::default(),
            pruned_to: Default::default(),
        }))
    }

    /// Starts the background task that garbage-collects history below the watermark.
    pub fn spawn_gc(self: &Arc<Self>) {
        self.spawn_every(self.config.gc_every, |node| async move {
            node.check_pressure();
            match tokio::task::spawn_blocking(move || node.gc_pass()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "garbage collection pass failed; retrying"),
                Err(e) => tracing::error!(error = %e, "garbage collection pass panicked"),
            }
        });
    }

    /// Runs `work` every `every` for as long as the node lives.
    fn spawn_every<F, Fut>(self: &Arc<Self>, every: Duration, work: F)
    where
        F: Fn(Arc<Node>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let node = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(node) = node.upgrade() else { return };
                work(node).await;
            }
        });
    }

    /// Measures memory against the budget and moves the pressure level; on entering high
    /// or critical, evicts all but the latest version of every pointer from memory.
    pub fn check_pressure(&self) {
        let budget = self.config.memory_budget;
        if let Some((old, new, used)) = self.engine.update_pressure(budget) {
            let evicted = if new > old { self.engine.evict_hot(1) } else { 0 };
            let after = self.engine.memory_bytes();
            tracing::warn!(
                from = old.as_str(),
                to = new.as_str(),
                memory_bytes = used,
                budget_bytes = budget,
                evicted_versions = evicted,
                memory_after_eviction = after,
                "memory pressure changed"
            );
        }
    }

    /// One garbage-collection pass: drop expired pins, raise the horizon to the watermark
    /// (durably, before anything goes), then prune each partition in memory and on disk, one
    /// partition and one pointer at a time, so commits never stop.
    pub fn gc_pass(&self) -> Result<(), StorageError> {
        use std::sync::atomic::Ordering;
        for pin in self.engine.expire_pins() {
            self.store.delete_pin(&pin.id)?;
            tracing::info!(pin = %pin.id, version = pin.version, "pin expired");
        }
        let saved = self.engine.horizon();
        let watermark = self.engine.raise_horizon();
        let horizon = self.engine.horizon();
        if horizon > saved {
            self.store.save_horizon(horizon)?;
        }
        if horizon <= self.pruned_to.load(Ordering::Relaxed) && self.gc.lock().passes > 0 {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let (mut vm, mut bm, mut vd, mut bd, mut removed) = (0, 0, 0, 0, 0);
        for idx in 0..self.engine.partition_count() {
            let pass = self.engine.gc_partition(idx);
            let (v, b) = self.store.prune(&pass.disk)?;
            vm += pass.versions;
            bm += pass.bytes;
            removed += pass.removed;
            vd += v;
            bd += b;
        }
        self.pruned_to.store(horizon, Ordering::Relaxed);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let mut totals = self.gc.lock();
        totals.passes += 1;
        if vm + vd + removed > 0 {
            totals.versions_memory += vm;
            totals.bytes_memory += bm;
            totals.versions_disk += vd;
            totals.bytes_disk += bd;
            totals.pointers_removed += removed;
            totals.last_pass_ms = Some(self.engine.now_millis());
            totals.last_watermark = watermark.version;
            totals.last_elapsed_ms = elapsed_ms;
            drop(totals);
            self.metrics.observe_gc(vm, bm, vd, bd, removed);
            self.engine.report_gc(&watermark, vm.max(vd), removed, bd);
            tracing::debug!(
                watermark = watermark.version,
                held_by = ?watermark.held_by,
                versions_memory = vm,
                versions_disk = vd,
                bytes_disk = bd,
                pointers_removed = removed,
                elapsed_ms,
                "garbage collected"
            );
        }
        Ok(())
    }

    /// What garbage collection has done so far.
    pub fn gc_totals(&self) -> GcTotals {
        self.gc.lock().clone()
    }

    /// Pins history at `at` for `ttl_ms`, durably.
    pub fn pin(&self, at: u64, ttl_ms: u64, note: String) -> Result<crate::engine::gc::Pin, EngineError> {
        let id = format!("{:016x}", self.engine.now_version());
        let pin = self.engine.pin(id, at, ttl_ms, note)?;
        if let Err(e) = self.store.save_pin(&pin) {
            let _ = self.engine.unpin(&pin.id);
            return Err(EngineError::Storage(e));
        }
        Ok(pin)
    }

    /// Removes a pin.
    pub fn unpin(&self, id: &str) -> Result<crate::engine::gc::Pin, EngineError> {
        let pin = self.engine.unpin(id)?;
        self.store.delete_pin(id).map_err(EngineError::Storage)?;
        Ok(pin)
    }

    /// Starts the background task that aborts transactions whose lease ran out.
    pub fn spawn_reaper(self: &Arc<Self>) {
        self.spawn_every(self.config.reap_every, |node| async move {
            for id in node.engine.reap_expired() {
                tracing::info!(txn = %id, "aborted: lease expired");
            }
        });
    }

    /// Begins a transaction. Once a failed write fenced the store, only read-only ones.
    pub fn begin(&self, opts: BeginOptions) -> Result<Arc<Txn>, EngineError> {
        if !opts.read_only
            && opts.at.is_none()
            && let Some(cause) = self.committer.fenced()
        {
            return Err(EngineError::WritesFenced { cause: cause.clone() });
        }
        self.engine.begin(opts)
    }

    /// Why the node stopped taking writes, if it did.
    pub fn fenced(&self) -> Option<&StorageError> {
        self.committer.fenced()
    }

    /// Reads `ptr` in `txn` (at its snapshot), or outside any txn at version `at`.
    pub async fn read(
        &self,
        txn: Option<&Txn>,
        ptr: &str,
        at: u64,
    ) -> Result<Option<Arc<VersionRec>>, EngineError> {
        loop {
            match self.engine.read(txn, ptr, at)? {
                ReadStep::Done(v) => return Ok(v),
                ReadStep::Wait(wait) => wait_prepared(wait).await?,
            }
        }
    }

    /// Stages a write in `txn`, waiting up to the lock timeout for another holder. A timeout
    /// aborts the transaction.
    pub async fn write(&self, txn: &Arc<Txn>, ptr: &str, value: Option<Bytes>) -> Result<(), EngineError> {
        self.lock(txn, ptr, || self.engine.write(txn, ptr, value.clone())).await
    }

    /// A locking read in `txn` (`FOR UPDATE`): takes `ptr`'s lock, waiting as a write does,
    /// then reads it at the (possibly refreshed) snapshot.
    pub async fn read_for_update(
        &self,
        txn: &Arc<Txn>,
        ptr: &str,
    ) -> Result<Option<Arc<VersionRec>>, EngineError> {
        self.lock(txn, ptr, || self.engine.lock_for_update(txn, ptr)).await?;
        self.read(Some(txn), ptr, txn.read_version()).await
    }

    /// Runs `step` until it has the lock, waiting up to the lock timeout for another holder.
    async fn lock(
        &self,
        txn: &Arc<Txn>,
        ptr: &str,
        step: impl Fn() -> Result<WriteStep, EngineError>,
    ) -> Result<(), EngineError> {
        let started = Instant::now();
        let deadline = started + self.config.lock_timeout;
        let mut waited = false;
        loop {
            let step = step();
            if waited && !matches!(step, Ok(WriteStep::Wait { .. })) {
                self.metrics.observe_lock_wait(started.elapsed().as_secs_f64());
            }
            let step = match step {
                Ok(step) => step,
                Err(e) => {
                    if waited {
                        // Woken, but not taking the lock: the next waiter must not sleep on.
                        self.engine.pass_lock_turn(ptr);
                    }
                    return Err(e);
                }
            };
            match step {
                WriteStep::Staged => return Ok(()),
                WriteStep::Wait { holder, listener } => {
                    waited = true;
                    let _waiting = WaitRecord::new(&self.waits, txn, ptr, self.engine.now_millis());
                    let span = tracing::debug_span!("lock_wait", restm.txn = %txn.id, restm.ptr = %ptr, restm.holder_txn = %holder);
                    if timeout_at(deadline, listener).instrument(span).await.is_err() {
                        conflict_span(&txn.id, &Conflict::Locked { ptr: ptr.into(), holder: holder.clone() });
                        self.metrics.observe_lock_wait(started.elapsed().as_secs_f64());
                        let ptr: PtrId = ptr.into();
                        self.engine.abort(
                            txn,
                            AbortReason::LockTimeout { ptr: ptr.clone(), holder: holder.clone() },
                        );
                        return Err(EngineError::LockTimeout { txn: txn.id.clone(), ptr, holder });
                    }
                }
            }
        }
    }

    /// Commits `txn`: prepare and validate, make it durable, install it. The durable part
    /// runs in its own task, so a client that goes away mid-commit cannot leave it half done.
    pub async fn commit(&self, txn: &Arc<Txn>) -> Result<u64, EngineError> {
        let span = tracing::debug_span!("commit", restm.txn = %txn.id, restm.version = tracing::field::Empty);
        let result = self.commit_inner(txn).instrument(span.clone()).await;
        if let Ok(v) = &result {
            span.record("restm.version", v);
            tracing::Span::current().record("restm.version", v);
        }
        result
    }

    async fn commit_inner(&self, txn: &Arc<Txn>) -> Result<u64, EngineError> {
        let step = tracing::debug_span!("prepare_validate").in_scope(|| self.engine.prepare_commit(txn));
        let prepared = match step {
            Ok(CommitStep::Done(v)) => return Ok(v),
            Ok(CommitStep::Prepared(p)) => p,
            Err(e) => {
                if let EngineError::Conflict { txn, conflict } = &e {
                    conflict_span(txn, conflict);
                }
                return Err(e);
            }
        };
        let record = CommitRecord::of(&prepared);
        let engine = self.engine.clone();
        let committer = self.committer.clone();
        let persist = tracing::debug_span!(
            "persist",
            restm.version = prepared.commit_version,
            restm.writes = prepared.writes.len()
        );
        let (txn_id, commit_version) = (txn.id.clone(), prepared.commit_version);
        let task = tokio::spawn(
            async move {
                match committer.commit(record).instrument(persist).await {
                    Ok(()) => {
                        let (txn, commit_version) = (prepared.txn.id.clone(), prepared.commit_version);
                        engine.install_commit(prepared).map_err(|conflict| EngineError::OutcomeUnknown {
                            txn,
                            commit_version,
                            cause: StorageError::Corrupt(format!(
                                "the durable commit failed its re-check in memory ({conflict}); restart the node"
                            )),
                        })
                    }
                    Err(CommitFailure::Fenced(cause)) => {
                        // Nothing of it was written: a clean abort.
                        engine.fail_commit(prepared, cause.clone());
                        Err(EngineError::WritesFenced { cause })
                    }
                    Err(CommitFailure::Unknown(cause)) => {
                        // It may be on disk. It stays prepared (its locks held, readers that
                        // could see it waiting), never reported as aborted: the store is fenced,
                        // and a restart's recovery decides.
                        let txn = prepared.txn.id.clone();
                        tracing::error!(txn = %txn, version = prepared.commit_version, error = %cause, "commit outcome unknown");
                        Err(EngineError::OutcomeUnknown { txn, commit_version: prepared.commit_version, cause })
                    }
                }
            }
            .instrument(tracing::Span::current()),
        );
        // The task only ends by returning, unless it panicked: then nobody knows either.
        task.await.map_err(|e| EngineError::OutcomeUnknown {
            txn: txn_id,
            commit_version,
            cause: StorageError::backend("the commit task", e),
        })?
    }

    /// A one-shot transaction: check every precondition at one snapshot, stage every write,
    /// commit. All or nothing.
    pub async fn one_shot(
        &self,
        checks: &[(PtrId, Precondition)],
        writes: Vec<(PtrId, Option<Bytes>)>,
        trace_id: Option<Arc<str>>,
    ) -> Result<(Arc<Txn>, u64), EngineError> {
        let frees_memory = !writes.is_empty() && writes.iter().all(|(_, v)| v.is_none());
        let txn = self.engine.begin(BeginOptions { trace_id, frees_memory, ..Default::default() })?;
        tracing::Span::current().record("restm.txn", &*txn.id);
        let guard = AbortOnDrop { engine: &self.engine, txn: &txn };
        for (ptr, pre) in checks {
            let seen = self.read(Some(&txn), ptr, txn.read_version()).await?;
            let live = seen.as_ref().filter(|v| v.value.is_some());
            let ok = match pre {
                Precondition::Exists => live.is_some(),
                Precondition::Version(want) => live.map(|v| v.version) == *want,
            };
            if !ok {
                self.engine.abort(&txn, AbortReason::CheckFailed { ptr: ptr.clone() });
                if *pre == Precondition::Exists {
                    return Err(EngineError::NotFound { ptr: ptr.clone() });
                }
                let expected = match pre {
                    Precondition::Version(v) => *v,
                    Precondition::Exists => None,
                };
                return Err(EngineError::CheckFailed {
                    txn: txn.id.clone(),
                    ptr: ptr.clone(),
                    expected,
                    actual: live.map(|v| v.version),
                    actual_txn: live.map(|v| v.txn.clone()),
                });
            }
        }
        for (ptr, value) in writes {
            self.write(&txn, &ptr, value).await?;
        }
        let version = self.commit(&txn).await?;
        std::mem::forget(guard);
        Ok((txn, version))
    }

    /// A page of live pointers under `prefix` at version `at`.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        at: u64,
        limit: usize,
    ) -> Result<ListPage, EngineError> {
        loop {
            match self.engine.list(prefix, after, at, limit)? {
                Ok(page) => return Ok(page),
                Err(wait) => wait_prepared(wait).await?,
            }
        }
    }
}

impl Node {
    /// Every held lock with its holder and waiters, contended ones first.
    pub fn locks(&self) -> Vec<restm_shared::LockView> {
        let now = self.engine.now_millis();
        let mut waiters: std::collections::HashMap<PtrId, Vec<restm_shared::LockWaiter>> = Default::default();
        for w in self.waits.iter() {
            let (ptr, since) = w.value();
            waiters.entry(ptr.clone()).or_default().push(restm_shared::LockWaiter {
                txn: w.key().to_string(),
                waiting_ms: now.saturating_sub(*since),
            });
        }
        let mut out = Vec::new();
        for txn in self.engine.active_txns() {
            let locks: Vec<PtrId> = txn.inner.lock().locks.iter().cloned().collect();
            for ptr in locks {
                let mut w = waiters.remove(&ptr).unwrap_or_default();
                w.sort_by_key(|x| std::cmp::Reverse(x.waiting_ms));
                out.push(restm_shared::LockView {
                    ptr: ptr.to_string(),
                    holder_txn: txn.id.to_string(),
                    holder_trace_id: txn.trace_id.to_string(),
                    holder_age_ms: now.saturating_sub(txn.started_ms),
                    waiters: w,
                });
            }
        }
        out.sort_by(|a, b| b.waiters.len().cmp(&a.waiters.len()).then_with(|| a.ptr.cmp(&b.ptr)));
        out
    }
}

/// Records a conflict as a span of its own, naming the pointer and the winner.
fn conflict_span(txn: &str, conflict: &Conflict) {
    let winner = conflict.winner();
    let span = tracing::debug_span!(
        "conflict",
        restm.txn = %txn,
        restm.ptr = %conflict.ptr(),
        restm.holder_txn = conflict.holder().map_or("", |h| h),
        restm.winner_txn = winner.map_or("", |w| w.0),
        restm.winner_version = winner.map_or(0, |w| w.1),
    );
    span.in_scope(|| tracing::debug!("conflict"));
}

async fn wait_prepared(wait: PreparedWait) -> Result<(), EngineError> {
    let PreparedWait { ptr, holder, listener } = wait;
    timeout(PREPARED_WAIT, listener).await.map_err(|_| EngineError::PreparedWaitTimeout {
        ptr,
        holder,
        waited_ms: PREPARED_WAIT.as_millis() as u64,
    })
}

/// Records a lock wait for as long as it lasts (also when the request is cancelled).
struct WaitRecord<'a> {
    waits: &'a dashmap::DashMap<crate::engine::TxnId, (PtrId, u64)>,
    txn: crate::engine::TxnId,
}

impl<'a> WaitRecord<'a> {
    fn new(
        waits: &'a dashmap::DashMap<crate::engine::TxnId, (PtrId, u64)>,
        txn: &Txn,
        ptr: &str,
        now_ms: u64,
    ) -> Self {
        waits.insert(txn.id.clone(), (ptr.into(), now_ms));
        Self { waits, txn: txn.id.clone() }
    }
}

impl Drop for WaitRecord<'_> {
    fn drop(&mut self) {
        self.waits.remove(&self.txn);
    }
}

/// Aborts a one-shot transaction whose request went away before it finished.
struct AbortOnDrop<'a> {
    engine: &'a Engine,
    txn: &'a Arc<Txn>,
}

impl Drop for AbortOnDrop<'_> {
    fn drop(&mut self) {
        self.engine.abort(self.txn, AbortReason::Cancelled);
    }
}
