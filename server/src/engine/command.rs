//! The commands that change a partition, and what applying one answers.
//!
//! A partition's replicated state (its version chains, the intents of prepared
//! transactions, and the records of transactions whose primary it is) changes only by
//! [`super::partition::Partition::apply`] of these commands, in order. Applying is
//! deterministic: no clock, no randomness, no I/O; versions, ids and trace ids arrive inside
//! the command. Two partitions that apply the same commands end in the same state, which is
//! what replicas of a Raft group will rely on.
//!
//! | command | effect |
//! |---|---|
//! | [`Command::Prepare`] | validate the reads and that no other txn has an intent on a written pointer; record the intents, or answer the conflict |
//! | [`Command::PrepareCommit`] | the one-partition fast path: validate and install at `commit_version` in one step |
//! | [`Command::Commit`] | install the txn's intents at `commit_version`; forget its record |
//! | [`Command::Abort`] | drop the txn's intents and its record |
//! | [`Command::TxnRecord`] | on the primary's partition: the txn's fate; [`TxnState::Committed`] is the commit point; the first decision stands, and a commit needs the txn's intents still here |
//! | [`Command::Close`] | raise the partition's closed timestamp: no later command commits at or below it |
//! | [`Command::Pin`] | record a pin of the cluster's history (on the first partition), dropping those expired at its creation time |
//! | [`Command::Unpin`] | remove a pin |
//! | [`Command::Guard`] | validate reads a coordinator elsewhere made; until the txn's `Commit` or `Abort`, no other txn writes them, and its commit leaves a read floor (see [`super::guard`]) |
//! | [`Command::Resolve`] | a resolver's `Commit` or `Abort` of an abandoned txn, by its record; the record stays |
//! | [`Command::Horizon`] | raise the cluster's GC horizon (on the first partition), never past a live pin; every member prunes only below it |
//!
//! Locks, lock queues and waiting are not here: they belong to the partition's leader (see
//! the engine), decide who waits, and are never replicated. `Prepare` re-checks everything
//! they protect against the replicated state, so losing them can abort txns but never admit
//! a wrong commit.

use std::sync::Arc;

use bytes::Bytes;

use super::error::Conflict;
use super::gc::Pin;
use super::{PtrId, TxnId};

/// A transaction's fate as its primary partition records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TxnState {
    /// Prepared somewhere, not decided: a resolver that finds the coordinator gone aborts it.
    Open,
    /// Committed at this version: every intent of the txn must be installed at it.
    Committed(u64),
    Aborted,
}

/// One change to a partition. The pointers named are all of this partition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Command {
    Prepare {
        txn: TxnId,
        trace_id: Arc<str>,
        /// The txn's commit version will be above this: readers at or below it may skip
        /// the intents, readers above wait for them.
        prepared_above: u64,
        /// Pointers read, with the version seen (`None`: absent).
        reads: Vec<(PtrId, Option<u64>)>,
        /// Pointers written, with the value (`None`: delete), ascending by id.
        writes: Vec<(PtrId, Option<Bytes>)>,
        /// The pointer whose partition holds the txn's record.
        primary: PtrId,
    },
    PrepareCommit {
        txn: TxnId,
        trace_id: Arc<str>,
        commit_version: u64,
        reads: Vec<(PtrId, Option<u64>)>,
        writes: Vec<(PtrId, Option<Bytes>)>,
    },
    Commit {
        txn: TxnId,
        commit_version: u64,
    },
    Abort {
        txn: TxnId,
    },
    TxnRecord {
        txn: TxnId,
        state: TxnState,
    },
    /// The leader's promise that no commit at or below `closed` will land on the partition
    /// after this command: every such commit is applied before it, or is an intent already
    /// here. Any replica may then serve a read at or below it from its own state.
    Close {
        closed: u64,
    },
    /// A pin of the cluster's history (kept on one partition, the first: every member's GC
    /// then holds to it). It carries its creation time, so applying it also drops the pins
    /// that had expired by then.
    Pin {
        pin: Pin,
    },
    Unpin {
        id: String,
    },
    /// The leader's GC watermark, as the cluster's horizon (kept on the first partition,
    /// beside the pins): no member prunes history at or above it, so whichever member
    /// leads next still holds every version the last leader let a snapshot or pin read.
    /// Applying it never passes a pin live at `now_ms` (the leader's clock, carried in), and
    /// the horizon never goes back.
    Horizon {
        horizon: u64,
        now_ms: u64,
    },
    /// A txn's reads on a partition it may write nothing on, validated as `Prepare`
    /// validates them, then guarded until its `Commit` (which leaves a read floor at the
    /// commit version) or `Abort`. Added last, so log entries of earlier builds still decode.
    Guard {
        txn: TxnId,
        /// Pointers read, with the version seen (`None`: absent).
        reads: Vec<(PtrId, Option<u64>)>,
        /// The pointer whose partition holds the txn's record.
        primary: PtrId,
    },
    /// A resolver's end of a txn its coordinator abandoned, by the fate its record gave:
    /// installs its intents here at the recorded version, or drops them, and releases its
    /// guards, as `Commit` or `Abort` would, but leaves its record (on the primary's
    /// partition), which the resolvers of other groups may still need to read.
    Resolve {
        txn: TxnId,
        state: TxnState,
    },
}

impl Command {
    /// The command's name, for spans and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Prepare { .. } => "prepare",
            Command::PrepareCommit { .. } => "prepare_commit",
            Command::Commit { .. } => "commit",
            Command::Abort { .. } => "abort",
            Command::TxnRecord { .. } => "txn_record",
            Command::Close { .. } => "close",
            Command::Pin { .. } => "pin",
            Command::Unpin { .. } => "unpin",
            Command::Horizon { .. } => "horizon",
            Command::Guard { .. } => "guard",
            Command::Resolve { .. } => "resolve",
        }
    }

    /// The txn the command is about, if any.
    pub fn txn(&self) -> Option<&TxnId> {
        match self {
            Command::Prepare { txn, .. }
            | Command::PrepareCommit { txn, .. }
            | Command::Commit { txn, .. }
            | Command::Abort { txn }
            | Command::TxnRecord { txn, .. }
            | Command::Guard { txn, .. }
            | Command::Resolve { txn, .. } => Some(txn),
            _ => None,
        }
    }
}

/// What applying a command answered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// `Prepare`: the intents are recorded. `Guard`: the reads are guarded.
    Prepared,
    /// `PrepareCommit` or `Commit`: installed at this version (`Commit` of a txn with no
    /// intents here installs nothing and answers this too: commands may be re-sent).
    Committed(u64),
    /// `Prepare` or `PrepareCommit` found a conflict; nothing changed.
    Conflict(Conflict),
    /// `Abort`: whatever the txn had here is gone.
    Aborted,
    /// `TxnRecord`: recorded.
    Recorded,
    /// `Close`: the partition's closed timestamp now (it never goes down).
    Closed(u64),
    /// `Pin`: recorded.
    Pinned,
    /// `Unpin`: the pin it removed (`None`: there was none of that id).
    Unpinned(Option<Pin>),
    /// `Horizon`: the cluster's horizon now (it never goes down).
    Horizon(u64),
    /// `Pin` of a version below the cluster's horizon (named): that history may be gone on
    /// some member, so the pin is refused.
    BelowHorizon(u64),
    /// `TxnRecord` that came too late: the txn's fate was already decided otherwise (an
    /// abort recorded, or its intents here dropped), and this is it. Nothing changed.
    Decided(TxnState),
    /// `Prepare`: the intents are recorded, but a pointer written has a version
    /// ([`Conflict::Stale`]) or a guarded reader's commit ([`Conflict::ReadAbove`]) above
    /// `prepared_above`; the highest is named. The commit version must be above it, or the
    /// txn is aborted by that conflict. The intents' mark is raised to it.
    PreparedAbove(Conflict),
}
