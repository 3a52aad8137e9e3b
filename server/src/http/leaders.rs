//! `POST /cluster/groups/{group}/leader`: an operator moves a group's lead to another of
//! its voters (as etcd's `move-leader`), served by any member: the group's leader makes
//! the handover (see [`crate::cluster::balance`]).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use restm_shared::{LeaderMove, LeaderMoved, Problem};

use super::AppState;
use super::error::ApiError;
use super::request::json_body;

/// Hands a group's lead to another of its voters: the leader stops appending, waits until
/// that voter holds its whole log, and asks it to campaign. Commands meanwhile wait and
/// then go to the new leader. With one group, that group's leader coordinates every
/// transaction, and the ones it runs are aborted (`leadership-lost`).
#[utoipa::path(post, path = "/cluster/groups/{group}/leader", tag = "node", request_body = LeaderMove,
    params(("group" = u32, Path, description = "the group's id, as `GET /cluster` lists it")),
    responses((status = 200, description = "the voter asked for leads the group (`moved`, or `already`)", body = LeaderMoved),
        (status = 400, description = "a bad body or group id, or `to` is no voter of the group", body = Problem),
        (status = 404, description = "no such group", body = Problem),
        (status = 409, description = "`not-a-cluster`", body = Problem),
        (status = 503, description = "`unavailable`: the group has no leader, its lead moved meanwhile, or the handover did not take; ask again", body = Problem)))]
pub async fn move_leader(
    State(state): State<AppState>,
    Path(group): Path<String>,
    body: Bytes,
) -> Result<Json<LeaderMoved>, ApiError> {
    let group: u32 = group.trim().parse().map_err(|_| {
        ApiError::bad_request(format!("group {group:?} is not a group id (a whole number from 0)"))
    })?;
    let req: LeaderMove = json_body(&body, "leader move")?;
    let cluster = state.node.cluster().ok_or(ApiError::NotAClusterMember)?;
    Ok(Json(cluster.move_leader(group, req.to).await?))
}
