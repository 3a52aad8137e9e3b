//! Durable storage of committed versions on fjall.
//!
//! The public surface is narrow: [`Store::open`] (which also recovers), [`Store::write_group`]
//! (a group of commits as one atomic batch, then one fsync), the cold reads the engine needs
//! ([`crate::engine::cold::ColdStore`]) and [`Store::history`]. Every committed version is
//! written here before it becomes visible in memory, so fjall always holds the full history
//! and memory is a cache of the newest versions.
//!
//! Layout: keyspace `versions` (see [`codec`]) and keyspace `meta`, which holds the partition
//! count of the data directory, the GC horizon and the pins. A commit is one atomic batch of
//! its versions (each names its transaction), so no separate commit record is needed.

pub mod codec;
pub mod group_commit;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::engine::cold::ColdStore;
use crate::engine::gc::{DiskPrune, Pin};
use crate::engine::partition::partition_of;
use crate::engine::{PtrId, RecoveredPointer, StorageError, TxnId, VersionRec};

pub mod fault;

const META_PARTITIONS: &[u8] = b"partition_count";
const META_HORIZON: &[u8] = b"gc_horizon";
const META_PIN: &[u8] = b"pin/";
/// Earlier versions wrote one `txn/<id>` record per commit and never read it back.
const META_OLD_TXN: &[u8] = b"txn/";
const JOURNAL_LIMIT: u64 = 128 * 1024 * 1024;
const MEMTABLE_LIMIT: u64 = 16 * 1024 * 1024;
const BLOCK_CACHE: u64 = 32 * 1024 * 1024;

/// When a commit is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// After the commit is fsynced (concurrent commits share one fsync).
    Sync,
    /// As soon as the commit is in the OS page cache; fsynced in the background every 100 ms.
    /// A process crash loses nothing acknowledged; a power loss may lose the last 100 ms.
    Async,
}

impl From<fjall::Error> for StorageError {
    fn from(e: fjall::Error) -> Self {
        StorageError::backend("fjall", e)
    }
}

/// One transaction's commit, as written to disk.
#[derive(Debug, Clone)]
pub struct CommitRecord {
    pub txn: TxnId,
    pub trace_id: Arc<str>,
    pub commit_version: u64,
    pub writes: Vec<(PtrId, Option<Bytes>)>,
    /// Set when the writes span partitions: with its versions, the commit writes an intent on
    /// each partition and a committed record on the primary's (its commit point), retired
    /// later (see [`VersionStore::retire_resolved`]).
    pub primary: Option<PtrId>,
}

impl CommitRecord {
    /// The record of a commit that passed validation.
    pub fn of(prepared: &crate::engine::PreparedCommit) -> Self {
        Self {
            txn: prepared.txn.id.clone(),
            trace_id: prepared.txn.trace_id.clone(),
            commit_version: prepared.commit_version,
            writes: prepared.writes.clone(),
            primary: prepared.primary.clone(),
        }
    }
}

/// What recovery found.
#[derive(Debug)]
pub struct Recovered {
    pub partitions: u32,
    /// Txns found prepared at open whose record said committed: their intents became
    /// versions.
    pub resolved_committed: u64,
    /// Txns found prepared at open without a committed record: their intents were dropped.
    pub resolved_aborted: u64,
    pub pointers: Vec<RecoveredPointer>,
    pub max_version: u64,
    pub versions: u64,
}

/// The fjall store.
pub struct Store {
    db: Database,
    versions: Keyspace,
    meta: Keyspace,
    intents: Keyspace,
    txns: Keyspace,
    partitions: u32,
}

impl Store {
    /// The fjall database under the store: a replicated node keeps its Raft log in it, so
    /// one fsync covers the log and the versions its applies wrote.
    pub fn database(&self) -> fjall::Database {
        self.db.clone()
    }

    /// Opens (or creates) the store in `dir` and recovers the newest `hot` versions of every
    /// pointer. `partitions` is the count asked for; a new directory stores it, an existing
    /// one must match it (`None`: take what is stored, or 64 for a new directory).
    pub fn open(dir: &Path, partitions: Option<u32>, hot: usize) -> Result<(Store, Recovered), StorageError> {
        // Bounded memory: fjall's defaults (64 MiB memtables, 512 MiB of journals before a
        // forced flush) let sealed memtables pile up to hundreds of MiB under steady writes.
        let db = Database::builder(dir)
            .manual_journal_persist(true)
            .max_journaling_size(JOURNAL_LIMIT)
            .cache_size(BLOCK_CACHE)
            .open()?;
        let versions =
            db.keyspace("versions", || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_LIMIT))?;
        let meta =
            db.keyspace("meta", || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_LIMIT / 2))?;
        Self::drop_txn_records(&db, &meta)?;
        let stored = match meta.get(META_PARTITIONS)? {
            Some(v) => Some(u32::from_be_bytes(
                v.as_ref().try_into().map_err(|_| StorageError::Corrupt("partition count".into()))?,
            )),
            None => None,
        };
        let partitions = match (stored, partitions) {
            (Some(s), Some(r)) if s != r => {
                return Err(StorageError::PartitionMismatch { stored: s, requested: r });
            }
            (Some(s), _) => s,
            (None, r) => {
                let n = r.unwrap_or(64);
                meta.insert(META_PARTITIONS, n.to_be_bytes())?;
                db.persist(PersistMode::SyncAll)?;
                n
            }
        };
        let intents = db
            .keyspace("intents", || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_LIMIT / 2))?;
        let txns =
            db.keyspace("txns", || KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_LIMIT / 4))?;
        let store = Store { db, versions, meta, intents, txns, partitions };
        let (committed, aborted) = store.resolve_prepared()?;
        let mut recovered = store.recover(partitions, hot)?;
        recovered.resolved_committed = committed;
        recovered.resolved_aborted = aborted;
        Ok((store, recovered))
    }

    /// Deletes the per-commit `txn/<id>` records earlier versions wrote: nothing read them
    /// and nothing collected them, so they grew the disk forever.
    fn drop_txn_records(db: &Database, meta: &Keyspace) -> Result<(), StorageError> {
        let mut total = 0u64;
        loop {
            let keys: Vec<_> =
                meta.prefix(META_OLD_TXN).take(10_000).map(|kv| kv.key()).collect::<Result<_, _>>()?;
            if keys.is_empty() {
                break;
            }
            let mut batch = db.batch();
            total += keys.len() as u64;
            for k in keys {
                batch.remove(meta, k);
            }
            batch.commit()?;
        }
        if total > 0 {
            db.persist(PersistMode::SyncAll)?;
            tracing::info!(records = total, "dropped per-commit txn records of an earlier version");
        }
        Ok(())
    }

    /// Resolves the txns a crash left prepared, by their records: the provisional versions
    /// of a txn whose primary recorded it committed stay; those of any other txn are removed
    /// (its coordinator, this node, is gone, so it can no longer commit). The intents and
    /// records go. Returns the txns committed and aborted.
    fn resolve_prepared(&self) -> Result<(u64, u64), StorageError> {
        let mut fate: std::collections::HashMap<String, Option<u64>> = Default::default();
        let mut batch = self.db.batch();
        for item in self.txns.iter() {
            let (k, v) = item.into_inner()?;
            let (txn, version) = codec::decode_record(&k, &v)
                .ok_or_else(|| StorageError::Corrupt(format!("txn record {k:?}")))?;
            fate.insert(txn, version);
            batch.remove(&self.txns, k);
        }
        let (mut committed, mut aborted) =
            (std::collections::HashSet::new(), std::collections::HashSet::new());
        for item in self.intents.iter() {
            let (k, v) = item.into_inner()?;
            let (_, txn, ptr) =
                codec::decode_intent_key(&k).ok_or_else(|| StorageError::Corrupt(format!("intent {k:?}")))?;
            let at = v
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| StorageError::Corrupt(format!("intent {k:?}")))?;
            if fate.get(&txn).copied().flatten() == Some(at) {
                committed.insert(txn);
            } else {
                batch.remove(&self.versions, codec::version_key(&ptr, at));
                aborted.insert(txn);
            }
            batch.remove(&self.intents, k);
        }
        if batch.is_empty() {
            return Ok((0, 0));
        }
        batch.commit()?;
        self.db.persist(PersistMode::SyncAll)?;
        tracing::info!(
            committed = committed.len(),
            aborted = aborted.len(),
            "resolved transactions left prepared by a crash"
        );
        Ok((committed.len() as u64, aborted.len() as u64))
    }

    /// Scans every version once, keeping the newest `hot` of each pointer.
    fn recover(&self, partitions: u32, hot: usize) -> Result<Recovered, StorageError> {
        let mut pointers = Vec::new();
        let mut max_version = 0;
        let mut count = 0u64;
        let mut current: Option<(String, VecDeque<VersionRec>, bool)> = None;
        for item in self.versions.iter() {
            let (k, v) = item.into_inner()?;
            let (ptr, version) =
                codec::decode_key(&k).ok_or_else(|| StorageError::Corrupt(format!("key {k:?}")))?;
            let rec = codec::decode_value(version, &v)
                .ok_or_else(|| StorageError::Corrupt(format!("value of {ptr:?}@{version}")))?;
            max_version = max_version.max(version);
            count += 1;
            match &mut current {
                Some((p, chain, cold)) if *p == ptr => {
                    chain.push_back(rec);
                    if chain.len() > hot.max(1) {
                        chain.pop_front();
                        *cold = true;
                    }
                }
                _ => {
                    if let Some((p, chain, cold)) = current.take() {
                        pointers.push(RecoveredPointer {
                            ptr: p.into(),
                            hot: chain.into(),
                            cold_below: cold,
                        });
                    }
                    current = Some((ptr, VecDeque::from([rec]), false));
                }
            }
        }
        if let Some((p, chain, cold)) = current {
            pointers.push(RecoveredPointer { ptr: p.into(), hot: chain.into(), cold_below: cold });
        }
        Ok(Recovered {
            partitions,
            resolved_committed: 0,
            resolved_aborted: 0,
            pointers,
            max_version,
            versions: count,
        })
    }

    /// The GC horizon and the pins, as last saved.
    pub fn gc_state(&self) -> Result<(u64, Vec<Pin>), StorageError> {
        let horizon = match self.meta.get(META_HORIZON)? {
            Some(v) => u64::from_be_bytes(
                v.as_ref().try_into().map_err(|_| StorageError::Corrupt("gc horizon".into()))?,
            ),
            None => 0,
        };
        let mut pins = Vec::new();
        for item in self.meta.prefix(META_PIN) {
            let (k, v) = item.into_inner()?;
            let id = String::from_utf8_lossy(&k[META_PIN.len()..]).into_owned();
            let corrupt = || StorageError::Corrupt(format!("pin {id:?}"));
            let field = |r: std::ops::Range<usize>| -> Result<u64, StorageError> {
                Ok(u64::from_be_bytes(v.get(r).and_then(|b| b.try_into().ok()).ok_or_else(corrupt)?))
            };
            pins.push(Pin {
                version: field(0..8)?,
                created_ms: field(8..16)?,
                expires_ms: field(16..24)?,
                note: String::from_utf8_lossy(v.get(24..).unwrap_or_default()).into_owned(),
                id,
            });
        }
        Ok((horizon, pins))
    }
}

/// What a node needs of its store. [`Store`] (fjall) is the real one; [`fault::FaultyStore`]
/// wraps any store with injected failures, so that tests can show what the node does when
/// a write or an fsync fails.
pub trait VersionStore: ColdStore {
    /// Writes a group of commits as one atomic batch. It is not durable until [`Self::persist`].
    fn write_batch(&self, group: &[CommitRecord]) -> Result<(), StorageError>;
    /// Retires the intents and records of every commit written so far; only called once all
    /// of them are durable. A crash before it lands is resolved at the next open, by the
    /// records.
    fn retire_resolved(&self) -> Result<(), StorageError>;
    /// Makes everything written so far durable (`sync`: fsync), or only hands it to the OS.
    fn persist(&self, sync: bool) -> Result<(), StorageError>;
    /// Versions of `ptr` strictly after `after` and at or below `upto`, ascending, at most
    /// `limit`; the flag says whether more follow.
    fn history(
        &self,
        ptr: &str,
        after: Option<u64>,
        upto: u64,
        limit: usize,
    ) -> Result<(Vec<VersionRec>, bool), StorageError>;
    /// Whether `ptr` was ever written (any version at all).
    fn ever_written(&self, ptr: &str) -> Result<bool, StorageError>;
    /// Versions stored, approximately.
    fn approximate_versions(&self) -> usize;
    /// Bytes on disk.
    fn disk_bytes(&self) -> u64;
    /// Saves the GC horizon, durably, before anything below it is pruned.
    fn save_horizon(&self, horizon: u64) -> Result<(), StorageError>;
    /// Saves a pin, durably.
    fn save_pin(&self, pin: &Pin) -> Result<(), StorageError>;
    /// Forgets a pin.
    fn delete_pin(&self, id: &str) -> Result<(), StorageError>;
    /// Deletes what a GC pass pruned; returns the versions and bytes deleted.
    fn prune(&self, ops: &[DiskPrune]) -> Result<(u64, u64), StorageError>;
}

impl VersionStore for Store {
    /// Writes a group of commits as one atomic batch: each commit's versions and, for a
    /// commit across partitions, an intent per pointer on its partition (naming the
    /// provisional version) and the committed record on the primary's.
    fn write_batch(&self, group: &[CommitRecord]) -> Result<(), StorageError> {
        let mut batch = self.db.batch();
        for rec in group {
            for (ptr, value) in &rec.writes {
                let value = codec::encode_value(&rec.txn, &rec.trace_id, value.as_deref());
                batch.insert(&self.versions, codec::version_key(ptr, rec.commit_version), value);
                if rec.primary.is_some() {
                    let key = codec::intent_key(partition_of(ptr, self.partitions), &rec.txn, ptr);
                    batch.insert(&self.intents, key, rec.commit_version.to_be_bytes());
                }
            }
            if let Some(primary) = &rec.primary {
                let key = codec::record_key(partition_of(primary, self.partitions), &rec.txn);
                batch.insert(&self.txns, key, codec::committed_record(rec.commit_version));
            }
        }
        batch.commit().map_err(|e| StorageError::backend("writing a commit batch", e))
    }

    /// Retires every intent and record written so far, at once: the caller (the
    /// committer, their only writer) knows that every commit that wrote them is durable, so
    /// their versions stand without them. One journal entry per keyspace instead of a
    /// delete per key. Not fsynced: until it is, recovery resolves them again by the
    /// records, to the same result.
    fn retire_resolved(&self) -> Result<(), StorageError> {
        self.intents.clear().map_err(|e| StorageError::backend("retiring intents", e))?;
        self.txns.clear().map_err(|e| StorageError::backend("retiring txn records", e))
    }

    fn persist(&self, sync: bool) -> Result<(), StorageError> {
        if sync {
            self.db
                .persist(PersistMode::SyncData)
                .map_err(|e| StorageError::SyncFailed { detail: e.to_string() })
        } else {
            self.db.persist(PersistMode::Buffer).map_err(|e| StorageError::backend("writing the journal", e))
        }
    }

    /// Versions of `ptr` strictly after `after` and at or below `upto`, ascending, at most
    /// `limit`; the flag says whether more follow.
    fn history(
        &self,
        ptr: &str,
        after: Option<u64>,
        upto: u64,
        limit: usize,
    ) -> Result<(Vec<VersionRec>, bool), StorageError> {
        let start = match after {
            Some(a) if a == u64::MAX => return Ok((Vec::new(), false)),
            Some(a) => a + 1,
            None => 0,
        };
        if start > upto {
            return Ok((Vec::new(), false));
        }
        let mut out = Vec::new();
        for item in self.versions.range(codec::version_key(ptr, start)..=codec::version_key(ptr, upto)) {
            let (k, v) = item.into_inner()?;
            let (_, version) =
                codec::decode_key(&k).ok_or_else(|| StorageError::Corrupt(format!("key {k:?}")))?;
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(
                codec::decode_value(version, &v)
                    .ok_or_else(|| StorageError::Corrupt(format!("value of {ptr:?}@{version}")))?,
            );
        }
        Ok((out, false))
    }

    /// Whether `ptr` was ever written (any version at all).
    fn ever_written(&self, ptr: &str) -> Result<bool, StorageError> {
        Ok(self.versions.prefix(codec::pointer_prefix(ptr)).next().is_some())
    }

    /// Versions stored, approximately (fjall's estimate).
    fn approximate_versions(&self) -> usize {
        self.versions.approximate_len()
    }

    /// Saves the GC horizon, fsynced: nothing below it is pruned before it is durable, so
    /// after a crash reads below it are still refused rather than answered from half-pruned
    /// history.
    fn save_horizon(&self, horizon: u64) -> Result<(), StorageError> {
        self.meta.insert(META_HORIZON, horizon.to_be_bytes())?;
        self.db.persist(PersistMode::SyncData)?;
        Ok(())
    }

    /// Saves a pin, fsynced.
    fn save_pin(&self, pin: &Pin) -> Result<(), StorageError> {
        let mut value = Vec::with_capacity(24 + pin.note.len());
        value.extend_from_slice(&pin.version.to_be_bytes());
        value.extend_from_slice(&pin.created_ms.to_be_bytes());
        value.extend_from_slice(&pin.expires_ms.to_be_bytes());
        value.extend_from_slice(pin.note.as_bytes());
        self.meta.insert([META_PIN, pin.id.as_bytes()].concat(), value)?;
        self.db.persist(PersistMode::SyncData)?;
        Ok(())
    }

    /// Forgets a pin.
    fn delete_pin(&self, id: &str) -> Result<(), StorageError> {
        self.meta.remove([META_PIN, id.as_bytes()].concat())?;
        self.db.persist(PersistMode::SyncData)?;
        Ok(())
    }

    /// Deletes what a GC pass pruned, as one batch. Returns the versions and the bytes
    /// (keys and values) deleted. Only versions no readable snapshot sees are named, and
    /// commits only add newer versions, so this never races with a commit.
    fn prune(&self, ops: &[DiskPrune]) -> Result<(u64, u64), StorageError> {
        let mut batch = self.db.batch();
        let (mut versions, mut bytes) = (0u64, 0u64);
        for op in ops {
            let (ptr, range, keep_last) = match op {
                DiskPrune::Below { ptr, version } if *version == 0 => (ptr, None, false),
                DiskPrune::Below { ptr, version } => (ptr, Some(version - 1), false),
                DiskPrune::KeepNewestAtOrBelow { ptr, at } => (ptr, Some(*at), true),
                DiskPrune::Through { ptr, version } => (ptr, Some(*version), false),
            };
            let Some(upto) = range else { continue };
            let mut doomed = Vec::new();
            for item in self.versions.range(codec::version_key(ptr, 0)..=codec::version_key(ptr, upto)) {
                let (k, v) = item.into_inner()?;
                doomed.push((k, v.len()));
            }
            if keep_last {
                doomed.pop();
            }
            for (k, vlen) in doomed {
                bytes += (k.len() + vlen) as u64;
                versions += 1;
                batch.remove(&self.versions, k);
            }
        }
        if versions > 0 {
            batch.commit()?;
            self.db.persist(PersistMode::Buffer)?;
        }
        Ok((versions, bytes))
    }

    /// Bytes on disk.
    fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }
}

/// For tests and benchmarks, which write commits without a committer.
impl Store {
    /// Writes a group of commits as one atomic batch; with `sync`, fsyncs it before returning.
    pub fn write_group(&self, group: &[CommitRecord], sync: bool) -> Result<(), StorageError> {
        self.write_batch(group)?;
        self.persist(sync)?;
        self.retire_resolved()
    }
}

impl ColdStore for Store {
    fn version_at(&self, ptr: &str, at: u64) -> Result<Option<VersionRec>, StorageError> {
        let lo = codec::version_key(ptr, 0);
        let hi = codec::version_key(ptr, at);
        match self.versions.range(lo..=hi).next_back() {
            None => Ok(None),
            Some(item) => {
                let (k, v) =
                    item.into_inner().map_err(|e| StorageError::backend("reading a cold version", e))?;
                let (_, version) =
                    codec::decode_key(&k).ok_or_else(|| StorageError::Corrupt(format!("key {k:?}")))?;
                codec::decode_value(version, &v)
                    .map(Some)
                    .ok_or_else(|| StorageError::Corrupt(format!("value of {ptr:?}@{version}")))
            }
        }
    }
}

/// The store shared by the engine (cold reads), the committer and the node.
pub type SharedStore = Arc<dyn VersionStore>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_commit_txn_records_of_earlier_versions_are_dropped_on_open() {
        let dir = std::env::temp_dir().join(format!("restm-store-txnrec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let (store, _) = Store::open(&dir, Some(4), 2).unwrap();
            for i in 0..25_000u32 {
                store.meta.insert(format!("txn/{i:08}"), 7u64.to_be_bytes()).unwrap();
            }
            store.save_horizon(42).unwrap();
        }
        let (store, _) = Store::open(&dir, Some(4), 2).unwrap();
        assert_eq!(store.meta.prefix(META_OLD_TXN).count(), 0);
        assert_eq!(store.gc_state().unwrap().0, 42, "other metadata stays");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn prepared_intents_without_a_committed_record_are_dropped_on_open() {
        let dir = std::env::temp_dir().join(format!("restm-store-intents-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rec = |txn: &str, version: u64| CommitRecord {
            txn: txn.into(),
            trace_id: "t".into(),
            commit_version: version,
            writes: vec![("p".into(), Some(Bytes::from_static(b"1"))), ("q".into(), None)],
            primary: Some("p".into()),
        };
        {
            let (store, _) = Store::open(&dir, Some(4), 2).unwrap();
            store.write_batch(&[rec("0000000000000001", 10), rec("0000000000000002", 20)]).unwrap();
            // The first txn's record is lost (its primary never recorded the commit).
            let primary = partition_of("p", 4);
            store.txns.remove(codec::record_key(primary, "0000000000000001")).unwrap();
            store.persist(true).unwrap();
        }
        let (store, recovered) = Store::open(&dir, Some(4), 2).unwrap();
        assert_eq!((recovered.resolved_committed, recovered.resolved_aborted), (1, 1));
        let versions: Vec<u64> =
            store.history("p", None, u64::MAX, 10).unwrap().0.iter().map(|v| v.version).collect();
        assert_eq!(versions, vec![20], "only the recorded commit is installed");
        let q = store.history("q", None, u64::MAX, 10).unwrap().0;
        assert!(q.len() == 1 && q[0].value.is_none(), "a delete is installed as a tombstone");
        assert_eq!(store.intents.iter().count() + store.txns.iter().count(), 0);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
