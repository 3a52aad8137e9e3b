//! The worked example: a distributed merge sort as a task graph.
//!
//! The numbers to sort are written to `mergesort/<job>/in/<i>` in chunks of [`CHUNK`].
//! `mergesort.sort` over `[lo, hi)` sorts a small range itself; a larger one spawns two
//! `mergesort.sort` subtasks for its halves and continues as `mergesort.merge`, which
//! merges their outputs. Each run writes its output to
//! `mergesort/<job>/out/<task>/<run>/<i>` (a re-run never overwrites an earlier run's
//! output) and returns `{"n": count, "chunks": [pointers]}` as the task's result. The
//! root task's result names the sorted whole.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Outcome, TaskCtx, TaskSpec, Tasks, Worker};
use crate::{Client, Error};

/// Numbers per stored chunk (about 44 KB of JSON).
pub const CHUNK: usize = 4000;
/// Chunks written per one-shot request (well under the node's 1 MiB body limit).
const CHUNKS_PER_WRITE: usize = 8;

/// The input of a sort or merge task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Range {
    pub job: String,
    pub lo: u64,
    pub hi: u64,
    /// Ranges this small or smaller are sorted in one task.
    pub leaf: u64,
    /// Simulated extra work per run, in milliseconds (to watch a graph run, or to kill a
    /// worker mid-task in a test).
    #[serde(default)]
    pub work_ms: u64,
}

/// A sorted run's result: where its numbers are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sorted {
    pub n: u64,
    pub chunks: Vec<String>,
}

fn input_chunk(job: &str, i: usize) -> String {
    format!("mergesort/{job}/in/{i:06}")
}

/// Registers the merge sort's handlers on a worker.
pub fn register(worker: Worker) -> Worker {
    worker.handler("mergesort.sort", sort).handler("mergesort.merge", merge)
}

async fn sort(ctx: TaskCtx) -> Result<Outcome, String> {
    let r: Range = ctx.input()?;
    if r.hi.saturating_sub(r.lo) > r.leaf.max(1) {
        let mid = r.lo + (r.hi - r.lo) / 2;
        let half = |lo, hi| TaskSpec::new("mergesort.sort", json!(Range { lo, hi, ..r.clone() }));
        return Ok(Outcome::Spawn {
            children: vec![half(r.lo, mid), half(mid, r.hi)],
            then: ("mergesort.merge".into(), ctx.task.input.clone()),
        });
    }
    let mut numbers = Vec::with_capacity((r.hi - r.lo) as usize);
    let (first, last) = (r.lo as usize / CHUNK, (r.hi as usize).saturating_sub(1) / CHUNK);
    for i in first..=last {
        let chunk: Vec<u64> = ctx
            .client()
            .get(&input_chunk(&r.job, i))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("input chunk {i} of job {} is missing", r.job))?;
        let base = i * CHUNK;
        let from = (r.lo as usize).saturating_sub(base).min(chunk.len());
        let to = (r.hi as usize - base).min(chunk.len());
        numbers.extend_from_slice(&chunk[from..to]);
    }
    numbers.sort_unstable();
    tokio::time::sleep(Duration::from_millis(r.work_ms)).await;
    write_output(&ctx, &r.job, &numbers).await
}

async fn merge(ctx: TaskCtx) -> Result<Outcome, String> {
    let r: Range = ctx.input()?;
    let mut halves = Vec::new();
    for dep in &ctx.deps {
        let sorted: Sorted = serde_json::from_value(dep.clone()).map_err(|e| e.to_string())?;
        halves.push(read_sorted(ctx.client(), &sorted).await.map_err(|e| e.to_string())?);
    }
    let [a, b] =
        <[Vec<u64>; 2]>::try_from(halves).map_err(|h| format!("a merge needs 2 inputs, got {}", h.len()))?;
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] <= b[j] {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    tokio::time::sleep(Duration::from_millis(r.work_ms)).await;
    write_output(&ctx, &r.job, &out).await
}

/// Writes a run's numbers under a name unique to this run and returns them as the result.
async fn write_output(ctx: &TaskCtx, job: &str, numbers: &[u64]) -> Result<Outcome, String> {
    let prefix = format!("mergesort/{job}/out/{}/{}", ctx.task.id, ctx.run);
    let chunks: Vec<(String, &[u64])> =
        numbers.chunks(CHUNK).enumerate().map(|(i, c)| (format!("{prefix}/{i:06}"), c)).collect();
    for batch in chunks.chunks(CHUNKS_PER_WRITE) {
        let mut w = ctx.client().one_shot();
        for (ptr, c) in batch {
            w = w.put(ptr, c).map_err(|e| e.to_string())?;
        }
        w.commit().await.map_err(|e| e.to_string())?;
    }
    let sorted = Sorted { n: numbers.len() as u64, chunks: chunks.into_iter().map(|(p, _)| p).collect() };
    Ok(Outcome::Done(json!(sorted)))
}

/// The numbers a result names, in order.
pub async fn read_sorted(client: &Client, sorted: &Sorted) -> Result<Vec<u64>, Error> {
    let mut out = Vec::with_capacity(sorted.n as usize);
    for ptr in &sorted.chunks {
        let chunk: Vec<u64> = client
            .get(ptr)
            .await?
            .ok_or_else(|| Error::Invariant(format!("output chunk {ptr} is missing")))?;
        out.extend(chunk);
    }
    Ok(out)
}

/// A submitted sort: the job and its root task.
#[derive(Debug, Clone)]
pub struct Job {
    pub job: String,
    pub root: String,
    pub n: u64,
}

/// Writes `n` random numbers below `1e9` as job input and submits the root sort task.
pub async fn submit(tasks: &Tasks, n: u64, leaf: u64, work_ms: u64) -> Result<Job, Error> {
    let job = format!("{:08x}", rand::rng().random::<u32>());
    let numbers: Vec<u64> = {
        let mut rng = rand::rng();
        (0..n).map(|_| rng.random_range(0..1_000_000_000)).collect()
    };
    let chunks: Vec<&[u64]> = numbers.chunks(CHUNK).collect();
    for (b, batch) in chunks.chunks(CHUNKS_PER_WRITE).enumerate() {
        let mut w = tasks.client().one_shot();
        for (k, c) in batch.iter().enumerate() {
            w = w.put(&input_chunk(&job, b * CHUNKS_PER_WRITE + k), c)?;
        }
        w.commit().await?;
    }
    let range = Range { job: job.clone(), lo: 0, hi: n, leaf: leaf.max(1), work_ms };
    let root = tasks.submit(TaskSpec::new("mergesort.sort", json!(range))).await?;
    Ok(Job { job, root, n })
}

/// The job's input, read back in input order.
pub async fn read_input(client: &Client, job: &Job) -> Result<Vec<u64>, Error> {
    let mut out = Vec::with_capacity(job.n as usize);
    for i in 0..(job.n as usize).div_ceil(CHUNK) {
        let chunk: Vec<u64> = client
            .get(&input_chunk(&job.job, i))
            .await?
            .ok_or_else(|| Error::Invariant(format!("input chunk {i} is missing")))?;
        out.extend(chunk);
    }
    Ok(out)
}

/// Checks a finished job: the root's output is the input, sorted. Returns the output.
pub async fn verify(tasks: &Tasks, job: &Job) -> Result<Vec<u64>, Error> {
    let root = tasks.get(&job.root).await?.ok_or_else(|| Error::Invariant("the root task is gone".into()))?;
    let result = root
        .result
        .ok_or_else(|| Error::Invariant(format!("the root task is {}, with no result", root.status)))?;
    let sorted: Sorted = serde_json::from_value(result)?;
    let got = read_sorted(tasks.client(), &sorted).await?;
    let mut want = read_input(tasks.client(), job).await?;
    want.sort_unstable();
    if got != want {
        return Err(Error::Invariant(format!(
            "the output ({} numbers) is not the sorted input ({} numbers)",
            got.len(),
            want.len()
        )));
    }
    Ok(got)
}
