//! The task engine against a real node: worker processes (`restm worker`) run a merge sort
//! of 100k numbers while one of them is killed; in-process workers show retries, failure
//! propagation and dependencies.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use restm_client::Client;
use restm_client::tasks::{Outcome, Status, Task, TaskSpec, Tasks, Worker, mergesort};
use restm_tests::{Node, restm_bin};
use serde_json::json;

/// A `restm worker` process, killed when dropped.
struct WorkerProc(Child);

impl WorkerProc {
    fn start(node: &Node, name: &str) -> Self {
        let child = Command::new(restm_bin())
            .args(["worker", "--target", &node.base, "--name", name, "--lease", "1s", "--concurrency", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn restm worker");
        Self(child)
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every value a pointer ever held, oldest first (deletions as `None`).
async fn values(c: &Client, ptr: &str) -> Vec<Option<serde_json::Value>> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = c.history(ptr, after.as_deref(), 1000).await.unwrap();
        out.extend(
            page.versions.into_iter().map(|v| v.value.map(|r| serde_json::from_str(r.get()).unwrap())),
        );
        match page.next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

async fn all_ptrs(c: &Client, prefix: &str) -> Vec<(String, serde_json::Value)> {
    let all = c.list_all(prefix, None, usize::MAX).await.unwrap();
    all.into_iter().map(|e| (e.ptr, serde_json::from_str(e.value.get()).unwrap())).collect()
}

async fn wait_final(tasks: &Tasks, id: &str, within: Duration) -> Task {
    let deadline = Instant::now() + within;
    loop {
        let t = tasks.get(id).await.unwrap().expect("task exists");
        if t.status.is_final() {
            return t;
        }
        assert!(Instant::now() < deadline, "task {id} still {} after {within:?}", t.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_merge_sort_of_100k_numbers_completes_after_a_worker_is_killed_mid_task() {
    let node = Node::start();
    let c = Client::new(&node.base).unwrap();
    let tasks = Tasks::new(c.clone(), "tasks");
    let _others = [WorkerProc::start(&node, "w2"), WorkerProc::start(&node, "w3")];
    // 60 ms of simulated work per run keeps tasks in flight long enough to kill one.
    let job = mergesort::submit(&tasks, 100_000, 2000, 60).await.unwrap();

    // Kill a worker (SIGKILL: no clean-up) while it holds a lease. The leases it held once
    // dead are the orphans; if it happened to hold none at the instant it died, start
    // another and try again.
    let leases_of = |name: String| {
        let c = c.clone();
        async move {
            all_ptrs(&c, "tasks/lease/")
                .await
                .into_iter()
                .filter(|(_, l)| l["worker"] == name.as_str())
                .map(|(p, _)| p["tasks/lease/".len()..].to_string())
                .collect::<Vec<String>>()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempt = 0;
    let (victim, orphans) = 'kill: loop {
        attempt += 1;
        let name = format!("victim{attempt}");
        let proc = WorkerProc::start(&node, &name);
        while leases_of(name.clone()).await.is_empty() {
            assert!(Instant::now() < deadline, "{name} never claimed a task");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(proc);
        let orphans = leases_of(name.clone()).await;
        if !orphans.is_empty() {
            break 'kill (name, orphans);
        }
        assert!(attempt < 20, "no kill landed mid-task in 20 tries");
    };

    let t0 = Instant::now();
    let root = wait_final(&tasks, &job.root, Duration::from_secs(120)).await;
    assert_eq!(root.status, Status::Done, "{root:?}");
    let sorted = mergesort::verify(&tasks, &job).await.unwrap();
    assert_eq!(sorted.len(), 100_000);

    eprintln!("killed {victim} holding {orphans:?}; done after {:?}", t0.elapsed());
    // The killed worker's tasks were taken back after its lease expired and run again by
    // another worker.
    for id in &orphans {
        let t = tasks.get(id).await.unwrap().unwrap();
        assert_eq!(t.status, Status::Done, "{t:?}");
        assert!(t.runs >= 2, "orphan {id} ran {} times", t.runs);
        assert_ne!(t.worker.as_deref(), Some(victim.as_str()));
        let history = values(&c, &tasks.task_ptr(id)).await;
        assert!(
            history.iter().flatten().any(|v| v["error"]
                .as_str()
                .is_some_and(|e| e.contains(&format!("lease of worker {victim} expired")))),
            "orphan {id} was not reaped: {history:?}"
        );
    }

    // The graph: 64 sorts of at most 2000 numbers, 63 merges, every one done, and every
    // task's record became done exactly once in its whole history.
    let records = all_ptrs(&c, "tasks/task/").await;
    assert_eq!(records.len(), 127);
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for (ptr, rec) in &records {
        *by_status.entry(rec["status"].as_str().unwrap().to_string()).or_default() += 1;
        let history = values(&c, ptr).await;
        let done_writes = history.iter().flatten().filter(|v| v["status"] == "done").count();
        assert_eq!(done_writes, 1, "{ptr} became done {done_writes} times");
    }
    assert_eq!(by_status, BTreeMap::from([("done".to_string(), 127)]));
    // Nothing left behind: no lease, and no task indexed as anything but done.
    assert!(all_ptrs(&c, "tasks/lease/").await.is_empty());
    for s in [Status::Waiting, Status::Ready, Status::Running, Status::Failed] {
        assert!(tasks.ids(s, 10).await.unwrap().is_empty(), "{s} is not empty");
    }
    assert_eq!(tasks.ids(Status::Done, 1000).await.unwrap().len(), 127);

    // The command-line view agrees.
    let out = Command::new(restm_bin()).args(["tasks", "list", "--target", &node.base]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    let counts: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once(char::is_whitespace)).collect();
    let counts: Vec<(&str, &str)> = counts.into_iter().map(|(s, n)| (s, n.trim())).collect();
    assert_eq!(
        counts,
        [("waiting", "0"), ("ready", "0"), ("running", "0"), ("done", "127"), ("failed", "0")]
    );
    let out = Command::new(restm_bin())
        .args(["tasks", "list", "--status", "done", "--limit", "1000", "--target", &node.base])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().filter(|l| l.contains(" done ")).count(), 127, "{text}");
    assert!(text.contains(&format!("{} ", job.root)));
}

/// Runs an in-process worker with `handlers` until the returned sender is dropped or fired.
fn spawn_worker(worker: Worker) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(
        worker.lease(Duration::from_millis(600)).idle_poll(Duration::from_millis(20)).run(async {
            let _ = rx.await;
        }),
    );
    (tx, handle)
}

#[tokio::test]
async fn errors_are_retried_then_fail_the_task_and_everything_that_depends_on_it() {
    let node = Node::start();
    let c = Client::new(&node.base).unwrap();
    let tasks = Tasks::new(c.clone(), "jobs");
    let worker = Worker::new(tasks.clone(), "local")
        .handler("flaky", |ctx| async move {
            // Fails until its third run.
            if ctx.task.attempts < 3 {
                Err(format!("run {} failed", ctx.run))
            } else {
                Ok(Outcome::Done(json!("ok")))
            }
        })
        .handler("broken", |_ctx| async move { Err::<Outcome, _>("always".to_string()) })
        .handler("panics", |_ctx| async move { panic!("handler bug") })
        .handler("sum", |ctx| async move {
            let total: i64 = ctx.deps.iter().map(|v| v.as_i64().unwrap_or(0)).sum();
            Ok(Outcome::Done(json!(total + ctx.input::<i64>()?)))
        });
    let (stop, handle) = spawn_worker(worker);

    let flaky = tasks.submit(TaskSpec::new("flaky", json!(null)).max_attempts(3)).await.unwrap();
    let t = wait_final(&tasks, &flaky, Duration::from_secs(30)).await;
    assert_eq!((t.status, t.runs, t.result), (Status::Done, 3, Some(json!("ok"))));
    assert_eq!(t.error.as_deref(), Some("run 2 failed"), "the last error is kept");

    // A task that always fails fails after its attempts; its dependent (and theirs) fail
    // without running, naming the cause.
    let broken = tasks.submit(TaskSpec::new("broken", json!(null)).max_attempts(2)).await.unwrap();
    let child = tasks.submit(TaskSpec::new("sum", json!(1)).after([broken.clone()])).await.unwrap();
    let grandchild = tasks.submit(TaskSpec::new("sum", json!(1)).after([child.clone()])).await.unwrap();
    let t = wait_final(&tasks, &grandchild, Duration::from_secs(30)).await;
    assert_eq!(t.status, Status::Failed);
    assert_eq!(t.error, Some(format!("dependency {child} failed")));
    let b = tasks.get(&broken).await.unwrap().unwrap();
    assert_eq!((b.status, b.runs, b.error.as_deref()), (Status::Failed, 2, Some("always")));
    let ch = tasks.get(&child).await.unwrap().unwrap();
    assert_eq!((ch.status, ch.runs), (Status::Failed, 0));

    // A panicking handler is an error of that run, not a dead worker.
    let p = tasks.submit(TaskSpec::new("panics", json!(null)).max_attempts(1)).await.unwrap();
    let t = wait_final(&tasks, &p, Duration::from_secs(30)).await;
    assert_eq!(t.status, Status::Failed);
    assert!(t.error.unwrap().contains("panicked"));

    // Dependencies pass their results in order; one submitted after its dependency is done
    // runs at once.
    let a = tasks.submit(TaskSpec::new("sum", json!(10))).await.unwrap();
    let b = tasks.submit(TaskSpec::new("sum", json!(20))).await.unwrap();
    let s = tasks.submit(TaskSpec::new("sum", json!(3)).after([a.clone(), b.clone()])).await.unwrap();
    assert_eq!(wait_final(&tasks, &s, Duration::from_secs(30)).await.result, Some(json!(33)));
    let late = tasks.submit(TaskSpec::new("sum", json!(0)).after([s.clone()])).await.unwrap();
    assert_eq!(wait_final(&tasks, &late, Duration::from_secs(30)).await.result, Some(json!(33)));
    // A missing dependency is the caller's error, and creates nothing.
    let before = all_ptrs(&c, "jobs/task/").await.len();
    assert!(tasks.submit(TaskSpec::new("sum", json!(0)).after(["nope".to_string()])).await.is_err());
    assert_eq!(all_ptrs(&c, "jobs/task/").await.len(), before);

    let _ = stop.send(());
    handle.await.unwrap();
}

#[tokio::test]
async fn a_stalled_run_loses_its_lease_and_cannot_record_a_result() {
    let node = Node::start();
    let c = Client::new(&node.base).unwrap();
    let tasks = Tasks::new(c.clone(), "t");
    let id = tasks.submit(TaskSpec::new("slow", json!(null))).await.unwrap();
    // A worker that claims and then goes silent past its lease (as if paused).
    let claim = tasks.claim("stalled", 200, |h| h == "slow").await.unwrap().expect("claims the task");
    assert_eq!(claim.task.id, id);
    assert!(tasks.claim("other", 200, |_| true).await.unwrap().is_none(), "a running task is not claimable");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(tasks.reap().await.unwrap(), vec![id.clone()]);
    let again = tasks.claim("other", 5000, |_| true).await.unwrap().expect("ready again");
    assert_eq!(again.lease.run, 2);
    // The stalled run wakes up: its renewal and its result are refused.
    assert!(!tasks.renew(&claim, 1000).await.unwrap());
    assert!(!tasks.finish(&claim, Ok(Outcome::Done(json!("stale")))).await.unwrap());
    assert!(tasks.finish(&again, Ok(Outcome::Done(json!("fresh")))).await.unwrap());
    let t = tasks.get(&id).await.unwrap().unwrap();
    assert_eq!(
        (t.status, t.result, t.worker.as_deref()),
        (Status::Done, Some(json!("fresh")), Some("other"))
    );
    // A lease not yet expired is not reaped.
    let id2 = tasks.submit(TaskSpec::new("slow", json!(null))).await.unwrap();
    let _held = tasks.claim("w", 60_000, |_| true).await.unwrap().unwrap();
    assert!(tasks.reap().await.unwrap().is_empty());
    assert_eq!(tasks.get(&id2).await.unwrap().unwrap().status, Status::Running);
}
