//! `GET /openapi.json`: the OpenAPI document, generated from the handlers' annotations.

use axum::Json;
use utoipa::OpenApi;

use restm_shared as wire;

/// The OpenAPI document of the node.
#[derive(OpenApi)]
#[openapi(
    info(title = "reSTM", description = "Distributed software transactional memory over HTTP. \
        Every 4xx/5xx body is application/problem+json with a documented `code`."),
    paths(
        super::health, super::cluster_status, document, super::events::events, super::observe::metrics, super::observe::txns, super::observe::locks,
        super::txn::begin, super::txn::one_shot, super::txn::status, super::txn::commit, super::txn::abort,
        super::ptr::get_ptr, super::ptr::put_ptr, super::ptr::delete_ptr, super::ptr::history, super::ptr::list, super::ui::page,
        super::gc::status, super::gc::create_pin, super::gc::list_pins, super::gc::get_pin, super::gc::delete_pin,
        super::members::add, super::members::remove, super::leaders::move_leader,
    ),
    components(schemas(
        wire::BeginRequest, wire::BeginResponse, wire::WriteResponse, wire::StagedResponse,
        wire::CommitResponse, wire::AbortResponse, wire::TxnState, wire::TxnStatus, wire::ReadEntry,
        wire::WriteEntry, wire::Check, wire::WriteOp, wire::OneShotRequest, wire::HistoryEntry,
        wire::HistoryPage, wire::PointerEntry, wire::ListPage, wire::Health, wire::Problem, wire::Event, wire::ActiveTxns, wire::LockWaiter,
        wire::LockView, wire::Locks, wire::GcStatus, wire::WatermarkHolder, wire::PinRequest, wire::PinView, wire::Pins,
        wire::ClusterStatus, wire::MemberRequest, wire::LeaderMove, wire::LeaderMoved, wire::LeaderChange, wire::MemberStatus, wire::GroupStatus, wire::FollowerLag, wire::ClosedTimestamp, wire::RaftTiming,
    )),
    tags((name = "pointers"), (name = "transactions"), (name = "node"), (name = "observability"), (name = "gc"))
)]
pub struct ApiDoc;

/// Serves the document.
#[utoipa::path(get, path = "/openapi.json", tag = "node", responses((status = 200, description = "OpenAPI 3 document")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
