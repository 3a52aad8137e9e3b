//! The horizon: the GC watermark and what holds it, pins, memory pressure and eviction.

use std::sync::atomic::Ordering;

use super::error::EngineError;
use super::events::EventKind;
use super::gc::{HeldBy, PartitionGc, Pin, Watermark};
use super::hlc;
use super::pressure::Pressure;
use super::{Engine, Partition};

impl Engine {
    /// The oldest version a read may ask for.
    pub fn horizon(&self) -> u64 {
        self.horizon.load(Ordering::SeqCst)
    }

    /// Refuses a read at `at` below the horizon.
    pub fn check_horizon(&self, at: u64) -> Result<(), EngineError> {
        let horizon = self.horizon();
        if at < horizon { Err(EngineError::Gone { requested: at, horizon }) } else { Ok(()) }
    }

    /// Where the watermark is now, and what holds it there: this member's own
    /// ([`Engine::local_watermark`]), capped on a cluster by the cluster's horizon.
    pub fn watermark(&self) -> Watermark {
        let mut w = self.uncapped_watermark();
        let cap = self.cluster_horizon();
        if cap < w.version {
            w = Watermark { version: cap, held_by: HeldBy::Cluster };
        }
        self.floored(w)
    }

    /// The watermark by what this member alone knows: retention, its txns and the pins.
    /// The leader proposes it as the cluster's horizon.
    pub fn local_watermark(&self) -> Watermark {
        self.floored(self.uncapped_watermark())
    }

    /// This member's own watermark ([`Engine::local_watermark`]) as a promise, for the
    /// cluster's: from now on this member begins no txn below it (see [`Engine::begin`]), so
    /// a horizon raised to the minimum of every member's promise prunes nothing a live
    /// snapshot anywhere can read. A txn registered between the two looks either is seen by
    /// the second or sees the raised promise and is refused, as with [`Engine::raise_horizon`].
    pub fn promise_watermark(&self) -> Watermark {
        let w = self.local_watermark();
        self.promised.fetch_max(w.version, Ordering::SeqCst);
        let again = self.local_watermark();
        // Lower: a snapshot came in meanwhile. The promise stays where it was (cautious).
        if again.version < w.version { again } else { w }
    }

    /// The oldest snapshot a txn may begin at: the horizon, or on a cluster member, if
    /// higher, its promise to the cluster or the cluster's horizon (which other replicas
    /// may already have pruned to).
    pub(super) fn begin_floor(&self) -> u64 {
        let cluster = match self.cluster_horizon() {
            u64::MAX => 0,
            h => h,
        };
        self.horizon.load(Ordering::SeqCst).max(self.promised.load(Ordering::SeqCst)).max(cluster)
    }

    /// The cluster's GC horizon, as this member's log has it (`u64::MAX` on a node of its
    /// own).
    pub fn cluster_horizon(&self) -> u64 {
        self.cluster_horizon.load(Ordering::SeqCst)
    }

    /// Lets this member's GC go as far as `horizon` (applied from the cluster's log).
    pub fn follow_cluster_horizon(&self, horizon: u64) {
        self.cluster_horizon.fetch_max(horizon, Ordering::SeqCst);
    }

    fn uncapped_watermark(&self) -> Watermark {
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
        w
    }

    /// Never back; and whatever holds the watermark, it cannot hold it below what is
    /// already gone.
    fn floored(&self, mut w: Watermark) -> Watermark {
        let horizon = self.horizon();
        if w.version <= horizon {
            w.version = horizon;
            if matches!(w.held_by, HeldBy::Retention | HeldBy::Latest) {
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

    /// The live pin `id`.
    pub fn pin_of(&self, id: &str) -> Result<Pin, EngineError> {
        let now = self.hlc.physical_millis();
        self.pins
            .get(id)
            .filter(|p| p.expires_ms > now)
            .ok_or_else(|| EngineError::PinNotFound(id.to_string()))
    }

    /// Holds the watermark to a pin the cluster's log recorded.
    pub fn adopt_pin(&self, pin: Pin) {
        self.pins.insert(pin);
    }

    /// Lets go of a pin the cluster's log removed.
    pub fn drop_pin(&self, id: &str) {
        self.pins.remove(id);
    }

    /// Holds the watermark to exactly `pins` (a snapshot of the cluster's state).
    pub fn adopt_pins(&self, pins: Vec<Pin>) {
        self.pins.replace(pins);
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
}
