//! Read barriers: what a member does before it serves a latest read of a group's partition,
//! so the read is linearizable. The group's leader confirms its lead (under its lease, or
//! with a heartbeat round). Any other member asks the leader how far it has applied (a read
//! index, over the peer port, the HLC both ways), then waits until its own replica has
//! applied that far.
//!
//! A member's reads of one group share their rounds to the leader. A read that arrives
//! while a round is out waits for the next round, which starts after it arrived, so every
//! write acknowledged before the read is inside the index that round gets back. One read
//! index then serves every read that came in meanwhile, not one each. A task of its own
//! drives the rounds, so a reader that goes away strands nobody.
//!
//! A barrier rides through a change of leader (a handover, an election): a round that
//! meets a leader that no longer leads, or that fails after the lead moved, is asked again
//! of the next leader once there is one, for up to two election timeouts, by the loop a
//! proposal follows the lead with (`Cluster::follow_lead`). A read-index round reads
//! nothing and changes nothing, so asking again is always safe.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::{CONFIRM_TIMEOUT, Cluster, refused_error};
use crate::raft::GroupId;
use crate::raft::replica::ReplicaError;
use crate::raft::transport::{Request, Response};

/// The reads waiting for a group's next read-index round, per group.
pub(super) struct Rounds {
    groups: Mutex<Vec<Queue>>,
}

impl Rounds {
    /// The queues of `groups` groups, one each (a group id indexes its own).
    pub(super) fn new(groups: u32) -> Self {
        Self { groups: Mutex::new((0..groups).map(|_| Queue::default()).collect()) }
    }
}

/// One group's readers: whether a round is out, and who waits for the next one.
#[derive(Default)]
struct Queue {
    running: bool,
    waiting: Vec<oneshot::Sender<Result<(), Missed>>>,
}

/// Why a round did not serve its readers.
#[derive(Debug, Clone)]
struct Missed {
    /// The member asked did not lead the group (anymore).
    not_leader: bool,
    why: String,
}

impl std::fmt::Display for Missed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

impl From<ReplicaError> for Missed {
    fn from(e: ReplicaError) -> Self {
        Missed { not_leader: matches!(e, ReplicaError::NotLeader { .. }), why: e.to_string() }
    }
}

impl Cluster {
    /// Makes this member's replica of `partition`'s group hold every write acknowledged
    /// before the call (see the module doc).
    pub async fn read_barrier(self: &Arc<Self>, partition: u32) -> Result<(), ReplicaError> {
        let group = self.group_of(partition);
        let lead_moved = |missed: &Missed, moved: bool| missed.not_leader || moved;
        self.follow_lead(group, "a read barrier", || self.barrier_once(group), lead_moved)
            .await
            .map_err(|missed| ReplicaError::Raft(missed.why))
    }

    /// One try of [`Self::read_barrier`]: this member's own confirmation if it leads
    /// `group`, otherwise a place in the next read-index round.
    async fn barrier_once(self: &Arc<Self>, group: GroupId) -> Result<(), Missed> {
        if self.replicas[group as usize].is_leader() {
            return self.confirm_group(group).await.map_err(Missed::from);
        }
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut groups = self.rounds.groups.lock();
            let queue = &mut groups[group as usize];
            queue.waiting.push(tx);
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            tokio::spawn(self.clone().drive_rounds(group));
        }
        match rx.await {
            Ok(answer) => answer,
            Err(_) => Err(Missed { not_leader: false, why: "the read-index round stopped".into() }),
        }
    }

    /// [`Self::read_barrier`] on every group (a listing reads every partition).
    pub async fn read_barrier_all(self: &Arc<Self>) -> Result<(), ReplicaError> {
        let barriers = (0..self.groups()).map(|g| self.read_barrier(g));
        futures_util::future::try_join_all(barriers).await.map(|_| ())
    }

    /// Runs `group`'s rounds while reads wait for one, each for every read that waited
    /// when it started.
    async fn drive_rounds(self: Arc<Self>, group: GroupId) {
        loop {
            let waiting = {
                let mut groups = self.rounds.groups.lock();
                let queue = &mut groups[group as usize];
                if queue.waiting.is_empty() {
                    queue.running = false;
                    return;
                }
                std::mem::take(&mut queue.waiting)
            };
            let answer = self.read_index_round(group).await.map_err(Missed::from);
            self.metrics.observe_read_index_round(waiting.len());
            for reader in waiting {
                let _ = reader.send(answer.clone());
            }
        }
    }

    /// One round: the leader's applied index, then this replica applied that far.
    async fn read_index_round(&self, group: GroupId) -> Result<(), ReplicaError> {
        let replica = &self.replicas[group as usize];
        if replica.is_leader() {
            return self.confirm_group(group).await;
        }
        let (leader, peer) = self.leader_peer(replica)?;
        let ask = Request::ReadIndex { group, hlc: self.observer.last_version() };
        let index = match peer.call(&ask, CONFIRM_TIMEOUT).await {
            Ok(Response::ReadIndex { answer, hlc }) => {
                self.observer.saw_version(hlc);
                answer
                    .map_err(|refused| refused_error(refused, "the leader's majority to confirm its lead"))?
            }
            Ok(other) => {
                return Err(ReplicaError::Raft(format!(
                    "node {leader} answered a read index with {other:?}"
                )));
            }
            Err(e) => return Err(ReplicaError::Raft(format!("asking node {leader} for a read index: {e}"))),
        };
        replica.wait_applied(index, CONFIRM_TIMEOUT).await
    }
}
