//! `restm bench soak` is the garbage-collection soak: one hot pointer and many cold ones
//! written continuously, while the node's own metrics (resident memory, the engine's memory,
//! disk bytes, versions on disk, the watermark's lag) are sampled; with a short
//! `--retention` on the node, each curve must level off rather than grow.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use serde::Serialize;

use super::Endpoint as Target;

/// What a soak needs (from `restm bench soak`'s options).
#[derive(Debug)]
pub struct SoakArgs {
    pub target: Target,
    pub duration: Duration,
    pub clients: u64,
    pub cold: u64,
    pub hot_share: f64,
    pub value_size: u64,
    pub sample: Duration,
    pub json: Option<std::path::PathBuf>,
}

/// One sample of the node during a soak.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub elapsed_s: f64,
    pub writes: u64,
    pub errors: u64,
    pub rss_bytes: f64,
    pub engine_memory_bytes: f64,
    pub disk_bytes: f64,
    pub versions_on_disk: f64,
    pub versions_in_memory: f64,
    pub watermark_lag_s: f64,
    pub gc_versions_pruned_disk: f64,
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or(f64::NAN)
}

async fn sample(
    http: &reqwest::Client,
    target: &Target,
    started: Instant,
    writes: u64,
    errors: u64,
) -> Result<Sample, String> {
    let mut req = http.get(format!("{}/metrics", target.target.trim_end_matches('/')));
    if let Some(t) = &target.token {
        req = req.bearer_auth(t);
    }
    let text = req
        .send()
        .await
        .map_err(|e| format!("cannot scrape the node: {e}"))?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    Ok(Sample {
        elapsed_s: started.elapsed().as_secs_f64(),
        writes,
        errors,
        rss_bytes: metric(&text, "restm_process_resident_bytes"),
        engine_memory_bytes: metric(&text, "restm_memory_bytes"),
        disk_bytes: metric(&text, "restm_disk_bytes"),
        versions_on_disk: metric(&text, "restm_versions_on_disk"),
        versions_in_memory: metric(&text, "restm_versions_in_memory"),
        watermark_lag_s: metric(&text, "restm_gc_watermark_lag_seconds"),
        gc_versions_pruned_disk: metric(&text, "restm_gc_versions_pruned_total{where=\"disk\"}"),
    })
}

/// Prints a line above the progress bar (and to a redirected stdout, where the bar hides).
fn say(bar: &ProgressBar, line: impl AsRef<str>) {
    bar.suspend(|| println!("{}", line.as_ref()));
}

fn mib(b: f64) -> String {
    format!("{:.1}", b / (1024.0 * 1024.0))
}

fn row(s: &Sample) -> String {
    format!(
        "{:>7.0} {:>10} {:>8} {:>9} {:>11} {:>9} {:>12.0} {:>11.0} {:>8.1}",
        s.elapsed_s,
        s.writes,
        s.errors,
        mib(s.rss_bytes),
        mib(s.engine_memory_bytes),
        mib(s.disk_bytes),
        s.versions_on_disk,
        s.versions_in_memory,
        s.watermark_lag_s,
    )
}

/// Runs `restm bench soak`.
pub async fn soak(args: SoakArgs) -> Result<(), String> {
    if !(0.0..=1.0).contains(&args.hot_share) {
        return Err(format!("--hot-share must be between 0 and 1, not {}", args.hot_share));
    }
    let http = reqwest::Client::new();
    let target = Arc::new(args.target);
    let base = target.target.trim_end_matches('/').to_string();
    let started = Instant::now();
    let first = sample(&http, &target, started, 0, 0).await?;
    let writes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let value = serde_json::to_string(&"v".repeat(args.value_size as usize)).map_err(|e| e.to_string())?;
    let deadline = started + args.duration;
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (http, target, base, value) = (http.clone(), target.clone(), base.clone(), value.clone());
        let (writes, errors) = (writes.clone(), errors.clone());
        let (cold, hot_share) = (args.cold, args.hot_share);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let ptr = {
                    let mut rng = rand::rng();
                    if rng.random_bool(hot_share) {
                        "soak%2Fhot".to_string()
                    } else {
                        format!("soak%2Fcold%2F{}", rng.random_range(0..cold))
                    }
                };
                let mut req = http.put(format!("{base}/ptr/{ptr}")).body(value.clone());
                if let Some(t) = &target.token {
                    req = req.bearer_auth(t);
                }
                match req.send().await {
                    Ok(r) if r.status().is_success() => writes.fetch_add(1, Ordering::Relaxed),
                    _ => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let bar = ProgressBar::new(args.duration.as_secs().max(1));
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}")
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    say(
        &bar,
        format!(
            "{:>7} {:>10} {:>8} {:>9} {:>11} {:>9} {:>12} {:>11} {:>8}",
            "t (s)",
            "writes",
            "errors",
            "rss MiB",
            "engine MiB",
            "disk MiB",
            "disk vers",
            "mem vers",
            "lag s"
        ),
    );
    say(&bar, row(&first));
    let mut samples = vec![first];
    let mut next = started + args.sample;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let w = writes.load(Ordering::Relaxed);
        bar.set_position(started.elapsed().as_secs().min(args.duration.as_secs()));
        bar.set_message(format!("{w} writes, {:.0}/s", w as f64 / started.elapsed().as_secs_f64()));
        if Instant::now() >= next {
            next += args.sample;
            let s = sample(&http, &target, started, w, errors.load(Ordering::Relaxed)).await?;
            say(&bar, row(&s));
            samples.push(s);
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let last =
        sample(&http, &target, started, writes.load(Ordering::Relaxed), errors.load(Ordering::Relaxed))
            .await?;
    say(&bar, row(&last));
    samples.push(last);
    bar.finish_and_clear();
    // Does it level off? Compare the growth over the last third with the middle third.
    let n = samples.len();
    if n >= 6 {
        let third = n / 3;
        let growth = |f: fn(&Sample) -> f64, a: usize, b: usize| f(&samples[b]) - f(&samples[a]);
        for (name, f) in [
            ("rss", (|s: &Sample| s.rss_bytes) as fn(&Sample) -> f64),
            ("disk", |s: &Sample| s.disk_bytes),
            ("versions on disk", |s: &Sample| s.versions_on_disk),
        ] {
            println!(
                "{name}: {} MiB at a third, {} MiB at two thirds, {} MiB at the end (growth, middle third {:+.1} MiB, last third {:+.1} MiB)",
                mib(f(&samples[third])),
                mib(f(&samples[2 * third])),
                mib(f(&samples[n - 1])),
                growth(f, third, 2 * third) / 1048576.0,
                growth(f, 2 * third, n - 1) / 1048576.0,
            );
        }
    }
    let total = samples.last().map_or(0, |s| s.writes);
    println!(
        "{total} writes in {:.0} s ({:.0}/s)",
        started.elapsed().as_secs_f64(),
        total as f64 / started.elapsed().as_secs_f64()
    );
    if let Some(path) = args.json {
        let text = serde_json::to_string_pretty(&samples).map_err(|e| e.to_string())?;
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
