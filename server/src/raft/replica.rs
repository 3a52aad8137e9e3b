//! One node's member of a group: its `Raft`, the partitions it applies to, and proposing.
//!
//! [`Replica::start`] opens the group's log and state machine in the node's database, starts
//! openraft over the node's [`Peers`] and registers the group with the node's [`Groups`], so
//! the peer port serves it. [`Replica::propose`] appends a command to the group's log and
//! answers what applying it answered, once a majority of the voters hold it durably.
//! [`Replica::stand_down`] and [`Replica::campaign`] hand a leader's lead to a chosen
//! member (see `cluster::balance`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fjall::Database;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{Raft, RaftMetrics, ServerState};

use super::lease::Lease;
use super::log_store::{Flusher, LogStore};
use super::network::Network;
use super::state_machine::{Held, Observer, PartitionMachine, Partitions};
use super::transport::{Groups, Peers};
use super::{BasicNode, GroupId, NodeId, RaftConfig, Restm};
use crate::engine::command::{Command, Outcome};

/// Why a replica could not start or a proposal did not apply.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("opening the raft log: {0}")]
    Open(#[from] fjall::Error),
    #[error("raft storage: {0}")]
    Storage(#[from] openraft::StorageError<NodeId>),
    #[error("invalid raft config: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("raft stopped: {0}")]
    Fatal(#[from] openraft::error::Fatal<NodeId>),
    /// Only the leader appends; `leader` is who it is, if known.
    #[error("this node is not the group's leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId>, addr: Option<String> },
    #[error("group {group} holds no partition {partition}")]
    NoPartition { group: GroupId, partition: u32 },
    #[error("{0}")]
    Raft(String),
    #[error("waited {after:?} for {what}")]
    Timeout { what: &'static str, after: Duration },
    /// A membership change that cannot be made as asked.
    #[error("{0}")]
    Member(String),
}

/// What every group of a node shares: the database its logs live in, the flusher that
/// fsyncs them, the connections to the peers and the registry the peer port serves.
pub struct Host {
    pub node: NodeId,
    pub db: Database,
    pub flusher: Flusher,
    pub peers: Arc<Peers>,
    pub groups: Arc<Groups>,
}

impl Host {
    /// The host of `node` over `db`, dialling peers as `me`.
    pub fn new(db: Database, me: Arc<super::transport::Identity>) -> Self {
        Self {
            node: me.node,
            flusher: Flusher::start(db.clone()),
            db,
            peers: Peers::new(me),
            groups: Arc::new(Groups::default()),
        }
    }
}

/// One node's member of one group.
pub struct Replica {
    node: NodeId,
    group: GroupId,
    raft: Raft<Restm>,
    partitions: Partitions,
    held: Held,
    groups: Arc<Groups>,
    batcher: Batcher,
    reads: Arc<parking_lot::Mutex<ReadRound>>,
    lease: Arc<Lease>,
    /// True while this member hands its lead over ([`StandingDown`]).
    standing_down: Arc<tokio::sync::watch::Sender<bool>>,
    /// True while [`Replica::heartbeat`] sends nothing ([`Replica::quiet_followers`]).
    quiet: Arc<AtomicBool>,
}

/// A leader holding still while it hands its lead to another member: it appends no entry
/// (every slot of the [`Batcher`] is taken, so commands proposed meanwhile wait), holds no
/// lease and refuses no vote ([`Lease::stand_down`]), and confirms no read
/// ([`Replica::confirm_leader`] waits). With nothing appended, a successor that holds the
/// whole log can be elected with this member's vote; dropping this ends all of it, whether
/// the lead moved (the waiting commands then learn of the new leader) or not.
pub struct StandingDown {
    _slots: Option<tokio::sync::OwnedSemaphorePermit>,
    lease: Arc<Lease>,
    flag: Arc<tokio::sync::watch::Sender<bool>>,
    /// Set while heartbeats are off ([`Replica::quiet_followers`]), to turn them on again.
    quieted: Option<Arc<AtomicBool>>,
}

impl Drop for StandingDown {
    fn drop(&mut self) {
        if let Some(quiet) = self.quieted.take() {
            quiet.store(false, Ordering::Relaxed);
        }
        self.lease.stands_again();
        self.flag.send_replace(false);
    }
}

/// Confirmations of the lead waiting for the next heartbeat round: one round answers every
/// read that arrived before it started (etcd batches its ReadIndex the same way).
#[derive(Default)]
struct ReadRound {
    running: bool,
    waiting: Vec<tokio::sync::oneshot::Sender<Result<(), ReplicaError>>>,
}

/// How [`Replica::confirm_leader`] confirmed the lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    /// Under the leader's lease, without a round.
    Lease,
    /// By a heartbeat round to a majority.
    Round,
}

impl Confirmed {
    pub fn as_str(self) -> &'static str {
        match self {
            Confirmed::Lease => "lease",
            Confirmed::Round => "round",
        }
    }
}

/// Most commands one log entry carries.
const MAX_BATCH: usize = 512;
/// Most entries a replica has proposed and not yet seen applied. While they are out, new
/// commands gather into the next entry. openraft 0.9 appends (and fsyncs) one entry at a
/// time anyway, so a shallow queue means larger batches: with 32 writers, 2 gave 1.18x the
/// writes/s of 3, and 6 gave 0.8x. With the partitions in several groups each group sees
/// a share of the writers, so its entries are smaller and their cost per write (appends,
/// fsyncs, wake-ups on every member) larger: there 1 gave 1.03-1.17x the writes/s of 2
/// with 32 writers over 3 members and 4 groups, 1.0-1.12x with one group, and the same
/// with 4 writers (one run each, alternated).
const IN_FLIGHT: usize = 1;

/// A command waiting for its entry, and who waits for its outcome.
struct Waiting {
    command: super::Proposed,
    /// The outcome, and the index of the entry that carried the command.
    answer: tokio::sync::oneshot::Sender<Result<(Outcome, u64), ReplicaError>>,
}

/// Gathers the commands proposed to one replica into log entries (group commit for the
/// log): one task takes every command waiting whenever fewer than [`IN_FLIGHT`] entries are
/// out, and proposes them as one entry.
struct Batcher {
    tx: tokio::sync::mpsc::UnboundedSender<Waiting>,
    /// One permit per entry that may be out ([`IN_FLIGHT`]).
    slots: Arc<tokio::sync::Semaphore>,
}

impl Batcher {
    fn start(raft: Raft<Restm>) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Waiting>();
        let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        let held = slots.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH
                    && let Ok(w) = rx.try_recv()
                {
                    batch.push(w);
                }
                let raft = raft.clone();
                tokio::spawn(async move {
                    let (commands, answers): (Vec<_>, Vec<_>) =
                        batch.into_iter().map(|w| (w.command, w.answer)).unzip();
                    let written = raft.client_write(super::Proposal { commands }).await;
                    drop(slot);
                    match written {
                        Ok(resp) => {
                            let index = resp.log_id.index;
                            let mut outcomes = resp.data.into_iter();
                            for answer in answers {
                                let _ =
                                    answer.send(outcomes.next().flatten().map(|o| (o, index)).ok_or_else(
                                        || ReplicaError::Raft("the command applied to nothing".into()),
                                    ));
                            }
                        }
                        Err(e) => {
                            for answer in answers {
                                let _ = answer.send(Err(write_error(&e)));
                            }
                        }
                    }
                });
            }
        });
        Self { tx, slots: held }
    }
}

/// What a failed read-index round means, for each read that waited on it.
fn read_error(e: &RaftError<NodeId, openraft::error::CheckIsLeaderError<NodeId, BasicNode>>) -> ReplicaError {
    match e {
        RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f)) => {
            ReplicaError::NotLeader {
                leader: f.leader_id,
                addr: f.leader_node.as_ref().map(|n| n.addr.clone()),
            }
        }
        RaftError::Fatal(f) => ReplicaError::Fatal(f.clone()),
        e => ReplicaError::Raft(e.to_string()),
    }
}

/// What a failed `client_write` (or membership change) means, for each command of the entry.
fn write_error(e: &RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> ReplicaError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ReplicaError::NotLeader {
            leader: f.leader_id,
            addr: f.leader_node.as_ref().map(|n| n.addr.clone()),
        },
        RaftError::Fatal(f) => ReplicaError::Fatal(f.clone()),
        e => ReplicaError::Raft(e.to_string()),
    }
}

/// The groups' timing (`serve --heartbeat-interval` and `--election-timeout`, as etcd's
/// flags of the same names).
///
/// A heartbeat's answer may take up to the interval (openraft's limit for an
/// `AppendEntries`), so the default leaves room for a loaded machine: at 100 ms, two busy
/// cores missed it and read confirmations failed. openraft keeps a member that heard a
/// leader from voting for `election` (its leader lease), then campaigns after a random
/// half-to-whole `election` more: a dead leader is replaced 1.5–2 × `election` after its
/// last heartbeat, about 1.05–1.4 s by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat: Duration,
    pub election: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self { heartbeat: Duration::from_millis(250), election: Duration::from_millis(700) }
    }
}

impl Timing {
    /// Checks that an election timeout outlasts a few heartbeats, so one slow heartbeat
    /// does not depose a live leader.
    pub fn new(heartbeat: Duration, election: Duration) -> Result<Self, String> {
        if heartbeat.is_zero() {
            return Err("--heartbeat-interval must be above 0".into());
        }
        if election.as_millis() * 2 < heartbeat.as_millis() * 5 {
            return Err(format!(
                "--election-timeout ({} ms) must be at least 2.5 × --heartbeat-interval ({} ms), or a single \
                 late heartbeat starts an election",
                election.as_millis(),
                heartbeat.as_millis()
            ));
        }
        Ok(Self { heartbeat, election })
    }

    /// How long a confirmed heartbeat round lets the leader read on its own
    /// ([`Lease::new`] of the election timeout).
    pub fn lease(&self) -> Duration {
        Lease::length_of(self.election)
    }

    /// openraft's configuration of a group of `cluster`.
    pub fn raft_config(&self, cluster: &str) -> RaftConfig {
        let election = millis(self.election);
        RaftConfig {
            cluster_name: cluster.to_string(),
            heartbeat_interval: millis(self.heartbeat),
            election_timeout_min: election / 2,
            election_timeout_max: election,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
    }
}

impl Replica {
    /// Starts `host`'s member of the group `held` names, over its share of `partitions`, with
    /// its log and state in the
    /// host's database, telling `observer` what it applies.
    pub async fn start(
        host: &Host,
        held: Held,
        partitions: Partitions,
        observer: Arc<dyn Observer>,
        config: RaftConfig,
    ) -> Result<Self, ReplicaError> {
        let config = Arc::new(config.validate()?);
        let hold = Duration::from_millis(config.election_timeout_max);
        let group = held.group;
        let log = LogStore::open(&host.db, group, host.flusher.clone())?;
        let machine = PartitionMachine::open(&host.db, held, partitions.clone(), observer)?;
        let raft =
            Raft::new(host.node, config, Network::new(host.peers.clone(), group), log, machine).await?;
        // openraft refuses votes for `leader_lease` (= the election timeout's maximum) after
        // it last heard a leader (or started): the lease is built on that.
        let lease = Arc::new(Lease::new(hold));
        host.groups.insert(group, raft.clone(), lease.clone());
        let batcher = Batcher::start(raft.clone());
        Ok(Self {
            node: host.node,
            group,
            raft,
            partitions,
            held,
            groups: host.groups.clone(),
            batcher,
            reads: Arc::default(),
            lease,
            standing_down: Arc::new(tokio::sync::watch::channel(false).0),
            quiet: Arc::default(),
        })
    }

    /// Makes `members` the group's first voters (on one node of a new cluster). A group
    /// that already has a membership keeps it.
    pub async fn initialize(&self, members: BTreeMap<NodeId, BasicNode>) -> Result<(), ReplicaError> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(ReplicaError::Raft(e.to_string())),
        }
    }

    /// Appends `command` for `partition` to the log (in one entry with whatever else is
    /// proposed meanwhile); answers what applying it answered, once a majority of the voters
    /// hold the entry durably and it is applied here.
    /// `parent` is the proposer's span, carried to every member's apply.
    pub async fn propose(
        &self,
        partition: u32,
        command: Command,
        parent: Option<crate::telemetry::SpanParent>,
    ) -> Result<Outcome, ReplicaError> {
        self.propose_indexed(partition, command, parent).await.map(|(outcome, _)| outcome)
    }

    /// [`Self::propose`], answering also the index of the log entry that carried the
    /// command (a member that waits until it applied that far reads its own write).
    pub async fn propose_indexed(
        &self,
        partition: u32,
        command: Command,
        parent: Option<crate::telemetry::SpanParent>,
    ) -> Result<(Outcome, u64), ReplicaError> {
        if self.partitions.get(partition as usize).is_none() || !self.held.holds(partition) {
            return Err(ReplicaError::NoPartition { group: self.group, partition });
        }
        let (answer, outcome) = tokio::sync::oneshot::channel();
        let waiting = Waiting { command: super::Proposed { partition, command, parent }, answer };
        if self.batcher.tx.send(waiting).is_err() {
            return Err(ReplicaError::Raft("the replica's proposer stopped".into()));
        }
        outcome.await.map_err(|_| ReplicaError::Raft("the replica's proposer dropped the command".into()))?
    }

    /// Adds `node` (its peer address `addr`) as a learner and waits until it has caught up
    /// with the log or a snapshot. Only the leader can.
    pub async fn add_learner(&self, node: NodeId, addr: &str) -> Result<(), ReplicaError> {
        self.raft
            .add_learner(node, BasicNode { addr: addr.to_string() }, true)
            .await
            .map(|_| ())
            .map_err(|e| write_error(&e))
    }

    /// Makes `node` (peer address `addr`) a voter, as a Raft membership change on the
    /// leader: a learner first, then, once it has caught up with the log (or a snapshot)
    /// within `catch_up`, promoted; one that does not catch up in time is taken out again.
    /// A voter already there at `addr` is left as it is; an id that is a member at another
    /// address is refused.
    pub async fn add_voter(&self, node: NodeId, addr: &str, catch_up: Duration) -> Result<(), ReplicaError> {
        let membership = self.metrics().membership_config.membership().clone();
        match membership.get_node(&node) {
            Some(there) if there.addr != addr => {
                return Err(ReplicaError::Member(format!(
                    "node {node} is a member of group {} at {}, not {addr}",
                    self.group, there.addr
                )));
            }
            Some(_) if membership.voter_ids().any(|v| v == node) => return Ok(()),
            Some(_) => {}
            None => {
                let learner = BasicNode { addr: addr.to_string() };
                self.raft.add_learner(node, learner, false).await.map_err(|e| write_error(&e))?;
            }
        }
        let target = self.metrics().last_log_index.unwrap_or(0);
        let caught_up = |m: &RaftMetrics<NodeId, BasicNode>| matched(m, node).is_some_and(|i| i >= target);
        if self.raft.wait(Some(catch_up)).metrics(caught_up, "the learner to catch up").await.is_err() {
            // A learner that never answers would hold the cluster's GC watermark (a member
            // that cannot be reached is never skipped): it leaves again.
            let out = openraft::ChangeMembers::RemoveNodes([node].into());
            if let Err(e) = self.raft.change_membership(out, false).await {
                tracing::warn!(group = self.group, node, error = %e, "removing a learner that did not catch up");
            }
            return Err(ReplicaError::Timeout {
                what: "the new member to catch up with the log",
                after: catch_up,
            });
        }
        let promote = openraft::ChangeMembers::AddVoterIds([node].into());
        self.raft.change_membership(promote, false).await.map_err(|e| write_error(&e))?;
        tracing::info!(group = self.group, node, addr, "a new voter");
        Ok(())
    }

    /// Takes `node` out of the group (a voter or a learner), as a Raft membership change on
    /// the leader; a node that is no member is left as it is.
    pub async fn remove_member(&self, node: NodeId) -> Result<(), ReplicaError> {
        let membership = self.metrics().membership_config.membership().clone();
        if membership.get_node(&node).is_none() {
            return Ok(());
        }
        let change = if membership.voter_ids().any(|v| v == node) {
            openraft::ChangeMembers::RemoveVoters([node].into())
        } else {
            openraft::ChangeMembers::RemoveNodes([node].into())
        };
        self.raft.change_membership(change, false).await.map_err(|e| write_error(&e))?;
        tracing::info!(group = self.group, node, "a member removed");
        Ok(())
    }

    /// The partitions this member applies to, ascending.
    pub fn partitions(&self) -> impl Iterator<Item = &crate::engine::partition::Partition> + '_ {
        self.held.of_these(&self.partitions)
    }

    /// openraft's handle of this member.
    pub fn raft(&self) -> &Raft<Restm> {
        &self.raft
    }

    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The replicated state of every partition, to compare replicas.
    pub fn dumps(&self) -> Vec<(u32, crate::engine::partition::PartitionDump)> {
        self.partitions().map(|p| (p.id, p.dump())).collect()
    }

    /// openraft's view of the group from this member.
    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// A watch on openraft's view of the group from this member.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<RaftMetrics<NodeId, BasicNode>> {
        self.raft.metrics()
    }

    /// Confirms this member still leads, so that a read of its state now is linearizable:
    /// under its lease ([`Lease`]: a majority acknowledged a heartbeat round less than the
    /// lease ago, and no other member can be elected before it runs out) at once, and
    /// otherwise by a heartbeat round started after this call, acknowledged by a majority,
    /// after which this member applied everything committed before it (openraft's
    /// read-index). Calls that arrive while a round is out share the next one; a lease that
    /// is half gone is renewed by a round in the background.
    pub async fn confirm_leader(&self) -> Result<Confirmed, ReplicaError> {
        // A handover ends with this member deposed (the read goes to the successor) or
        // still leading; the callers' budget bounds the wait.
        let mut standing_down = self.standing_down.subscribe();
        if *standing_down.borrow_and_update() {
            let _ = standing_down.wait_for(|s| !*s).await;
        }
        let (leading, term) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (m.state == ServerState::Leader, m.current_term)
        };
        if leading && let Some(left) = self.lease.remaining(term, Instant::now()) {
            if left < self.lease.length() / 2 && !self.reads.lock().running {
                drop(self.join_round());
            }
            return Ok(Confirmed::Lease);
        }
        self.join_round()
            .await
            .map_err(|_| ReplicaError::Raft("the read confirmation round was dropped".into()))??;
        Ok(Confirmed::Round)
    }

    /// Queues for the next heartbeat round (starting the rounds if none runs); a round that
    /// a majority acknowledged renews the lease from when it started.
    fn join_round(&self) -> tokio::sync::oneshot::Receiver<Result<(), ReplicaError>> {
        let (answer, confirmed) = tokio::sync::oneshot::channel();
        let start = {
            let mut round = self.reads.lock();
            round.waiting.push(answer);
            !std::mem::replace(&mut round.running, true)
        };
        if start {
            let (raft, reads, lease) = (self.raft.clone(), self.reads.clone(), self.lease.clone());
            tokio::spawn(async move {
                loop {
                    let waiting = {
                        let mut round = reads.lock();
                        if round.waiting.is_empty() {
                            round.running = false;
                            return;
                        }
                        std::mem::take(&mut round.waiting)
                    };
                    let (started, term) = (Instant::now(), raft.metrics().borrow().current_term);
                    let confirmed = raft.ensure_linearizable().await;
                    if confirmed.is_ok() {
                        lease.confirmed(term, started);
                    }
                    for answer in waiting {
                        let _ = answer.send(confirmed.as_ref().map(|_| ()).map_err(read_error));
                    }
                }
            });
        }
        confirmed
    }

    pub fn is_leader(&self) -> bool {
        self.metrics().state == ServerState::Leader
    }

    /// Begins handing this member's lead over ([`StandingDown`]): gives its lease up, stops
    /// confirming reads, and waits, up to `within`, until no entry it proposed is still out.
    pub async fn stand_down(&self, within: Duration) -> Result<StandingDown, ReplicaError> {
        if !self.is_leader() {
            return Err(ReplicaError::NotLeader { leader: self.metrics().current_leader, addr: None });
        }
        self.standing_down.send_replace(true);
        let mut standing = StandingDown {
            _slots: None,
            lease: self.lease.clone(),
            flag: self.standing_down.clone(),
            quieted: None,
        };
        self.lease.stand_down();
        let slots = self.batcher.slots.clone().acquire_many_owned(IN_FLIGHT as u32);
        match tokio::time::timeout(within, slots).await {
            Ok(Ok(permit)) => standing._slots = Some(permit),
            Ok(Err(_)) => return Err(ReplicaError::Raft("the replica's proposer stopped".into())),
            Err(_) => {
                return Err(ReplicaError::Timeout { what: "the entries out to be committed", after: within });
            }
        }
        Ok(standing)
    }

    /// Waits, up to `within`, until this leader has applied its whole log and knows `node`
    /// holds all of it; answers the term and the log's last index then (what `node` is
    /// asked to [`Self::campaign`] with). Meant while [`StandingDown`], when the log stays.
    pub async fn wait_successor(&self, node: NodeId, within: Duration) -> Result<(u64, u64), ReplicaError> {
        let ready = |m: &RaftMetrics<NodeId, BasicNode>| {
            let last = m.last_log_index.unwrap_or(0);
            m.state == ServerState::Leader
                && m.last_applied.map_or(0, |l| l.index) == last
                && matched(m, node).is_some_and(|i| i >= last)
        };
        let what = "the successor to hold the whole log";
        match self.raft.wait(Some(within)).metrics(ready, what).await {
            Ok(m) => Ok((m.current_term, m.last_log_index.unwrap_or(0))),
            Err(_) => Err(ReplicaError::Timeout { what, after: within }),
        }
    }

    /// Lets the other voters' refusals lapse, for a handover in a group of more than three
    /// voters: the successor needs a vote besides this leader's and its own, and a voter
    /// that heard a leader within `hold` (openraft's leader lease, the election timeout)
    /// refuses. Sends one last heartbeat, turns heartbeats off until `standing` ends, and
    /// waits `hold` and `margin` (for the heartbeat to arrive). A voter stands for election
    /// itself only a random half to whole election timeout after its refusal lapsed, so the
    /// successor, asked at once, campaigns first. (Heartbeats are the node's to pace, by
    /// [`Self::heartbeat`], which stays quiet meanwhile.)
    pub async fn quiet_followers(&self, standing: &mut StandingDown, hold: Duration, margin: Duration) {
        if let Err(e) = self.raft.trigger().heartbeat().await {
            tracing::warn!(group = self.group, error = %e, "a last heartbeat before a handover");
        }
        self.quiet.store(true, Ordering::Relaxed);
        standing.quieted = Some(self.quiet.clone());
        tokio::time::sleep(hold + margin).await;
    }

    /// Sends the followers a heartbeat now if this member leads (and is not quieted for a
    /// handover). The node paces every group's heartbeats with one ticker, so that a peer
    /// gets all of them at once, in one write (openraft's own timer, one per group, is off).
    pub async fn heartbeat(&self) {
        if self.quiet.load(Ordering::Relaxed) || !self.is_leader() {
            return;
        }
        if let Err(e) = self.raft.trigger().heartbeat().await {
            tracing::debug!(group = self.group, error = %e, "a heartbeat");
        }
    }

    /// Stands for election at once because the leader of `term`, whose log ends at
    /// `last_log`, hands this member its lead. Refused when this member is no voter, leads
    /// already, knows another term, or lacks part of that log (it could not be elected).
    pub async fn campaign(&self, term: u64, last_log: u64) -> Result<(), ReplicaError> {
        let m = self.metrics();
        let (me, group, have) = (self.node, self.group, m.last_log_index.unwrap_or(0));
        let refused = if !m.membership_config.membership().voter_ids().any(|v| v == me) {
            Some(format!("node {me} is no voter of group {group}"))
        } else if m.state == ServerState::Leader {
            Some(format!("node {me} leads group {group} already"))
        } else if m.current_term != term {
            Some(format!("node {me} is in term {} of group {group}, not {term}", m.current_term))
        } else if have < last_log {
            Some(format!("node {me} holds group {group}'s log to {have}, not {last_log}"))
        } else {
            None
        };
        if let Some(why) = refused {
            return Err(ReplicaError::Member(why));
        }
        tracing::info!(
            group = self.group,
            term,
            last_log,
            "standing for election: the leader hands its lead over"
        );
        self.raft.trigger().elect().await.map_err(ReplicaError::Fatal)
    }

    /// Waits, up to `within`, until this member knows a leader other than `was`.
    pub async fn wait_leader_other_than(&self, was: Option<NodeId>, within: Duration) {
        let changed =
            |m: &RaftMetrics<NodeId, BasicNode>| m.current_leader.is_some() && m.current_leader != was;
        let _ = self.raft.wait(Some(within)).metrics(changed, "another leader").await;
    }

    /// Waits, up to `within`, until another member leads; answers who (`None`: no one
    /// yet, or this member still).
    pub async fn wait_deposed(&self, within: Duration) -> Option<NodeId> {
        let me = self.node;
        let deposed = |m: &RaftMetrics<NodeId, BasicNode>| {
            m.state != ServerState::Leader && m.current_leader.is_some_and(|l| l != me)
        };
        let m = self.raft.wait(Some(within)).metrics(deposed, "the successor to be elected").await.ok()?;
        m.current_leader.filter(|l| *l != self.node)
    }

    /// The index of the last entry this member applied (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.metrics().last_applied.map_or(0, |l| l.index)
    }

    /// Waits until this member has applied at least `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ReplicaError> {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "catching up")
            .await
            .map(|_| ())
            .map_err(|e| ReplicaError::Raft(e.to_string()))
    }

    /// Stops the member and unregisters it from the peer port.
    pub async fn shutdown(self) {
        self.groups.remove(self.group);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(node = self.node, group = self.group, error = %e, "raft shutdown");
        }
    }
}

/// How far the leader whose metrics `m` are knows `node` holds its log (`None`: not known,
/// or this member does not lead).
fn matched(m: &RaftMetrics<NodeId, BasicNode>, node: NodeId) -> Option<u64> {
    m.replication.as_ref()?.get(&node)?.as_ref().map(|l| l.index)
}

/// `d` in whole milliseconds, as openraft's configuration and `/cluster` count them.
pub fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}
