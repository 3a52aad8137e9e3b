//! The load loop shared by every workload: `clients` concurrent loops each running one
//! operation after another, a warm-up that is not recorded, then a measured window (a
//! duration or an operation count); latencies are kept whole and summarised at the end.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One operation of a workload. It answers how many attempts it took (1 unless it lost a
/// conflict and ran again), or why it failed for good.
pub type Op = Arc<dyn Fn() -> BoxFuture<Result<u32, String>> + Send + Sync>;

/// A check run once the load stops (e.g. money is conserved); it answers what held.
pub type Check = Box<dyn FnOnce() -> BoxFuture<Result<String, String>> + Send>;

/// A workload ready to run against one system.
pub struct Prepared {
    pub op: Op,
    pub check: Option<Check>,
}

/// When the measured window ends.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    After(Duration),
    Count(u64),
}

/// What one run measured, as printed and written to JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub system: String,
    pub workload: String,
    pub clients: u64,
    /// Operations completed in the measured window (for transactions: commits).
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_s: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Attempts in all; each retry is one more.
    pub attempts: u64,
    pub retries: u64,
    /// Attempts that lost a conflict, over all attempts.
    pub abort_rate: f64,
    /// Operations that failed for good (not counted in `ops`).
    pub errors: u64,
    pub first_error: Option<String>,
    /// What the workload's end check found.
    pub check: Option<String>,
}

/// Runs `op` from `clients` loops: `warmup` unrecorded, then until `stop`.
pub async fn measure(
    system: &str,
    workload: &str,
    clients: u64,
    warmup: Duration,
    stop: Stop,
    op: Op,
) -> Report {
    let clients = clients.max(1);
    let start = Instant::now();
    let from = start + warmup;
    let done = Arc::new(AtomicU64::new(0));
    let halt = Arc::new(AtomicBool::new(false));
    let until = match stop {
        Stop::After(d) => Some(from + d),
        Stop::Count(_) => None,
    };
    let budget = match stop {
        Stop::Count(n) => n,
        Stop::After(_) => u64::MAX,
    };
    let mut loops = Vec::new();
    for _ in 0..clients {
        let (op, done, halt) = (op.clone(), done.clone(), halt.clone());
        loops.push(tokio::spawn(async move {
            let mut lat_us = Vec::new();
            let (mut attempts, mut errors, mut first_error) = (0u64, 0u64, None);
            while !halt.load(Ordering::Relaxed) {
                let t = Instant::now();
                let out = op().await;
                let end = Instant::now();
                if until.is_some_and(|u| end > u) {
                    break;
                }
                if t < from {
                    continue;
                }
                match out {
                    Ok(n) => {
                        if done.fetch_add(1, Ordering::Relaxed) >= budget {
                            break;
                        }
                        lat_us.push((end - t).as_micros() as u64);
                        attempts += u64::from(n.max(1));
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (lat_us, attempts, errors, first_error, Instant::now())
        }));
    }
    // The bar fills over the measured window: milliseconds of it, or operations.
    let bar = ProgressBar::new(match stop {
        Stop::After(d) => d.as_millis() as u64,
        Stop::Count(n) => n,
    });
    if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:30}] {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = Instant::now();
        let n = done.load(Ordering::Relaxed);
        bar.set_position(match stop {
            Stop::After(_) => now.saturating_duration_since(from).as_millis() as u64,
            Stop::Count(_) => n,
        });
        let phase = if now < from { "warming up".to_string() } else { format!("{n} ops") };
        bar.set_message(format!("{system} {workload} ({clients} clients): {phase}"));
        let over = match stop {
            Stop::After(_) => until.is_some_and(|u| now > u),
            Stop::Count(c) => n >= c,
        };
        if over || loops.iter().all(|l| l.is_finished()) {
            halt.store(true, Ordering::Relaxed);
            break;
        }
    }
    bar.finish_and_clear();
    let mut lat = Vec::new();
    let (mut attempts, mut errors, mut first_error, mut last) = (0, 0, None, from);
    for l in loops {
        if let Ok((l_lat, a, e, fe, ended)) = l.await {
            lat.extend(l_lat);
            attempts += a;
            errors += e;
            first_error = first_error.or(fe);
            last = last.max(ended);
        }
    }
    let seconds = match stop {
        Stop::After(d) => d.as_secs_f64(),
        Stop::Count(_) => (last - from).as_secs_f64().max(1e-9),
    };
    summarise(system, workload, clients, seconds, lat, attempts, errors, first_error)
}

#[allow(clippy::too_many_arguments)]
fn summarise(
    system: &str,
    workload: &str,
    clients: u64,
    seconds: f64,
    mut lat_us: Vec<u64>,
    attempts: u64,
    errors: u64,
    first_error: Option<String>,
) -> Report {
    lat_us.sort_unstable();
    let ops = lat_us.len() as u64;
    let pct = |p: f64| -> f64 {
        if lat_us.is_empty() {
            return f64::NAN;
        }
        let i = ((p * lat_us.len() as f64).ceil() as usize).clamp(1, lat_us.len()) - 1;
        lat_us[i] as f64 / 1000.0
    };
    let mean = if ops == 0 { f64::NAN } else { lat_us.iter().sum::<u64>() as f64 / ops as f64 / 1000.0 };
    let retries = attempts.saturating_sub(ops);
    Report {
        system: system.into(),
        workload: workload.into(),
        clients,
        ops,
        seconds,
        ops_per_s: ops as f64 / seconds,
        mean_ms: mean,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
        attempts,
        retries,
        abort_rate: if attempts == 0 { 0.0 } else { retries as f64 / attempts as f64 },
        errors,
        first_error,
        check: None,
    }
}

/// Calls `write` `total` times from up to 16 concurrent loops, with a progress bar, and
/// answers what the calls answered (a set-up step, such as writing many versions).
pub async fn fill<F, Fut>(total: u64, clients: u64, write: F) -> Result<Vec<u64>, String>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u64, String>> + Send,
{
    let bar = ProgressBar::new(total);
    let left = Arc::new(AtomicU64::new(total));
    let write = Arc::new(write);
    let mut writers = Vec::new();
    for _ in 0..clients.clamp(1, 16) {
        let (left, bar, write) = (left.clone(), bar.clone(), write.clone());
        writers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
                got.push(write().await?);
                bar.inc(1);
            }
            Ok::<_, String>(got)
        }));
    }
    let mut out = Vec::new();
    for w in writers {
        out.extend(w.await.map_err(|e| e.to_string())??);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Full-jitter exponential back-off before retry number `retry` (1 for the first).
pub async fn backoff(retry: u32) {
    use rand::Rng;
    let ceiling_us = (500u64 << retry.min(8)).min(100_000);
    let us = rand::rng().random_range(0..=ceiling_us);
    tokio::time::sleep(Duration::from_micros(us)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let r = summarise("s", "w", 1, 2.0, (1..=1000).map(|i| i * 1000).collect(), 1100, 0, None);
        assert_eq!((r.ops, r.p50_ms, r.p99_ms, r.p999_ms), (1000, 500.0, 990.0, 999.0));
        assert_eq!(r.ops_per_s, 500.0);
        assert_eq!(r.retries, 100);
        assert!((r.abort_rate - 100.0 / 1100.0).abs() < 1e-12);
    }
}
