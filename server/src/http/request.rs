//! Reading the contract's request headers and bodies: `X-reSTM-Txn`, `X-reSTM-At`,
//! `If-Match`, `traceparent`, pointer ids and JSON values. Each bad input gets a precise
//! [`ApiError`] here, before any handler touches the engine.

use std::sync::Arc;

use axum::http::HeaderMap;
use bytes::Bytes;
use restm_shared::{HEADER_AT, HEADER_TXN};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::error::ApiError;
use crate::engine::hlc::{millis_of, version_at_millis};
pub use crate::engine::hlc::{version_time, version_time_ms};
use crate::node::Node;
use crate::node::Precondition;

/// Longest pointer id, in bytes.
pub const MAX_PTR_LEN: usize = 512;

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| ApiError::bad_request(format!("header {name} is not visible ASCII"))),
    }
}

/// Checks a pointer id: 1..=512 bytes of UTF-8 (the path extractor already decoded it).
pub fn check_ptr(ptr: &str) -> Result<(), ApiError> {
    if ptr.is_empty() {
        return Err(ApiError::bad_request("a pointer id must not be empty"));
    }
    if ptr.len() > MAX_PTR_LEN {
        return Err(ApiError::bad_request(format!(
            "a pointer id is at most {MAX_PTR_LEN} bytes; this one has {}",
            ptr.len()
        )));
    }
    Ok(())
}

/// The `{id}` of a pointer route, decoded and checked with [`check_ptr`].
pub struct PtrPath(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PtrPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(ptr) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await?;
        check_ptr(&ptr)?;
        Ok(PtrPath(ptr))
    }
}

/// `X-reSTM-Lock`: whether a read is a locking read (`update`, the only value).
pub fn lock_header(headers: &HeaderMap) -> Result<bool, ApiError> {
    match header_str(headers, restm_shared::HEADER_LOCK)? {
        None => Ok(false),
        Some(v) if v.trim().eq_ignore_ascii_case("update") => Ok(true),
        Some(v) => Err(ApiError::bad_request(format!("X-reSTM-Lock must be `update`, not {v:?}"))),
    }
}

/// The transaction id named by `X-reSTM-Txn`, if any (the handler looks it up through the
/// node, which renews its lease).
pub fn txn_header(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    header_str(headers, HEADER_TXN)
}

/// The version asked for by `X-reSTM-At`, if any.
pub fn at_header(node: &Node, headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match header_str(headers, HEADER_AT)? {
        None => Ok(None),
        Some(raw) => parse_at(node, raw).map(Some),
    }
}

/// Parses `X-reSTM-At`: a version (`1234`), an RFC 3339 instant, or a relative time in the
/// past (`-10s`, `-5m`, `-1h30m`, `-250ms`).
pub fn parse_at(node: &Node, raw: &str) -> Result<u64, ApiError> {
    let bad = |why: &str| {
        ApiError::bad_request(format!(
            "X-reSTM-At {raw:?} {why}; use a version (1234), an RFC 3339 instant \
             (2026-11-23T10:00:00Z) or a relative time in the past (-10s, -5m)"
        ))
    };
    if raw.is_empty() {
        return Err(bad("is empty"));
    }
    if raw.bytes().all(|b| b.is_ascii_digit()) {
        let v: u64 = raw.parse().map_err(|_| bad("is too large for a version"))?;
        return Ok(node.check_at(v)?);
    }
    let now_version = node.now_version();
    let now_ms = millis_of(now_version);
    let millis = if let Some(rel) = raw.strip_prefix('-') {
        let d =
            humantime::parse_duration(rel.trim()).map_err(|e| bad(&format!("is not a duration ({e})")))?;
        let d = u64::try_from(d.as_millis()).map_err(|_| bad("reaches too far back"))?;
        now_ms.checked_sub(d).ok_or_else(|| bad("reaches before 1970"))?
    } else if raw.starts_with('+') {
        return Err(bad("is in the future"));
    } else {
        let t = OffsetDateTime::parse(raw, &Rfc3339).map_err(|e| bad(&format!("is not RFC 3339 ({e})")))?;
        let ms = t.unix_timestamp_nanos() / 1_000_000;
        let ms = u64::try_from(ms).map_err(|_| bad("is before 1970"))?;
        if ms > now_ms {
            return Err(bad("is in the future"));
        }
        ms
    };
    Ok(version_at_millis(millis).min(now_version))
}

/// `If-Match`: `*` (the pointer must exist) or a version, optionally quoted like an ETag.
pub fn if_match(headers: &HeaderMap) -> Result<Option<Precondition>, ApiError> {
    let Some(raw) = header_str(headers, "if-match")? else { return Ok(None) };
    if raw == "*" {
        return Ok(Some(Precondition::Exists));
    }
    let v = raw.trim_start_matches("W/").trim_matches('"');
    v.parse::<u64>()
        .map(|v| Some(Precondition::Version(Some(v))))
        .map_err(|_| ApiError::bad_request(format!("If-Match {raw:?} is neither * nor a version")))
}

/// The trace a new transaction belongs to, and its root span: the current request's span
/// when traces are exported; else the trace id of a well-formed `traceparent`; else a fresh
/// random one.
pub fn trace_of_request(headers: &HeaderMap) -> (Arc<str>, Option<Arc<str>>) {
    if let Some((t, s)) = crate::telemetry::current() {
        return (t.into(), Some(s.into()));
    }
    let incoming = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(crate::telemetry::parse_traceparent)
        .map(|(t, _)| t)
        .filter(|t| {
            t.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                && t.bytes().any(|b| b != b'0')
        });
    let trace = incoming.unwrap_or_else(|| format!("{:032x}", rand::random::<u128>().max(1)));
    (trace.into(), None)
}

/// The trace id for a one-shot transaction (see [`trace_of_request`]).
pub fn trace_id(headers: &HeaderMap) -> Option<Arc<str>> {
    Some(trace_of_request(headers).0)
}

/// Validates a JSON value and returns its exact text, without surrounding whitespace.
pub fn json_value(body: &Bytes) -> Result<Bytes, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the body must be a JSON value, and it is empty"));
    }
    let raw: &RawValue = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    // A copy, not a slice: the body usually shares hyper's read buffer (8 KiB or more), and
    // a stored slice would keep the whole buffer alive for as long as the version lives.
    Ok(Bytes::copy_from_slice(raw.get().as_bytes()))
}

/// Renders stored JSON text for embedding in a response.
pub fn raw_json(value: &Bytes) -> Box<RawValue> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| RawValue::from_string(s.to_string()).ok())
        .unwrap_or_else(|| RawValue::NULL.to_owned())
}

/// Parses a JSON request body into `T`, with a 400 naming what is wrong.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad {what} body: {e}")))
}
