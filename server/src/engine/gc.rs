//! Garbage collection: the watermark below which history may go, the horizon below which
//! reads are refused, pins that hold history in place, and what one pass over a partition
//! prunes.
//!
//! The **watermark** is the minimum of `now − retention`, the read version of the oldest
//! active transaction, the oldest live pin, and the last version issued (so a read of the
//! latest state is never refused). It never moves back. Before anything is pruned the
//! engine raises the **horizon** to it; from then on reads below the horizon are refused
//! (`Gone`), so no read ever sees a half-pruned past. A pass then keeps, for every pointer,
//! the newest version at or below the watermark and everything above it; a pointer whose
//! latest version is a tombstone at or below the watermark disappears.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use super::{PtrId, TxnId};

/// A pin: history at `version` is kept until `expires_ms` (physical milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pin {
    pub id: String,
    pub version: u64,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub note: String,
}

/// The pins, by id.
#[derive(Debug, Default)]
pub struct PinTable {
    pins: Mutex<BTreeMap<String, Pin>>,
}

impl PinTable {
    pub fn insert(&self, pin: Pin) {
        self.pins.lock().insert(pin.id.clone(), pin);
    }

    pub fn remove(&self, id: &str) -> Option<Pin> {
        self.pins.lock().remove(id)
    }

    /// Replaces every pin with `pins` (a replicated table installed from a snapshot).
    pub fn replace(&self, pins: Vec<Pin>) {
        *self.pins.lock() = pins.into_iter().map(|p| (p.id.clone(), p)).collect();
    }

    pub fn get(&self, id: &str) -> Option<Pin> {
        self.pins.lock().get(id).cloned()
    }

    /// Every pin, oldest version first.
    pub fn list(&self) -> Vec<Pin> {
        let mut v: Vec<Pin> = self.pins.lock().values().cloned().collect();
        v.sort_by_key(|p| (p.version, p.id.clone()));
        v
    }

    /// Removes and returns the pins expired at `now_ms`.
    pub fn expire(&self, now_ms: u64) -> Vec<Pin> {
        let mut pins = self.pins.lock();
        let gone: Vec<String> =
            pins.values().filter(|p| p.expires_ms <= now_ms).map(|p| p.id.clone()).collect();
        gone.into_iter().filter_map(|id| pins.remove(&id)).collect()
    }

    /// The live pin with the oldest version.
    pub fn oldest(&self, now_ms: u64) -> Option<Pin> {
        self.pins.lock().values().filter(|p| p.expires_ms > now_ms).min_by_key(|p| p.version).cloned()
    }
}

/// What holds the watermark where it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HeldBy {
    /// The retention period (`now − retention`).
    Retention,
    /// The newest version issued: nothing newer exists to keep.
    Latest,
    /// An active transaction's snapshot.
    Txn(TxnId),
    /// A pin.
    Pin(String),
    /// The horizon already reached (the watermark never moves back).
    Horizon,
    /// The cluster's horizon: the leader has not yet let the members prune further.
    Cluster,
}

/// The watermark and why it is there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Watermark {
    pub version: u64,
    pub held_by: HeldBy,
}

/// What cold storage must delete for one pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskPrune {
    /// Every version below `version`.
    Below { ptr: PtrId, version: u64 },
    /// Every version below the newest one at or below `at`.
    KeepNewestAtOrBelow { ptr: PtrId, at: u64 },
    /// Every version at or below `version` (the pointer is gone).
    Through { ptr: PtrId, version: u64 },
}

/// What a pass over one partition did in memory, and what it leaves for cold storage.
#[derive(Debug, Default)]
pub struct PartitionGc {
    /// Versions dropped from memory.
    pub versions: u64,
    /// Bytes of values dropped from memory.
    pub bytes: u64,
    /// Pointers removed entirely (a tombstone below the watermark).
    pub removed: u64,
    pub disk: Vec<DiskPrune>,
}
