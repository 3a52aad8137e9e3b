//! The SDK against a real node: `transact` retries conflicts until a contended bank keeps
//! its total, gives up with the conflict's details when its budget runs out, aborts a
//! dropped transaction at once, reads snapshots now and in the past, carries the caller's
//! trace, and commits one-shots.

use std::time::{Duration, Instant};

use restm_client::{Client, Error, RetryPolicy};
use restm_tests::Node;

fn client(node: &Node) -> Client {
    Client::new(&node.base).unwrap()
}

#[tokio::test]
async fn transact_retries_conflicts_and_a_contended_bank_keeps_its_total() {
    let node = Node::start();
    let c = client(&node);
    const ACCOUNTS: usize = 5;
    for i in 0..ACCOUNTS {
        c.one_shot().put(&format!("acct/{i}"), &100i64).unwrap().commit().await.unwrap();
    }
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..8 {
        let c = c.clone();
        let attempts = attempts.clone();
        workers.push(tokio::spawn(async move {
            for k in 0..25 {
                let (from, to) = ((w + k) % ACCOUNTS, (w + 2 * k + 1) % ACCOUNTS);
                if from == to {
                    continue;
                }
                let attempts = attempts.clone();
                c.transact(move |tx| {
                    let attempts = attempts.clone();
                    async move {
                        attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let a: i64 = tx.get(&format!("acct/{from}")).await?.unwrap_or(0);
                        let b: i64 = tx.get(&format!("acct/{to}")).await?.unwrap_or(0);
                        tx.put(&format!("acct/{from}"), &(a - 7)).await?;
                        tx.put(&format!("acct/{to}"), &(b + 7)).await?;
                        Ok(())
                    }
                })
                .await
                .unwrap();
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let total = c
        .read_only(|tx| async move {
            let mut sum = 0i64;
            for i in 0..ACCOUNTS {
                sum += tx.get::<i64>(&format!("acct/{i}")).await?.unwrap();
            }
            Ok(sum)
        })
        .await
        .unwrap();
    assert_eq!(total, 100 * ACCOUNTS as i64);
    let n = attempts.load(std::sync::atomic::Ordering::Relaxed);
    assert!(n > 8 * 20, "contention on 5 accounts must have caused retries ({n} attempts)");
}

#[tokio::test]
async fn when_the_budget_runs_out_the_error_names_the_conflict() {
    let node = Node::start();
    let c = client(&node).with_retry(RetryPolicy { max_attempts: 3, ..RetryPolicy::default() });
    c.one_shot().put("hot", &0).unwrap().commit().await.unwrap();
    let other = client(&node);
    let err = c
        .transact(|tx| {
            let other = other.clone();
            async move {
                let v: i64 = tx.get("hot").await?.unwrap();
                // Someone else always commits in between: every attempt loses.
                other.one_shot().put("hot", &(v + 100)).unwrap().commit().await?;
                tx.put("hot", &(v + 1)).await?;
                Ok(())
            }
        })
        .await
        .unwrap_err();
    let Error::RetriesExhausted { attempts, last, .. } = &err else { panic!("{err}") };
    assert_eq!(*attempts, 3);
    assert_eq!(last.code, "conflict");
    assert_eq!(last.pointer.as_deref(), Some("hot"));
    assert!(last.winner_txn.is_some() && last.winner_version.is_some(), "{last:?}");
    assert_eq!(c.get::<i64>("hot").await.unwrap(), Some(300));
}

#[tokio::test]
async fn other_errors_abort_without_retrying_and_release_locks() {
    let node = Node::start();
    let c = client(&node);
    let mut runs = 0;
    let err = c
        .transact(|tx| {
            runs += 1;
            async move {
                tx.put("x", &1).await?;
                Err::<(), _>(Error::User("changed my mind".into()))
            }
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::User(_)));
    assert_eq!(runs, 1);
    assert_eq!(c.get::<i64>("x").await.unwrap(), None);
    let locks: serde_json::Value =
        reqwest::get(format!("{}/locks", node.base)).await.unwrap().json().await.unwrap();
    assert_eq!(locks["locks"], serde_json::json!([]));
}

#[tokio::test]
async fn a_dropped_transaction_is_aborted_at_once() {
    let node = Node::start();
    let c = client(&node);
    {
        let tx = c.begin(false, None).await.unwrap();
        tx.put("held", &1).await.unwrap();
        // Dropped here without commit or abort.
    }
    let started = Instant::now();
    loop {
        let locks: serde_json::Value =
            reqwest::get(format!("{}/locks", node.base)).await.unwrap().json().await.unwrap();
        if locks["locks"] == serde_json::json!([]) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the lock was never released: {locks}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Well before the 30 s lease would have freed it.
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(c.get::<i64>("held").await.unwrap(), None);
}

#[tokio::test]
async fn snapshots_now_and_in_the_past_and_one_shots() {
    let node = Node::start();
    let c = client(&node);
    let v1 = c.one_shot().put("cfg", &"one").unwrap().commit().await.unwrap();
    c.one_shot()
        .check("cfg", Some(v1))
        .put("cfg", &"two")
        .unwrap()
        .put("log", &1)
        .unwrap()
        .commit()
        .await
        .unwrap();
    // A failed check is a conflict naming the pointer, and changes nothing.
    let err = c.one_shot().check("cfg", Some(v1)).delete("cfg").commit().await.unwrap_err();
    assert_eq!(err.problem().map(|p| p.code.as_str()), Some("conflict"));
    assert_eq!(err.problem().and_then(|p| p.pointer.as_deref()), Some("cfg"));
    let past = c.read_at(&v1.to_string(), |tx| async move { tx.get::<String>("cfg").await }).await.unwrap();
    assert_eq!(past.as_deref(), Some("one"));
    let now = c.read_only(|tx| async move { tx.get::<String>("cfg").await }).await.unwrap();
    assert_eq!(now.as_deref(), Some("two"));
    // A read-only snapshot refuses writes with the node's problem.
    let err = c.read_only(|tx| async move { tx.put("cfg", &"three").await }).await.unwrap_err();
    assert_eq!(err.problem().map(|p| p.code.as_str()), Some("read-only"));
    assert!(!err.is_retryable());
    assert_eq!(c.get::<String>("cfg").await.unwrap().as_deref(), Some("two"));
}

#[tokio::test]
async fn a_transaction_is_one_trace_whose_id_the_client_knows() {
    let node = Node::start();
    let c = client(&node);
    let (id, trace) = c
        .transact(|tx| async move {
            tx.put("t", &1).await?;
            Ok((tx.id().to_string(), tx.trace_id().to_string()))
        })
        .await
        .unwrap();
    assert_eq!(trace.len(), 32);
    let status: serde_json::Value =
        reqwest::get(format!("{}/txn/{id}", node.base)).await.unwrap().json().await.unwrap();
    assert_eq!(status["trace_id"].as_str(), Some(trace.as_str()));
    let history: serde_json::Value =
        reqwest::get(format!("{}/ptr/t/history", node.base)).await.unwrap().json().await.unwrap();
    assert_eq!(history["versions"][0]["trace_id"].as_str(), Some(trace.as_str()));
}

#[tokio::test]
async fn a_node_that_cannot_be_reached_is_a_transport_error() {
    let port = restm_tests::free_port();
    let c = Client::new(format!("http://127.0.0.1:{port}")).unwrap();
    let err = c.get::<i64>("x").await.unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn with_ca_trusts_a_private_certificate_and_new_does_not() {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let dir = restm_tests::temp_dir("sdk-tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let node = Node::start_with(&["--tls-cert", &cert_s, "--tls-key", &key_s]);
    let https = format!("https://127.0.0.1:{}", node.port);

    let c = Client::with_ca(&https, made.cert.pem().as_bytes()).unwrap();
    c.one_shot().put("sdk-tls", &"private ca").unwrap().commit().await.unwrap();
    let got = c.read_only(|tx| async move { tx.get::<String>("sdk-tls").await }).await.unwrap();
    assert_eq!(got.as_deref(), Some("private ca"));

    // The system's roots do not know the certificate: the handshake fails.
    let stranger = Client::new(&https).unwrap();
    let err = stranger.read_only(|tx| async move { tx.get::<String>("sdk-tls").await }).await.unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err}");
    // A bundle that is not PEM is named, not accepted.
    let bad = Client::with_ca(&https, b"not a certificate").unwrap_err();
    assert!(matches!(bad, Error::Config(_)), "{bad}");
    let _ = std::fs::remove_dir_all(dir);
}
