//! Contract tests: every route, header and error code of `api-contract.md`, against the
//! real binary.

use restm_shared::{BeginResponse, CommitResponse, HistoryPage, ListPage, TxnState, TxnStatus};
use restm_tests::{Api, Node, enc, problem};
use serde_json::json;

fn node() -> (Node, Api) {
    let node = Node::start_with(&["--lock-timeout", "200ms"]);
    let api = Api::new(&node);
    (node, api)
}

#[tokio::test]
async fn put_get_delete_outside_a_txn() {
    let (_n, api) = node();
    assert_eq!(api.value("a").await, None);
    let v1 = api.put_ok("a", &json!({"x": 1})).await;
    let r = api.get("a", None, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-restm-version"].to_str().unwrap(), v1.to_string());
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.json::<serde_json::Value>().await.unwrap(), json!({"x": 1}));
    let v2 = api.put_ok("a", &json!([1, 2])).await;
    assert!(v2 > v1);
    // Every JSON value is storable, including null and scalars.
    for v in [json!(null), json!(7), json!("s"), json!(true)] {
        api.put_ok("scalar", &v).await;
        assert_eq!(api.value("scalar").await, Some(v));
    }
    let r = api.http.delete(api.ptr_url("a")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let p = problem(api.get("a", None, None).await, 404, "not-found").await;
    assert_eq!(p.pointer.as_deref(), Some("a"));
    // Deleting an absent pointer names it.
    problem(api.http.delete(api.ptr_url("a")).send().await.unwrap(), 404, "not-found").await;
    problem(api.http.delete(api.ptr_url("never")).send().await.unwrap(), 404, "not-found").await;
}

#[tokio::test]
async fn pointer_ids_are_any_utf8_up_to_512_bytes() {
    let (_n, api) = node();
    for id in ["with/slash", "spa ce", "ünïcødé", "a?b#c", "%41", "x".repeat(512).as_str()] {
        api.put_ok(id, &json!(id)).await;
        assert_eq!(api.value(id).await, Some(json!(id)), "{id}");
    }
    let long = "y".repeat(513);
    let p = problem(api.put(&long, &json!(1)).await, 400, "bad-request").await;
    assert!(p.detail.contains("512"), "{}", p.detail);
    problem(api.get(&long, None, None).await, 400, "bad-request").await;
    // Invalid UTF-8 in the path.
    let r = api.http.get(api.url("/ptr/%FF%FE")).send().await.unwrap();
    problem(r, 400, "bad-request").await;
    let listed: ListPage =
        api.http.get(api.url("/ptr?prefix=with")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed.pointers.len(), 1);
    assert_eq!(listed.pointers[0].ptr, "with/slash");
}

#[tokio::test]
async fn bad_bodies_are_refused_and_store_nothing() {
    let (node, api) = node();
    api.put_ok("keep", &json!("original")).await;
    for body in ["{bad", "", "   ", "[1,", "{\"a\":1} trailing", "NaN"] {
        let r = api.http.put(api.ptr_url("keep")).body(body.to_string()).send().await.unwrap();
        problem(r, 400, "bad-request").await;
    }
    // Over the 1 MiB default limit.
    let big = format!("\"{}\"", "z".repeat((1 << 20) + 10));
    let r = api.http.put(api.ptr_url("keep")).body(big.clone()).send().await.unwrap();
    problem(r, 413, "too-large").await;
    let r = api.one_shot(&json!({"writes": [{"ptr": "keep", "value": "z".repeat((1 << 20) + 10)}]})).await;
    problem(r, 413, "too-large").await;
    assert_eq!(api.value("keep").await, Some(json!("original")));
    let h: HistoryPage =
        api.http.get(api.url("/ptr/keep/history")).send().await.unwrap().json().await.unwrap();
    assert_eq!(h.versions.len(), 1);
    // Just under the limit is fine.
    let fits = format!("\"{}\"", "z".repeat((1 << 20) - 100));
    let r = api.http.put(api.ptr_url("big")).body(fits).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The node keeps serving.
    assert_eq!(api.http.get(node.url("/health")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn interactive_txn_lifecycle_and_its_errors() {
    let (_n, api) = node();
    api.put_ok("acct", &json!(10)).await;
    let r = api.begin_with(json!({"timeout_ms": 5000}), None).await;
    assert_eq!(r.status(), 201);
    let b: BeginResponse = r.json().await.unwrap();
    let t = b.txn.clone();
    assert!(b.read_version > 0);
    let r = api.get("acct", Some(&t), None).await;
    assert_eq!(r.json::<serde_json::Value>().await.unwrap(), json!(10));
    let r = api.tput(&t, "acct", &json!(11)).await;
    assert_eq!(r.status(), 200);
    // Read your own write; the outside world does not see it yet.
    let r = api.get("acct", Some(&t), None).await;
    assert_eq!(r.json::<serde_json::Value>().await.unwrap(), json!(11));
    assert_eq!(api.value("acct").await, Some(json!(10)));
    let st: TxnStatus =
        api.http.get(api.url(&format!("/txn/{t}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(st.state, TxnState::Active);
    assert_eq!(st.locks, vec!["acct".to_string()]);
    assert_eq!(st.writes.len(), 1);
    assert_eq!(st.reads.len(), 1);
    assert_eq!(st.timeout_ms, 5000);
    assert_eq!(st.trace_id.len(), 32);
    let r = api.commit(&t).await;
    assert_eq!(r.status(), 200);
    let c: CommitResponse = r.json().await.unwrap();
    assert!(c.commit_version > b.read_version);
    assert_eq!(api.value("acct").await, Some(json!(11)));
    // Double commit: 409 naming the version it committed at.
    let p = problem(api.commit(&t).await, 409, "txn-committed").await;
    assert_eq!(p.commit_version, Some(c.commit_version));
    problem(api.abort(&t).await, 409, "txn-committed").await;
    problem(api.tput(&t, "acct", &json!(1)).await, 409, "txn-committed").await;
    // Abort, then everything else on it is refused.
    let t2 = api.begin().await;
    api.tput(&t2, "acct", &json!(99)).await;
    assert_eq!(api.abort(&t2).await.status(), 200);
    assert_eq!(api.abort(&t2).await.status(), 200, "abort is idempotent");
    problem(api.commit(&t2).await, 409, "txn-aborted").await;
    problem(api.tput(&t2, "acct", &json!(1)).await, 409, "txn-aborted").await;
    problem(api.get("acct", Some(&t2), None).await, 409, "txn-aborted").await;
    assert_eq!(api.value("acct").await, Some(json!(11)));
    let st: TxnStatus =
        api.http.get(api.url(&format!("/txn/{t2}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(st.state, TxnState::Aborted);
    assert!(st.locks.is_empty());
    // Unknown transactions.
    problem(api.commit("nope").await, 404, "txn-not-found").await;
    problem(api.abort("nope").await, 404, "txn-not-found").await;
    problem(api.http.get(api.url("/txn/nope")).send().await.unwrap(), 404, "txn-not-found").await;
    problem(api.get("acct", Some("nope"), None).await, 404, "txn-not-found").await;
    problem(api.tput("nope", "acct", &json!(1)).await, 404, "txn-not-found").await;
    assert_eq!(api.value("acct").await, Some(json!(11)));
}

#[tokio::test]
async fn begin_rejects_bad_options() {
    let (_n, api) = node();
    for body in ["{", "{\"timeout_ms\": -1}", "{\"timeout_ms\": 0}", "{\"bogus\": 1}", "[]"] {
        let r = api.http.post(api.url("/txn/begin")).body(body).send().await.unwrap();
        problem(r, 400, "bad-request").await;
    }
    let r = api.http.post(api.url("/txn/begin")).send().await.unwrap();
    assert_eq!(r.status(), 201, "an empty body is allowed");
    let r = api.begin_with(json!({"read_only": false}), Some("-1s")).await;
    problem(r, 400, "bad-request").await;
    // A read-only txn refuses writes.
    let t = api.begin_read_only().await;
    problem(api.tput(&t, "x", &json!(1)).await, 400, "read-only").await;
    assert_eq!(api.value("x").await, None);
}

#[tokio::test]
async fn bad_at_headers_are_named() {
    let (_n, api) = node();
    api.put_ok("p", &json!(1)).await;
    for at in [
        "yesterday",
        "-",
        "-10parsecs",
        "+10s",
        "2099-01-01T00:00:00Z",
        "18446744073709551615",
        "99999999999999999999",
        "2026-13-45T00:00:00Z",
    ] {
        let p = problem(api.get("p", None, Some(at)).await, 400, "bad-request").await;
        assert!(!p.detail.is_empty());
    }
    let t = api.begin().await;
    problem(api.get("p", Some(&t), Some("-1s")).await, 400, "bad-request").await;
}

#[tokio::test]
async fn if_match_guards_writes() {
    let (_n, api) = node();
    let v1 = api.put_ok("g", &json!(1)).await;
    let r = api
        .http
        .put(api.ptr_url("g"))
        .header("If-Match", (v1 + 1).to_string())
        .json(&json!(2))
        .send()
        .await
        .unwrap();
    let p = problem(r, 412, "precondition-failed").await;
    assert_eq!(p.pointer.as_deref(), Some("g"));
    let r = api
        .http
        .put(api.ptr_url("g"))
        .header("If-Match", format!("\"{v1}\""))
        .json(&json!(2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = api.http.put(api.ptr_url("new")).header("If-Match", "*").json(&json!(2)).send().await.unwrap();
    problem(r, 412, "precondition-failed").await;
    let r = api.http.put(api.ptr_url("g")).header("If-Match", "abc").json(&json!(2)).send().await.unwrap();
    problem(r, 400, "bad-request").await;
    let r = api.http.delete(api.ptr_url("g")).header("If-Match", v1.to_string()).send().await.unwrap();
    problem(r, 412, "precondition-failed").await;
    assert_eq!(api.value("g").await, Some(json!(2)));
    // Inside a transaction.
    let t = api.begin().await;
    let r = api
        .http
        .put(api.ptr_url("g"))
        .header("X-reSTM-Txn", &t)
        .header("If-Match", v1.to_string())
        .json(&json!(3))
        .send()
        .await
        .unwrap();
    problem(r, 412, "precondition-failed").await;
    assert_eq!(api.commit(&t).await.status(), 200);
    assert_eq!(api.value("g").await, Some(json!(2)));
}

#[tokio::test]
async fn one_shot_checks_and_writes_atomically() {
    let (_n, api) = node();
    let va = api.put_ok("a", &json!(1)).await;
    let r = api
        .one_shot(&json!({"checks": [{"ptr": "a", "version": va}, {"ptr": "b", "version": null}],
            "writes": [{"ptr": "a", "value": 2}, {"ptr": "b", "value": {"k": "v"}}, {"ptr": "n", "value": null}]}))
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(api.value("a").await, Some(json!(2)));
    assert_eq!(api.value("b").await, Some(json!({"k": "v"})));
    assert_eq!(api.value("n").await, Some(json!(null)));
    // A failed check names the pointer and who wrote what is there; nothing is written.
    let r = api
        .one_shot(&json!({"checks": [{"ptr": "a", "version": va}], "writes": [{"ptr": "c", "value": 1}]}))
        .await;
    let p = problem(r, 409, "conflict").await;
    assert_eq!(p.pointer.as_deref(), Some("a"));
    assert!(p.winner_version.is_some() && p.winner_txn.is_some());
    assert_eq!(api.value("c").await, None);
    let r = api
        .one_shot(&json!({"checks": [{"ptr": "b", "version": null}], "writes": [{"ptr": "c", "value": 1}]}))
        .await;
    problem(r, 409, "conflict").await;
    // Deletes.
    let r = api.one_shot(&json!({"writes": [{"ptr": "b", "delete": true}]})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(api.value("b").await, None);
    // Bad shapes.
    for body in [
        json!({}),
        json!({"writes": [{"ptr": "a"}]}),
        json!({"writes": [{"ptr": "a", "value": 1, "delete": true}]}),
        json!({"writes": [{"ptr": "a", "value": 1}, {"ptr": "a", "value": 2}]}),
        json!({"writes": [{"ptr": "", "value": 1}]}),
        json!({"checks": [{"ptr": "a", "version": "x"}]}),
        json!({"writes": [], "extra": 1}),
    ] {
        problem(api.one_shot(&body).await, 400, "bad-request").await;
    }
    let r = api.http.post(api.url("/txn")).body("not json").send().await.unwrap();
    problem(r, 400, "bad-request").await;
    assert_eq!(api.value("a").await, Some(json!(2)));
}

#[tokio::test]
async fn history_is_ascending_and_paginated() {
    let (_n, api) = node();
    let mut versions = Vec::new();
    for i in 0..5 {
        versions.push(api.put_ok("h", &json!(i)).await);
    }
    api.http.delete(api.ptr_url("h")).send().await.unwrap();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let q = match &after {
            Some(a) => format!("/ptr/h/history?limit=2&after={a}"),
            None => "/ptr/h/history?limit=2".into(),
        };
        let page: HistoryPage = api.http.get(api.url(&q)).send().await.unwrap().json().await.unwrap();
        assert!(page.versions.len() <= 2);
        seen.extend(page.versions);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6);
    assert!(seen.windows(2).all(|w| w[0].version < w[1].version));
    assert_eq!(seen.iter().take(5).map(|e| e.version).collect::<Vec<_>>(), versions);
    assert!(seen[5].deleted && seen[5].value.is_none());
    assert_eq!(seen[2].value.as_ref().unwrap().get(), "2");
    // Txn ids are opaque (a cluster's name their coordinator); trace ids are W3C's 32 hex digits.
    assert!(seen[0].time.ends_with('Z') && !seen[0].txn.is_empty() && seen[0].trace_id.len() == 32);
    // As of a past version: only versions up to it.
    let r = api
        .http
        .get(api.url("/ptr/h/history"))
        .header("X-reSTM-At", versions[1].to_string())
        .send()
        .await
        .unwrap();
    let page: HistoryPage = r.json().await.unwrap();
    assert_eq!(page.versions.len(), 2);
    problem(api.http.get(api.url("/ptr/never/history")).send().await.unwrap(), 404, "not-found").await;
    for q in ["limit=0", "limit=1001", "after=x", "bogus=1"] {
        let r = api.http.get(api.url(&format!("/ptr/h/history?{q}"))).send().await.unwrap();
        problem(r, 400, "bad-request").await;
    }
}

#[tokio::test]
async fn listing_by_prefix_with_pagination_and_as_of() {
    let (_n, api) = node();
    for i in 0..25 {
        api.put_ok(&format!("job/{i:02}"), &json!(i)).await;
    }
    api.put_ok("other", &json!(0)).await;
    let before = api.put_ok("job/zz", &json!("last")).await;
    api.http.delete(api.ptr_url("job/00")).send().await.unwrap();
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let q = match &after {
            Some(a) => format!("/ptr?prefix=job/&limit=10&after={}", enc(a)),
            None => "/ptr?prefix=job/&limit=10".into(),
        };
        let page: ListPage = api.http.get(api.url(&q)).send().await.unwrap().json().await.unwrap();
        all.extend(page.pointers);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let ids: Vec<_> = all.iter().map(|p| p.ptr.clone()).collect();
    let mut want: Vec<_> = (1..25).map(|i| format!("job/{i:02}")).collect();
    want.push("job/zz".into());
    assert_eq!(ids, want);
    // As of before the delete, job/00 is there.
    let r = api
        .http
        .get(api.url("/ptr?prefix=job/0&limit=1000"))
        .header("X-reSTM-At", before.to_string())
        .send()
        .await
        .unwrap();
    let page: ListPage = r.json().await.unwrap();
    assert_eq!(page.pointers[0].ptr, "job/00");
    // Inside a read-write txn listing is refused (phantoms); a read-only txn may list.
    let t = api.begin().await;
    let r = api.http.get(api.url("/ptr?prefix=job/")).header("X-reSTM-Txn", &t).send().await.unwrap();
    problem(r, 400, "bad-request").await;
    let ro = api.begin_read_only().await;
    let r =
        api.http.get(api.url("/ptr?prefix=job/&limit=1000")).header("X-reSTM-Txn", &ro).send().await.unwrap();
    assert_eq!(r.json::<ListPage>().await.unwrap().pointers.len(), 25);
    problem(api.http.get(api.url("/ptr?limit=abc")).send().await.unwrap(), 400, "bad-request").await;
}

#[tokio::test]
async fn lock_conflicts_name_the_holder_and_abort_the_loser() {
    let (_n, api) = node();
    api.put_ok("x", &json!(0)).await;
    let a = api.begin().await;
    assert_eq!(api.tput(&a, "x", &json!(1)).await.status(), 200);
    let b = api.begin().await;
    let started = std::time::Instant::now();
    let p = problem(api.tput(&b, "x", &json!(2)).await, 409, "lock-timeout").await;
    assert!(started.elapsed() >= std::time::Duration::from_millis(150), "it waited for the lock");
    assert_eq!(p.holder_txn.as_deref(), Some(a.as_str()));
    assert_eq!(p.pointer.as_deref(), Some("x"));
    // The loser is aborted; the holder goes on.
    problem(api.commit(&b).await, 409, "txn-aborted").await;
    assert_eq!(api.commit(&a).await.status(), 200);
    assert_eq!(api.value("x").await, Some(json!(1)));
    // A waiter gets the lock as soon as the holder finishes.
    let a = api.begin().await;
    api.tput(&a, "x", &json!(3)).await;
    let b = api.begin().await;
    let api2 = api.clone();
    let b2 = b.clone();
    let waiter = tokio::spawn(async move { api2.tput(&b2, "x", &json!(4)).await.status() });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    api.abort(&a).await;
    assert_eq!(waiter.await.unwrap(), 200);
    assert_eq!(api.commit(&b).await.status(), 200);
    assert_eq!(api.value("x").await, Some(json!(4)));
}

#[tokio::test]
async fn stale_reads_lose_and_name_the_winner() {
    let (_n, api) = node();
    api.put_ok("r", &json!(0)).await;
    let a = api.begin().await;
    api.get("r", Some(&a), None).await;
    let winner = api.put_ok("r", &json!(1)).await;
    api.tput(&a, "w", &json!(1)).await;
    let p = problem(api.commit(&a).await, 409, "conflict").await;
    assert_eq!(p.pointer.as_deref(), Some("r"));
    assert_eq!(p.winner_version, Some(winner));
    assert!(p.winner_txn.is_some());
    assert_eq!(api.value("w").await, None);
    // A read pointer locked by another txn at commit also loses, naming the holder.
    let a = api.begin().await;
    api.get("r", Some(&a), None).await;
    let holder = api.begin().await;
    api.tput(&holder, "r", &json!(2)).await;
    api.tput(&a, "w", &json!(1)).await;
    let p = problem(api.commit(&a).await, 409, "conflict").await;
    assert_eq!(p.holder_txn.as_deref(), Some(holder.as_str()));
}

#[tokio::test]
async fn openapi_describes_every_route() {
    let (_n, api) = node();
    let doc: serde_json::Value =
        api.http.get(api.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/health", "get"),
        ("/openapi.json", "get"),
        ("/txn/begin", "post"),
        ("/txn", "post"),
        ("/txn/{id}", "get"),
        ("/txn/{id}/commit", "post"),
        ("/txn/{id}/abort", "post"),
        ("/ptr", "get"),
        ("/ptr/{id}", "get"),
        ("/ptr/{id}", "put"),
        ("/ptr/{id}", "delete"),
        ("/ptr/{id}/history", "get"),
        ("/events", "get"),
        ("/metrics", "get"),
        ("/txns", "get"),
        ("/locks", "get"),
        ("/ui/", "get"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} missing");
    }
    assert!(doc["components"]["schemas"]["Problem"].is_object());
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let (_n, api) = node();
    problem(api.http.get(api.url("/nope")).send().await.unwrap(), 404, "not-found").await;
    problem(api.http.patch(api.url("/ptr/a")).send().await.unwrap(), 405, "method-not-allowed").await;
}

#[tokio::test]
async fn bearer_token_is_required_when_set() {
    let node = Node::start_with(&["--auth-token", "s3cret"]);
    let http = reqwest::Client::new();
    assert_eq!(http.get(node.url("/health")).send().await.unwrap().status(), 200);
    let r = http.put(node.url("/ptr/a")).body("1").send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    problem(r, 401, "unauthorized").await;
    problem(
        http.put(node.url("/ptr/a")).bearer_auth("wrong").body("1").send().await.unwrap(),
        403,
        "forbidden",
    )
    .await;
    let r = http.put(node.url("/ptr/a")).bearer_auth("s3cret").body("1").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(node.url("/ptr/a")).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "1");
}

#[test]
fn refuses_a_public_address_without_a_token() {
    let dir = restm_tests::temp_dir("public");
    let out = std::process::Command::new(restm_tests::restm_bin())
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--auth-token") && err.contains("--insecure"), "{err}");
}

#[test]
fn partition_count_is_fixed_per_data_directory() {
    let dir = restm_tests::temp_dir("parts");
    let node = Node::start_in(dir.clone(), &["--partitions", "16"]);
    drop(node);
    let again = Node::start_in(dir.clone(), &[]);
    drop(again);
    let port = restm_tests::free_port();
    let out = std::process::Command::new(restm_tests::restm_bin())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--partitions", "32", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("16 partitions"));
    let _ = std::fs::remove_dir_all(&dir);
}
