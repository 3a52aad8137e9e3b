//! `restm worker` and `restm tasks`: run the task engine's workers, and look at or submit
//! tasks, through the Rust SDK ([`restm_client::tasks`]).

use std::time::{Duration, Instant};

use restm_client::Client;
use restm_client::tasks::{Status, TaskSpec, Tasks, Worker, mergesort};

/// Where the node is.
#[derive(Debug, clap::Args)]
pub struct Conn {
    /// Base URL of the node.
    #[arg(long, env = "RESTM_URL", default_value = "http://127.0.0.1:7070")]
    pub target: String,
    /// Bearer token.
    #[arg(long, env = "RESTM_AUTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Namespace (pointer prefix) of the tasks.
    #[arg(long, default_value = "tasks")]
    pub ns: String,
}

impl Conn {
    fn tasks(&self) -> Result<Tasks, String> {
        let mut client = Client::new(&self.target).map_err(|e| e.to_string())?;
        if let Some(t) = &self.token {
            client = client.with_token(t);
        }
        Ok(Tasks::new(client, &self.ns))
    }
}

/// Options of `restm worker`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// This worker's name, unique among live workers (default: worker-<pid>).
    #[arg(long)]
    pub name: Option<String>,
    /// Tasks run at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,
    /// Lease of a claimed task, renewed every third of it; a dead worker's tasks run again
    /// this long after its last renewal.
    #[arg(long, default_value = "10s", value_parser = parse_lease)]
    pub lease: Duration,
}

fn parse_lease(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(30) { Err("must be at least 30ms".into()) } else { Ok(d) }
}

/// `restm tasks ...`
#[derive(Debug, clap::Subcommand)]
pub enum TasksCommand {
    /// List tasks in one status (by id), or a count per status.
    List {
        /// waiting, ready, running, done or failed; without it, counts per status.
        #[arg(long)]
        status: Option<Status>,
        /// Most tasks to list (default 100), or to count per status (default 100000).
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print a task's record as JSON.
    Show {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Submit a task; prints its id.
    Submit {
        /// The handler's name.
        handler: String,
        /// Its JSON input.
        #[arg(default_value = "null")]
        input: String,
        /// Ids of tasks it waits for (repeat the flag).
        #[arg(long = "after")]
        after: Vec<String>,
        #[arg(long, default_value_t = 3)]
        max_attempts: u32,
        #[command(flatten)]
        conn: Conn,
    },
    /// The worked example: sort random numbers with a merge-sort task graph run by the
    /// workers (`restm worker`), then check the result.
    Mergesort {
        /// How many numbers.
        #[arg(long, default_value_t = 100_000)]
        n: u64,
        /// Ranges of at most this many numbers are sorted by one task.
        #[arg(long, default_value_t = 2000)]
        leaf: u64,
        /// Simulated extra work per task run, in milliseconds.
        #[arg(long, default_value_t = 0)]
        work_ms: u64,
        /// Give up waiting after this long.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Runs a worker with the built-in handlers (the merge sort's) until Ctrl-C or SIGTERM.
pub async fn worker(a: WorkerArgs) -> Result<(), String> {
    let tasks = a.conn.tasks()?;
    let name = a.name.unwrap_or_else(|| format!("worker-{}", std::process::id()));
    tracing::info!(worker = %name, target = %a.conn.target, ns = %a.conn.ns, "worker started");
    let w = mergesort::register(Worker::new(tasks, name)).lease(a.lease).concurrency(a.concurrency as usize);
    w.run(shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

pub async fn run(cmd: TasksCommand) -> Result<(), String> {
    match cmd {
        TasksCommand::List { status: Some(status), limit, conn } => {
            let tasks = conn.tasks()?.list(status, limit.unwrap_or(100)).await.map_err(|e| e.to_string())?;
            println!(
                "{:<16}  {:<8}  {:<18}  {:>4}  {:<16}  PARENT",
                "ID", "STATUS", "HANDLER", "RUNS", "WORKER"
            );
            for t in tasks {
                println!(
                    "{:<16}  {:<8}  {:<18}  {:>4}  {:<16}  {}",
                    t.id,
                    t.status,
                    t.handler,
                    t.runs,
                    t.worker.as_deref().unwrap_or("-"),
                    t.parent.as_deref().unwrap_or("-")
                );
            }
            Ok(())
        }
        TasksCommand::List { status: None, limit, conn } => {
            let tasks = conn.tasks()?;
            let limit = limit.unwrap_or(100_000);
            for s in Status::ALL {
                let n = tasks.ids(s, limit).await.map_err(|e| e.to_string())?.len();
                let more = if n >= limit { "+" } else { "" };
                println!("{:<8} {n}{more}", s.as_str());
            }
            Ok(())
        }
        TasksCommand::Show { id, conn } => {
            let task = conn.tasks()?.get(&id).await.map_err(|e| e.to_string())?;
            let task = task.ok_or_else(|| format!("no task {id}"))?;
            println!("{}", serde_json::to_string_pretty(&task).map_err(|e| e.to_string())?);
            Ok(())
        }
        TasksCommand::Submit { handler, input, after, max_attempts, conn } => {
            let input = serde_json::from_str(&input).map_err(|e| format!("the input is not JSON: {e}"))?;
            let spec = TaskSpec::new(handler, input).after(after).max_attempts(max_attempts);
            let id = conn.tasks()?.submit(spec).await.map_err(|e| e.to_string())?;
            println!("{id}");
            Ok(())
        }
        TasksCommand::Mergesort { n, leaf, work_ms, timeout, conn } => {
            mergesort_cmd(conn, n, leaf, work_ms, timeout).await
        }
    }
}

async fn mergesort_cmd(conn: Conn, n: u64, leaf: u64, work_ms: u64, timeout: Duration) -> Result<(), String> {
    let tasks = conn.tasks()?;
    let started = Instant::now();
    let job = mergesort::submit(&tasks, n, leaf, work_ms).await.map_err(|e| e.to_string())?;
    println!(
        "job {} sorting {n} numbers; root task {} (watch: restm tasks list --ns {})",
        job.job, job.root, conn.ns
    );
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(200));
    let root = loop {
        let root = tasks.get(&job.root).await.map_err(|e| e.to_string())?.ok_or("the root task vanished")?;
        if root.status.is_final() {
            break root;
        }
        if started.elapsed() > timeout {
            bar.finish_and_clear();
            return Err(format!("not done after {timeout:?}: root is {}", root.status));
        }
        let running = tasks.ids(Status::Running, 1000).await.map_err(|e| e.to_string())?.len();
        let ready = tasks.ids(Status::Ready, 1000).await.map_err(|e| e.to_string())?.len();
        bar.set_message(format!("root {}; {running} running, {ready} ready", root.status));
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    bar.finish_and_clear();
    if root.status == Status::Failed {
        return Err(format!("the sort failed: {}", root.error.unwrap_or_default()));
    }
    let sorted = mergesort::verify(&tasks, &job).await.map_err(|e| e.to_string())?;
    println!(
        "sorted {} numbers in {:.2} s, checked against the input (first {:?}, last {:?})",
        sorted.len(),
        started.elapsed().as_secs_f64(),
        sorted.first(),
        sorted.last()
    );
    Ok(())
}
