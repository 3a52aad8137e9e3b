//! `restm bench`: load against a running node, measured from outside, the way etcd's
//! `benchmark` and `redis-benchmark` measure theirs.
//!
//! `restm bench <workload>` runs one workload ([`Workload`]) from `--clients` concurrent
//! loops for `--duration` (or `--count` operations) after a warm-up, and prints ops/s,
//! latency percentiles, the abort rate and retries (and writes them as JSON with `--json`).
//! With `--against-etcd URL` it runs the closest equivalent against etcd's v3 JSON gateway
//! right after, and prints the ratio. `restm bench suite` runs them all and checks the
//! project's performance targets, each a ratio taken in the same run. `restm bench soak` is
//! the garbage-collection soak ([`soak`]).

mod etcd;
mod restm;

/// A node to put load on.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Base URL of the node.
    pub target: String,
    /// Bearer token.
    pub token: Option<String>,
}
mod run;
pub mod soak;

use std::path::PathBuf;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use rand::Rng;
use serde::Serialize;
use serde_json::Value;

use run::{Report, Stop};

/// Characters left as they are in a path segment or query value.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

fn enc(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// What `restm bench` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// `GET /health`: the HTTP ceiling the other figures are compared with.
    Health,
    /// Read a random one of `--keys` pointers at the latest version.
    LatestRead,
    /// Read one pointer with `--versions` versions as of a random one of them.
    AsOfRead,
    /// A one-shot write of one random pointer (durable before the answer).
    Write,
    /// A one-shot transaction writing `--batch` random pointers.
    MultiWrite,
    /// Interactive read-modify-write of a random pointer: begin, get, put, commit.
    Rmw,
    /// Move 1..10 between two of `--keys` accounts in a transaction; checks at the end that
    /// the total is unchanged and no balance went negative.
    Bank,
    /// Every client increments the same pointer; checks the final count at the end.
    HotIncrement,
}

/// What `restm bench` does: one workload, all of them, or the GC soak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    One(Workload),
    /// Every workload (the hot increment with 1 and with 32 clients), then the targets.
    Suite,
    /// GC soak: one hot pointer and --cold cold ones written continuously; samples the
    /// node's memory and disk so you can see them level off (start the node with a short
    /// --retention, e.g. 10s).
    Soak,
}

/// Parses an [`Action`]: a workload's name, `suite` or `soak` (all listed in `--help`).
fn action_parser() -> impl clap::builder::TypedValueParser<Value = Action> {
    use clap::ValueEnum;
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    let mut names: Vec<PossibleValue> =
        Workload::value_variants().iter().filter_map(ValueEnum::to_possible_value).collect();
    names.push(PossibleValue::new("suite").help("every workload, then the targets (ratios of one run)"));
    names.push(
        PossibleValue::new("soak").help("GC soak: samples the node's memory and disk under steady writes"),
    );
    PossibleValuesParser::new(names).map(|name| match name.as_str() {
        "suite" => Action::Suite,
        "soak" => Action::Soak,
        _ => Workload::value_variants()
            .iter()
            .copied()
            .find(|w| w.to_possible_value().is_some_and(|p| p.matches(&name, false)))
            // Unreachable: the parser above only lets the listed names through.
            .map_or(Action::Suite, Action::One),
    })
}

/// Options of `restm bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The workload.
    #[arg(value_parser = action_parser())]
    pub action: Action,
    /// Base URL of the node.
    #[arg(long, env = "RESTM_URL", default_value = "http://127.0.0.1:7070")]
    pub target: String,
    /// Every member of a cluster (client URLs, comma-separated), instead of `--target`:
    /// requests go to each member in turn, and an as-of read also runs against the leader
    /// alone (`as-of-read/leader`), so follower reads compare with leader-only ones.
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with = "target")]
    pub cluster: Vec<String>,
    /// Bearer token.
    #[arg(long, env = "RESTM_AUTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Concurrent clients (default 16; 8 for soak).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub clients: Option<u64>,
    /// Measured time per workload (default 10s; 5m for soak).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Measure this many operations instead of a duration.
    #[arg(long, conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Unmeasured run before each measurement.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Pointers (or accounts) the workload spreads over: fewer means more contention.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(2..=10_000_000))]
    pub keys: u64,
    /// Bytes of each written value (a JSON string).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub value_size: u64,
    /// Pointers per multi-write.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub batch: u64,
    /// Versions written to the as-of-read pointer first.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub versions: u64,
    /// Read-modify-writes (rmw, bank, hot-increment) read with plain snapshot reads and
    /// retry when they lose at commit, instead of locking reads (`X-reSTM-Lock: update`),
    /// which queue on the lock.
    #[arg(long)]
    pub optimistic: bool,
    /// Also run each workload against this etcd (v3 JSON gateway, e.g. http://127.0.0.1:2379);
    /// several endpoints (comma-separated) of an etcd cluster take requests in turn.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub against_etcd: Vec<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Soak: cold pointers (`soak/cold/<n>`), written at random.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub cold: u64,
    /// Soak: share of writes that go to the hot pointer (`soak/hot`).
    #[arg(long, default_value_t = 0.5)]
    pub hot_share: f64,
    /// Soak: how often to sample the node.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub sample: Duration,
}

/// What every workload's set-up needs.
pub struct Setup {
    /// Pointers of this run live under `bench/<tag>/`.
    pub tag: String,
    pub keys: u64,
    pub value: Value,
    pub batch: u64,
    pub versions: u64,
    pub clients: u64,
    /// reSTM read-modify-writes use locking reads.
    pub lock_reads: bool,
}

/// The bank's accounts: `bench/<tag>/acct/<i, 8 digits>`, each opened with
/// [`Accounts::OPENING`].
#[derive(Debug, Clone)]
pub struct Accounts {
    pub prefix: String,
    pub count: u64,
}

impl Accounts {
    pub const OPENING: i64 = 1000;

    pub fn new(tag: &str, count: u64) -> Self {
        Self { prefix: format!("bench/{tag}/acct/"), count }
    }

    pub fn name(&self, i: u64) -> String {
        format!("{}{i:08}", self.prefix)
    }

    /// A random transfer: two distinct accounts and an amount of 1..=10.
    pub fn pick(&self) -> (String, String, i64) {
        let [a, b] = <[u64; 2]>::try_from(restm::distinct(2, self.count)).unwrap_or([0, 1]);
        (self.name(a), self.name(b), rand::rng().random_range(1..=10))
    }

    /// The end check: every account is there, none is negative, and the total is unchanged.
    pub fn audit(&self, balances: &[i64]) -> Result<String, String> {
        let (sum, min) = (balances.iter().sum::<i64>(), balances.iter().copied().min().unwrap_or(0));
        let want = self.count as i64 * Self::OPENING;
        if balances.len() as u64 == self.count && sum == want && min >= 0 {
            Ok(format!("{} accounts sum to {sum}, none negative", self.count))
        } else {
            Err(format!("{} accounts sum to {sum} (want {want}), lowest {min}", balances.len()))
        }
    }
}

/// The hot increment's end check: the pointer counted every committed increment.
pub fn count_check(value: i64, commits: u64) -> Result<String, String> {
    if value == commits as i64 {
        Ok(format!("final value {value} = committed increments"))
    } else {
        Err(format!("final value {value} after {commits} committed increments"))
    }
}

/// A performance target: a ratio of two figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub ratio: f64,
    /// `>= bound` (or `<= bound` when `at_most`).
    pub bound: f64,
    pub at_most: bool,
    pub met: bool,
}

#[derive(Serialize)]
struct Output<'a> {
    runs: &'a [Report],
    targets: &'a [Target],
}

fn http_client(clients: u64) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(clients as usize * 2)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())
}

/// Runs `restm bench`.
pub async fn main(a: BenchArgs) -> Result<(), String> {
    let workload = match a.action {
        Action::Soak => return soak_main(a).await,
        Action::Suite => None,
        Action::One(w) => Some(w),
    };
    let clients = a.clients.unwrap_or(16);
    let on_cluster = !a.cluster.is_empty();
    let plan: Vec<(Workload, u64)> = match workload {
        Some(w) => vec![(w, clients)],
        None => vec![
            (Workload::Health, clients),
            (Workload::LatestRead, clients),
            (Workload::AsOfRead, clients),
            (Workload::Write, clients),
            (Workload::MultiWrite, clients),
            (Workload::Rmw, clients),
            (Workload::Bank, clients),
            (Workload::HotIncrement, 1),
            (Workload::HotIncrement, 32),
        ],
    };
    let http = http_client(clients.max(32))?;
    let bases = if on_cluster { a.cluster.clone() } else { vec![a.target.clone()] };
    let node = restm::Restm::new(http.clone(), &bases, a.token.clone());
    let etcd = (!a.against_etcd.is_empty()).then(|| etcd::Etcd::new(http.clone(), &a.against_etcd));
    let leader = match on_cluster {
        true => {
            Some(node.leader().await.ok_or("no member of --cluster names a leader it can be reached at")?)
        }
        false => None,
    };
    let stop = match a.count {
        Some(n) => Stop::Count(n),
        None => Stop::After(a.duration.unwrap_or(Duration::from_secs(10))),
    };
    let mut reports: Vec<Report> = Vec::new();
    println!("{}", header());
    for (w, clients) in plan {
        let setup = || Setup {
            tag: format!("{:08x}", rand::rng().random::<u32>()),
            keys: a.keys,
            value: Value::String("x".repeat(a.value_size as usize)),
            batch: a.batch,
            versions: a.versions,
            clients,
            lock_reads: !a.optimistic,
        };
        let name = label(w, clients, workload.is_none());
        let prepared = restm::prepare(&node, w, &setup()).await?;
        let ours = finish("restm", &name, clients, a.warmup, stop, prepared).await?;
        println!("{}", row(&ours));
        reports.push(ours);
        if let (Workload::AsOfRead, Some(leader)) = (w, &leader) {
            // The same reads, all sent to the leader.
            let prepared = restm::prepare(&node.only(leader), w, &setup()).await?;
            let alone = finish("restm", &format!("{name}/leader"), clients, a.warmup, stop, prepared).await?;
            println!("{}", row(&alone));
            let spread = &reports[reports.len() - 1];
            println!(
                "  spread over members / leader alone: throughput {:.2}x",
                spread.ops_per_s / alone.ops_per_s
            );
            reports.push(alone);
        }
        if let Some(etcd) = &etcd {
            let prepared = etcd::prepare(etcd, w, &setup()).await?;
            let theirs = finish("etcd", &name, clients, a.warmup, stop, prepared).await?;
            println!("{}", row(&theirs));
            let ours = &reports[reports.len() - 1];
            println!(
                "  restm/etcd: throughput {:.2}x, p50 latency {:.2}x, p99 latency {:.2}x",
                ours.ops_per_s / theirs.ops_per_s,
                ours.p50_ms / theirs.p50_ms,
                ours.p99_ms / theirs.p99_ms
            );
            reports.push(theirs);
        }
    }
    for r in reports.iter().filter(|r| r.errors > 0) {
        println!(
            "{} {}: {} operations failed; first: {}",
            r.system,
            r.workload,
            r.errors,
            r.first_error.as_deref().unwrap_or("?")
        );
    }
    for r in reports.iter().filter_map(|r| r.check.as_ref().map(|c| (r, c))) {
        println!("{} {}: {}", r.0.system, r.0.workload, r.1);
    }
    let targets = if workload.is_none() { targets(&reports, on_cluster) } else { Vec::new() };
    if !targets.is_empty() {
        println!("\ntargets (ratios within this run):");
        for t in &targets {
            let op = if t.at_most { "<=" } else { ">=" };
            let verdict = if t.met { "met" } else { "MISSED" };
            println!("  {:<58} {:>8.3}  (target {op} {})  {verdict}", t.name, t.ratio, t.bound);
        }
    }
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&Output { runs: &reports, targets: &targets })
            .map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn label(w: Workload, clients: u64, suite: bool) -> String {
    let name = serde_json::to_value(w).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    if suite && w == Workload::HotIncrement { format!("{name}/{clients}") } else { name }
}

async fn finish(
    system: &str,
    name: &str,
    clients: u64,
    warmup: Duration,
    stop: Stop,
    prepared: run::Prepared,
) -> Result<Report, String> {
    let mut report = run::measure(system, name, clients, warmup, stop, prepared.op).await;
    if let Some(check) = prepared.check {
        report.check =
            Some(check().await.map_err(|e| format!("{system} {name}: the end check failed: {e}"))?);
    }
    Ok(report)
}

fn header() -> String {
    format!(
        "{:<6} {:<18} {:>7} {:>9} {:>10} {:>8} {:>8} {:>8} {:>7} {:>8} {:>6}",
        "system",
        "workload",
        "clients",
        "ops",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "abort%",
        "retries",
        "errors"
    )
}

fn row(r: &Report) -> String {
    format!(
        "{:<6} {:<18} {:>7} {:>9} {:>10.0} {:>8.3} {:>8.3} {:>8.3} {:>7.2} {:>8} {:>6}",
        r.system,
        r.workload,
        r.clients,
        r.ops,
        r.ops_per_s,
        r.p50_ms,
        r.p99_ms,
        r.p999_ms,
        r.abort_rate * 100.0,
        r.retries,
        r.errors
    )
}

/// The project's targets, from a suite's reports (and the cluster's, on a cluster).
fn targets(reports: &[Report], on_cluster: bool) -> Vec<Target> {
    let get =
        |system: &str, workload: &str| reports.iter().find(|r| r.system == system && r.workload == workload);
    let mut out = Vec::new();
    let mut push = |name: &str, ratio: Option<f64>, bound: f64, at_most: bool| {
        if let Some(ratio) = ratio {
            let met = if at_most { ratio <= bound } else { ratio >= bound };
            out.push(Target { name: name.to_string(), ratio, bound, at_most, met });
        }
    };
    let ops = |s: &str, w: &str| get(s, w).map(|r| r.ops_per_s);
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
    push(
        "latest read ops/s / health ops/s",
        ratio(ops("restm", "latest-read"), ops("restm", "health")),
        0.6,
        false,
    );
    push(
        "durable single write ops/s / etcd put ops/s",
        ratio(ops("restm", "write"), ops("etcd", "write")),
        1.0,
        false,
    );
    push(
        "interactive rmw ops/s / latest read ops/s",
        ratio(ops("restm", "rmw"), ops("restm", "latest-read")),
        0.2,
        false,
    );
    push(
        "as-of read p50 / latest read p50 (10k versions)",
        ratio(get("restm", "as-of-read").map(|r| r.p50_ms), get("restm", "latest-read").map(|r| r.p50_ms)),
        1.5,
        true,
    );
    push(
        "hot increment goodput, 32 clients / 1 client",
        ratio(ops("restm", "hot-increment/32"), ops("restm", "hot-increment/1")),
        1.0,
        false,
    );
    if on_cluster {
        push(
            "cluster: replicated durable write ops/s / etcd cluster put ops/s",
            ratio(ops("restm", "write"), ops("etcd", "write")),
            2.0,
            false,
        );
        push(
            "cluster: latest read ops/s / etcd cluster range ops/s",
            ratio(ops("restm", "latest-read"), ops("etcd", "latest-read")),
            5.0,
            false,
        );
        push(
            "cluster: as-of read over members ops/s / leader alone ops/s",
            ratio(ops("restm", "as-of-read"), ops("restm", "as-of-read/leader")),
            1.5,
            false,
        );
    }
    out
}

async fn soak_main(a: BenchArgs) -> Result<(), String> {
    soak::soak(soak::SoakArgs {
        target: Endpoint { target: a.target, token: a.token },
        duration: a.duration.unwrap_or(Duration::from_secs(300)),
        clients: a.clients.unwrap_or(8),
        cold: a.cold,
        hot_share: a.hot_share,
        value_size: a.value_size,
        sample: a.sample,
        json: a.json,
    })
    .await
}
