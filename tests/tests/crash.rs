//! Crash recovery: SIGKILL under concurrent load, restart on the same data directory, and
//! every acknowledged commit is there whole (including multi-pointer one-shot transactions),
//! and no partial one. Several rounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use restm_tests::{Api, Node};
use serde_json::{Value, json};

const WRITERS: u64 = 6;

#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    acked: Option<u64>,
    attempted: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_commits_survive_sigkill() {
    let mut node = Node::start();
    let mut next = vec![1u64; WRITERS as usize];
    for round in 0..4u64 {
        let api = Api::new(&node);
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let api = api.clone();
            let stop = stop.clone();
            let start = next[w as usize];
            tasks.push(tokio::spawn(async move {
                let mut p = Progress { acked: None, attempted: start - 1 };
                let mut n = start;
                while !stop.load(Ordering::Relaxed) {
                    p.attempted = n;
                    // Odd writers use one-shot multi-pointer txns, even ones interactive txns.
                    let ok = if w % 2 == 1 {
                        let body = json!({"writes": [
                            {"ptr": format!("w{w}/a"), "value": n},
                            {"ptr": format!("w{w}/b"), "value": n},
                            {"ptr": format!("w{w}/c"), "value": {"n": n, "pad": "x".repeat(200)}},
                        ]});
                        match api.http.post(api.url("/txn")).json(&body).send().await {
                            Ok(r) => r.status() == 200,
                            Err(_) => break,
                        }
                    } else {
                        interactive(&api, w, n).await.unwrap_or(false)
                    };
                    if ok {
                        p.acked = Some(n);
                    }
                    n += 1;
                }
                p
            }));
        }
        tokio::time::sleep(Duration::from_millis(400 + 150 * round)).await;
        node.kill();
        stop.store(true, Ordering::Relaxed);
        let mut progress = Vec::new();
        for t in tasks {
            progress.push(t.await.unwrap());
        }
        node.restart();
        let api = Api::new(&node);
        let mut total_acked = 0;
        for w in 0..WRITERS {
            let p = progress[w as usize];
            let a = api.value(&format!("w{w}/a")).await;
            let b = api.value(&format!("w{w}/b")).await;
            let c = api.value(&format!("w{w}/c")).await.map(|c| c["n"].clone());
            assert_eq!(a, b, "round {round} writer {w}: torn commit");
            assert_eq!(a, c, "round {round} writer {w}: torn commit");
            let found = a.as_ref().and_then(Value::as_u64).unwrap_or(0);
            if let Some(acked) = p.acked {
                assert!(found >= acked, "round {round} writer {w}: acknowledged {acked} but found {found}");
                total_acked += 1;
            }
            assert!(found <= p.attempted, "round {round} writer {w}: found {found} never written");
            next[w as usize] = p.attempted + 1;
        }
        assert!(total_acked >= WRITERS / 2, "round {round}: too few commits acknowledged to mean anything");
    }
}

async fn interactive(api: &Api, w: u64, n: u64) -> Result<bool, reqwest::Error> {
    let r = api.http.post(api.url("/txn/begin")).send().await?;
    let t: restm_shared::BeginResponse = r.json().await?;
    for ptr in ["a", "b"] {
        let r = api
            .http
            .put(api.ptr_url(&format!("w{w}/{ptr}")))
            .header("X-reSTM-Txn", &t.txn)
            .json(&json!(n))
            .send()
            .await?;
        if r.status() != 200 {
            return Ok(false);
        }
    }
    let r = api
        .http
        .put(api.ptr_url(&format!("w{w}/c")))
        .header("X-reSTM-Txn", &t.txn)
        .json(&json!({"n": n}))
        .send()
        .await?;
    if r.status() != 200 {
        return Ok(false);
    }
    Ok(api.http.post(api.url(&format!("/txn/{}/commit", t.txn))).send().await?.status() == 200)
}
