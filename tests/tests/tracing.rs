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
                            for ss in rs.scope_spans {
                                out.extend(ss.spans);
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
