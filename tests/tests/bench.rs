//! `restm bench` against a real node (and a real etcd from Debian's `etcd-server`): the
//! workloads run, count what they did, and their end checks hold.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use restm_tests::{Node, free_port, restm_bin, temp_dir};
use serde_json::Value;

fn bench(node: &Node, args: &[&str], json: &Path) -> (String, Value) {
    let mut cmd = Command::new(restm_bin());
    cmd.arg("bench");
    if !args.contains(&"--cluster") {
        cmd.args(["--target", &node.base]);
    }
    let out = cmd.args(["--warmup", "0s", "--json"]).arg(json).args(args).output().expect("run restm bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "restm bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    (stdout, report)
}

#[test]
fn the_bank_conserves_money_and_the_hot_counter_counts_every_increment() {
    let node = Node::start();
    let dir = temp_dir("bench");
    let json = dir.join("bank.json");
    let (out, report) = bench(&node, &["bank", "--count", "300", "--keys", "20", "--clients", "8"], &json);
    let run = &report["runs"][0];
    assert_eq!((run["system"].as_str(), run["workload"].as_str()), (Some("restm"), Some("bank")));
    assert_eq!(run["ops"], 300);
    assert_eq!(run["errors"], 0);
    assert!(out.contains("20 accounts sum to 20000, none negative"), "{out}");
    for key in ["ops_per_s", "p50_ms", "p99_ms", "p999_ms", "abort_rate"] {
        assert!(run[key].as_f64().is_some_and(|v| v >= 0.0), "{key} in {run}");
    }

    // With locking reads, 8 clients on one pointer queue on its lock: no retries.
    let json = dir.join("hot.json");
    let (out, report) = bench(&node, &["hot-increment", "--count", "200", "--clients", "8"], &json);
    let run = &report["runs"][0];
    assert_eq!((run["ops"].as_u64(), run["retries"].as_u64()), (Some(200), Some(0)), "{run}");
    assert!(out.contains("= committed increments"), "{out}");
    // Optimistically they lose at commit and retry, and still count exactly.
    let json = dir.join("hot-optimistic.json");
    let (out, report) =
        bench(&node, &["hot-increment", "--optimistic", "--count", "200", "--clients", "8"], &json);
    assert_eq!(report["runs"][0]["ops"], 200);
    assert!(out.contains("= committed increments"), "{out}");
}

#[test]
fn reads_as_of_a_past_version_find_every_version_written() {
    let node = Node::start();
    let json = temp_dir("bench").join("asof.json");
    let (_, report) = bench(&node, &["as-of-read", "--versions", "300", "--count", "500"], &json);
    assert_eq!(
        (report["runs"][0]["ops"].as_u64(), report["runs"][0]["errors"].as_u64()),
        (Some(500), Some(0))
    );
}

/// An etcd server on free loopback ports, killed when dropped.
struct Etcd {
    child: Child,
    url: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn etcd() -> Etcd {
    let bin = Path::new("/usr/bin/etcd");
    assert!(bin.exists(), "etcd is missing: `apt-get install etcd-server` (cargo xtask test does)");
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let dir = temp_dir("etcd");
    let child = Command::new(bin)
        .arg("--data-dir")
        .arg(&dir)
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-cluster", &format!("default=http://127.0.0.1:{peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    let etcd = Etcd { child, url };
    let deadline = Instant::now() + Duration::from_secs(20);
    while probe::health(&etcd.url).is_err() {
        assert!(Instant::now() < deadline, "etcd did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    etcd
}

mod probe {
    /// `GET /health` of etcd, synchronously, with a bare TCP request.
    pub fn health(url: &str) -> std::io::Result<()> {
        use std::io::{Read, Write};
        let addr = url.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr)?;
        s.write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        if body.contains("\"health\":\"true\"") { Ok(()) } else { Err(std::io::Error::other(body)) }
    }
}

#[test]
fn against_etcd_runs_both_sides_and_prints_the_ratio() {
    let node = Node::start();
    let etcd = etcd();
    let json = temp_dir("bench").join("etcd.json");
    for workload in ["write", "rmw", "bank"] {
        let (out, report) = bench(
            &node,
            &[workload, "--count", "200", "--keys", "50", "--clients", "4", "--against-etcd", &etcd.url],
            &json,
        );
        let runs = report["runs"].as_array().unwrap();
        let systems: Vec<&str> = runs.iter().map(|r| r["system"].as_str().unwrap()).collect();
        assert_eq!(systems, ["restm", "etcd"], "{workload}");
        for r in runs {
            assert_eq!((r["ops"].as_u64(), r["errors"].as_u64()), (Some(200), Some(0)), "{workload}: {r}");
        }
        assert!(out.contains("restm/etcd: throughput"), "{out}");
        if workload == "bank" {
            assert!(out.contains("etcd bank: 50 accounts sum to 50000"), "{out}");
        }
    }
}

/// `--cluster` spreads the load over every member, and the as-of read runs once more
/// against the leader alone, so the two compare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_load_goes_to_every_member_and_as_of_reads_also_to_the_leader_alone() {
    let node = Node::cluster(3, &[]);
    let members: Vec<String> = node.all().map(|m| m.base.clone()).collect();
    let cluster = members.join(",");
    // Pointer requests each member answered (handed on or served), by its own metrics.
    async fn served(m: &str) -> f64 {
        let text = reqwest::get(format!("{m}/metrics")).await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| {
                l.starts_with("restm_http_request_duration_seconds_count{") && l.contains("/ptr/{id}")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
    let mut before = Vec::new();
    for m in &members {
        before.push(served(m).await);
    }
    let dir = temp_dir("bench");
    let json = dir.join("cluster-bank.json");
    let (out, report) = bench(
        &node,
        &["bank", "--cluster", &cluster, "--count", "200", "--keys", "20", "--clients", "4"],
        &json,
    );
    assert_eq!(
        (report["runs"][0]["ops"].as_u64(), report["runs"][0]["errors"].as_u64()),
        (Some(200), Some(0))
    );
    assert!(out.contains("20 accounts sum to 20000, none negative"), "{out}");
    for (m, b) in members.iter().zip(&before) {
        assert!(served(m).await > *b + 50.0, "{m} took part of the load");
    }
    let json = dir.join("cluster-asof.json");
    let (out, report) =
        bench(&node, &["as-of-read", "--cluster", &cluster, "--versions", "200", "--count", "300"], &json);
    let runs = report["runs"].as_array().unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r["workload"].as_str().unwrap()).collect();
    assert_eq!(names, ["as-of-read", "as-of-read/leader"]);
    for r in runs {
        assert_eq!((r["ops"].as_u64(), r["errors"].as_u64()), (Some(300), Some(0)), "{r}");
    }
    assert!(out.contains("spread over members / leader alone"), "{out}");
}
