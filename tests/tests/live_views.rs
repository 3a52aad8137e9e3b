//! The live JSON views for the explorer: `GET /txns` and `GET /locks`.

use std::time::Duration;

use restm_shared::{ActiveTxns, Locks};
use restm_tests::{Api, Node};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_show_holders_and_waiters_and_txns_show_the_oldest() {
    let node = Node::start_with(&["--lock-timeout", "3s"]);
    let api = Api::new(&node);
    let empty: Locks = api.http.get(api.url("/locks")).send().await.unwrap().json().await.unwrap();
    assert!(empty.locks.is_empty());
    let a = api.begin().await;
    api.tput(&a, "v/x", &json!(1)).await;
    api.tput(&a, "v/y", &json!(1)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let b = api.begin().await;
    let waiter = {
        let api = api.clone();
        let b = b.clone();
        tokio::spawn(async move { api.tput(&b, "v/x", &json!(2)).await.status() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let locks: Locks = api.http.get(api.url("/locks")).send().await.unwrap().json().await.unwrap();
    assert_eq!(locks.locks.len(), 2, "{locks:?}");
    let x = &locks.locks[0];
    assert_eq!(x.ptr, "v/x", "the contended lock comes first");
    assert_eq!(x.holder_txn, a);
    assert_eq!(x.waiters.len(), 1);
    assert_eq!(x.waiters[0].txn, b);
    assert!(x.waiters[0].waiting_ms >= 100);
    assert_eq!(locks.locks[1].ptr, "v/y");
    assert!(locks.locks[1].waiters.is_empty());
    let txns: ActiveTxns = api.http.get(api.url("/txns")).send().await.unwrap().json().await.unwrap();
    assert_eq!(txns.txns.len(), 2);
    assert_eq!(txns.oldest.as_deref(), Some(a.as_str()));
    assert_eq!(txns.txns[0].locks, vec!["v/x".to_string(), "v/y".to_string()]);
    assert!(txns.txns[0].age_ms >= txns.txns[1].age_ms);
    api.abort(&a).await;
    assert_eq!(waiter.await.unwrap(), 200);
    let locks: Locks = api.http.get(api.url("/locks")).send().await.unwrap().json().await.unwrap();
    assert_eq!(locks.locks.len(), 1);
    assert_eq!(locks.locks[0].holder_txn, b);
    assert!(locks.locks[0].waiters.is_empty());
    assert_eq!(api.commit(&b).await.status(), 200);
    let txns: ActiveTxns = api.http.get(api.url("/txns")).send().await.unwrap().json().await.unwrap();
    assert!(txns.txns.is_empty() && txns.oldest.is_none());
}
