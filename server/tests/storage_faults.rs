//! What a node answers when its disk fails under a commit: injected faults
//! (`storage::fault`) in front of the real fjall store.
//!
//! A failed write or fsync is never a clean abort (the batch may be on disk): the client is
//! told `outcome-unknown`, the node takes no more writes, and what a restart recovers is the
//! truth. These tests fail if the node answers "aborted" for a commit recovery then shows.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use restm::engine::events::DiscardEvents;
use restm::engine::{BeginOptions, EngineConfig, EngineError, Phase, StorageError};
use restm::metrics::Metrics;
use restm::node::{Node, NodeConfig};
use restm::storage::fault::{Fault, FaultyStore};
use restm::storage::{Durability, SharedStore, Store, VersionStore};

fn config(dir: &Path) -> NodeConfig {
    NodeConfig {
        data_dir: dir.to_path_buf(),
        partitions: Some(4),
        engine: EngineConfig { partitions: 4, ..EngineConfig::default() },
        lock_timeout: Duration::from_millis(200),
        prepared_wait: Duration::from_secs(10),
        durability: Durability::Sync,
        reap_every: Duration::from_millis(50),
        gc_every: Duration::from_secs(3600),
        memory_budget: 0,
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("restm-faults-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A node over a fault-injecting store, and the handle that arms its faults.
fn open_faulty(dir: &Path) -> (Arc<Node>, Arc<FaultyStore<Store>>) {
    let slot: Arc<OnceLock<Arc<FaultyStore<Store>>>> = Arc::default();
    let s = slot.clone();
    let node =
        Node::open_with(config(dir), Arc::new(DiscardEvents), Arc::new(Metrics::new()), move |store| {
            let faulty = Arc::new(FaultyStore::new(store));
            let _ = s.set(faulty.clone());
            faulty as SharedStore
        })
        .expect("open");
    let faulty = slot.get().expect("wrapped").clone();
    (node, faulty)
}

async fn put(node: &Node, ptr: &str, value: &'static str) -> Result<u64, EngineError> {
    let txn = node.begin(BeginOptions::default())?;
    node.write(&txn, ptr, Some(Bytes::from_static(value.as_bytes()))).await?;
    node.commit(&txn).await
}

/// Reopens the directory as a fresh process would and reads `ptr`'s newest value.
async fn recovered_value(dir: &Path, ptr: &str) -> Option<String> {
    let node = Node::open(config(dir), Arc::new(DiscardEvents), Arc::new(Metrics::new())).expect("reopen");
    let at = node.now_version();
    let v = node.read(None, ptr, at).await.expect("read");
    v.and_then(|v| v.value.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_answers_outcome_unknown_and_fences_writes() {
    let dir = temp_dir("fsync");
    {
        let (node, faulty) = open_faulty(&dir);
        put(&node, "a", "1").await.expect("a healthy commit");
        faulty.arm(Fault::SyncFails);
        let txn = node.begin(BeginOptions::default()).unwrap();
        node.write(&txn, "a", Some(Bytes::from_static(b"2"))).await.unwrap();
        let err = node.commit(&txn).await.expect_err("the fsync failed");
        let EngineError::OutcomeUnknown { txn: id, cause, .. } = &err else {
            panic!("a failed fsync must not be answered {err:?}")
        };
        assert_eq!(**id, *txn.id);
        assert!(matches!(cause, StorageError::SyncFailed { .. }), "{cause:?}");
        assert!(!matches!(txn.phase(), Phase::Aborted(_)), "never reported aborted");
        // No more writes, one-shot or interactive; reads of other pointers still work.
        let fenced = node.begin(BeginOptions::default()).expect_err("fenced");
        assert!(matches!(fenced, EngineError::WritesFenced { cause: StorageError::SyncFailed { .. } }));
        assert!(matches!(put(&node, "b", "1").await, Err(EngineError::WritesFenced { .. })));
        assert!(node.begin(BeginOptions { read_only: true, ..Default::default() }).is_ok());
        let at = node.now_version();
        assert_eq!(node.read(None, "b", at).await.unwrap(), None);
    }
    // The batch reached the OS before the fsync "failed": recovery shows it, which is why
    // "aborted" would have been a lie.
    assert_eq!(recovered_value(&dir, "a").await.as_deref(), Some("2"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_write_is_unknown_too_and_recovery_decides() {
    let dir = temp_dir("write");
    {
        let (node, faulty) = open_faulty(&dir);
        put(&node, "a", "1").await.unwrap();
        faulty.arm(Fault::WriteFails);
        let err = put(&node, "a", "2").await.expect_err("the write failed");
        assert!(matches!(err, EngineError::OutcomeUnknown { .. }), "{err:?}");
        assert!(matches!(put(&node, "c", "1").await, Err(EngineError::WritesFenced { .. })));
    }
    assert_eq!(recovered_value(&dir, "a").await.as_deref(), Some("1"), "nothing of it was written");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_group_leaves_no_commit_reported_aborted() {
    let dir = temp_dir("torn");
    let mut outcomes = Vec::new();
    {
        let (node, faulty) = open_faulty(&dir);
        // Many commits at once so that the committer groups them; the first of the group
        // reaches the disk, the rest do not.
        faulty.arm(Fault::TornBatch { keep: 1 });
        let mut tasks = Vec::new();
        for i in 0..16 {
            let node = node.clone();
            tasks.push(tokio::spawn(async move { (i, put(&node, &format!("k{i}"), "1").await) }));
        }
        for t in tasks {
            outcomes.push(t.await.unwrap());
        }
    }
    for (i, outcome) in outcomes {
        let recovered = recovered_value(&dir, &format!("k{i}")).await;
        match outcome {
            Ok(_) => assert_eq!(recovered.as_deref(), Some("1"), "k{i} was acknowledged"),
            Err(EngineError::OutcomeUnknown { .. }) => {}
            Err(EngineError::WritesFenced { .. }) => assert_eq!(recovered, None, "k{i} was refused"),
            Err(e) => panic!("k{i}: a commit in a failed group answered {e:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two pointer ids in different partitions of a 4-partition node.
fn two_partitions() -> (String, String) {
    use restm::engine::partition::partition_of;
    let a = "x0".to_string();
    let b = (1..).map(|i| format!("x{i}")).find(|p| partition_of(p, 4) != partition_of(&a, 4)).unwrap();
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_commit_point_is_resolved_by_the_record_on_restart() {
    let dir = temp_dir("record");
    let (a, b) = two_partitions();
    let version;
    {
        let (node, faulty) = open_faulty(&dir);
        // The intents and the primary's committed record are fsynced; turning them into
        // versions is "lost", as if the process died right after the commit point.
        faulty.arm(Fault::LoseResolution);
        let txn = node.begin(BeginOptions::default()).unwrap();
        node.write(&txn, &a, Some(Bytes::from_static(b"\"a\""))).await.unwrap();
        node.write(&txn, &b, Some(Bytes::from_static(b"\"b\""))).await.unwrap();
        version = node.commit(&txn).await.expect("durable at the commit point: acknowledged");
        let at = node.now_version();
        let seen = node.read(None, &b, at).await.unwrap().expect("visible at once");
        assert_eq!(seen.version, version);
    }
    let (store, recovered) = Store::open(&dir, Some(4), 8).unwrap();
    assert_eq!((recovered.resolved_committed, recovered.resolved_aborted), (1, 0));
    for (ptr, value) in [(&a, "\"a\""), (&b, "\"b\"")] {
        let (history, _) = store.history(ptr, None, u64::MAX, 10).unwrap();
        assert_eq!(history.len(), 1, "{ptr}: installed once, from its intent");
        assert_eq!(history[0].version, version);
        assert_eq!(history[0].value.as_deref(), Some(value.as_bytes()));
    }
    drop(store);
    let (_, again) = Store::open(&dir, Some(4), 8).unwrap();
    assert_eq!((again.resolved_committed, again.resolved_aborted), (0, 0), "resolved once");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_across_partitions_leave_no_intents_behind() {
    let dir = temp_dir("clean");
    let (a, b) = two_partitions();
    {
        let (node, _) = open_faulty(&dir);
        for i in 0..20 {
            let txn = node.begin(BeginOptions::default()).unwrap();
            let v = Bytes::from(i.to_string());
            node.write(&txn, &a, Some(v.clone())).await.unwrap();
            node.write(&txn, &b, Some(v)).await.unwrap();
            node.commit(&txn).await.unwrap();
        }
    }
    let (store, recovered) = Store::open(&dir, Some(4), 8).unwrap();
    assert_eq!((recovered.resolved_committed, recovered.resolved_aborted), (0, 0));
    assert_eq!(store.history(&a, None, u64::MAX, 100).unwrap().0.len(), 20);
    let _ = std::fs::remove_dir_all(&dir);
}
