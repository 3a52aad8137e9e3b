//! Garbage collection against a real node: the watermark (retention, the oldest active
//! transaction, pins), pruning in memory and on disk (surviving a restart), `410 gone`
//! below the horizon on every kind of read, pins that hold history until they expire, and
//! deleted pointers that disappear.

use std::time::{Duration, Instant};

use restm_shared::{BeginResponse, GcStatus, HistoryPage, PinView, Pins};
use restm_tests::{Api, Node, problem};
use serde_json::json;

async fn gc(api: &Api) -> GcStatus {
    api.http.get(api.url("/gc")).send().await.unwrap().json().await.unwrap()
}

/// Polls `/gc` until `done` holds (at most 10 s).
async fn until(api: &Api, what: &str, done: impl Fn(&GcStatus) -> bool) -> GcStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = gc(api).await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn history(api: &Api, ptr: &str) -> Vec<u64> {
    let r = api.http.get(format!("{}/history", api.ptr_url(ptr))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json::<HistoryPage>().await.unwrap().versions.iter().map(|v| v.version).collect()
}

async fn value_at(api: &Api, ptr: &str, at: u64) -> reqwest::Response {
    api.get(ptr, None, Some(&at.to_string())).await
}

/// Polls `req` until its answer's status is `status` (at most 5 s), and answers it. On a
/// cluster each replica collects its own garbage: the member whose `/gc` said it is done
/// may not be the one a read is served by, which follows within a pass or two.
async fn until_status<F, Fut>(status: u16, what: &str, req: F) -> reqwest::Response
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = req().await;
        if r.status() == status || Instant::now() >= deadline {
            return r;
        }
        assert!(r.status().is_success(), "{what}: {} {}", r.status(), r.text().await.unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn gone(resp: reqwest::Response, horizon: u64) {
    let header = resp.headers().get("x-restm-horizon").map(|v| v.to_str().unwrap().to_string());
    let p = problem(resp, 410, "gone").await;
    assert_eq!(p.horizon, Some(horizon));
    assert_eq!(header, Some(horizon.to_string()));
}

const FAST_GC: [&str; 6] = ["--retention", "300ms", "--gc-interval", "50ms", "--hot-versions", "2"];

#[tokio::test]
async fn a_long_txn_holds_the_watermark_and_a_read_at_the_watermark_stays_right() {
    let mut node = Node::start_with(&FAST_GC);
    let api = Api::new(&node);
    let mut versions = Vec::new();
    for i in 1..=3 {
        versions.push(api.put_ok("a", &json!(i)).await);
    }
    let r = api.begin_with(json!({"timeout_ms": 60_000}), None).await;
    let t: BeginResponse = r.json().await.unwrap();
    for i in 4..=6 {
        versions.push(api.put_ok("a", &json!(i)).await);
    }
    // Retention alone would collect everything but the latest; the txn holds it at its snapshot.
    let s = until(&api, "the horizon to reach the txn's snapshot", |s| s.horizon == t.read_version).await;
    assert_eq!(s.held_by.kind, "txn");
    assert_eq!(s.held_by.id.as_deref(), Some(t.txn.as_str()));
    until(&api, "a pruning pass", |s| s.versions_pruned_disk >= 2).await;
    // Exactly at the watermark: the newest version at or below it, which GC kept.
    let r = value_at(&api, "a", t.read_version).await;
    assert_eq!(r.headers()["x-restm-version"], versions[2].to_string().as_str());
    assert_eq!(r.json::<serde_json::Value>().await.unwrap(), json!(3));
    let below = until_status(410, "below the watermark", || value_at(&api, "a", t.read_version - 1)).await;
    gone(below, t.read_version).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while history(&api, "a").await != versions[2..] && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(history(&api, "a").await, versions[2..].to_vec(), "v1 and v2 are gone, v3 is kept");
    // The txn itself still reads its snapshot.
    let r = api.get("a", Some(&t.txn), None).await;
    assert_eq!(r.json::<serde_json::Value>().await.unwrap(), json!(3));
    // When the txn ends, pruning resumes up to the latest.
    assert_eq!(api.abort(&t.txn).await.status(), 200);
    let s = until(&api, "the watermark to move on", |s| s.horizon >= versions[5]).await;
    assert_ne!(s.held_by.kind, "txn");
    let deadline = Instant::now() + Duration::from_secs(10);
    while history(&api, "a").await != vec![versions[5]] {
        assert!(
            Instant::now() < deadline,
            "history never shrank to the latest: {:?}",
            history(&api, "a").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The horizon is durable: restarted with a retention that alone would keep everything,
    // the node still refuses what it pruned instead of answering from what is left.
    let horizon = gc(&api).await.horizon;
    if restm_tests::test_nodes() > 1 {
        // `/gc` answers the first group's leader's horizon; the member restarted below
        // learns that the entry carrying it committed with the leader's next heartbeat.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    node.kill();
    let again = Node::start_in(node.data_dir.clone(), &["--retention", "1h", "--gc-interval", "50ms"]);
    let api = Api::new(&again);
    // (A pass may have run between the /gc above and the kill: at least that far.)
    let restarted = gc(&api).await.horizon;
    assert!(restarted >= horizon, "the horizon went back from {horizon} to {restarted}");
    gone(value_at(&api, "a", versions[4]).await, restarted).await;
    assert_eq!(history(&api, "a").await, vec![versions[5]]);
    assert_eq!(api.value("a").await, Some(json!(6)));
}

#[tokio::test]
async fn every_kind_of_read_before_the_horizon_is_gone() {
    let node = Node::start_with(&FAST_GC);
    let api = Api::new(&node);
    let v1 = api.put_ok("g/x", &json!(1)).await;
    api.put_ok("g/x", &json!(2)).await;
    let s = until(&api, "the horizon to pass v1", |s| s.horizon > v1).await;
    let h = gc(&api).await.horizon;
    assert!(h >= s.horizon);
    let at = v1.to_string();
    let resp = value_at(&api, "g/x", v1).await;
    let horizon = resp.headers()["x-restm-horizon"].to_str().unwrap().parse::<u64>().unwrap();
    assert!(horizon > v1);
    problem(resp, 410, "gone").await;
    for resp in [
        api.http.get(api.url("/ptr?prefix=g/")).header("X-reSTM-At", &at).send().await.unwrap(),
        api.http
            .get(format!("{}/history", api.ptr_url("g/x")))
            .header("X-reSTM-At", &at)
            .send()
            .await
            .unwrap(),
        api.begin_with(json!({}), Some(&at)).await,
        api.http.post(api.url("/pins")).json(&json!({"at": at, "ttl": "1m"})).send().await.unwrap(),
        api.get("g/x", None, Some("-1h")).await,
    ] {
        assert!(resp.headers().contains_key("x-restm-horizon"));
        problem(resp, 410, "gone").await;
    }
    // The latest state is never refused, and nothing was lost.
    assert_eq!(api.value("g/x").await, Some(json!(2)));
}

#[tokio::test]
async fn a_pin_holds_history_until_it_expires() {
    let mut node = Node::start_with(&FAST_GC);
    let api = Api::new(&node);
    let v1 = api.put_ok("p", &json!("kept")).await;
    let r = api
        .http
        .post(api.url("/pins"))
        .json(&json!({"at": v1.to_string(), "ttl": "2s", "note": "audit"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let pin: PinView = r.json().await.unwrap();
    assert_eq!((pin.version, pin.note.as_str()), (v1, "audit"));
    api.put_ok("p", &json!("newer")).await;
    api.put_ok("p", &json!("newest")).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let s = gc(&api).await;
    assert_eq!((s.held_by.kind.as_str(), s.held_by.id.as_deref()), ("pin", Some(pin.id.as_str())));
    assert_eq!(s.horizon, v1);
    let pins: Pins = api.http.get(api.url("/pins")).send().await.unwrap().json().await.unwrap();
    assert_eq!(pins.pins.len(), 1);
    assert!(pins.pins[0].holds_watermark);
    assert!(pins.pins[0].beyond_retention_ms > 0, "{:?}", pins.pins[0]);
    let r = value_at(&api, "p", v1).await;
    assert_eq!(r.json::<serde_json::Value>().await.unwrap(), json!("kept"));
    // Pins survive a restart.
    node.restart();
    let api = Api::new(&node);
    let r = api.http.get(api.url(&format!("/pins/{}", pin.id))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Expiry releases the history.
    let s = until(&api, "the pin to expire", |s| s.pins == 0 && s.horizon > v1).await;
    assert_ne!(s.held_by.kind, "pin");
    // The horizon moves on every pass (retention 300 ms, a pass every 50 ms), so the one the
    // refusal names lies between the pin's version and the one /gc shows after it.
    let refused = until_status(410, "the pinned version", || value_at(&api, "p", v1)).await;
    let named: u64 = refused.headers()["x-restm-horizon"].to_str().unwrap().parse().unwrap();
    let after = gc(&api).await.horizon;
    assert!(v1 < named && named <= after, "{v1} < {named} <= {after}");
    gone(refused, named).await;
    problem(api.http.get(api.url(&format!("/pins/{}", pin.id))).send().await.unwrap(), 404, "not-found")
        .await;
    // A pin can also be removed by hand, once.
    let r = api.http.post(api.url("/pins")).json(&json!({"ttl": "1h"})).send().await.unwrap();
    let pin: PinView = r.json().await.unwrap();
    let url = api.url(&format!("/pins/{}", pin.id));
    assert_eq!(api.http.delete(&url).send().await.unwrap().status(), 200);
    problem(api.http.delete(&url).send().await.unwrap(), 404, "not-found").await;
}

#[tokio::test]
async fn bad_pins_are_refused_and_change_nothing() {
    let node = Node::start();
    let api = Api::new(&node);
    // A fresh node's watermark is a retention behind now, not at the epoch.
    let fresh = gc(&api).await;
    assert!(fresh.watermark_lag_ms <= fresh.retention_ms + 60_000, "{fresh:?}");
    for (body, why) in [
        (json!({"ttl": "forever"}), "not a duration"),
        (json!({"ttl": "0s"}), "above 0"),
        (json!({"ttl": "31days"}), "at most 30 days"),
        (json!({"ttl": "1h", "at": "tomorrow"}), "X-reSTM-At"),
        (json!({"ttl": "1h", "at": "99999999999999999999"}), "too large"),
        (json!({"ttl": "1h", "when": "now"}), "unknown field"),
        (json!({"at": "-1s"}), "missing field"),
        (json!({"ttl": "1h", "note": "x".repeat(2000)}), "at most 1024"),
    ] {
        let r = api.http.post(api.url("/pins")).json(&body).send().await.unwrap();
        let p = problem(r, 400, "bad-request").await;
        assert!(p.detail.contains(why), "{body}: {}", p.detail);
    }
    let r = api.http.post(api.url("/pins")).body("not json").send().await.unwrap();
    problem(r, 400, "bad-request").await;
    let pins: Pins = api.http.get(api.url("/pins")).send().await.unwrap().json().await.unwrap();
    assert!(pins.pins.is_empty());
}

#[tokio::test]
async fn a_deleted_pointer_disappears_once_its_tombstone_is_below_the_watermark() {
    let node = Node::start_with(&FAST_GC);
    let api = Api::new(&node);
    api.put_ok("d/x", &json!(1)).await;
    api.put_ok("d/keep", &json!(1)).await;
    let r = api.http.delete(api.ptr_url("d/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    until(&api, "the pointer's removal", |s| s.pointers_removed >= 1).await;
    let removed = || async { api.http.get(format!("{}/history", api.ptr_url("d/x"))).send().await.unwrap() };
    problem(until_status(404, "the removed pointer's history", removed).await, 404, "not-found").await;
    let list: restm_shared::ListPage =
        api.http.get(api.url("/ptr?prefix=d/")).send().await.unwrap().json().await.unwrap();
    assert_eq!(list.pointers.iter().map(|p| p.ptr.as_str()).collect::<Vec<_>>(), vec!["d/keep"]);
    // A new life starts clean.
    let v = api.put_ok("d/x", &json!(2)).await;
    assert_eq!(history(&api, "d/x").await, vec![v]);
    let metrics = api.http.get(api.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("restm_gc_pointers_removed_total 1"), "{metrics}");
    assert!(metrics.contains("restm_gc_versions_pruned_total{where=\"disk\"}"), "{metrics}");
    assert!(metrics.contains("restm_gc_watermark_holder{"), "{metrics}");
    assert!(metrics.contains("restm_gc_watermark_lag_seconds"), "{metrics}");
}

#[test]
fn the_soak_bench_writes_and_samples_the_node() {
    let node = Node::start_with(&FAST_GC);
    let out_file = restm_tests::temp_dir("soak").join("soak.json");
    std::fs::create_dir_all(out_file.parent().unwrap()).unwrap();
    let out = std::process::Command::new(restm_tests::restm_bin())
        .args(["bench", "soak", "--target", &node.base, "--duration", "2s", "--sample", "500ms"])
        .args(["--cold", "50", "--clients", "4", "--json", out_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let samples: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert!(samples.len() >= 4, "{samples:?}");
    let last = samples.last().unwrap();
    assert!(last["writes"].as_u64().unwrap() > 0);
    assert_eq!(last["errors"].as_u64(), Some(0));
    assert!(last["rss_bytes"].as_f64().unwrap() > 0.0);
    assert!(last["gc_versions_pruned_disk"].as_f64().unwrap() > 0.0, "a 300 ms retention prunes: {last}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("writes in"), "{stdout}");
}
