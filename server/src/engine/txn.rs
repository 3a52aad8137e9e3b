//! Transactions: their read and write sets, their lease, and the table that finds them.
//!
//! A [`Txn`] is shared between the requests that drive it (and the lease reaper). Its mutable
//! part sits behind its own mutex; the table of transactions is a concurrent map, so begin
//! and commit never take a global lock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use crossbeam_queue::SegQueue;
use dashmap::DashMap;
use parking_lot::Mutex;

use super::error::AbortReason;
use super::{PtrId, TxnId};

/// Where a transaction is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Active,
    /// Prepared on every partition; the outcome is being made durable.
    Committing,
    Committed(u64),
    Aborted(AbortReason),
}

/// The mutable part of a transaction.
#[derive(Debug)]
pub struct TxnInner {
    pub phase: Phase,
    /// Physical milliseconds after which the lease has run out.
    pub deadline_ms: u64,
    /// Pointer → the version seen at the snapshot (`None`: absent). The first read counts.
    pub reads: BTreeMap<PtrId, Option<u64>>,
    /// Pointer → staged value (`None`: delete).
    pub writes: BTreeMap<PtrId, Option<Bytes>>,
    /// Pointers whose write lock the transaction holds.
    pub locks: BTreeSet<PtrId>,
    /// When the transaction finished, in physical milliseconds.
    pub finished_ms: Option<u64>,
}

/// A transaction.
#[derive(Debug)]
pub struct Txn {
    pub id: TxnId,
    /// The snapshot it reads; moves forward only when a locking read refreshes it
    /// ([`crate::engine::Engine::lock_for_update`]).
    read_version: AtomicU64,
    pub read_only: bool,
    pub trace_id: Arc<str>,
    /// Span id of the transaction's root span (its `begin` request), when traced.
    pub root_span: Option<Arc<str>>,
    pub started_ms: u64,
    pub timeout_ms: u64,
    pub inner: Mutex<TxnInner>,
    /// For the node: which replication groups (by bit) a read barrier was taken on for this
    /// snapshot, and the snapshot they were taken for (see [`Txn::has_barrier`]).
    barriers: Mutex<(u64, u64)>,
}

impl Txn {
    /// Whether a read barrier on `group` was taken for the snapshot the txn reads now.
    pub fn has_barrier(&self, group: u32) -> bool {
        let (at, groups) = *self.barriers.lock();
        group < 64 && at == self.read_version() && groups & (1 << group) != 0
    }

    /// A read barrier on `group` was taken for snapshot `at`; one for an older snapshot no
    /// longer counts.
    pub fn record_barrier(&self, group: u32, at: u64) {
        if group >= 64 {
            return;
        }
        let mut barriers = self.barriers.lock();
        if barriers.0 != at {
            *barriers = (at, 0);
        }
        barriers.1 |= 1 << group;
    }

    /// The snapshot the transaction reads.
    pub fn read_version(&self) -> u64 {
        self.read_version.load(Ordering::Acquire)
    }

    /// Moves the snapshot forward to `v` (never back).
    pub(crate) fn advance_read_version(&self, v: u64) {
        self.read_version.fetch_max(v, Ordering::AcqRel);
    }

    pub fn new(
        id: TxnId,
        read_version: u64,
        read_only: bool,
        trace_id: Arc<str>,
        now_ms: u64,
        timeout_ms: u64,
    ) -> Self {
        Self {
            id,
            read_version: AtomicU64::new(read_version),
            barriers: Mutex::new((0, 0)),
            read_only,
            trace_id,
            root_span: None,
            started_ms: now_ms,
            timeout_ms,
            inner: Mutex::new(TxnInner {
                phase: Phase::Active,
                deadline_ms: now_ms.saturating_add(timeout_ms),
                reads: BTreeMap::new(),
                writes: BTreeMap::new(),
                locks: BTreeSet::new(),
                finished_ms: None,
            }),
        }
    }

    pub fn phase(&self) -> Phase {
        self.inner.lock().phase.clone()
    }
}

/// The active transactions, and the finished ones for a while (so that a late commit,
/// abort or status request gets a precise answer instead of "unknown").
#[derive(Debug, Default)]
pub struct TxnTable {
    active: DashMap<TxnId, Arc<Txn>>,
    finished: DashMap<TxnId, Arc<Txn>>,
    finished_order: SegQueue<(TxnId, u64)>,
}

impl TxnTable {
    pub fn insert(&self, txn: Arc<Txn>) {
        self.active.insert(txn.id.clone(), txn);
    }

    pub fn get(&self, id: &str) -> Option<Arc<Txn>> {
        self.active.get(id).or_else(|| self.finished.get(id)).map(|e| e.value().clone())
    }

    /// Forgets an active transaction that never really began.
    pub fn discard(&self, id: &str) {
        self.active.remove(id);
    }

    /// Moves a transaction from active to finished.
    pub fn finish(&self, txn: &Arc<Txn>, now_ms: u64) {
        if self.active.remove(&txn.id).is_some() {
            self.finished.insert(txn.id.clone(), txn.clone());
            self.finished_order.push((txn.id.clone(), now_ms));
        }
    }

    /// Forgets finished transactions older than `keep_ms`, or beyond `max` of them.
    pub fn forget_finished(&self, now_ms: u64, keep_ms: u64, max: usize) {
        while let Some((id, at)) = self.finished_order.pop() {
            if now_ms.saturating_sub(at) < keep_ms && self.finished_order.len() < max {
                // Too young: put it back at the end and stop (order is by finish time).
                self.finished_order.push((id, at));
                // The push moved it behind younger entries; that only delays its removal.
                break;
            }
            self.finished.remove(&id);
        }
    }

    pub fn active(&self) -> Vec<Arc<Txn>> {
        self.active.iter().map(|e| e.value().clone()).collect()
    }

    pub fn active_count(&self) -> usize {
        self.active.len()
    }
}
