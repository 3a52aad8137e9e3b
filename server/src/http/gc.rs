//! Garbage collection seen from outside: `GET /gc` (watermark, what holds it, horizon,
//! totals) and pins (`POST /pins`, `GET /pins`, `GET /pins/{id}`, `DELETE /pins/{id}`),
//! which keep history at a moment for a while, like CockroachDB's protected timestamps.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use restm_shared::{GcStatus, PinRequest, PinView, Pins, Problem, WatermarkHolder};

use super::AppState;
use super::error::ApiError;
use super::request::{json_body, parse_at, version_time, version_time_ms};
use crate::cluster::watermark::Holder;
use crate::engine::gc::{HeldBy, Pin, Watermark};
use crate::engine::hlc::millis_of;
use crate::node::Node;

/// Longest a pin may last.
const MAX_PIN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest note kept with a pin.
const MAX_NOTE: usize = 1024;

fn holder(w: &Watermark) -> WatermarkHolder {
    held_by(&w.held_by, None)
}

fn held_by(held: &HeldBy, node: Option<u64>) -> WatermarkHolder {
    let (kind, id) = match held {
        HeldBy::Retention => ("retention", None),
        HeldBy::Latest => ("latest", None),
        HeldBy::Txn(t) => ("txn", Some(t.to_string())),
        HeldBy::Pin(p) => ("pin", Some(p.clone())),
        HeldBy::Horizon => ("horizon", None),
        HeldBy::Cluster => ("cluster", None),
    };
    WatermarkHolder { kind: kind.into(), id, node }
}

/// The cluster's watermark's holder as `/gc` names it.
fn cluster_holder(h: &Holder) -> WatermarkHolder {
    match h {
        Holder::Member(node, held) => held_by(held, Some(*node)),
        Holder::Unreachable(node) => {
            WatermarkHolder { kind: "unreachable".into(), id: None, node: Some(*node) }
        }
    }
}

/// The watermark's holder as metric labels.
pub fn holder_labels(w: &Watermark) -> (&'static str, String) {
    let h = holder(w);
    let kind = match h.kind.as_str() {
        "retention" => "retention",
        "latest" => "latest",
        "txn" => "txn",
        "pin" => "pin",
        "cluster" => "cluster",
        _ => "horizon",
    };
    (kind, h.id.unwrap_or_default())
}

/// Where garbage collection stands. On a cluster the watermark is the cluster's, gathered
/// from every member for this answer, and names the member that holds it.
#[utoipa::path(get, path = "/gc", tag = "observability", responses((status = 200, body = GcStatus)))]
pub async fn status(State(state): State<AppState>) -> Json<GcStatus> {
    let node = &state.node;
    let local = node.watermark();
    let gathered = match node.cluster() {
        Some(cluster) => node.cluster_watermark(cluster).await.map(|w| (w, node.cluster_horizon())),
        None => None,
    };
    let (version, held_by, unreachable, cluster_horizon) = match gathered {
        Some((w, h)) => (w.version, cluster_holder(&w.held_by), w.unreachable, Some(h)),
        None => (local.version, holder(&local), Vec::new(), None),
    };
    let now = node.now_millis();
    let horizon = node.horizon();
    let t = state.node.gc_totals();
    Json(GcStatus {
        watermark: version,
        watermark_time: version_time(version),
        watermark_lag_ms: now.saturating_sub(millis_of(version)),
        held_by,
        cluster_horizon,
        unreachable,
        horizon,
        horizon_time: version_time(horizon),
        retention_ms: node.retention_ms(),
        pins: node.pins().len(),
        passes: t.passes,
        versions_pruned_memory: t.versions_memory,
        versions_pruned_disk: t.versions_disk,
        bytes_reclaimed_memory: t.bytes_memory,
        bytes_reclaimed_disk: t.bytes_disk,
        pointers_removed: t.pointers_removed,
        last_pass: t.last_pass_ms.map(version_time_ms),
        last_pass_ms: t.last_elapsed_ms,
        pressure: node.pressure().as_str().to_string(),
        memory_bytes: node.memory_bytes(),
        memory_budget_bytes: node.memory_budget(),
    })
}

fn view(node: &Node, pin: &Pin, w: &Watermark) -> PinView {
    let now = node.now_millis();
    let pinned_ms = millis_of(pin.version);
    let retention_floor = now.saturating_sub(node.retention_ms());
    PinView {
        id: pin.id.clone(),
        version: pin.version,
        time: version_time(pin.version),
        expires: version_time_ms(pin.expires_ms),
        expires_in_ms: pin.expires_ms.saturating_sub(now),
        holds_back_ms: now.saturating_sub(pinned_ms),
        beyond_retention_ms: retention_floor.saturating_sub(pinned_ms),
        holds_watermark: w.held_by == HeldBy::Pin(pin.id.clone()),
        note: pin.note.clone(),
    }
}

/// Pins history at a moment for a while.
#[utoipa::path(post, path = "/pins", tag = "gc", request_body = PinRequest,
    responses((status = 201, body = PinView),
        (status = 400, description = "bad body, moment or ttl", body = Problem),
        (status = 410, description = "the moment is already older than the GC horizon", body = Problem)))]
pub async fn create_pin(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let req: PinRequest = json_body(&body, "pin")?;
    let at = match req.at.as_deref().map(str::trim) {
        None | Some("") => state.node.now_version(),
        Some(raw) => parse_at(&state.node, raw)?,
    };
    let ttl = humantime::parse_duration(req.ttl.trim()).map_err(|e| {
        ApiError::bad_request(format!("ttl {:?} is not a duration ({e}); use e.g. 30m or 2h", req.ttl))
    })?;
    if ttl.is_zero() || ttl > MAX_PIN_TTL {
        return Err(ApiError::bad_request(format!("ttl {:?} must be above 0 and at most 30 days", req.ttl)));
    }
    let note = req.note.unwrap_or_default();
    if note.len() > MAX_NOTE {
        return Err(ApiError::bad_request(format!("note is {} bytes; at most {MAX_NOTE}", note.len())));
    }
    let node = state.node.clone();
    let ttl_ms = ttl.as_millis() as u64;
    let pin = match node.cluster() {
        Some(cluster) => node.pin_replicated(cluster, at, ttl_ms, note).await?,
        None => tokio::task::spawn_blocking(move || node.pin(at, ttl_ms, note)).await.map_err(|e| {
            crate::engine::EngineError::Storage(crate::engine::StorageError::backend("a pin task", e))
        })??,
    };
    let w = state.node.watermark();
    Ok((StatusCode::CREATED, Json(view(&state.node, &pin, &w))).into_response())
}

/// Live pins, oldest version first.
#[utoipa::path(get, path = "/pins", tag = "gc", responses((status = 200, body = Pins)))]
pub async fn list_pins(State(state): State<AppState>) -> Json<Pins> {
    let node = &state.node;
    let w = node.watermark();
    Json(Pins { pins: node.pins().iter().map(|p| view(node, p, &w)).collect() })
}

/// One pin.
#[utoipa::path(get, path = "/pins/{id}", tag = "gc", params(("id" = String, Path, description = "pin id")),
    responses((status = 200, body = PinView), (status = 404, body = Problem)))]
pub async fn get_pin(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PinView>, ApiError> {
    let node = &state.node;
    let w = node.watermark();
    Ok(Json(view(node, &node.pin_of(&id)?, &w)))
}

/// Removes a pin; its history may then be collected.
#[utoipa::path(delete, path = "/pins/{id}", tag = "gc", params(("id" = String, Path, description = "pin id")),
    responses((status = 200, body = PinView), (status = 404, body = Problem)))]
pub async fn delete_pin(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let node = state.node.clone();
    let pin = match node.cluster() {
        Some(cluster) => node.unpin_replicated(cluster, &id).await?,
        None => tokio::task::spawn_blocking(move || node.unpin(&id)).await.map_err(|e| {
            crate::engine::EngineError::Storage(crate::engine::StorageError::backend("a pin task", e))
        })??,
    };
    let w = state.node.watermark();
    Ok(Json(view(&state.node, &pin, &w)).into_response())
}
