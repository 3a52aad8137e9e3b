//! Writes and locking reads: taking a pointer's lock in the leader's layer, waiting for it, and staging a write once it is held.

use std::sync::Arc;

use bytes::Bytes;

use super::error::{AbortReason, EngineError};
use super::events::EventKind;
use super::partition::LockOutcome;
use super::txn::Txn;
use super::{Engine, PtrId, WriteStep};

impl Engine {
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
    pub(super) fn acquire(
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
}
