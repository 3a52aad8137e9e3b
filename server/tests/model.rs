//! Model-based test of the engine: random sequences of interleaved transactions run against
//! the real engine (with an injected clock and the real fjall store, keeping only two
//! versions hot so old reads go to disk) and against a trivially correct serial model.
//! Every read, every lock outcome and every commit-or-conflict decision must match, and
//! a reopened store must recover exactly the model's state. Garbage collection (with a
//! 20 ms retention) and eviction run in between: reads at or above the horizon must still
//! match the unpruned model exactly, reads below it must be refused, and the horizon must
//! never pass an open transaction's snapshot.
//!
//! A commit may also be split in two steps with others in between: `Prepare` (prepared on
//! every partition, its commit version taken and its reads validated) and `Finish` (made
//! durable and installed). Meanwhile the engine must make every read that could see the
//! prepared writes wait (and only those), and hold the prepared txn's locks.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use restm::engine::clock::ManualClock;
use restm::engine::{
    BeginOptions, CommitStep, Engine, EngineConfig, EngineError, PreparedCommit, ReadStep, Txn, WriteStep,
};
use restm::storage::{CommitRecord, Store, VersionStore};

const SLOTS: u8 = 3;
const PTRS: u8 = 4;

#[derive(Debug, Clone)]
enum Op {
    Begin(u8),
    Read(u8, u8),
    LockRead(u8, u8),
    Write(u8, u8, i64),
    Delete(u8, u8),
    Commit(u8),
    Prepare(u8),
    Finish(u8),
    Abort(u8),
    Tick(u64),
    ReadAt(u8, usize),
    ExpireAll,
    Gc,
    Evict,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..SLOTS).prop_map(Op::Begin),
        4 => (0..SLOTS, 0..PTRS).prop_map(|(s, p)| Op::Read(s, p)),
        2 => (0..SLOTS, 0..PTRS).prop_map(|(s, p)| Op::LockRead(s, p)),
        4 => (0..SLOTS, 0..PTRS, -50i64..50).prop_map(|(s, p, v)| Op::Write(s, p, v)),
        1 => (0..SLOTS, 0..PTRS).prop_map(|(s, p)| Op::Delete(s, p)),
        3 => (0..SLOTS).prop_map(Op::Commit),
        2 => (0..SLOTS).prop_map(Op::Prepare),
        2 => (0..SLOTS).prop_map(Op::Finish),
        1 => (0..SLOTS).prop_map(Op::Abort),
        2 => (0u64..30).prop_map(Op::Tick),
        3 => (0..PTRS, any::<usize>()).prop_map(|(p, k)| Op::ReadAt(p, k)),
        1 => Just(Op::ExpireAll),
        2 => Just(Op::Gc),
        1 => Just(Op::Evict),
    ]
}

fn name(p: u8) -> String {
    format!("p{p}")
}

struct MTxn {
    txn: Arc<Txn>,
    reads: BTreeMap<u8, Option<u64>>,
    writes: BTreeMap<u8, Option<i64>>,
    /// Prepared, not yet durable: the commit, and the last version issued before it was
    /// prepared (its writes' mark: readers above it must wait for them).
    prepared: Option<(PreparedCommit, u64)>,
}

#[derive(Default)]
struct Model {
    /// Per pointer: (version, value or tombstone), ascending.
    chains: BTreeMap<u8, Vec<(u64, Option<i64>)>>,
    holders: BTreeMap<u8, u8>,
    slots: BTreeMap<u8, MTxn>,
    versions: Vec<u64>,
}

impl Model {
    fn at(&self, p: u8, v: u64) -> Option<(u64, Option<i64>)> {
        self.chains.get(&p).and_then(|c| c.iter().rev().find(|(ver, _)| *ver <= v).copied())
    }
    fn latest(&self, p: u8) -> Option<u64> {
        self.chains.get(&p).and_then(|c| c.last()).map(|(v, _)| *v)
    }
    fn release(&mut self, s: u8) {
        self.holders.retain(|_, h| *h != s);
        self.slots.remove(&s);
    }
    /// Whether a read of `p` at `at` by slot `reader` (if any) must wait for another slot's
    /// prepared commit.
    fn waits(&self, p: u8, at: u64, reader: Option<u8>) -> bool {
        self.slots.iter().any(|(s, t)| {
            Some(*s) != reader
                && t.prepared.as_ref().is_some_and(|(_, mark)| at > *mark && t.writes.contains_key(&p))
        })
    }
    fn is_prepared(&self, s: u8) -> bool {
        self.slots.get(&s).is_some_and(|t| t.prepared.is_some())
    }
}

fn value_of(step: ReadStep) -> Option<(u64, Option<i64>)> {
    match step {
        ReadStep::Done(v) => v.map(|r| {
            (r.version, r.value.as_ref().map(|b| std::str::from_utf8(b).unwrap().parse::<i64>().unwrap()))
        }),
        ReadStep::Wait(_) => panic!("nothing is ever prepared between steps of a sequential run"),
    }
}

fn run(ops: Vec<Op>) {
    let dir = std::env::temp_dir().join(format!("restm-model-{}-{}", std::process::id(), rand_suffix()));
    let _ = std::fs::remove_dir_all(&dir);
    let clock = Arc::new(ManualClock::new(1_000_000));
    let cfg = EngineConfig {
        partitions: 4,
        hot_versions: 2,
        default_timeout_ms: 1_000,
        retention_ms: 20,
        ..Default::default()
    };
    let (store, rec) = Store::open(&dir, Some(4), 2).unwrap();
    let store = Arc::new(store);
    let engine = Engine::new(cfg, clock.clone(), store.clone(), rec.pointers, rec.max_version);
    let mut m = Model::default();

    for op in ops {
        match op {
            Op::Begin(s) => {
                if let std::collections::btree_map::Entry::Vacant(e) = m.slots.entry(s) {
                    let txn = engine.begin(BeginOptions::default()).unwrap();
                    e.insert(MTxn { txn, reads: BTreeMap::new(), writes: BTreeMap::new(), prepared: None });
                }
            }
            Op::Read(s, p) => {
                let Some(t) = m.slots.get(&s) else { continue };
                if t.prepared.is_some() {
                    assert!(matches!(
                        engine.read(Some(&t.txn), &name(p), 0),
                        Err(EngineError::TxnCommitting { .. })
                    ));
                    continue;
                }
                let step = engine.read(Some(&t.txn), &name(p), t.txn.read_version()).unwrap();
                if !t.writes.contains_key(&p) && m.waits(p, t.txn.read_version(), Some(s)) {
                    assert!(matches!(step, ReadStep::Wait(_)), "a read of p{p} above a prepared write waits");
                    continue;
                }
                let got = value_of(step);
                if let Some(own) = t.writes.get(&p) {
                    assert_eq!(got.and_then(|g| g.1), *own, "read your own write of p{p}");
                } else {
                    let want = m.at(p, t.txn.read_version());
                    assert_eq!(got, want, "snapshot read of p{p} at {}", t.txn.read_version());
                    let t = m.slots.get_mut(&s).unwrap();
                    t.reads.entry(p).or_insert(want.map(|w| w.0));
                }
            }
            Op::LockRead(s, p) => {
                let Some(t) = m.slots.get(&s) else { continue };
                if t.prepared.is_some() {
                    continue;
                }
                let before = t.txn.read_version();
                let stale = m.latest(p).is_some_and(|v| v > before);
                let doomed = t
                    .reads
                    .iter()
                    .any(|(q, seen)| m.holders.get(q).is_some_and(|h| *h != s) || m.latest(*q) != *seen);
                let other = m.holders.get(&p).copied().filter(|h| *h != s);
                match (engine.lock_for_update(&t.txn, &name(p)), other) {
                    (Ok(WriteStep::Wait { holder, .. }), Some(h)) => {
                        assert_eq!(holder, m.slots[&h].txn.id);
                        continue;
                    }
                    (Ok(WriteStep::Wait { .. }), None) => panic!("p{p} is not locked in the model"),
                    (Ok(WriteStep::Staged), Some(h)) => panic!("p{p} was locked by slot {h}"),
                    (Err(EngineError::Conflict { .. }), None) => {
                        assert!(stale && doomed, "a refresh refused without cause");
                        m.release(s);
                        continue;
                    }
                    (Ok(WriteStep::Staged), None) => {
                        assert!(!(stale && doomed), "a refresh over a changed read");
                        m.holders.insert(p, s);
                    }
                    (r, _) => panic!("unexpected {r:?}"),
                }
                let t = m.slots.get(&s).unwrap();
                let now = t.txn.read_version();
                if stale {
                    assert!(now > before && now >= m.latest(p).unwrap(), "the snapshot moved forward");
                } else {
                    assert_eq!(now, before, "no refresh needed");
                }
                let got = value_of(engine.read(Some(&t.txn), &name(p), now).unwrap());
                if let Some(own) = t.writes.get(&p) {
                    assert_eq!(got.and_then(|g| g.1), *own, "locking read of its own write of p{p}");
                } else {
                    let want = m.chains.get(&p).and_then(|c| c.last()).copied();
                    assert_eq!(got, want, "a locking read sees the newest version of p{p}");
                    let t = m.slots.get_mut(&s).unwrap();
                    t.reads.entry(p).or_insert(want.map(|w| w.0));
                }
            }
            Op::Write(s, p, _) | Op::Delete(s, p) => {
                let Some(t) = m.slots.get(&s) else { continue };
                if t.prepared.is_some() {
                    continue;
                }
                let value = match op {
                    Op::Write(_, _, v) => Some(v),
                    _ => None,
                };
                let step = engine.write(&t.txn, &name(p), value.map(|v| Bytes::from(v.to_string()))).unwrap();
                match (step, m.holders.get(&p)) {
                    (WriteStep::Staged, None) => {
                        m.holders.insert(p, s);
                    }
                    (WriteStep::Staged, Some(h)) => assert_eq!(*h, s, "p{p} was locked by slot {h}"),
                    (WriteStep::Wait { holder, .. }, Some(h)) => {
                        assert_ne!(*h, s);
                        assert_eq!(holder, m.slots[h].txn.id);
                        continue;
                    }
                    (WriteStep::Wait { .. }, None) => panic!("p{p} is not locked in the model"),
                }
                m.slots.get_mut(&s).unwrap().writes.insert(p, value);
            }
            Op::Commit(s) | Op::Prepare(s) => {
                let Some(t) = m.slots.get(&s) else { continue };
                if t.prepared.is_some() {
                    assert!(matches!(engine.prepare_commit(&t.txn), Err(EngineError::TxnCommitting { .. })));
                    continue;
                }
                let mark = engine.last_version();
                let conflict = t
                    .reads
                    .iter()
                    .any(|(p, seen)| m.holders.get(p).is_some_and(|h| *h != s) || m.latest(*p) != *seen);
                let result = engine.prepare_commit(&t.txn);
                match result {
                    Ok(CommitStep::Done(v)) => {
                        assert!(t.writes.is_empty());
                        assert_eq!(v, t.txn.read_version());
                    }
                    Ok(CommitStep::Prepared(p)) if matches!(op, Op::Prepare(_)) => {
                        assert!(!conflict, "prepared despite a conflict");
                        m.slots.get_mut(&s).unwrap().prepared = Some((p, mark));
                        continue;
                    }
                    Ok(CommitStep::Prepared(p)) => {
                        assert!(!conflict, "committed despite a conflict");
                        let last = m.versions.last().copied().unwrap_or(0);
                        assert!(p.commit_version > last && p.commit_version > t.txn.read_version());
                        let record = CommitRecord::of(&p);
                        store.write_group(&[record], false).unwrap();
                        let v = engine.finish_commit(p);
                        for (ptr, val) in &t.writes {
                            m.chains.entry(*ptr).or_default().push((v, *val));
                        }
                        m.versions.push(v);
                    }
                    Err(EngineError::Conflict { .. }) => {
                        assert!(conflict, "a conflict the model does not see")
                    }
                    Err(e) => panic!("unexpected {e}"),
                }
                m.release(s);
            }
            Op::Finish(s) => {
                let Some((p, _)) = m.slots.get_mut(&s).and_then(|t| t.prepared.take()) else { continue };
                // Versions are unique and follow commit order, though others committed
                // between this txn's prepare and now (with higher versions).
                assert!(!m.versions.contains(&p.commit_version));
                store.write_group(&[CommitRecord::of(&p)], false).unwrap();
                let v = engine.finish_commit(p);
                let t = &m.slots[&s];
                for (ptr, val) in t.writes.clone() {
                    let chain = m.chains.entry(ptr).or_default();
                    assert!(
                        chain.last().is_none_or(|(last, _)| *last < v),
                        "p{ptr} committed above {v} while locked"
                    );
                    chain.push((v, val));
                }
                m.versions.push(v);
                m.versions.sort_unstable();
                m.release(s);
            }
            Op::Abort(s) => {
                if m.is_prepared(s) {
                    let t = &m.slots[&s];
                    assert!(
                        !engine.abort(&t.txn, restm::engine::AbortReason::Client),
                        "a prepared txn is not aborted"
                    );
                } else if let Some(t) = m.slots.get(&s) {
                    assert!(engine.abort(&t.txn, restm::engine::AbortReason::Client));
                    m.release(s);
                }
            }
            Op::Tick(ms) => clock.advance(ms),
            Op::ReadAt(p, k) => {
                let mut candidates = m.versions.clone();
                candidates.push(engine.last_version());
                let v = candidates[k % candidates.len()];
                match engine.read(None, &name(p), v) {
                    Ok(ReadStep::Wait(_)) => {
                        assert!(
                            v >= engine.horizon() && m.waits(p, v, None),
                            "p{p} at {v} waited for nothing"
                        );
                    }
                    Err(EngineError::Gone { horizon, .. }) => {
                        assert!(
                            v < horizon && horizon == engine.horizon(),
                            "refused at {v}, horizon {horizon}"
                        )
                    }
                    Ok(step) => {
                        assert!(v >= engine.horizon(), "answered below the horizon");
                        assert!(!m.waits(p, v, None), "p{p} at {v} did not wait for a prepared write");
                        assert_eq!(value_of(step), m.at(p, v), "as-of read of p{p} at {v}");
                    }
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            Op::Gc => {
                engine.raise_horizon();
                let h = engine.horizon();
                for t in m.slots.values() {
                    assert!(h <= t.txn.read_version(), "the horizon passed an open snapshot");
                }
                for idx in 0..engine.partition_count() {
                    let pass = engine.gc_partition(idx);
                    store.prune(&pass.disk).unwrap();
                }
                // The model forgets the same: all but the newest version at or below the
                // horizon, and pointers whose unlocked latest version is a tombstone there.
                let holders = m.holders.clone();
                m.chains.retain(|p, chain| {
                    // A locked pointer whose latest version is a tombstone is left whole this
                    // pass (its holder may write after the tombstone); a later pass prunes it.
                    if holders.contains_key(p) && chain.last().is_some_and(|(_, val)| val.is_none()) {
                        return true;
                    }
                    let keep_from = chain.iter().filter(|(v, _)| *v <= h).count().saturating_sub(1);
                    chain.drain(..keep_from);
                    let tomb = chain.last().is_some_and(|(v, val)| *v <= h && val.is_none());
                    !tomb || holders.contains_key(p)
                });
            }
            Op::Evict => {
                engine.evict_hot(1);
            }
            Op::ExpireAll => {
                clock.advance(5_000);
                let reaped = engine.reap_expired();
                // A prepared txn is past its lease's reach: it commits (or the node does).
                let active: Vec<u8> =
                    m.slots.iter().filter(|(_, t)| t.prepared.is_none()).map(|(s, _)| *s).collect();
                assert_eq!(reaped.len(), active.len());
                for s in active {
                    m.release(s);
                }
            }
        }
    }
    // Every txn still open is abandoned; nothing it staged may survive.
    drop(engine);
    drop(store);
    let (_store, rec) = Store::open(&dir, Some(4), 2).unwrap();
    for p in 0..PTRS {
        let recovered = rec.pointers.iter().find(|r| *r.ptr == *name(p));
        let got = recovered.and_then(|r| r.hot.last()).map(|v| v.version);
        assert_eq!(got, m.latest(p), "recovered latest of p{p}");
        if let Some(r) = recovered {
            let model_chain = &m.chains[&p];
            assert_eq!(r.cold_below, model_chain.len() > 2, "p{p}: {model_chain:?}");
        }
    }
    let total: usize = m.chains.values().map(Vec::len).sum();
    assert_eq!(rec.versions, total as u64, "disk holds exactly what the model keeps");
    drop(_store);
    let _ = std::fs::remove_dir_all(&dir);
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_serial_model(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops);
    }
}

#[test]
fn a_finished_txn_keeps_its_write_set_but_not_its_values() {
    let dir = std::env::temp_dir().join(format!("restm-model-values-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (store, rec) = Store::open(&dir, Some(4), 2).unwrap();
    let store = Arc::new(store);
    let engine = Engine::new(
        EngineConfig { partitions: 4, ..Default::default() },
        Arc::new(ManualClock::new(1_000)),
        store.clone(),
        rec.pointers,
        rec.max_version,
    );
    let txn = engine.begin(BeginOptions::default()).unwrap();
    assert!(matches!(
        engine.write(&txn, "big", Some(Bytes::from(vec![b'1'; 4096]))).unwrap(),
        WriteStep::Staged
    ));
    assert!(matches!(engine.write(&txn, "gone", None).unwrap(), WriteStep::Staged));
    let CommitStep::Prepared(p) = engine.prepare_commit(&txn).unwrap() else {
        panic!("expected a prepared commit")
    };
    engine.finish_commit(p);
    let found = engine.txn(&txn.id).unwrap();
    let inner = found.inner.lock();
    assert_eq!(inner.writes.len(), 2);
    assert_eq!(inner.writes["big"].as_ref().map(Bytes::len), Some(0));
    assert!(inner.writes["gone"].is_none());
    drop(inner);
    drop(engine);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gc_of_versions_only_on_disk_keeps_the_newest_at_or_below_the_watermark() {
    let dir = std::env::temp_dir().join(format!("restm-model-cold-gc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (store, rec) = Store::open(&dir, Some(4), 2).unwrap();
    let store = Arc::new(store);
    let clock = Arc::new(ManualClock::new(1_000));
    let engine = Engine::new(
        EngineConfig { partitions: 4, hot_versions: 2, retention_ms: 0, ..Default::default() },
        clock.clone(),
        store.clone(),
        rec.pointers,
        rec.max_version,
    );
    let mut versions = Vec::new();
    let mut snapshot = None;
    for i in 0..6 {
        clock.advance(10);
        if i == 4 {
            // A snapshot between the 4th and 5th versions holds the watermark there.
            snapshot = Some(engine.begin(BeginOptions::default()).unwrap());
        }
        let txn = engine.begin(BeginOptions::default()).unwrap();
        assert!(matches!(
            engine.write(&txn, "p", Some(Bytes::from(i.to_string()))).unwrap(),
            WriteStep::Staged
        ));
        let CommitStep::Prepared(p) = engine.prepare_commit(&txn).unwrap() else { panic!("prepared") };
        let record = CommitRecord::of(&p);
        store.write_group(&[record], false).unwrap();
        versions.push(engine.finish_commit(p));
    }
    let snapshot = snapshot.unwrap();
    engine.raise_horizon();
    assert_eq!(engine.horizon(), snapshot.read_version());
    for idx in 0..engine.partition_count() {
        store.prune(&engine.gc_partition(idx).disk).unwrap();
    }
    // Memory held versions 5 and 6 only; on disk 1..3 go and 4 (the newest at or below
    // the watermark) stays.
    let (on_disk, _) = store.history("p", None, u64::MAX, 100).unwrap();
    assert_eq!(on_disk.iter().map(|v| v.version).collect::<Vec<_>>(), versions[3..].to_vec());
    let got = value_of(engine.read(None, "p", snapshot.read_version()).unwrap());
    assert_eq!(got, Some((versions[3], Some(3))));
    drop(engine);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
