//! Garbage collection and pins: the pass that prunes history below the watermark, memory
//! pressure, and the views of both.

use std::sync::Arc;

use super::Node;
use crate::engine::EngineError;
use crate::engine::StorageError;
use crate::engine::gc::{Pin, Watermark};

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

impl Node {
    /// Starts the background task that garbage-collects history below the watermark.
    pub fn spawn_gc(self: &Arc<Self>) {
        crate::every::spawn_every(self, self.config.gc_every, |node: Arc<Node>| async move {
            node.check_pressure();
            match tokio::task::spawn_blocking(move || node.gc_pass()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "garbage collection pass failed; retrying"),
                Err(e) => tracing::error!(error = %e, "garbage collection pass panicked"),
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
        // The leader timeline goes behind the horizon like versions.
        if let Some(cluster) = self.cluster() {
            cluster.timeline().prune(horizon);
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
    pub fn pin(&self, at: u64, ttl_ms: u64, note: String) -> Result<Pin, EngineError> {
        let id = format!("{:016x}", self.engine.now_version());
        let pin = self.engine.pin(id, at, ttl_ms, note)?;
        if let Err(e) = self.store.save_pin(&pin) {
            let _ = self.engine.unpin(&pin.id);
            return Err(EngineError::Storage(e));
        }
        Ok(pin)
    }

    /// Removes a pin.
    pub fn unpin(&self, id: &str) -> Result<Pin, EngineError> {
        let pin = self.engine.unpin(id)?;
        self.store.delete_pin(id).map_err(EngineError::Storage)?;
        Ok(pin)
    }

    /// Where the watermark is now, and what holds it there.
    pub fn watermark(&self) -> Watermark {
        self.engine.watermark()
    }

    /// How far the cluster lets this member prune (`u64::MAX` on a node of its own).
    pub fn cluster_horizon(&self) -> u64 {
        self.engine.cluster_horizon()
    }

    /// The oldest version a read may ask for.
    pub fn horizon(&self) -> u64 {
        self.engine.horizon()
    }

    /// History kept behind now, unless a txn or pin holds more.
    pub fn retention_ms(&self) -> u64 {
        self.engine.config().retention_ms
    }

    /// The live pin `id`.
    pub fn pin_of(&self, id: &str) -> Result<Pin, EngineError> {
        self.engine.pin_of(id)
    }

    /// Live pins, oldest version first.
    pub fn pins(&self) -> Vec<Pin> {
        self.engine.pins()
    }
}
