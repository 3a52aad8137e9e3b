//! A store that fails on purpose: wraps any [`VersionStore`] and injects the failures a
//! real disk produces, so tests can show what the node answers when they happen.
//!
//! Faults are armed from the test and fire on the next matching call:
//! - [`Fault::WriteFails`]: the commit batch is refused, nothing of it is written;
//! - [`Fault::SyncFails`]: the batch is written and handed to the OS, then the fsync
//!   reports an error. The bytes are in the page cache, so a reopened store will most likely
//!   show them: the outcome is unknown, never "aborted" (PostgreSQL's fsyncgate).
//! - [`Fault::TornBatch`]: only the first `keep` commits of a group are written, then the
//!   write fails, as a crash in the middle of a non-atomic write would leave it.
//! - [`Fault::LoseResolution`]: a group's commits across partitions are durable (versions,
//!   intents and committed records), but the resolution that retires their intents is
//!   lost, as a crash right after the commit point would lose it. Recovery must resolve
//!   them by their records.

use std::collections::VecDeque;

use parking_lot::Mutex;

use super::{CommitRecord, VersionStore};
use crate::engine::cold::ColdStore;
use crate::engine::gc::{DiskPrune, Pin};
use crate::engine::{StorageError, VersionRec};

/// One injected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    WriteFails,
    SyncFails,
    TornBatch { keep: usize },
    LoseResolution,
}

/// A [`VersionStore`] with armed faults in front of a real one.
pub struct FaultyStore<S> {
    inner: S,
    armed: Mutex<VecDeque<Fault>>,
    /// A sync fault armed by the last batch, fired by the next `persist(true)`.
    sync_pending: Mutex<bool>,
    /// A resolution was lost (see [`Fault::LoseResolution`]): none is retired from then on.
    lose_resolution: Mutex<bool>,
    /// Hand writes to the OS instead of fsyncing them: a simulation models process crashes
    /// (the page cache survives) and needs thousands of runs, not a disk's latency.
    skip_fsync: bool,
}

impl<S: VersionStore> FaultyStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            armed: Mutex::new(VecDeque::new()),
            sync_pending: Mutex::new(false),
            lose_resolution: Mutex::new(false),
            skip_fsync: false,
        }
    }

    /// The same, but never really fsyncing (see `skip_fsync`); faults still fire.
    pub fn without_fsync(inner: S) -> Self {
        Self { skip_fsync: true, ..Self::new(inner) }
    }

    /// Fires `fault` on the next commit batch (faults fire in the order they were armed).
    pub fn arm(&self, fault: Fault) {
        self.armed.lock().push_back(fault);
    }

    fn injected(what: &str) -> StorageError {
        StorageError::Backend { op: "an injected fault", detail: what.to_string() }
    }
}

impl<S: VersionStore> ColdStore for FaultyStore<S> {
    fn version_at(&self, ptr: &str, at: u64) -> Result<Option<VersionRec>, StorageError> {
        self.inner.version_at(ptr, at)
    }
}

impl<S: VersionStore> VersionStore for FaultyStore<S> {
    fn write_batch(&self, group: &[CommitRecord]) -> Result<(), StorageError> {
        match self.armed.lock().pop_front() {
            None => self.inner.write_batch(group),
            Some(Fault::WriteFails) => Err(Self::injected("the batch write failed")),
            Some(Fault::TornBatch { keep }) => {
                self.inner.write_batch(&group[..keep.min(group.len())])?;
                Err(Self::injected("the batch was torn"))
            }
            Some(Fault::SyncFails) => {
                self.inner.write_batch(group)?;
                *self.sync_pending.lock() = true;
                Ok(())
            }
            Some(Fault::LoseResolution) => {
                *self.lose_resolution.lock() = true;
                self.inner.write_batch(group)
            }
        }
    }

    fn retire_resolved(&self) -> Result<(), StorageError> {
        // Once a resolution is "lost" (the process died before it reached the disk),
        // nothing is retired any more, as nothing would be after such a death.
        if *self.lose_resolution.lock() {
            return Ok(());
        }
        self.inner.retire_resolved()
    }

    fn persist(&self, sync: bool) -> Result<(), StorageError> {
        if sync && std::mem::take(&mut *self.sync_pending.lock()) {
            // The write reached the OS; only the fsync "failed".
            self.inner.persist(false)?;
            return Err(StorageError::SyncFailed { detail: "injected: fdatasync returned EIO".into() });
        }
        self.inner.persist(sync && !self.skip_fsync)
    }

    fn history(
        &self,
        ptr: &str,
        after: Option<u64>,
        upto: u64,
        limit: usize,
    ) -> Result<(Vec<VersionRec>, bool), StorageError> {
        self.inner.history(ptr, after, upto, limit)
    }

    fn ever_written(&self, ptr: &str) -> Result<bool, StorageError> {
        self.inner.ever_written(ptr)
    }

    fn approximate_versions(&self) -> usize {
        self.inner.approximate_versions()
    }

    fn disk_bytes(&self) -> u64 {
        self.inner.disk_bytes()
    }

    fn save_horizon(&self, horizon: u64) -> Result<(), StorageError> {
        self.inner.save_horizon(horizon)
    }

    fn save_pin(&self, pin: &Pin) -> Result<(), StorageError> {
        self.inner.save_pin(pin)
    }

    fn delete_pin(&self, id: &str) -> Result<(), StorageError> {
        self.inner.delete_pin(id)
    }

    fn prune(&self, ops: &[DiskPrune]) -> Result<(u64, u64), StorageError> {
        self.inner.prune(ops)
    }
}
