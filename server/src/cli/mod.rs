//! The `restm` command line: `serve` starts a node; `get`, `put`, `del` and `history` talk
//! to one, so a user need not hand-write curl; `worker` and `tasks` drive the task engine.

pub mod client;
pub mod cluster;
pub mod demo;
pub mod tasks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::cluster::ClusterConfig;
use crate::cluster::membership::Join;
use crate::engine::EngineConfig;
use crate::http::ServeConfig;
use crate::node::NodeConfig;
use crate::raft::replica::Timing;
use crate::storage::Durability;

/// reSTM: a distributed software transactional memory over HTTP.
#[derive(Debug, Parser)]
#[command(name = "restm", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a node with embedded persistence.
    Serve(Box<ServeArgs>),
    /// Read a pointer (optionally as of a past moment).
    Get(client::GetArgs),
    /// Write a JSON value to a pointer.
    Put(client::PutArgs),
    /// Delete a pointer.
    Del(client::DelArgs),
    /// List a pointer's versions.
    History(client::HistoryArgs),
    /// Tail the live event stream.
    Events(client::EventsArgs),
    /// Run a task-engine worker (with the built-in merge-sort handlers).
    Worker(tasks::WorkerArgs),
    /// List, show and submit tasks; run the merge-sort example.
    #[command(subcommand)]
    Tasks(tasks::TasksCommand),
    /// Put load on a node and measure it (optionally against etcd).
    Bench(restm_bench::BenchArgs),
    /// Start a local cluster (3 members by default) and print its addresses.
    Demo(demo::DemoArgs),
    /// Look at a cluster: `restm cluster status`.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

/// Options of `restm serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "RESTM_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Directory of the embedded fjall store.
    #[arg(long, env = "RESTM_DATA_DIR", default_value = "./restm-data")]
    pub data_dir: PathBuf,
    /// Bearer token every request must carry (required to listen on a non-loopback address).
    #[arg(long, env = "RESTM_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Allow a non-loopback address without a token.
    #[arg(long)]
    pub insecure: bool,
    /// When a commit is acknowledged: `sync` after fsync (group commit), `async` before it.
    #[arg(long, env = "RESTM_DURABILITY", value_enum, default_value = "sync")]
    pub durability: DurabilityArg,
    /// Hash partitions of a new data directory (fixed once created; default 64).
    #[arg(long, env = "RESTM_PARTITIONS", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub partitions: Option<u32>,
    /// Longest a write waits for another transaction's lock before `409 lock-timeout`.
    #[arg(long, env = "RESTM_LOCK_TIMEOUT", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub lock_timeout: Duration,
    /// Default lease of a transaction, renewed by each request on it.
    #[arg(long, env = "RESTM_TXN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub txn_timeout: Duration,
    /// History kept behind now; older versions are garbage-collected unless an active
    /// transaction or a pin (`POST /pins`) still needs them. `0s` keeps only what those need.
    #[arg(long, env = "RESTM_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// Memory the engine may hold for pointers and their versions in memory: `256MiB`, `2GiB`,
    /// a byte count, or `off`. Default: half of the machine's memory. See "Garbage
    /// collection" in the README for the pressure levels.
    #[arg(long, env = "RESTM_MEMORY_BUDGET", default_value = "auto", value_parser = MemoryBudget::parse)]
    pub memory_budget: MemoryBudget,
    /// How often garbage collection runs.
    #[arg(long, env = "RESTM_GC_INTERVAL", default_value = "1s", value_parser = parse_gc_interval)]
    pub gc_interval: Duration,
    /// Versions of each pointer kept in memory; older ones are read from disk.
    #[arg(long, env = "RESTM_HOT_VERSIONS", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub hot_versions: u64,
    /// Events kept for subscribers resuming with `since`.
    #[arg(long, env = "RESTM_EVENT_BUFFER", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    pub event_buffer: u64,
    /// Events queued per subscriber before it is told it lagged.
    #[arg(long, env = "RESTM_EVENT_SUBSCRIBER_BUFFER", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub event_subscriber_buffer: u64,
    /// Largest request body in bytes.
    #[arg(long, env = "RESTM_MAX_BODY", default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Directory of the built explorer (index.html and pkg/), served at /ui/.
    /// `cargo xtask serve` builds it into target/ui and passes it here.
    #[arg(long, env = "RESTM_UI_DIR")]
    pub ui_dir: Option<PathBuf>,
    /// This node's id in its cluster. With --peer-listen and --initial-cluster, the node
    /// replicates its partitions with the other members; without them it is a cluster of one.
    #[arg(long, env = "RESTM_NODE_ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub node_id: Option<u64>,
    /// Where this node listens for its peers (Raft and forwarded requests).
    #[arg(long, env = "RESTM_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// The first members and the addresses peers dial them at, as etcd's flag of the same
    /// name: `1=http://127.0.0.1:7081,2=http://127.0.0.1:7082,3=http://127.0.0.1:7083`.
    #[arg(long, env = "RESTM_INITIAL_CLUSTER", value_parser = parse_initial_cluster, conflicts_with = "join")]
    pub initial_cluster: Option<InitialCluster>,
    /// Join a running cluster instead of forming one: the client URL of any member
    /// (`http://127.0.0.1:7071`), which adds this node to every group (a learner, then a
    /// voter once it has caught up). With --node-id and --peer-listen; a restart may pass
    /// it again.
    #[arg(long, env = "RESTM_JOIN")]
    pub join: Option<String>,
    /// The URL peers dial this node's peer port at (default: http:// and --peer-listen),
    /// as --join announces it.
    #[arg(long, env = "RESTM_ADVERTISE_PEER_URL")]
    pub advertise_peer_url: Option<String>,
    /// The secret every peer must present; required when --peer-listen is not loopback.
    #[arg(long, env = "RESTM_PEER_TOKEN", hide_env_values = true)]
    pub peer_token: Option<String>,
    /// The cluster's name: nodes of two clusters refuse each other.
    #[arg(long, env = "RESTM_CLUSTER_NAME", default_value = "restm")]
    pub cluster_name: String,
    /// The URL peers hand clients' requests on to (default: http:// and --listen, or
    /// https:// with --tls-cert).
    #[arg(long, env = "RESTM_ADVERTISE_CLIENT_URL")]
    pub advertise_client_url: Option<String>,
    /// PEM certificate (chain) to serve TLS with, on the client port and the peer port.
    #[arg(long, env = "RESTM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "RESTM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle that signs every member's certificate, trusted when this node dials a
    /// peer or hands a request on (default: --tls-cert itself, for one self-signed
    /// certificate shared by the cluster).
    #[arg(long, env = "RESTM_TLS_CA", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// How often a Raft leader heartbeats its followers, in milliseconds (as etcd's flag).
    #[arg(long, env = "RESTM_HEARTBEAT_INTERVAL", default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub heartbeat_interval: u64,
    /// How long followers go without a heartbeat before electing a new leader, in
    /// milliseconds (as etcd's flag); at least 2.5 × --heartbeat-interval. A dead leader is
    /// replaced 1.5–2 × this after its last heartbeat.
    #[arg(long, env = "RESTM_ELECTION_TIMEOUT", default_value_t = 700, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub election_timeout: u64,
    /// How many Raft groups share the partitions on a cluster (partition p in group p mod
    /// N, each with a leader of its own). Fixed when the data directory is created. With
    /// more than one, every member coordinates the transactions begun on it, and a commit
    /// is two-phase across the groups; with one, its leader coordinates them all.
    #[arg(long, env = "RESTM_GROUPS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub groups: u32,
    /// How often a member looks whether it leads more than its share of the groups (as
    /// after it restarted, when the others had taken its groups over) and hands one lead
    /// to the member that leads the fewest; `0s` never moves a lead. Only with --groups
    /// above 1.
    #[arg(long, env = "RESTM_REBALANCE_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub rebalance_interval: Duration,
}

/// `--initial-cluster`: member id → the address peers dial it at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialCluster(pub std::collections::BTreeMap<u64, String>);

fn parse_initial_cluster(s: &str) -> Result<InitialCluster, String> {
    let mut members = std::collections::BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, url) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not id=url (for example 1=http://127.0.0.1:7081)"))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|i| *i > 0)
            .ok_or_else(|| format!("{id:?} is not a node id (a whole number from 1)"))?;
        let addr = url.trim().trim_start_matches("http://").trim_start_matches("https://");
        let valid = addr.parse::<SocketAddr>().is_ok()
            || addr.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok()
            });
        if !valid {
            return Err(format!("{url:?} is not http://host:port"));
        }
        if members.insert(id, url.trim().to_string()).is_some() {
            return Err(format!("node {id} is named twice"));
        }
    }
    if members.is_empty() {
        return Err("name at least one member".into());
    }
    Ok(InitialCluster(members))
}

/// `--durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DurabilityArg {
    /// After the commit is fsynced (concurrent commits share one fsync).
    Sync,
    /// As soon as the commit is in the OS page cache; fsynced in the background every 100 ms.
    /// A process crash loses nothing acknowledged; a power loss may lose the last 100 ms.
    Async,
}

impl ServeArgs {
    /// The cluster flags, checked together: all of --node-id, --peer-listen and
    /// --initial-cluster (or --join), or none. With --join, the member to ask.
    fn cluster(&self) -> Result<Option<(ClusterConfig, Option<Join>)>, String> {
        let initial = match (&self.initial_cluster, &self.join) {
            (Some(initial), _) => Some(initial.0.clone()),
            (None, Some(_)) => Some(Default::default()),
            (None, None) => None,
        };
        let (id, peer, initial) = match (self.node_id, self.peer_listen, initial) {
            (None, None, None) => return Ok(None),
            (Some(id), Some(peer), Some(initial)) => (id, peer, initial),
            _ => {
                return Err(
                    "a cluster member needs all of --node-id, --peer-listen and --initial-cluster (or \
                            --join)"
                        .into(),
                );
            }
        };
        if self.join.is_none() && !initial.contains_key(&id) {
            return Err(format!("--initial-cluster does not name this node ({id})"));
        }
        // Peers dial, and hand clients on, over TLS when this node serves it.
        let scheme = if self.tls_cert.is_some() { "https" } else { "http" };
        let join = match &self.join {
            None => None,
            Some(url) => {
                let url = url.trim().trim_end_matches('/').to_string();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!("--join {url:?} is not a member's client URL (http://host:port)"));
                }
                let peer_url =
                    self.advertise_peer_url.clone().unwrap_or_else(|| format!("{scheme}://{peer}"));
                crate::cluster::membership::check_peer_url(&peer_url)
                    .map_err(|e| format!("--advertise-peer-url: {e}"))?;
                Some(Join { url, peer_url, token: self.auth_token.clone() })
            }
        };
        if self.peer_token.as_deref().is_some_and(str::is_empty) {
            return Err("--peer-token must not be empty".into());
        }
        if !peer.ip().is_loopback() && self.peer_token.is_none() {
            return Err(format!(
                "refusing to listen for peers on {peer} without --peer-token (or RESTM_PEER_TOKEN): anyone who \
                 can reach it could join the cluster"
            ));
        }
        let timing = Timing::new(
            Duration::from_millis(self.heartbeat_interval),
            Duration::from_millis(self.election_timeout),
        )?;
        if self.listen.ip().is_unspecified() && self.advertise_client_url.is_none() {
            return Err(format!(
                "--listen {} is every address: say with --advertise-client-url where peers reach this node's \
                 clients (for example http://restm1:7070)",
                self.listen
            ));
        }
        Ok(Some((
            ClusterConfig {
                node_id: id,
                name: self.cluster_name.clone(),
                peer_listen: peer,
                initial,
                token: self.peer_token.clone(),
                client_url: self
                    .advertise_client_url
                    .clone()
                    .unwrap_or_else(|| format!("{scheme}://{}", self.listen)),
                tls: None,
                timing,
                groups: crate::cluster::GroupCount::Of(self.groups),
                lock_wait: self.lock_timeout,
                rebalance: Some(self.rebalance_interval).filter(|d| !d.is_zero()),
            },
            join,
        )))
    }

    /// The node and listener these options describe.
    pub fn into_config(self) -> Result<ServeConfig, String> {
        let (cluster, join) = self.cluster()?.map_or((None, None), |(c, j)| (Some(c), j));
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles { cert, key, ca: self.tls_ca }),
            _ => None,
        };
        let node = NodeConfig {
            data_dir: self.data_dir,
            partitions: self.partitions,
            engine: EngineConfig {
                hot_versions: self.hot_versions as usize,
                default_timeout_ms: self.txn_timeout.as_millis() as u64,
                retention_ms: u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX),
                ..EngineConfig::default()
            },
            lock_timeout: self.lock_timeout,
            prepared_wait: Duration::from_secs(10),
            durability: match self.durability {
                DurabilityArg::Sync => Durability::Sync,
                DurabilityArg::Async => Durability::Async,
            },
            reap_every: Duration::from_millis(50),
            gc_every: self.gc_interval,
            memory_budget: self.memory_budget.bytes(),
        };
        Ok(ServeConfig {
            listen: self.listen,
            node,
            auth_token: self.auth_token,
            insecure: self.insecure,
            event_buffer: self.event_buffer as usize,
            event_subscriber_buffer: self.event_subscriber_buffer as usize,
            max_body: self.max_body,
            ui_dir: self.ui_dir,
            cluster,
            join,
            tls,
        })
    }
}

/// `--memory-budget`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryBudget {
    Off,
    /// Half of the machine's memory.
    Auto,
    Bytes(u64),
}

impl MemoryBudget {
    fn parse(s: &str) -> Result<MemoryBudget, String> {
        let s = s.trim();
        match s {
            "off" | "none" | "0" => return Ok(MemoryBudget::Off),
            "auto" => return Ok(MemoryBudget::Auto),
            _ => {}
        }
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size; use e.g. 512MiB, 2GiB or off"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "k" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            u => return Err(format!("unknown unit {u:?} in {s:?}; use B, KiB, MiB, GiB, KB, MB or GB")),
        };
        n.checked_mul(mult).map(MemoryBudget::Bytes).ok_or_else(|| format!("{s:?} is too large"))
    }

    /// The budget in bytes (0: none).
    pub fn bytes(self) -> u64 {
        match self {
            MemoryBudget::Off => 0,
            MemoryBudget::Bytes(b) => b,
            MemoryBudget::Auto => std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| {
                    let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
                    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                    Some(kib * 1024 / 2)
                })
                .unwrap_or(0),
        }
    }
}

fn parse_gc_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(10) { Err("must be at least 10ms".into()) } else { Ok(d) }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let instance = match &cli.command {
        Command::Serve(args) => args.node_id.map(|id| format!("node-{id}")),
        _ => None,
    };
    let telemetry = crate::telemetry::init(instance);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("restm: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => match args.into_config() {
                Ok(config) => crate::http::serve(config).await,
                Err(e) => Err(e),
            },
            Command::Get(args) => client::get(args).await,
            Command::Put(args) => client::put(args).await,
            Command::Del(args) => client::del(args).await,
            Command::History(args) => client::history(args).await,
            Command::Events(args) => client::events(args).await,
            Command::Worker(args) => tasks::worker(args).await,
            Command::Tasks(cmd) => tasks::run(cmd).await,
            Command::Bench(args) => restm_bench::main(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Cluster(cmd) => cluster::run(cmd).await,
        }
    });
    drop(telemetry);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("restm: {err}");
            ExitCode::FAILURE
        }
    }
}
