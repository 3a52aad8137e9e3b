//! Transaction life: begin, leases, lookups, aborts and the end of every transaction.

use std::sync::Arc;

use super::error::{AbortReason, EngineError};
use super::events::{EngineEvent, EventKind};
use super::pressure::Pressure;
use super::txn::{Phase, Txn};
use super::{BeginOptions, Engine, PtrId, TxnId};

impl Engine {
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
        let id: TxnId = match self.cfg.node_id {
            None => format!("{start:016x}").into(),
            Some(node) => format!("n{node}-{start:016x}").into(),
        };
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
        // holds the watermark at it, or this sees the raised horizon (see `raise_horizon`) or
        // the raised promise to the cluster (see `promise_watermark`).
        let horizon = self.begin_floor();
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

    pub(super) fn ensure_active(txn: &Txn, phase: &Phase) -> Result<(), EngineError> {
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

    /// Aborts an active transaction, releasing its locks. Returns false if it was not active.
    pub fn abort(&self, txn: &Arc<Txn>, reason: AbortReason) -> bool {
        self.end_aborted(txn, reason, false)
    }

    pub(super) fn abort_committing(&self, txn: &Arc<Txn>, reason: AbortReason) {
        self.end_aborted(txn, reason, true);
    }

    /// Marks `txn` aborted and releases its locks; unless `committing` (the coordinator
    /// undoing its own prepare), only an active transaction can be aborted.
    pub(super) fn end_aborted(&self, txn: &Arc<Txn>, reason: AbortReason, committing: bool) -> bool {
        let locks = {
            let mut inner = txn.inner.lock();
            if !committing && inner.phase != Phase::Active {
                return false;
            }
            inner.phase = Phase::Aborted(reason.clone());
            inner.writes.clear();
            std::mem::take(&mut inner.locks)
        };
        if let Some(hook) = self.abort_hook.get()
            && !locks.is_empty()
        {
            let ptrs: Vec<PtrId> = locks.iter().cloned().collect();
            hook(&txn.id, &ptrs);
        }
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

    pub(super) fn release(&self, txn: &Arc<Txn>, locks: impl IntoIterator<Item = PtrId>) {
        for ptr in locks {
            self.partition(&ptr).unlock(&txn.id, &ptr);
            self.emit(EventKind::LockReleased, Some(txn), Some(&ptr), |_| {});
        }
        self.finish(txn);
    }

    /// The trace id of a transaction the table still knows.
    pub(super) fn trace_of(&self, txn: &str) -> Option<Arc<str>> {
        self.txns.get(txn).map(|t| t.trace_id.clone())
    }

    pub(super) fn finish(&self, txn: &Arc<Txn>) {
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

    pub(super) fn lease_expired(&self, txn: &Txn) -> bool {
        let inner = txn.inner.lock();
        inner.phase == Phase::Active && inner.deadline_ms < self.hlc.physical_millis()
    }
}
