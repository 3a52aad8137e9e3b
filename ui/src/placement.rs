//! The cluster view's model, free of the browser: from `GET /cluster` as one member sees
//! it, the members (up or down, the groups and partitions each leads), the placement map
//! (each group's partitions × members: leader, voter or learner, and how far each follower
//! trails where the answering member leads), and its timeline of leader changes.

use restm_shared::{ClusterStatus, GroupStatus, LeaderChange};

/// One member, as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    pub node_id: u64,
    pub peer_url: String,
    /// `up`, `down` or `unknown`.
    pub state: String,
    pub last_contact_ms: Option<u64>,
    /// Groups it leads, and the partitions in them.
    pub groups_led: usize,
    pub partitions_led: usize,
}

/// A member's part in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Voter,
    Learner,
    /// Holds no replica of the group.
    Absent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Voter => "voter",
            Role::Learner => "learner",
            Role::Absent => "absent",
        }
    }
}

/// One cell of the placement map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replica {
    pub node_id: u64,
    pub role: Role,
    /// Entries it trails the leader's log by, when the answering member leads the group.
    pub lag: Option<u64>,
}

/// One row of the placement map: a group, its partitions, and a cell per member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    pub group: u32,
    pub partitions: Vec<u32>,
    pub term: u64,
    pub leader: Option<u64>,
    pub replicas: Vec<Replica>,
}

/// One line of the leader timeline: `group` went from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineRow {
    pub group: u32,
    /// The leader before (`None`: the first change the member kept for the group; inside,
    /// `None` is no leader).
    pub from: Option<Option<u64>>,
    pub to: Option<u64>,
    pub term: u64,
    pub time: String,
    /// The group's members, where they changed from the change before (or on the first
    /// one kept): `voters 1, 2, 3 · learners 4`.
    pub members: Option<String>,
}

/// The members, ascending by id.
pub fn members(status: &ClusterStatus) -> Vec<MemberRow> {
    let mut rows: Vec<MemberRow> = status
        .members
        .iter()
        .map(|m| {
            let led: Vec<&GroupStatus> =
                status.groups.iter().filter(|g| g.leader == Some(m.node_id)).collect();
            MemberRow {
                node_id: m.node_id,
                peer_url: m.peer_url.clone(),
                state: m.state.clone(),
                last_contact_ms: m.last_contact_ms,
                groups_led: led.len(),
                partitions_led: led.iter().map(|g| g.partitions.len()).sum(),
            }
        })
        .collect();
    rows.sort_by_key(|r| r.node_id);
    rows
}

/// The placement map: a row per group, a cell per member (in [`members`]' order).
pub fn placement(status: &ClusterStatus) -> Vec<GroupRow> {
    let mut ids: Vec<u64> = status.members.iter().map(|m| m.node_id).collect();
    ids.sort_unstable();
    status
        .groups
        .iter()
        .map(|g| GroupRow {
            group: g.group,
            partitions: g.partitions.clone(),
            term: g.term,
            leader: g.leader,
            replicas: ids
                .iter()
                .map(|&node_id| {
                    let role = if g.leader == Some(node_id) {
                        Role::Leader
                    } else if g.voters.contains(&node_id) {
                        Role::Voter
                    } else if g.learners.contains(&node_id) {
                        Role::Learner
                    } else {
                        Role::Absent
                    };
                    let lag = g.follower_lag.iter().find(|f| f.node_id == node_id).and_then(|f| f.lag);
                    Replica { node_id, role, lag }
                })
                .collect(),
        })
        .collect()
}

/// The member's leader timeline (`/cluster`'s `leader_changes`, oldest first), newest
/// first, each change with the leader before it, and the members where they changed.
pub fn timeline(changes: &[LeaderChange]) -> Vec<TimelineRow> {
    let list = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    let mut rows: Vec<TimelineRow> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let before = changes[..i].iter().rev().find(|p| p.group == c.group);
            let moved = before.is_none_or(|p| (&p.voters, &p.learners) != (&c.voters, &c.learners));
            let members = (moved && !c.voters.is_empty()).then(|| match c.learners.as_slice() {
                [] => format!("voters {}", list(&c.voters)),
                learners => format!("voters {} · learners {}", list(&c.voters), list(learners)),
            });
            TimelineRow {
                group: c.group,
                from: before.map(|p| p.leader),
                to: c.leader,
                term: c.term,
                time: c.time.clone(),
                members,
            }
        })
        .collect();
    rows.reverse();
    rows
}

/// Partitions as a short list: `0, 4, 8 … 60 (16)` past `shown` of them.
pub fn partitions_label(partitions: &[u32], shown: usize) -> String {
    let list = |ps: &[u32]| ps.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    match partitions {
        [] => "none".to_string(),
        ps if ps.len() <= shown => list(ps),
        ps => {
            format!("{} … {} ({})", list(&ps[..shown.saturating_sub(1).max(1)]), ps[ps.len() - 1], ps.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use restm_shared::{FollowerLag, MemberStatus};

    use super::*;

    fn group(group: u32, leader: Option<u64>, term: u64) -> GroupStatus {
        GroupStatus {
            group,
            partitions: (0..16).map(|i| i * 4 + group).collect(),
            leader,
            voters: vec![1, 2, 3],
            learners: vec![],
            term,
            role: "follower".into(),
            last_log_index: None,
            applied_index: None,
            millis_since_quorum_ack: None,
            follower_lag: vec![],
            closed: vec![],
        }
    }

    fn status(groups: Vec<GroupStatus>) -> ClusterStatus {
        let member = |id: u64, state: &str| MemberStatus {
            node_id: id,
            peer_url: format!("http://127.0.0.1:708{id}"),
            state: state.into(),
            last_contact_ms: Some(5),
        };
        ClusterStatus {
            cluster: "t".into(),
            node_id: 1,
            replicated: true,
            members: vec![member(3, "down"), member(1, "up"), member(2, "up")],
            groups,
            timing: None,
            as_of: None,
            leader_changes: vec![],
        }
    }

    #[test]
    fn members_count_what_each_leads() {
        let s =
            status(vec![group(0, Some(1), 2), group(1, Some(2), 2), group(2, Some(1), 3), group(3, None, 4)]);
        let rows = members(&s);
        assert_eq!(rows.iter().map(|r| r.node_id).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!((rows[0].groups_led, rows[0].partitions_led), (2, 32));
        assert_eq!((rows[1].groups_led, rows[1].partitions_led), (1, 16));
        assert_eq!((rows[2].groups_led, rows[2].state.as_str()), (0, "down"));
    }

    #[test]
    fn placement_marks_the_leader_the_voters_and_the_lag() {
        let mut g = group(1, Some(2), 5);
        g.voters = vec![1, 2];
        g.learners = vec![3];
        g.follower_lag = vec![FollowerLag { node_id: 1, matched_index: Some(90), lag: Some(10) }];
        let rows = placement(&status(vec![g]));
        let cells: Vec<(u64, Role, Option<u64>)> =
            rows[0].replicas.iter().map(|r| (r.node_id, r.role, r.lag)).collect();
        assert_eq!(cells, [(1, Role::Voter, Some(10)), (2, Role::Leader, None), (3, Role::Learner, None)]);
    }

    #[test]
    fn the_timeline_says_where_each_lead_came_from() {
        let change = |group: u32, leader: Option<u64>, term: u64| LeaderChange {
            group,
            leader,
            term,
            version: term,
            time: format!("t{term}"),
            voters: vec![1, 2, 3],
            learners: vec![],
        };
        let rows = timeline(&[
            change(0, Some(1), 1),
            change(1, Some(2), 1),
            change(0, None, 2),
            change(0, Some(3), 2),
        ]);
        let seen: Vec<(u32, Option<Option<u64>>, Option<u64>)> =
            rows.iter().map(|r| (r.group, r.from, r.to)).collect();
        assert_eq!(
            seen,
            [(0, Some(None), Some(3)), (0, Some(Some(1)), None), (1, None, Some(2)), (0, None, Some(1))]
        );
    }

    #[test]
    fn the_timeline_names_the_members_where_they_change() {
        let change = |version: u64, voters: Vec<u64>, learners: Vec<u64>| LeaderChange {
            group: 0,
            leader: Some(1),
            term: 1,
            version,
            time: format!("t{version}"),
            voters,
            learners,
        };
        let rows = timeline(&[
            change(1, vec![1, 2, 3], vec![]),
            change(2, vec![1, 2, 3], vec![4]),
            change(3, vec![1, 2, 3, 4], vec![]),
        ]);
        let members: Vec<Option<&str>> = rows.iter().map(|r| r.members.as_deref()).collect();
        assert_eq!(
            members,
            [Some("voters 1, 2, 3, 4"), Some("voters 1, 2, 3 · learners 4"), Some("voters 1, 2, 3")]
        );
        assert_eq!(rows[0].from, Some(Some(1)), "the lead stayed");
    }

    #[test]
    fn partitions_label_shortens_long_lists() {
        assert_eq!(partitions_label(&[], 4), "none");
        assert_eq!(partitions_label(&[1, 5], 4), "1, 5");
        assert_eq!(partitions_label(&[0, 4, 8, 12, 16, 20], 4), "0, 4, 8 … 20 (6)");
    }
}
