//! OpenTelemetry export: a real OTLP/HTTP receiver, started by the test, decodes the
//! protobuf the node sends. One interactive transaction of 4 requests is one trace with the
//! expected spans and attributes, and a conflict span names the winner.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use restm_tests::{Api, Node, problem};
use serde_json::json;

/// A minimal OTLP/HTTP receiver: accepts `POST /v1/traces` (protobuf) and keeps the spans.
fn receiver() -> (u16, Arc<Mutex<Vec<Span>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let spans = Arc::new(Mutex::new(Vec::new()));
    let store = spans.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let store = store.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        if h == "\r\n" || h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).unwrap();
                    if line.starts_with("POST /v1/traces") {
                        let req =
                            ExportTraceServiceRequest::decode(body.as_slice()).expect("valid OTLP protobuf");
                        let mut out = store.lock().unwrap();
                        for rs in req.resource_spans {
                            // Which member sent it, as a span attribute the tests can read.
                            let instance = rs
                                .resource
                                .iter()
                                .flat_map(|r| r.attributes.iter())
                                .find(|a| a.key == "service.instance.id")
                                .cloned();
                            for ss in rs.scope_spans {
                                out.extend(ss.spans.into_iter().map(|mut s| {
                                    s.attributes.extend(instance.clone());
                                    s
                                }));
                            }
                        }
                    }
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                    );
                }
            });
        }
    });
    (port, spans)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    })
}

fn wait_for(spans: &Arc<Mutex<Vec<Span>>>, pred: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = spans.lock().unwrap().clone();
        if pred(&got) || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_is_one_trace_and_conflicts_name_the_winner() {
    let (port, spans) = receiver();
    let endpoint = format!("http://127.0.0.1:{port}");
    let node = Node::start_with_env(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "restm-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let api = Api::new(&node);
    // Four requests: begin, read, write, commit.
    let r = api.begin_with(json!({}), None).await;
    let tr =
        r.headers().get("traceresponse").map(|v| v.to_str().unwrap().to_string()).expect("traceresponse");
    let t: restm_shared::BeginResponse = r.json().await.unwrap();
    api.get("acct", Some(&t.txn), None).await;
    assert_eq!(api.tput(&t.txn, "acct", &json!(1)).await.status(), 200);
    let r = api.commit(&t.txn).await;
    assert_eq!(r.status(), 200);
    let status: restm_shared::TxnStatus =
        api.http.get(api.url(&format!("/txn/{}", t.txn))).send().await.unwrap().json().await.unwrap();
    let trace = status.trace_id.clone();
    assert_eq!(tr.split('-').nth(1), Some(trace.as_str()), "traceresponse carries the txn's trace");

    let got = wait_for(&spans, |s| {
        s.iter().filter(|x| hex(&x.trace_id) == trace && x.name.starts_with("POST /txn/{id}/commit")).count()
            > 0
            && s.iter().any(|x| hex(&x.trace_id) == trace && x.name == "partition.commit")
    });
    let in_trace: Vec<&Span> = got.iter().filter(|s| hex(&s.trace_id) == trace).collect();
    let names: Vec<&str> = in_trace.iter().map(|s| s.name.as_str()).collect();
    for want in
        ["POST /txn/begin", "GET /ptr/{id}", "PUT /ptr/{id}", "POST /txn/{id}/commit", "commit", "persist"]
    {
        assert!(names.contains(&want), "{want} missing from the txn's trace: {names:?}");
    }
    let read = in_trace.iter().find(|s| s.name == "GET /ptr/{id}").unwrap();
    assert_eq!(attr(read, "restm.txn").as_deref(), Some(t.txn.as_str()));
    assert_eq!(attr(read, "restm.ptr").as_deref(), Some("acct"));
    let begin = in_trace.iter().find(|s| s.name == "POST /txn/begin").unwrap();
    assert_eq!(read.parent_span_id, begin.span_id, "requests hang under the begin span");
    let commit = in_trace.iter().find(|s| s.name == "commit").unwrap();
    assert!(attr(commit, "restm.version").is_some());
    // History carries the writer's trace id.
    let h: restm_shared::HistoryPage =
        api.http.get(api.url("/ptr/acct/history")).send().await.unwrap().json().await.unwrap();
    assert_eq!(h.versions[0].trace_id, trace);

    // A conflict: a stale read loses to a one-shot write.
    let a = api.begin().await;
    api.get("acct", Some(&a), None).await;
    let winner = api.put("acct", &json!(2)).await;
    let winner_version = winner.json::<restm_shared::WriteResponse>().await.unwrap().version;
    api.tput(&a, "other", &json!(1)).await;
    let p = problem(api.commit(&a).await, 409, "conflict").await;
    let got = wait_for(&spans, |s| s.iter().any(|x| x.name == "conflict"));
    let conflict = got.iter().find(|s| s.name == "conflict").expect("a conflict span");
    assert_eq!(attr(conflict, "restm.txn").as_deref(), Some(a.as_str()));
    assert_eq!(attr(conflict, "restm.ptr").as_deref(), Some("acct"));
    assert_eq!(attr(conflict, "restm.winner_txn"), p.winner_txn);
    assert_eq!(attr(conflict, "restm.winner_version"), Some(winner_version.to_string()));
}

/// On a cluster a transaction is still one trace: sent to a follower, each request is a
/// `forward` span there with the leader's request span under it, and each command the leader
/// proposes is a `raft.propose` span with a `raft.apply` span under it on every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_through_a_follower_is_one_trace_across_the_members() {
    let (port, spans) = receiver();
    let endpoint = format!("http://127.0.0.1:{port}");
    let node = Node::cluster_with_env(
        3,
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        if let Some(l) = node.all().find_map(Node::leader_seen) {
            break l;
        }
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(50));
    };
    let follower = node.all().nth(if leader == 1 { 1 } else { 0 }).unwrap().base.clone();
    let follower_id = if leader == 1 { 2 } else { 1 };
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let http = reqwest::Client::new();
    let r =
        http.post(format!("{follower}/txn/begin")).header("traceparent", &traceparent).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let tr = r.headers()["traceresponse"].to_str().unwrap().to_string();
    assert_eq!(
        tr.split('-').nth(1),
        Some(trace),
        "the leader's traceresponse comes back through the follower"
    );
    let txn = r.json::<serde_json::Value>().await.unwrap()["txn"].as_str().unwrap().to_string();
    // Eight pointers: of 64 partitions, surely more than one, so the commit is two-phase.
    for i in 0..8 {
        let r = http
            .put(format!("{follower}/ptr/k{i}"))
            .header("traceparent", &traceparent)
            .header("X-reSTM-Txn", &txn)
            .json(&json!(i))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = http
        .post(format!("{follower}/txn/{txn}/commit"))
        .header("traceparent", &traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let node_of = |s: &Span| attr(s, "service.instance.id").unwrap_or_default();
    let applied_on = |got: &[Span], kind: &str| -> std::collections::BTreeSet<String> {
        got.iter()
            .filter(|s| hex(&s.trace_id) == trace && s.name == "raft.apply")
            .filter(|s| attr(s, "restm.command").as_deref() == Some(kind))
            .map(node_of)
            .collect()
    };
    // A proposal's span ends when the leader has applied it, so a follower may export its
    // apply first: wait until every apply's parent has arrived as well.
    let parents_exported = |got: &[Span]| {
        let in_trace = || got.iter().filter(|s| hex(&s.trace_id) == trace);
        let proposed: std::collections::BTreeSet<&[u8]> =
            in_trace().filter(|s| s.name == "raft.propose").map(|s| s.span_id.as_slice()).collect();
        in_trace().filter(|s| s.name == "raft.apply").all(|a| proposed.contains(a.parent_span_id.as_slice()))
    };
    let got = wait_for(&spans, |s| {
        applied_on(s, "commit").len() == 3
            && applied_on(s, "txn_record").len() == 3
            && s.iter().filter(|x| hex(&x.trace_id) == trace && x.name == "forward").count() >= 10
            && parents_exported(s)
    });
    let in_trace: Vec<&Span> = got.iter().filter(|s| hex(&s.trace_id) == trace).collect();
    let names: Vec<(String, String)> = in_trace.iter().map(|s| (node_of(s), s.name.clone())).collect();
    for kind in ["prepare", "txn_record", "commit"] {
        assert_eq!(
            applied_on(&got, kind),
            (1..=3).map(|i| format!("node-{i}")).collect(),
            "{kind} applied on every member, in the txn's trace: {names:?}"
        );
    }
    // The hop: the follower's forward span, and the leader's request span under it.
    let (leader_name, follower_name) = (format!("node-{leader}"), format!("node-{follower_id}"));
    let forwards: Vec<&&Span> =
        in_trace.iter().filter(|s| s.name == "forward" && node_of(s) == follower_name).collect();
    assert!(forwards.len() >= 10, "a forward span per request on the follower: {names:?}");
    let begin = in_trace
        .iter()
        .find(|s| s.name == "POST /txn/begin" && node_of(s) == leader_name)
        .unwrap_or_else(|| panic!("the leader's begin in the trace: {names:?}"));
    assert!(
        forwards.iter().any(|f| f.span_id == begin.parent_span_id),
        "the leader's begin hangs under the hop"
    );
    // Each member's apply hangs under a proposal of the leader's.
    let proposals: Vec<&&Span> =
        in_trace.iter().filter(|s| s.name == "raft.propose" && node_of(s) == leader_name).collect();
    for apply in in_trace.iter().filter(|s| s.name == "raft.apply") {
        assert!(
            proposals.iter().any(|p| p.span_id == apply.parent_span_id),
            "an apply on {} without the leader's proposal as its parent",
            node_of(apply)
        );
        assert_eq!(attr(apply, "restm.txn").as_deref(), Some(txn.as_str()));
    }
}
