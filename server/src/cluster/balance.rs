//! Leader balancing: each member leads its share of the groups, also after it restarted.
//!
//! A member that comes back after a restart or a partition leads nothing: while it was away
//! the others took its groups over, and Raft never gives a lead back on its own. Every
//! member therefore runs [`Cluster::spawn_balancer`]: every `--rebalance-interval` (with
//! jitter) it looks at who leads each group ([`plan`], a pure function), and the member that
//! leads the most hands one of its groups to the live voter that leads the fewest, when the
//! two differ by 2 or more. One handover per tick, by the busiest member only, so two
//! members never move leads at once on the same view; the leads settle in a few ticks.
//!
//! A handover of group `g` from leader `L` to member `T` (as etcd's `MoveLeader`, and
//! TiKV's transfer-leader, do it):
//! 1. `L` stands down ([`Replica::stand_down`]): it appends nothing more, waits until no
//!    entry of its is out, gives its lease up (so it grants `T`'s vote) and confirms no read.
//! 2. `L` waits until `T` holds its whole log ([`Replica::wait_successor`]).
//! 3. `L` asks `T` to campaign ([`Request::Campaign`], with `L`'s clock); `T` checks that
//!    it is a voter, in `L`'s term and holding that log, raises its clock above `L`'s, and
//!    stands for election. `L`'s vote and its own make a majority of three. Other voters
//!    that still hear `L` refuse (openraft's leader lease), so in a group of more voters
//!    `L` first sends a last heartbeat and then none for an election timeout
//!    ([`Replica::quiet_followers`]), after which they grant the vote too.
//! 4. `L` waits, up to an election timeout, to be deposed, then stops standing down:
//!    commands that waited meanwhile learn of the new leader and go there.
//!
//! A lead is handed over only after it has been held for two election timeouts: openraft
//! dates a leader's own vote from its election, and a leader refuses votes for an election
//! timeout after it.
//!
//! With one group its leader coordinates every txn, and moving it would abort them all;
//! one group has nothing to balance anyway (one member leads it), so [`plan`] never moves it.
//!
//! An operator moves a lead by hand with [`Cluster::move_leader`]
//! (`POST /cluster/groups/{group}/leader`, `restm cluster move-leader`), as etcd's
//! `move-leader`: any member takes the request and asks the group's leader
//! ([`Request::HandOver`]), which makes the same handover.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use restm_shared::LeaderMoved;

use super::{Cluster, MEMBER_SILENCE_MS};
use crate::raft::replica::Replica;
use crate::raft::transport::{Refused, Request, Response};
use crate::raft::{GroupId, NodeId};

/// Most voters a group may have for a handover without quieting its followers first.
const QUICK_VOTERS: usize = 3;
/// How long after a last heartbeat a follower's refusal has surely lapsed, beyond the
/// election timeout: the heartbeat's way there.
const HEARTBEAT_MARGIN: Duration = Duration::from_millis(100);
/// Longest a leader standing down waits for its entries out to commit.
const DRAIN_WAIT: Duration = Duration::from_millis(500);
/// Longest a leader standing down waits for the successor to hold its log.
const CATCH_UP_WAIT: Duration = Duration::from_millis(300);
/// Longest the successor may take to answer that it campaigns.
const CAMPAIGN_WAIT: Duration = Duration::from_millis(300);

/// One group as the balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Led {
    pub group: GroupId,
    /// Who leads it (`None`: no one, as far as this member knows).
    pub leader: Option<NodeId>,
    pub voters: Vec<NodeId>,
    /// Whether its leader may hand it over now (it has led it long enough).
    pub movable: bool,
    /// Whether a membership change is under way in it: a learner catching up, or a
    /// joint configuration between two sets of voters.
    pub changing: bool,
}

/// The handover `me` should make, if any: `(group, to)`.
///
/// Counts the groups each member leads, among `live` members and leaders. If every group
/// has a leader and `me` leads the most (the lowest id among equals), `me` hands one of its
/// movable groups to the live voter of it that leads the
/// fewest (the lowest id, then the lowest group, among equals), when `me` leads at least 2
/// more than that voter. Otherwise `None`; also while any group's membership is changing,
/// so that a handover (which may quiet a group's heartbeats for an election timeout) never
/// meets a member being added or removed, and the leads are counted over the members that
/// stay.
pub fn plan(groups: &[Led], live: &BTreeSet<NodeId>, me: NodeId) -> Option<(GroupId, NodeId)> {
    if groups.iter().any(|g| g.changing) {
        return None;
    }
    let mut counts: BTreeMap<NodeId, usize> = live.iter().map(|m| (*m, 0)).collect();
    for g in groups {
        *counts.entry(g.leader?).or_default() += 1;
    }
    let busiest = counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))?;
    if *busiest.0 != me {
        return None;
    }
    let mine = *busiest.1;
    groups
        .iter()
        .filter(|g| g.leader == Some(me) && g.movable)
        .flat_map(|g| {
            let counts = &counts;
            g.voters
                .iter()
                .filter(|v| **v != me && live.contains(v))
                .map(move |v| (counts.get(v).copied().unwrap_or(0), *v, g.group))
        })
        .filter(|(count, _, _)| count + 2 <= mine)
        .min_by_key(|(count, node, group)| (*count, *node, *group))
        .map(|(_, node, group)| (group, node))
}

/// Longest the member asked for a move waits for the leader's answer: its handovers, and
/// the wait before them for a lead too new to hand over.
const MOVE_WAIT: Duration = Duration::from_secs(15);
/// How many handovers the leader makes for one operator's move before it answers that the
/// move did not take (each takes at most about two seconds).
const MOVE_TRIES: u32 = 3;
/// The pause between two of those handovers, for the group's traffic to go on.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Why a leader move was not made.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("there is no group {group}: the cluster's groups are 0 to {last}")]
    NoGroup { group: GroupId, last: GroupId },
    #[error("node {to} is no voter of group {group} (its voters: {voters:?})")]
    NotAVoter { group: GroupId, to: NodeId, voters: Vec<NodeId> },
    /// No leader, the lead moved meanwhile, or the handover did not take: asking again may.
    #[error("group {group}: {why}")]
    Unavailable { group: GroupId, why: String },
}

/// How a handover ended (the `outcome` of `restm_raft_leader_handovers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// The chosen member leads.
    Moved,
    /// Another member leads.
    Elsewhere,
    /// This member still leads (or no one does yet).
    Kept,
    /// It did not begin: this member could not stand down, or the successor would not
    /// campaign.
    Refused,
}

impl Handover {
    pub fn as_str(self) -> &'static str {
        match self {
            Handover::Moved => "moved",
            Handover::Elsewhere => "elsewhere",
            Handover::Kept => "kept",
            Handover::Refused => "refused",
        }
    }
}

impl Cluster {
    /// Balances the leads every `every` (plus up to a fifth of it, at random, so members'
    /// ticks drift apart), for as long as the cluster runs (see the module docs).
    pub fn spawn_balancer(self: &Arc<Self>, every: Duration) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let jitter = every.mul_f64(rand::random::<f64>() / 5.0);
                tokio::time::sleep(every + jitter).await;
                let Some(c) = me.upgrade() else { return };
                c.balance_once().await;
            }
        });
    }

    /// How long a lead must have been held before it is handed over: two election
    /// timeouts (see the module docs).
    fn settled(&self) -> Duration {
        self.config.timing.election * 2
    }

    /// One tick of the balancer: the handover [`plan`] answers, if any.
    async fn balance_once(&self) {
        let mut groups = Vec::with_capacity(self.replicas.len());
        for r in &self.replicas {
            let m = r.metrics();
            let membership = m.membership_config.membership();
            groups.push(Led {
                group: r.group(),
                leader: m.current_leader,
                voters: membership.voter_ids().collect(),
                movable: self.led_for(r.group()).is_some_and(|led| led >= self.settled()),
                changing: membership.get_joint_config().len() > 1
                    || membership.learner_ids().next().is_some(),
            });
        }
        let me = self.config.node_id;
        let live: BTreeSet<NodeId> = self
            .members()
            .into_iter()
            .filter(|m| {
                *m == me || self.silent_for(*m).is_some_and(|d| d < Duration::from_millis(MEMBER_SILENCE_MS))
            })
            .collect();
        let Some((group, to)) = plan(&groups, &live, me) else { return };
        let (outcome, _) = self.hand_over_now(group, to).await;
        tracing::info!(group, to, outcome = outcome.as_str(), "handed a lead over to balance the leaders");
    }

    /// Hands the lead of `group`, which this member holds, to `to`, once it has held it
    /// long enough; answers how it ended and who leads then.
    pub(super) async fn hand_over_now(&self, group: GroupId, to: NodeId) -> (Handover, Option<NodeId>) {
        if let Some(led) = self.led_for(group)
            && led < self.settled()
        {
            tokio::time::sleep(self.settled() - led).await;
        }
        let outcome = self.hand_over(&self.replicas[group as usize], to).await;
        self.metrics.observe_handover(outcome.as_str());
        (outcome, self.leader_of(group))
    }

    /// [`Self::hand_over_now`] as an operator asked it: a handover that did not begin or
    /// did not take while this member still leads (the successor was slow to hold the log
    /// on a busy machine, say) is made again, up to [`MOVE_TRIES`] times, before the
    /// operator is told to ask again.
    pub(super) async fn hand_over_asked(&self, group: GroupId, to: NodeId) -> (Handover, Option<NodeId>) {
        let mut tries = 1;
        loop {
            let (outcome, leader) = self.hand_over_now(group, to).await;
            let again = matches!(outcome, Handover::Refused | Handover::Kept) && self.leads(group);
            if !again || tries >= MOVE_TRIES {
                return (outcome, leader);
            }
            tracing::info!(
                group,
                to,
                outcome = outcome.as_str(),
                tries,
                "a handover an operator asked for did not take; again"
            );
            tries += 1;
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Moves the lead of `group` to its voter `to`, from whichever member holds it.
    pub async fn move_leader(&self, group: GroupId, to: NodeId) -> Result<LeaderMoved, MoveError> {
        let last = self.groups().saturating_sub(1);
        let replica = self.replicas.get(group as usize).ok_or(MoveError::NoGroup { group, last })?;
        let m = replica.metrics();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        if !voters.contains(&to) {
            return Err(MoveError::NotAVoter { group, to, voters });
        }
        let unavailable = |why: String| MoveError::Unavailable { group, why };
        let from = m.current_leader.ok_or_else(|| {
            unavailable("it has no leader now (an election is under way); ask again".into())
        })?;
        if from == to {
            return Ok(LeaderMoved { group, from, leader: to, outcome: "already".into() });
        }
        let (outcome, leader) = if from == self.config.node_id {
            let (outcome, leader) = self.hand_over_asked(group, to).await;
            (outcome.as_str().to_string(), leader)
        } else {
            let peer = self
                .peer(from)
                .ok_or_else(|| unavailable(format!("its leader, node {from}, is no member")))?;
            match peer.call(&Request::HandOver { group, to }, MOVE_WAIT).await {
                Ok(Response::HandedOver(Ok(answer))) => answer,
                Ok(Response::HandedOver(Err(Refused::NotLeader(_)))) => {
                    return Err(unavailable(format!("node {from} no longer leads it; ask again")));
                }
                Ok(other) => return Err(unavailable(format!("node {from} answered {other:?}"))),
                Err(e) => return Err(unavailable(format!("asking its leader, node {from}: {e}"))),
            }
        };
        match leader {
            Some(l) if l == to && outcome == Handover::Moved.as_str() => {
                Ok(LeaderMoved { group, from, leader: to, outcome })
            }
            _ => Err(unavailable(format!(
                "the handover from node {from} to node {to} did not take ({outcome}; leader now: {leader:?}); ask again"
            ))),
        }
    }

    /// Hands the lead of `replica`'s group, which this member holds, to `to` (see the
    /// module docs).
    async fn hand_over(&self, replica: &Replica, to: NodeId) -> Handover {
        let group = replica.group();
        let Some(peer) = self.peer(to) else { return Handover::Refused };
        let mut standing = match replica.stand_down(DRAIN_WAIT).await {
            Ok(standing) => standing,
            Err(e) => {
                tracing::debug!(group, to, error = %e, "could not stand down to hand the lead over");
                return Handover::Refused;
            }
        };
        let (term, last_log) = match replica.wait_successor(to, CATCH_UP_WAIT).await {
            Ok(at) => at,
            Err(e) => {
                tracing::debug!(group, to, error = %e, "the successor does not hold the log");
                return Handover::Refused;
            }
        };
        if replica.metrics().membership_config.membership().voter_ids().count() > QUICK_VOTERS {
            replica.quiet_followers(&mut standing, self.config.timing.election, HEARTBEAT_MARGIN).await;
        }
        let ask = Request::Campaign { group, term, last_log, hlc: self.observer.last_version() };
        match peer.call(&ask, CAMPAIGN_WAIT).await {
            Ok(Response::Campaigned(Ok(()))) => {}
            Ok(other) => {
                tracing::debug!(group, to, answer = ?other, "the successor would not campaign");
                return Handover::Refused;
            }
            Err(e) => {
                tracing::debug!(group, to, error = %e, "asking the successor to campaign");
                return Handover::Refused;
            }
        }
        let leader = replica.wait_deposed(self.config.timing.election).await;
        drop(standing);
        match leader {
            Some(l) if l == to => Handover::Moved,
            Some(_) => Handover::Elsewhere,
            None => Handover::Kept,
        }
    }

    /// Stands for election in `group` at its leader's word (see [`Request::Campaign`]).
    pub(super) async fn campaign_here(
        &self,
        group: GroupId,
        term: u64,
        last_log: u64,
    ) -> Result<(), crate::raft::replica::ReplicaError> {
        let replica = self.replicas.get(group as usize).ok_or_else(|| {
            crate::raft::replica::ReplicaError::Member(format!("this node holds no group {group}"))
        })?;
        replica.campaign(term, last_log).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn led(group: GroupId, leader: NodeId) -> Led {
        Led { group, leader: Some(leader), voters: vec![1, 2, 3], movable: true, changing: false }
    }

    fn live(members: &[NodeId]) -> BTreeSet<NodeId> {
        members.iter().copied().collect()
    }

    #[test]
    fn the_busiest_member_hands_a_group_to_the_least_busy_voter() {
        // Node 3 came back: 1 and 2 lead three groups each.
        let groups: Vec<Led> = (0..6).map(|g| led(g, if g % 2 == 0 { 1 } else { 2 })).collect();
        assert_eq!(plan(&groups, &live(&[1, 2, 3]), 1), Some((0, 3)), "1 and 2 tie: the lower id moves");
        assert_eq!(plan(&groups, &live(&[1, 2, 3]), 2), None, "only the busiest moves");
        assert_eq!(plan(&groups, &live(&[1, 2, 3]), 3), None);
        // While node 3 is down there is nowhere to go.
        assert_eq!(plan(&groups, &live(&[1, 2]), 1), None);
    }

    #[test]
    fn leads_a_member_apart_by_one_stay() {
        let groups: Vec<Led> = [1, 2, 3, 1, 2].iter().enumerate().map(|(g, l)| led(g as u32, *l)).collect();
        for me in 1..=3 {
            assert_eq!(plan(&groups, &live(&[1, 2, 3]), me), None);
        }
        // One group: its leader leads one more than the others, and keeps it.
        assert_eq!(plan(&[led(0, 2)], &live(&[1, 2, 3]), 2), None);
    }

    #[test]
    fn nothing_moves_while_a_group_has_no_leader() {
        let mut groups: Vec<Led> = (0..4).map(|g| led(g, 1)).collect();
        assert_eq!(plan(&groups, &live(&[1, 2, 3]), 1), Some((0, 2)));
        groups[3].leader = None;
        assert_eq!(plan(&groups, &live(&[1, 2, 3]), 1), None);
    }

    #[test]
    fn nothing_moves_while_a_membership_changes() {
        let mut groups: Vec<Led> = (0..4).map(|g| led(g, 1)).collect();
        groups[2].changing = true;
        assert_eq!(plan(&groups, &live(&[1, 2, 3]), 1), None, "a member is being added or removed");
        groups[2].changing = false;
        assert_eq!(plan(&groups, &live(&[1, 2, 3]), 1), Some((0, 2)));
    }

    #[test]
    fn only_movable_groups_go_and_only_to_their_live_voters() {
        let mut groups: Vec<Led> = (0..4).map(|g| led(g, 1)).collect();
        groups[0].movable = false;
        groups[1].voters = vec![1, 2, 3, 4, 5];
        groups[2].voters = vec![1, 4, 5];
        groups[3].voters = vec![1, 2, 3];
        assert_eq!(plan(&groups, &live(&[1, 4, 5]), 1), Some((1, 4)), "2 and 3 are down");
        assert_eq!(plan(&groups, &live(&[1, 2, 3]), 1), Some((1, 2)), "4 and 5 are down");
        groups[1].movable = false;
        assert_eq!(plan(&groups, &live(&[1, 4, 5]), 1), Some((2, 4)));
        assert_eq!(plan(&groups, &live(&[1, 2, 3]), 1), Some((3, 2)));
        groups[3].movable = false;
        assert_eq!(plan(&groups, &live(&[1, 2, 3]), 1), None, "group 2's voters are down");
    }

    #[test]
    fn handing_over_as_planned_settles_every_spread_within_one() {
        // Many starts where 2 or 3 members (every one a voter of every group) lead 1..=12
        // groups, piled on the first few: applying the plan of whoever it names ends, and
        // ends with the leads at most 1 apart.
        for members in 2..=3u64 {
            let all: Vec<NodeId> = (1..=members).collect();
            for count in 1..=12u32 {
                for seed in 0..20u64 {
                    let piled_on = 1 + seed % members;
                    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let mut groups: Vec<Led> = (0..count)
                        .map(|g| {
                            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                            Led {
                                group: g,
                                leader: Some(1 + (x >> 33) % piled_on),
                                voters: all.clone(),
                                movable: true,
                                changing: false,
                            }
                        })
                        .collect();
                    let up = live(&all);
                    let mut moves = 0;
                    while let Some((g, to)) = all.iter().find_map(|me| plan(&groups, &up, *me)) {
                        groups[g as usize].leader = Some(to);
                        moves += 1;
                        assert!(
                            moves <= count,
                            "{members} members, {count} groups: the plan does not settle"
                        );
                    }
                    let mut led: BTreeMap<NodeId, u32> = all.iter().map(|m| (*m, 0)).collect();
                    for g in &groups {
                        *led.entry(g.leader.unwrap_or_default()).or_default() += 1;
                    }
                    let (max, min) = (led.values().max().copied(), led.values().min().copied());
                    assert!(
                        max.zip(min).is_some_and(|(a, b)| a - b <= 1),
                        "{members} members, {count} groups: settled at {led:?}"
                    );
                }
            }
        }
    }
}
