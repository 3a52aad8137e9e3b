//! Reads of the past with `X-reSTM-At`: by version, by RFC 3339 instant, by relative time,
//! and read-only transactions pinned there.

use std::time::Duration;

use restm_tests::{Api, Node, problem};
use serde_json::{Value, json};

fn rfc3339_of_version(v: u64) -> String {
    time_of((v >> 16) as i128)
}

/// Formats epoch milliseconds as RFC 3339 UTC (civil-from-days, no dependency).
fn time_of(ms: i128) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

async fn read_at(api: &Api, ptr: &str, at: &str) -> (u16, Option<Value>) {
    let r = api.get(ptr, None, Some(at)).await;
    let s = r.status().as_u16();
    (s, if s == 200 { Some(r.json().await.unwrap()) } else { None })
}

#[tokio::test]
async fn reads_by_version_time_and_relative_time() {
    let node = Node::start();
    let api = Api::new(&node);
    let mut vs = Vec::new();
    for i in 1..=3 {
        vs.push(api.put_ok("p", &json!({"n": i})).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // By version: exactly at, and between versions.
    for (i, v) in vs.iter().enumerate() {
        assert_eq!(read_at(&api, "p", &v.to_string()).await.1, Some(json!({"n": i + 1})));
        let r = api.get("p", None, Some(&v.to_string())).await;
        assert_eq!(r.headers()["x-restm-version"].to_str().unwrap(), v.to_string());
    }
    assert_eq!(read_at(&api, "p", &(vs[1] + 1).to_string()).await.1, Some(json!({"n": 2})));
    assert_eq!(read_at(&api, "p", &(vs[0] - 1).to_string()).await.0, 404);
    // By RFC 3339 instant: the millisecond of v2 sees v2 (and not v3, 20 ms later).
    let t2 = rfc3339_of_version(vs[1]);
    assert_eq!(read_at(&api, "p", &t2).await.1, Some(json!({"n": 2})), "{t2}");
    let before = time_of(((vs[0] >> 16) - 1) as i128);
    assert_eq!(read_at(&api, "p", &before).await.0, 404);
    // A non-UTC offset means the same instant.
    let t2_offset = t2.replace('Z', "+00:00");
    assert_eq!(read_at(&api, "p", &t2_offset).await.1, Some(json!({"n": 2})));
    // By relative time.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    api.put_ok("p", &json!({"n": 4})).await;
    assert_eq!(read_at(&api, "p", "-1s").await.1, Some(json!({"n": 3})));
    assert_eq!(read_at(&api, "p", "-1000ms").await.1, Some(json!({"n": 3})));
    assert_eq!(read_at(&api, "p", "-1h").await.0, 404);
    assert_eq!(read_at(&api, "p", "-0s").await.1, Some(json!({"n": 4})));
    // A deleted pointer reads 404 now but its value as of before the delete.
    let before_delete = api.put_ok("d", &json!("alive")).await;
    api.http.delete(api.ptr_url("d")).send().await.unwrap();
    assert_eq!(read_at(&api, "d", &before_delete.to_string()).await.1, Some(json!("alive")));
    problem(api.get("d", None, None).await, 404, "not-found").await;
}

#[tokio::test]
async fn a_transaction_pinned_in_the_past_reads_that_snapshot_only() {
    let node = Node::start();
    let api = Api::new(&node);
    let v1 = api.put_ok("a", &json!(1)).await;
    api.put_ok("b", &json!(1)).await;
    api.put_ok("a", &json!(2)).await;
    let r = api.begin_with(json!({}), Some(&v1.to_string())).await;
    assert_eq!(r.status(), 201);
    let b: restm_shared::BeginResponse = r.json().await.unwrap();
    assert_eq!(b.read_version, v1);
    let r = api.get("a", Some(&b.txn), None).await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!(1));
    assert_eq!(api.get("b", Some(&b.txn), None).await.status(), 404, "b did not exist yet");
    problem(api.tput(&b.txn, "a", &json!(3)).await, 400, "read-only").await;
    assert_eq!(api.commit(&b.txn).await.status(), 200);
}

#[tokio::test]
async fn old_versions_evicted_from_memory_are_read_from_disk() {
    // Keep one version in memory: every older read goes to fjall.
    let node = Node::start_with(&["--hot-versions", "1"]);
    let api = Api::new(&node);
    let mut vs = Vec::new();
    for i in 0..50 {
        vs.push(api.put_ok("cold", &json!(i)).await);
    }
    for (i, v) in vs.iter().enumerate() {
        assert_eq!(read_at(&api, "cold", &v.to_string()).await.1, Some(json!(i)));
    }
    // And after a restart, when only the newest version is loaded.
    let mut node = node;
    node.restart();
    let api = Api::new(&node);
    assert_eq!(read_at(&api, "cold", &vs[10].to_string()).await.1, Some(json!(10)));
    assert_eq!(api.value("cold").await, Some(json!(49)));
}
