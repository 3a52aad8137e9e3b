//! A group's state machine: its partitions, changed only by applying the log's proposals.
//!
//! [`PartitionMachine::apply`] hands each [`Proposal`] to its partition's
//! [`Partition::apply`], which is deterministic, so every replica that applies the same log
//! holds the same partitions. The leader's locks live in the same cells but are never part
//! of the machine's state: an image leaves them out, and installing one drops them.
//!
//! A snapshot is an image of every partition's replicated state at one applied log id. It
//! is taken between two applies (so it is consistent), written to the `raft_snapshot`
//! keyspace and fsynced before openraft may purge the log it covers. Installing one replaces
//! every partition wholesale and sets the applied log id in the same step, under the
//! machine's `&mut self`; on open, the stored snapshot is installed and openraft re-applies
//! the committed entries after it.
//!
//! The machine keeps every version in memory until garbage collection prunes it (it does
//! not yet evict old versions to the node's version store, though the [`Observer`] writes
//! every installed version there, from applies and from images alike).

use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::{BasicNode, GroupId, NodeId, Restm, StorageError, decode, encode, storage_error};
use bytes::Bytes;

use crate::engine::command::{Command, Outcome, TxnState};
use crate::engine::gc::Pin;
use crate::engine::partition::{Partition, PartitionDump};
use crate::engine::{PtrId, TxnId};

/// Versions a chain keeps in memory while applying: all of them, since the machine has no
/// cold store behind it yet (see the module doc).
const KEEP_ALL: usize = usize::MAX;

/// The partitions of a group, indexed by partition id.
pub type Partitions = Arc<[Partition]>;

/// `count` empty partitions, ids `0..count`.
pub fn partitions(count: u32) -> Partitions {
    (0..count).map(Partition::new).collect()
}

/// Which of a node's partitions a group holds: `of` groups share them, partition `p` in
/// group `p % of` (one group of all of them when `of` is 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub group: GroupId,
    pub of: u32,
}

impl Held {
    /// Every partition in one group.
    pub const ALL: Held = Held { group: 0, of: 1 };

    /// The group that holds `partition`, of `groups`.
    pub fn group_of(partition: u32, groups: u32) -> GroupId {
        partition % groups.max(1)
    }

    /// Whether the group holds `partition` (a group that is one of one holds every one,
    /// whatever its id).
    pub fn holds(&self, partition: u32) -> bool {
        self.of <= 1 || Self::group_of(partition, self.of) == self.group
    }

    /// The partitions of `all` this group holds, ascending.
    pub fn of_these<'a>(&self, all: &'a Partitions) -> impl Iterator<Item = &'a Partition> + 'a {
        let held = *self;
        all.iter().filter(move |p| held.holds(p.id))
    }
}

/// The format of an [`Image`]: 2 since partitions carry closed timestamps and pins, 3 since
/// they carry the cluster's GC horizon. Images of builds before 2 had no format byte (their
/// first byte is 0 or 1) and do not decode.
pub const IMAGE_FORMAT: u8 = 4;

/// The state of a group at one applied log id: what a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// [`IMAGE_FORMAT`] when written; an image of another format is refused, by name.
    pub format: u8,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
    /// Each partition that holds anything, by id.
    pub partitions: Vec<(u32, PartitionDump)>,
}

/// A snapshot as stored: its meta and its data (a postcard [`Image`]).
#[derive(Serialize, Deserialize)]
struct Stored {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// What the node learns from the machine's applies: installed commits (to keep in its
/// version store, for history and cold reads) and the versions the log carries (to keep its
/// clock above them, should it lead).
pub trait Observer: Send + Sync + 'static {
    /// `txn` (of trace `trace_id`) installed `writes` at `version` on a partition.
    fn installed(&self, txn: &TxnId, trace_id: &Arc<str>, version: u64, writes: &[(PtrId, Option<Bytes>)]);
    /// A command carried `version` (a commit version, or a prepared txn's lower bound).
    fn saw_version(&self, version: u64);
    /// The node's clock now: sent with what the node asks of a peer, whose answer carries
    /// the peer's clock back (to `saw_version`), so versions stay above every message.
    fn last_version(&self) -> u64 {
        0
    }
    /// A fresh version of the node's clock, to date what it saw (see
    /// `cluster::timeline`).
    fn now_version(&self) -> u64 {
        self.last_version()
    }
    /// A `Pin` command recorded `pin`.
    fn pinned(&self, _pin: &Pin) {}
    /// An `Unpin` command removed `pin`.
    fn unpinned(&self, _pin: &Pin) {}
    /// A snapshot replaced the group's state: `pins` is every pin it holds now.
    fn pins_restored(&self, _pins: &[Pin]) {}
    /// The cluster's GC horizon is now `horizon` (a `Horizon` command, or a snapshot).
    fn horizon(&self, _horizon: u64) {}
    /// Whether this node is running `txn` (it coordinates it, and has not ended it): asked
    /// by a peer's resolver about a txn it found prepared. Without an engine to ask, yes.
    fn runs(&self, _txn: &str) -> bool {
        true
    }
    /// This node's own GC watermark, promised to the cluster: it begins no txn below it
    /// from now on (see `Engine::promise_watermark`). `None`: no engine to promise for.
    fn promise_watermark(&self) -> Option<crate::engine::gc::Watermark> {
        None
    }
    /// Fires when one of this node's one-partition commits lands, if one at or below `at` is
    /// still out (see `Engine::landing_at_or_below`); `None`: none is.
    fn landing(&self, _at: u64) -> Option<event_listener::EventListener> {
        None
    }
    /// A commit version for a peer's one-partition commit in a group this node leads,
    /// above everything its clock issued and held landing (closes stay below it, read
    /// barriers wait for it) until [`Self::commit_settled`]. `None`: no engine to ask.
    fn issue_for_peer(&self) -> Option<u64> {
        None
    }
    /// The commit at `version` from [`Self::issue_for_peer`] landed, or never will.
    fn commit_settled(&self, _version: u64) {}
}

/// An observer that learns nothing (a machine tested on its own).
pub struct Unobserved;

impl Observer for Unobserved {
    fn installed(&self, _: &TxnId, _: &Arc<str>, _: u64, _: &[(PtrId, Option<Bytes>)]) {}
    fn saw_version(&self, _: u64) {}
}

/// Applies `cmd` to `part`, telling `observer` what it installed.
fn apply_observed(part: &Partition, cmd: &Command, observer: &dyn Observer) -> Outcome {
    match cmd {
        Command::Prepare { prepared_above, .. } => observer.saw_version(*prepared_above),
        Command::PrepareCommit { commit_version, .. } | Command::Commit { commit_version, .. } => {
            observer.saw_version(*commit_version)
        }
        Command::TxnRecord { state: TxnState::Committed(v), .. }
        | Command::Resolve { state: TxnState::Committed(v), .. } => observer.saw_version(*v),
        // A leader elected later issues versions above what an earlier one closed.
        Command::Close { closed } => observer.saw_version(*closed),
        _ => {}
    }
    // A `Commit` (or a resolver's) installs the intents: read them before they go.
    let intents = match cmd {
        Command::Commit { txn, .. } | Command::Resolve { txn, state: TxnState::Committed(_) } => {
            Some((part.intents_of(txn), part.trace_of_intents(txn)))
        }
        _ => None,
    };
    let out = part.apply(cmd, KEEP_ALL);
    match (cmd, &out) {
        (Command::Pin { pin }, Outcome::Pinned) => observer.pinned(pin),
        (Command::Unpin { .. }, Outcome::Unpinned(Some(pin))) => observer.unpinned(pin),
        (Command::Horizon { .. }, Outcome::Horizon(h)) => observer.horizon(*h),
        _ => {}
    }
    if let Outcome::Committed(v) = out {
        match (cmd, intents) {
            (Command::PrepareCommit { txn, trace_id, writes, .. }, _) => {
                observer.installed(txn, trace_id, v, writes)
            }
            (Command::Commit { txn, .. } | Command::Resolve { txn, .. }, Some((writes, Some(trace))))
                if !writes.is_empty() =>
            {
                observer.installed(txn, &trace, v, &writes)
            }
            _ => {}
        }
    }
    out
}

/// The state machine of one group on one node.
pub struct PartitionMachine {
    group: GroupId,
    observer: Arc<dyn Observer>,
    partitions: Partitions,
    held: Held,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    snapshots: Keyspace,
    db: Database,
    /// Snapshots taken, to name the next one uniquely.
    taken: u64,
}

fn snapshot_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    storage_error(ErrorSubject::Snapshot(None), verb, e)
}

impl PartitionMachine {
    /// The machine of the group `held` names, over its partitions of `partitions`, restored
    /// from the snapshot stored in `db`, if there is one.
    pub fn open(
        db: &Database,
        held: Held,
        partitions: Partitions,
        observer: Arc<dyn Observer>,
    ) -> Result<Self, StorageError> {
        let group = held.group;
        let snapshots = db
            .keyspace("raft_snapshot", KeyspaceCreateOptions::default)
            .map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
        let mut m = Self {
            group,
            observer,
            partitions,
            held,
            last_applied: None,
            membership: StoredMembership::default(),
            snapshots,
            db: db.clone(),
            taken: 0,
        };
        if let Some(stored) = m.stored()? {
            m.restore(&stored.meta, &stored.data)?;
        }
        Ok(m)
    }

    /// The node's partitions (shared with whoever reads them); the machine applies to those
    /// it [`Self::held`].
    pub fn partitions(&self) -> &Partitions {
        &self.partitions
    }

    pub fn held(&self) -> Held {
        self.held
    }

    /// The partition `id`, if this group holds it.
    fn part(&self, id: u32) -> Option<&Partition> {
        self.partitions.get(id as usize).filter(|_| self.held.holds(id))
    }

    /// The image of the state now.
    pub fn image(&self) -> Image {
        Image {
            format: IMAGE_FORMAT,
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            partitions: self
                .held
                .of_these(&self.partitions)
                .map(|p| (p.id, p.dump()))
                .filter(|(_, d)| *d != PartitionDump::default())
                .collect(),
        }
    }

    fn stored(&self) -> Result<Option<Stored>, StorageError> {
        match self.snapshots.get(self.group.to_be_bytes()).map_err(|e| snapshot_err(ErrorVerb::Read, e))? {
            None => Ok(None),
            Some(v) => decode(&v).map(Some).map_err(|e| snapshot_err(ErrorVerb::Read, e)),
        }
    }

    /// Replaces every partition with the image in `data`, and the applied state with `meta`'s.
    fn restore(&mut self, meta: &SnapshotMeta<NodeId, BasicNode>, data: &[u8]) -> Result<(), StorageError> {
        if data.first() != Some(&IMAGE_FORMAT) {
            return Err(snapshot_err(
                ErrorVerb::Read,
                format!(
                    "the snapshot is of another format than this build's ({IMAGE_FORMAT}): it was written by an \
                     earlier build; start this member on an empty --data-dir and let it catch up from the others"
                ),
            ));
        }
        let image: Image = decode(data).map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
        if let Some((id, _)) = image.partitions.iter().find(|(id, _)| self.part(*id).is_none()) {
            return Err(snapshot_err(
                ErrorVerb::Read,
                format!("the snapshot holds partition {id}, which group {} does not", self.group),
            ));
        }
        let mut by_id: std::collections::HashMap<u32, PartitionDump> = image.partitions.into_iter().collect();
        for p in self.held.of_these(&self.partitions) {
            let dump = by_id.remove(&p.id).unwrap_or_default();
            // The node's version store learns the image's versions too (history, cold reads).
            for (ptr, (versions, _, _)) in &dump.pointers {
                for v in versions {
                    self.observer.installed(
                        &v.txn,
                        &v.trace_id,
                        v.version,
                        &[(ptr.clone(), v.value.clone())],
                    );
                }
            }
            p.restore(dump);
        }
        // The pins and the horizon live on the first partition: only its group's image
        // carries them.
        if let Some(first) = self.part(0) {
            self.observer.pins_restored(&first.pins());
            self.observer.horizon(first.cluster_horizon());
        }
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }
}

/// Writes `snapshot` as the group's current one, durably.
fn store(db: &Database, snapshots: &Keyspace, group: GroupId, snapshot: &Stored) -> Result<(), StorageError> {
    let bytes = encode(snapshot).map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
    snapshots.insert(group.to_be_bytes(), bytes).map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
    db.persist(PersistMode::SyncAll).map_err(|e| snapshot_err(ErrorVerb::Write, e))
}

/// Builds a snapshot from an image taken between two applies.
pub struct Builder {
    image: Image,
    id: String,
    group: GroupId,
    db: Database,
    snapshots: Keyspace,
}

impl RaftSnapshotBuilder<Restm> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Restm>, StorageError> {
        let data = encode(&self.image).map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        let meta = SnapshotMeta {
            last_log_id: self.image.last_applied,
            last_membership: self.image.membership.clone(),
            snapshot_id: self.id.clone(),
        };
        let stored = Stored { meta, data };
        store(&self.db, &self.snapshots, self.group, &stored)?;
        Ok(Snapshot { meta: stored.meta, snapshot: Box::new(stored.data) })
    }
}

impl RaftStateMachine<Restm> for PartitionMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Option<Outcome>>>, StorageError>
    where
        I: IntoIterator<Item = Entry<Restm>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            out.push(match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    Vec::new()
                }
                EntryPayload::Normal(batch) => batch
                    .commands
                    .iter()
                    .map(|p| match self.part(p.partition) {
                        Some(part) => {
                            let span = p.parent.map(|parent| {
                                let span = tracing::debug_span!(
                                    "raft.apply",
                                    otel.kind = "consumer",
                                    restm.group = self.group,
                                    restm.partition = p.partition,
                                    restm.command = p.command.kind(),
                                    restm.txn = p.command.txn().map(|t| &**t),
                                    raft.index = entry.log_id.index,
                                );
                                crate::telemetry::set_parent_to(&span, &parent);
                                span
                            });
                            let _entered = span.as_ref().map(tracing::Span::enter);
                            Some(apply_observed(part, &p.command, &*self.observer))
                        }
                        None => {
                            // Proposers check the partition first; a command for another is
                            // skipped the same way on every replica.
                            tracing::error!(
                                group = self.group,
                                partition = p.partition,
                                "command for a partition the group does not hold"
                            );
                            None
                        }
                    })
                    .collect(),
            });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.taken += 1;
        let id = match self.last_applied {
            Some(l) => format!("{}-{}-{}-{}", self.group, l.leader_id.term, l.index, self.taken),
            None => format!("{}-none-{}", self.group, self.taken),
        };
        Builder {
            image: self.image(),
            id,
            group: self.group,
            db: self.db.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Vec<u8>>, StorageError> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Vec<u8>>,
    ) -> Result<(), StorageError> {
        self.restore(meta, &snapshot)?;
        store(&self.db, &self.snapshots, self.group, &Stored { meta: meta.clone(), data: *snapshot })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Restm>>, StorageError> {
        Ok(self.stored()?.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(s.data) }))
    }
}
