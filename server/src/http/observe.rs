//! Routes and middleware for watching a node: `GET /metrics` and request timing.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::metrics::Snapshot;

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "observability",
    responses((status = 200, description = "Prometheus text exposition (OpenMetrics)", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let node = &state.node;
    let now = node.now_millis();
    let active = node.active_txns();
    let oldest = active.iter().map(|t| t.started_ms).min().map_or(0, |s| now.saturating_sub(s));
    let (pointers, versions) = node.memory_stats();
    let watermark = node.watermark();
    let snap = Snapshot {
        active_txns: active.len() as i64,
        oldest_txn_age_seconds: oldest as f64 / 1000.0,
        pointers_in_memory: pointers as i64,
        versions_in_memory: versions as i64,
        versions_on_disk: node.versions_on_disk() as i64,
        disk_bytes: node.disk_bytes() as i64,
        event_subscribers: state.events.subscribers.load(Ordering::Relaxed) as i64,
        events_lagged_total: state.events.lagged.load(Ordering::Relaxed),
        gc_horizon: node.horizon() as i64,
        gc_watermark_lag_seconds: now.saturating_sub(crate::engine::hlc::millis_of(watermark.version)) as f64
            / 1000.0,
        gc_held_by: super::gc::holder_labels(&watermark),
        memory_bytes: node.memory_bytes() as i64,
        memory_budget_bytes: node.memory_budget() as i64,
        pressure_level: node.pressure() as i64,
        raft: node.cluster().map(|c| {
            let st = c.status(now);
            let (peer_frames, peer_flushes) = c.wire();
            let g = st.groups.first();
            let as_i64 = |v: Option<u64>| v.map_or(0, |v| v as i64);
            crate::metrics::RaftGauges {
                term: g.map_or(0, |g| g.term as i64),
                is_leader: g.is_some_and(|g| g.role == "leader"),
                last_log_index: as_i64(g.and_then(|g| g.last_log_index)),
                applied_index: as_i64(g.and_then(|g| g.applied_index)),
                follower_lag: g
                    .map(|g| g.follower_lag.iter().map(|f| (f.node_id, as_i64(f.lag))).collect())
                    .unwrap_or_default(),
                closed_lag_seconds: g.and_then(|g| g.closed.iter().map(|c| c.lag_ms).max()).unwrap_or(0)
                    as f64
                    / 1000.0,
                peer_frames,
                peer_flushes,
            }
        }),
    };
    let body = state.metrics.render(snap);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        .into_response()
}

/// The one middleware every request passes: checks the token ([`super::auth::check`]),
/// times the request labelled by its route template (never its raw path, so pointer ids
/// never become label values), records the status on the request span and returns the
/// request's trace as a W3C `traceresponse` header. One layer rather than three: axum
/// clones each layer's state and inner service for every request.
pub async fn edge(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let started = Instant::now();
    let mut resp = match super::auth::check(&state, &req) {
        Ok(()) => super::route::dispatch(&state, req, next).await,
        Err(e) => e.into_response(),
    };
    let status = resp.status().as_u16();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    state.metrics.observe_request(route, &method, status, started.elapsed().as_secs_f64());
    tracing::Span::current().record("http.response.status_code", status);
    // An answer relayed from the leader keeps the leader's (the txn's trace).
    if !resp.headers().contains_key("traceresponse")
        && let Some(tp) = crate::telemetry::traceparent_of(&tracing::Span::current())
        && let Ok(v) = axum::http::HeaderValue::from_str(&tp)
    {
        resp.headers_mut().insert("traceresponse", v);
    }
    resp
}

/// The active transactions, oldest first, with their read and write sets and held locks.
/// With partitions in several groups, every member's (see `X-reSTM-Missing`).
#[utoipa::path(get, path = "/txns", tag = "observability",
    responses((status = 200, body = restm_shared::ActiveTxns, headers(
        ("x-restm-missing" = String, description = "members whose part is missing (they did not answer in time), comma-separated")))))]
pub async fn txns(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let now = state.node.now_millis();
    let mut active = state.node.active_txns();
    active.sort_by(|a, b| a.started_ms.cmp(&b.started_ms).then_with(|| a.id.cmp(&b.id)));
    let txns: Vec<_> = active.iter().map(|t| super::txn::txn_status(t, now)).collect();
    let oldest = txns.first().map(|t| t.txn.clone());
    let mine = restm_shared::ActiveTxns { txns, oldest };
    if super::gather::gathers(&state, &headers) {
        return super::gather::txns(&state, &headers, mine).await;
    }
    axum::Json(mine).into_response()
}

/// Every held lock: its holder and the transactions waiting for it, contended ones first.
/// With partitions in several groups, every member's, each lock with its waiters on every
/// member (see `X-reSTM-Missing`).
#[utoipa::path(get, path = "/locks", tag = "observability",
    responses((status = 200, body = restm_shared::Locks, headers(
        ("x-restm-missing" = String, description = "members whose part is missing (they did not answer in time), comma-separated")))))]
pub async fn locks(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if !state.node.cluster().is_some_and(|c| c.coordinates_anywhere()) {
        return axum::Json(restm_shared::Locks { locks: state.node.locks() }).into_response();
    }
    let (locks, waiting) = state.node.lock_parts();
    let mine = super::gather::LocksPart { locks, waiting };
    if super::gather::gathers(&state, &headers) {
        return super::gather::locks(&state, &headers, mine).await;
    }
    // Another member gathering: this member's part, waiters for locks held elsewhere too.
    axum::Json(mine).into_response()
}

/// The span of one request: named `METHOD /route`, parented on the transaction's root span
/// when the request names a transaction (so a transaction is one trace), else on an incoming
/// W3C `traceparent`.
pub fn request_span(state: &AppState, req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str());
    let method = req.method().as_str();
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        restm.txn = tracing::field::Empty,
        restm.ptr = tracing::field::Empty,
        restm.version = tracing::field::Empty,
    );
    if span.is_disabled() {
        // No layer wants it (no trace export, no RUST_LOG asking for spans): skip the lookups.
        return span;
    }
    let headers = req.headers();
    let txn = headers
        .get(restm_shared::HEADER_TXN)
        .and_then(|v| v.to_str().ok())
        .or_else(|| route.starts_with("/txn/{id}").then(|| req.uri().path().split('/').nth(2)).flatten())
        .and_then(|id| state.node.txn(id.trim()).ok());
    if let Some(txn) = txn {
        span.record("restm.txn", &*txn.id);
        if let Some(root) = &txn.root_span {
            crate::telemetry::set_parent(&span, &txn.trace_id, root);
            return span;
        }
    }
    if let Some((t, s)) =
        headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(crate::telemetry::parse_traceparent)
    {
        crate::telemetry::set_parent(&span, &t, &s);
    }
    span
}
