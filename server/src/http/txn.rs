//! Transaction routes: begin, commit, abort, status, and the one-shot `POST /txn`.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use restm_shared::{
    AbortResponse, BeginRequest, BeginResponse, CommitResponse, OneShotRequest, Problem, ReadEntry, TxnState,
    TxnStatus, WriteEntry,
};

use super::AppState;
use super::error::ApiError;
use super::request::{at_header, check_ptr, json_body, json_value, trace_id};

use crate::engine::{BeginOptions, Phase, PtrId, Txn};
use crate::node::Node;
use crate::node::Precondition;

/// Begins a transaction. With `X-reSTM-At` it is a read-only transaction pinned there.
#[utoipa::path(post, path = "/txn/begin", tag = "transactions",
    request_body(content = Option<BeginRequest>, content_type = "application/json"),
    params(("X-reSTM-At" = Option<String>, Header, description = "pin a read-only snapshot at this moment")),
    responses((status = 201, body = BeginResponse), (status = 400, body = Problem),
        (status = 503, description = "critical memory pressure; see Retry-After", body = Problem)))]
pub async fn begin(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let req: BeginRequest = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => BeginRequest::default(),
        Some(b'{') => json_body(&body, "begin")?,
        Some(_) => return Err(ApiError::bad_request("the begin body must be a JSON object (or empty)")),
    };
    let at = at_header(&state.node, &headers)?;
    if at.is_some() && req.read_only == Some(false) {
        return Err(ApiError::bad_request(
            "a transaction pinned with X-reSTM-At is read-only; drop read_only: false",
        ));
    }
    let max = state.node.max_timeout_ms();
    if let Some(t) = req.timeout_ms
        && !(1..=max).contains(&t)
    {
        return Err(ApiError::bad_request(format!("timeout_ms must be between 1 and {max}, not {t}")));
    }
    let (trace, root_span) = super::request::trace_of_request(&headers);
    let txn = state.node.begin(BeginOptions {
        read_only: req.read_only.unwrap_or(false),
        timeout_ms: req.timeout_ms,
        at,
        trace_id: Some(trace.clone()),
        root_span,
        frees_memory: false,
    })?;
    tracing::Span::current().record("restm.txn", &*txn.id);
    let body = BeginResponse { txn: txn.id.to_string(), read_version: txn.read_version() };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

fn txn_path(node: &Node, path: Result<Path<String>, PathRejection>) -> Result<std::sync::Arc<Txn>, ApiError> {
    let Path(id) = path?;
    Ok(node.txn(&id)?)
}

/// Commits a transaction: validates its reads, makes its writes durable, releases its locks.
#[utoipa::path(post, path = "/txn/{id}/commit", tag = "transactions",
    params(("id" = String, Path, description = "transaction id")),
    responses((status = 200, body = CommitResponse),
        (status = 409, description = "conflict (the txn is aborted), or already committed or aborted", body = Problem),
        (status = 404, description = "unknown txn", body = Problem),
        (status = 503, description = "`outcome-unknown`: the write or fsync failed and the commit may or may not be durable (read to learn it); or `unavailable`: the node stopped taking writes after such a failure", body = Problem)))]
pub async fn commit(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let txn = txn_path(&state.node, path)?;
    let commit_version = state.node.commit(&txn).await?;
    Ok(Json(CommitResponse { commit_version }).into_response())
}

/// Aborts a transaction and releases its locks. Aborting twice is harmless.
#[utoipa::path(post, path = "/txn/{id}/abort", tag = "transactions",
    params(("id" = String, Path, description = "transaction id")),
    responses((status = 200, body = AbortResponse),
        (status = 409, description = "already committed", body = Problem),
        (status = 404, description = "unknown txn", body = Problem)))]
pub async fn abort(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let txn = txn_path(&state.node, path)?;
    state.node.abort(&txn)?;
    Ok(Json(AbortResponse { txn: txn.id.to_string(), state: TxnState::Aborted }).into_response())
}

/// A transaction's state, snapshot, read and write sets, held locks, age and trace id.
#[utoipa::path(get, path = "/txn/{id}", tag = "transactions",
    params(("id" = String, Path, description = "transaction id")),
    responses((status = 200, body = TxnStatus), (status = 404, body = Problem)))]
pub async fn status(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let txn = txn_path(&state.node, path)?;
    Ok(Json(txn_status(&txn, state.node.now_millis())).into_response())
}

/// The wire view of a transaction.
pub fn txn_status(txn: &Txn, now_ms: u64) -> TxnStatus {
    let inner = txn.inner.lock();
    let (state, commit_version, abort_reason) = match &inner.phase {
        Phase::Active | Phase::Committing => (TxnState::Active, None, None),
        Phase::Committed(v) => (TxnState::Committed, Some(*v), None),
        Phase::Aborted(r) => (TxnState::Aborted, None, Some(r.to_string())),
    };
    let end = inner.finished_ms.unwrap_or(now_ms);
    TxnStatus {
        txn: txn.id.to_string(),
        state,
        read_only: txn.read_only,
        read_version: txn.read_version(),
        reads: inner.reads.iter().map(|(p, v)| ReadEntry { ptr: p.to_string(), version: *v }).collect(),
        writes: inner
            .writes
            .iter()
            .map(|(p, v)| WriteEntry { ptr: p.to_string(), delete: v.is_none() })
            .collect(),
        locks: inner.locks.iter().map(|p| p.to_string()).collect(),
        age_ms: end.saturating_sub(txn.started_ms),
        timeout_ms: txn.timeout_ms,
        trace_id: txn.trace_id.to_string(),
        commit_version,
        abort_reason,
    }
}

/// One-shot conditional transaction: every check holds and every write commits, atomically.
#[utoipa::path(post, path = "/txn", tag = "transactions",
    request_body(content = OneShotRequest, content_type = "application/json"),
    responses((status = 200, body = CommitResponse),
        (status = 409, description = "a check failed or a conflict; names the pointer", body = Problem),
        (status = 400, body = Problem), (status = 413, body = Problem)))]
pub async fn one_shot(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request("the one-shot body must be a JSON object with checks and writes"));
    }
    let req: OneShotRequest = json_body(&body, "one-shot transaction")?;
    if req.checks.is_empty() && req.writes.is_empty() {
        return Err(ApiError::bad_request("a one-shot transaction needs at least one check or write"));
    }
    let mut checks = Vec::with_capacity(req.checks.len());
    for c in &req.checks {
        check_ptr(&c.ptr)?;
        checks.push((PtrId::from(c.ptr.as_str()), Precondition::Version(c.version)));
    }
    let mut seen = BTreeSet::new();
    let mut writes = Vec::with_capacity(req.writes.len());
    for w in req.writes {
        check_ptr(&w.ptr)?;
        if !seen.insert(w.ptr.clone()) {
            return Err(ApiError::bad_request(format!("pointer {:?} is written twice", w.ptr)));
        }
        let value = match (w.value, w.delete) {
            (Some(_), true) => {
                return Err(ApiError::bad_request(format!(
                    "write to {:?} has both a value and delete",
                    w.ptr
                )));
            }
            (None, false) => {
                return Err(ApiError::bad_request(format!(
                    "write to {:?} needs \"value\" or \"delete\": true",
                    w.ptr
                )));
            }
            (Some(v), false) => Some(json_value(&Bytes::copy_from_slice(v.get().as_bytes()))?),
            (None, true) => None,
        };
        writes.push((PtrId::from(w.ptr.as_str()), value));
    }
    writes.sort_by(|a, b| a.0.cmp(&b.0));
    let (_, commit_version) = state.node.one_shot(&checks, writes, trace_id(&headers)).await?;
    Ok(Json(CommitResponse { commit_version }).into_response())
}
