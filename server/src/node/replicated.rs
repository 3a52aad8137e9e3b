//! A node whose partitions are replicated: commits go through the data group's log, and the
//! node follows the lead as it moves.
//!
//! - The engine's partitions are the state machine's: only the log's applies change their
//!   replicated state. The node keeps the leader's layer (locks, waits) and coordinates.
//! - [`Node::commit_replicated`]: a one-partition commit is one `PrepareCommit` entry. Across
//!   partitions: `Prepare` on each written partition, then the primary's committed
//!   `TxnRecord` (the commit point), then `Commit` on each, the primary's last.
//! - On gaining the lead, the node applies everything in its log, then resolves what the
//!   last leader left prepared, by the records: committed ones are installed, the rest
//!   aborted. On losing it, its active txns are aborted (their locks went with the lead).
//! - What the log installs is also written to the node's version store (not fsynced on its
//!   own: the log's next fsync covers it), for history and cold reads.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tracing::Instrument;

use super::Node;
use crate::cluster::Cluster;
use crate::cluster::resolver::{self, ABANDONED_AFTER, Resolver};
use crate::cluster::watermark::ClusterWatermark;
use crate::engine::command::{Command, Outcome, TxnState};
use crate::engine::gc::Pin;
use crate::engine::{AbortReason, Engine, EngineError, PreparedCommit, PtrId, StorageError, TxnId};
use crate::raft::GroupId;
use crate::raft::replica::ReplicaError;
use crate::raft::state_machine::Observer;
use crate::storage::{CommitRecord, SharedStore};

/// Writes what the log installs to the version store and keeps the clock above the log.
pub(super) struct StoreObserver {
    pub(super) store: SharedStore,
    pub(super) engine: Weak<Engine>,
}

impl Observer for StoreObserver {
    fn installed(&self, txn: &TxnId, trace_id: &Arc<str>, version: u64, writes: &[(PtrId, Option<Bytes>)]) {
        let rec = CommitRecord {
            txn: txn.clone(),
            trace_id: trace_id.clone(),
            commit_version: version,
            writes: writes.to_vec(),
            primary: None,
        };
        if let Err(e) = self.store.write_batch(std::slice::from_ref(&rec)) {
            // The versions are in memory and in the log; only history and cold reads miss them.
            tracing::error!(txn = %txn, version, error = %e, "writing an applied commit to the version store");
        }
    }

    fn saw_version(&self, version: u64) {
        if let Some(engine) = self.engine.upgrade() {
            engine.observe_version(version);
        }
    }

    fn landing(&self, at: u64) -> Option<event_listener::EventListener> {
        self.engine.upgrade()?.landing_at_or_below(at)
    }

    fn issue_for_peer(&self) -> Option<u64> {
        Some(self.engine.upgrade()?.issue_for_peer())
    }

    fn commit_settled(&self, version: u64) {
        if let Some(engine) = self.engine.upgrade() {
            engine.settle_abandoned(version);
        }
    }

    fn runs(&self, txn: &str) -> bool {
        self.engine.upgrade().is_none_or(|engine| coordinates(&engine, &TxnId::from(txn)))
    }

    fn last_version(&self) -> u64 {
        self.engine.upgrade().map_or(0, |e| e.last_version())
    }

    fn now_version(&self) -> u64 {
        self.engine.upgrade().map_or(0, |e| e.now_version())
    }

    fn promise_watermark(&self) -> Option<crate::engine::gc::Watermark> {
        Some(self.engine.upgrade()?.promise_watermark())
    }

    // The engine's pin table holds the watermark (and so every member's GC) to the
    // replicated pins.
    fn pinned(&self, pin: &Pin) {
        if let Some(engine) = self.engine.upgrade() {
            engine.adopt_pin(pin.clone());
        }
    }

    fn unpinned(&self, pin: &Pin) {
        if let Some(engine) = self.engine.upgrade() {
            engine.drop_pin(&pin.id);
        }
    }

    fn pins_restored(&self, pins: &[Pin]) {
        if let Some(engine) = self.engine.upgrade() {
            engine.adopt_pins(pins.to_vec());
        }
    }

    // This member's GC may go as far as the cluster's horizon, and no further.
    fn horizon(&self, horizon: u64) {
        if let Some(engine) = self.engine.upgrade() {
            engine.follow_cluster_horizon(horizon);
        }
    }
}

/// Where the process may be told to die mid-commit, for the tests of what a coordinator's
/// death leaves (`RESTM_FAULT_CRASH_AT=after-prepare` or `after-record`). Unset, nothing
/// happens.
fn crash_point(at: &str) {
    static WHERE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if WHERE.get_or_init(|| std::env::var("RESTM_FAULT_CRASH_AT").ok()).as_deref() == Some(at) {
        tracing::error!(at, "RESTM_FAULT_CRASH_AT: dying mid-commit, as asked");
        std::process::abort();
    }
}

/// The partition the cluster's pins live on (the meta group's, once partitions have groups
/// of their own).
const PIN_PARTITION: u32 = 0;

impl Node {
    /// Pins history at `at` for `ttl_ms` through the cluster's log: once a majority holds
    /// it, every member's GC keeps to it, and a next leader still has it.
    pub async fn pin_replicated(
        &self,
        cluster: &Cluster,
        at: u64,
        ttl_ms: u64,
        note: String,
    ) -> Result<Pin, EngineError> {
        let id = format!("{:016x}", self.engine.now_version());
        // Held here first, then checked against the horizon: GC cannot pass it meanwhile.
        let pin = self.engine.pin(id, at, ttl_ms, note)?;
        match cluster.propose(PIN_PARTITION, Command::Pin { pin: pin.clone() }).await {
            Ok(Outcome::Pinned) => Ok(pin),
            Ok(Outcome::BelowHorizon(horizon)) => {
                // The cluster's horizon passed `at` before this node's own did.
                self.engine.drop_pin(&pin.id);
                Err(EngineError::Gone { requested: at, horizon })
            }
            answer => {
                // If the entry lands after all, applying it holds the pin again.
                self.engine.drop_pin(&pin.id);
                Err(EngineError::Unreplicated { what: "the pin", cause: failed(answer) })
            }
        }
    }

    /// The cluster's GC watermark, gathered from every member now (see
    /// [`crate::cluster::watermark`]).
    pub async fn cluster_watermark(&self, cluster: &Cluster) -> Option<ClusterWatermark> {
        cluster.gather_watermark(self.engine.cluster_horizon()).await
    }

    /// Removes pin `id` through the cluster's log.
    pub async fn unpin_replicated(&self, cluster: &Cluster, id: &str) -> Result<Pin, EngineError> {
        self.engine.pin_of(id)?;
        match cluster.propose(PIN_PARTITION, Command::Unpin { id: id.to_string() }).await {
            Ok(Outcome::Unpinned(Some(pin))) => Ok(pin),
            Ok(Outcome::Unpinned(None)) => Err(EngineError::PinNotFound(id.to_string())),
            answer => Err(EngineError::Unreplicated { what: "the unpin", cause: failed(answer) }),
        }
    }
}

/// Why a proposal's answer is not the one asked for.
fn failed(answer: Result<Outcome, ReplicaError>) -> String {
    match answer {
        Ok(other) => format!("the log answered {other:?}"),
        Err(e) => e.to_string(),
    }
}

/// What a failed proposal means for the txn.
fn unavailable(e: &ReplicaError) -> StorageError {
    StorageError::backend("replicating to the data group", e)
}

impl Node {
    /// The cluster this node is a member of (`None`: a cluster of one, unreplicated).
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// [`Self::settle`] for a read of `ptr` in `txn`, once per group and snapshot: after one
    /// barrier the group's leader's clock is above the snapshot, so whatever it commits
    /// later is above it too, and what it committed below it is applied here already.
    pub async fn settle_txn(&self, txn: &crate::engine::Txn, ptr: &str) -> Result<(), EngineError> {
        let Some(cluster) = self.cluster.get().filter(|c| c.coordinates_anywhere()) else { return Ok(()) };
        let group = cluster.group_of(self.engine.partition_of(ptr));
        let at = txn.read_version();
        if txn.has_barrier(group) {
            return Ok(());
        }
        self.settle(Some(ptr)).await?;
        txn.record_barrier(group, at);
        Ok(())
    }

    /// Where every member coordinates (partitions in groups led anywhere), a read here is
    /// made first to wait for a read barrier on `ptr`'s group (every group, for `None`):
    /// this member's replica then holds every write acknowledged before the call, its
    /// clock is above them, and the leader's clock is above this member's (so every later
    /// commit there is above any snapshot read here now, or its intent is already applied
    /// here and the read waits for it). Elsewhere it does nothing: the one leader reads.
    pub async fn settle(&self, ptr: Option<&str>) -> Result<(), EngineError> {
        let Some(cluster) = self.cluster.get().filter(|c| c.coordinates_anywhere()) else { return Ok(()) };
        let barrier = match ptr {
            Some(ptr) => cluster.read_barrier(self.engine.partition_of(ptr)).await,
            None => cluster.read_barrier_all().await,
        };
        barrier.map_err(|e| EngineError::Unreplicated { what: "the read's barrier", cause: e.to_string() })
    }

    /// Commits `txn` through the data group's log (see the module doc). Runs in its own
    /// task, so a client that goes away cannot leave it half done.
    pub(super) async fn commit_replicated(
        &self,
        txn: &Arc<crate::engine::Txn>,
        cluster: Arc<Cluster>,
    ) -> Result<u64, EngineError> {
        let across = cluster.coordinates_anywhere();
        let leads = |pidx: usize| cluster.leads(cluster.group_of(pidx as u32));
        let step = tracing::debug_span!("prepare_validate")
            .in_scope(|| self.engine.prepare_replicated(txn, across, &leads));
        let prepared = match super::txn::to_persist(step) {
            Ok(p) => p,
            Err(answer) => return answer,
        };
        if !across && !cluster.is_leader() {
            // Nothing was proposed: a clean abort.
            let leader = cluster.leader();
            self.engine.fail_replicated(prepared, AbortReason::LeadershipLost);
            return Err(EngineError::NotLeader { leader });
        }
        let engine = self.engine.clone();
        let (txn_id, commit_version) = (txn.id.clone(), prepared.commit_version);
        let span = tracing::debug_span!(
            "replicate",
            restm.version = commit_version,
            restm.writes = prepared.writes.len()
        );
        let task = tokio::spawn(async move { run_plan(&engine, &cluster, prepared).await }.instrument(span));
        task.await.map_err(|e| EngineError::OutcomeUnknown {
            txn: txn_id,
            commit_version,
            cause: StorageError::backend("the commit task", e),
        })?
    }

    /// Follows the lead: resolves what a previous leader left prepared when this node
    /// gains it, and aborts this node's txns when it loses it.
    pub(super) fn spawn_leadership_watch(self: &Arc<Self>, cluster: Arc<Cluster>) {
        let node = Arc::downgrade(self);
        let mut watch = cluster.watch();
        tokio::spawn(async move {
            let mut leading = false;
            loop {
                let now = watch.borrow_and_update().state == openraft::ServerState::Leader;
                let Some(n) = node.upgrade() else { return };
                if now && !leading {
                    tracing::info!(node = cluster.node_id(), "leading the data group");
                    tokio::spawn(raise_horizon_while_leading(Arc::downgrade(&n), cluster.clone()));
                    let (n2, c2) = (Arc::downgrade(&n), cluster.clone());
                    tokio::spawn(async move {
                        if let Some(n) = n2.upgrade() {
                            n.resolve_orphans(&c2).await;
                        }
                    });
                } else if !now && leading {
                    // Where every member coordinates its own txns, whoever leads, they and
                    // their locks stay with them (each `Prepare` re-validates): nothing is
                    // aborted, and their commits in flight still hold this node's closes.
                    let aborted = if cluster.coordinates_anywhere() {
                        0
                    } else {
                        n.engine.forget_in_flight();
                        n.abort_all(AbortReason::LeadershipLost)
                    };
                    tracing::info!(node = cluster.node_id(), leader = ?cluster.leader(), aborted, "stopped leading the data group");
                }
                leading = now;
                drop(n);
                if watch.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Closes the timestamps of the groups this node leads, for as long as it runs (see
    /// [`close_led_groups`]).
    pub(super) fn spawn_closer(self: &Arc<Self>, cluster: Arc<Cluster>) {
        tokio::spawn(close_led_groups(Arc::downgrade(self), cluster));
    }

    /// Every [`RESOLVE_EVERY`], ends the txns left prepared on the groups this node leads by
    /// a coordinator that is gone (see [`crate::cluster::resolver`]).
    pub(super) fn spawn_resolver(self: &Arc<Self>, cluster: Arc<Cluster>) {
        let engine = Arc::downgrade(&self.engine);
        tokio::spawn(async move {
            let mut resolver = Resolver::new(ABANDONED_AFTER);
            loop {
                tokio::time::sleep(RESOLVE_EVERY).await;
                let Some(engine) = engine.upgrade() else { return };
                let partitions = engine.shared_partitions();
                resolver.pass(&cluster, &partitions, |txn| coordinates(&engine, txn)).await;
                drop(engine);
                cluster.sweep_locks().await;
            }
        });
    }

    /// Aborts every active txn (their locks are released); returns how many.
    fn abort_all(&self, reason: AbortReason) -> usize {
        let mut n = 0;
        for txn in self.engine.active_txns() {
            if self.engine.abort(&txn, reason.clone()) {
                n += 1;
            }
        }
        n
    }

    /// Resolves the txns a previous leader left prepared: by their records, committed ones
    /// are installed and the rest aborted. Txns this node coordinates are left alone.
    async fn resolve_orphans(&self, cluster: &Cluster) {
        if cluster.coordinates_anywhere() {
            // What is prepared belongs to coordinators that may well be alive: the
            // resolvers end it only once it is abandoned.
            return;
        }
        if let Err(e) = cluster.catch_up(Duration::from_secs(10)).await {
            tracing::warn!(error = %e, "a new leader could not apply its log; orphans stay until the next election");
            return;
        }
        let partitions = self.engine.shared_partitions();
        let mut orphans: std::collections::BTreeMap<TxnId, Vec<u32>> = Default::default();
        for p in partitions.iter() {
            for txn in p.prepared_txns() {
                if !coordinates(&self.engine, &txn) {
                    orphans.entry(txn).or_default().push(p.id);
                }
            }
        }
        for (txn, parts) in orphans {
            let fate = partitions.iter().find_map(|p| p.record(&txn));
            let (cmd, what) = match fate {
                Some(TxnState::Committed(v)) => {
                    (Command::Commit { txn: txn.clone(), commit_version: v }, "committed")
                }
                _ => (Command::Abort { txn: txn.clone() }, "aborted"),
            };
            // The primary's partition (the one with the record) goes last.
            let mut parts = parts;
            parts.sort_by_key(|p| partitions[*p as usize].record(&txn).is_some());
            for p in parts {
                if let Err(e) = cluster.propose(p, cmd.clone()).await {
                    tracing::warn!(txn = %txn, error = %e, "resolving an orphaned txn; the next leader retries");
                    return;
                }
            }
            tracing::info!(txn = %txn, outcome = what, "resolved a txn the last leader left prepared");
        }
    }
}

/// How often a leader raises its partitions' closed timestamps: a follower read can ask
/// for a moment this far back and be served locally.
const CLOSE_EVERY: Duration = Duration::from_millis(200);

/// Every [`CLOSE_EVERY`], proposes `Close` on the partitions of every group this node
/// leads, at the highest timestamp no commit this node has in flight is at or below. Only
/// a group's leader commits one-partition txns on it (`PrepareCommit`), and a two-phase
/// commit's versions are above its `Prepare`, which holds the close below it (see
/// `Partition::apply`), so no close refuses a commit in flight. A new leader closes once it
/// applied what its log held when it took the lead: its clock is then above every version
/// its predecessor closed.
async fn close_led_groups(node: Weak<Node>, cluster: Arc<Cluster>) {
    // Per group this node leads: the term, and once caught up in it, what it closed.
    let mut led: HashMap<GroupId, (u64, Option<u64>, u64)> = HashMap::new();
    loop {
        tokio::time::sleep(CLOSE_EVERY).await;
        let Some(n) = node.upgrade() else { return };
        let at = n.engine.closable();
        let partitions = n.engine.shared_partitions().len() as u32;
        drop(n);
        let mut closing = Vec::new();
        for group in 0..cluster.groups() {
            let Some(now) = cluster.leading(group) else {
                led.remove(&group);
                continue;
            };
            let (term, target, closed) = led.entry(group).or_insert((now.term, Some(now.last_log), 0));
            if *term != now.term {
                (*term, *target, *closed) = (now.term, Some(now.last_log), 0);
            }
            if let Some(t) = *target {
                if now.applied < t {
                    continue;
                }
                *target = None;
            }
            if at > *closed {
                closing.push(group);
            }
        }
        if closing.is_empty() {
            continue;
        }
        // Proposed together, so each group's batcher puts them in one entry.
        let c = &cluster;
        let proposals = (0..partitions)
            .filter(|p| closing.contains(&c.group_of(*p)))
            .map(|p| async move { (c.group_of(p), c.propose(p, Command::Close { closed: at }).await) });
        let mut failed = Vec::new();
        for (group, answer) in futures_util::future::join_all(proposals).await {
            if let Err(e) = answer {
                tracing::debug!(group, error = %e, "closing timestamps; again at the next tick");
                failed.push(group);
            }
        }
        for group in closing.into_iter().filter(|g| !failed.contains(g)) {
            if let Some((_, _, closed)) = led.get_mut(&group) {
                *closed = (*closed).max(at);
            }
        }
    }
}

/// While this node leads the first group (the same term), gathers the cluster's GC
/// watermark from every member each GC interval (at most [`CLOSE_EVERY`]) and proposes it
/// as the cluster's horizon when it is above the one the log has. Every replica prunes
/// only below that horizon, so no member's GC takes what a live snapshot anywhere can read,
/// and a member that does not answer holds it back (see [`crate::cluster::watermark`]).
async fn raise_horizon_while_leading(node: Weak<Node>, cluster: Arc<Cluster>) {
    let term = cluster.term();
    let every = match node.upgrade() {
        Some(n) => n.config.gc_every.clamp(Duration::from_millis(20), CLOSE_EVERY),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        if !cluster.is_leader() || cluster.term() != term {
            return;
        }
        let Some(engine) = node.upgrade().map(|n| n.engine.clone()) else { return };
        let floor = engine.cluster_horizon();
        let Some(w) = cluster.gather_watermark(floor).await else { continue };
        if w.version <= floor {
            continue;
        }
        let raise = Command::Horizon { horizon: w.version, now_ms: engine.now_millis() };
        drop(engine);
        if let Err(e) = cluster.propose(PIN_PARTITION, raise).await {
            tracing::debug!(error = %e, "raising the cluster's GC horizon; again at the next tick");
        }
    }
}

/// How often a node looks for txns abandoned on the groups it leads.
const RESOLVE_EVERY: Duration = Duration::from_secs(1);

/// Whether this node's engine is running `txn` (still active, or committing).
fn coordinates(engine: &Engine, txn: &TxnId) -> bool {
    engine.txn(txn).is_ok_and(|t| {
        matches!(t.inner.lock().phase, crate::engine::Phase::Active | crate::engine::Phase::Committing)
    })
}

/// Proposes `prepared`'s plan, step by step, and ends the txn by what the log answered.
async fn run_plan(
    engine: &Arc<Engine>,
    cluster: &Arc<Cluster>,
    prepared: PreparedCommit,
) -> Result<u64, EngineError> {
    let mut prepared = prepared;
    let mut plan = engine.commit_plan(&prepared);
    let (txn, mut cv) = (prepared.txn.id.clone(), prepared.commit_version);
    // Across partitions the record decides; then a failed install is the next leader's.
    let decided = plan.record.is_some();
    let primary = plan.record.as_ref().map(|(p, _)| *p);
    // 1. Prepare on every written partition (and across groups, guard every one read).
    //    Until the record, failing is a clean abort.
    //    The partitions are asked at once (with one group, their commands share an entry),
    //    and every answer is heard before the first failure, if any, aborts the lot.
    let mut intents: Vec<u32> = Vec::new();
    let mut floor_above = 0;
    let asked = std::mem::take(&mut plan.prepare).into_iter().map(|(p, cmd)| async move {
        let answer = cluster.propose(p, cmd).await;
        (p, answer)
    });
    let mut failures = Vec::new();
    for (p, answer) in futures_util::future::join_all(asked).await {
        let failure = match answer {
            Ok(Outcome::Prepared) => {
                intents.push(p);
                continue;
            }
            Ok(Outcome::PreparedAbove(floor)) => {
                // A version or a guarded reader's commit at or above the mark: the commit
                // cannot serialize before them. Across groups the commit version is picked
                // after every answer, above them.
                intents.push(p);
                match floor.winner() {
                    Some((_, read_at)) if prepared.across_groups => {
                        floor_above = floor_above.max(read_at);
                        continue;
                    }
                    Some((_, read_at)) if read_at < cv => continue,
                    _ => Err(floor),
                }
            }
            Ok(Outcome::Conflict(c)) => Err(c),
            Ok(other) => Ok(StorageError::Corrupt(format!("Prepare answered {other:?}"))),
            Err(e) => {
                // The entry may land yet: its intents or guard go too.
                intents.push(p);
                Ok(unavailable(&e))
            }
        };
        failures.push(failure);
    }
    // A conflict is the txn's answer before an unavailable leader is.
    if let Some(failure) = failures.into_iter().min_by_key(|f| f.is_ok()) {
        // A partition both written and read holds an intent and a guard: one `Abort` ends both.
        intents.sort_unstable();
        intents.dedup();
        let mut undone = Vec::new();
        for q in intents {
            // A leader that cannot is replaced by one that resolves them; across groups this
            // coordinator tries again itself.
            if cluster.propose(q, Command::Abort { txn: txn.clone() }).await.is_err() {
                undone.push(q);
            }
        }
        finish_later(cluster, &txn, primary, Some(TxnState::Aborted), undone);
        return Err(match failure {
            // Across groups the leader waited for the lock of a pointer written (as a writer
            // here waits for one here) until the lock timeout, in vain.
            Err(crate::engine::Conflict::Locked { ptr, holder })
                if prepared.across_groups && prepared.writes.iter().any(|(p, _)| *p == ptr) =>
            {
                let reason = AbortReason::LockTimeout { ptr: ptr.clone(), holder: holder.clone() };
                engine.fail_replicated(prepared, reason);
                EngineError::LockTimeout { txn, ptr, holder }
            }
            Err(conflict) => {
                engine.fail_replicated(prepared, AbortReason::Conflict(conflict.clone()));
                EngineError::Conflict { txn, conflict }
            }
            Ok(cause) => {
                tracing::warn!(txn = %txn, error = %cause, "aborted before its commit point");
                let across = prepared.across_groups;
                engine.fail_replicated(prepared, AbortReason::LeadershipLost);
                if across {
                    EngineError::Unreplicated { what: "the commit's prepare", cause: cause.to_string() }
                } else {
                    EngineError::NotLeader { leader: cluster.leader() }
                }
            }
        });
    }
    if prepared.across_groups && prepared.primary.is_some() {
        engine.repick_commit_version(&mut prepared, floor_above);
        cv = prepared.commit_version;
        plan = engine.commit_plan(&prepared);
    }
    if decided {
        crash_point("after-prepare");
    }
    // 2. The commit point: the primary's record (one-partition commits have none).
    if let Some((p, cmd)) = plan.record {
        match cluster.propose(p, cmd).await {
            Ok(Outcome::Recorded) => {}
            Ok(Outcome::Decided(TxnState::Committed(v))) if v == cv => {}
            Ok(other) => {
                // A resolver decided first (it took this coordinator for gone): the txn is
                // aborted by its record, and the resolver drops the intents.
                tracing::warn!(txn = %txn, answer = ?other, "the txn's record was decided without it");
                engine.fail_replicated(prepared, AbortReason::LeadershipLost);
                return Err(EngineError::TxnAborted { txn, reason: AbortReason::LeadershipLost });
            }
            Err(e) => {
                // It may still commit (appended, then the lead moved): the next leader
                // decides by the record. Locks go: this node no longer leads, or cannot
                // reach a majority.
                let cause = unavailable(&e);
                let everywhere = plan.install.iter().map(|(p, _)| *p).collect();
                finish_later(cluster, &txn, primary, None, everywhere);
                engine.fail_replicated(prepared, AbortReason::Storage(cause.clone()));
                return Err(EngineError::OutcomeUnknown { txn, commit_version: cv, cause });
            }
        }
    }
    if decided {
        crash_point("after-record");
    }
    // 3. Install.
    let mut install = plan.install.into_iter();
    while let Some((p, cmd)) = install.next() {
        let answer = match prepared.at_leader {
            true => cluster.commit_one(p, cmd).await,
            false => cluster.propose(p, cmd).await,
        };
        match answer {
            Ok(Outcome::Committed(v)) if prepared.at_leader => engine.adopt_commit_version(&mut prepared, v),
            Ok(Outcome::Committed(_)) => {}
            Ok(Outcome::Conflict(conflict)) if !decided => {
                engine.fail_replicated(prepared, AbortReason::Conflict(conflict.clone()));
                return Err(EngineError::Conflict { txn, conflict });
            }
            Ok(other) => {
                tracing::error!(txn = %txn, version = cv, answer = ?other, "a decided commit did not install");
            }
            Err(e) if decided => {
                // Decided by its record: the next leader installs the rest (across groups,
                // this coordinator goes on with it).
                tracing::warn!(txn = %txn, version = cv, error = %e, "committed; the rest is installed later");
                let rest = std::iter::once(p).chain(install.map(|(q, _)| q)).collect();
                finish_later(cluster, &txn, primary, Some(TxnState::Committed(cv)), rest);
                break;
            }
            Err(e) => {
                let cause = unavailable(&e);
                if prepared.across_groups {
                    // Its version holds readers of the partition elsewhere until its fate
                    // is settled.
                    let engine = engine.clone();
                    cluster.settle_one(p, txn.clone(), move || engine.settle_abandoned(cv));
                }
                engine.abandon_replicated(prepared, AbortReason::Storage(cause.clone()));
                return Err(EngineError::OutcomeUnknown { txn, commit_version: cv, cause });
            }
        }
    }
    Ok(engine.complete_replicated(prepared))
}

/// Across groups, where no next leader ends what a coordinator leaves, hands the
/// `partitions` a commit could not end on to [`resolver::finish`] (with the txn's `fate`, or
/// `None` for its record to decide).
fn finish_later(
    cluster: &Arc<Cluster>,
    txn: &TxnId,
    primary: Option<u32>,
    fate: Option<TxnState>,
    partitions: Vec<u32>,
) {
    let Some(primary) = primary else { return };
    if !cluster.coordinates_anywhere() || partitions.is_empty() {
        return;
    }
    let unfinished = resolver::Unfinished { txn: txn.clone(), primary, fate, partitions };
    tokio::spawn(resolver::finish(cluster.clone(), unfinished).in_current_span());
}
