//! Group commit: one thread writes commits to the store, as many at a time as are waiting.
//!
//! Each request's commit waits on a oneshot. The thread takes every commit queued, writes
//! them as one atomic batch and, in [`Durability::Sync`], fsyncs once for the whole group
//! before answering any of them, so concurrent commits share an fsync. In
//! [`Durability::Async`] it answers after the write and fsyncs every 100 ms.
//!
//! A failed write or fsync is not a clean abort: the batch may be on disk, or part of it,
//! and after a failed fsync the kernel may have dropped dirty pages of earlier batches too.
//! So every commit of that group is answered [`CommitFailure::Unknown`], and the committer
//! *fences*: every later commit is refused with [`CommitFailure::Fenced`] without touching
//! the store, until the node is restarted and recovery reads what the disk really holds.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{CommitRecord, Durability, SharedStore};
use crate::engine::StorageError;

/// Most commits written in one group.
const MAX_GROUP: usize = 512;
/// Background fsync period in async durability.
const ASYNC_SYNC_EVERY: Duration = Duration::from_millis(100);

/// Why a commit was not made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitFailure {
    /// The write or its fsync failed: the commit may or may not be on disk.
    Unknown(StorageError),
    /// An earlier failure fenced the store; nothing of this commit was written.
    Fenced(StorageError),
}

type Reply = oneshot::Sender<Result<(), CommitFailure>>;

/// Handle to the committer thread.
#[derive(Clone)]
pub struct GroupCommitter {
    tx: mpsc::Sender<(CommitRecord, Reply)>,
    /// The failure that fenced the store, once one happened.
    fenced: Arc<OnceLock<StorageError>>,
}

impl GroupCommitter {
    /// Starts the committer thread over `store`.
    pub fn start(store: SharedStore, durability: Durability) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<(CommitRecord, Reply)>();
        let fenced: Arc<OnceLock<StorageError>> = Arc::default();
        let fence = fenced.clone();
        std::thread::Builder::new().name("restm-commit".into()).spawn(move || {
            let mut dirty = false;
            let mut last_sync = Instant::now();
            let sync = durability == Durability::Sync;
            let background_sync = |fence: &OnceLock<StorageError>| {
                if let Err(e) = store.persist(true) {
                    // Acknowledged commits may not survive a power loss: stop taking more.
                    tracing::error!(error = %e, "background fsync failed; the node takes no more writes");
                    let _ = fence.set(e);
                }
            };
            loop {
                let first = match rx.recv_timeout(ASYNC_SYNC_EVERY) {
                    Ok(item) => item,
                    Err(RecvTimeoutError::Timeout) => {
                        if dirty && fence.get().is_none() {
                            background_sync(&fence);
                            dirty = false;
                            last_sync = Instant::now();
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(item) => group.push(item),
                        Err(_) => break,
                    }
                }
                let (records, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
                let result = match fence.get() {
                    Some(cause) => Err(CommitFailure::Fenced(cause.clone())),
                    None => {
                        let span = tracing::debug_span!("group_commit", commits = records.len(), sync);
                        let durable = span
                            .in_scope(|| store.write_batch(&records).and_then(|()| store.persist(sync)))
                            .map_err(|e| {
                                tracing::error!(error = %e, commits = records.len(), "commit group failed; the node takes no more writes");
                                let _ = fence.set(e.clone());
                                CommitFailure::Unknown(e)
                            });
                        // Past the commit point: the records decide. A failed resolution is
                        // redone by recovery, but the store is suspect, so it fences too.
                        if durable.is_ok()
                            && records.iter().any(|r| r.primary.is_some())
                            && let Err(e) = store.resolve_batch(&records)
                        {
                            tracing::error!(error = %e, "resolving committed intents failed; the node takes no more writes");
                            let _ = fence.set(e);
                        }
                        durable
                    }
                };
                if !sync && result.is_ok() {
                    dirty = true;
                    if last_sync.elapsed() >= ASYNC_SYNC_EVERY {
                        background_sync(&fence);
                        dirty = false;
                        last_sync = Instant::now();
                    }
                }
                for reply in replies {
                    let _ = reply.send(result.clone());
                }
            }
            if fence.get().is_none() {
                let _ = store.persist(true);
            }
        })?;
        Ok(Self { tx, fenced })
    }

    /// The failure that stopped this committer from taking writes, if one did.
    pub fn fenced(&self) -> Option<&StorageError> {
        self.fenced.get()
    }

    /// Queues a commit and waits until it is written (and durable, in sync mode).
    pub async fn commit(&self, record: CommitRecord) -> Result<(), CommitFailure> {
        if let Some(cause) = self.fenced() {
            return Err(CommitFailure::Fenced(cause.clone()));
        }
        let (reply, done) = oneshot::channel();
        let stopped = || CommitFailure::Fenced(StorageError::CommitterStopped);
        self.tx.send((record, reply)).map_err(|_| stopped())?;
        // A reply dropped unsent means the thread died holding it: the outcome is unknown.
        done.await.map_err(|_| CommitFailure::Unknown(StorageError::CommitterStopped))?
    }
}
