//! `GET /metrics`: Prometheus (OpenMetrics text) metrics of a node, all prefixed `restm_`.
//!
//! Counters that follow engine activity (commits, aborts by reason, conflicts) are fed by
//! the engine's event sink; lock waits are timed by the node; request latency by an HTTP
//! middleware; gauges (active txns, oldest txn age, versions in memory and on disk, event
//! subscribers) are read when scraped.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine::events::{EngineEvent, EventKind, EventSink};

type Labels = Vec<(String, String)>;

/// Labels of `restm_http_request_duration_seconds`, made once per request: the route
/// template, the method (a static name for the standard ones) and the status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: std::borrow::Cow<'static, str>,
    status: u16,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Gauges read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub active_txns: i64,
    pub oldest_txn_age_seconds: f64,
    pub pointers_in_memory: i64,
    pub versions_in_memory: i64,
    pub versions_on_disk: i64,
    pub disk_bytes: i64,
    pub event_subscribers: i64,
    pub events_lagged_total: u64,
    pub gc_horizon: i64,
    pub gc_watermark_lag_seconds: f64,
    /// What holds the watermark: kind (`retention`, `latest`, `txn`, `pin`, `horizon`) and id.
    pub gc_held_by: (&'static str, String),
    pub memory_bytes: i64,
    pub memory_budget_bytes: i64,
    pub pressure_level: i64,
    /// The data group as this member sees it (`None` off a cluster).
    pub raft: Option<RaftGauges>,
}

/// The data group's state for the gauges, read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct RaftGauges {
    pub term: i64,
    pub is_leader: bool,
    pub last_log_index: i64,
    pub applied_index: i64,
    /// Per follower (leader only): entries it trails the leader's log by.
    pub follower_lag: Vec<(u64, i64)>,
    /// How far the most lagging partition's closed timestamp trails this node's clock.
    pub closed_lag_seconds: f64,
    /// Frames this node sent on its peer connections, and the flushes they went out in.
    pub peer_frames: u64,
    pub peer_flushes: u64,
}

/// The process's resident memory (`VmRSS`), on Linux.
pub fn resident_bytes() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<i64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    commits: Counter,
    aborts: Family<Labels, Counter>,
    conflicts: Counter,
    lock_wait: Histogram,
    requests: Family<RequestLabels, Histogram, fn() -> Histogram>,
    active_txns: Gauge,
    oldest_txn_age: Gauge<f64, AtomicU64>,
    pointers_mem: Gauge,
    versions_mem: Gauge,
    versions_disk: Gauge,
    disk_bytes: Gauge,
    subscribers: Gauge,
    lagged: Counter,
    gc_versions: Family<Labels, Counter>,
    gc_bytes: Family<Labels, Counter>,
    gc_removed: Counter,
    gc_horizon: Gauge,
    gc_lag: Gauge<f64, AtomicU64>,
    gc_holder: Family<Labels, Gauge>,
    memory: Gauge,
    rss: Gauge,
    memory_budget: Gauge,
    pressure: Gauge,
    raft_proposals: Family<Labels, Counter>,
    raft_read_confirmations: Family<Labels, Counter>,
    raft_propose: Histogram,
    raft_leader_changes: Counter,
    raft_read_index_rounds: Counter,
    raft_read_index_reads: Counter,
    raft_elections: Counter,
    raft_handovers: Family<Labels, Counter>,
    raft_term: Gauge,
    raft_leader: Gauge,
    raft_last_log: Gauge,
    raft_applied: Gauge,
    raft_closed_lag: Gauge<f64, AtomicU64>,
    raft_lag: Family<Labels, Gauge>,
    peer_frames: Counter,
    peer_flushes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            commits: Counter::default(),
            aborts: Family::default(),
            conflicts: Counter::default(),
            lock_wait: latency_histogram(),
            requests: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            active_txns: Gauge::default(),
            oldest_txn_age: Gauge::default(),
            pointers_mem: Gauge::default(),
            versions_mem: Gauge::default(),
            versions_disk: Gauge::default(),
            disk_bytes: Gauge::default(),
            subscribers: Gauge::default(),
            lagged: Counter::default(),
            gc_versions: Family::default(),
            gc_bytes: Family::default(),
            gc_removed: Counter::default(),
            gc_horizon: Gauge::default(),
            gc_lag: Gauge::default(),
            gc_holder: Family::default(),
            memory: Gauge::default(),
            rss: Gauge::default(),
            memory_budget: Gauge::default(),
            pressure: Gauge::default(),
            raft_proposals: Family::default(),
            raft_read_confirmations: Family::default(),
            raft_propose: latency_histogram(),
            raft_leader_changes: Counter::default(),
            raft_read_index_rounds: Counter::default(),
            raft_read_index_reads: Counter::default(),
            raft_elections: Counter::default(),
            raft_handovers: Family::default(),
            raft_term: Gauge::default(),
            raft_leader: Gauge::default(),
            raft_last_log: Gauge::default(),
            raft_applied: Gauge::default(),
            raft_closed_lag: Gauge::default(),
            raft_lag: Family::default(),
            peer_frames: Counter::default(),
            peer_flushes: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("restm_commits", "Transactions committed", m.commits.clone());
        registry.register("restm_aborts", "Transactions aborted, by reason", m.aborts.clone());
        registry.register(
            "restm_conflicts",
            "Serialization conflicts (a txn lost to another)",
            m.conflicts.clone(),
        );
        registry.register(
            "restm_lock_wait_seconds",
            "Time writes waited for another txn's lock",
            m.lock_wait.clone(),
        );
        registry.register(
            "restm_http_request_duration_seconds",
            "HTTP request latency by route, method and status",
            m.requests.clone(),
        );
        registry.register("restm_active_txns", "Transactions active now", m.active_txns.clone());
        registry.register(
            "restm_oldest_active_txn_age_seconds",
            "Age of the oldest active transaction",
            m.oldest_txn_age.clone(),
        );
        registry.register("restm_pointers_in_memory", "Pointers held in memory", m.pointers_mem.clone());
        registry.register("restm_versions_in_memory", "Versions held in memory", m.versions_mem.clone());
        registry.register(
            "restm_versions_on_disk",
            "Versions stored in fjall (approximate)",
            m.versions_disk.clone(),
        );
        registry.register("restm_disk_bytes", "Bytes the data directory uses", m.disk_bytes.clone());
        registry.register("restm_event_subscribers", "Subscribers of /events", m.subscribers.clone());
        registry.register(
            "restm_events_lagged",
            "Events subscribers missed by falling behind",
            m.lagged.clone(),
        );
        registry.register(
            "restm_gc_versions_pruned",
            "Versions garbage-collected, from memory and from disk",
            m.gc_versions.clone(),
        );
        registry.register(
            "restm_gc_bytes_reclaimed",
            "Bytes garbage-collected: values in memory, keys and values on disk",
            m.gc_bytes.clone(),
        );
        registry.register(
            "restm_gc_pointers_removed",
            "Deleted pointers removed entirely once their tombstone fell below the watermark",
            m.gc_removed.clone(),
        );
        registry.register("restm_gc_horizon", "Oldest version a read may ask for", m.gc_horizon.clone());
        registry.register(
            "restm_gc_watermark_lag_seconds",
            "How far the GC watermark is behind now",
            m.gc_lag.clone(),
        );
        registry.register(
            "restm_gc_watermark_holder",
            "What holds the watermark back (1 for the current holder): retention, latest, txn, pin or horizon",
            m.gc_holder.clone(),
        );
        registry.register(
            "restm_memory_bytes",
            "Memory the engine holds for pointers and versions in memory (its own accounting)",
            m.memory.clone(),
        );
        registry.register(
            "restm_process_resident_bytes",
            "Resident memory of the node process (VmRSS)",
            m.rss.clone(),
        );
        registry.register(
            "restm_memory_budget_bytes",
            "The memory budget (0: none)",
            m.memory_budget.clone(),
        );
        registry.register(
            "restm_memory_pressure_level",
            "Memory pressure: 0 low, 1 high, 2 critical",
            m.pressure.clone(),
        );
        registry.register(
            "restm_raft_proposals",
            "Entries this member proposed to the data group's log, by outcome (ok, error, timeout)",
            m.raft_proposals.clone(),
        );
        registry.register(
            "restm_raft_read_confirmations",
            "Latest reads the leader confirmed it still leads for, by how: under its lease, or by a \
             heartbeat round to a majority",
            m.raft_read_confirmations.clone(),
        );
        registry.register(
            "restm_raft_propose_duration_seconds",
            "From proposing an entry to a majority holding it fsynced and this member applying it",
            m.raft_propose.clone(),
        );
        registry.register(
            "restm_raft_read_index_rounds",
            "Read-index rounds this member asked a group's leader for, before latest reads it serves",
            m.raft_read_index_rounds.clone(),
        );
        registry.register(
            "restm_raft_read_index_reads",
            "Latest reads those rounds served (reads that came in while a round was out share the next)",
            m.raft_read_index_reads.clone(),
        );
        registry.register(
            "restm_raft_leader_changes",
            "Times this member saw the data group's leader change",
            m.raft_leader_changes.clone(),
        );
        registry.register(
            "restm_raft_elections",
            "Elections this member started (it became a candidate)",
            m.raft_elections.clone(),
        );
        registry.register(
            "restm_raft_leader_handovers",
            "Leads this member handed to another to balance the leaders, by outcome: moved (the chosen \
             member leads), elsewhere (another does), kept (this member still leads) or refused (the \
             handover did not begin)",
            m.raft_handovers.clone(),
        );
        registry.register(
            "restm_peer_frames",
            "Frames (Raft messages of every group, forwarded requests, their answers) this member \
             sent on its peer connections",
            m.peer_frames.clone(),
        );
        registry.register(
            "restm_peer_flushes",
            "Flushes those frames went out in: every frame queued on a connection when its writer \
             wakes shares one, so frames / flushes is how many one write to the socket carried",
            m.peer_flushes.clone(),
        );
        registry.register("restm_raft_term", "The data group's current term", m.raft_term.clone());
        registry.register(
            "restm_raft_is_leader",
            "1 while this member leads the data group",
            m.raft_leader.clone(),
        );
        registry.register(
            "restm_raft_last_log_index",
            "The last index in this member's log",
            m.raft_last_log.clone(),
        );
        registry.register(
            "restm_raft_applied_index",
            "The last index this member applied",
            m.raft_applied.clone(),
        );
        registry.register(
            "restm_closed_timestamp_lag_seconds",
            "How far the most lagging partition's closed timestamp trails this node's clock: \
             reads with X-reSTM-At older than this are served here, without the leader",
            m.raft_closed_lag.clone(),
        );
        registry.register(
            "restm_raft_follower_lag_entries",
            "Entries each follower trails the leader's log by (on the leader)",
            m.raft_lag.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Records one proposal to the data group's log: `outcome` and how long it took.
    pub fn observe_proposal(&self, outcome: &'static str, seconds: f64) {
        self.raft_proposals.get_or_create(&vec![("outcome".to_string(), outcome.to_string())]).inc();
        self.raft_propose.observe(seconds);
    }

    /// Records how a latest read's confirmation of the lead went (`lease` or `round`).
    pub fn observe_read_confirmation(&self, via: &'static str) {
        self.raft_read_confirmations.get_or_create(&vec![("via".to_string(), via.to_string())]).inc();
    }

    /// Records a read-index round that served `reads` reads.
    pub fn observe_read_index_round(&self, reads: usize) {
        self.raft_read_index_rounds.inc();
        self.raft_read_index_reads.inc_by(reads as u64);
    }

    /// Records that the leader this member knows changed.
    pub fn observe_leader_change(&self) {
        self.raft_leader_changes.inc();
    }

    /// Records how a handover of a lead this member held ended.
    pub fn observe_handover(&self, outcome: &str) {
        self.raft_handovers.get_or_create(&vec![("outcome".to_string(), outcome.to_string())]).inc();
    }

    /// Records that this member started an election.
    pub fn observe_election(&self) {
        self.raft_elections.inc();
    }

    /// Records how long a write waited for a lock.
    pub fn observe_lock_wait(&self, seconds: f64) {
        self.lock_wait.observe(seconds);
    }

    /// Records a garbage-collection pass.
    pub fn observe_gc(
        &self,
        versions_mem: u64,
        bytes_mem: u64,
        versions_disk: u64,
        bytes_disk: u64,
        removed: u64,
    ) {
        let at = |w: &str| vec![("where".to_string(), w.to_string())];
        self.gc_versions.get_or_create(&at("memory")).inc_by(versions_mem);
        self.gc_versions.get_or_create(&at("disk")).inc_by(versions_disk);
        self.gc_bytes.get_or_create(&at("memory")).inc_by(bytes_mem);
        self.gc_bytes.get_or_create(&at("disk")).inc_by(bytes_disk);
        self.gc_removed.inc_by(removed);
    }

    /// Records one HTTP request.
    pub fn observe_request(&self, route: &str, method: &axum::http::Method, status: u16, seconds: f64) {
        use axum::http::Method;
        let method = match *method {
            Method::GET => "GET".into(),
            Method::PUT => "PUT".into(),
            Method::POST => "POST".into(),
            Method::DELETE => "DELETE".into(),
            ref other => other.as_str().to_string().into(),
        };
        let labels = RequestLabels { route: route.to_string(), method, status };
        self.requests.get_or_create(&labels).observe(seconds);
    }

    /// Renders the text exposition with the gauges set from `snap`.
    pub fn render(&self, snap: Snapshot) -> String {
        self.active_txns.set(snap.active_txns);
        self.oldest_txn_age.set(snap.oldest_txn_age_seconds);
        self.pointers_mem.set(snap.pointers_in_memory);
        self.versions_mem.set(snap.versions_in_memory);
        self.versions_disk.set(snap.versions_on_disk);
        self.disk_bytes.set(snap.disk_bytes);
        self.subscribers.set(snap.event_subscribers);
        self.gc_horizon.set(snap.gc_horizon);
        self.gc_lag.set(snap.gc_watermark_lag_seconds);
        self.memory.set(snap.memory_bytes);
        self.rss.set(resident_bytes());
        self.memory_budget.set(snap.memory_budget_bytes);
        self.pressure.set(snap.pressure_level);
        if let Some(r) = &snap.raft {
            self.raft_term.set(r.term);
            self.raft_leader.set(i64::from(r.is_leader));
            self.raft_last_log.set(r.last_log_index);
            self.raft_applied.set(r.applied_index);
            self.raft_closed_lag.set(r.closed_lag_seconds);
            for (counter, total) in [(&self.peer_frames, r.peer_frames), (&self.peer_flushes, r.peer_flushes)]
            {
                let seen = counter.get();
                if total > seen {
                    counter.inc_by(total - seen);
                }
            }
            self.raft_lag.clear();
            for (node, lag) in &r.follower_lag {
                self.raft_lag.get_or_create(&vec![("node".to_string(), node.to_string())]).set(*lag);
            }
        }
        self.gc_holder.clear();
        let (kind, id) = &snap.gc_held_by;
        self.gc_holder
            .get_or_create(&vec![("kind".into(), kind.to_string()), ("id".into(), id.clone())])
            .set(1);
        let seen = self.lagged.get();
        if snap.events_lagged_total > seen {
            self.lagged.inc_by(snap.events_lagged_total - seen);
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl EventSink for Metrics {
    fn emit(&self, event: EngineEvent) {
        match event.kind {
            EventKind::Commit => {
                self.commits.inc();
            }
            EventKind::Abort => {
                let reason = event.code.unwrap_or("unknown").to_string();
                self.aborts.get_or_create(&vec![("reason".to_string(), reason)]).inc();
            }
            EventKind::Conflict => {
                self.conflicts.inc();
            }
            _ => {}
        }
    }
}
