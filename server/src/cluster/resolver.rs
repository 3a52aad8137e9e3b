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
//! A coordinator that is alive but could not get its last proposals through (the group's
//! leader died under them) does not leave the txn to the resolvers' patience: it hands it
//! to [`finish`], which goes on proposing its end until it lands.
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
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

/// How long a txn may stay prepared here before its coordinator is asked whether it still
/// runs it: far longer than a commit's proposals normally take.
pub const ASK_AFTER: Duration = Duration::from_secs(1);

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
        // Readers and writers waiting on a txn whose coordinator abandoned it need not sit
        // out the whole patience: a coordinator that went silent abandoned its txns, and one
        // that answers that it no longer runs a txn (it ended it, or restarted) has too.
        let mut gone: HashSet<TxnId> = HashSet::new();
        let mut ask: BTreeMap<u64, Vec<TxnId>> = BTreeMap::new();
        for txn in found.keys() {
            let since = *self.first_seen.entry(txn.clone()).or_insert(now);
            let asked_for = now.duration_since(since) >= ASK_AFTER;
            match cluster.coordinator_of(txn) {
                // This node's own, and `ours` does not claim it.
                Some(k) if k == cluster.node_id() && asked_for => {
                    gone.insert(txn.clone());
                }
                Some(_) if cluster.abandoned(txn) => {
                    gone.insert(txn.clone());
                }
                Some(k) if k != cluster.node_id() && asked_for => ask.entry(k).or_default().push(txn.clone()),
                _ => {}
            }
        }
        for (k, txns) in ask {
            if let Some(runs) = cluster.running_on(k, txns.clone()).await {
                gone.extend(txns.into_iter().zip(runs).filter(|(_, runs)| !runs).map(|(t, _)| t));
            }
        }
        let mut resolved = Vec::new();
        for (txn, (primary, parts)) in found {
            let since = self.first_seen.get(&txn).copied().unwrap_or(now);
            if now.duration_since(since) < self.patience && !gone.contains(&txn) {
                continue;
            }
            let Some(primary) = primary else {
                tracing::warn!(txn = %txn, "a txn left prepared names no primary (an older build's); left to a new leader");
                continue;
            };
            let record = Command::TxnRecord { txn: txn.clone(), state: TxnState::Aborted };
            let state = match cluster.propose(partition_of(&primary, count), record).await {
                Ok(answer) => match fate_of(&txn, &answer) {
                    Some(state) => state,
                    None => continue,
                },
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

/// What a living coordinator left undone of a txn: the partitions still to end it on, and
/// its fate if the coordinator knows it (`None`: its record decides).
#[derive(Debug, Clone)]
pub struct Unfinished {
    pub txn: TxnId,
    /// The partition of its primary pointer (its record's).
    pub primary: u32,
    pub fate: Option<TxnState>,
    /// Where it still holds intents or guards, in the order to end them (the primary last,
    /// so that its `Commit` or `Abort` retires the record once nothing else needs it).
    pub partitions: Vec<u32>,
}

/// How long [`finish`] waits between two tries, and how many it makes before it leaves the
/// txn to the resolvers (a group that long without a majority is down).
const FINISH_RETRY: Duration = Duration::from_millis(250);
const FINISH_TRIES: u32 = 240;

/// Ends `unfinished` on its partitions: learns its fate from its record if need be (an
/// abort is recorded unless a commit was first), then proposes `Commit` or `Abort` on each
/// partition left, retrying each until it lands. Answers the fate, or `None` when it gave up.
pub async fn finish(cluster: Arc<Cluster>, unfinished: Unfinished) -> Option<TxnState> {
    let Unfinished { txn, primary, fate, partitions } = unfinished;
    let fate = match fate {
        Some(state) => state,
        None => {
            let record = Command::TxnRecord { txn: txn.clone(), state: TxnState::Aborted };
            let answer = retry(&cluster, &txn, primary, &record).await?;
            fate_of(&txn, &answer)?
        }
    };
    let end = match fate {
        TxnState::Committed(commit_version) => Command::Commit { txn: txn.clone(), commit_version },
        TxnState::Aborted | TxnState::Open => Command::Abort { txn: txn.clone() },
    };
    for p in partitions {
        retry(&cluster, &txn, p, &end).await?;
    }
    tracing::info!(txn = %txn, fate = ?fate, "its coordinator finished a txn its first proposals left undone");
    Some(fate)
}

/// The fate an abort's `TxnRecord` answered: aborted if it was recorded, else the decision
/// that came first. `None` (logged) for any other answer.
fn fate_of(txn: &TxnId, answer: &Outcome) -> Option<TxnState> {
    match answer {
        Outcome::Recorded => Some(TxnState::Aborted),
        Outcome::Decided(state) => Some(*state),
        other => {
            tracing::error!(txn = %txn, answer = ?other, "a txn's record answered oddly; left as it is");
            None
        }
    }
}

/// Proposes `cmd` on partition `p` until it is answered, or [`FINISH_TRIES`] failed.
async fn retry(cluster: &Cluster, txn: &TxnId, p: u32, cmd: &Command) -> Option<Outcome> {
    for _ in 0..FINISH_TRIES {
        match cluster.propose(p, cmd.clone()).await {
            Ok(answer) => return Some(answer),
            Err(e) => tracing::debug!(txn = %txn, partition = p, error = %e, "finishing a txn; again"),
        }
        tokio::time::sleep(FINISH_RETRY).await;
    }
    tracing::warn!(txn = %txn, partition = p, "could not finish a txn; left to the resolvers");
    None
}
