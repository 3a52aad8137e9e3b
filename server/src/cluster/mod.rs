//! The cluster around a node: its members, its replica of the data group, where requests
//! go, and what a node does when it gains or loses the lead.
//!
//! `serve` runs one data group holding every partition, with a replica on every member, so
//! the group's leader coordinates every transaction: other members forward clients to it
//! (see [`crate::http::route`]). [`ClusterConfig::groups`] can split the partitions among
//! groups of their own (partition `p` in group `p % groups`), each proposing through its
//! own leader; the cross-group commit that will use them is being built (its replicated
//! half is `engine::guard`, its resolver [`resolver`]).
//!
//! - [`Cluster::start`] opens the group's log in the node's fjall database, serves the peer
//!   port and makes the `--initial-cluster` members the first voters (every member proposes
//!   the same initial membership, so it does not matter which one is first).
//! - [`Cluster::propose`] appends one partition command to the group's log and answers
//!   what applying it answered, once a majority holds it durably.
//! - [`Cluster::status`] is `GET /cluster`.

pub mod balance;
mod barrier;
pub mod commit_one;
pub mod locks;
pub mod membership;
pub mod resolver;
pub mod timeline;
pub mod watermark;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use restm_shared::{ClosedTimestamp, ClusterStatus, FollowerLag, GroupStatus, MemberStatus};

use crate::engine::command::{Command, Outcome};
use crate::engine::partition::{LockOutcome, partition_of};
use crate::engine::{PtrId, TxnId};
use crate::raft::replica::{Host, Replica, ReplicaError, Timing, millis};
use crate::raft::state_machine::{Held, Observer, Partitions};
use crate::raft::transport::{Answer, Identity, PeerServer, Refused, Request, Response, Service};
use crate::raft::{BasicNode, GroupId, NodeId, Proposed, RaftConfig as RaftConfigOf};

/// The first group's id: with one group, the data group of every partition; with more, the
/// group of partition 0, which holds the cluster's pins and GC horizon.
pub const DATA_GROUP: u32 = 0;

/// Longest a proposal waits for a majority: a group that lost its majority answers within
/// it instead of hanging.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest confirming the lead (a heartbeat round) may take.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a peer's txn waiting here for a lock looks whether its coordinator ended it.
const LOCK_WAIT_SLICE: Duration = Duration::from_millis(100);
/// A member not heard from for this long is down (to a node that would hear from it).
const MEMBER_SILENCE_MS: u64 = 2_000;
/// Longest a member that forwarded a proposal waits for its own replica to apply it.
const APPLY_WAIT: Duration = Duration::from_secs(1);

/// Where a leader stands in its group (see [`Cluster::leading`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leading {
    pub term: u64,
    pub last_log: u64,
    pub applied: u64,
}

/// How a node joins its cluster (the `serve` flags `--node-id`, `--peer-listen`,
/// `--initial-cluster`, `--peer-token`, `--cluster-name`).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    pub name: String,
    pub peer_listen: SocketAddr,
    /// Every first member's id and the address peers dial it at (this node's included).
    pub initial: BTreeMap<NodeId, String>,
    pub token: Option<String>,
    /// Where this node serves clients, for peers that forward to it.
    pub client_url: String,
    /// TLS on the peer port, and for dialling peers (`--tls-cert`).
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// Heartbeat and election timing of the Raft groups.
    pub timing: Timing,
    /// How many Raft groups share the partitions.
    pub groups: GroupCount,
    /// How long a peer's `Prepare` waits here for the lock of a pointer it writes
    /// (`--lock-timeout`).
    pub lock_wait: Duration,
    /// How often this member looks whether it leads more than its share of the groups,
    /// and hands one over (`--rebalance-interval`; `None`: never; see [`balance`]).
    pub rebalance: Option<Duration>,
}

/// How many Raft groups share the partitions (`--groups`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupCount {
    /// This many: partition `p` in group `p % n`; 1 puts every partition in one data group.
    Of(u32),
    /// As many as the data directory holds: a member that joined, restarting.
    Stored,
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("--initial-cluster does not name this node ({0})")]
    NotAMember(NodeId),
    #[error("cannot listen for peers on {addr}: {error}")]
    PeerListen { addr: SocketAddr, error: std::io::Error },
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error(transparent)]
    Storage(#[from] crate::engine::StorageError),
    #[error(
        "the data directory splits its partitions into {stored} Raft groups, but --groups {requested} was \
         asked for; the group count of a data directory cannot change"
    )]
    GroupMismatch { stored: u32, requested: u32 },
    #[error("reading the data directory's group count: {0}")]
    GroupCount(String),
    #[error("the data directory has never been a member, and the member --join names cannot be reached")]
    NeverJoined,
}

/// This node's part of the cluster.
pub struct Cluster {
    config: ClusterConfig,
    host: Host,
    /// This node's member of each group, by group id.
    replicas: Vec<Replica>,
    observer: Arc<dyn Observer>,
    _server: PeerServer,
    /// Peers' client addresses, learned over the peer port.
    client_urls: Mutex<HashMap<NodeId, String>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Every partition (this node's replicas of them), whose lock tables peers' txns use.
    partitions: Partitions,
    /// The locks peers' txns hold here (see [`locks`]).
    remote_locks: locks::RemoteLocks,
    /// The last GC watermark each member promised (see [`watermark`]).
    promises: watermark::Promises,
    /// Every group's leader changes this member saw (see [`timeline`]).
    timeline: Arc<timeline::Timeline>,
    /// The reads waiting for each group's next read-index round (see [`barrier`]).
    rounds: barrier::Rounds,
    /// Per group, the term this node leads it in and since when (`None`: it does not).
    led_since: Vec<Mutex<Option<(u64, std::time::Instant)>>>,
}

impl Cluster {
    /// Joins the cluster: serves the peer port and starts this node's replica of the data
    /// group over `partitions`, in `db`.
    pub async fn start(
        config: ClusterConfig,
        db: fjall::Database,
        partitions: Partitions,
        observer: Arc<dyn Observer>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Arc<Self>, ClusterError> {
        let listener = tokio::net::TcpListener::bind(config.peer_listen)
            .await
            .map_err(|error| ClusterError::PeerListen { addr: config.peer_listen, error })?;
        Self::start_on(listener, config, db, partitions, observer, metrics).await
    }

    /// [`Cluster::start`] on a peer port already bound: whoever chose the port (a test
    /// binding port 0) holds it from then on, so nothing else can take it in between.
    pub async fn start_on(
        listener: tokio::net::TcpListener,
        config: ClusterConfig,
        db: fjall::Database,
        partitions: Partitions,
        observer: Arc<dyn Observer>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Arc<Self>, ClusterError> {
        // An empty --initial-cluster: the node joins a running cluster (`--join`), whose
        // leaders add it to their groups; it forms none.
        if !config.initial.is_empty() && !config.initial.contains_key(&config.node_id) {
            return Err(ClusterError::NotAMember(config.node_id));
        }
        let me = Arc::new(Identity {
            cluster: config.name.clone(),
            node: config.node_id,
            token: config.token.clone(),
            client_url: config.client_url.clone(),
            tls: config.tls.clone(),
        });
        let asked = match config.groups {
            GroupCount::Stored => crate::raft::log_store::stored_group_count(&db)
                .map_err(|e| ClusterError::GroupCount(e.to_string()))?
                .ok_or(ClusterError::NeverJoined)?,
            GroupCount::Of(n) => n.max(1),
        };
        let groups = match crate::raft::log_store::group_count(&db, asked) {
            Ok(n) => n,
            Err(Ok(stored)) => {
                return Err(ClusterError::GroupMismatch { stored, requested: asked });
            }
            Err(Err(e)) => return Err(ClusterError::GroupCount(e.to_string())),
        };
        let host = Host::new(db, me.clone());
        let mut replicas = Vec::with_capacity(groups as usize);
        for group in 0..groups {
            let held = Held { group, of: groups };
            // The node sends every group's heartbeats on one ticker (`spawn_heartbeats`).
            let config = RaftConfigOf { enable_heartbeat: false, ..config.timing.raft_config(&config.name) };
            replicas.push(Replica::start(&host, held, partitions.clone(), observer.clone(), config).await?);
        }
        // Served once the groups are registered, so no peer is told this node holds none.
        let server = PeerServer::spawn(listener, me, host.groups.clone());
        let voters: BTreeMap<NodeId, BasicNode> =
            config.initial.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
        // With several groups each is first formed by one member, its turn among the voters
        // (group g: the (g mod n)th), which campaigns at once, so a new cluster's groups
        // start led by different members. The others propose the same membership too if the
        // group still has none after three election timeouts (that member is down or slow).
        // One group is formed by whichever member comes first, as before.
        let firsts: Vec<NodeId> = voters.keys().copied().collect();
        let forms_first = |group: usize| {
            !firsts.is_empty() && (groups == 1 || firsts[group % firsts.len()] == config.node_id)
        };
        for (group, replica) in replicas.iter().enumerate() {
            if forms_first(group) {
                replica.initialize(voters.clone()).await?;
            }
        }
        let deferred: Vec<GroupId> =
            (0..groups).filter(|g| !firsts.is_empty() && !forms_first(*g as usize)).collect();
        let timeline = Arc::new(timeline::Timeline::open(&host.db).map_err(ReplicaError::Open)?);
        for replica in &replicas {
            timeline.follow(replica, observer.clone());
        }
        tracing::info!(node = config.node_id, peers = ?config.initial, groups, "joined the cluster");
        let cluster = Arc::new(Self {
            config,
            host,
            replicas,
            observer,
            _server: server,
            client_urls: Mutex::default(),
            metrics,
            partitions,
            remote_locks: locks::RemoteLocks::default(),
            promises: watermark::Promises::default(),
            timeline,
            rounds: barrier::Rounds::new(groups),
            led_since: (0..groups).map(|_| Mutex::new(None)).collect(),
        });
        let service: Arc<dyn Service> = cluster.clone();
        cluster.host.groups.serve(Arc::downgrade(&service));
        for group in 0..groups {
            cluster.spawn_metrics_watch(group);
        }
        cluster.spawn_heartbeats();
        for group in deferred {
            cluster.spawn_deferred_formation(group, voters.clone());
        }
        if let Some(every) = cluster.config.rebalance.filter(|_| groups > 1) {
            cluster.spawn_balancer(every);
        }
        Ok(cluster)
    }

    /// Forms `group` from this member after three election timeouts if it has no membership
    /// yet: the member whose turn it was to form it did not (three election timeouts: a new
    /// member refuses votes for one after it starts).
    fn spawn_deferred_formation(self: &Arc<Self>, group: GroupId, voters: BTreeMap<NodeId, BasicNode>) {
        let me = Arc::downgrade(self);
        let wait = self.config.timing.election * 3;
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let Some(c) = me.upgrade() else { return };
            let replica = &c.replicas[group as usize];
            let formed = replica.metrics().membership_config.membership().voter_ids().next().is_some();
            if !formed {
                tracing::info!(group, "the member whose turn it was has not formed the group; forming it");
                if let Err(e) = replica.initialize(voters).await {
                    tracing::warn!(group, error = %e, "forming the group");
                }
            }
        });
    }

    /// Every heartbeat interval, sends the heartbeats of every group this node leads, one
    /// after the other: each peer then gets them together, in one write on its connection
    /// (see [`crate::raft::transport`]), rather than one write per group at its own moment.
    fn spawn_heartbeats(self: &Arc<Self>) {
        crate::every::spawn_every(self, self.config.timing.heartbeat, |c: Arc<Self>| async move {
            for replica in &c.replicas {
                replica.heartbeat().await;
            }
        });
    }

    /// Counts `group`'s leader changes and the elections this member starts in it.
    fn spawn_metrics_watch(self: &Arc<Self>, group: GroupId) {
        let me = Arc::downgrade(self);
        let mut watch = self.replicas[group as usize].watch();
        tokio::spawn(async move {
            let (mut leader, mut state) = {
                let m = watch.borrow_and_update();
                (m.current_leader, m.state)
            };
            while watch.changed().await.is_ok() {
                let Some(c) = me.upgrade() else { return };
                let m = watch.borrow_and_update().clone();
                {
                    let mut since = c.led_since[group as usize].lock();
                    match m.state {
                        openraft::ServerState::Leader if since.is_some_and(|(t, _)| t == m.current_term) => {}
                        openraft::ServerState::Leader => {
                            *since = Some((m.current_term, std::time::Instant::now()))
                        }
                        _ => *since = None,
                    }
                }
                if m.current_leader != leader && m.current_leader.is_some() {
                    c.metrics.observe_leader_change();
                }
                // The watch shows the latest metrics only: a quick election's candidacy may be
                // missed, but a member that came to lead stood for election first.
                use openraft::ServerState::{Candidate, Leader};
                let stood = match m.state {
                    Candidate => state != Candidate,
                    Leader => state != Candidate && state != Leader,
                    _ => false,
                };
                if stood {
                    c.metrics.observe_election();
                }
                (leader, state) = (m.current_leader, m.state);
            }
        });
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// This node's member of the first group (with one group, the data group).
    fn replica(&self) -> &Replica {
        &self.replicas[DATA_GROUP as usize]
    }

    /// How many groups share the partitions.
    pub fn groups(&self) -> u32 {
        self.replicas.len() as u32
    }

    /// Whether every member coordinates the txns begun on it (partitions in several
    /// groups, led anywhere), rather than the one group's leader coordinating all of them.
    pub fn coordinates_anywhere(&self) -> bool {
        self.groups() > 1
    }

    /// The member that coordinates txn `id`: the one its `n<id>-` prefix names, if that is
    /// a member.
    pub fn coordinator_of(&self, id: &str) -> Option<u64> {
        let node: u64 = id.strip_prefix('n')?.split_once('-')?.0.parse().ok()?;
        let members = self.replica().metrics().membership_config.membership().get_node(&node).is_some();
        members.then_some(node)
    }

    /// The group that holds `partition`.
    pub fn group_of(&self, partition: u32) -> GroupId {
        Held::group_of(partition, self.groups())
    }

    /// The first group's term, as this node knows it.
    pub fn term(&self) -> u64 {
        self.replica().metrics().current_term
    }

    /// The first group's leader, as this node knows it.
    pub fn leader(&self) -> Option<NodeId> {
        self.replica().metrics().current_leader
    }

    /// How long this node has led `group` in its current term (`None`: it does not lead it).
    pub fn led_for(&self, group: GroupId) -> Option<Duration> {
        let since = *self.led_since.get(group as usize)?.lock();
        since.map(|(_, at)| at.elapsed())
    }

    /// `group`'s leader, as this node knows it.
    pub fn leader_of(&self, group: GroupId) -> Option<NodeId> {
        self.replicas.get(group as usize)?.metrics().current_leader
    }

    pub fn is_leader(&self) -> bool {
        self.replica().is_leader()
    }

    /// Whether this node leads `group`.
    pub fn leads(&self, group: GroupId) -> bool {
        self.replicas.get(group as usize).is_some_and(Replica::is_leader)
    }

    /// Where this node stands in `group` if it leads it: the term, the last index in its
    /// log and the last it applied.
    pub fn leading(&self, group: GroupId) -> Option<Leading> {
        let m = self.replicas.get(group as usize)?.metrics();
        (m.state == openraft::ServerState::Leader).then(|| Leading {
            term: m.current_term,
            last_log: m.last_log_index.unwrap_or(0),
            applied: m.last_applied.map_or(0, |l| l.index),
        })
    }

    /// A watch that changes whenever this node's view of the first group does.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>> {
        self.replica().watch()
    }

    /// Where `node` serves clients: asked over the peer port once, then remembered.
    pub async fn client_url(&self, node: NodeId) -> Option<String> {
        if node == self.config.node_id {
            return Some(self.config.client_url.clone());
        }
        if let Some(url) = self.client_urls.lock().get(&node) {
            return Some(url.clone());
        }
        let client = self.peer(node)?;
        match client.call(&Request::Info, Duration::from_secs(2)).await {
            Ok(Response::Info { client_url }) => {
                self.client_urls.lock().insert(node, client_url.clone());
                Some(client_url)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(node, error = %e, "asking a peer where it serves clients");
                None
            }
        }
    }

    /// The connection to `node`, at the peer address a group's membership names.
    fn peer(&self, node: NodeId) -> Option<Arc<crate::raft::transport::PeerClient>> {
        // The first group's membership names every member; while a member is added or removed,
        // another group's may name it before or after the first's does.
        let addr = self.replicas.iter().find_map(|r| {
            r.metrics().membership_config.membership().get_node(&node).map(|n| n.addr.clone())
        })?;
        Some(self.host.peers.client(node, &addr))
    }

    /// The leader of `replica`'s group, another node, and the connection to it.
    #[allow(clippy::result_large_err)] // as the async callers' errors, answered at once
    fn leader_peer(
        &self,
        replica: &Replica,
    ) -> Result<(NodeId, Arc<crate::raft::transport::PeerClient>), ReplicaError> {
        let Some(leader) = replica.metrics().current_leader.filter(|l| *l != self.config.node_id) else {
            return Err(ReplicaError::NotLeader { leader: None, addr: None });
        };
        let peer = self
            .peer(leader)
            .ok_or_else(|| ReplicaError::Raft(format!("node {leader} is not in the membership")))?;
        Ok((leader, peer))
    }

    /// Appends `command` for `partition` to its group's log; answers what applying it
    /// answered, once a majority of the voters hold the entry durably. With several groups,
    /// a group this node does not lead gets the command through its leader (over the peer
    /// port); with one, only its leader proposes.
    /// The proposal is a `raft.propose` span (when traces are exported), which each
    /// member's `raft.apply` of it hangs under.
    pub async fn propose(&self, partition: u32, command: Command) -> Result<Outcome, ReplicaError> {
        use tracing::Instrument;
        let group = self.group_of(partition);
        let span = tracing::debug_span!(
            "raft.propose",
            otel.kind = "producer",
            restm.group = group,
            restm.partition = partition,
            restm.command = command.kind(),
        );
        let parent = crate::telemetry::parent_of(&span);
        let proposing = self.route(group, Proposed { partition, command, parent }).instrument(span);
        self.timed(PROPOSE_TIMEOUT, "a majority to hold the entry", proposing).await
    }

    /// `proposing` (a proposal, or a commit at a leader), given up after `budget`, with its
    /// outcome and time counted in the proposal metrics.
    async fn timed(
        &self,
        budget: Duration,
        what: &'static str,
        proposing: impl std::future::Future<Output = Result<Outcome, ReplicaError>>,
    ) -> Result<Outcome, ReplicaError> {
        let started = std::time::Instant::now();
        let answer = match tokio::time::timeout(budget, proposing).await {
            Ok(answer) => answer,
            Err(_) => Err(ReplicaError::Timeout { what, after: budget }),
        };
        let outcome = match &answer {
            Ok(_) => "ok",
            Err(ReplicaError::Timeout { .. }) => "timeout",
            Err(_) => "error",
        };
        self.metrics.observe_proposal(outcome, started.elapsed().as_secs_f64());
        answer
    }

    /// Proposes to `group` here if this node leads it (or there is only one group), and
    /// otherwise through its leader. With several groups, a proposal that meets no leader,
    /// or one that just stopped leading (a handover, an election), goes to the next leader
    /// once there is one, for up to two election timeouts: a refused proposal was never
    /// appended, so proposing it again cannot apply it twice.
    async fn route(&self, group: GroupId, proposed: Proposed) -> Result<Outcome, ReplicaError> {
        if self.replicas.len() == 1 {
            return self.route_once(group, proposed).await;
        }
        let refused = |e: &ReplicaError, _moved: bool| matches!(e, ReplicaError::NotLeader { .. });
        self.follow_lead(group, "a proposal", || self.route_once(group, proposed.clone()), refused).await
    }

    /// Tries `attempt` on `group` until it meets a leader: an attempt whose failure `again`
    /// takes for the lead's (given whether the leader changed during the attempt) is made
    /// again once another member leads, for up to two election timeouts. `what` names it in
    /// the logs.
    async fn follow_lead<T, E, F, Fut>(
        &self,
        group: GroupId,
        what: &'static str,
        mut attempt: F,
        again: impl Fn(&E, bool) -> bool,
    ) -> Result<T, E>
    where
        E: std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let replica = &self.replicas[group as usize];
        let deadline = tokio::time::Instant::now() + self.config.timing.election * 2;
        loop {
            let tried = replica.metrics().current_leader;
            let failed = match attempt().await {
                Ok(answer) => return Ok(answer),
                Err(e) => e,
            };
            let moved = replica.metrics().current_leader != tried;
            let now = tokio::time::Instant::now();
            if now >= deadline || !again(&failed, moved) {
                return Err(failed);
            }
            tracing::debug!(group, leader = ?tried, what, why = %failed, "met no leader; it goes to the next one");
            replica.wait_leader_other_than(tried, deadline - now).await;
        }
    }

    /// [`Self::route`], once.
    async fn route_once(&self, group: GroupId, proposed: Proposed) -> Result<Outcome, ReplicaError> {
        let replica = &self.replicas[group as usize];
        if self.replicas.len() == 1 || replica.is_leader() {
            return replica.propose(proposed.partition, proposed.command, proposed.parent).await;
        }
        let ask = |hlc| Request::Propose { group, proposed, hlc };
        self.through_leader(replica, ask, PROPOSE_TIMEOUT).await
    }

    /// Asks the leader of `replica`'s group, another member, for what `ask` (given this
    /// member's clock) proposes there, waiting up to `timeout`: answers the outcome once
    /// this member's replica applied the entry too.
    async fn through_leader(
        &self,
        replica: &Replica,
        ask: impl FnOnce(u64) -> Request,
        timeout: Duration,
    ) -> Result<Outcome, ReplicaError> {
        let (leader, peer) = self.leader_peer(replica)?;
        match peer.call(&ask(self.observer.last_version()), timeout).await {
            Ok(Response::Proposed { answer, index, hlc }) => {
                self.observer.saw_version(hlc);
                let outcome = answer.map_err(|refused| refused_error(refused, "the leader's majority"))?;
                // Read your own write: this member's replica applies the entry too. It is a
                // voter that just heard of the commit, so this is short; past the bound the
                // answer stands (the write is committed) and a read here may lag it.
                if let Err(e) = replica.wait_applied(index, APPLY_WAIT).await {
                    let group = replica.group();
                    tracing::warn!(group, index, error = %e, "a proposal through the leader committed; this replica lags it");
                }
                Ok(outcome)
            }
            Ok(other) => Err(ReplicaError::Raft(format!("node {leader} answered a proposal with {other:?}"))),
            Err(e) => Err(ReplicaError::Raft(format!("proposing through node {leader}: {e}"))),
        }
    }

    /// Confirms that this node still leads (a heartbeat round to a majority), so that what
    /// it reads next is no older than any acknowledged write.
    /// A round that misses its majority (a slow answer) is tried again within the budget;
    /// losing the lead is answered at once.
    pub async fn confirm_leader(&self) -> Result<(), ReplicaError> {
        self.confirm_group(DATA_GROUP).await
    }

    /// [`Self::confirm_leader`] of `group`.
    async fn confirm_group(&self, group: GroupId) -> Result<(), ReplicaError> {
        let replica = &self.replicas[group as usize];
        let rounds = async {
            loop {
                match replica.confirm_leader().await {
                    Ok(how) => {
                        self.metrics.observe_read_confirmation(how.as_str());
                        return Ok(());
                    }
                    Err(e @ (ReplicaError::NotLeader { .. } | ReplicaError::Fatal(_))) => return Err(e),
                    Err(e) => {
                        tracing::debug!(error = %e, "a read confirmation round missed its majority; again");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        };
        match tokio::time::timeout(CONFIRM_TIMEOUT, rounds).await {
            Ok(answer) => answer,
            Err(_) => {
                Err(ReplicaError::Timeout { what: "a majority to confirm the lead", after: CONFIRM_TIMEOUT })
            }
        }
    }

    /// Waits until this node has applied every entry of the first group's log (a new
    /// leader of the one data group does this before it resolves what the old one left
    /// prepared).
    pub async fn catch_up(&self, timeout: Duration) -> Result<(), ReplicaError> {
        let replica = self.replica();
        if let Some(i) = replica.metrics().last_log_index {
            replica.wait_applied(i, timeout).await?;
        }
        Ok(())
    }

    /// How long since this node last heard from member `node` (any group's traffic, or a
    /// peer call it answered); `None` if it never has.
    pub fn silent_for(&self, node: NodeId) -> Option<Duration> {
        [self.host.peers.last_contact(node), self.host.groups.last_heard(node)].into_iter().flatten().min()
    }

    /// Frames this node sent on its peer connections (requests and answers), and the
    /// flushes they went out in.
    pub fn wire(&self) -> (u64, u64) {
        let ((a, b), (c, d)) = (self.host.peers.wire(), self.host.groups.wire());
        (a + c, b + d)
    }

    /// Every member's id, this node's included.
    pub fn members(&self) -> Vec<NodeId> {
        self.replica().metrics().membership_config.membership().nodes().map(|(id, _)| *id).collect()
    }

    /// The leader changes this member saw.
    pub fn timeline(&self) -> &timeline::Timeline {
        &self.timeline
    }

    /// `GET /cluster`, with closed timestamps' lag measured against `now_millis`.
    /// Milliseconds since this node last heard from `member` (0 for itself).
    fn contact_ms(&self, member: NodeId) -> Option<u64> {
        if member == self.config.node_id {
            return Some(0);
        }
        self.silent_for(member).map(|d| d.as_millis() as u64)
    }

    /// [`Cluster::status`], where a member this node cannot tell about (it leads nothing
    /// and hears only leaders) takes the first group's leader's word: that leader calls
    /// every member each heartbeat. Its state then says `up` or `down`, by the leader.
    pub async fn status_seen(&self, now_millis: u64) -> ClusterStatus {
        let mut status = self.status(now_millis);
        let unsure = status.members.iter().any(|m| m.state == "unknown");
        let leader = self.leader().filter(|l| *l != self.config.node_id);
        let (true, Some(leader)) = (unsure, leader) else { return status };
        let contacts =
            self.ask(leader, &Request::Contacts, Duration::from_millis(500), "its contacts", |answer| {
                match answer {
                    Response::Contacts(seen) => Ok(seen),
                    other => Err(Box::new(other)),
                }
            });
        if let Some(seen) = contacts.await {
            for m in status.members.iter_mut().filter(|m| m.state == "unknown") {
                if let Some((_, contact)) = seen.iter().find(|(id, _)| *id == m.node_id) {
                    m.state =
                        if contact.is_some_and(|ms| ms < MEMBER_SILENCE_MS) { "up" } else { "down" }.into();
                }
            }
        }
        status
    }

    pub fn status(&self, now_millis: u64) -> ClusterStatus {
        let m = self.replica().metrics();
        let membership = m.membership_config.membership();
        // A member is down to this node only if no group's traffic has heard from it.
        let leads_any = self.replicas.iter().any(Replica::is_leader);
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let contact = self.contact_ms(*id);
                let heard = contact.is_some_and(|ms| ms < MEMBER_SILENCE_MS);
                let leads_here = self.replicas.iter().any(|r| r.metrics().current_leader == Some(*id));
                let state = if heard {
                    "up"
                } else if !leads_any && !leads_here {
                    // A follower hears only from leaders: of the others it cannot tell.
                    "unknown"
                } else {
                    "down"
                }
                .to_string();
                MemberStatus { node_id: *id, peer_url: node.addr.clone(), state, last_contact_ms: contact }
            })
            .collect();
        ClusterStatus {
            cluster: self.config.name.clone(),
            node_id: self.config.node_id,
            replicated: true,
            members,
            groups: self.replicas.iter().map(|r| self.group_status(r, now_millis)).collect(),
            timing: Some(restm_shared::RaftTiming {
                heartbeat_interval_ms: millis(self.config.timing.heartbeat),
                election_timeout_ms: millis(self.config.timing.election),
                lease_ms: millis(self.config.timing.lease()),
            }),
            as_of: None,
            leader_changes: Vec::new(),
        }
    }

    /// One group's part of `GET /cluster`, as this member sees it.
    fn group_status(&self, replica: &Replica, now_millis: u64) -> GroupStatus {
        let m = replica.metrics();
        let membership = m.membership_config.membership();
        let last_log = m.last_log_index;
        let follower_lag = m
            .replication
            .clone()
            .unwrap_or_default()
            .iter()
            .filter(|(id, _)| **id != self.config.node_id)
            .map(|(id, matched)| {
                let matched_index = matched.as_ref().map(|l| l.index);
                let lag = last_log.map(|last| last.saturating_sub(matched_index.unwrap_or(0)));
                FollowerLag { node_id: *id, matched_index, lag }
            })
            .collect();
        let role = match m.state {
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Candidate => "candidate",
            openraft::ServerState::Learner => "learner",
            openraft::ServerState::Follower => "follower",
            openraft::ServerState::Shutdown => "shutdown",
        };
        GroupStatus {
            group: replica.group(),
            partitions: replica.partitions().map(|p| p.id).collect(),
            leader: m.current_leader,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            term: m.current_term,
            role: role.into(),
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            millis_since_quorum_ack: m.millis_since_quorum_ack,
            follower_lag,
            closed: replica
                .partitions()
                .map(|p| {
                    let version = p.closed();
                    let lag_ms = now_millis.saturating_sub(crate::engine::hlc::millis_of(version));
                    ClosedTimestamp { partition: p.id, version, lag_ms }
                })
                .collect(),
        }
    }
}

impl Service for Cluster {
    fn change_member(
        self: Arc<Self>,
        group: GroupId,
        change: crate::raft::transport::MemberChange,
    ) -> Answer<()> {
        Box::pin(async move {
            let answer = self.change_here(group, change).await;
            (answer, self.observer.last_version())
        })
    }

    fn hand_over(self: Arc<Self>, group: GroupId, to: NodeId) -> Answer<(String, Option<NodeId>)> {
        Box::pin(async move {
            let answer = match self.led(group) {
                Err(refused) => Err(refused),
                Ok(_) => {
                    let (outcome, leader) = self.hand_over_asked(group, to).await;
                    Ok((outcome.as_str().to_string(), leader))
                }
            };
            (answer, self.observer.last_version())
        })
    }

    fn campaign(self: Arc<Self>, group: GroupId, term: u64, last_log: u64, hlc: u64) -> Answer<()> {
        // Above the old leader's clock before anything this member commits as leader.
        self.observer.saw_version(hlc);
        Box::pin(async move {
            let answer = self.campaign_here(group, term, last_log).await.map_err(refusal);
            (answer, self.observer.last_version())
        })
    }

    fn propose(self: Arc<Self>, group: GroupId, proposed: Proposed, hlc: u64) -> Answer<(Outcome, u64)> {
        self.observer.saw_version(hlc);
        Box::pin(async move {
            let partition = proposed.partition;
            let answer = match self.led(group) {
                Err(refused) => Err(refused),
                Ok(r) => match self.admit(partition, &proposed.command).await {
                    // Written or read under another txn's lock here: lost, as on one node.
                    Err(conflict) => Ok((Outcome::Conflict(conflict), 0)),
                    Ok(()) => {
                        let ends = matches!(
                            proposed.command,
                            Command::Commit { .. } | Command::Abort { .. } | Command::Resolve { .. }
                        )
                        .then(|| proposed.command.clone());
                        let proposing = r.propose_indexed(partition, proposed.command, proposed.parent);
                        let answer = match tokio::time::timeout(PROPOSE_TIMEOUT, proposing).await {
                            Err(_) => Err(Refused::Timeout(millis(PROPOSE_TIMEOUT))),
                            Ok(answer) => answer.map_err(refusal),
                        };
                        if let (Ok(_), Some(ended)) = (&answer, ends) {
                            self.remote_locks.ended(&self.partitions, partition, &ended);
                        }
                        answer
                    }
                },
            };
            (answer, self.observer.last_version())
        })
    }

    fn commit_one(self: Arc<Self>, group: GroupId, proposed: Proposed, hlc: u64) -> Answer<(Outcome, u64)> {
        self.observer.saw_version(hlc);
        Box::pin(async move {
            let answer = self.commit_one_here(group, proposed).await;
            (answer, self.observer.last_version())
        })
    }

    fn lock(self: Arc<Self>, txn: TxnId, ptr: PtrId, wait: Duration, hlc: u64) -> Answer<Option<TxnId>> {
        self.observer.saw_version(hlc);
        Box::pin(async move {
            let answer = self.lock_here(txn, ptr, wait).await;
            (answer, self.observer.last_version())
        })
    }

    fn unlock(&self, txn: &TxnId, ptrs: &[PtrId]) {
        self.remote_locks.end(&self.partitions, txn, ptrs);
    }

    fn read_index(self: Arc<Self>, group: GroupId, hlc: u64) -> Answer<u64> {
        self.observer.saw_version(hlc);
        Box::pin(async move {
            let answer = match self.led(group) {
                Err(refused) => Err(refused),
                // Every write acknowledged before the confirmation applied here first, and
                // every one-partition commit this node picked a version at or below the
                // reader's clock for has landed.
                Ok(r) => match self.confirm_group(group).await {
                    Ok(()) if !self.landed(hlc).await => Err(Refused::Timeout(millis(CONFIRM_TIMEOUT))),
                    Ok(()) => Ok(r.applied_index()),
                    Err(ReplicaError::Timeout { after, .. }) => Err(Refused::Timeout(millis(after))),
                    Err(e) => Err(refusal(e)),
                },
            };
            (answer, self.observer.last_version())
        })
    }

    fn running(&self, txns: &[TxnId]) -> Vec<bool> {
        txns.iter().map(|t| self.observer.runs(t)).collect()
    }

    fn watermark(&self) -> Option<crate::engine::gc::Watermark> {
        self.observer.promise_watermark()
    }

    fn contacts(&self) -> Vec<(NodeId, Option<u64>)> {
        self.members().into_iter().map(|m| (m, self.contact_ms(m))).collect()
    }
}

impl Cluster {
    /// Waits, up to [`CONFIRM_TIMEOUT`], until no one-partition commit this node picked a
    /// version at or below `at` for is still out; answers whether none is.
    async fn landed(&self, at: u64) -> bool {
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        while let Some(listener) = self.observer.landing(at) {
            if tokio::time::timeout_at(deadline, listener).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Checks a peer's `Prepare` or `Guard` against the lock table (see
    /// [`locks::RemoteLocks::admit`]); a pointer it writes whose lock another txn holds is
    /// waited for, up to the lock timeout, as a local writer waits.
    async fn admit(&self, partition: u32, cmd: &Command) -> Result<(), crate::engine::Conflict> {
        let Command::Prepare { txn, writes, .. } = cmd else {
            return self.remote_locks.admit(&self.partitions, partition, cmd);
        };
        for (ptr, _) in writes {
            // Refused (the txn ended, the lead moved): the checks below and the log decide.
            if let Ok(Some(holder)) = self.lock_here(txn.clone(), ptr.clone(), self.config.lock_wait).await {
                return Err(crate::engine::Conflict::Locked { ptr: ptr.clone(), holder });
            }
        }
        self.remote_locks.admit(&self.partitions, partition, cmd)
    }

    /// Takes `ptr`'s lock here for a peer's `txn`, in the group this node leads, waiting up
    /// to `wait` as a local writer waits. A holder whose coordinator went silent loses it.
    async fn lock_here(&self, txn: TxnId, ptr: PtrId, wait: Duration) -> Result<Option<TxnId>, Refused> {
        let partition = partition_of(&ptr, self.partitions.len() as u32);
        self.led(self.group_of(partition))?;
        let part = &self.partitions[partition as usize];
        let deadline = tokio::time::Instant::now() + wait;
        // Giving up, a waiter may have taken the wake-up meant for the next one in line:
        // it hands that on.
        let gone = || {
            part.pass_on(&ptr);
            Refused::Failed(format!("txn {txn} ended while it waited for a lock"))
        };
        loop {
            if self.remote_locks.has_ended(&txn) {
                return Err(gone());
            }
            match part.lock(&txn, &ptr) {
                LockOutcome::Acquired if self.remote_locks.has_ended(&txn) => {
                    part.unlock(&txn, &ptr);
                    return Err(gone());
                }
                LockOutcome::Acquired => {
                    self.remote_locks.record(&txn, partition, &ptr);
                    return Ok(None);
                }
                LockOutcome::AlreadyHeld => return Ok(None),
                LockOutcome::Held { holder, mut listener } => {
                    if self.abandoned(&holder) {
                        tracing::info!(txn = %holder, ptr = %ptr, "a lock of a silent coordinator's txn released");
                        self.remote_locks.release(&self.partitions, &holder, None);
                        continue;
                    }
                    // In slices, on the same listener (its place in line stays), to see the
                    // coordinator end the txn meanwhile.
                    loop {
                        let slice = (tokio::time::Instant::now() + LOCK_WAIT_SLICE).min(deadline);
                        match tokio::time::timeout_at(slice, &mut listener).await {
                            Ok(()) => break,
                            Err(_) if slice >= deadline => {
                                part.pass_on(&ptr);
                                return Ok(Some(holder));
                            }
                            Err(_) if self.remote_locks.has_ended(&txn) => {
                                return Err(gone());
                            }
                            Err(_) => {}
                        }
                    }
                }
            }
        }
    }

    /// Whether `txn` is another member's whose coordinator has been silent past its lease.
    pub fn abandoned(&self, txn: &str) -> bool {
        self.coordinator_of(txn)
            .filter(|k| *k != self.config.node_id)
            .and_then(|k| self.silent_for(k))
            .is_some_and(|silent| silent >= resolver::COORDINATOR_LEASE)
    }

    /// Takes `ptr`'s lock for `txn`, which this node coordinates, at the leader of the
    /// pointer's group, waiting there up to `wait` (see [`locks`]). `Ok(None)`: held, or
    /// this node leads the group (its own lock table is the pointer's); `Ok(Some(holder))`:
    /// `wait` ran out behind `holder`.
    pub async fn lock_at_leader(
        &self,
        txn: &TxnId,
        ptr: &PtrId,
        wait: Duration,
    ) -> Result<Option<TxnId>, ReplicaError> {
        let group = self.group_of(partition_of(ptr, self.partitions.len() as u32));
        let replica = &self.replicas[group as usize];
        if replica.is_leader() {
            return Ok(None);
        }
        let (leader, peer) = self.leader_peer(replica)?;
        let ask = Request::Lock {
            txn: txn.clone(),
            ptr: ptr.clone(),
            wait_ms: millis(wait),
            hlc: self.observer.last_version(),
        };
        match peer.call(&ask, wait + CONFIRM_TIMEOUT).await {
            Ok(Response::Locked { answer, hlc }) => {
                self.observer.saw_version(hlc);
                answer.map_err(|refused| refused_error(refused, "the leader to take a lock"))
            }
            Ok(other) => Err(ReplicaError::Raft(format!("node {leader} answered a lock with {other:?}"))),
            Err(e) => Err(ReplicaError::Raft(format!("asking node {leader} for a lock: {e}"))),
        }
    }

    /// Releases the locks `txn` (which this node coordinated) took at other members on
    /// `ptrs`, in the background: one `Unlock` per leader.
    pub fn unlock_at_leaders(self: &Arc<Self>, txn: &TxnId, ptrs: &[PtrId]) {
        let count = self.partitions.len() as u32;
        let mut by_leader: BTreeMap<NodeId, Vec<PtrId>> = BTreeMap::new();
        for ptr in ptrs {
            let group = self.group_of(partition_of(ptr, count));
            if let Some(leader) = self.leader_of(group).filter(|l| *l != self.config.node_id) {
                by_leader.entry(leader).or_default().push(ptr.clone());
            }
        }
        for (leader, ptrs) in by_leader {
            let Some(peer) = self.peer(leader) else { continue };
            let ask = Request::Unlock { txn: txn.clone(), ptrs };
            tokio::spawn(async move {
                if let Err(e) = peer.call(&ask, CONFIRM_TIMEOUT).await {
                    tracing::debug!(node = leader, error = %e, "releasing locks at a peer (its sweep will)");
                }
            });
        }
    }

    /// Releases the locks peers' txns have held here for a while whose coordinator went
    /// silent or no longer runs them (it ended them without saying so, or restarted).
    pub async fn sweep_locks(&self) {
        if self.remote_locks.is_empty() {
            return;
        }
        let old = self.remote_locks.older_than(std::time::Instant::now() - resolver::ASK_AFTER);
        let mut ask: BTreeMap<NodeId, Vec<TxnId>> = BTreeMap::new();
        for txn in old {
            match self.coordinator_of(&txn) {
                Some(k) if k != self.config.node_id && !self.abandoned(&txn) => {
                    ask.entry(k).or_default().push(txn)
                }
                _ => self.remote_locks.release(&self.partitions, &txn, None),
            }
        }
        for (k, txns) in ask {
            let Some(runs) = self.running_on(k, txns.clone()).await else { continue };
            for (txn, runs) in txns.into_iter().zip(runs) {
                if !runs {
                    tracing::debug!(txn = %txn, "a lock of a txn its coordinator ended released");
                    self.remote_locks.release(&self.partitions, &txn, None);
                }
            }
        }
    }

    /// Which of `txns` their coordinator `node` still runs (`None`: it did not answer).
    pub async fn running_on(&self, node: NodeId, txns: Vec<crate::engine::TxnId>) -> Option<Vec<bool>> {
        let asked = txns.len();
        self.ask(node, &Request::Running { txns }, CONFIRM_TIMEOUT, "which txns it runs", |answer| {
            match answer {
                Response::Running(runs) if runs.len() == asked => Ok(runs),
                other => Err(Box::new(other)),
            }
        })
        .await
    }

    /// Asks `node` (over the peer port) and answers what `pick` takes from its answer;
    /// `None`, logged with `what` was asked, when it is no member, does not answer, or
    /// answers something `pick` hands back.
    async fn ask<T>(
        &self,
        node: NodeId,
        request: &Request,
        timeout: Duration,
        what: &'static str,
        pick: impl FnOnce(Response) -> Result<T, Box<Response>>,
    ) -> Option<T> {
        match self.peer(node)?.call(request, timeout).await {
            Ok(answer) => match pick(answer) {
                Ok(picked) => Some(picked),
                Err(other) => {
                    tracing::debug!(node, what, answer = ?other, "a peer answered oddly");
                    None
                }
            },
            Err(e) => {
                tracing::debug!(node, what, error = %e, "asking a peer");
                None
            }
        }
    }

    /// This node's member of `group`, if it leads it; otherwise why a peer's request for
    /// the group is refused.
    fn led(&self, group: GroupId) -> Result<&Replica, Refused> {
        match self.replicas.get(group as usize) {
            None => Err(Refused::Failed(format!("this node holds no group {group}"))),
            Some(r) if !r.is_leader() => Err(Refused::NotLeader(r.metrics().current_leader)),
            Some(r) => Ok(r),
        }
    }
}

/// What a proposal or confirmation this node failed tells the peer that asked.
fn refusal(e: ReplicaError) -> Refused {
    match e {
        ReplicaError::NotLeader { leader, .. } => Refused::NotLeader(leader),
        e => Refused::Failed(e.to_string()),
    }
}

/// What a peer's refusal means here; `waited` names what a timeout waited for.
fn refused_error(refused: Refused, waited: &'static str) -> ReplicaError {
    match refused {
        Refused::NotLeader(leader) => ReplicaError::NotLeader { leader, addr: None },
        Refused::Timeout(ms) => ReplicaError::Timeout { what: waited, after: Duration::from_millis(ms) },
        Refused::Failed(why) => ReplicaError::Raft(why),
    }
}
