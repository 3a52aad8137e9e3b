//! Ending the transactions whose coordinator is gone.
//!
//! A txn prepared on a partition holds intents (readers above their mark wait for them) and
//! guards (writers of what it read conflict) until its coordinator commits or aborts it
//! there. A coordinator can die, or lose the lead it coordinated under, between its
//! `Prepare` and its last `Commit`. A new leader of the same group resolves what it finds
//! at once (`Node::resolve_orphans`); the [`Resolver`] is the steady net under that, and the
//! only one once the partitions are spread over groups led by different nodes: on each
//! group this node leads, a txn prepared for longer than the resolver's patience, and not
//! one this node is running, is taken for abandoned.
//!
//! Resolving one is two steps, each a proposal:
//! 1. `TxnRecord { Aborted }` on the txn's primary partition (found by the primary pointer
//!    its `Prepare` or `Guard` named). The record keeps its first decision, so this either
//!    aborts the txn, or answers the commit its coordinator recorded first
//!    (`Outcome::Decided`). A coordinator that was only slow then finds its commit refused
//!    and aborts; it never commits against the resolver.
//! 2. `Resolve` with that fate on each partition of this group that holds the txn: its
//!    intents installed at the recorded version, or dropped. `Resolve` leaves the record,
//!    since the leaders of the txn's other groups read it too.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::engine::command::{Command, Outcome, TxnState};
use crate::engine::partition::partition_of;
use crate::engine::{PtrId, TxnId};
use crate::raft::state_machine::Partitions;

use super::Cluster;

/// How long a txn may stay prepared on a partition before its leader takes it for
/// abandoned: twice a proposal's longest wait, so a coordinator that is merely waiting on
/// a slow majority is rarely resolved under it (and if it is, it aborts cleanly).
pub const ABANDONED_AFTER: Duration = Duration::from_secs(10);

/// How long a member may go unheard (no group's traffic, no peer call answered) before the
/// txns it coordinates are taken for abandoned at once: its lease lapsed. A live member
/// exchanges heartbeats far more often than this.
pub const COORDINATOR_LEASE: Duration = Duration::from_secs(2);

/// What one pass did with a txn it took for abandoned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub txn: TxnId,
    /// Its fate by its record.
    pub state: TxnState,
    /// The partitions of this node's groups where it was ended.
    pub partitions: Vec<u32>,
}

/// Remembers since when each foreign txn has been seen prepared here.
#[derive(Debug)]
pub struct Resolver {
    patience: Duration,
    first_seen: HashMap<TxnId, Instant>,
}

impl Resolver {
    pub fn new(patience: Duration) -> Self {
        Self { patience, first_seen: HashMap::new() }
    }

    /// One pass over the partitions of the groups this node leads: resolves every txn
    /// prepared there for longer than the patience that `ours` does not claim. A proposal
    /// that fails leaves the txn for the next pass.
    pub async fn pass(
        &mut self,
        cluster: &Cluster,
        partitions: &Partitions,
        ours: impl Fn(&TxnId) -> bool,
    ) -> Vec<Resolved> {
        let now = Instant::now();
        let count = partitions.len() as u32;
        // Txn → its primary and the partitions here that hold it.
        let mut found: BTreeMap<TxnId, (Option<PtrId>, Vec<u32>)> = BTreeMap::new();
        for p in partitions.iter() {
            if !cluster.leads(cluster.group_of(p.id)) {
                continue;
            }
            for txn in p.prepared_txns() {
                if ours(&txn) {
                    continue;
                }
                let entry = found.entry(txn.clone()).or_default();
                entry.0 = entry.0.take().or_else(|| p.primary_of(&txn));
                entry.1.push(p.id);
            }
        }
        self.first_seen.retain(|txn, _| found.contains_key(txn));
        let mut resolved = Vec::new();
        for (txn, (primary, parts)) in found {
            let since = *self.first_seen.entry(txn.clone()).or_insert(now);
            // A coordinator that went silent has abandoned its txns; readers and writers
            // waiting on them need not sit out the whole patience.
            let coordinator_gone = cluster
                .coordinator_of(&txn)
                .filter(|k| *k != cluster.node_id())
                .and_then(|k| cluster.silent_for(k))
                .is_some_and(|silent| silent >= COORDINATOR_LEASE);
            if now.duration_since(since) < self.patience && !coordinator_gone {
                continue;
            }
            let Some(primary) = primary else {
                tracing::warn!(txn = %txn, "a txn left prepared names no primary (an older build's); left to a new leader");
                continue;
            };
            let record = Command::TxnRecord { txn: txn.clone(), state: TxnState::Aborted };
            let state = match cluster.propose(partition_of(&primary, count), record).await {
                Ok(Outcome::Recorded) => TxnState::Aborted,
                Ok(Outcome::Decided(state)) => state,
                Ok(other) => {
                    tracing::error!(txn = %txn, answer = ?other, "a resolver's record answered oddly");
                    continue;
                }
                Err(e) => {
                    tracing::debug!(txn = %txn, error = %e, "resolving an abandoned txn; again next pass");
                    continue;
                }
            };
            let mut ended = Vec::new();
            for p in parts {
                match cluster.propose(p, Command::Resolve { txn: txn.clone(), state }).await {
                    Ok(_) => ended.push(p),
                    Err(e) => {
                        tracing::debug!(txn = %txn, partition = p, error = %e, "resolving; again next pass")
                    }
                }
            }
            tracing::info!(txn = %txn, fate = ?state, partitions = ?ended, "resolved a txn its coordinator abandoned");
            resolved.push(Resolved { txn, state, partitions: ended });
        }
        resolved
    }
}
