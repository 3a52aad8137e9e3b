//! Memory pressure against a real node with a small `--memory-budget`: at high pressure
//! retention shrinks to the oldest snapshot and old versions leave memory (still readable
//! from disk); at critical, new read-write transactions get `503` + `Retry-After` while
//! reads, read-only transactions and deletes go on, until memory is back. Every level
//! change is a `pressure` event and a metric.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use restm_shared::{BeginResponse, Event, GcStatus};
use restm_tests::{Api, Node, problem};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn gc(api: &Api) -> GcStatus {
    api.http.get(api.url("/gc")).send().await.unwrap().json().await.unwrap()
}

async fn until_level(api: &Api, level: &str) -> GcStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = gc(api).await;
        if s.pressure == level {
            return s;
        }
        assert!(Instant::now() < deadline, "pressure never became {level}: {s:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The reasons of `pressure` events from the first (replayed from the node's buffer) up to
/// the first that starts with `last`.
async fn pressure_events(node: &Node, last: &str) -> Vec<String> {
    let url = format!("ws://127.0.0.1:{}/events?kinds=pressure&since=0", node.port);
    let mut ws = tokio_tungstenite::connect_async(url).await.unwrap().0;
    let mut out: Vec<String> = Vec::new();
    while !out.last().is_some_and(|e| e.starts_with(last)) {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            let e: Event = serde_json::from_str(&t).unwrap();
            out.push(e.reason.unwrap_or_default());
        }
    }
    out
}

const BUDGET: [&str; 6] = ["--memory-budget", "256KiB", "--gc-interval", "25ms", "--retention", "1h"];

#[tokio::test]
async fn high_pressure_shrinks_retention_and_evicts_old_versions_to_disk() {
    let node = Node::start_with(&BUDGET);
    let api = Api::new(&node);
    assert_eq!(gc(&api).await.memory_budget_bytes, 256 * 1024);
    let t: BeginResponse = api.begin_with(json!({"timeout_ms": 60_000}), None).await.json().await.unwrap();
    // Eight hot versions of 27 kB: about 85 % of the budget.
    let mut versions = Vec::new();
    for i in 0..8 {
        versions.push(api.put_ok("big", &json!(format!("{i}:{}", "x".repeat(27_000)))).await);
    }
    let events = pressure_events(&node, "low:").await;
    assert!(events[0].starts_with("high:"), "{events:?}");
    assert_eq!(events.len(), 2, "{events:?}");
    let s = until_level(&api, "low").await;
    assert!(s.memory_bytes < 64 * 1024, "old versions left memory: {s:?}");
    // Retention shrank, but only down to the open transaction's snapshot: nothing it (or a
    // read after it) can see was collected; the evicted versions are read from disk.
    assert_eq!(s.horizon, t.read_version);
    let r = api.get("big", None, Some(&versions[2].to_string())).await;
    assert_eq!(r.status(), 200);
    assert!(r.json::<String>().await.unwrap().starts_with("2:"));
    let metrics = api.http.get(api.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("restm_memory_pressure_level 0"), "{metrics}");
    assert!(metrics.contains("restm_memory_budget_bytes 262144"), "{metrics}");
}

#[tokio::test]
async fn critical_pressure_refuses_new_writes_until_deletes_free_memory() {
    let node = Node::start_with(&BUDGET);
    let api = Api::new(&node);
    // Distinct pointers of 8 kB: their latest versions cannot be evicted or collected.
    let mut written = Vec::new();
    let refused = loop {
        assert!(written.len() < 100, "never refused");
        let ptr = format!("fill/{}", written.len());
        let r = api.put(&ptr, &json!("y".repeat(8_000))).await;
        if r.status() == 503 {
            break r;
        }
        assert_eq!(r.status(), 200);
        written.push(ptr);
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(refused.headers()["retry-after"], "1");
    problem(refused, 503, "overloaded").await;
    until_level(&api, "critical").await;
    problem(api.begin_with(json!({}), None).await, 503, "overloaded").await;
    problem(api.one_shot(&json!({"writes": [{"ptr": "n", "value": 1}]})).await, 503, "overloaded").await;
    // Reads and read-only transactions go on; nothing was lost.
    assert_eq!(api.begin_with(json!({"read_only": true}), None).await.status(), 201);
    assert_eq!(api.value(&written[0]).await, Some(json!("y".repeat(8_000))));
    // Deletes are allowed, and once collected they bring memory back.
    for ptr in &written {
        let r = api.http.delete(api.ptr_url(ptr)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    // Under pressure only the latest version stays in memory, and a tombstone is small.
    until_level(&api, "low").await;
    assert_eq!(api.begin_with(json!({}), None).await.status(), 201);
    api.put_ok("n", &json!(1)).await;
    let events = pressure_events(&node, "low:").await;
    assert!(events.iter().any(|e| e.starts_with("critical:")), "{events:?}");
}

#[test]
fn bad_budgets_are_refused_at_start() {
    for bad in ["lots", "12XB", "99999999999999999999GiB"] {
        let out = std::process::Command::new(restm_tests::restm_bin())
            .args(["serve", "--memory-budget", bad, "--data-dir", "/nonexistent/never"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--memory-budget"), "{bad}: {err}");
    }
}

/// The node's resident set, from its own gauge.
async fn resident_bytes(api: &Api) -> f64 {
    let text = api.http.get(api.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("restm_process_resident_bytes "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stored_value_costs_its_size_not_the_request_buffer_it_arrived_in() {
    let node = Node::start();
    let api = Api::new(&node);
    api.put_ok("warm", &json!(0)).await;
    let before = resident_bytes(&api).await;
    // 16k small versions stay in memory (2000 pointers x the 8 hot versions). Stored as
    // slices of hyper's read buffers they held about 8 KiB each: over 120 MiB.
    let mut writers = Vec::new();
    for w in 0..16u64 {
        let api = Api::new(&node);
        writers.push(tokio::spawn(async move {
            for i in 0..1000u64 {
                let r = api.put(&format!("small/{}", (w * 1000 + i) % 2000), &json!(i)).await;
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let grown = (resident_bytes(&api).await - before) / (1024.0 * 1024.0);
    assert!(grown < 60.0, "16k versions of a few bytes grew the node by {grown:.0} MiB");
}
