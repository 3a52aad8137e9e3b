//! A node: the engine, its store and the group committer, driven asynchronously. It is
//! the one door into reSTM: HTTP (and anything else that serves clients) calls only [`Node`],
//! whose parts are private.
//!
//! The engine never blocks: where it would wait (for a lock, or for a prepared commit a read
//! must see) it hands back a listener. The node does the waiting, with the lock timeout,
//! makes prepared commits durable before they are installed, and runs the lease reaper and
//! garbage collection. Transactions live in [`txn`], garbage collection and pins in [`gc`].

mod gc;
mod replicated;
mod txn;

pub use gc::GcTotals;
pub use txn::Precondition;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::clock::Clock;
use crate::engine::clock::SystemClock;
use crate::engine::events::{EventSink, Tee};
use crate::engine::pressure::Pressure;
use crate::engine::{Engine, EngineConfig, EngineError, StorageError, Txn, VersionRec};
use crate::metrics::Metrics;
use crate::storage::group_commit::{Committer, DirectCommitter, GroupCommitter};
use crate::storage::{Durability, SharedStore, Store};

/// Settings of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// Partition count for a new data directory (`None`: 64, or what the directory has).
    pub partitions: Option<u32>,
    pub engine: EngineConfig,
    /// Longest a write waits for another transaction's lock.
    pub lock_timeout: Duration,
    /// Longest a read waits for a prepared commit it must see to land.
    pub prepared_wait: Duration,
    pub durability: Durability,
    /// How often expired leases are looked for.
    pub reap_every: Duration,
    /// How often garbage collection looks for history below the watermark (and memory
    /// pressure is measured).
    pub gc_every: Duration,
    /// Memory the engine may hold, in bytes (0: no budget, no pressure levels).
    pub memory_budget: u64,
}

/// What a node runs on besides its data directory. A real node reads the system clock and
/// commits through the group-commit thread; the seeded simulation gives it a clock of its
/// own, a store with faults, and a committer that runs in the simulation's task.
pub struct NodeEnv {
    pub clock: Arc<dyn Clock>,
    /// Wraps the opened store (with faults, in tests).
    pub wrap_store: Box<dyn FnOnce(Store) -> SharedStore>,
    pub committer: CommitMode,
}

/// How commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitMode {
    /// The group-commit thread: many commits share one batch and one fsync.
    Group,
    /// In the committing task itself, one at a time (no thread: for simulation).
    Direct,
}

impl NodeEnv {
    /// The system clock, the store as it is, and group commit.
    pub fn real() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            wrap_store: Box::new(|s| Arc::new(s)),
            committer: CommitMode::Group,
        }
    }
}

/// A running node.
pub struct Node {
    engine: Arc<Engine>,
    store: SharedStore,
    committer: Arc<dyn Committer>,
    config: NodeConfig,
    metrics: Arc<Metrics>,
    /// Transactions waiting for a lock now: txn → (pointer, since when, in ms).
    waits: dashmap::DashMap<crate::engine::TxnId, (crate::engine::PtrId, u64)>,
    gc: parking_lot::Mutex<GcTotals>,
    /// The horizon the last completed pass pruned to; a pass with nothing new skips the walk.
    pruned_to: std::sync::atomic::AtomicU64,
    /// The store's database (a replicated node keeps its Raft log in it).
    database: Option<fjall::Database>,
    /// The cluster, when the node's partitions are replicated.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

impl Node {
    /// Opens the data directory, recovers, and starts the committer.
    pub fn open(
        config: NodeConfig,
        events: Arc<dyn EventSink>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Node>, StorageError> {
        Self::open_in(config, events, metrics, NodeEnv::real())
    }

    /// Opens the data directory and runs the node over `wrap(store)`: a test wraps the real
    /// store in one that injects faults (`storage::fault`).
    pub fn open_with(
        config: NodeConfig,
        events: Arc<dyn EventSink>,
        metrics: Arc<Metrics>,
        wrap: impl FnOnce(Store) -> SharedStore + 'static,
    ) -> Result<Arc<Node>, StorageError> {
        Self::open_in(config, events, metrics, NodeEnv { wrap_store: Box::new(wrap), ..NodeEnv::real() })
    }

    /// Opens the data directory in `env`: the clock, the store and the committer.
    pub fn open_in(
        config: NodeConfig,
        events: Arc<dyn EventSink>,
        metrics: Arc<Metrics>,
        env: NodeEnv,
    ) -> Result<Arc<Node>, StorageError> {
        Self::assemble(config, events, metrics, env, true)
    }

    /// Opens the store and builds the node; `recover`: load the store's newest versions into
    /// the partitions (a replicated node's come from its log instead).
    fn assemble(
        mut config: NodeConfig,
        events: Arc<dyn EventSink>,
        metrics: Arc<Metrics>,
        env: NodeEnv,
        recover: bool,
    ) -> Result<Arc<Node>, StorageError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| StorageError::backend("creating the data directory", e))?;
        let started = std::time::Instant::now();
        let (store, recovered) =
            Store::open(&config.data_dir, config.partitions, config.engine.hot_versions)?;
        tracing::info!(
            pointers = recovered.pointers.len(),
            versions = recovered.versions,
            partitions = recovered.partitions,
            resolved_committed = recovered.resolved_committed,
            resolved_aborted = recovered.resolved_aborted,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered data directory"
        );
        config.engine.partitions = recovered.partitions;
        let (horizon, pins) = store.gc_state()?;
        let database = Some(store.database());
        let pointers = if recover { recovered.pointers } else { Vec::new() };
        let store = (env.wrap_store)(store);
        let engine = Arc::new(
            Engine::new(config.engine.clone(), env.clock, store.clone(), pointers, recovered.max_version)
                .with_events(Arc::new(Tee(vec![events, metrics.clone()])))
                .with_gc_state(horizon, pins),
        );
        let committer: Arc<dyn Committer> = match env.committer {
            CommitMode::Group => Arc::new(
                GroupCommitter::start(store.clone(), config.durability)
                    .map_err(|e| StorageError::backend("starting the commit thread", e))?,
            ),
            CommitMode::Direct => Arc::new(DirectCommitter::new(store.clone(), config.durability)),
        };
        Ok(Arc::new(Node {
            engine,
            store,
            committer,
            config,
            metrics,
            waits: Default::default(),
            gc: Default::default(),
            pruned_to: Default::default(),
            cluster: Default::default(),
            database,
        }))
    }

    /// Opens the data directory as a member of a cluster: the partitions start empty and
    /// are rebuilt by the data group's snapshot and log (the version store keeps history and
    /// cold versions), and commits go through the log.
    pub async fn open_cluster(
        mut config: NodeConfig,
        events: Arc<dyn EventSink>,
        metrics: Arc<Metrics>,
        cluster: crate::cluster::ClusterConfig,
    ) -> Result<Arc<Node>, crate::cluster::ClusterError> {
        config.engine.node_id = Some(cluster.node_id);
        let node = Self::assemble(config, events, metrics, NodeEnv::real(), false)?;
        let observer = Arc::new(replicated::StoreObserver {
            store: node.store.clone(),
            engine: Arc::downgrade(&node.engine),
        });
        let db = node.database.clone().ok_or_else(|| {
            crate::cluster::ClusterError::Storage(StorageError::backend(
                "opening the raft log",
                "no database",
            ))
        })?;
        let c = crate::cluster::Cluster::start(
            cluster,
            db,
            node.engine.shared_partitions(),
            observer,
            node.metrics.clone(),
        )
        .await?;
        let _ = node.cluster.set(c.clone());
        if c.coordinates_anywhere() {
            // The locks an aborted txn took at other members go with it.
            let weak = Arc::downgrade(&c);
            node.engine.on_abort_release(Box::new(move |txn, ptrs| {
                if let (Some(c), Ok(_)) = (weak.upgrade(), tokio::runtime::Handle::try_current()) {
                    c.unlock_at_leaders(txn, ptrs);
                }
            }));
        }
        node.spawn_resolver(c.clone());
        node.spawn_closer(c.clone());
        node.spawn_leadership_watch(c);
        Ok(node)
    }

    /// Starts the background task that aborts transactions whose lease ran out.
    pub fn spawn_reaper(self: &Arc<Self>) {
        crate::every::spawn_every(self, self.config.reap_every, |node: Arc<Node>| async move {
            for id in node.engine.reap_expired() {
                tracing::info!(txn = %id, "aborted: lease expired");
            }
        });
    }

    /// Why the node stopped taking writes, if it did.
    pub fn fenced(&self) -> Option<&StorageError> {
        self.committer.fenced()
    }

    // ------------------------------------------------------------ what clients may ask

    /// The newest version any read can see right now: a fresh snapshot.
    pub fn now_version(&self) -> u64 {
        self.engine.now_version()
    }

    /// How many partitions the pointers hash to.
    pub fn partition_count(&self) -> u32 {
        self.engine.partition_count() as u32
    }

    /// Physical milliseconds of the node's clock.
    pub fn now_millis(&self) -> u64 {
        self.engine.now_millis()
    }

    /// Checks that version `at` is not in the future, and returns it.
    pub fn check_at(&self, at: u64) -> Result<u64, EngineError> {
        self.engine.check_at(at)
    }

    /// The partition `ptr` hashes to.
    pub fn partition_of(&self, ptr: &str) -> u32 {
        self.engine.partition_of(ptr)
    }

    /// The closed timestamp of `ptr`'s partition here: a read at or below it needs no
    /// leader (0 on a cluster of one, which never closes).
    pub fn closed_for(&self, ptr: &str) -> u64 {
        self.engine.closed_for(ptr)
    }

    /// Refuses a read at `at` below the GC horizon.
    pub fn check_horizon(&self, at: u64) -> Result<(), EngineError> {
        self.engine.check_horizon(at)
    }

    /// The longest lease a client may ask for.
    pub fn max_timeout_ms(&self) -> u64 {
        self.engine.config().max_timeout_ms
    }

    /// All active transactions.
    pub fn active_txns(&self) -> Vec<Arc<Txn>> {
        self.engine.active_txns()
    }

    /// Pointers and hot versions held in memory.
    pub fn memory_stats(&self) -> (usize, usize) {
        self.engine.memory_stats()
    }

    /// Memory the pointers and their hot versions cost, by the engine's accounting.
    pub fn memory_bytes(&self) -> u64 {
        self.engine.memory_bytes()
    }

    /// The memory budget (0: none).
    pub fn memory_budget(&self) -> u64 {
        self.config.memory_budget
    }

    /// The memory-pressure level.
    pub fn pressure(&self) -> Pressure {
        self.engine.pressure()
    }

    /// Versions stored on disk, approximately.
    pub fn versions_on_disk(&self) -> usize {
        self.store.approximate_versions()
    }

    /// Bytes on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.store.disk_bytes()
    }

    /// Versions of `ptr` after `after` and up to `upto`, ascending, at most `limit`; whether
    /// more follow; and whether the pointer was ever written at all. Read from disk on a
    /// blocking thread.
    pub async fn history(
        &self,
        ptr: &str,
        after: Option<u64>,
        upto: u64,
        limit: usize,
    ) -> Result<(Vec<VersionRec>, bool, bool), EngineError> {
        let store = self.store.clone();
        let ptr = ptr.to_string();
        tokio::task::spawn_blocking(move || {
            let (versions, more) = store.history(&ptr, after, upto, limit)?;
            let written = !versions.is_empty() || store.ever_written(&ptr)?;
            Ok::<_, StorageError>((versions, more, written))
        })
        .await
        .map_err(|e| EngineError::Storage(StorageError::backend("a history task", e)))?
        .map_err(EngineError::Storage)
    }
}
