//! The peer transport: one TCP connection per pair of nodes, shared by every group.
//!
//! Frames are length-delimited (tokio-util's codec) `postcard` messages. A connection opens
//! with a [`Hello`] naming the cluster, the dialling node, the node it means to reach and the
//! peer token; the listener answers [`Greeting::Welcome`] or refuses, logs why, and closes.
//! After that each request is `(id, Request)` and each answer `(id, Response)`, so many
//! requests of many groups are in flight on one connection at once.
//!
//! [`PeerServer`] serves the groups of this node; [`Peers`] holds this node's connection to
//! each other node, dialled on first use and again after it breaks.
//!
//! Each connection has one writer task ([`write_frames`]): every frame queued when it
//! wakes goes out in one flush, so the heartbeats and appends that many groups send a peer
//! at the same moment, and the answers to them, share a write to the socket (the
//! timers stay openraft's, one per group). [`WireStats`] counts frames and flushes, for
//! `/metrics`.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use openraft::error::{Fatal, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{Raft, SnapshotMeta, Vote};

use super::lease::Lease;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use super::{BasicNode, GroupId, NodeId, Restm, decode, encode};

/// The largest frame: a snapshot travels in one.
const MAX_FRAME: usize = 1 << 30;
/// Most frames one flush takes, so one busy connection does not starve the others' writers.
const FRAMES_PER_FLUSH: usize = 256;
/// How long dialling a peer and its greeting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME).new_codec()
}

/// Who this node is to its peers: what a [`Hello`] must match.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The cluster's name: nodes of two clusters never talk.
    pub cluster: String,
    pub node: NodeId,
    /// The shared peer token; `None` admits any peer that names the cluster and the node.
    pub token: Option<String>,
    /// Where this node serves clients (`http://host:port`), for peers that forward to it.
    pub client_url: String,
    /// TLS on the peer port and when dialling peers; `None`: plain TCP.
    pub tls: Option<Arc<crate::tls::Tls>>,
}

/// The first frame on a connection, from the dialling node.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub cluster: String,
    pub from: NodeId,
    /// The node the dialler believes it reaches.
    pub to: NodeId,
    pub token: Option<String>,
}

/// The listener's answer to a [`Hello`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Greeting {
    Welcome,
    Refused(String),
}

/// A request to a peer, for one group.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Append {
        group: GroupId,
        rpc: AppendEntriesRequest<Restm>,
    },
    Vote {
        group: GroupId,
        rpc: VoteRequest<NodeId>,
    },
    Snapshot {
        group: GroupId,
        vote: Vote<NodeId>,
        meta: SnapshotMeta<NodeId, BasicNode>,
        data: Vec<u8>,
    },
    /// Where the peer serves clients.
    Info,
    /// Propose a command to `group`, which the peer leads: a coordinator elsewhere changing
    /// one of the group's partitions. `hlc` is the sender's clock, which the peer's moves
    /// above before it answers.
    Propose {
        group: GroupId,
        proposed: super::Proposed,
        hlc: u64,
    },
    /// Confirm the lead of `group`, which the peer leads, and answer how far it has
    /// applied: a member that applies that far holds every write acknowledged before.
    ReadIndex {
        group: GroupId,
        hlc: u64,
    },
    /// Which of `txns`, which the peer coordinates, it is still running: a resolver that
    /// found them prepared ends at once those their coordinator no longer runs (it ended
    /// them, or restarted since it began them).
    Running {
        txns: Vec<crate::engine::TxnId>,
    },
    /// Take `ptr`'s lock for `txn`, which the sender coordinates, at the leader of the
    /// pointer's group, waiting up to `wait_ms` for another holder (see
    /// [`crate::cluster::locks`]).
    Lock {
        txn: crate::engine::TxnId,
        ptr: crate::engine::PtrId,
        wait_ms: u64,
        hlc: u64,
    },
    /// `txn` ended: release the locks it holds here on `ptrs`.
    Unlock {
        txn: crate::engine::TxnId,
        ptrs: Vec<crate::engine::PtrId>,
    },
    /// The peer's own GC watermark, as a promise to begin no txn below it (see
    /// [`crate::cluster::watermark`]).
    Watermark,
    /// How long since the peer last heard from each member: a follower, which hears only
    /// leaders, asks a leader, which calls every member each heartbeat.
    Contacts,
    /// Change `group`'s membership, which the peer leads (see [`crate::cluster::membership`]).
    Member {
        group: GroupId,
        change: MemberChange,
    },
    /// Stand for election in `group` now: its leader, in `term` with its log ending at
    /// `last_log`, hands the peer its lead (see [`crate::cluster::balance`]). `hlc` is the
    /// leader's clock, which the peer's moves above first, so what it commits as leader
    /// dates after everything its predecessor served.
    Campaign {
        group: GroupId,
        term: u64,
        last_log: u64,
        hlc: u64,
    },
    /// Hand the lead of `group`, which the peer holds, to `to` (an operator's move, see
    /// [`crate::cluster::balance`]).
    HandOver {
        group: GroupId,
        to: NodeId,
    },
    /// Commit a txn the sender coordinates that writes and reads one partition of
    /// `group`, which the peer leads, in one `PrepareCommit` whose version the peer picks
    /// (`proposed` carries it with a stand-in version; see [`crate::cluster::commit_one`]).
    /// Answered as [`Request::Propose`] is.
    CommitOne {
        group: GroupId,
        proposed: super::Proposed,
        hlc: u64,
    },
}

/// A change of one group's membership, made by its leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Make `node`, whose peer address is `addr`, a voter: a learner, then promoted once it
    /// has caught up.
    Add { node: NodeId, addr: String },
    /// Take `node` out of the group.
    Remove { node: NodeId },
}

/// A peer's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<SnapshotResponse<NodeId>, Fatal<NodeId>>),
    /// The group has no member on the peer.
    NoGroup(GroupId),
    Info {
        client_url: String,
    },
    /// What applying a proposed command answered, and the peer's clock after it.
    /// `index` is the log entry that carried the command (0 when it was refused).
    Proposed {
        answer: Result<crate::engine::command::Outcome, Refused>,
        index: u64,
        hlc: u64,
    },
    /// The leader's applied index once it confirmed its lead, and its clock.
    ReadIndex {
        answer: Result<u64, Refused>,
        hlc: u64,
    },
    /// For each txn asked about, whether the peer runs it.
    Running(Vec<bool>),
    /// The lock is held (`None`), or the holder it waited for in vain; and the peer's clock.
    Locked {
        answer: Result<Option<crate::engine::TxnId>, Refused>,
        hlc: u64,
    },
    Unlocked,
    /// The peer's promised watermark (`None`: it is not serving yet).
    Watermark(Option<crate::engine::gc::Watermark>),
    /// Per member, milliseconds since the peer last heard from it (`None`: never).
    Contacts(Vec<(NodeId, Option<u64>)>),
    /// The membership change is made (committed in the group's log).
    Member(Result<(), Refused>),
    /// The peer stood for election (or why it would not).
    Campaigned(Result<(), Refused>),
    /// How the handover ended (`moved`, `elsewhere`, `kept`, `refused`) and who leads
    /// after it; or why it was not tried.
    HandedOver(Result<(String, Option<NodeId>), Refused>),
}

/// Why a peer did not propose a command for another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refused {
    #[error("the peer does not lead the group (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    #[error("the peer waited {0} ms for a majority")]
    Timeout(u64),
    #[error("{0}")]
    Failed(String),
}

/// What a [`Service`] answers a peer: the answer, and this node's clock after it.
pub type Answer<T> = futures_util::future::BoxFuture<'static, (Result<T, Refused>, u64)>;

/// What a node does for its peers beyond Raft's own messages (the [`Cluster`] around the
/// groups implements it).
///
/// [`Cluster`]: crate::cluster::Cluster
pub trait Service: Send + Sync + 'static {
    /// Proposes `proposed` to `group`, which this node leads, after moving its clock above
    /// `hlc`; answers the outcome with the entry's index, and this node's clock.
    fn propose(
        self: Arc<Self>,
        group: GroupId,
        proposed: super::Proposed,
        hlc: u64,
    ) -> Answer<(crate::engine::command::Outcome, u64)>;

    /// Confirms that this node leads `group` (after moving its clock above `hlc`); answers
    /// how far it has applied, and its clock.
    fn read_index(self: Arc<Self>, group: GroupId, hlc: u64) -> Answer<u64>;

    /// Whether this node runs each of `txns` (see [`Request::Running`]).
    fn running(&self, txns: &[crate::engine::TxnId]) -> Vec<bool>;

    /// Takes `ptr`'s lock for a peer's `txn` (see [`Request::Lock`]): `None` once held, or
    /// the holder when `wait` ran out.
    fn lock(
        self: Arc<Self>,
        txn: crate::engine::TxnId,
        ptr: crate::engine::PtrId,
        wait: Duration,
        hlc: u64,
    ) -> Answer<Option<crate::engine::TxnId>>;

    /// Releases a peer's `txn`'s locks on `ptrs` here.
    fn unlock(&self, txn: &crate::engine::TxnId, ptrs: &[crate::engine::PtrId]);

    /// This node's own GC watermark, promised (see [`Request::Watermark`]).
    fn watermark(&self) -> Option<crate::engine::gc::Watermark>;

    /// Per member, milliseconds since this node last heard from it (see
    /// [`Request::Contacts`]).
    fn contacts(&self) -> Vec<(NodeId, Option<u64>)>;

    /// Makes `change` to `group`, which this node leads (see [`Request::Member`]).
    fn change_member(self: Arc<Self>, group: GroupId, change: MemberChange) -> Answer<()>;

    /// Stands for election in `group`, whose leader hands this node its lead (see
    /// [`Request::Campaign`]).
    fn campaign(self: Arc<Self>, group: GroupId, term: u64, last_log: u64, hlc: u64) -> Answer<()>;

    /// Hands the lead of `group`, which this node holds, to `to` (see
    /// [`Request::HandOver`]): the outcome, and who leads after it.
    fn hand_over(self: Arc<Self>, group: GroupId, to: NodeId) -> Answer<(String, Option<NodeId>)>;

    /// Commits a peer's one-partition txn in `group`, which this node leads, at a version
    /// it picks, after moving its clock above `hlc` (see [`Request::CommitOne`]).
    fn commit_one(
        self: Arc<Self>,
        group: GroupId,
        proposed: super::Proposed,
        hlc: u64,
    ) -> Answer<(crate::engine::command::Outcome, u64)>;
}

impl Identity {
    /// Why `hello` may not talk to this node, if it may not.
    fn refuse(&self, hello: &Hello) -> Option<String> {
        use subtle::ConstantTimeEq;
        if hello.cluster != self.cluster {
            return Some(format!(
                "cluster {:?} is not this node's cluster {:?}",
                hello.cluster, self.cluster
            ));
        }
        if hello.to != self.node {
            return Some(format!(
                "node {} dialled node {}, but this is node {}",
                hello.from, hello.to, self.node
            ));
        }
        if let Some(token) = &self.token {
            let given = hello.token.as_deref().unwrap_or("");
            if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
                return Some(format!("node {} gave no valid peer token", hello.from));
            }
        }
        None
    }
}

/// A group's member on this node, and its lease.
type Member = (Raft<Restm>, Arc<Lease>);

/// The groups this node holds a member of, by id.
#[derive(Default)]
pub struct Groups {
    rafts: RwLock<HashMap<GroupId, Member>>,
    /// When each peer's last request arrived.
    heard: Mutex<HashMap<NodeId, std::time::Instant>>,
    /// Who answers requests beyond Raft's (set once the cluster is up).
    service: std::sync::OnceLock<std::sync::Weak<dyn Service>>,
    /// What this node's answers to its peers cost in writes.
    wire: Arc<WireStats>,
}

impl Groups {
    /// Frames this node answered its peers with, and the flushes they went out in.
    pub fn wire(&self) -> (u64, u64) {
        self.wire.get()
    }

    /// Serves `group` with `raft`; `lease` says when the member refuses votes.
    pub fn insert(&self, group: GroupId, raft: Raft<Restm>, lease: Arc<Lease>) {
        self.rafts.write().insert(group, (raft, lease));
    }

    /// Answers [`Request::Propose`] with `service` from now on.
    pub fn serve(&self, service: std::sync::Weak<dyn Service>) {
        let _ = self.service.set(service);
    }

    pub fn remove(&self, group: GroupId) -> Option<Raft<Restm>> {
        self.rafts.write().remove(&group).map(|(raft, _)| raft)
    }

    /// How long ago `node` last sent this node a request, if it ever did.
    pub fn last_heard(&self, node: NodeId) -> Option<Duration> {
        self.heard.lock().get(&node).map(|t| t.elapsed())
    }

    fn get(&self, group: GroupId) -> Option<Raft<Restm>> {
        self.rafts.read().get(&group).map(|(raft, _)| raft.clone())
    }

    /// A vote request `group`'s member answers itself, without openraft: a refusal, while
    /// its lease (or a restart) says no vote may be granted (see [`Lease`]).
    fn refusal(&self, group: GroupId, rpc: &VoteRequest<NodeId>) -> Option<VoteResponse<NodeId>> {
        let rafts = self.rafts.read();
        let (raft, lease) = rafts.get(&group)?;
        if !lease.refuses_votes(std::time::Instant::now()) {
            return None;
        }
        let vote = raft.metrics().borrow().vote;
        tracing::debug!(group, candidate = %rpc.vote, mine = %vote, "vote refused: a lease may be out");
        Some(VoteResponse::new(vote, None, false))
    }

    /// Answers a [`Request::Propose`] or [`Request::CommitOne`] of `group` with what
    /// `asked` of the service answered: the outcome, its entry's index, and the clock.
    async fn proposed(
        &self,
        group: GroupId,
        asked: impl FnOnce(Arc<dyn Service>) -> Answer<(crate::engine::command::Outcome, u64)>,
    ) -> Response {
        let Some(service) = self.service.get().and_then(std::sync::Weak::upgrade) else {
            return Response::NoGroup(group);
        };
        let (answer, hlc) = asked(service).await;
        let index = answer.as_ref().map_or(0, |(_, i)| *i);
        Response::Proposed { answer: answer.map(|(o, _)| o), index, hlc }
    }

    async fn handle(&self, req: Request, me: &Identity) -> Response {
        match req {
            Request::Info => Response::Info { client_url: me.client_url.clone() },
            Request::Propose { group, proposed, hlc } => {
                self.proposed(group, |service| service.propose(group, proposed, hlc)).await
            }
            Request::CommitOne { group, proposed, hlc } => {
                self.proposed(group, |service| service.commit_one(group, proposed, hlc)).await
            }
            Request::ReadIndex { group, hlc } => {
                match self.service.get().and_then(std::sync::Weak::upgrade) {
                    Some(service) => {
                        let (answer, hlc) = service.read_index(group, hlc).await;
                        Response::ReadIndex { answer, hlc }
                    }
                    None => Response::NoGroup(group),
                }
            }
            Request::Lock { txn, ptr, wait_ms, hlc } => {
                match self.service.get().and_then(std::sync::Weak::upgrade) {
                    Some(service) => {
                        let (answer, hlc) = service.lock(txn, ptr, Duration::from_millis(wait_ms), hlc).await;
                        Response::Locked { answer, hlc }
                    }
                    None => Response::Locked { answer: Err(Refused::NotLeader(None)), hlc: 0 },
                }
            }
            Request::Unlock { txn, ptrs } => {
                if let Some(service) = self.service.get().and_then(std::sync::Weak::upgrade) {
                    service.unlock(&txn, &ptrs);
                }
                Response::Unlocked
            }
            Request::Contacts => Response::Contacts(
                self.service
                    .get()
                    .and_then(std::sync::Weak::upgrade)
                    .map(|s| s.contacts())
                    .unwrap_or_default(),
            ),
            Request::Member { group, change } => {
                match self.service.get().and_then(std::sync::Weak::upgrade) {
                    Some(service) => Response::Member(service.change_member(group, change).await.0),
                    None => Response::Member(Err(Refused::NotLeader(None))),
                }
            }
            Request::Campaign { group, term, last_log, hlc } => {
                match self.service.get().and_then(std::sync::Weak::upgrade) {
                    Some(service) => {
                        Response::Campaigned(service.campaign(group, term, last_log, hlc).await.0)
                    }
                    None => Response::Campaigned(Err(Refused::Failed("the peer is starting".into()))),
                }
            }
            Request::HandOver { group, to } => match self.service.get().and_then(std::sync::Weak::upgrade) {
                Some(service) => Response::HandedOver(service.hand_over(group, to).await.0),
                None => Response::HandedOver(Err(Refused::Failed("the peer is starting".into()))),
            },
            Request::Watermark => Response::Watermark(
                self.service.get().and_then(std::sync::Weak::upgrade).and_then(|s| s.watermark()),
            ),
            Request::Running { txns } => match self.service.get().and_then(std::sync::Weak::upgrade) {
                Some(service) => Response::Running(service.running(&txns)),
                // Not serving yet: it runs nothing it could answer for, so claim all.
                None => Response::Running(vec![true; txns.len()]),
            },
            Request::Append { group, rpc } => match self.get(group) {
                Some(r) => Response::Append(r.append_entries(rpc).await),
                None => Response::NoGroup(group),
            },
            Request::Vote { group, rpc } => match (self.refusal(group, &rpc), self.get(group)) {
                (Some(refused), _) => Response::Vote(Ok(refused)),
                (None, Some(r)) => Response::Vote(r.vote(rpc).await),
                (None, None) => Response::NoGroup(group),
            },
            Request::Snapshot { group, vote, meta, data } => match self.get(group) {
                Some(r) => Response::Snapshot(
                    r.install_full_snapshot(vote, openraft::Snapshot { meta, snapshot: Box::new(data) })
                        .await,
                ),
                None => Response::NoGroup(group),
            },
        }
    }
}

/// Serves the peer port: answers other nodes' requests for this node's groups. Dropping
/// it (or [`PeerServer::stop`]) closes the port and every connection on it.
pub struct PeerServer {
    stop: tokio::sync::watch::Sender<bool>,
}

impl PeerServer {
    /// Starts accepting peers on `listener`.
    pub fn spawn(listener: TcpListener, me: Arc<Identity>, groups: Arc<Groups>) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut halt = stopped.clone();
            loop {
                let (stream, remote) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "accepting a peer connection");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = halt.changed() => return,
                };
                let (me, groups, mut halt) = (me.clone(), groups.clone(), stopped.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        ended = Self::connection(stream, me, groups) => if let Err(e) = ended {
                            tracing::debug!(%remote, error = %e, "peer connection ended");
                        },
                        _ = halt.changed() => {}
                    }
                });
            }
        });
        Self { stop }
    }

    /// Closes the port and every connection on it.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl PeerServer {
    async fn connection(stream: TcpStream, me: Arc<Identity>, groups: Arc<Groups>) -> io::Result<()> {
        stream.set_nodelay(true)?;
        let remote = stream.peer_addr()?;
        let stream: Box<dyn crate::tls::Io> = match &me.tls {
            Some(tls) => Box::new(tls.accept(stream).await.inspect_err(|e| {
                tracing::warn!(%remote, error = %e, "refused a peer: its TLS handshake failed");
            })?),
            None => Box::new(stream),
        };
        let (r, w) = tokio::io::split(stream);
        let (mut rd, mut wr) = (FramedRead::new(r, codec()), FramedWrite::new(w, codec()));
        let first = tokio::time::timeout(CONNECT_TIMEOUT, rd.next())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no hello"))?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed before hello"))??;
        let hello: Hello = decode(&first)?;
        if let Some(why) = me.refuse(&hello) {
            tracing::warn!(%remote, from = hello.from, reason = %why, "refused a peer");
            wr.send(Bytes::from(encode(&Greeting::Refused(why.clone()))?)).await?;
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
        }
        wr.send(Bytes::from(encode(&Greeting::Welcome)?)).await?;
        tracing::debug!(%remote, from = hello.from, "peer connected");
        let (tx, rx) = mpsc::channel::<Bytes>(1024);
        let writer = tokio::spawn(write_frames(wr, rx, groups.wire.clone()));
        while let Some(frame) = rd.next().await {
            let (id, req): (u64, Request) = decode(&frame?)?;
            groups.heard.lock().insert(hello.from, std::time::Instant::now());
            let (groups, tx, me) = (groups.clone(), tx.clone(), me.clone());
            tokio::spawn(async move {
                let resp = groups.handle(req, &me).await;
                match encode(&(id, resp)) {
                    Ok(b) => {
                        let _ = tx.send(Bytes::from(b)).await;
                    }
                    Err(e) => tracing::error!(error = %e, "encoding a peer response"),
                }
            });
        }
        drop(tx);
        let _ = writer.await;
        Ok(())
    }
}

/// Frames sent on peer connections, and the flushes they went out in.
#[derive(Debug, Default)]
pub struct WireStats {
    frames: AtomicU64,
    flushes: AtomicU64,
}

impl WireStats {
    /// (frames, flushes) so far.
    pub fn get(&self) -> (u64, u64) {
        (self.frames.load(Ordering::Relaxed), self.flushes.load(Ordering::Relaxed))
    }
}

/// Writes the frames queued on `rx` to `wr` until either side ends, every frame waiting
/// when the writer wakes in one flush (up to [`FRAMES_PER_FLUSH`]).
async fn write_frames<W>(
    mut wr: FramedWrite<W, LengthDelimitedCodec>,
    mut rx: mpsc::Receiver<Bytes>,
    stats: Arc<WireStats>,
) where
    W: tokio::io::AsyncWrite + Unpin,
{
    while let Some(first) = rx.recv().await {
        if wr.feed(first).await.is_err() {
            return;
        }
        // Let the tasks that are ready run first: frames sent at the same moment (every
        // group's heartbeat of one tick, their answers) then join this flush.
        tokio::task::yield_now().await;
        let mut frames = 1;
        while frames < FRAMES_PER_FLUSH
            && let Ok(next) = rx.try_recv()
        {
            if wr.feed(next).await.is_err() {
                return;
            }
            frames += 1;
        }
        if SinkExt::<Bytes>::flush(&mut wr).await.is_err() {
            return;
        }
        stats.frames.fetch_add(frames as u64, Ordering::Relaxed);
        stats.flushes.fetch_add(1, Ordering::Relaxed);
    }
}

/// One open connection to a peer.
struct Conn {
    tx: mpsc::Sender<Bytes>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>>,
    next: AtomicU64,
    closed: Arc<AtomicBool>,
}

/// This node's connection to one peer, dialled on first use and after it breaks.
pub struct PeerClient {
    me: Arc<Identity>,
    wire: Arc<WireStats>,
    target: NodeId,
    addr: String,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// When a call to the peer last got an answer.
    answered: Mutex<Option<std::time::Instant>>,
}

fn broken(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, what.to_string())
}

impl PeerClient {
    async fn connect(&self) -> io::Result<Arc<Conn>> {
        let addr = self.addr.trim_start_matches("http://").trim_start_matches("https://");
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("dialling {addr}")))??;
        stream.set_nodelay(true)?;
        let stream: Box<dyn crate::tls::Io> = match &self.me.tls {
            Some(tls) => Box::new(tls.connect(addr, stream).await?),
            None => Box::new(stream),
        };
        let (r, w) = tokio::io::split(stream);
        let (mut rd, mut wr) = (FramedRead::new(r, codec()), FramedWrite::new(w, codec()));
        let hello = Hello {
            cluster: self.me.cluster.clone(),
            from: self.me.node,
            to: self.target,
            token: self.me.token.clone(),
        };
        wr.send(Bytes::from(encode(&hello)?)).await?;
        let greeting = tokio::time::timeout(CONNECT_TIMEOUT, rd.next())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no greeting"))?
            .ok_or_else(|| broken("closed before greeting"))??;
        if let Greeting::Refused(why) = decode(&greeting)? {
            tracing::warn!(peer = self.target, %addr, reason = %why, "a peer refused this node");
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
        }
        let (tx, rx) = mpsc::channel::<Bytes>(1024);
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(write_frames(wr, rx, self.wire.clone()));
        let (p, c) = (pending.clone(), closed.clone());
        tokio::spawn(async move {
            while let Some(Ok(frame)) = rd.next().await {
                match decode::<(u64, Response)>(&frame) {
                    Ok((id, resp)) => {
                        if let Some(waiter) = p.lock().remove(&id) {
                            let _ = waiter.send(resp);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable peer response");
                        break;
                    }
                }
            }
            c.store(true, Ordering::SeqCst);
            p.lock().clear(); // every waiter learns the connection broke
        });
        Ok(Arc::new(Conn { tx, pending, next: AtomicU64::new(0), closed }))
    }

    async fn conn(&self) -> io::Result<Arc<Conn>> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.closed.load(Ordering::SeqCst)) {
            return Ok(c.clone());
        }
        *slot = None;
        let c = self.connect().await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Sends `req` and waits at most `ttl` for the answer.
    pub async fn call(&self, req: &Request, ttl: Duration) -> io::Result<Response> {
        let conn = self.conn().await?;
        let id = conn.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().insert(id, tx);
        let frame = Bytes::from(encode(&(id, req))?);
        if conn.tx.send(frame).await.is_err() {
            conn.closed.store(true, Ordering::SeqCst);
            return Err(broken("peer connection closed"));
        }
        match tokio::time::timeout(ttl, rx).await {
            Ok(Ok(resp)) => {
                *self.answered.lock() = Some(std::time::Instant::now());
                Ok(resp)
            }
            Ok(Err(_)) => Err(broken("peer connection broke")),
            Err(_) => {
                conn.pending.lock().remove(&id);
                Err(io::Error::new(io::ErrorKind::TimedOut, "peer did not answer in time"))
            }
        }
    }
}

/// This node's connections to its peers: one per peer, shared by every group.
pub struct Peers {
    me: Arc<Identity>,
    clients: Mutex<HashMap<NodeId, Arc<PeerClient>>>,
    /// What this node's requests to its peers cost in writes.
    wire: Arc<WireStats>,
}

impl Peers {
    pub fn new(me: Arc<Identity>) -> Arc<Self> {
        Arc::new(Self { me, clients: Mutex::default(), wire: Arc::default() })
    }

    /// Frames this node sent its peers, and the flushes they went out in.
    pub fn wire(&self) -> (u64, u64) {
        self.wire.get()
    }

    /// How long ago `node` last answered a call of this node's, if it ever did.
    pub fn last_contact(&self, node: NodeId) -> Option<Duration> {
        let client = self.clients.lock().get(&node).cloned()?;
        let at = (*client.answered.lock())?;
        Some(at.elapsed())
    }

    /// The connection to `target` at `addr` (a new address replaces the old connection).
    pub fn client(&self, target: NodeId, addr: &str) -> Arc<PeerClient> {
        let mut clients = self.clients.lock();
        if let Some(c) = clients.get(&target).filter(|c| c.addr == addr) {
            return c.clone();
        }
        let c = Arc::new(PeerClient {
            me: self.me.clone(),
            wire: self.wire.clone(),
            target,
            addr: addr.to_string(),
            conn: tokio::sync::Mutex::new(None),
            answered: Mutex::new(None),
        });
        clients.insert(target, c.clone());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_queued_together_go_out_in_one_flush_and_arrive_whole() {
        let (near, far) = tokio::io::duplex(1 << 20);
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        for i in 0..10u8 {
            tx.send(Bytes::from(vec![i; 100 + i as usize])).await.unwrap();
        }
        let stats = Arc::new(WireStats::default());
        let writer = tokio::spawn(write_frames(FramedWrite::new(near, codec()), rx, stats.clone()));
        let mut read = FramedRead::new(far, codec());
        for i in 0..10u8 {
            let frame = read.next().await.unwrap().unwrap();
            assert_eq!(&frame[..], &vec![i; 100 + i as usize][..], "frame {i}");
        }
        // One more, sent once those arrived: a flush of its own.
        tx.send(Bytes::from_static(b"late")).await.unwrap();
        assert_eq!(&read.next().await.unwrap().unwrap()[..], b"late");
        drop(tx);
        writer.await.unwrap();
        assert_eq!(stats.get(), (11, 2), "the ten queued together shared one flush");
    }
}
