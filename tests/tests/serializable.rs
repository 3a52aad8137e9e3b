//! Serializability under concurrency: the bank invariant with concurrent snapshot audits,
//! and the anomalies serializable isolation rules out (lost update, write skew).

use std::time::Duration;

use restm_tests::{Api, Node};
use serde_json::{Value, json};

const ACCOUNTS: usize = 20;
const START: i64 = 100;

fn acct(i: usize) -> String {
    format!("acct/{i:02}")
}

/// Jittered backoff before retrying a transaction that lost a conflict.
async fn backoff(attempt: u32, seed: u64) {
    let base = 2u64 << attempt.min(6);
    let jitter = (seed.wrapping_mul(6364136223846793005).wrapping_add(attempt as u64) >> 33) % base.max(1);
    tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
}

async fn get_i64(api: &Api, txn: &str, ptr: &str) -> Result<i64, u16> {
    let r = api.get(ptr, Some(txn), None).await;
    match r.status().as_u16() {
        200 => Ok(r.json::<Value>().await.unwrap().as_i64().unwrap()),
        s => Err(s),
    }
}

/// One transfer as an interactive transaction; Err on a 409 (the txn is then aborted).
async fn transfer(api: &Api, from: usize, to: usize, amount: i64) -> Result<bool, u16> {
    let t = api.begin().await;
    let a = get_i64(api, &t, &acct(from)).await?;
    let b = get_i64(api, &t, &acct(to)).await?;
    if a < amount {
        api.abort(&t).await;
        return Ok(false);
    }
    for (ptr, v) in [(acct(from), a - amount), (acct(to), b + amount)] {
        let r = api.tput(&t, &ptr, &json!(v)).await;
        if r.status() != 200 {
            return Err(r.status().as_u16());
        }
    }
    let r = api.commit(&t).await;
    match r.status().as_u16() {
        200 => Ok(true),
        s => Err(s),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_total_never_changes_and_snapshot_audits_always_balance() {
    let node = Node::start_with(&["--lock-timeout", "100ms"]);
    let api = Api::new(&node);
    for i in 0..ACCOUNTS {
        api.put_ok(&acct(i), &json!(START)).await;
    }
    let total = START * ACCOUNTS as i64;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));

    let mut auditors = Vec::new();
    for kind in 0..2 {
        let api = api.clone();
        let stop = stop.clone();
        auditors.push(tokio::spawn(async move {
            let mut audits = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || audits < 3 {
                let sum: i64 = if kind == 0 {
                    // A read-only transaction reading every account.
                    let t = api.begin_read_only().await;
                    let mut sum = 0;
                    for i in 0..ACCOUNTS {
                        sum += get_i64(&api, &t, &acct(i)).await.expect("read-only reads never conflict");
                    }
                    assert_eq!(api.commit(&t).await.status(), 200);
                    sum
                } else {
                    // One listing is one snapshot too.
                    let page: restm_shared::ListPage = api
                        .http
                        .get(api.url("/ptr?prefix=acct/&limit=1000"))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    assert_eq!(page.pointers.len(), ACCOUNTS);
                    page.pointers.iter().map(|p| p.value.get().parse::<i64>().unwrap()).sum()
                };
                assert_eq!(sum, total, "an audit saw a torn state");
                audits += 1;
            }
            audits
        }));
    }

    let mut clients = Vec::new();
    for c in 0..8u64 {
        let api = api.clone();
        clients.push(tokio::spawn(async move {
            let (mut done, mut retries) = (0, 0);
            for k in 0..25u64 {
                let seed = c * 1000 + k;
                let from = (seed.wrapping_mul(2654435761) % ACCOUNTS as u64) as usize;
                let to = (from + 1 + (seed % (ACCOUNTS as u64 - 1)) as usize) % ACCOUNTS;
                let mut attempt = 0;
                loop {
                    match transfer(&api, from, to, 1 + (seed % 7) as i64).await {
                        Ok(_) => break,
                        Err(409) => {
                            retries += 1;
                            attempt += 1;
                            assert!(attempt < 200, "no progress");
                            backoff(attempt, seed).await;
                        }
                        Err(s) => panic!("unexpected status {s}"),
                    }
                }
                done += 1;
            }
            (done, retries)
        }));
    }
    let mut transfers = 0;
    let mut retries = 0;
    for c in clients {
        let (d, r) = c.await.unwrap();
        transfers += d;
        retries += r;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut audits = 0;
    for a in auditors {
        audits += a.await.unwrap();
    }
    let mut sum = 0;
    for i in 0..ACCOUNTS {
        let v = api.value(&acct(i)).await.unwrap().as_i64().unwrap();
        assert!(v >= 0);
        sum += v;
    }
    assert_eq!(sum, total);
    assert_eq!(transfers, 200);
    eprintln!("bank: {transfers} transfers, {retries} retries, {audits} audits, total {sum}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_lost_updates_under_concurrent_increments() {
    let node = Node::start_with(&["--lock-timeout", "100ms"]);
    let api = Api::new(&node);
    api.put_ok("counter", &json!(0)).await;
    let mut tasks = Vec::new();
    for c in 0..8u64 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..20u64 {
                let mut attempt = 0;
                loop {
                    let t = api.begin().await;
                    let ok = async {
                        let v = get_i64(&api, &t, "counter").await?;
                        let r = api.tput(&t, "counter", &json!(v + 1)).await;
                        if r.status() != 200 {
                            return Err(r.status().as_u16());
                        }
                        match api.commit(&t).await.status().as_u16() {
                            200 => Ok(()),
                            s => Err(s),
                        }
                    }
                    .await;
                    match ok {
                        Ok(()) => break,
                        Err(409) => {
                            attempt += 1;
                            backoff(attempt, c * 100 + k).await;
                        }
                        Err(s) => panic!("status {s}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(api.value("counter").await, Some(json!(160)));
}

#[tokio::test]
async fn write_skew_is_prevented() {
    let node = Node::start();
    let api = Api::new(&node);
    // Two doctors on call; each may go off call only if the other stays on.
    api.put_ok("oncall/alice", &json!(true)).await;
    api.put_ok("oncall/bob", &json!(true)).await;
    let t1 = api.begin().await;
    let t2 = api.begin().await;
    for t in [&t1, &t2] {
        for who in ["alice", "bob"] {
            let r = api.get(&format!("oncall/{who}"), Some(t), None).await;
            assert_eq!(r.json::<Value>().await.unwrap(), json!(true));
        }
    }
    assert_eq!(api.tput(&t1, "oncall/alice", &json!(false)).await.status(), 200);
    assert_eq!(api.tput(&t2, "oncall/bob", &json!(false)).await.status(), 200);
    let c1 = api.commit(&t1).await.status().as_u16();
    let c2 = api.commit(&t2).await.status().as_u16();
    assert!((c1 == 200) != (c2 == 200) || (c1 == 409 && c2 == 409), "at most one may commit: {c1} {c2}");
    assert!(c1 == 409 || c2 == 409);
    let on = [api.value("oncall/alice").await, api.value("oncall/bob").await];
    assert!(on.contains(&Some(json!(true))), "someone must stay on call: {on:?}");
}
