//! Typed errors of the engine. Each names exactly what went wrong, with the pointer and the
//! other transaction where there is one; the HTTP edge maps them to problem+json in one place.

use std::fmt;

use super::{PtrId, TxnId};

/// Why a transaction ended without committing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortReason {
    /// The client asked for it.
    Client,
    /// Commit-time validation or a conflicting lock made it lose.
    Conflict(Conflict),
    /// It waited for a lock longer than the lock timeout.
    LockTimeout { ptr: PtrId, holder: TxnId },
    /// Its client went silent for longer than its lease.
    LeaseExpired,
    /// A one-shot transaction's check did not hold.
    CheckFailed { ptr: PtrId },
    /// The commit could not be written to storage (nothing of it was written).
    Storage(StorageError),
    /// The request driving a one-shot transaction went away before it finished.
    Cancelled,
    /// The node that coordinated it stopped leading its partitions (its locks went with
    /// the lead), or could not reach a majority of their replicas before the commit point.
    LeadershipLost,
}

impl AbortReason {
    /// A short label for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            AbortReason::Client => "client",
            AbortReason::Conflict(_) => "conflict",
            AbortReason::LockTimeout { .. } => "lock_timeout",
            AbortReason::LeaseExpired => "lease_expired",
            AbortReason::CheckFailed { .. } => "check_failed",
            AbortReason::Storage(_) => "storage",
            AbortReason::Cancelled => "cancelled",
            AbortReason::LeadershipLost => "leadership_lost",
        }
    }
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::Client => write!(f, "aborted by the client"),
            AbortReason::Conflict(c) => write!(f, "{c}"),
            AbortReason::LockTimeout { ptr, holder } => {
                write!(f, "timed out waiting for the lock on {ptr:?} held by txn {holder}")
            }
            AbortReason::LeaseExpired => write!(f, "its lease expired (no request within its timeout)"),
            AbortReason::CheckFailed { ptr } => write!(f, "the check on {ptr:?} did not hold"),
            AbortReason::Storage(e) => write!(f, "the commit could not be persisted: {e}"),
            AbortReason::Cancelled => write!(f, "the request was cancelled"),
            AbortReason::LeadershipLost => write!(
                f,
                "its coordinator stopped leading the partitions, or could not reach a majority of their \
                 replicas; begin it again"
            ),
        }
    }
}

/// A serialization conflict: who lost, on which pointer, and who won.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Conflict {
    /// Another transaction holds the pointer's lock.
    Locked { ptr: PtrId, holder: TxnId },
    /// Another transaction committed a newer version of a pointer this one read.
    Stale { ptr: PtrId, winner_txn: TxnId, winner_version: u64 },
    /// The pointer read was a tombstone (or its lock was taken on one), and garbage
    /// collection has since removed it: no transaction won, history below `horizon` went.
    Collected { ptr: PtrId },
    /// At prepare, the transaction no longer held the lock of a pointer it wrote, and no one
    /// else holds it either. The engine never releases a committing transaction's lock, so
    /// this names a broken invariant rather than a race another transaction won.
    LockLost { ptr: PtrId },
    /// The commit version was at or below the partition's closed timestamp, which promised
    /// replicas that no commit that low was still to come: only a deposed leader's command
    /// can be that old, and it is refused on every replica alike.
    Closed { ptr: PtrId, closed: u64 },
    /// The pointer written was read by a committed txn (`reader`) at `read_at`, at or above
    /// this commit version: this write would have to serialize before a read that did not
    /// see it. Begin again; the next commit version is above it.
    ReadAbove { ptr: PtrId, reader: TxnId, read_at: u64 },
}

impl Conflict {
    pub fn ptr(&self) -> &PtrId {
        match self {
            Conflict::Locked { ptr, .. }
            | Conflict::Stale { ptr, .. }
            | Conflict::Collected { ptr }
            | Conflict::LockLost { ptr }
            | Conflict::Closed { ptr, .. }
            | Conflict::ReadAbove { ptr, .. } => ptr,
        }
    }

    /// The transaction that held the lock, for [`Conflict::Locked`].
    pub fn holder(&self) -> Option<&TxnId> {
        match self {
            Conflict::Locked { holder, .. } => Some(holder),
            _ => None,
        }
    }

    /// The transaction whose commit made a read stale, and its version, for [`Conflict::Stale`];
    /// the reader that committed above a write, for [`Conflict::ReadAbove`].
    pub fn winner(&self) -> Option<(&TxnId, u64)> {
        match self {
            Conflict::Stale { winner_txn, winner_version, .. } => Some((winner_txn, *winner_version)),
            Conflict::ReadAbove { reader, read_at, .. } => Some((reader, *read_at)),
            _ => None,
        }
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::Locked { ptr, holder } => write!(f, "pointer {ptr:?} is locked by txn {holder}"),
            Conflict::Stale { ptr, winner_txn, winner_version } => write!(
                f,
                "pointer {ptr:?} was read, then txn {winner_txn} committed a newer version {winner_version}"
            ),
            Conflict::Collected { ptr } => write!(
                f,
                "pointer {ptr:?} was read as deleted, then garbage collection removed it; read it again"
            ),
            Conflict::LockLost { ptr } => {
                write!(f, "the lock on {ptr:?} was no longer held at prepare (an engine invariant broke)")
            }
            Conflict::Closed { ptr, closed } => write!(
                f,
                "the commit of {ptr:?} came at or below its partition's closed timestamp {closed} (its \
                 coordinator no longer leads); begin it again"
            ),
            Conflict::ReadAbove { ptr, reader, read_at } => write!(
                f,
                "pointer {ptr:?} was read by txn {reader}, committed at {read_at}, at or above this \
                 commit; begin it again"
            ),
        }
    }
}

/// Every way an engine operation can fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("no transaction {0:?} is known (it never existed, or finished long ago)")]
    TxnNotFound(String),
    #[error("transaction {txn} was aborted: {reason}")]
    TxnAborted { txn: TxnId, reason: AbortReason },
    #[error("transaction {txn} already committed at version {version}")]
    TxnCommitted { txn: TxnId, version: u64 },
    #[error("transaction {txn} is committing")]
    TxnCommitting { txn: TxnId },
    #[error("transaction {0} is read-only")]
    ReadOnly(TxnId),
    #[error("transaction {txn} lost a conflict and was aborted: {conflict}")]
    Conflict { txn: TxnId, conflict: Conflict },
    #[error(
        "transaction {txn} timed out waiting for the lock on {ptr:?} held by txn {holder}; it was aborted"
    )]
    LockTimeout { txn: TxnId, ptr: PtrId, holder: TxnId },
    #[error("check failed on {ptr:?}: expected {}, found {}", show(expected), show(actual))]
    CheckFailed {
        txn: TxnId,
        ptr: PtrId,
        expected: Option<u64>,
        actual: Option<u64>,
        actual_txn: Option<TxnId>,
    },
    #[error("pointer {ptr:?} does not exist")]
    NotFound { ptr: PtrId },
    #[error("version {requested} is in the future (the clock is at {now})")]
    FutureVersion { requested: u64, now: u64 },
    #[error("storage failure: {0}")]
    Storage(StorageError),
    #[error(
        "a read of {ptr:?} waited {waited_ms} ms for txn {holder}, which is prepared on it, and it has \
         not landed; try again"
    )]
    PreparedWaitTimeout { ptr: PtrId, holder: TxnId, waited_ms: u64 },
    #[error(
        "the outcome of transaction {txn} is unknown: its commit at version {commit_version} was written, but \
         making it durable failed ({cause}); read its pointers after the node restarts to learn whether it \
         committed"
    )]
    OutcomeUnknown { txn: TxnId, commit_version: u64, cause: StorageError },
    #[error(
        "this node stopped taking writes: {cause}. Reads still work; restart the node to recover its store"
    )]
    WritesFenced { cause: StorageError },
    #[error(
        "version {requested} is older than the GC horizon {horizon}: history before it was garbage-collected \
         (keep more with --retention, or pin it with POST /pins)"
    )]
    Gone { requested: u64, horizon: u64 },
    #[error("no pin {0:?} (it never existed, expired or was removed)")]
    PinNotFound(String),
    /// This node does not lead the partitions (and could not hand the request on).
    #[error("this node does not lead the partitions (leader: {}); retry, on any node", leader.map_or("unknown".to_string(), |l| format!("node {l}")))]
    NotLeader { leader: Option<u64> },
    /// A change to the cluster's state (a pin, say) did not reach a majority in time; it
    /// may still land.
    #[error("{what} did not reach a majority of the cluster ({cause}); retry")]
    Unreplicated { what: &'static str, cause: String },
    #[error(
        "memory pressure is critical: new read-write transactions are refused until memory is back \
         (reads, read-only transactions and deletes still work)"
    )]
    Overloaded,
}

/// A failure of the node's storage, typed so that callers can tell what happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The storage engine (fjall) or the file system failed.
    #[error("{op} failed: {detail}")]
    Backend { op: &'static str, detail: String },
    /// A record on disk cannot be decoded.
    #[error("corrupt record in the data directory: {0}")]
    Corrupt(String),
    #[error(
        "the data directory was created with {stored} partitions, but {requested} were asked for; \
         the partition count of a data directory cannot change"
    )]
    PartitionMismatch { stored: u32, requested: u32 },
    /// The group-commit thread is gone (the node is shutting down, or it panicked).
    #[error("the commit thread has stopped")]
    CommitterStopped,
    /// A batch was written but the fsync that should make it durable failed. What is on
    /// disk is unknown (after a failed fsync the kernel may drop the dirty pages), so
    /// nothing written before is trusted either: the node takes no more writes.
    #[error("an fsync failed after a batch was written: {detail}")]
    SyncFailed { detail: String },
}

impl StorageError {
    /// A failure of `op` in the storage backend.
    pub fn backend(op: &'static str, e: impl fmt::Display) -> Self {
        StorageError::Backend { op, detail: e.to_string() }
    }
}

fn show(v: &Option<u64>) -> String {
    v.map_or_else(|| "absent".to_string(), |v| format!("version {v}"))
}
