//! Locking reads (`X-reSTM-Lock: update`): a read-modify-write of a hot pointer queues on
//! its lock instead of failing validation, the snapshot moves forward only when nothing
//! read so far changed, and bad uses are named 400s.

use std::time::Duration;

use restm_tests::{Api, Node, problem};
use serde_json::{Value, json};

async fn lock_read(api: &Api, txn: &str, ptr: &str) -> reqwest::Response {
    api.http
        .get(api.ptr_url(ptr))
        .header("X-reSTM-Txn", txn)
        .header("X-reSTM-Lock", "update")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_locking_read_waits_for_the_holder_then_sees_its_commit() {
    let node = Node::start_with(&["--lock-timeout", "5s"]);
    let api = Api::new(&node);
    api.put_ok("x", &json!(0)).await;
    let (t1, t2) = (api.begin().await, api.begin().await);
    let r = lock_read(&api, &t1, "x").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!(0));
    // t2 began before t1 commits: a plain read would see 0 and its commit would fail.
    let waiter = {
        let (api, t2) = (Api::new(&node), t2.clone());
        tokio::spawn(async move {
            let r = lock_read(&api, &t2, "x").await;
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "the second locking read waits for the lock");
    assert_eq!(api.tput(&t1, "x", &json!(1)).await.status(), 200);
    assert_eq!(api.commit(&t1).await.status(), 200);
    // It gets the lock and reads the newest version: its snapshot moved forward.
    assert_eq!(waiter.await.unwrap(), (200, json!(1)));
    assert_eq!(api.tput(&t2, "x", &json!(2)).await.status(), 200);
    assert_eq!(api.commit(&t2).await.status(), 200);
    assert_eq!(api.value("x").await, Some(json!(2)));

    // A transaction that only read with a lock releases it when it commits.
    let t3 = api.begin().await;
    assert_eq!(lock_read(&api, &t3, "x").await.status(), 200);
    assert_eq!(api.commit(&t3).await.status(), 200);
    let t4 = api.begin().await;
    let took = std::time::Instant::now();
    assert_eq!(lock_read(&api, &t4, "x").await.status(), 200);
    assert!(took.elapsed() < Duration::from_secs(2), "waited {:?} for a released lock", took.elapsed());
    assert_eq!(api.tput(&t4, "x", &json!(3)).await.status(), 200);
    assert_eq!(api.commit(&t4).await.status(), 200);
}

#[tokio::test]
async fn a_waiter_aborted_while_in_line_hands_its_turn_to_the_next() {
    // A release wakes one lock waiter; if that one's txn has ended, the next must not sleep
    // on until its lock timeout.
    let node = Node::start_with(&["--lock-timeout", "20s"]);
    let api = Api::new(&node);
    api.put_ok("x", &json!(0)).await;
    let (t1, t2, t3) = (api.begin().await, api.begin().await, api.begin().await);
    assert_eq!(lock_read(&api, &t1, "x").await.status(), 200);
    let in_line = |txn: String| {
        let api = Api::new(&node);
        tokio::spawn(async move { lock_read(&api, &txn, "x").await.status().as_u16() })
    };
    let second = in_line(t2.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = in_line(t3.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(api.abort(&t2).await.status(), 200);
    assert!(!second.is_finished() && !third.is_finished(), "both still wait for x");
    let released = std::time::Instant::now();
    assert_eq!(api.tput(&t1, "x", &json!(1)).await.status(), 200);
    assert_eq!(api.commit(&t1).await.status(), 200);
    assert_eq!(third.await.unwrap(), 200);
    assert!(released.elapsed() < Duration::from_secs(5), "the third waited {:?}", released.elapsed());
    assert_eq!(second.await.unwrap(), 409, "the aborted waiter is told so");
    assert_eq!(api.tput(&t3, "x", &json!(2)).await.status(), 200);
    assert_eq!(api.commit(&t3).await.status(), 200);
    assert_eq!(api.value("x").await, Some(json!(2)));
}

#[tokio::test]
async fn a_refresh_is_refused_when_something_read_before_has_changed() {
    let node = Node::start();
    let api = Api::new(&node);
    api.put_ok("x", &json!(0)).await;
    api.put_ok("y", &json!(0)).await;
    let t = api.begin().await;
    assert_eq!(api.get("y", Some(&t), None).await.status(), 200);
    // Both change after t's snapshot.
    let winner = api.put_ok("y", &json!(1)).await;
    api.put_ok("x", &json!(1)).await;
    // Moving t's snapshot to see x=1 would make its read of y=0 a lie: a conflict, now.
    let p = problem(lock_read(&api, &t, "x").await, 409, "conflict").await;
    assert_eq!(p.pointer.as_deref(), Some("y"));
    assert_eq!(p.winner_version, Some(winner));
    // The txn is gone with its lock: others can write x.
    problem(api.commit(&t).await, 409, "txn-aborted").await;
    api.put_ok("x", &json!(2)).await;

    // With nothing stale, a refresh keeps every earlier read valid, and own writes stay.
    let t = api.begin().await;
    assert_eq!(api.get("y", Some(&t), None).await.status(), 200);
    assert_eq!(api.tput(&t, "z", &json!("mine")).await.status(), 200);
    api.put_ok("x", &json!(3)).await;
    let r = lock_read(&api, &t, "x").await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!(3));
    assert_eq!(api.get("z", Some(&t), None).await.json::<Value>().await.unwrap(), json!("mine"));
    assert_eq!(api.get("y", Some(&t), None).await.json::<Value>().await.unwrap(), json!(1));
    assert_eq!(api.tput(&t, "x", &json!(4)).await.status(), 200);
    assert_eq!(api.commit(&t).await.status(), 200);
    assert_eq!(api.value("x").await, Some(json!(4)));
}

#[tokio::test]
async fn bad_locking_reads_are_named_400s() {
    let node = Node::start();
    let api = Api::new(&node);
    api.put_ok("x", &json!(0)).await;
    let no_txn = api.http.get(api.ptr_url("x")).header("X-reSTM-Lock", "update").send().await.unwrap();
    let p = problem(no_txn, 400, "bad-request").await;
    assert!(p.detail.contains("X-reSTM-Txn"), "{}", p.detail);
    let t = api.begin().await;
    let bad = api
        .http
        .get(api.ptr_url("x"))
        .header("X-reSTM-Txn", &t)
        .header("X-reSTM-Lock", "share")
        .send()
        .await
        .unwrap();
    let p = problem(bad, 400, "bad-request").await;
    assert!(p.detail.contains("update"), "{}", p.detail);
    // A read-only transaction takes no locks.
    let ro = api.begin_read_only().await;
    let r = lock_read(&api, &ro, "x").await;
    assert_eq!(r.status().as_u16() / 100, 4, "{}", r.status());
    // Nothing changed.
    assert_eq!(api.value("x").await, Some(json!(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_clients_incrementing_one_pointer_with_locking_reads_never_conflict() {
    let node = Node::start_with(&["--lock-timeout", "10s"]);
    let api = Api::new(&node);
    api.put_ok("hot", &json!(0)).await;
    let mut clients = Vec::new();
    for _ in 0..16 {
        let api = Api::new(&node);
        clients.push(tokio::spawn(async move {
            for _ in 0..25 {
                let t = api.begin().await;
                let r = lock_read(&api, &t, "hot").await;
                assert_eq!(r.status(), 200);
                let n = r.json::<Value>().await.unwrap().as_i64().unwrap();
                assert_eq!(api.tput(&t, "hot", &json!(n + 1)).await.status(), 200);
                let c = api.commit(&t).await;
                assert_eq!(c.status(), 200, "{}", c.text().await.unwrap());
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(api.value("hot").await, Some(json!(400)));
}
