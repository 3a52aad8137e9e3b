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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{CommitRecord, Durability, SharedStore, VersionStore};
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
            let mut unresolved = Unresolved::default();
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
                        unresolved.flush(&*store, &fence);
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
                let result = write_group(&*store, &records, sync, &fence);
                if result.is_ok() {
                    unresolved.add(&records);
                    if unresolved.0 >= RETIRE_EVERY {
                        unresolved.flush(&*store, &fence);
                    }
                }
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
            unresolved.flush(&*store, &fence);
            if fence.get().is_none() {
                let _ = store.persist(true);
            }
        })?;
        Ok(Self { tx, fenced })
    }
}

impl Committer for GroupCommitter {
    fn fenced(&self) -> Option<&StorageError> {
        self.fenced.get()
    }

    /// Queues a commit and waits until it is written (and durable, in sync mode).
    fn commit(&self, record: CommitRecord) -> CommitFuture<'_> {
        Box::pin(async move {
            if let Some(cause) = self.fenced() {
                return Err(CommitFailure::Fenced(cause.clone()));
            }
            let (reply, done) = oneshot::channel();
            let stopped = || CommitFailure::Fenced(StorageError::CommitterStopped);
            self.tx.send((record, reply)).map_err(|_| stopped())?;
            // A reply dropped unsent means the thread died holding it: the outcome is unknown.
            done.await.map_err(|_| CommitFailure::Unknown(StorageError::CommitterStopped))?
        })
    }
}

/// Writes one group: the batch, then its fsync (in `sync`). A failure of either fences the
/// store and leaves the group's outcome unknown.
fn write_group(
    store: &dyn VersionStore,
    records: &[CommitRecord],
    sync: bool,
    fence: &OnceLock<StorageError>,
) -> Result<(), CommitFailure> {
    if let Some(cause) = fence.get() {
        return Err(CommitFailure::Fenced(cause.clone()));
    }
    let span = tracing::debug_span!("group_commit", commits = records.len(), sync);
    span.in_scope(|| store.write_batch(records).and_then(|()| store.persist(sync))).map_err(|e| {
        tracing::error!(error = %e, commits = records.len(), "commit group failed; the node takes no more writes");
        let _ = fence.set(e.clone());
        CommitFailure::Unknown(e)
    })
}

/// Durable commits across partitions whose intents and records are still on disk. They
/// are retired all at once (`VersionStore::retire_resolved`) when the committer is idle, or
/// once enough have gathered: every commit written so far is durable then.
#[derive(Default)]
struct Unresolved(usize);

/// Retire once this many commits across partitions have gathered, even under steady load.
const RETIRE_EVERY: usize = 4096;

impl Unresolved {
    /// After a group is durable: count its commits across partitions.
    fn add(&mut self, records: &[CommitRecord]) {
        self.0 += records.iter().filter(|r| r.primary.is_some()).count();
    }

    /// Retires them. Past the commit point the records decide, so a failure is redone by
    /// recovery; but the store is suspect, so it fences.
    fn flush(&mut self, store: &dyn VersionStore, fence: &OnceLock<StorageError>) {
        if self.0 == 0 || fence.get().is_some() {
            return;
        }
        if let Err(e) = store.retire_resolved() {
            tracing::error!(error = %e, "retiring committed intents failed; the node takes no more writes");
            let _ = fence.set(e);
        }
        self.0 = 0;
    }
}

/// A commit on its way to the disk.
pub type CommitFuture<'a> = Pin<Box<dyn Future<Output = Result<(), CommitFailure>> + Send + 'a>>;

/// How a node's commits reach its store: [`GroupCommitter`] (a thread that batches them) in
/// a real node, [`DirectCommitter`] (the caller's task, one at a time) in a simulation,
/// where no thread may run outside the seeded runtime.
pub trait Committer: Send + Sync + 'static {
    /// Makes `record` durable (per the durability mode); see [`CommitFailure`].
    fn commit(&self, record: CommitRecord) -> CommitFuture<'_>;
    /// The failure that stopped this committer from taking writes, if one did.
    fn fenced(&self) -> Option<&StorageError>;
}

/// Writes each commit in the caller's task, with an fsync each: deterministic, for the
/// seeded simulation. Fences exactly as the group committer does.
pub struct DirectCommitter {
    store: SharedStore,
    sync: bool,
    fenced: OnceLock<StorageError>,
}

impl DirectCommitter {
    pub fn new(store: SharedStore, durability: Durability) -> Self {
        Self { store, sync: durability == Durability::Sync, fenced: OnceLock::new() }
    }
}

impl Committer for DirectCommitter {
    fn commit(&self, record: CommitRecord) -> CommitFuture<'_> {
        let records = std::slice::from_ref(&record);
        let result = write_group(&*self.store, records, self.sync, &self.fenced);
        if result.is_ok() {
            let mut unresolved = Unresolved::default();
            unresolved.add(records);
            unresolved.flush(&*self.store, &self.fenced);
        }
        Box::pin(std::future::ready(result))
    }

    fn fenced(&self) -> Option<&StorageError> {
        self.fenced.get()
    }
}
