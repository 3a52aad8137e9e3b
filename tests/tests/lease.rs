//! Leases: an abandoned transaction is aborted and its locks freed within its timeout;
//! a transaction that keeps talking keeps its lease.

use std::time::{Duration, Instant};

use restm_tests::{Api, Node, problem};
use serde_json::json;

#[tokio::test]
async fn an_abandoned_txn_frees_its_lock_within_its_lease() {
    let node = Node::start_with(&["--lock-timeout", "50ms"]);
    let api = Api::new(&node);
    let r = api.begin_with(json!({"timeout_ms": 400}), None).await;
    let t: restm_shared::BeginResponse = r.json().await.unwrap();
    let start = Instant::now();
    assert_eq!(api.tput(&t.txn, "held", &json!("abandoned")).await.status(), 200);
    // The client goes silent. Another writer retries until the lock frees.
    let freed_after = loop {
        let r = api.put("held", &json!("next")).await;
        if r.status() == 200 {
            break start.elapsed();
        }
        problem(r, 409, "lock-timeout").await;
        assert!(start.elapsed() < Duration::from_secs(5), "the lock never freed");
    };
    assert!(freed_after >= Duration::from_millis(350), "freed too early: {freed_after:?}");
    assert!(freed_after < Duration::from_millis(400 + 400), "freed too late: {freed_after:?}");
    let p = problem(api.commit(&t.txn).await, 409, "txn-aborted").await;
    assert!(p.detail.contains("lease"), "{}", p.detail);
    assert_eq!(api.value("held").await, Some(json!("next")));
}

#[tokio::test]
async fn requests_renew_the_lease() {
    let node = Node::start();
    let api = Api::new(&node);
    let r = api.begin_with(json!({"timeout_ms": 300}), None).await;
    let t: restm_shared::BeginResponse = r.json().await.unwrap();
    api.tput(&t.txn, "k", &json!(1)).await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(api.get("k", Some(&t.txn), None).await.status(), 200);
    }
    assert_eq!(api.commit(&t.txn).await.status(), 200, "800 ms of activity kept a 300 ms lease alive");
}
