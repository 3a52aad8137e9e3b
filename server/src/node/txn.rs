//! Transactions through the node: begin, reads and writes that wait, commit with
//! durability, one-shots, listings, aborts and the live view of locks.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::Instrument;

use super::Node;
use crate::engine::{
    AbortReason, BeginOptions, CommitStep, Conflict, Engine, EngineError, ListPage, Phase, PreparedCommit,
    PreparedWait, PtrId, ReadStep, StorageError, Txn, VersionRec, WriteStep,
};
use crate::storage::CommitRecord;
use crate::storage::group_commit::CommitFailure;

/// A precondition of a one-shot transaction, checked at its snapshot and validated at commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// The pointer's live version must be this one; `None`: the pointer must be absent.
    Version(Option<u64>),
    /// The pointer must have a live value.
    Exists,
}

impl Node {
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

    /// Reads `ptr` in `txn` (at its snapshot), or outside any txn at version `at`.
    pub async fn read(
        &self,
        txn: Option<&Txn>,
        ptr: &str,
        at: u64,
    ) -> Result<Option<Arc<VersionRec>>, EngineError> {
        if let Some(txn) = txn {
            self.settle_txn(txn, ptr).await?;
        }
        loop {
            match self.engine.read(txn, ptr, at)? {
                ReadStep::Done(v) => return Ok(v),
                ReadStep::Wait(wait) => wait_prepared(wait, self.config.prepared_wait).await?,
            }
        }
    }

    /// Stages a write in `txn`, waiting up to the lock timeout for another holder. A timeout
    /// aborts the transaction.
    pub async fn write(&self, txn: &Arc<Txn>, ptr: &str, value: Option<Bytes>) -> Result<(), EngineError> {
        self.lock(txn, ptr, || self.engine.write(txn, ptr, value.clone())).await?;
        self.lock_at_leader(txn, ptr).await.map(|_| ())
    }

    /// A locking read in `txn` (`FOR UPDATE`): takes `ptr`'s lock, waiting as a write does,
    /// then reads it at the (possibly refreshed) snapshot.
    pub async fn read_for_update(
        &self,
        txn: &Arc<Txn>,
        ptr: &str,
    ) -> Result<Option<Arc<VersionRec>>, EngineError> {
        self.lock(txn, ptr, || self.engine.lock_for_update(txn, ptr)).await?;
        if self.lock_at_leader(txn, ptr).await? {
            // Held at the leader only now: what its holder before committed is what the
            // snapshot moves forward to, once this replica has applied it.
            self.settle(Some(ptr)).await?;
            self.engine.lock_for_update(txn, ptr)?;
        }
        self.read(Some(txn), ptr, txn.read_version()).await
    }

    /// Where every member coordinates, takes `ptr`'s lock at the leader of its group too
    /// (once this node's own table gave it), so that txns of other members wait for it (see
    /// [`crate::cluster::locks`]). Running out of time there aborts the txn as a lock
    /// timeout here does. A leader that cannot be asked leaves the lock to the `Prepare`,
    /// which takes it at the leader or loses to its holder. Answers whether it asked a
    /// leader elsewhere.
    async fn lock_at_leader(&self, txn: &Arc<Txn>, ptr: &str) -> Result<bool, EngineError> {
        let Some(cluster) = self.cluster.get().filter(|c| c.coordinates_anywhere()) else { return Ok(false) };
        let id: PtrId = ptr.into();
        if cluster.leads(cluster.group_of(self.engine.partition_of(ptr))) {
            return Ok(false);
        }
        let asking = cluster.lock_at_leader(&txn.id, &id, self.config.lock_timeout);
        let ended = async {
            // Aborted meanwhile (its client, its lease): the wait stops, as a waiter here
            // finds out when it is woken.
            while matches!(txn.phase(), Phase::Active) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let _waiting = WaitRecord::new(&self.waits, txn, ptr, self.engine.now_millis());
        let answer = tokio::select! {
            answer = asking => answer,
            () = ended => return self.engine.touch(txn).map(|()| true),
        };
        match answer {
            Ok(None) => Ok(true),
            Ok(Some(holder)) => {
                conflict_span(&txn.id, &Conflict::Locked { ptr: id.clone(), holder: holder.clone() });
                self.engine.abort(txn, AbortReason::LockTimeout { ptr: id.clone(), holder: holder.clone() });
                Err(EngineError::LockTimeout { txn: txn.id.clone(), ptr: id, holder })
            }
            Err(e) => {
                tracing::debug!(txn = %txn.id, ptr, error = %e, "no lock at the group's leader; the prepare takes it");
                Ok(true)
            }
        }
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
        if let Some(cluster) = self.cluster.get() {
            return self.commit_replicated(txn, cluster.clone()).await;
        }
        let step = tracing::debug_span!("prepare_validate").in_scope(|| self.engine.prepare_commit(txn));
        let prepared = match to_persist(step) {
            Ok(p) => p,
            Err(answer) => return answer,
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
        let id = txn_id.clone();
        let task = tokio::spawn(
            async move {
                match committer.commit(record).instrument(persist).await {
                    Ok(()) => engine.install_commit(prepared).map_err(|conflict| EngineError::OutcomeUnknown {
                        txn: id,
                        commit_version,
                        cause: StorageError::Corrupt(format!(
                            "the durable commit failed its re-check in memory ({conflict}); restart the node"
                        )),
                    }),
                    Err(CommitFailure::Fenced(cause)) => {
                        // Nothing of it was written: a clean abort.
                        engine.fail_commit(prepared, cause.clone());
                        Err(EngineError::WritesFenced { cause })
                    }
                    Err(CommitFailure::Unknown(cause)) => {
                        // It may be on disk. It stays prepared (its locks held, readers that
                        // could see it waiting), never reported as aborted: the store is fenced,
                        // and a restart's recovery decides.
                        tracing::error!(txn = %id, version = commit_version, error = %cause, "commit outcome unknown");
                        Err(EngineError::OutcomeUnknown { txn: id, commit_version, cause })
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
        // Through the node's door, so a fenced store refuses it before any work.
        let txn = self.begin(BeginOptions { trace_id, frees_memory, ..Default::default() })?;
        tracing::Span::current().record("restm.txn", &*txn.id);
        let guard = AbortOnDrop { engine: &self.engine, txn: &txn };
        for (ptr, pre) in checks {
            if let Err(e) = self.check(&txn, ptr, pre).await {
                if matches!(e, EngineError::NotFound { .. } | EngineError::CheckFailed { .. }) {
                    self.engine.abort(&txn, AbortReason::CheckFailed { ptr: ptr.clone() });
                }
                return Err(e);
            }
        }
        // The locks of the pointers other members lead are taken by the commit's `Prepare`
        // there: a one-shot holds them no longer than its commit.
        for (ptr, value) in writes {
            self.lock(&txn, &ptr, || self.engine.write(&txn, &ptr, value.clone())).await?;
        }
        let version = self.commit(&txn).await?;
        std::mem::forget(guard);
        Ok((txn, version))
    }

    /// Checks `pre` on `ptr` at `txn`'s snapshot: [`EngineError::NotFound`] when it must
    /// exist and does not, [`EngineError::CheckFailed`] when its version is not the one
    /// wanted. A value the txn staged itself exists, but has no version yet, so it matches
    /// no version.
    async fn check(&self, txn: &Arc<Txn>, ptr: &PtrId, pre: &Precondition) -> Result<(), EngineError> {
        let seen = self.read(Some(txn), ptr, txn.read_version()).await?;
        let live = seen.as_ref().filter(|v| v.value.is_some());
        let version = live.filter(|v| v.txn != txn.id).map(|v| v.version);
        match pre {
            Precondition::Exists if live.is_none() => Err(EngineError::NotFound { ptr: ptr.clone() }),
            Precondition::Version(want) if version != *want => Err(EngineError::CheckFailed {
                txn: txn.id.clone(),
                ptr: ptr.clone(),
                expected: *want,
                actual: version,
                actual_txn: live.map(|v| v.txn.clone()),
            }),
            _ => Ok(()),
        }
    }

    /// Stages a write in `txn` once every one of `checks` holds at its snapshot (a failed
    /// check leaves the txn as it was).
    pub async fn write_checked(
        &self,
        txn: &Arc<Txn>,
        ptr: &str,
        value: Option<Bytes>,
        checks: &[Precondition],
    ) -> Result<(), EngineError> {
        let id: PtrId = ptr.into();
        for pre in checks {
            self.check(txn, &id, pre).await?;
        }
        self.write(txn, ptr, value).await
    }

    /// Looks a transaction up (active or recently finished), without touching its lease.
    pub fn txn(&self, id: &str) -> Result<Arc<Txn>, EngineError> {
        self.engine.txn(id)
    }

    /// Looks up an active transaction that a request works in, and renews its lease.
    pub fn use_txn(&self, id: &str) -> Result<Arc<Txn>, EngineError> {
        let txn = self.engine.txn(id)?;
        self.engine.touch(&txn)?;
        Ok(txn)
    }

    /// Aborts `txn` for its client. Aborting twice is harmless; aborting a txn that
    /// committed, or is committing, is refused.
    pub fn abort(&self, txn: &Arc<Txn>) -> Result<(), EngineError> {
        if self.engine.abort(txn, AbortReason::Client) {
            return Ok(());
        }
        match txn.phase() {
            Phase::Aborted(_) => Ok(()),
            Phase::Committed(version) => Err(EngineError::TxnCommitted { txn: txn.id.clone(), version }),
            Phase::Committing | Phase::Active => Err(EngineError::TxnCommitting { txn: txn.id.clone() }),
        }
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
                Err(wait) => wait_prepared(wait, self.config.prepared_wait).await?,
            }
        }
    }

    /// Every held lock with its holder and waiters, contended ones first.
    pub fn locks(&self) -> Vec<restm_shared::LockView> {
        self.lock_parts().0
    }

    /// [`Self::locks`], and the waiters of locks this node's txns do not hold (a txn here
    /// waiting at another member for a lock a txn of a third holds): pointer and waiter.
    pub fn lock_parts(&self) -> (Vec<restm_shared::LockView>, Vec<(String, restm_shared::LockWaiter)>) {
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
        let loose = waiters.into_iter().flat_map(|(ptr, w)| w.into_iter().map(move |w| (ptr.to_string(), w)));
        (out, loose.collect())
    }
}

/// Records a conflict as a span of its own, naming the pointer and the winner.
/// What a prepare step leaves: the commit to make durable, or the answer now (nothing to
/// persist, or the failure, a conflict recorded on the span).
pub(super) fn to_persist(
    step: Result<CommitStep, EngineError>,
) -> Result<PreparedCommit, Result<u64, EngineError>> {
    match step {
        Ok(CommitStep::Done(v)) => Err(Ok(v)),
        Ok(CommitStep::Prepared(p)) => Ok(p),
        Err(e) => {
            if let EngineError::Conflict { txn, conflict } = &e {
                conflict_span(txn, conflict);
            }
            Err(Err(e))
        }
    }
}

pub(super) fn conflict_span(txn: &str, conflict: &Conflict) {
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

async fn wait_prepared(wait: PreparedWait, limit: Duration) -> Result<(), EngineError> {
    let PreparedWait { ptr, holder, listener } = wait;
    timeout(limit, listener).await.map_err(|_| EngineError::PreparedWaitTimeout {
        ptr,
        holder,
        waited_ms: limit.as_millis() as u64,
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
