//! Membership: adding a member to every group and removing one, each group's change made
//! by that group's leader as a Raft membership change; and the joiner's side of
//! `serve --join`.
//!
//! - **Adding** (`POST /cluster/members`, or a node started with `--join`): in each group
//!   in turn the new node becomes a learner, catches up with the log (or a snapshot), and is
//!   promoted to voter ([`crate::raft::replica::Replica::add_voter`]). While it catches up
//!   it shows in `/cluster` among the group's `learners`. Asking again for a node that is
//!   already a voter at the same address changes nothing, so a joiner that restarts may ask
//!   again.
//! - **Removing** (`DELETE /cluster/members/{id}`): refused, naming the partitions, when a
//!   group would be left without a majority of voters that are up. Otherwise each group
//!   drops the node in turn, the first group last (its membership is the cluster's list of
//!   members; the first group is also the first a new node joins).
//! - Any member takes either request: for each group it asks that group's leader over the
//!   peer port ([`Request::Member`]), and follows the lead if it moves meanwhile.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::Cluster;
use crate::raft::transport::{MemberChange, Refused, Request, Response};
use crate::raft::{GroupId, NodeId};

/// Longest a new member may take to catch up with one group's log.
const CATCH_UP: Duration = Duration::from_secs(60);
/// Longest one group's change may take, leader moves included.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(75);
/// How often the joiner asks again while the member it asks cannot add it yet.
const JOIN_RETRY: Duration = Duration::from_secs(1);

/// Why a membership change was not made.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The request names no valid node or address.
    #[error("{0}")]
    Invalid(String),
    /// The node is a member already, at another address.
    #[error("node {node} is a member already, at {addr}; remove it first to move it")]
    Exists { node: NodeId, addr: String },
    #[error("node {0} is not a member of the cluster")]
    NotAMember(NodeId),
    /// The removal would leave these groups without a majority of voters that are up.
    #[error(
        "removing node {node} would leave partitions {partitions:?} (groups {groups:?}) without a majority of \
         voters that are up; bring the others back first"
    )]
    WouldLoseMajority { node: NodeId, groups: Vec<GroupId>, partitions: Vec<u32> },
    /// A group's leader could not make the change (no leader, no majority, or the new member
    /// did not catch up in time). The groups before it changed; asking again goes on.
    #[error("group {group}: {why}")]
    Unavailable { group: GroupId, why: String },
}

/// Checks a peer URL as `--initial-cluster` takes them: `http://host:port` (or https).
pub fn check_peer_url(url: &str) -> Result<(), MembershipError> {
    let addr = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| MembershipError::Invalid(format!("peer_url {url:?} is not http://host:port")))?;
    let valid = addr.parse::<std::net::SocketAddr>().is_ok_and(|a| a.port() > 0)
        || addr.rsplit_once(':').is_some_and(|(host, port)| {
            host.parse::<std::net::IpAddr>().is_err()
                && !host.is_empty()
                && !host.contains('/')
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
    if valid {
        Ok(())
    } else {
        Err(MembershipError::Invalid(format!("peer_url {url:?} is not http://host:port")))
    }
}

impl Cluster {
    /// Makes `node`, dialled at `peer_url`, a voter of every group.
    pub async fn add_member(&self, node: NodeId, peer_url: &str) -> Result<(), MembershipError> {
        if node == 0 {
            return Err(MembershipError::Invalid("a node id is a whole number from 1".into()));
        }
        check_peer_url(peer_url)?;
        for replica in &self.replicas {
            let membership = replica.metrics().membership_config.membership().clone();
            if let Some(there) = membership.get_node(&node)
                && there.addr != peer_url
            {
                return Err(MembershipError::Exists { node, addr: there.addr.clone() });
            }
        }
        for group in 0..self.groups() {
            let change = MemberChange::Add { node, addr: peer_url.to_string() };
            self.change_at_leader(group, change).await?;
        }
        tracing::info!(node, peer_url, "a member added to every group");
        Ok(())
    }

    /// Takes `node` out of every group, unless a group would be left without a majority of
    /// voters that are up.
    pub async fn remove_member(&self, node: NodeId, now_millis: u64) -> Result<(), MembershipError> {
        if !self.members().contains(&node) {
            return Err(MembershipError::NotAMember(node));
        }
        let status = self.status_seen(now_millis).await;
        let up: BTreeSet<NodeId> =
            status.members.iter().filter(|m| m.state == "up").map(|m| m.node_id).collect();
        let mut groups = Vec::new();
        let mut partitions = Vec::new();
        for g in &status.groups {
            if !g.voters.contains(&node) {
                continue;
            }
            let rest: Vec<NodeId> = g.voters.iter().copied().filter(|v| *v != node).collect();
            let live = rest.iter().filter(|v| up.contains(v)).count();
            if rest.is_empty() || live * 2 <= rest.len() {
                groups.push(g.group);
                partitions.extend(g.partitions.iter().copied());
            }
        }
        if !groups.is_empty() {
            return Err(MembershipError::WouldLoseMajority { node, groups, partitions });
        }
        // The first group last: its membership names the cluster's members (whom the
        // watermark waits for, whose txns are resolved), so the node stays one until it
        // has left every other group.
        for group in (0..self.groups()).rev() {
            self.change_at_leader(group, MemberChange::Remove { node }).await?;
        }
        tracing::info!(node, "a member removed from every group");
        Ok(())
    }

    /// Whether this node is a voter of every group, as its replicas know it.
    pub fn voter_everywhere(&self) -> bool {
        let me = self.config.node_id;
        self.replicas.iter().all(|r| r.metrics().membership_config.membership().voter_ids().any(|v| v == me))
    }

    /// Makes `change` to `group` at its leader, here or over the peer port, following the
    /// lead while it moves.
    async fn change_at_leader(&self, group: GroupId, change: MemberChange) -> Result<(), MembershipError> {
        let deadline = Instant::now() + CHANGE_TIMEOUT;
        loop {
            let answer = match self.leader_of(group) {
                None => Err(Refused::NotLeader(None)),
                Some(leader) if leader == self.config.node_id => {
                    self.change_here(group, change.clone()).await
                }
                Some(leader) => self.change_at(leader, group, change.clone()).await,
            };
            match answer {
                Ok(()) => {
                    self.saw_change(group, &change).await;
                    return Ok(());
                }
                Err(Refused::NotLeader(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(refused) => return Err(MembershipError::Unavailable { group, why: refused.to_string() }),
            }
        }
    }

    /// Waits, up to [`super::APPLY_WAIT`], until this member's replica of `group` shows
    /// `change`, made by the leader: what this member answers next (its `/cluster`, the
    /// next group's check) then knows of it. Past the bound the change stands all the same.
    async fn saw_change(&self, group: GroupId, change: &MemberChange) {
        let mut watch = self.replicas[group as usize].watch();
        let shows = |m: &openraft::RaftMetrics<NodeId, crate::raft::BasicNode>| {
            let membership = m.membership_config.membership();
            match change {
                MemberChange::Add { node, .. } => membership.voter_ids().any(|v| v == *node),
                MemberChange::Remove { node } => membership.get_node(node).is_none(),
            }
        };
        if tokio::time::timeout(super::APPLY_WAIT, watch.wait_for(shows)).await.is_err() {
            tracing::debug!(group, ?change, "this member does not show a membership change yet");
        }
    }

    /// Asks `leader` to make `change` to `group`.
    async fn change_at(&self, leader: NodeId, group: GroupId, change: MemberChange) -> Result<(), Refused> {
        let peer = self.peer(leader).ok_or(Refused::NotLeader(None))?;
        match peer.call(&Request::Member { group, change }, CHANGE_TIMEOUT).await {
            Ok(Response::Member(answer)) => answer,
            Ok(other) => {
                Err(Refused::Failed(format!("node {leader} answered a membership change with {other:?}")))
            }
            // Unreachable now: the lead may move to a member that is reachable.
            Err(e) => {
                tracing::debug!(leader, group, error = %e, "asking a group's leader to change its membership");
                Err(Refused::NotLeader(None))
            }
        }
    }

    /// Makes `change` to `group`, which this node leads.
    pub(super) async fn change_here(&self, group: GroupId, change: MemberChange) -> Result<(), Refused> {
        let replica = self.led(group)?;
        let made = match &change {
            MemberChange::Add { node, addr } => replica.add_voter(*node, addr, CATCH_UP).await,
            MemberChange::Remove { node } => replica.remove_member(*node).await,
        };
        made.map_err(super::refusal)
    }
}

/// A node that joins a running cluster (`serve --join`): the member it asks, and the
/// address its peers are to dial it at.
#[derive(Debug, Clone)]
pub struct Join {
    /// A member's client URL (`http://host:port`).
    pub url: String,
    /// This node's peer URL, as the members will dial it.
    pub peer_url: String,
    /// The bearer token the members take (this node's own `--auth-token`).
    pub token: Option<String>,
}

impl Join {
    fn request(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let rb = http.request(method, url);
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// The cluster as the member at [`Join::url`] sees it, to learn its name and its group
    /// count before this node opens its replicas. Retries for up to 30 s while the member
    /// cannot be reached.
    pub async fn discover(&self, http: &reqwest::Client) -> Result<restm_shared::ClusterStatus, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.request(http, reqwest::Method::GET, "/cluster").send().await;
            let why = match answer {
                Ok(r) if r.status().is_success() => {
                    let status: restm_shared::ClusterStatus =
                        r.json().await.map_err(|e| format!("{} answered /cluster with {e}", self.url))?;
                    if !status.replicated {
                        return Err(format!("{} is a node of its own, not a cluster member", self.url));
                    }
                    return Ok(status);
                }
                Ok(r) => format!("it answered {}", r.status()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(format!("cannot learn the cluster from {}: {why}", self.url));
            }
            tracing::info!(url = %self.url, %why, "waiting for the member to join through");
            tokio::time::sleep(JOIN_RETRY).await;
        }
    }

    /// Asks the member to add `node` to every group; retries until it is added, or a
    /// member refuses it for good (a `4xx`, logged).
    pub fn spawn_request(self, http: reqwest::Client, node: NodeId) {
        tokio::spawn(async move {
            let body = restm_shared::MemberRequest { id: node, peer_url: self.peer_url.clone() };
            loop {
                let answer =
                    self.request(&http, reqwest::Method::POST, "/cluster/members").json(&body).send().await;
                match answer {
                    Ok(r) if r.status().is_success() => {
                        tracing::info!(node, url = %self.url, "joined the cluster: a voter of every group");
                        return;
                    }
                    Ok(r) if r.status().is_client_error() => {
                        let status = r.status();
                        let detail = r.text().await.unwrap_or_default();
                        tracing::error!(node, url = %self.url, %status, %detail, "the cluster refused this node");
                        return;
                    }
                    Ok(r) => {
                        let detail = r.text().await.unwrap_or_default();
                        tracing::warn!(node, url = %self.url, %detail, "joining: not yet; asking again");
                    }
                    Err(e) => {
                        tracing::warn!(node, url = %self.url, error = %e, "joining: not yet; asking again")
                    }
                }
                tokio::time::sleep(JOIN_RETRY).await;
            }
        });
    }
}
