//! `GET /metrics`: a scrape parses as Prometheus text, and the counters move as expected.

use std::collections::HashMap;

use restm_tests::{Api, Node, problem};
use serde_json::json;

async fn scrape(api: &Api) -> HashMap<String, f64> {
    let r = api.http.get(api.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().contains("openmetrics-text"));
    let text = r.text().await.unwrap();
    assert!(text.trim_end().ends_with("# EOF"));
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        assert!(series.starts_with("restm_"), "{series}");
        out.insert(
            series.to_string(),
            value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        );
    }
    out
}

fn get(m: &HashMap<String, f64>, k: &str) -> f64 {
    m.get(k).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn counters_follow_commits_aborts_conflicts_and_lock_waits() {
    let node = Node::start_with(&["--lock-timeout", "100ms"]);
    let api = Api::new(&node);
    let before = scrape(&api).await;
    api.put_ok("m/a", &json!(1)).await;
    api.put_ok("m/b", &json!(1)).await;
    // A conflict: a read made stale.
    let t = api.begin().await;
    api.get("m/a", Some(&t), None).await;
    api.put_ok("m/a", &json!(2)).await;
    api.tput(&t, "m/c", &json!(1)).await;
    problem(api.commit(&t).await, 409, "conflict").await;
    // A lock wait that times out.
    let holder = api.begin().await;
    api.tput(&holder, "m/b", &json!(3)).await;
    let after_open = scrape(&api).await;
    assert_eq!(get(&after_open, "restm_active_txns"), 1.0);
    let loser = api.begin().await;
    problem(api.tput(&loser, "m/b", &json!(4)).await, 409, "lock-timeout").await;
    assert_eq!(api.abort(&holder).await.status(), 200);
    let after = scrape(&api).await;
    assert_eq!(get(&after, "restm_commits_total") - get(&before, "restm_commits_total"), 3.0);
    assert_eq!(get(&after, "restm_aborts_total{reason=\"conflict\"}"), 1.0);
    assert_eq!(get(&after, "restm_aborts_total{reason=\"lock_timeout\"}"), 1.0);
    assert_eq!(get(&after, "restm_aborts_total{reason=\"client\"}"), 1.0);
    assert_eq!(get(&after, "restm_conflicts_total"), 2.0, "stale read and lock timeout");
    assert_eq!(get(&after, "restm_lock_wait_seconds_count"), 1.0);
    assert!(get(&after, "restm_lock_wait_seconds_sum") >= 0.09);
    assert_eq!(get(&after, "restm_active_txns"), 0.0);
    assert!(get(&after, "restm_versions_in_memory") >= 3.0);
    assert!(get(&after, "restm_versions_on_disk") >= 3.0);
    assert!(
        get(
            &after,
            "restm_http_request_duration_seconds_count{route=\"/ptr/{id}\",method=\"PUT\",status=\"200\"}"
        ) >= 2.0
    );
    assert!(after.keys().all(|k| !k.contains("m/a")), "pointer ids never become labels");
}
