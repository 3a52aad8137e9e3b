//! Reads: one pointer at a snapshot (own writes first, recorded in the read set), and listings in id order across partitions.

use std::ops::Bound;
use std::sync::Arc;

use super::error::EngineError;
use super::events::EventKind;
use super::partition::PartitionRead;
use super::pointer::VersionRec;
use super::txn::Txn;
use super::{Engine, ListStep, PreparedWait, PtrId, ReadStep, TxnId};

impl Engine {
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
    pub(super) fn read_at(
        &self,
        ptr: &str,
        at: u64,
        reader: Option<&TxnId>,
    ) -> Result<Option<ReadStep>, EngineError> {
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
}
