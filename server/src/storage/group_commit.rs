//! Group commit: one thread writes commits to fjall, as many at a time as are waiting.
//!
//! Each request's commit waits on a oneshot. The thread takes every commit queued, writes
//! them as one atomic batch and, in [`Durability::Sync`], fsyncs once for the whole group
//! before answering any of them, so concurrent commits share an fsync. In
//! [`Durability::Async`] it answers after the write and fsyncs every 100 ms.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{CommitRecord, Durability, SharedStore};

/// Most commits written in one group.
const MAX_GROUP: usize = 512;
/// Background fsync period in async durability.
const ASYNC_SYNC_EVERY: Duration = Duration::from_millis(100);

type Reply = oneshot::Sender<Result<(), String>>;

/// Handle to the committer thread.
#[derive(Clone)]
pub struct GroupCommitter {
    tx: mpsc::Sender<(CommitRecord, Reply)>,
}

impl GroupCommitter {
    /// Starts the committer thread over `store`.
    pub fn start(store: SharedStore, durability: Durability) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<(CommitRecord, Reply)>();
        std::thread::Builder::new().name("restm-commit".into()).spawn(move || {
            let mut dirty = false;
            let mut last_sync = Instant::now();
            loop {
                let first = match rx.recv_timeout(ASYNC_SYNC_EVERY) {
                    Ok(item) => item,
                    Err(RecvTimeoutError::Timeout) => {
                        if dirty {
                            if let Err(e) = store.sync() {
                                tracing::error!(error = %e, "background fsync failed");
                            }
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
                let sync = durability == Durability::Sync;
                let span = tracing::debug_span!("group_commit", commits = records.len(), sync);
                let result = span.in_scope(|| store.write_group(&records, sync)).map_err(|e| e.to_string());
                if let Err(e) = &result {
                    tracing::error!(error = %e, "commit group failed");
                }
                if !sync {
                    dirty = true;
                    if last_sync.elapsed() >= ASYNC_SYNC_EVERY {
                        let _ = store.sync();
                        dirty = false;
                        last_sync = Instant::now();
                    }
                }
                for reply in replies {
                    let _ = reply.send(result.clone());
                }
            }
            let _ = store.sync();
        })?;
        Ok(Self { tx })
    }

    /// Queues a commit and waits until it is written (and durable, in sync mode).
    pub async fn commit(&self, record: CommitRecord) -> Result<(), String> {
        let (reply, done) = oneshot::channel();
        self.tx.send((record, reply)).map_err(|_| "the commit thread has stopped".to_string())?;
        done.await.map_err(|_| "the commit thread has stopped".to_string())?
    }
}
