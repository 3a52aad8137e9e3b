//! One-partition commits at the partition's leader, for txns coordinated elsewhere.
//!
//! Where every member coordinates (partitions in groups led anywhere), a txn that writes
//! and reads one partition commits in one `PrepareCommit` when its coordinator leads the
//! partition's group: the leader's clock picks a version above everything it served, and
//! closes and read barriers wait for it (`Engine::prepare_replicated`). A coordinator that
//! does not lead the group used to commit such a txn in four entries (`Prepare`, `Guard`,
//! the record, `Commit`), since only the leader can pick that version. Instead it hands the
//! commit to the leader ([`Request::CommitOne`]), which does what it does for a txn of its
//! own:
//! 1. takes the locks of the pointers written (the coordinator took them already as it
//!    wrote, so this waits only if the leader changed meanwhile), and marks them prepared:
//!    readers on the leader above the mark wait for the commit;
//! 2. issues the commit version from its clock (moved above the coordinator's first),
//!    held in flight (the partition is closed below it) and landing (read barriers of
//!    other members wait for it) until the entry lands (`Engine::issue_for_peer`);
//! 3. validates the reads against its lock table (another txn's lock on a pointer read is
//!    a conflict, as on one node);
//! 4. proposes the one `PrepareCommit`, which re-validates against the replicated state,
//!    and answers its outcome and index; the txn's locks there go.
//!
//! The coordinator adopts the version (`Engine::adopt_commit_version`) and waits until its
//! own replica applied the entry, so it reads its own write. An entry whose fate is unknown
//! (its proposal timed out) keeps its version in flight until an `Abort` this leader
//! proposes after it lands, or it loses the lead, as the leader's own commits do.

use std::sync::Arc;
use std::time::Duration;

use super::{Cluster, PROPOSE_TIMEOUT, refusal, refused_error};
use crate::engine::command::{Command, Outcome};
use crate::engine::partition::partition_of;
use crate::engine::{Conflict, PtrId, TxnId};
use crate::raft::replica::ReplicaError;
use crate::raft::transport::{Refused, Request};
use crate::raft::{GroupId, Proposed};

/// How often a leader tries again to settle a commit whose entry's fate is unknown.
const SETTLE_RETRY: Duration = Duration::from_millis(250);

impl Cluster {
    /// Commits `command`, a `PrepareCommit` of one partition with a stand-in version, at
    /// that partition's leader, here or over the peer port (see the module doc); answers
    /// the outcome, `Committed` at the version the leader picked or the conflict. A commit
    /// that meets no leader goes to the next one, for up to two election timeouts: a refused
    /// one appended nothing.
    pub async fn commit_one(
        self: &Arc<Self>,
        partition: u32,
        command: Command,
    ) -> Result<Outcome, ReplicaError> {
        use tracing::Instrument;
        let group = self.group_of(partition);
        let span = tracing::debug_span!(
            "raft.commit_one",
            otel.kind = "producer",
            restm.group = group,
            restm.partition = partition,
        );
        let parent = crate::telemetry::parent_of(&span);
        let proposed = Proposed { partition, command, parent };
        let budget = PROPOSE_TIMEOUT + self.config.lock_wait;
        let replica = &self.replicas[group as usize];
        let attempt = || async {
            if replica.is_leader() {
                self.commit_one_here(group, proposed.clone())
                    .await
                    .map(|(outcome, _)| outcome)
                    .map_err(|refused| refused_error(refused, "a majority to hold the entry"))
            } else {
                let ask = |hlc| Request::CommitOne { group, proposed: proposed.clone(), hlc };
                self.through_leader(replica, ask, budget).await
            }
        };
        let refused = |e: &ReplicaError, _moved: bool| matches!(e, ReplicaError::NotLeader { .. });
        let committing = self.follow_lead(group, "a one-partition commit", attempt, refused).instrument(span);
        self.timed(budget, "the leader to commit", committing).await
    }

    /// Makes a one-partition commit in `group`, which this node leads (see the module doc):
    /// the outcome and the index of the entry that carried it (0 when none did).
    pub(super) async fn commit_one_here(
        self: &Arc<Self>,
        group: GroupId,
        proposed: Proposed,
    ) -> Result<(Outcome, u64), Refused> {
        let replica = self.led(group)?;
        let Proposed { partition, command, parent } = proposed;
        let Command::PrepareCommit { txn, trace_id, reads, writes, .. } = command else {
            return Err(Refused::Failed(format!("a one-partition commit carries a {}", command.kind())));
        };
        let count = self.partitions.len() as u32;
        let elsewhere = writes
            .iter()
            .map(|(p, _)| p)
            .chain(reads.iter().map(|(p, _)| p))
            .find(|p| partition_of(p, count) != partition);
        if self.group_of(partition) != group || partition >= count || elsewhere.is_some() {
            return Err(Refused::Failed(format!(
                "a one-partition commit of partition {partition} in group {group} names another's pointer"
            )));
        }
        let part = &self.partitions[partition as usize];
        let ptrs: Vec<PtrId> = writes.iter().map(|(p, _)| p.clone()).collect();
        let lost = |conflict: Conflict| {
            self.remote_locks.end(&self.partitions, &txn, &ptrs);
            Ok((Outcome::Conflict(conflict), 0))
        };
        // 1. The locks of the pointers written, marked prepared.
        for ptr in &ptrs {
            match self.lock_here(txn.clone(), ptr.clone(), self.config.lock_wait).await {
                Ok(None) => {}
                Ok(Some(holder)) => return lost(Conflict::Locked { ptr: ptr.clone(), holder }),
                Err(refused) => {
                    self.remote_locks.end(&self.partitions, &txn, &ptrs);
                    return Err(refused);
                }
            }
        }
        if let Err(conflict) = part.prepare(&txn, &ptrs, self.observer.last_version()) {
            return lost(conflict);
        }
        // 2. The version, 3. the reads.
        let Some(version) = self.observer.issue_for_peer() else {
            self.remote_locks.end(&self.partitions, &txn, &ptrs);
            return Err(Refused::Failed("this member has no engine to pick a commit version".into()));
        };
        if let Err(conflict) = part.validate(&txn, &reads) {
            self.observer.commit_settled(version);
            return lost(conflict);
        }
        // 4. One entry.
        let cmd =
            Command::PrepareCommit { txn: txn.clone(), trace_id, commit_version: version, reads, writes };
        let answer = match tokio::time::timeout(
            PROPOSE_TIMEOUT,
            replica.propose_indexed(partition, cmd, parent),
        )
        .await
        {
            Ok(answer) => answer,
            Err(_) => {
                Err(ReplicaError::Timeout { what: "a majority to hold the entry", after: PROPOSE_TIMEOUT })
            }
        };
        match answer {
            // The entry may land yet.
            Err(e) if !matches!(e, ReplicaError::NotLeader { .. }) => {
                let me = Arc::downgrade(self);
                self.settle_one(partition, txn.clone(), move || {
                    if let Some(c) = me.upgrade() {
                        c.observer.commit_settled(version);
                        c.remote_locks.end(&c.partitions, &txn, &ptrs);
                    }
                });
                Err(refusal(e))
            }
            // Landed, or refused before the log took it.
            answer => {
                self.observer.commit_settled(version);
                self.remote_locks.end(&self.partitions, &txn, &ptrs);
                answer.map_err(refusal)
            }
        }
    }

    /// A one-partition commit of `txn` on `partition` whose `PrepareCommit` went unanswered
    /// holds its version (readers of the partition elsewhere wait for it) until its fate is
    /// settled: until an entry this node proposes after it lands in the group's log (an
    /// `Abort`, a no-op if the `PrepareCommit` was appended and applied first), or this node
    /// no longer leads the group (its successor serves reads only after applying its log).
    /// Then `settled` runs. Serves the commits this node coordinates and those it makes
    /// for a peer alike.
    pub fn settle_one(self: &Arc<Self>, partition: u32, txn: TxnId, settled: impl FnOnce() + Send + 'static) {
        use tracing::Instrument;
        let me = Arc::downgrade(self);
        tokio::spawn(
            async move {
                while let Some(c) = me.upgrade()
                    && c.leads(c.group_of(partition))
                {
                    let abort = Command::Abort { txn: txn.clone() };
                    if c.propose(partition, abort).await.is_ok() {
                        break;
                    }
                    drop(c);
                    tokio::time::sleep(SETTLE_RETRY).await;
                }
                settled();
            }
            .in_current_span(),
        );
    }
}
