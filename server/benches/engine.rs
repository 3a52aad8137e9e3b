//! Criterion micro-benchmarks of the engine's hot paths, without HTTP: version lookup (at
//! the latest version and at a past one, in memory and from fjall, on a pointer with 10k
//! versions), lock acquire and release, and commit validation.
//!
//! `cargo bench -p restm-server --bench engine`

use std::sync::Arc;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use restm::engine::clock::ManualClock;
use restm::engine::{AbortReason, BeginOptions, CommitStep, Engine, EngineConfig, ReadStep};
use restm::storage::{CommitRecord, Store};

const VERSIONS: u64 = 10_000;

/// An engine on a fresh store whose pointer `deep` has 10k versions (all on disk, the newest
/// `hot` of them in memory), plus the versions' numbers.
fn deep_engine(tag: &str, hot: usize) -> (Engine, Arc<Store>, Vec<u64>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("restm-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (store, rec) = Store::open(&dir, Some(64), hot).expect("open store");
    let store = Arc::new(store);
    let clock = Arc::new(ManualClock::new(1_000_000));
    let cfg = EngineConfig { hot_versions: hot, ..Default::default() };
    let engine = Engine::new(cfg, clock.clone(), store.clone(), rec.pointers, rec.max_version);
    let mut versions = Vec::new();
    for i in 0..VERSIONS {
        clock.advance(1);
        let t = engine.begin(BeginOptions::default()).expect("begin");
        engine.write(&t, "deep", Some(Bytes::from(format!("{{\"n\":{i}}}")))).expect("write");
        let CommitStep::Prepared(p) = engine.prepare_commit(&t).expect("prepare") else { unreachable!() };
        store.write_group(&[CommitRecord::of(&p)], false).expect("store");
        versions.push(engine.finish_commit(p));
    }
    (engine, store, versions, dir)
}

fn read(engine: &Engine, at: u64) -> usize {
    match engine.read(None, "deep", at).expect("read") {
        ReadStep::Done(Some(v)) => v.value.as_ref().map_or(0, |b| b.len()),
        _ => panic!("no version at {at}"),
    }
}

fn version_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("version lookup, 10k versions");
    // The default: the newest 8 in memory, the rest read from fjall.
    let (engine, _store, versions, dir) = deep_engine("cold", 8);
    let latest = *versions.last().unwrap();
    let past = versions[VERSIONS as usize / 2];
    g.bench_function("latest (in memory)", |b| b.iter(|| read(&engine, latest)));
    g.bench_function("past version (from fjall)", |b| b.iter(|| read(&engine, past)));
    drop(engine);
    let _ = std::fs::remove_dir_all(dir);
    // Every version in memory: a binary search of the chain.
    let (engine, _store, versions, dir) = deep_engine("hot", VERSIONS as usize);
    let past = versions[VERSIONS as usize / 2];
    g.bench_function("past version (in memory)", |b| b.iter(|| read(&engine, past)));
    g.finish();
    drop(engine);
    let _ = std::fs::remove_dir_all(dir);
}

fn plain_engine() -> (Engine, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("restm-bench-plain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (store, rec) = Store::open(&dir, Some(64), 8).expect("open store");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let engine = Engine::new(EngineConfig::default(), clock, Arc::new(store), rec.pointers, rec.max_version);
    (engine, dir)
}

fn locks(c: &mut Criterion) {
    let (engine, dir) = plain_engine();
    c.bench_function("lock acquire and release (begin, lock 1 pointer, abort)", |b| {
        b.iter(|| {
            let t = engine.begin(BeginOptions::default()).expect("begin");
            engine.lock_for_update(&t, "hot").expect("lock");
            engine.abort(&t, AbortReason::Client)
        })
    });
    drop(engine);
    let _ = std::fs::remove_dir_all(dir);
}

fn commit_validation(c: &mut Criterion) {
    let (engine, dir) = plain_engine();
    // 10 pointers to read, each with a version.
    let seed = engine.begin(BeginOptions::default()).expect("begin");
    for i in 0..10 {
        engine.write(&seed, &format!("r{i}"), Some(Bytes::from_static(b"1"))).expect("write");
    }
    let CommitStep::Prepared(p) = engine.prepare_commit(&seed).expect("prepare") else { unreachable!() };
    engine.finish_commit(p);
    c.bench_function("commit: validate 10 reads, install 1 write", |b| {
        b.iter_batched(
            || {
                let t = engine.begin(BeginOptions::default()).expect("begin");
                for i in 0..10 {
                    let _ = engine.read(Some(&t), &format!("r{i}"), t.read_version()).expect("read");
                }
                engine.write(&t, "w", Some(Bytes::from_static(b"2"))).expect("write");
                t
            },
            |t| match engine.prepare_commit(&t).expect("no conflict") {
                CommitStep::Prepared(p) => engine.finish_commit(p),
                CommitStep::Done(v) => v,
            },
            BatchSize::SmallInput,
        )
    });
    drop(engine);
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group!(benches, version_lookup, locks, commit_validation);
criterion_main!(benches);
