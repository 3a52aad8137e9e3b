//! The Raft log of a group, its vote and its committed index, in the node's fjall database.
//!
//! Keys lead with the group id (big-endian), so the groups of a node share two keyspaces:
//! `raft_log` (group, index → entry) and `raft_state` (group, name → vote, committed index,
//! last purged log id). Values are postcard.
//!
//! Durability is what Raft's safety rests on:
//! - [`LogStore::append`] writes the entries and hands openraft's callback to the
//!   [`Flusher`]; the callback fires only after an fsync that covers them. The flusher is one
//!   thread per database that drains every pending callback, of every group, before one
//!   fsync: many proposals, and many groups, share one fsync (group commit);
//! - [`LogStore::save_vote`] is fsynced before it returns: a node must never vote twice in a
//!   term;
//! - truncation and purging are not fsynced on their own: a later append's fsync covers
//!   them, and until then a replica that crashed only holds entries the leader overwrites.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, mpsc};
use std::thread;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, Vote};

use super::{GroupId, NodeId, Restm, StorageError, decode, encode, storage_error};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";

/// Fsyncs the database for the appends of every group, many at a time.
///
/// One thread per database: it takes every callback waiting, fsyncs once, then reports each
/// in the order it came (openraft expects a group's flushes in order).
#[derive(Clone)]
pub struct Flusher {
    tx: mpsc::Sender<LogFlushed<Restm>>,
}

impl Flusher {
    /// Starts the flusher of `db`. It stops once every [`Flusher`] clone is dropped.
    pub fn start(db: Database) -> Self {
        let (tx, rx) = mpsc::channel::<LogFlushed<Restm>>();
        let spawned = thread::Builder::new().name("raft-flush".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut waiting = vec![first];
                waiting.extend(rx.try_iter());
                let synced = db.persist(PersistMode::SyncAll);
                for cb in waiting {
                    cb.log_io_completed(match &synced {
                        Ok(()) => Ok(()),
                        Err(e) => Err(std::io::Error::other(format!("fsync of the raft log: {e}"))),
                    });
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the raft log flusher");
        }
        Self { tx }
    }

    fn flush(&self, cb: LogFlushed<Restm>) {
        if let Err(mpsc::SendError(cb)) = self.tx.send(cb) {
            cb.log_io_completed(Err(std::io::Error::other("the raft log flusher stopped")));
        }
    }
}

/// One group's log in a shared database. Clones share the same log (openraft's log reader
/// is a clone).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    log: Keyspace,
    state: Keyspace,
    group: GroupId,
    flusher: Flusher,
}

/// The keyspaces the logs of every group share.
pub fn keyspaces(db: &Database) -> Result<(Keyspace, Keyspace), fjall::Error> {
    let log = db.keyspace("raft_log", KeyspaceCreateOptions::default)?;
    let state = db.keyspace("raft_state", KeyspaceCreateOptions::default)?;
    Ok((log, state))
}

/// Where a data directory records how many groups share its partitions (a key of no
/// group: no group's id is `u32::MAX`).
const GROUP_COUNT: &[u8] = b"\xff\xff\xff\xffgroups";

/// The number of groups this data directory's partitions are split into: `requested` for
/// a new directory (stored, fsynced), and what is stored for an existing one, which
/// `requested` must match (`Err(stored)` when it does not). A directory from before the
/// count was stored, with a vote in group 0, has one.
pub fn group_count(db: &Database, requested: u32) -> Result<u32, Result<u32, fjall::Error>> {
    let (_, state) = keyspaces(db).map_err(Err)?;
    match stored_group_count(db).map_err(Err)? {
        Some(n) if n != requested => Err(Ok(n)),
        Some(n) => Ok(n),
        None => {
            state.insert(GROUP_COUNT, requested.to_be_bytes()).map_err(Err)?;
            db.persist(fjall::PersistMode::SyncAll).map_err(Err)?;
            Ok(requested)
        }
    }
}

/// The number of groups recorded in this data directory, if it has been a member.
pub fn stored_group_count(db: &Database) -> Result<Option<u32>, fjall::Error> {
    let (_, state) = keyspaces(db)?;
    Ok(match state.get(GROUP_COUNT)? {
        Some(v) => Some(v.as_ref().try_into().map(u32::from_be_bytes).unwrap_or(0)),
        None if state.get(state_key(0, VOTE))?.is_some() => Some(1),
        None => None,
    })
}

fn index_key(group: GroupId, index: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&group.to_be_bytes());
    k[4..].copy_from_slice(&index.to_be_bytes());
    k
}

fn state_key(group: GroupId, name: &[u8]) -> Vec<u8> {
    [&group.to_be_bytes()[..], name].concat()
}

fn read_err(subject: ErrorSubject<NodeId>, e: impl std::fmt::Display) -> StorageError {
    storage_error(subject, ErrorVerb::Read, e)
}

fn write_err(subject: ErrorSubject<NodeId>, e: impl std::fmt::Display) -> StorageError {
    storage_error(subject, ErrorVerb::Write, e)
}

impl LogStore {
    /// The log of `group` in `db`, fsynced by `flusher` (one per database).
    pub fn open(db: &Database, group: GroupId, flusher: Flusher) -> Result<Self, fjall::Error> {
        let (log, state) = keyspaces(db)?;
        Ok(Self { inner: Arc::new(Inner { db: db.clone(), log, state, group, flusher }) })
    }

    fn get_state<T: serde::de::DeserializeOwned>(
        &self,
        name: &[u8],
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        let i = &self.inner;
        match i.state.get(state_key(i.group, name)).map_err(|e| read_err(subject.clone(), e))? {
            None => Ok(None),
            Some(v) => decode(&v).map(Some).map_err(|e| read_err(subject, e)),
        }
    }

    fn put_state<T: serde::Serialize>(
        &self,
        name: &[u8],
        v: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let i = &self.inner;
        let bytes = encode(v).map_err(|e| write_err(subject.clone(), e))?;
        i.state.insert(state_key(i.group, name), bytes).map_err(|e| write_err(subject, e))
    }

    /// The index range of `range` as keys of this group's log.
    fn key_range(&self, range: impl RangeBounds<u64>) -> (Bound<[u8; 12]>, Bound<[u8; 12]>) {
        let g = self.inner.group;
        let lo = match range.start_bound() {
            Bound::Included(i) => Bound::Included(index_key(g, *i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(g, *i)),
            Bound::Unbounded => Bound::Included(index_key(g, 0)),
        };
        let hi = match range.end_bound() {
            Bound::Included(i) => Bound::Included(index_key(g, *i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(g, *i)),
            Bound::Unbounded => Bound::Included(index_key(g, u64::MAX)),
        };
        (lo, hi)
    }

    /// Removes the entries in `range`.
    fn remove(&self, range: impl RangeBounds<u64>) -> Result<(), StorageError> {
        let i = &self.inner;
        let mut batch = i.db.batch();
        for item in i.log.range(self.key_range(range)) {
            let k = item.key().map_err(|e| read_err(ErrorSubject::Logs, e))?;
            batch.remove(&i.log, k);
        }
        batch.commit().map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

impl RaftLogReader<Restm> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<Restm>>, StorageError> {
        let mut out = Vec::new();
        for item in self.inner.log.range(self.key_range(range)) {
            let v = item.value().map_err(|e| read_err(ErrorSubject::Logs, e))?;
            out.push(decode(&v).map_err(|e| read_err(ErrorSubject::Logs, e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<Restm> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<Restm>, StorageError> {
        let purged: Option<LogId<NodeId>> = self.get_state(PURGED, ErrorSubject::Logs)?;
        let last = match self.inner.log.range(self.key_range(..)).next_back() {
            None => None,
            Some(item) => {
                let v = item.value().map_err(|e| read_err(ErrorSubject::Logs, e))?;
                let e: Entry<Restm> = decode(&v).map_err(|e| read_err(ErrorSubject::Logs, e))?;
                Some(e.log_id)
            }
        };
        Ok(LogState { last_purged_log_id: purged, last_log_id: last.or(purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.put_state(VOTE, vote, ErrorSubject::Vote)?;
        self.inner.db.persist(PersistMode::SyncAll).map_err(|e| write_err(ErrorSubject::Vote, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_state(VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError> {
        self.put_state(COMMITTED, &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        Ok(self.get_state::<Option<LogId<NodeId>>>(COMMITTED, ErrorSubject::Store)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<Restm>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<Restm>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let i = &self.inner;
        let mut batch = i.db.batch();
        for entry in entries {
            let bytes = encode(&entry).map_err(|e| write_err(ErrorSubject::Log(entry.log_id), e))?;
            batch.insert(&i.log, index_key(i.group, entry.log_id.index), bytes);
        }
        batch.commit().map_err(|e| write_err(ErrorSubject::Logs, e))?;
        i.flusher.flush(callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        self.remove(log_id.index..)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        self.put_state(PURGED, &log_id, ErrorSubject::Logs)?;
        self.remove(..=log_id.index)
    }
}
