//! The `/events` WebSocket: exact events for a scripted conflict, filters, resumption with
//! `since`, and a subscriber that never reads gets `lagged` while commits go on.

use std::time::Duration;

use futures_util::StreamExt;
use restm_shared::Event;
use restm_tests::{Api, Node, problem};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn subscribe(node: &Node, query: &str) -> Ws {
    let url = format!("ws://127.0.0.1:{}/events?{query}", node.port);
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn next_event(ws: &mut Ws) -> Event {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[tokio::test]
async fn a_scripted_conflict_gives_the_exact_event_sequence() {
    let node = Node::start();
    let api = Api::new(&node);
    let mut ws = subscribe(&node, "prefix=c/&kinds=read,write,lock_acquired,conflict,abort").await;
    let mut all = subscribe(&node, "").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a = api.begin().await;
    assert_eq!(api.get("c/x", Some(&a), None).await.status(), 404);
    let winner = api.put_ok("c/x", &json!(1)).await;
    api.tput(&a, "c/y", &json!(2)).await;
    problem(api.commit(&a).await, 409, "conflict").await;

    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(next_event(&mut ws).await);
    }
    let shape: Vec<_> = got.iter().map(|e| (e.kind.as_str(), e.ptr.as_deref().unwrap_or(""))).collect();
    assert_eq!(
        shape,
        vec![
            ("read", "c/x"),
            ("lock_acquired", "c/x"),
            ("write", "c/x"),
            ("lock_acquired", "c/y"),
            ("write", "c/y"),
            ("conflict", "c/x"),
        ],
        "{got:#?}"
    );
    assert!(got.windows(2).all(|w| w[0].seq < w[1].seq));
    // Each names the partition of its pointer: one for c/x, every time.
    assert!(got.iter().all(|e| e.partition.is_some_and(|p| p < 64)), "{got:#?}");
    assert_eq!(got[5].partition, got[0].partition, "{got:#?}");
    assert_eq!(got[2].partition, got[0].partition, "{got:#?}");
    assert_eq!(got[0].txn.as_deref(), Some(a.as_str()));
    assert_eq!(got[0].version, None, "c/x was absent");
    let conflict = &got[5];
    assert_eq!(conflict.txn.as_deref(), Some(a.as_str()));
    assert_eq!(conflict.winner_version, Some(winner));
    assert_eq!(conflict.winner_txn.as_deref(), got[1].txn.as_deref());
    assert_eq!(conflict.trace_id.as_ref().map(String::len), Some(32));
    // The winner's trace rides along, so a viewer can open both sides.
    let winner_status: serde_json::Value =
        reqwest::get(node.url(&format!("/txn/{}", got[1].txn.as_deref().unwrap())))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(conflict.other_trace_id.as_deref(), winner_status["trace_id"].as_str());
    // The unfiltered stream has every event, numbered one by one, including begin, commit,
    // abort and lock releases.
    let mut kinds = Vec::new();
    let mut last_seq = 0;
    loop {
        let e = next_event(&mut all).await;
        if last_seq > 0 {
            assert_eq!(e.seq, last_seq + 1);
        }
        last_seq = e.seq;
        kinds.push(e.kind.clone());
        if e.kind == "lock_released" && e.txn.as_deref() == Some(a.as_str()) {
            break;
        }
    }
    for k in ["begin", "read", "lock_acquired", "write", "commit", "lock_released", "conflict", "abort"] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }

    // Resume after the second filtered event: the rest follow.
    let mut resumed = subscribe(
        &node,
        &format!("prefix=c/&kinds=read,write,lock_acquired,conflict,abort&since={}", got[1].seq),
    )
    .await;
    for want in &got[2..] {
        let e = next_event(&mut resumed).await;
        assert_eq!((e.seq, &e.kind), (want.seq, &want.kind));
    }
}

#[tokio::test]
async fn bad_filters_are_refused() {
    let node = Node::start();
    let http = reqwest::Client::new();
    let r = http.get(node.url("/events?kinds=bogus")).send().await.unwrap();
    problem(r, 400, "bad-request").await;
    let r = http.get(node.url("/events?since=x")).send().await.unwrap();
    problem(r, 400, "bad-request").await;
    for (since, says) in [("1:x", "sequence \"x\""), ("1,2", "two bare"), ("3:1,3:2", "member 3 twice")] {
        let r = http.get(node.url(&format!("/events?since={since}"))).send().await.unwrap();
        let p = problem(r, 400, "bad-request").await;
        assert!(p.detail.contains(says), "since={since}: {}", p.detail);
    }
    let p = problem(http.get(node.url("/events")).send().await.unwrap(), 400, "bad-request").await;
    assert!(p.detail.contains("WebSocket"), "{}", p.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_never_reads_lags_and_commits_go_on() {
    let node = Node::start_with(&[
        "--durability",
        "async",
        "--event-subscriber-buffer",
        "64",
        "--event-buffer",
        "128",
    ]);
    let api = Api::new(&node);
    let mut stuck = subscribe(&node, "").await;
    // Resuming from the start after the ring has moved on reports what was lost.
    let mut tasks = Vec::new();
    for c in 0..8 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..1000 {
                api.put_ok(&format!("load/{c}/{i}"), &json!({"i": i, "pad": "p".repeat(64)})).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(api.value("load/7/999").await, Some(json!({"i": 999, "pad": "p".repeat(64)})));
    // Now read the stuck subscriber: somewhere it was told it lagged.
    let mut found = None;
    for _ in 0..50_000 {
        let e = next_event(&mut stuck).await;
        if e.kind == "lagged" {
            found = Some(e);
            break;
        }
    }
    let lagged = found.expect("a lagged event");
    assert!(lagged.missed.unwrap() > 0);
    let mut late = subscribe(&node, "since=1").await;
    let first = next_event(&mut late).await;
    assert_eq!(first.kind, "lagged");
    assert!(first.missed.unwrap() > 1000);
    let metrics_like = reqwest::get(node.url("/health")).await.unwrap();
    assert_eq!(metrics_like.status(), 200);
}

#[tokio::test]
async fn a_since_from_before_a_restart_starts_over_and_says_so() {
    let mut node = Node::start();
    let api = Api::new(&node);
    for i in 0..5 {
        api.put_ok(&format!("r/{i}"), &json!(i)).await;
    }
    node.restart();
    let api = Api::new(&node);
    api.put_ok("r/after", &json!(1)).await;
    // The old life numbered far past what this one has: resuming there must not drop the
    // new life's events while waiting for the numbers to catch up.
    let mut ws = subscribe(&node, "kinds=write&since=1000").await;
    let first = next_event(&mut ws).await;
    assert_eq!((first.kind.as_str(), first.seq), ("lagged", 0));
    assert!(first.reason.as_deref().unwrap_or("").contains("restarted"), "{first:?}");
    let write = next_event(&mut ws).await;
    assert_eq!((write.kind.as_str(), write.ptr.as_deref()), ("write", Some("r/after")));
}

#[tokio::test]
async fn a_browser_can_send_the_token_as_a_subprotocol() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let node = Node::start_with(&["--auth-token", "s3cret"]);
    // `since=0`: the write below may land before the socket is subscribed.
    let url = format!("ws://127.0.0.1:{}/events?kinds=write&since=0", node.port);
    let with = |proto: Option<&str>| {
        let mut req = url.clone().into_client_request().unwrap();
        if let Some(p) = proto {
            req.headers_mut().insert("sec-websocket-protocol", p.parse().unwrap());
        }
        req
    };
    let status_of = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{e}"),
        Ok(_) => 101,
    };
    assert_eq!(status_of(tokio_tungstenite::connect_async(with(None)).await.map(|_| ())), 401);
    assert_eq!(
        status_of(tokio_tungstenite::connect_async(with(Some("restm.bearer.nope"))).await.map(|_| ())),
        403
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(with(Some("restm.bearer.s3cret"))).await.unwrap();
    // The browser drops a socket whose chosen subprotocol is not one it offered.
    assert_eq!(resp.headers()["sec-websocket-protocol"], "restm.bearer.s3cret");
    let http = reqwest::Client::new();
    let r = http.put(node.url("/ptr/w")).bearer_auth("s3cret").body("1").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let e = next_event(&mut ws).await;
    assert_eq!(e.ptr.as_deref(), Some("w"));
}
