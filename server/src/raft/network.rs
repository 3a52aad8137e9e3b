//! openraft's network for a group, over the shared [`super::transport`].
//!
//! A [`Network`] is one group's view of the node's [`Peers`]: every [`Link`] it makes to a
//! target rides that target's one connection, tagged with the group.

use std::io;
use std::sync::Arc;

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Snapshot, Vote};

use super::transport::{PeerClient, Peers, Request, Response};
use super::{BasicNode, GroupId, NodeId, Restm};

/// Makes a group's links to its peers.
pub struct Network {
    peers: Arc<Peers>,
    group: GroupId,
}

impl Network {
    pub fn new(peers: Arc<Peers>, group: GroupId) -> Self {
        Self { peers, group }
    }
}

impl RaftNetworkFactory<Restm> for Network {
    type Network = Link;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Link {
        Link { client: self.peers.client(target, &node.addr), group: self.group, target }
    }
}

/// A group's link to one peer.
pub struct Link {
    client: Arc<PeerClient>,
    group: GroupId,
    target: NodeId,
}

type RpcError = RPCError<NodeId, BasicNode, RaftError<NodeId>>;

fn unexpected(resp: &Response) -> NetworkError {
    let what = match resp {
        Response::NoGroup(g) => format!("the peer holds no member of group {g}"),
        _ => "the peer answered another kind of request".to_string(),
    };
    NetworkError::new(&io::Error::other(what))
}

impl Link {
    async fn call(&self, req: Request, option: &RPCOption) -> Result<Response, Unreachable> {
        self.client.call(&req, option.hard_ttl()).await.map_err(|e| Unreachable::new(&e))
    }
}

impl RaftNetwork<Restm> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Restm>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        match self.call(Request::Append { group: self.group, rpc }, &option).await? {
            Response::Append(Ok(r)) => Ok(r),
            Response::Append(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(RPCError::Network(unexpected(&other))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        match self.call(Request::Vote { group: self.group, rpc }, &option).await? {
            Response::Vote(Ok(r)) => Ok(r),
            Response::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(RPCError::Network(unexpected(&other))),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<Restm>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<Restm, Fatal<NodeId>>> {
        let req =
            Request::Snapshot { group: self.group, vote, meta: snapshot.meta, data: *snapshot.snapshot };
        let resp = tokio::select! {
            r = self.call(req, &option) => r?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        match resp {
            Response::Snapshot(Ok(r)) => Ok(r),
            Response::Snapshot(Err(e)) => Err(StreamingError::RemoteError(RemoteError::new(self.target, e))),
            other => Err(StreamingError::Network(unexpected(&other))),
        }
    }
}
