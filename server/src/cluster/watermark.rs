//! The cluster's GC watermark: the minimum, over every member, of what that member alone
//! holds (the retention bound by its clock, its txns' snapshots, the pins), gathered from
//! all of them as the paper's gossip does.
//!
//! Each member answers with a promise ([`crate::engine::Engine::promise_watermark`]): it
//! begins no txn below what it answered. So the minimum of the answers is below every live
//! snapshot in the cluster and every snapshot a txn can still take, and the first group's
//! leader proposes it as the cluster's horizon (`Command::Horizon`), below which every
//! replica may prune. A member that does not answer is never skipped: it holds the watermark
//! at its last promise this member heard, or, if it heard none, at the cluster's horizon
//! as it stands (which then cannot rise until the member answers again).

use std::collections::BTreeMap;
use std::time::Duration;

use parking_lot::Mutex;

use super::Cluster;
use crate::engine::gc::{HeldBy, Watermark};
use crate::raft::NodeId;
use crate::raft::transport::{Request, Response};

/// Longest a member's answer may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// What holds the cluster's watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// This member's own watermark, held there by what [`HeldBy`] says.
    Member(NodeId, HeldBy),
    /// A member that did not answer.
    Unreachable(NodeId),
}

/// The cluster's watermark as one gathering found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterWatermark {
    pub version: u64,
    pub held_by: Holder,
    /// The members that did not answer, ascending.
    pub unreachable: Vec<NodeId>,
}

/// The last promise heard from each member.
#[derive(Debug, Default)]
pub struct Promises {
    last: Mutex<BTreeMap<NodeId, u64>>,
}

impl Promises {
    /// Joins the answers (`None`: the member did not answer) into the cluster's watermark;
    /// `floor` is the cluster's horizon now, the bound of a member never heard from.
    pub fn join(&self, answers: Vec<(NodeId, Option<Watermark>)>, floor: u64) -> Option<ClusterWatermark> {
        let mut last = self.last.lock();
        let mut best: Option<(u64, Holder)> = None;
        let mut unreachable = Vec::new();
        for (member, answer) in answers {
            let (version, holder) = match answer {
                Some(w) => {
                    // Promises only rise; a lower answer is a txn registered meanwhile.
                    last.insert(member, w.version);
                    (w.version, Holder::Member(member, w.held_by))
                }
                None => {
                    unreachable.push(member);
                    (last.get(&member).copied().unwrap_or(floor).max(floor), Holder::Unreachable(member))
                }
            };
            if best.as_ref().is_none_or(|(v, _)| version < *v) {
                best = Some((version, holder));
            }
        }
        unreachable.sort_unstable();
        best.map(|(version, held_by)| ClusterWatermark { version, held_by, unreachable })
    }
}

impl Cluster {
    /// Asks every member (this one too) for its promised watermark, and joins the answers
    /// ([`Promises::join`]); `floor` is the cluster's horizon as this member's log has it.
    pub async fn gather_watermark(&self, floor: u64) -> Option<ClusterWatermark> {
        let me = self.node_id();
        let asks = self.members().into_iter().map(|member| async move {
            let answer = if member == me {
                self.observer.promise_watermark()
            } else {
                self.ask_watermark(member).await
            };
            (member, answer)
        });
        let answers = futures_util::future::join_all(asks).await;
        self.promises.join(answers, floor)
    }

    async fn ask_watermark(&self, member: NodeId) -> Option<Watermark> {
        self.ask(member, &Request::Watermark, ASK_TIMEOUT, "its watermark", |answer| match answer {
            Response::Watermark(w) => Ok(w),
            other => Err(Box::new(other)),
        })
        .await
        .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(version: u64, held_by: HeldBy) -> Option<Watermark> {
        Some(Watermark { version, held_by })
    }

    #[test]
    fn the_lowest_promise_holds_and_names_its_member() {
        let p = Promises::default();
        let w = p
            .join(
                vec![
                    (1, at(50, HeldBy::Retention)),
                    (2, at(30, HeldBy::Txn("n2-1".into()))),
                    (3, at(40, HeldBy::Retention)),
                ],
                10,
            )
            .unwrap();
        assert_eq!(w.version, 30);
        assert_eq!(w.held_by, Holder::Member(2, HeldBy::Txn("n2-1".into())));
        assert!(w.unreachable.is_empty());
    }

    #[test]
    fn a_silent_member_holds_at_its_last_promise_or_the_floor() {
        let p = Promises::default();
        // Never heard from: the cluster's horizon holds, so nothing can rise.
        let w = p.join(vec![(1, at(50, HeldBy::Retention)), (3, None)], 10).unwrap();
        assert_eq!((w.version, w.held_by, w.unreachable), (10, Holder::Unreachable(3), vec![3]));
        // Heard at 40, then silent: held at 40, however far the others go.
        p.join(vec![(1, at(50, HeldBy::Retention)), (3, at(40, HeldBy::Retention))], 10);
        let w = p.join(vec![(1, at(90, HeldBy::Retention)), (3, None)], 20).unwrap();
        assert_eq!((w.version, w.held_by), (40, Holder::Unreachable(3)));
        // A member heard from below another's silence holds instead.
        let w = p.join(vec![(1, at(35, HeldBy::Pin("p".into()))), (3, None)], 20).unwrap();
        assert_eq!(w.held_by, Holder::Member(1, HeldBy::Pin("p".into())));
        assert_eq!(w.unreachable, vec![3]);
    }
}
