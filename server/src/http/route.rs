//! Where a request is served, on a replicated node: the data group's leader coordinates
//! every transaction and serves every read, so any other member hands the request on to it
//! and relays the answer. Routes about the node itself (`/health`, `/metrics`, `/cluster`,
//! `/events`, `/openapi.json`, `/ui`) are served where they land.
//!
//! - On the leader, a latest read first confirms the lead (under the leader's lease, or
//!   with a heartbeat round to a majority: [`crate::raft::lease`]), so no read is older than
//!   an acknowledged write.
//! - A follower read: `GET /ptr/{id}` with `X-reSTM-At` at or below the pointer's
//!   partition's closed timestamp on this node (and not below its GC horizon) is served
//!   here, by any member, from its own state: every commit at or below that timestamp is
//!   already applied here. Anything later goes to the leader.
//! - Every answer a member serves names it in `X-reSTM-Served-By` (a forwarded answer keeps
//!   the leader's, and its `traceresponse`).
//! - The hop is a `forward` span, whose `traceparent` replaces the client's on the request
//!   handed on (it continues the client's trace), so the leader's spans hang under it.
//! - Where every member coordinates (partitions in several groups, `serve --groups`), a
//!   member serves begins, one-shots and reads itself (its reads wait for a read barrier on
//!   the pointer's group, [`crate::node::Node::settle`]), and hands a request of a txn
//!   (`/txn/{id}/…`, or `X-reSTM-Txn`) on to the member its id names (`n2-…`); only
//!   `/pins` and `/gc` still go to the first group's leader.
//! - A request is handed on once: one that arrives already forwarded (`x-restm-forwarded`)
//!   at a node that does not lead is answered `503 unavailable` with `Retry-After`, as is
//!   one that finds no leader elected or cannot reach it.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::AppState;
use super::error::ApiError;

/// Set on a request a member handed on to the leader (its value: that member's id).
pub const HEADER_FORWARDED: &str = "x-restm-forwarded";
/// Set on every answer a member of a cluster served itself: its node id.
pub const HEADER_SERVED_BY: &str = "x-restm-served-by";

/// How long handing a request on may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The client members use to hand requests on; with TLS it trusts only the cluster's CA.
pub fn forwarder(tls: Option<&crate::tls::Tls>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(30));
    if let Some(tls) = tls {
        builder = builder.tls_certs_only(tls.reqwest_roots());
    }
    builder.build().unwrap_or_default()
}

/// Whether the leader serves `path` (everything about pointers, txns, pins and GC).
fn leader_route(path: &str) -> bool {
    under(path, &["/ptr", "/txn", "/txns", "/locks", "/pins", "/gc"])
}

/// Whether `path` is one of `prefixes` or below one.
fn under(path: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| path == *p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')))
}

/// Serves `req` here, or hands it on to the leader (or, where every member coordinates,
/// to the txn's coordinator).
pub async fn dispatch(state: &AppState, req: Request, next: Next) -> Response {
    let Some(cluster) = state.node.cluster() else { return next.run(req).await };
    if !leader_route(req.uri().path()) {
        return next.run(req).await;
    }
    let me = cluster.node_id();
    if follower_read(state, &req) {
        return served_by(me, next.run(req).await);
    }
    if cluster.coordinates_anywhere() && !meta_route(req.uri().path()) {
        if let Some(leader) = one_shot_leader(state, cluster, &req)
            && let Some(url) = cluster.client_url(leader).await
        {
            return relay(state, cluster, leader, &url, req).await;
        }
        return match txn_of(&req).and_then(|id| cluster.coordinator_of(&id)).filter(|k| *k != me) {
            None => served_by(me, next.run(req).await),
            Some(coordinator) => hand_on(state, cluster, coordinator, req).await,
        };
    }
    if cluster.is_leader() {
        if req.method() == Method::GET
            && let Err(e) = cluster.confirm_leader().await
        {
            return ApiError::Unavailable(format!("this node could not confirm it still leads: {e}; retry"))
                .into_response();
        }
        return served_by(me, next.run(req).await);
    }
    let (leader, url) = match hand_on_to(cluster, req.headers()).await {
        Ok(to) => to,
        Err(e) => return e.into_response(),
    };
    relay(state, cluster, leader, &url, req).await
}

/// Hands `req` on to its txn's coordinator, another member. Refused (`503`, retryable)
/// when the request was handed on already or the coordinator's URL cannot be learned (it
/// is down: its txns end by their records).
async fn hand_on(
    state: &AppState,
    cluster: &crate::cluster::Cluster,
    coordinator: u64,
    req: Request,
) -> Response {
    if req.headers().contains_key(HEADER_FORWARDED) {
        return ApiError::Unavailable(format!(
            "handed on to a node that does not coordinate this txn (node {coordinator} does); retry"
        ))
        .into_response();
    }
    let Some(url) = cluster.client_url(coordinator).await else {
        return ApiError::Unavailable(format!(
            "the txn's coordinator, node {coordinator}, cannot be reached; retry the txn, on any node"
        ))
        .into_response();
    };
    relay(state, cluster, coordinator, &url, req).await
}

/// Sends `req` to member `to` at `url`, in a `forward` span that its spans hang under.
async fn relay(
    state: &AppState,
    cluster: &crate::cluster::Cluster,
    to: u64,
    url: &str,
    req: Request,
) -> Response {
    let span = tracing::info_span!("forward", otel.kind = "client", restm.to = to);
    match forward(state, url, cluster.node_id(), req, crate::telemetry::traceparent_of(&span))
        .instrument(span)
        .await
    {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// Routes the first group's leader serves even where every member coordinates: the
/// cluster's pins and its GC.
fn meta_route(path: &str) -> bool {
    under(path, &["/pins", "/gc"])
}

/// Where every member coordinates, a one-shot write of one pointer (`PUT` or `DELETE
/// /ptr/{id}` outside a txn) is handed on to the leader of the pointer's group, once: there
/// it commits in one `PrepareCommit` rather than three proposals from here. The leader, if
/// another member and known.
fn one_shot_leader(state: &AppState, cluster: &crate::cluster::Cluster, req: &Request) -> Option<u64> {
    if !matches!(*req.method(), Method::PUT | Method::DELETE)
        || req.headers().contains_key(HEADER_FORWARDED)
        || req.headers().contains_key(restm_shared::HEADER_TXN)
    {
        return None;
    }
    let raw = req.uri().path().strip_prefix("/ptr/")?;
    if raw.is_empty() || raw.contains('/') {
        return None;
    }
    let ptr = percent_encoding::percent_decode_str(raw).decode_utf8().ok()?;
    let group = cluster.group_of(state.node.partition_of(&ptr));
    cluster.leader_of(group).filter(|l| *l != cluster.node_id())
}

/// The txn a request works in: `/txn/{id}[/…]` (not `/txn/begin`), or `X-reSTM-Txn`.
fn txn_of(req: &Request) -> Option<String> {
    if let Some(rest) = req.uri().path().strip_prefix("/txn/") {
        let id = rest.split('/').next().unwrap_or_default();
        return (id != "begin" && !id.is_empty()).then(|| id.to_string());
    }
    req.headers().get(restm_shared::HEADER_TXN).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// Where a member that does not lead hands a request with `headers` on to: the leader's id
/// and client URL. Refused (`503`, retryable) when the request was handed on already (the
/// lead just moved), when no leader is elected, or when its URL cannot be learned.
pub async fn hand_on_to(
    cluster: &crate::cluster::Cluster,
    headers: &axum::http::HeaderMap,
) -> Result<(u64, String), ApiError> {
    if headers.contains_key(HEADER_FORWARDED) {
        return Err(ApiError::Unavailable(
            "handed on to a node that does not lead (the lead just moved); retry, on any node".into(),
        ));
    }
    let leader = cluster.leader().ok_or_else(|| {
        ApiError::Unavailable("no leader is elected (a majority of the members is unreachable); retry".into())
    })?;
    let url = cluster.client_url(leader).await.ok_or_else(|| {
        ApiError::Unavailable(format!("the leader, node {leader}, cannot be reached; retry"))
    })?;
    Ok((leader, url))
}

/// Whether `req` is a read this node serves from its own state, leader or not: `GET
/// /ptr/{id}` outside a txn, with `X-reSTM-At` at or below the closed timestamp of the
/// pointer's partition here and not below this node's GC horizon. Anything this cannot
/// read (a malformed header, say) goes the usual way, and is answered there.
fn follower_read(state: &AppState, req: &Request) -> bool {
    if req.method() != Method::GET {
        return false;
    }
    let Some(raw) = req.uri().path().strip_prefix("/ptr/") else { return false };
    let headers = req.headers();
    if raw.is_empty()
        || raw.contains('/')
        || headers.contains_key(restm_shared::HEADER_TXN)
        || headers.contains_key(restm_shared::HEADER_LOCK)
    {
        return false;
    }
    let Some(at) = headers.get(restm_shared::HEADER_AT).and_then(|v| v.to_str().ok()) else { return false };
    let Ok(ptr) = percent_encoding::percent_decode_str(raw).decode_utf8() else { return false };
    let Ok(at) = super::request::parse_at(&state.node, at) else { return false };
    at <= state.node.closed_for(&ptr) && state.node.check_horizon(at).is_ok()
}

/// Names this member on an answer it served.
fn served_by(me: u64, mut resp: Response) -> Response {
    resp.headers_mut().insert(HEADER_SERVED_BY, HeaderValue::from(me));
    resp
}

/// Sends `req` to the node at `url` and relays its answer.
/// `traceparent` (the hop's span) replaces the client's, whose trace it continues.
async fn forward(
    state: &AppState,
    url: &str,
    me: u64,
    req: Request,
    traceparent: Option<String>,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, state.max_body)
        .await
        .map_err(|e| ApiError::TooLarge(format!("the body is larger than this node's limit: {e}")))?;
    let target =
        format!("{}{}", url.trim_end_matches('/'), parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    let mut out = state.forwarder.request(parts.method.clone(), &target).body(body);
    for (name, value) in &parts.headers {
        let replaced = traceparent.is_some() && name == "traceparent";
        if !hop_by_hop(name) && !replaced {
            out = out.header(name, value);
        }
    }
    if let Some(tp) = traceparent {
        out = out.header("traceparent", tp);
    }
    out = out.header(HEADER_FORWARDED, HeaderValue::from(me));
    let answer = out.send().await.map_err(|e| {
        ApiError::Unavailable(format!("handing the request on to the member at {url} failed: {e}; retry"))
    })?;
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.map_err(|e| {
        ApiError::Unavailable(format!("the member at {url} broke off its answer: {e}; retry"))
    })?;
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    for (name, value) in &headers {
        if !hop_by_hop(name) {
            resp.headers_mut().append(name, value.clone());
        }
    }
    Ok(resp)
}

/// Headers that belong to one connection, not to the request.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
            | "proxy-connection"
    )
}

#[cfg(test)]
mod tests {
    use super::{leader_route, meta_route, txn_of};

    #[test]
    fn a_request_names_its_txn_by_path_or_header_and_pins_and_gc_stay_meta() {
        let req = |uri: &str, txn: Option<&str>| {
            let mut b = axum::http::Request::builder().uri(uri);
            if let Some(t) = txn {
                b = b.header(restm_shared::HEADER_TXN, t);
            }
            b.body(axum::body::Body::empty()).unwrap()
        };
        assert_eq!(txn_of(&req("/txn/n2-00ab/commit", None)).as_deref(), Some("n2-00ab"));
        assert_eq!(txn_of(&req("/txn/n3-01", None)).as_deref(), Some("n3-01"));
        assert_eq!(txn_of(&req("/txn/begin", None)), None);
        assert_eq!(txn_of(&req("/ptr/a", Some("n1-ff"))).as_deref(), Some("n1-ff"));
        assert_eq!(txn_of(&req("/ptr/a", None)), None);
        for p in ["/pins", "/pins/x", "/gc"] {
            assert!(meta_route(p), "{p}");
        }
        for p in ["/ptr/a", "/txn/begin", "/txns", "/gcx"] {
            assert!(!meta_route(p), "{p}");
        }
    }

    #[test]
    fn the_leader_serves_data_routes_and_each_node_its_own() {
        for p in
            ["/ptr", "/ptr/a", "/txn", "/txn/begin", "/txn/x/commit", "/txns", "/locks", "/pins/p", "/gc"]
        {
            assert!(leader_route(p), "{p}");
        }
        for p in ["/health", "/metrics", "/cluster", "/events", "/openapi.json", "/ui/", "/ptrx", "/gcx"] {
            assert!(!leader_route(p), "{p}");
        }
    }
}
