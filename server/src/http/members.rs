//! `POST /cluster/members` and `DELETE /cluster/members/{id}`: membership changes, served by
//! any member (each group's change is made by its leader, see
//! [`crate::cluster::membership`]). Both answer the cluster as this member then sees it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use restm_shared::{ClusterStatus, MemberRequest, Problem};

use super::AppState;
use super::error::ApiError;
use super::request::json_body;
use crate::cluster::membership::MembershipError;

/// Adds a node to every group: a learner first, promoted to voter once it has caught up.
/// A node already a voter at the same address is left as it is.
#[utoipa::path(post, path = "/cluster/members", tag = "node", request_body = MemberRequest,
    responses((status = 200, description = "the node is a voter of every group", body = ClusterStatus),
        (status = 400, description = "a bad body, id or peer_url", body = Problem),
        (status = 409, description = "`member-exists` (the id is a member at another address) or `not-a-cluster`", body = Problem),
        (status = 503, description = "`unavailable`: a group had no leader or majority, or the node did not catch up within 60 s (the groups before it changed; ask again)", body = Problem)))]
pub async fn add(State(state): State<AppState>, body: Bytes) -> Result<Json<ClusterStatus>, ApiError> {
    let req: MemberRequest = json_body(&body, "member")?;
    let cluster = state.node.cluster().ok_or(ApiError::NotAClusterMember)?;
    cluster.add_member(req.id, req.peer_url.trim()).await?;
    Ok(Json(cluster.status_seen(state.node.now_millis()).await))
}

/// Takes a node out of every group. Refused while a group would be left without a
/// majority of voters that are up.
#[utoipa::path(delete, path = "/cluster/members/{id}", tag = "node",
    params(("id" = u64, Path, description = "the node's id")),
    responses((status = 200, description = "the node is in no group", body = ClusterStatus),
        (status = 400, description = "the id is not a whole number from 1", body = Problem),
        (status = 404, description = "no member has that id", body = Problem),
        (status = 409, description = "`would-lose-majority` (naming the `partitions`) or `not-a-cluster`", body = Problem),
        (status = 503, description = "`unavailable`: a group had no leader or majority", body = Problem)))]
pub async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ClusterStatus>, ApiError> {
    let node: u64 =
        id.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            MembershipError::Invalid(format!("member id {id:?} is not a whole number from 1"))
        })?;
    let cluster = state.node.cluster().ok_or(ApiError::NotAClusterMember)?;
    cluster.remove_member(node, state.node.now_millis()).await?;
    Ok(Json(cluster.status_seen(state.node.now_millis()).await))
}
