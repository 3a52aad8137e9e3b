//! The task engine's transactions: create, claim, renew, finish and reap. Each is one
//! serializable transaction over the pointers the module docs list, so a task changes
//! state exactly once however many workers race for it.

use rand::Rng;
use rand::seq::SliceRandom;
use serde_json::Value;

use super::model::{Lease, Outcome, Status, Task, TaskSpec};
use crate::{Client, Error, Txn};

/// Node time, in Unix milliseconds, of a transaction's snapshot.
fn now_ms(tx: &Txn) -> u64 {
    restm_shared::version_millis(tx.read_version())
}

/// The task engine in one namespace of pointers.
#[derive(Debug, Clone)]
pub struct Tasks {
    client: Client,
    ns: String,
}

/// A task a worker has claimed: its record and its lease.
#[derive(Debug, Clone)]
pub struct Claim {
    pub task: Task,
    pub lease: Lease,
}

impl Tasks {
    /// Tasks under `ns/` (e.g. `tasks`).
    pub fn new(client: Client, ns: impl Into<String>) -> Self {
        Self { client, ns: ns.into().trim_end_matches('/').to_string() }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// The pointer holding task `id`.
    pub fn task_ptr(&self, id: &str) -> String {
        format!("{}/task/{id}", self.ns)
    }

    fn lease_ptr(&self, id: &str) -> String {
        format!("{}/lease/{id}", self.ns)
    }

    fn index_prefix(&self, status: Status) -> String {
        format!("{}/status/{status}/", self.ns)
    }

    fn index_ptr(&self, status: Status, id: &str) -> String {
        format!("{}{id}", self.index_prefix(status))
    }

    async fn load(&self, tx: &Txn, id: &str) -> Result<Task, Error> {
        tx.get::<Task>(&self.task_ptr(id))
            .await?
            .ok_or_else(|| Error::Invariant(format!("task {id} is referenced but absent")))
    }

    /// Writes `task`, moving its status marker when the status changed from `was`.
    async fn save(&self, tx: &Txn, task: &mut Task, was: Option<Status>) -> Result<(), Error> {
        task.updated_ms = now_ms(tx);
        tx.put(&self.task_ptr(&task.id), task).await?;
        if was != Some(task.status) {
            if let Some(was) = was {
                tx.delete(&self.index_ptr(was, &task.id)).await?;
            }
            let marker = serde_json::json!({ "handler": task.handler });
            tx.put(&self.index_ptr(task.status, &task.id), &marker).await?;
        }
        Ok(())
    }

    /// Creates a task inside `tx`; returns its id. A dependency that failed fails it at
    /// once; one not yet done holds it `waiting`.
    pub async fn create(&self, tx: &Txn, spec: TaskSpec, parent: Option<&str>) -> Result<String, Error> {
        let id = format!("{:016x}", rand::rng().random::<u64>());
        let now = now_ms(tx);
        let mut task = Task {
            id: id.clone(),
            handler: spec.handler,
            input: spec.input,
            status: Status::Ready,
            parent: parent.map(str::to_string),
            deps: spec.deps.clone(),
            waiting_on: 0,
            dependents: Vec::new(),
            children: Vec::new(),
            result: None,
            error: None,
            attempts: 0,
            max_attempts: spec.max_attempts.max(1),
            runs: 0,
            worker: None,
            created_ms: now,
            updated_ms: now,
        };
        for dep_id in &spec.deps {
            let mut dep = tx
                .get::<Task>(&self.task_ptr(dep_id))
                .await?
                .ok_or_else(|| Error::User(format!("dependency {dep_id} is not a task")))?;
            match dep.status {
                Status::Done => {}
                Status::Failed => {
                    task.status = Status::Failed;
                    task.error = Some(format!("dependency {dep_id} failed"));
                }
                _ => {
                    dep.dependents.push(id.clone());
                    let was = dep.status;
                    self.save(tx, &mut dep, Some(was)).await?;
                    task.waiting_on += 1;
                }
            }
        }
        if task.status != Status::Failed && task.waiting_on > 0 {
            task.status = Status::Waiting;
        }
        self.save(tx, &mut task, None).await?;
        Ok(id)
    }

    /// Submits a task in a transaction of its own; returns its id.
    pub async fn submit(&self, spec: TaskSpec) -> Result<String, Error> {
        self.client
            .transact(|tx| {
                let spec = spec.clone();
                async move { self.create(&tx, spec, None).await }
            })
            .await
    }

    /// Task `id` as it is now.
    pub async fn get(&self, id: &str) -> Result<Option<Task>, Error> {
        self.client.get(&self.task_ptr(id)).await
    }

    /// Ids of the tasks in `status` (by id), at most `limit`, with their handler.
    pub async fn ids(&self, status: Status, limit: usize) -> Result<Vec<(String, String)>, Error> {
        let prefix = self.index_prefix(status);
        let entries = self.client.list_all(&prefix, None, limit).await?;
        Ok(entries
            .into_iter()
            .map(|e| {
                let handler = serde_json::from_str::<Value>(e.value.get())
                    .ok()
                    .and_then(|v| v.get("handler").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_default();
                (e.ptr[prefix.len()..].to_string(), handler)
            })
            .collect())
    }

    /// The tasks in `status`, at most `limit`.
    pub async fn list(&self, status: Status, limit: usize) -> Result<Vec<Task>, Error> {
        let mut out = Vec::new();
        for (id, _) in self.ids(status, limit).await? {
            // A task may move on between the listing and the read; show where it is now.
            if let Some(t) = self.get(&id).await? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Claims one ready task whose handler `accepts`, for `lease_ms`; `None` when there
    /// is none. Candidates are tried in random order, so workers spread over them.
    pub async fn claim(
        &self,
        worker: &str,
        lease_ms: u64,
        accepts: impl Fn(&str) -> bool,
    ) -> Result<Option<Claim>, Error> {
        let mut ready: Vec<String> = self
            .ids(Status::Ready, 64)
            .await?
            .into_iter()
            .filter(|(_, h)| accepts(h))
            .map(|(id, _)| id)
            .collect();
        ready.shuffle(&mut rand::rng());
        for id in ready {
            let claimed = self
                .client
                .transact(|tx| {
                    let id = id.clone();
                    async move {
                        let Some(mut task) = tx.get::<Task>(&self.task_ptr(&id)).await? else {
                            return Ok(None);
                        };
                        if task.status != Status::Ready {
                            return Ok(None);
                        }
                        task.status = Status::Running;
                        task.attempts += 1;
                        task.runs += 1;
                        task.worker = Some(worker.to_string());
                        let lease = Lease {
                            worker: worker.to_string(),
                            run: task.runs,
                            expires_ms: now_ms(&tx) + lease_ms,
                        };
                        tx.put(&self.lease_ptr(&id), &lease).await?;
                        self.save(&tx, &mut task, Some(Status::Ready)).await?;
                        Ok(Some(Claim { task, lease }))
                    }
                })
                .await?;
            if claimed.is_some() {
                return Ok(claimed);
            }
        }
        Ok(None)
    }

    /// Reads the lease of `claim` inside `tx`: `Some` while it is still the holder's.
    async fn held(&self, tx: &Txn, claim: &Claim) -> Result<Option<Lease>, Error> {
        let lease = tx.get::<Lease>(&self.lease_ptr(&claim.task.id)).await?;
        Ok(lease.filter(|l| l.worker == claim.lease.worker && l.run == claim.lease.run))
    }

    /// Extends the lease by `lease_ms` from now; `false` when it is lost (reaped).
    pub async fn renew(&self, claim: &Claim, lease_ms: u64) -> Result<bool, Error> {
        self.client
            .transact(|tx| async move {
                let Some(mut lease) = self.held(&tx, claim).await? else { return Ok(false) };
                lease.expires_ms = now_ms(&tx) + lease_ms;
                tx.put(&self.lease_ptr(&claim.task.id), &lease).await?;
                Ok(true)
            })
            .await
    }

    /// Records how a run ended. Only the lease holder can: `false` when the lease was lost
    /// and another run owns the task now, so each result is recorded exactly once.
    pub async fn finish(&self, claim: &Claim, outcome: Result<Outcome, String>) -> Result<bool, Error> {
        self.client
            .transact(|tx| {
                let outcome = outcome.clone();
                async move {
                    if self.held(&tx, claim).await?.is_none() {
                        return Ok(false);
                    }
                    let mut task = self.load(&tx, &claim.task.id).await?;
                    tx.delete(&self.lease_ptr(&task.id)).await?;
                    match outcome {
                        Ok(Outcome::Done(result)) => {
                            task.status = Status::Done;
                            task.result = Some(result);
                            self.save(&tx, &mut task, Some(Status::Running)).await?;
                            self.notify(&tx, &task).await?;
                        }
                        Ok(Outcome::Spawn { children, then: (handler, input) }) => {
                            let mut ids = Vec::with_capacity(children.len());
                            for spec in children {
                                ids.push(self.create(&tx, spec, Some(&task.id)).await?);
                            }
                            // The children were just made, so none is done: wait for all.
                            // (A child may be failed already if its own deps were.)
                            let mut waiting = 0;
                            for child in &ids {
                                let mut c = self.load(&tx, child).await?;
                                if c.status == Status::Failed {
                                    task.status = Status::Failed;
                                    task.error = Some(format!("subtask {child} failed"));
                                } else {
                                    c.dependents.push(task.id.clone());
                                    let was = c.status;
                                    self.save(&tx, &mut c, Some(was)).await?;
                                    waiting += 1;
                                }
                            }
                            task.children.extend(ids.iter().cloned());
                            task.deps = ids;
                            task.handler = handler;
                            task.input = input;
                            task.attempts = 0;
                            task.waiting_on = waiting;
                            if task.status != Status::Failed {
                                task.status = if waiting == 0 { Status::Ready } else { Status::Waiting };
                            }
                            self.save(&tx, &mut task, Some(Status::Running)).await?;
                            if task.status == Status::Failed {
                                self.notify(&tx, &task).await?;
                            }
                        }
                        Err(error) => {
                            task.error = Some(error);
                            self.retry_or_fail(&tx, &mut task).await?;
                        }
                    }
                    Ok(true)
                }
            })
            .await
    }

    /// After a failed run: ready again while attempts remain, failed (and its dependents
    /// told) when they are spent.
    async fn retry_or_fail(&self, tx: &Txn, task: &mut Task) -> Result<(), Error> {
        task.status = if task.attempts < task.max_attempts { Status::Ready } else { Status::Failed };
        self.save(tx, task, Some(Status::Running)).await?;
        if task.status == Status::Failed {
            self.notify(tx, task).await?;
        }
        Ok(())
    }

    /// Tells the dependents of a finished task: each waits on one fewer, and is ready when
    /// none is left; a failure fails them too, and so on down the graph.
    async fn notify(&self, tx: &Txn, finished: &Task) -> Result<(), Error> {
        let mut work = vec![(finished.id.clone(), finished.status, finished.dependents.clone())];
        while let Some((from, status, dependents)) = work.pop() {
            for id in dependents {
                let mut d = self.load(tx, &id).await?;
                if d.status != Status::Waiting {
                    continue;
                }
                if status == Status::Failed {
                    d.status = Status::Failed;
                    d.error = Some(format!("dependency {from} failed"));
                    work.push((d.id.clone(), Status::Failed, d.dependents.clone()));
                } else {
                    d.waiting_on = d.waiting_on.saturating_sub(1);
                    if d.waiting_on == 0 {
                        d.status = Status::Ready;
                    }
                }
                self.save(tx, &mut d, Some(Status::Waiting)).await?;
            }
        }
        Ok(())
    }

    /// Takes back every running task whose lease ran out by node time (its worker died or
    /// stalled): ready again, or failed when its attempts are spent. Returns their ids.
    pub async fn reap(&self) -> Result<Vec<String>, Error> {
        let mut reaped = Vec::new();
        for (id, _) in self.ids(Status::Running, 1000).await? {
            let took = self
                .client
                .transact(|tx| {
                    let id = id.clone();
                    async move {
                        let Some(mut task) = tx.get::<Task>(&self.task_ptr(&id)).await? else {
                            return Ok(false);
                        };
                        if task.status != Status::Running {
                            return Ok(false);
                        }
                        let lease = tx.get::<Lease>(&self.lease_ptr(&id)).await?;
                        if let Some(l) = &lease {
                            if l.expires_ms > now_ms(&tx) {
                                return Ok(false);
                            }
                            tx.delete(&self.lease_ptr(&id)).await?;
                        }
                        let who = lease.map(|l| l.worker).unwrap_or_else(|| "?".into());
                        task.error = Some(format!("lease of worker {who} expired during run {}", task.runs));
                        self.retry_or_fail(&tx, &mut task).await?;
                        Ok(true)
                    }
                })
                .await?;
            if took {
                tracing::info!(task = %id, "reaped a task whose lease expired");
                reaped.push(id);
            }
        }
        Ok(reaped)
    }

    /// The results of `task`'s dependencies, in order (all are done when it runs).
    pub async fn dep_results(&self, task: &Task) -> Result<Vec<Value>, Error> {
        let mut out = Vec::with_capacity(task.deps.len());
        for id in &task.deps {
            let dep =
                self.get(id).await?.ok_or_else(|| Error::Invariant(format!("dependency {id} is absent")))?;
            match (dep.status, dep.result) {
                (Status::Done, Some(r)) => out.push(r),
                (status, _) => {
                    return Err(Error::Invariant(format!(
                        "dependency {id} is {status}, not done, yet {} runs",
                        task.id
                    )));
                }
            }
        }
        Ok(out)
    }
}
