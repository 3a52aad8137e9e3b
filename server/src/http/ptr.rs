//! Pointer routes: `GET/PUT/DELETE /ptr/{id}`, `GET /ptr/{id}/history` and `GET /ptr`.

use axum::Json;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use restm_shared::{
    HEADER_VERSION, HistoryEntry, HistoryPage, ListPage, PointerEntry, Problem, StagedResponse, WriteResponse,
};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::request::{
    PtrPath, at_header, if_match, json_value, lock_header, raw_json, trace_id, txn_header, version_time,
};
use crate::engine::{EngineError, PtrId};
use crate::node::Precondition;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

fn version_header(resp: &mut Response, version: u64) {
    if let Ok(v) = HeaderValue::from_str(&version.to_string()) {
        resp.headers_mut().insert(HEADER_VERSION, v);
    }
}

fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!("limit must be between 1 and {MAX_LIMIT}, not {n}"))),
    }
}

/// Reads a pointer: inside `X-reSTM-Txn` at its snapshot, as of `X-reSTM-At`, or the latest.
/// With `X-reSTM-Lock: update` inside a transaction it is a locking read: it takes the
/// pointer's write lock first (waiting like a write), and reads the newest version, moving
/// the snapshot forward if needed (a `409` if something already read changed meanwhile).
#[utoipa::path(get, path = "/ptr/{id}", tag = "pointers",
    params(("id" = String, Path, description = "pointer id, percent-encoded, 1..=512 bytes"),
        ("X-reSTM-Txn" = Option<String>, Header, description = "read inside this transaction"),
        ("X-reSTM-Lock" = Option<String>, Header, description = "`update`: a locking read (needs X-reSTM-Txn); holds the pointer's lock until the transaction ends"),
        ("X-reSTM-At" = Option<String>, Header, description = "read as of a version, RFC 3339 instant or -10s. On a cluster, at or below \
            the partition's closed timestamp (GET /cluster) any member serves it from its own state")),
    responses((status = 200, description = "the stored JSON value; X-reSTM-Version names its version. On a cluster, X-reSTM-Served-By \
            names the member that served it", body = Object),
        (status = 404, description = "absent at that snapshot", body = Problem),
        (status = 400, description = "bad id or header", body = Problem),
        (status = 409, description = "a locking read timed out on the lock, or what the transaction read changed", body = Problem),
        (status = 410, description = "older than the GC horizon", body = Problem)))]
pub async fn get_ptr(
    State(state): State<AppState>,
    PtrPath(ptr): PtrPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    tracing::Span::current().record("restm.ptr", ptr.as_str());
    let node = &state.node;
    let txn = txn_header(&headers)?;
    let at = at_header(node, &headers)?;
    let for_update = lock_header(&headers)?;
    if for_update && txn.is_none() {
        return Err(ApiError::bad_request(
            "X-reSTM-Lock needs X-reSTM-Txn: a lock is held by a transaction until it ends",
        ));
    }
    if txn.is_some() && at.is_some() {
        return Err(ApiError::bad_request(
            "X-reSTM-At cannot be combined with X-reSTM-Txn: a transaction reads at its own snapshot",
        ));
    }
    let txn = txn.map(|id| node.use_txn(id)).transpose()?;
    let found = match (&txn, at) {
        (Some(txn), _) if for_update => state.node.read_for_update(txn, &ptr).await?,
        (Some(txn), _) => state.node.read(Some(txn), &ptr, txn.read_version()).await?,
        (None, at) => {
            // Across groups this member's replica first holds every acknowledged write, and
            // its clock is above them; the latest read's version is taken after that.
            node.settle(Some(&ptr)).await?;
            let at = at.unwrap_or_else(|| node.now_version());
            state.node.read(None, &ptr, at).await?
        }
    };
    let Some(rec) = found else { return Err(ApiError::PointerNotFound { ptr }) };
    let Some(value) = rec.value.clone() else { return Err(ApiError::PointerNotFound { ptr }) };
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], value).into_response();
    // A transaction's own staged write has no version yet.
    if txn.as_ref().is_none_or(|t| t.id != rec.txn) {
        version_header(&mut resp, rec.version);
    }
    Ok(resp)
}

/// Writes a pointer: staged under its lock inside `X-reSTM-Txn`, or committed on its own.
#[utoipa::path(put, path = "/ptr/{id}", tag = "pointers",
    params(("id" = String, Path, description = "pointer id"),
        ("X-reSTM-Txn" = Option<String>, Header, description = "stage the write in this transaction"),
        ("If-Match" = Option<String>, Header, description = "only if the pointer is at this version (or * for: exists)")),
    request_body(content = Object, description = "any JSON value", content_type = "application/json"),
    responses((status = 200, description = "committed (outside a txn)", body = WriteResponse),
        (status = 409, description = "conflict or lock timeout; the txn is aborted", body = Problem),
        (status = 412, description = "If-Match did not hold", body = Problem),
        (status = 413, description = "body too large", body = Problem),
        (status = 400, description = "malformed JSON, id or header", body = Problem),
        (status = 503, description = "`outcome-unknown` (a one-shot whose write or fsync failed: read to learn it) or `unavailable` (the node takes no writes)", body = Problem)))]
pub async fn put_ptr(
    State(state): State<AppState>,
    PtrPath(ptr): PtrPath,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let value = json_value(&body?)?;
    write(&state, ptr, Some(value), &headers).await
}

/// Deletes a pointer; reads then give 404 and history shows a deleted version.
#[utoipa::path(delete, path = "/ptr/{id}", tag = "pointers",
    params(("id" = String, Path, description = "pointer id"),
        ("X-reSTM-Txn" = Option<String>, Header, description = "stage the delete in this transaction"),
        ("If-Match" = Option<String>, Header, description = "only if the pointer is at this version")),
    responses((status = 200, description = "committed (outside a txn)", body = WriteResponse),
        (status = 404, description = "the pointer has no live value", body = Problem),
        (status = 409, description = "conflict or lock timeout", body = Problem),
        (status = 412, description = "If-Match did not hold", body = Problem)))]
pub async fn delete_ptr(
    State(state): State<AppState>,
    PtrPath(ptr): PtrPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    write(&state, ptr, None, &headers).await
}

/// PUT and DELETE share this: a delete also requires the pointer to exist.
async fn write(
    state: &AppState,
    ptr: String,
    value: Option<Bytes>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    tracing::Span::current().record("restm.ptr", ptr.as_str());
    let pre = if_match(headers)?;
    let is_delete = value.is_none();
    if let Some(id) = txn_header(headers)? {
        let txn = state.node.use_txn(id)?;
        // A delete needs a live value first; If-Match then holds or not.
        let checks: Vec<Precondition> =
            is_delete.then_some(Precondition::Exists).into_iter().chain(pre.clone()).collect();
        match state.node.write_checked(&txn, &ptr, value, &checks).await {
            Err(EngineError::NotFound { .. }) if is_delete => return Err(ApiError::PointerNotFound { ptr }),
            other => other.map_err(|e| precondition_failed(&ptr, pre.as_ref(), e))?,
        }
        let body = StagedResponse { txn: txn.id.to_string(), ptr, staged: true };
        return Ok(Json(body).into_response());
    }
    let mut checks: Vec<(PtrId, Precondition)> = Vec::new();
    if let Some(p) = pre.clone() {
        checks.push((ptr.as_str().into(), p));
    } else if is_delete {
        checks.push((ptr.as_str().into(), Precondition::Exists));
    }
    let writes = vec![(PtrId::from(ptr.as_str()), value)];
    let result = state.node.one_shot(&checks, writes, trace_id(headers)).await;
    let (_, version) = match result {
        Err(e @ EngineError::NotFound { .. }) if is_delete => return Err(e.into()),
        other => other.map_err(|e| precondition_failed(&ptr, pre.as_ref(), e))?,
    };
    let mut resp = Json(WriteResponse { version }).into_response();
    version_header(&mut resp, version);
    Ok(resp)
}

/// A failed `If-Match` as `412`: the node answers a version that did not match as
/// `CheckFailed`, and a pointer that had to exist (`If-Match: *`) and does not as `NotFound`.
fn precondition_failed(ptr: &str, pre: Option<&Precondition>, e: EngineError) -> ApiError {
    match (e, pre) {
        (EngineError::CheckFailed { expected, actual, .. }, _) => ApiError::PreconditionFailed {
            ptr: ptr.to_string(),
            expected: expected.map_or_else(|| "absent".into(), |v| v.to_string()),
            actual,
        },
        (EngineError::NotFound { .. }, Some(Precondition::Exists)) => {
            ApiError::PreconditionFailed { ptr: ptr.to_string(), expected: "*".into(), actual: None }
        }
        (e, _) => ApiError::Engine(e),
    }
}

/// Query of `GET /ptr/{id}/history`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Page size, 1..=1000 (default 100).
    pub limit: Option<usize>,
    /// Cursor: the `next` of the previous page (a version).
    pub after: Option<u64>,
}

/// Every version of a pointer, ascending, paginated; with `X-reSTM-At`, only those up to it.
#[utoipa::path(get, path = "/ptr/{id}/history", tag = "pointers",
    params(("id" = String, Path, description = "pointer id"), HistoryQuery,
        ("X-reSTM-At" = Option<String>, Header, description = "only versions up to this moment")),
    responses((status = 200, body = HistoryPage),
        (status = 404, description = "never written", body = Problem),
        (status = 410, description = "X-reSTM-At is older than the GC horizon", body = Problem),
        (status = 400, body = Problem)))]
pub async fn history(
    State(state): State<AppState>,
    PtrPath(ptr): PtrPath,
    query: Result<Query<HistoryQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let limit = page_limit(q.limit)?;
    if headers.contains_key(restm_shared::HEADER_TXN) {
        return Err(ApiError::bad_request("history is not read inside a transaction; use X-reSTM-At"));
    }
    let upto = match at_header(&state.node, &headers)? {
        Some(at) => {
            state.node.check_horizon(at)?;
            at
        }
        None => u64::MAX,
    };
    let (versions, more, written) = state.node.history(&ptr, q.after, upto, limit).await?;
    if !written {
        return Err(ApiError::PointerNotFound { ptr });
    }
    let next = if more { versions.last().map(|v| v.version.to_string()) } else { None };
    let versions = versions
        .into_iter()
        .map(|v| HistoryEntry {
            version: v.version,
            time: version_time(v.version),
            txn: v.txn.to_string(),
            deleted: v.value.is_none(),
            value: v.value.as_ref().map(raw_json),
            trace_id: v.trace_id.to_string(),
        })
        .collect();
    Ok(Json(HistoryPage { versions, next }).into_response())
}

/// Query of `GET /ptr`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only pointers whose id starts with this.
    pub prefix: Option<String>,
    /// Page size, 1..=1000 (default 100).
    pub limit: Option<usize>,
    /// Cursor: the `next` of the previous page (a pointer id).
    pub after: Option<String>,
}

/// Live pointers under a prefix, ordered by id, at the latest snapshot, as of `X-reSTM-At`,
/// or at the snapshot of a read-only `X-reSTM-Txn`.
#[utoipa::path(get, path = "/ptr", tag = "pointers",
    params(ListQuery,
        ("X-reSTM-At" = Option<String>, Header, description = "list as of this moment"),
        ("X-reSTM-Txn" = Option<String>, Header, description = "a read-only transaction to list at")),
    responses((status = 200, body = ListPage), (status = 400, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let limit = page_limit(q.limit)?;
    let prefix = q.prefix.unwrap_or_default();
    if prefix.len() > super::request::MAX_PTR_LEN {
        return Err(ApiError::bad_request("prefix is longer than the longest pointer id"));
    }
    let txn = txn_header(&headers)?;
    let at = at_header(&state.node, &headers)?;
    if txn.is_some() && at.is_some() {
        return Err(ApiError::bad_request("X-reSTM-At cannot be combined with X-reSTM-Txn"));
    }
    let txn = txn.map(|id| state.node.use_txn(id)).transpose()?;
    let at = match (txn, at) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("X-reSTM-At cannot be combined with X-reSTM-Txn"));
        }
        (Some(t), None) if !t.read_only => {
            return Err(ApiError::bad_request(
                "listing inside a read-write transaction would not be serializable (phantoms); \
                 list in a read-only transaction or with X-reSTM-At",
            ));
        }
        (Some(t), None) => {
            state.node.settle(None).await?;
            t.read_version()
        }
        (None, at) => {
            // Across groups, after every group's barrier: a latest listing sees every
            // acknowledged commit (see `get_ptr`).
            state.node.settle(None).await?;
            at.unwrap_or_else(|| state.node.now_version())
        }
    };
    let (page, more) = state.node.list(&prefix, q.after.as_deref(), at, limit).await?;
    let next = if more { page.last().map(|(p, _)| p.to_string()) } else { None };
    let pointers = page
        .into_iter()
        .filter_map(|(ptr, v)| {
            v.value.as_ref().map(|val| PointerEntry {
                ptr: ptr.to_string(),
                version: v.version,
                value: raw_json(val),
            })
        })
        .collect();
    Ok((StatusCode::OK, Json(ListPage { pointers, next })).into_response())
}
