//! Commit: prepare (locks marked, intents applied across partitions), the commit version, validation, then installing a durable commit by applying `PrepareCommit`, or `TxnRecord` and `Commit` (see [`super::command`]).

use std::sync::Arc;

use bytes::Bytes;

use super::command::{Command, Outcome, TxnState};
use super::error::{AbortReason, Conflict, EngineError, StorageError};
use super::events::EventKind;
use super::pressure::Pressure;
use super::txn::{Phase, Txn};
use super::{CommitPlan, CommitStep, Engine, PreparedCommit, PtrId, TxnId};

impl Engine {
    /// Prepares `txn` on every partition it touched, takes its commit version and validates
    /// its reads. On a conflict the transaction is aborted and the conflict returned.
    pub fn prepare_commit(&self, txn: &Arc<Txn>) -> Result<CommitStep, EngineError> {
        self.prepare(txn, true, None)
    }

    /// [`Self::prepare_commit`] for replicated partitions: the leader's layer only (prepared
    /// marks, the commit version, validation). Nothing is applied: the caller proposes
    /// [`Self::commit_plan`] to the partitions' logs, then ends the txn with
    /// [`Self::complete_replicated`] or [`Self::fail_replicated`].
    ///
    /// `across_groups`: other nodes coordinate too (see [`PreparedCommit::across_groups`]).
    /// `leads`, where every member coordinates: whether this node leads a partition's group.
    /// A txn that writes and reads one partition it leads commits in one `PrepareCommit`.
    pub fn prepare_replicated(
        &self,
        txn: &Arc<Txn>,
        across_groups: bool,
        leads: &dyn Fn(usize) -> bool,
    ) -> Result<CommitStep, EngineError> {
        self.prepare(txn, false, across_groups.then_some(leads))
    }

    fn prepare(
        &self,
        txn: &Arc<Txn>,
        apply: bool,
        across: Option<&dyn Fn(usize) -> bool>,
    ) -> Result<CommitStep, EngineError> {
        let across_groups = across.is_some();
        let (writes, reads) = {
            let mut inner = txn.inner.lock();
            Self::ensure_active(txn, &inner.phase)?;
            if txn.read_only || inner.writes.is_empty() {
                // A snapshot is serializable at its read version: nothing to validate or persist.
                // Locks taken by locking reads go now.
                inner.phase = Phase::Committed(txn.read_version());
                let locks = std::mem::take(&mut inner.locks);
                drop(inner);
                self.release(txn, locks);
                return Ok(CommitStep::Done(txn.read_version()));
            }
            inner.phase = Phase::Committing;
            let writes: Vec<(PtrId, Option<Bytes>)> =
                inner.writes.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let reads: Vec<(PtrId, Option<u64>)> = inner.reads.iter().map(|(k, v)| (k.clone(), *v)).collect();
            (writes, reads)
        };
        // 1. Freeze the writes. Every read that starts after this sees the prepared mark.
        //    Across partitions each written one also applies `Prepare`: its intents are
        //    what the durable record of the commit resolves after a crash.
        let prepared_above = self.hlc.last();
        let mut reads_by_partition = self.group_pairs(reads.iter().cloned());
        let by_partition = self.group_pairs(writes.iter().cloned());
        // Across groups a commit is two-phase (its commit version is known only once the
        // partitions' leaders answered), unless it writes and reads one partition: then
        // that partition's leader picks its version and installs it in one
        // `PrepareCommit`, here if this node leads it, else at the leader.
        let one_partition =
            by_partition.len() == 1 && reads_by_partition.keys().all(|p| by_partition.contains_key(p));
        let one_phase_here =
            across.is_some_and(|leads| one_partition && by_partition.keys().all(|p| leads(*p)));
        let at_leader = across_groups && one_partition && !one_phase_here;
        let primary =
            (by_partition.len() > 1 || (across_groups && !one_partition)).then(|| writes[0].0.clone());
        let mut prepared: Vec<usize> = Vec::new();
        for (pidx, group) in by_partition {
            let _span =
                tracing::debug_span!("partition.prepare", restm.partition = pidx, restm.writes = group.len())
                    .entered();
            let ptrs: Vec<PtrId> = group.iter().map(|(p, _)| p.clone()).collect();
            let mut outcome = self.partitions[pidx].prepare(&txn.id, &ptrs, prepared_above);
            if outcome.is_ok()
                && apply
                && let Some(primary) = &primary
            {
                let cmd = Command::Prepare {
                    txn: txn.id.clone(),
                    trace_id: txn.trace_id.clone(),
                    prepared_above,
                    reads: reads_by_partition.get(&pidx).cloned().unwrap_or_default(),
                    writes: group,
                    primary: primary.clone(),
                };
                // `Prepare` answers `Prepared` or the conflict.
                match self.partitions[pidx].apply(&cmd, 0) {
                    Outcome::Conflict(c) => outcome = Err(c),
                    _ => prepared.push(pidx),
                }
            }
            if let Err(conflict) = outcome {
                self.abort_prepared(&txn.id, &prepared);
                self.abort_committing(txn, AbortReason::Conflict(conflict.clone()));
                return Err(EngineError::Conflict { txn: txn.id.clone(), conflict });
            }
        }
        // 2. The commit version: above every version issued so far, so above every version
        //    on the written pointers and above the prepared marks.
        //    Replicated, it holds the partitions' closed timestamp below it until it lands.
        let commit_version = if apply {
            self.hlc.tick()
        } else if one_phase_here {
            self.in_flight.issue_with(&self.landing, &self.hlc)
        } else {
            self.in_flight.issue(&self.hlc)
        };
        // 3. Validate the reads against what is committed or locked now.
        for (pidx, group) in std::mem::take(&mut reads_by_partition) {
            let _span =
                tracing::debug_span!("partition.validate", restm.partition = pidx, restm.reads = group.len())
                    .entered();
            if let Err(conflict) = self.partitions[pidx].validate(&txn.id, &group) {
                if !apply {
                    self.in_flight.release(commit_version);
                    self.landing.release(commit_version);
                }
                self.abort_prepared(&txn.id, &prepared);
                self.abort_committing(txn, AbortReason::Conflict(conflict.clone()));
                return Err(EngineError::Conflict { txn: txn.id.clone(), conflict });
            }
        }
        Ok(CommitStep::Prepared(PreparedCommit {
            txn: txn.clone(),
            commit_version,
            writes,
            reads,
            primary,
            prepared_above,
            across_groups,
            at_leader,
        }))
    }

    /// A one-partition commit at another member's lead ([`PreparedCommit::at_leader`]):
    /// that leader installed it at `version`. The stand-in version goes, and the clock moves
    /// above the one picked.
    pub fn adopt_commit_version(&self, prepared: &mut PreparedCommit, version: u64) {
        self.hlc.observe(version);
        self.in_flight.release(prepared.commit_version);
        self.landing.release(prepared.commit_version);
        prepared.commit_version = version;
    }

    /// Across groups: the commit version, picked once every `Prepare` and `Guard` answered
    /// (the answers moved the clock above every leader's), and above `floor`, the highest
    /// version or read floor a `PreparedAbove` named. So it is above every version on the
    /// pointers written and read, and above every snapshot a leader served before the
    /// prepare (see ARCHITECTURE, "Coordinators on every member").
    pub fn repick_commit_version(&self, prepared: &mut PreparedCommit, floor: u64) {
        self.hlc.observe(floor);
        self.in_flight.release(prepared.commit_version);
        prepared.commit_version = self.in_flight.issue(&self.hlc);
    }

    /// Applies `Abort` on the partitions where `txn` prepared intents.
    pub(super) fn abort_prepared(&self, txn: &TxnId, partitions: &[usize]) {
        let cmd = Command::Abort { txn: txn.clone() };
        for pidx in partitions {
            self.partitions[*pidx].apply(&cmd, 0);
        }
    }

    /// Installs a durable commit and releases its locks. One partition applies
    /// `PrepareCommit`; across partitions the primary's partition records the commit and
    /// each applies `Commit` (the primary's last, which retires the record).
    ///
    /// The commands re-check the reads against the replicated state. On one node the
    /// leader's locks already guarantee they pass, so a conflict here means an invariant
    /// broke after the commit became durable: it is returned, and the txn stays committing
    /// (its outcome is what recovery finds).
    pub fn install_commit(&self, prepared: PreparedCommit) -> Result<u64, Conflict> {
        let PreparedCommit { txn, commit_version, writes, reads, primary, .. } = prepared;
        // Under memory pressure only the latest version of each pointer stays in memory.
        let max_hot = if self.pressure() >= Pressure::High { 1 } else { self.cfg.hot_versions };
        let released: Vec<PtrId> = writes.iter().map(|(p, _)| p.clone()).collect();
        let groups = self.group_pairs(writes);
        let mut reads_by_partition = self.group_pairs(reads);
        let primary_idx = primary.as_ref().map(|p| self.partition_index(p));
        if let Some(pidx) = primary_idx {
            let record =
                Command::TxnRecord { txn: txn.id.clone(), state: TxnState::Committed(commit_version) };
            self.partitions[pidx].apply(&record, max_hot);
        }
        // The primary's partition goes last (BTreeMap order, then the primary).
        let mut order: Vec<_> = groups.into_iter().collect();
        if let Some(pidx) = primary_idx
            && let Some(at) = order.iter().position(|(i, _)| *i == pidx)
        {
            let p = order.remove(at);
            order.push(p);
        }
        for (pidx, group) in order {
            let _span = tracing::debug_span!(
                "partition.commit",
                restm.partition = pidx,
                restm.version = commit_version
            )
            .entered();
            let partition = &self.partitions[pidx];
            let cmd = match primary_idx {
                Some(_) => Command::Commit { txn: txn.id.clone(), commit_version },
                None => Command::PrepareCommit {
                    txn: txn.id.clone(),
                    trace_id: txn.trace_id.clone(),
                    commit_version,
                    reads: reads_by_partition.remove(&pidx).unwrap_or_default(),
                    writes: group,
                },
            };
            // Installed and released in one visit of each pointer.
            if let Outcome::Conflict(c) = partition.apply_releasing(&cmd, max_hot, Some(&txn.id)) {
                tracing::error!(txn = %txn.id, version = commit_version, conflict = %c, "a durable commit failed its re-check");
                return Err(c);
            }
        }
        self.installed(&txn, &released, commit_version);
        Ok(commit_version)
    }

    /// The commands that make `prepared` on replicated partitions (see [`CommitPlan`]).
    pub fn commit_plan(&self, prepared: &PreparedCommit) -> CommitPlan {
        let txn = &prepared.txn;
        let cv = prepared.commit_version;
        let groups = self.group_pairs(prepared.writes.iter().cloned());
        let mut reads = self.group_pairs(prepared.reads.iter().cloned());
        let Some(primary) = &prepared.primary else {
            let install = groups
                .into_iter()
                .map(|(pidx, writes)| {
                    let cmd = Command::PrepareCommit {
                        txn: txn.id.clone(),
                        trace_id: txn.trace_id.clone(),
                        commit_version: cv,
                        reads: reads.remove(&pidx).unwrap_or_default(),
                        writes,
                    };
                    (pidx as u32, cmd)
                })
                .collect();
            return CommitPlan { prepare: vec![], record: None, install };
        };
        let primary_idx = self.partition_index(primary) as u32;
        let mut prepare = Vec::new();
        let mut install = Vec::new();
        let mut guarded = Vec::new();
        for (pidx, writes) in groups {
            let reads = reads.remove(&pidx).unwrap_or_default();
            if prepared.across_groups && !reads.is_empty() {
                // A `Prepare` validates its reads but guards none (under one leader's locks
                // it need not); beside other coordinators they are guarded too.
                guarded.push((pidx as u32, reads.clone()));
            }
            let cmd = Command::Prepare {
                txn: txn.id.clone(),
                trace_id: txn.trace_id.clone(),
                prepared_above: prepared.prepared_above,
                reads,
                writes,
                primary: primary.clone(),
            };
            prepare.push((pidx as u32, cmd));
            if pidx as u32 != primary_idx {
                install.push((pidx as u32, Command::Commit { txn: txn.id.clone(), commit_version: cv }));
            }
        }
        if prepared.across_groups {
            for (pidx, reads) in std::mem::take(&mut reads) {
                // Read, not written: the guard's `Commit` leaves the read floor.
                install.push((pidx as u32, Command::Commit { txn: txn.id.clone(), commit_version: cv }));
                guarded.push((pidx as u32, reads));
            }
        }
        for (pidx, reads) in guarded {
            prepare.push((pidx, Command::Guard { txn: txn.id.clone(), reads, primary: primary.clone() }));
        }
        install.push((primary_idx, Command::Commit { txn: txn.id.clone(), commit_version: cv }));
        let record = Command::TxnRecord { txn: txn.id.clone(), state: TxnState::Committed(cv) };
        CommitPlan { prepare, record: Some((primary_idx, record)), install }
    }

    /// Ends a commit whose plan the partitions' logs applied: releases the locks of its
    /// writes (the log's apply installs versions but leaves the leader's locks), and the
    /// rest as [`Self::install_commit`] does.
    pub fn complete_replicated(&self, prepared: PreparedCommit) -> u64 {
        let released: Vec<PtrId> = prepared.writes.iter().map(|(p, _)| p.clone()).collect();
        for ptr in &released {
            self.partition(ptr).unlock(&prepared.txn.id, ptr);
        }
        self.installed(&prepared.txn, &released, prepared.commit_version);
        self.in_flight.release(prepared.commit_version);
        self.landing.release(prepared.commit_version);
        prepared.commit_version
    }

    /// Ends a commit whose plan did not go through the logs (a conflict found by `Prepare`,
    /// or the logs unavailable before the commit point): aborted, locks released. The caller
    /// has proposed `Abort` where intents were prepared.
    pub fn fail_replicated(&self, prepared: PreparedCommit, reason: AbortReason) {
        self.in_flight.release(prepared.commit_version);
        self.landing.release(prepared.commit_version);
        self.abort_committing(&prepared.txn, reason);
    }

    /// [`Self::fail_replicated`] for a one-partition commit whose entry may still land (its
    /// proposal timed out): its version keeps holding the closed timestamp back until this
    /// node loses the lead.
    pub fn abandon_replicated(&self, prepared: PreparedCommit, reason: AbortReason) {
        self.abort_committing(&prepared.txn, reason);
    }

    /// What follows installing a commit: events, the locks of pointers read for update,
    /// the txn's phase.
    fn installed(&self, txn: &Arc<Txn>, released: &[PtrId], commit_version: u64) {
        self.emit(EventKind::Commit, Some(txn), None, |e| e.version = Some(commit_version));
        for ptr in released {
            self.emit(EventKind::LockReleased, Some(txn), Some(ptr), |e| e.version = Some(commit_version));
        }
        // Locks of pointers read with a lock but not written are released as they are.
        let read_locks: Vec<PtrId> = {
            let mut inner = txn.inner.lock();
            let locks = std::mem::take(&mut inner.locks);
            locks.into_iter().filter(|p| !inner.writes.contains_key(p)).collect()
        };
        for ptr in read_locks {
            self.partition(&ptr).unlock(&txn.id, &ptr);
            self.emit(EventKind::LockReleased, Some(txn), Some(&ptr), |_| {});
        }
        {
            let mut inner = txn.inner.lock();
            inner.phase = Phase::Committed(commit_version);
            // The txn stays queryable for a while: keep which pointers it wrote (and whether
            // it deleted them), but not the values, which now live in the version chains.
            for value in inner.writes.values_mut() {
                if value.is_some() {
                    *value = Some(Bytes::new());
                }
            }
        }
        self.finish(txn);
    }

    /// [`Self::install_commit`] for tests and benchmarks, which drive the engine directly
    /// and treat a failed re-check as the bug it is.
    pub fn finish_commit(&self, prepared: PreparedCommit) -> u64 {
        match self.install_commit(prepared) {
            Ok(v) => v,
            Err(c) => panic!("a durable commit failed its re-check: {c}"),
        }
    }

    /// Undoes a prepared commit that could not be made durable.
    pub fn fail_commit(&self, prepared: PreparedCommit, error: StorageError) {
        if prepared.primary.is_some() {
            let mut parts: Vec<usize> =
                prepared.writes.iter().map(|(p, _)| self.partition_index(p)).collect();
            parts.sort_unstable();
            parts.dedup();
            self.abort_prepared(&prepared.txn.id, &parts);
        }
        self.abort_committing(&prepared.txn, AbortReason::Storage(error));
    }
}
