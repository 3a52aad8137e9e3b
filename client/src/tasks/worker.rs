//! A worker: claims ready tasks whose handler it has, runs them while renewing their
//! lease, records each outcome, and reaps tasks whose worker died.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;
use tracing::Instrument;

use super::model::{Outcome, Task};
use super::store::{Claim, Tasks};
use crate::Client;

/// What a handler gets: the task, which run of it this is, and its dependencies' results.
#[derive(Debug, Clone)]
pub struct TaskCtx {
    pub tasks: Tasks,
    pub task: Task,
    /// Which run of the task this is; a re-run after a lost lease has a higher one. Name
    /// side outputs with it so that two runs never overwrite each other.
    pub run: u32,
    /// Results of [`Task::deps`], in order (for a continuation: its subtasks' results).
    pub deps: Vec<Value>,
}

impl TaskCtx {
    /// The task's input, decoded.
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_value(self.task.input.clone())
            .map_err(|e| format!("bad input for {}: {e}", self.task.handler))
    }

    pub fn client(&self) -> &Client {
        self.tasks.client()
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Outcome, String>> + Send>>;
type Handler = Arc<dyn Fn(TaskCtx) -> BoxFuture + Send + Sync>;

/// Counts of what a worker did.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Runs whose outcome was recorded (done, spawned or failed).
    pub recorded: AtomicU64,
    /// Runs that ended in an error (then retried or failed).
    pub errors: AtomicU64,
    /// Runs abandoned because the lease was lost.
    pub lost: AtomicU64,
    /// Other workers' tasks taken back after their lease expired.
    pub reaped: AtomicU64,
}

/// A worker process's engine (see [`crate::tasks`]).
pub struct Worker {
    tasks: Tasks,
    name: String,
    handlers: HashMap<String, Handler>,
    lease: Duration,
    concurrency: usize,
    idle_poll: Duration,
    stats: Arc<WorkerStats>,
}

impl Worker {
    /// A worker called `name` (unique among live workers) on `tasks`.
    pub fn new(tasks: Tasks, name: impl Into<String>) -> Self {
        Self {
            tasks: Self::short_txns(tasks),
            name: name.into(),
            handlers: HashMap::new(),
            lease: Duration::from_secs(10),
            concurrency: 2,
            idle_poll: Duration::from_millis(200),
            stats: Arc::default(),
        }
    }

    /// Registers the handler for tasks named `name`.
    pub fn handler<F, Fut>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(TaskCtx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Outcome, String>> + Send + 'static,
    {
        self.handlers.insert(name.to_string(), Arc::new(move |ctx| Box::pin(f(ctx))));
        self
    }

    /// How long a claim lasts without renewal (renewed every third of it; default 10 s).
    /// A dead worker's tasks run again this long after its last renewal.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(30));
        self
    }

    /// The engine's transactions are a few quick requests. Should this process die in the
    /// middle of one, the node must release its locks soon, not after the default 30 s
    /// transaction timeout (which would stall every other worker on those tasks).
    fn short_txns(tasks: Tasks) -> Tasks {
        let client = tasks.client().clone().with_txn_timeout(Duration::from_secs(2));
        Tasks::new(client, tasks.namespace())
    }

    /// Tasks run at once (default 2).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Longest pause between looks for work when there is none (default 200 ms).
    pub fn idle_poll(mut self, d: Duration) -> Self {
        self.idle_poll = d.max(Duration::from_millis(1));
        self
    }

    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` completes, then finishes the runs in hand and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let this = Arc::new(self);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut slots = Vec::new();
        for _ in 0..this.concurrency {
            let (w, stop) = (this.clone(), stop_rx.clone());
            slots.push(tokio::spawn(async move { w.slot(stop).await }));
        }
        let reaper = {
            let (w, stop) = (this.clone(), stop_rx.clone());
            tokio::spawn(async move { w.reaper(stop).await })
        };
        shutdown.await;
        tracing::info!(worker = %this.name, "stopping: finishing the runs in hand");
        let _ = stop_tx.send(true);
        for s in slots {
            let _ = s.await;
        }
        let _ = reaper.await;
    }

    fn lease_ms(&self) -> u64 {
        self.lease.as_millis() as u64
    }

    async fn slot(&self, mut stop: watch::Receiver<bool>) {
        let mut idle = Duration::from_millis(5);
        while !*stop.borrow() {
            let claimed =
                self.tasks.claim(&self.name, self.lease_ms(), |h| self.handlers.contains_key(h)).await;
            match claimed {
                Ok(Some(claim)) => {
                    idle = Duration::from_millis(5);
                    self.execute(claim).await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(worker = %self.name, error = %e, "cannot claim work"),
            }
            // Nothing to do: look again soon, less often the longer it stays idle.
            tokio::select! {
                _ = tokio::time::sleep(idle) => {}
                _ = stop.changed() => {}
            }
            idle = (idle * 2).min(self.idle_poll);
        }
    }

    async fn reaper(&self, mut stop: watch::Receiver<bool>) {
        let every = self.lease / 2;
        while !*stop.borrow() {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            match self.tasks.reap().await {
                Ok(ids) => {
                    self.stats.reaped.fetch_add(ids.len() as u64, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(worker = %self.name, error = %e, "cannot reap expired leases"),
            }
        }
    }

    /// Runs one claimed task to its recorded outcome, renewing the lease meanwhile.
    async fn execute(&self, claim: Claim) {
        let span = tracing::info_span!("task", task = %claim.task.id, handler = %claim.task.handler, run = claim.lease.run);
        self.execute_in_span(claim).instrument(span).await
    }

    async fn execute_in_span(&self, claim: Claim) {
        let Some(handler) = self.handlers.get(&claim.task.handler).cloned() else { return };
        let outcome = match self.tasks.dep_results(&claim.task).await {
            Ok(deps) => {
                let ctx = TaskCtx {
                    tasks: self.tasks.clone(),
                    task: claim.task.clone(),
                    run: claim.lease.run,
                    deps,
                };
                // Its own tokio task, so that a panicking handler is an error, not a crash.
                let mut run = tokio::spawn(handler(ctx));
                let mut renew = tokio::time::interval(self.lease / 3);
                renew.tick().await;
                loop {
                    tokio::select! {
                        out = &mut run => {
                            break out.unwrap_or_else(|e| Err(format!("handler panicked: {e}")));
                        }
                        _ = renew.tick() => match self.tasks.renew(&claim, self.lease_ms()).await {
                            Ok(true) => {}
                            Ok(false) => {
                                run.abort();
                                self.stats.lost.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!("lease lost; abandoning the run");
                                return;
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot renew the lease"),
                        },
                    }
                }
            }
            Err(e) => Err(format!("cannot read the dependencies' results: {e}")),
        };
        if outcome.is_err() {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        match self.tasks.finish(&claim, outcome).await {
            Ok(true) => {
                self.stats.recorded.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("lease lost before the outcome was recorded; another run owns the task");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot record the outcome; the task runs again when its lease expires")
            }
        }
    }
}
