//! A 3-member cluster of real processes: a bank workload over every member while the leader
//! is SIGKILLed and restarted and then another member is; a member left without a majority
//! answers 503 within a bounded time instead of a stale value; and the cluster flags refuse
//! what would let the wrong node in. (The other suites run against a cluster too, with
//! `RESTM_TEST_NODES=3`.)

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use restm_tests::{Node, problem, restm_bin};
use serde_json::{Value, json};

const ACCOUNTS: usize = 10;
const START: i64 = 100;
/// How long the bank may go without an acknowledged transfer after a member is killed.
const RIDE_OUT: Duration = Duration::from_secs(10);

fn acct(i: usize) -> String {
    format!("acct/{i:02}")
}

/// The members that are up, for the workers to spread over.
#[derive(Default)]
struct Alive(std::sync::Mutex<Vec<String>>);

impl Alive {
    fn set(&self, bases: Vec<String>) {
        *self.0.lock().unwrap() = bases;
    }

    fn pick(&self, n: u64) -> Option<String> {
        let v = self.0.lock().unwrap();
        (!v.is_empty()).then(|| v[(n as usize) % v.len()].clone())
    }
}

fn member(node: &mut Node, i: usize) -> &mut Node {
    if i == 0 { node } else { &mut node.members[i - 1] }
}

/// The index of the leader (its id less one), as the first member that answers says.
fn leader_index(node: &Node) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(l) = node.all().find_map(Node::leader_seen) {
            return l as usize - 1;
        }
        assert!(Instant::now() < deadline, "no leader within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How long `node_id`, just restarted, takes to catch up: until the leader, asked through
/// any of `bases`, says it trails by a handful of entries. A cluster of three rides out a
/// second failure only once the first member it lost is back in step.
async fn catch_up(http: &reqwest::Client, bases: &[String], node_id: u64, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        for base in bases {
            let Ok(r) = http.get(format!("{base}/cluster")).send().await else { continue };
            let Ok(s) = r.json::<restm_shared::ClusterStatus>().await else { continue };
            let behind = s
                .groups
                .iter()
                .filter(|g| g.role == "leader")
                .flat_map(|g| g.follower_lag.iter())
                .find(|f| f.node_id == node_id)
                .and_then(|f| f.lag);
            if behind.is_some_and(|lag| lag <= 8) {
                return started.elapsed();
            }
        }
        assert!(started.elapsed() < within, "node {node_id} did not catch up within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Why a transfer did not go through.
#[derive(Debug)]
enum Failed {
    /// Refused before its commit (conflict, no leader): it did not happen.
    Refused,
    /// Its commit's answer was lost or unknown: it may have happened.
    Unknown,
}

async fn json_ok(r: Result<reqwest::Response, reqwest::Error>) -> Result<Value, Failed> {
    match r {
        Ok(r) if r.status().is_success() => r.json().await.map_err(|_| Failed::Refused),
        _ => Err(Failed::Refused),
    }
}

/// Moves `amount` from one account to another in an interactive txn on the member at
/// `base`, and records `marker` in the same txn.
async fn transfer(
    http: &reqwest::Client,
    base: &str,
    from: usize,
    to: usize,
    amount: i64,
    marker: &str,
) -> Result<(), Failed> {
    let begin = json_ok(http.post(format!("{base}/txn/begin")).json(&json!({})).send().await).await?;
    let txn = begin["txn"].as_str().ok_or(Failed::Refused)?.to_string();
    let get = |ptr: String| {
        let txn = txn.clone();
        async move {
            json_ok(
                http.get(format!("{base}/ptr/{}", ptr.replace('/', "%2F")))
                    .header("X-reSTM-Txn", txn)
                    .send()
                    .await,
            )
            .await
        }
    };
    let a = get(acct(from)).await?.as_i64().ok_or(Failed::Refused)?;
    let b = get(acct(to)).await?.as_i64().ok_or(Failed::Refused)?;
    for (ptr, v) in
        [(acct(from), json!(a - amount)), (acct(to), json!(b + amount)), (marker.to_string(), json!(true))]
    {
        let url = format!("{base}/ptr/{}", ptr.replace('/', "%2F"));
        json_ok(http.put(url).header("X-reSTM-Txn", &txn).json(&v).send().await).await?;
    }
    match http.post(format!("{base}/txn/{txn}/commit")).send().await {
        Ok(r) if r.status() == 200 => Ok(()),
        Ok(r) if r.status() == 409 => Err(Failed::Refused),
        Ok(r) if r.status() == 503 => {
            let p: restm_shared::Problem = r.json().await.map_err(|_| Failed::Unknown)?;
            if p.code == restm_shared::codes::OUTCOME_UNKNOWN {
                Err(Failed::Unknown)
            } else {
                Err(Failed::Refused)
            }
        }
        _ => Err(Failed::Unknown),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_over_every_member_survives_killing_the_leader_then_another() {
    bank_over_every_member(1).await;
}

/// The same, with the partitions split among four Raft groups, each with a leader of its
/// own, and every member coordinating the transfers begun on it: commits propose to groups
/// led elsewhere, a killed coordinator's prepared transfers are resolved by their records
/// once it is silent, and every leader change of any group is ridden out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_over_partitions_in_four_groups_survives_killing_the_leader_then_another() {
    bank_over_every_member(4).await;
}

async fn bank_over_every_member(groups: u32) {
    let groups_flag = groups.to_string();
    let mut node = Node::cluster(3, &["--lock-timeout", "100ms", "--groups", &groups_flag]);
    let bases: Vec<String> = node.all().map(|n| n.base.clone()).collect();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let status: restm_shared::ClusterStatus =
        http.get(format!("{}/cluster", bases[0])).send().await.unwrap().json().await.unwrap();
    assert_eq!(status.groups.len(), groups as usize, "/cluster lists every group");
    let leaders: Vec<Option<u64>> = status.groups.iter().map(|g| g.leader).collect();
    eprintln!("cluster bank: {groups} group(s), led by {leaders:?}");
    for i in 0..ACCOUNTS {
        let r = http
            .put(format!("{}/ptr/{}", bases[i % 3], acct(i).replace('/', "%2F")))
            .json(&json!(START))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let alive = Arc::new(Alive::default());
    alive.set(bases.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::Mutex::new(Vec::<(Instant, String)>::new()));
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let (http, alive, stop, acked) = (http.clone(), alive.clone(), stop.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let Some(base) = alive.pick(w + n) else { continue };
                let seed = w * 1_000_003 + n * 7919;
                let from = (seed % ACCOUNTS as u64) as usize;
                let to = (from + 1 + (seed / 7 % (ACCOUNTS as u64 - 1)) as usize) % ACCOUNTS;
                let marker = format!("done/{w}/{n}");
                match transfer(&http, &base, from, to, 1 + (seed % 5) as i64, &marker).await {
                    Ok(()) => acked.lock().unwrap().push((Instant::now(), marker)),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    let acked_since = |t: Instant| acked.lock().unwrap().iter().filter(|(at, _)| *at > t).count();
    // How long after `t` the first transfer was acknowledged, if one was.
    let first_ack_after =
        |t: Instant| acked.lock().unwrap().iter().filter(|(at, _)| *at > t).map(|(at, _)| *at - t).min();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(acked_since(Instant::now() - Duration::from_secs(2)) > 0, "no transfer before any fault");
    // 1. SIGKILL the leader; the others elect one and go on.
    let first = leader_index(&node);
    member(&mut node, first).kill();
    alive.set(bases.iter().enumerate().filter(|(i, _)| *i != first).map(|(_, b)| b.clone()).collect());
    let killed_at = Instant::now();
    // The bound: followers refuse votes for 2 s after they last heard the leader (the
    // lease), elections start 1–2 s after that silence, and a split vote costs one more
    // 1–2 s round. Measured on this machine: 3.4–6.0 s to the first acknowledged transfer.
    tokio::time::sleep(RIDE_OUT).await;
    let first_ack = first_ack_after(killed_at);
    assert!(first_ack.is_some(), "no transfer was acknowledged within {RIDE_OUT:?} of killing the leader");
    // 2. It comes back and catches up; then another member goes.
    member(&mut node, first).restart();
    alive.set(bases.clone());
    let caught_up = catch_up(&http, &bases, first as u64 + 1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = (first + 1) % 3;
    member(&mut node, second).kill();
    alive.set(bases.iter().enumerate().filter(|(i, _)| *i != second).map(|(_, b)| b.clone()).collect());
    let killed_at = Instant::now();
    tokio::time::sleep(RIDE_OUT).await;
    let second_ack = first_ack_after(killed_at);
    assert!(
        second_ack.is_some(),
        "no transfer was acknowledged within {RIDE_OUT:?} of killing a second member"
    );
    eprintln!(
        "cluster bank: first ack {first_ack:?} after the leader went, node {} back in step {caught_up:?} after its restart, first ack {second_ack:?} after a second member went",
        first + 1
    );
    member(&mut node, second).restart();
    alive.set(bases.clone());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    // Money is conserved and every acknowledged transfer is there, read from every member.
    let acked: Vec<String> = acked.lock().unwrap().iter().map(|(_, m)| m.clone()).collect();
    assert!(acked.len() > 20, "too few transfers to mean anything: {}", acked.len());
    for base in &bases {
        let mut sum = 0;
        for i in 0..ACCOUNTS {
            let v: Value = loop {
                match http.get(format!("{base}/ptr/{}", acct(i).replace('/', "%2F"))).send().await {
                    Ok(r) if r.status() == 200 => break r.json().await.unwrap(),
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            sum += v.as_i64().unwrap();
        }
        assert_eq!(sum, START * ACCOUNTS as i64, "money was made or lost (read via {base})");
    }
    let mut present: HashSet<String> = HashSet::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{}/ptr?prefix=done/&limit=1000", bases[0]);
        if let Some(a) = &after {
            url.push_str(&format!("&after={}", a.replace('/', "%2F")));
        }
        let r = http.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let page: restm_shared::ListPage = r.json().await.unwrap();
        present.extend(page.pointers.iter().map(|p| p.ptr.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let lost: Vec<&String> = acked.iter().filter(|m| !present.contains(*m)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged transfers are gone: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    eprintln!("cluster bank: {} acknowledged transfers, {} markers present", acked.len(), present.len());
}

/// With partitions in groups of their own, every member coordinates the txns begun on it:
/// the txn id names it, a request of the txn sent to another member is handed on to it,
/// and two coordinators racing on one pointer cannot both commit (their locks are each
/// their own; the partitions' `Prepare` and `Guard` decide). A latest read on any member
/// sees every acknowledged commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_coordinates_its_own_txns_and_they_stay_serializable() {
    let node = Node::cluster(3, &["--groups", "4", "--lock-timeout", "200ms"]);
    let bases: Vec<String> = node.all().map(|n| n.base.clone()).collect();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let served_by = |r: &reqwest::Response| r.headers()["x-restm-served-by"].to_str().unwrap().to_string();
    let begin = |i: usize| {
        let (http, base) = (http.clone(), bases[i].clone());
        async move {
            let r = http.post(format!("{base}/txn/begin")).json(&json!({})).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            let v: Value = r.json().await.unwrap();
            v["txn"].as_str().unwrap().to_string()
        }
    };
    let status: Value = http.get(format!("{}/cluster", bases[0])).send().await.unwrap().json().await.unwrap();
    let leaders: HashSet<String> =
        status["groups"].as_array().unwrap().iter().map(|g| g["leader"].to_string()).collect();
    for (i, base) in bases.iter().enumerate() {
        let writes = json!({"writes": [{"ptr": format!("seed{i}"), "value": i}, {"ptr": format!("seed{i}b"), "value": i}]});
        let r = http.post(format!("{base}/txn")).json(&writes).send().await.unwrap();
        assert_eq!(r.status(), 200, "a one-shot txn on member {}", i + 1);
        assert_eq!(served_by(&r), (i + 1).to_string(), "a one-shot txn is coordinated where it lands");
        // One pointer's one-shot commits in one entry at the leader of its group.
        let r = http.put(format!("{base}/ptr/one{i}")).json(&json!(i)).send().await.unwrap();
        assert_eq!(r.status(), 200, "a one-shot write on member {}", i + 1);
        assert!(leaders.contains(&served_by(&r)), "{} leads no group: {leaders:?}", served_by(&r));
    }
    // 1. A txn begun on member 1: written through member 2, committed through member 3.
    let t = begin(0).await;
    assert!(t.starts_with("n1-"), "the txn id names its coordinator: {t}");
    let r = http
        .put(format!("{}/ptr/a", bases[1]))
        .header("X-reSTM-Txn", &t)
        .json(&json!(10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(served_by(&r), "1", "handed on to the coordinator");
    let r = http.post(format!("{}/txn/{t}/commit", bases[2])).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(served_by(&r), "1");
    for base in &bases {
        let r = http.get(format!("{base}/ptr/a")).send().await.unwrap();
        assert_eq!(r.status(), 200, "the acknowledged write, read at once via {base}");
        assert_eq!(r.json::<Value>().await.unwrap(), json!(10));
    }
    // 2. Lost updates across coordinators: each round, txns on members 2 and 3 read `a` and
    //    write it plus one. The second writer waits for the first's lock, which is held at
    //    the leader of `a`'s group whoever coordinates, and times out. Never both commit,
    //    and `a` counts exactly the commits.
    let mut commits = 0;
    for round in 0..10 {
        let (t2, t3) = (begin(1).await, begin(2).await);
        assert!(t2.starts_with("n2-") && t3.starts_with("n3-"), "{t2} {t3}");
        let mut seen = Vec::new();
        for (t, base) in [(&t2, &bases[1]), (&t3, &bases[2])] {
            let r = http.get(format!("{base}/ptr/a")).header("X-reSTM-Txn", t).send().await.unwrap();
            assert_eq!(r.status(), 200);
            seen.push(r.json::<Value>().await.unwrap().as_i64().unwrap());
        }
        for ((t, base), v) in [(&t2, &bases[1]), (&t3, &bases[2])].into_iter().zip(&seen) {
            let r = http
                .put(format!("{base}/ptr/a"))
                .header("X-reSTM-Txn", t)
                .json(&json!(v + 1))
                .send()
                .await
                .unwrap();
            if *t == t2 {
                assert_eq!(r.status(), 200);
            } else {
                let p = problem(r, 409, "lock-timeout").await;
                assert_eq!(p.holder_txn.as_deref(), Some(t2.as_str()), "the first writer holds the lock");
            }
        }
        let mut won = 0;
        for (t, base) in [(&t2, &bases[1]), (&t3, &bases[2])] {
            let r = http.post(format!("{base}/txn/{t}/commit")).send().await.unwrap();
            match r.status().as_u16() {
                200 => won += 1,
                409 => {}
                other => panic!("round {round}: commit answered {other}: {}", r.text().await.unwrap()),
            }
        }
        assert!(won <= 1, "round {round}: both txns read {seen:?} and both committed: a lost update");
        commits += won;
    }
    assert!(commits > 0, "no round committed at all");
    let r = http.get(format!("{}/ptr/a", bases[0])).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!(10 + commits), "every commit counted once");
    eprintln!("coordinators: {commits} of 10 racing rounds committed one txn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_a_majority_answers_unavailable_in_bounded_time() {
    let mut node = Node::cluster(3, &[]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let l = leader_index(&node);
    let base = member(&mut node, l).base.clone();
    assert_eq!(http.put(format!("{base}/ptr/k")).json(&json!(1)).send().await.unwrap().status(), 200);
    // Both followers go: the leader is alone.
    for i in (0..3).filter(|i| *i != l) {
        member(&mut node, i).kill();
    }
    for (method, expect) in [("PUT", &["unavailable", "outcome-unknown"][..]), ("GET", &["unavailable"][..])]
    {
        let started = Instant::now();
        let req = match method {
            "PUT" => http.put(format!("{base}/ptr/k")).json(&json!(2)),
            _ => http.get(format!("{base}/ptr/k")),
        };
        let r = req.send().await.unwrap();
        let took = started.elapsed();
        assert_eq!(r.status(), 503, "{method} without a majority");
        assert!(took < Duration::from_secs(10), "{method} took {took:?}");
        let retry = r.headers().get("retry-after").is_some();
        let p: restm_shared::Problem = r.json().await.unwrap();
        assert!(expect.contains(&p.code.as_str()), "{method}: {p:?}");
        if p.code == "unavailable" {
            assert!(retry, "{method}: an unavailable answer says when to retry");
        }
    }
    // The majority comes back: the value is readable again and writes go on.
    for i in (0..3).filter(|i| *i != l) {
        member(&mut node, i).restart();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = http.put(format!("{base}/ptr/k")).json(&json!(3)).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "writes did not resume: {}", r.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let v: Value = http.get(format!("{base}/ptr/k")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v, json!(3));
}

/// Kills the coordinator of a commit across partitions at `at` (after its `Prepare`s, or
/// after its record) and checks the new leader resolves it by the record: all of its
/// writes, or none.
async fn coordinator_dies(at: &str, committed: bool) {
    let mut node = Node::cluster_with_env(3, &[], &[("RESTM_FAULT_CRASH_AT", at)]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let l = leader_index(&node);
    let base = member(&mut node, l).base.clone();
    // Eight pointers: with 64 partitions they span several, so the commit has a record.
    let writes: Vec<Value> = (0..8).map(|i| json!({"ptr": format!("mid/{i}"), "value": i})).collect();
    let r = http.post(format!("{base}/txn")).json(&json!({"writes": writes})).send().await;
    assert!(r.is_err(), "the coordinator was to die mid-commit: {:?}", r.map(|r| r.status()));
    member(&mut node, l).kill();
    let other = (0..3).find(|i| *i != l).unwrap();
    let base = member(&mut node, other).base.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    for i in 0..8 {
        loop {
            let r = http.get(format!("{base}/ptr/mid%2F{i}")).send().await;
            match r.map(|r| r.status().as_u16()) {
                Ok(200) => {
                    seen.push(true);
                    break;
                }
                Ok(404) => {
                    seen.push(false);
                    break;
                }
                _ => {
                    assert!(
                        Instant::now() < deadline,
                        "mid/{i} unreadable for 30 s after the coordinator died"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    assert_eq!(seen, vec![committed; 8], "killed {at}: all of its writes or none");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_dies_after_its_record_is_committed_by_the_next_leader() {
    coordinator_dies("after-record", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_dies_before_its_record_is_aborted_by_the_next_leader() {
    coordinator_dies("after-prepare", false).await;
}

/// `restm serve` with `args`: it must exit with an error naming `why`.
fn refused(args: &[&str], why: &str) {
    let dir = restm_tests::temp_dir("refused");
    let out = std::process::Command::new(restm_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(&dir)
        .args(args)
        .output()
        .expect("run restm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} started");
    assert!(stderr.contains(why), "{args:?}: {stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cluster_flags_refuse_what_would_let_the_wrong_node_in() {
    let p = restm_tests::free_port();
    let one = format!("1=http://127.0.0.1:{p}");
    refused(
        &["--node-id", "1", "--peer-listen", &format!("0.0.0.0:{p}"), "--initial-cluster", &one],
        "--peer-token",
    );
    refused(
        &["--node-id", "2", "--peer-listen", &format!("127.0.0.1:{p}"), "--initial-cluster", &one],
        "does not name this node",
    );
    refused(&["--node-id", "1", "--initial-cluster", &one], "needs all of");
    refused(
        &["--node-id", "1", "--peer-listen", "127.0.0.1:1", "--initial-cluster", "1=http://x"],
        "not http://host:port",
    );
    refused(
        &[
            "--listen",
            "0.0.0.0:7999",
            "--auth-token",
            "t",
            "--peer-token",
            "p",
            "--node-id",
            "1",
            "--peer-listen",
            "127.0.0.1:1",
            "--initial-cluster",
            "1=http://127.0.0.1:1",
        ],
        "--advertise-client-url",
    );
    refused(
        &[
            "--node-id",
            "1",
            "--peer-listen",
            "127.0.0.1:1",
            "--initial-cluster",
            "1=http://127.0.0.1:1,1=http://127.0.0.1:2",
        ],
        "named twice",
    );
    let member =
        ["--node-id", "1", "--peer-listen", "127.0.0.1:1", "--initial-cluster", "1=http://127.0.0.1:1"];
    refused(
        &[&member[..], &["--heartbeat-interval", "300", "--election-timeout", "700"]].concat(),
        "at least 2.5",
    );
    refused(&[&member[..], &["--heartbeat-interval", "0"]].concat(), "--heartbeat-interval");
    refused(&[&member[..], &["--election-timeout", "ms"]].concat(), "--election-timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_a_three_member_cluster_and_stops_it() {
    use std::io::BufRead;
    // Consecutive ports: clients from base, peers from base + 10.
    let base = 20_000 + (std::process::id() % 20_000) as u16;
    let mut demo = std::process::Command::new(restm_bin())
        .args(["demo", "--nodes", "3", "--base-port", &base.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("run restm demo");
    let out = std::io::BufReader::new(demo.stdout.take().unwrap());
    let mut printed = Vec::new();
    for line in out.lines() {
        let line = line.unwrap();
        let done = line.starts_with("Ctrl-C");
        printed.push(line);
        if done {
            break;
        }
    }
    let text = printed.join("\n");
    for i in 0..3 {
        assert!(text.contains(&format!("http://127.0.0.1:{}", base + i)), "{text}");
    }
    assert!(text.contains("(leader)"), "{text}");
    let http = reqwest::Client::new();
    // A 503 says "retry": right after the start an election may still be settling.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = http
            .put(format!("http://127.0.0.1:{base}/ptr/hello"))
            .json(&json!("world"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 503, "only a retryable answer may come before the write");
        assert!(Instant::now() < deadline, "the demo's cluster took no write within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v: Value = http
        .get(format!("http://127.0.0.1:{}/ptr/hello", base + 2))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!("world"));
    // The member it says to add joins, as printed.
    let add =
        printed.iter().find_map(|l| l.trim().strip_prefix("add a member:")).expect("how to add a member");
    let words: Vec<&str> = add.split_whitespace().collect();
    let mut fourth = std::process::Command::new(words[0])
        .args(&words[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run the printed join");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s: Option<Value> = match http.get(format!("http://127.0.0.1:{base}/cluster")).send().await {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        let voters =
            s.as_ref().and_then(|s| s["groups"][0]["voters"].as_array().cloned()).unwrap_or_default();
        if voters.contains(&json!(4)) {
            break;
        }
        assert!(Instant::now() < deadline, "the printed member did not join within 60 s: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(text.contains("cluster move-leader 0 --to 2") && text.contains("cluster remove 3"), "{text}");
    let _ = fourth.kill();
    let _ = fourth.wait();
    // SIGTERM stops the demo and every member with it.
    std::process::Command::new("kill").args(["-TERM", &demo.id().to_string()]).status().unwrap();
    assert!(demo.wait().unwrap().success());
    for i in 0..3 {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", base + i)).is_err(),
            "member {} outlived the demo",
            i + 1
        );
    }
}

/// The value of the first sample of `name` (with these labels, if given) in `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_proposals_follower_lag_and_leader_changes() {
    let mut node = Node::cluster(3, &[]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let l = leader_index(&node);
    let base = member(&mut node, l).base.clone();
    for i in 0..5 {
        assert_eq!(http.put(format!("{base}/ptr/m{i}")).json(&json!(i)).send().await.unwrap().status(), 200);
    }
    // Latest reads back to back: the first confirms the lead with a round, the next ones
    // read under the lease it lent.
    for i in 0..5 {
        assert_eq!(http.get(format!("{base}/ptr/m{i}")).send().await.unwrap().status(), 200);
    }
    let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        sample(&text, "restm_raft_read_confirmations_total{via=\"round\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, "restm_raft_read_confirmations_total{via=\"lease\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(sample(&text, "restm_raft_proposals_total{outcome=\"ok\"}").unwrap_or(0.0) >= 5.0, "{text}");
    assert_eq!(sample(&text, "restm_raft_is_leader"), Some(1.0), "{text}");
    assert!(sample(&text, "restm_raft_propose_duration_seconds_count").unwrap_or(0.0) >= 5.0, "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("restm_raft_follower_lag_entries{")).count(),
        2,
        "{text}"
    );
    // The leader goes: a survivor saw the lead change, and someone stood for election.
    member(&mut node, l).kill();
    let other = (0..3).find(|i| *i != l).unwrap();
    let base = member(&mut node, other).base.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.put(format!("{base}/ptr/after")).json(&json!(1)).send().await.map(|r| r.status()).ok()
        != Some(reqwest::StatusCode::OK)
    {
        assert!(Instant::now() < deadline, "no write after the leader died");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut elections = 0.0;
    for i in (0..3).filter(|i| *i != l) {
        let text = http
            .get(format!("{}/metrics", member(&mut node, i).base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(sample(&text, "restm_raft_leader_changes_total").unwrap_or(0.0) >= 1.0, "{text}");
        elections += sample(&text, "restm_raft_elections_total").unwrap_or(0.0);
    }
    assert!(elections >= 1.0, "a survivor stood for election");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_both_followers_answers_503_and_loses_nothing() {
    let proxy = restm_tests::LinkProxy::default();
    let mut node = Node::cluster_through(3, &[], &proxy).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let l = leader_index(&node);
    let lead = member(&mut node, l).base.clone();
    assert_eq!(http.put(format!("{lead}/ptr/k")).json(&json!(0)).send().await.unwrap().status(), 200);
    // A latest read: the leader holds a lease from here.
    assert_eq!(http.get(format!("{lead}/ptr/k")).send().await.unwrap().status(), 200);
    let others: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    for o in &others {
        proxy.cut(l as u64 + 1, *o as u64 + 1);
    }
    // The proxies notice within 20 ms and drop the links' open connections.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The cut-off leader neither writes nor reads: it cannot reach a majority.
    for method in ["PUT", "GET"] {
        let started = Instant::now();
        let req = match method {
            "PUT" => http.put(format!("{lead}/ptr/k")).json(&json!(-1)),
            _ => http.get(format!("{lead}/ptr/k")),
        };
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 503, "{method} on the minority side");
        assert!(started.elapsed() < Duration::from_secs(10), "{method} took {:?}", started.elapsed());
    }
    // The majority elects a leader of its own and takes writes.
    let side = member(&mut node, others[0]).base.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut acked = None;
    for v in 1..=20 {
        loop {
            let r = http.put(format!("{side}/ptr/k")).json(&json!(v)).send().await.unwrap();
            if r.status() == 200 {
                acked = Some(v);
                break;
            }
            assert!(Instant::now() < deadline, "the majority took no write: {}", r.text().await.unwrap());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Still cut off, the old leader serves no latest read of what it holds: the majority
    // wrote after it (its lease, if it had one, ran out before anyone else could lead).
    let r = http.get(format!("{lead}/ptr/k")).send().await.unwrap();
    if r.status() == 200 {
        let v: Value = r.json().await.unwrap();
        assert_eq!(v.as_i64(), acked, "a stale latest read on the cut-off old leader");
    } else {
        assert_eq!(r.status(), 503);
    }
    // Healed, the old leader follows, and every member answers the majority's last write.
    proxy.heal();
    let deadline = Instant::now() + Duration::from_secs(20);
    for base in node.all().map(|n| n.base.clone()).collect::<Vec<_>>() {
        loop {
            let r = http.get(format!("{base}/ptr/k")).send().await.unwrap();
            if r.status() == 200 {
                let v: Value = r.json().await.unwrap();
                assert_eq!(Some(v.as_i64().unwrap()), acked, "read via {base}");
                break;
            }
            assert!(Instant::now() < deadline, "{base} did not answer after the heal");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The lowest closed timestamp a member reports over all its partitions (0 before any).
async fn closed_on(http: &reqwest::Client, base: &str) -> u64 {
    let st: Value = http.get(format!("{base}/cluster")).send().await.unwrap().json().await.unwrap();
    st["groups"][0]["closed"]
        .as_array()
        .and_then(|c| c.iter().map(|c| c["version"].as_u64().unwrap_or(0)).min())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_follower_serves_reads_below_its_closed_timestamp_and_nothing_later() {
    let proxy = restm_tests::LinkProxy::default();
    let mut node = Node::cluster_through(3, &[], &proxy).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let l = leader_index(&node);
    let lead = member(&mut node, l).base.clone();
    let f = (l + 1) % 3;
    let follower = member(&mut node, f).base.clone();
    let put = |v: i64| http.put(format!("{lead}/ptr/fr")).json(&json!(v)).send();
    let r = put(1).await.unwrap();
    assert_eq!(r.status(), 200);
    let v1: u64 = r.headers()["x-restm-version"].to_str().unwrap().parse().unwrap();
    // The follower applies a Close above the write, on every partition, within a few ticks.
    let deadline = Instant::now() + Duration::from_secs(10);
    while closed_on(&http, &follower).await < v1 {
        assert!(Instant::now() < deadline, "the follower's closed timestamp never passed {v1}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for o in (0..3).filter(|i| *i != f) {
        proxy.cut(f as u64 + 1, o as u64 + 1);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = put(2).await.unwrap();
    assert_eq!(r.status(), 200, "the majority still writes");
    let v2: u64 = r.headers()["x-restm-version"].to_str().unwrap().parse().unwrap();
    // At v1 the follower answers itself, right, though it hears from nobody.
    let r = http.get(format!("{follower}/ptr/fr")).header("X-reSTM-At", v1.to_string()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-restm-served-by"].to_str().unwrap(), (f + 1).to_string());
    assert_eq!(r.json::<Value>().await.unwrap(), json!(1));
    // At v2 it has closed nothing that high: it does not answer from its own state.
    let r = http.get(format!("{follower}/ptr/fr")).header("X-reSTM-At", v2.to_string()).send().await.unwrap();
    if r.status() == 200 {
        assert_ne!(r.headers()["x-restm-served-by"].to_str().unwrap(), (f + 1).to_string());
        assert_eq!(r.json::<Value>().await.unwrap(), json!(2));
    } else {
        assert!(matches!(r.status().as_u16(), 400 | 503), "{}", r.status());
    }
    proxy.heal();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn as_of_reads_on_every_member_are_exact_while_writes_go_on() {
    let mut node = Node::cluster(3, &[]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let l = leader_index(&node);
    let lead = member(&mut node, l).base.clone();
    let bases: Vec<String> = (0..3).map(|i| member(&mut node, i).base.clone()).collect();
    // Writes of 0, 1, 2, … to one pointer, each read back at its version, while the
    // next ones land, from every member in turn: whoever serves it, the answer is exact.
    let mut versions = Vec::new();
    for i in 0..60i64 {
        let r = http.put(format!("{lead}/ptr/exact")).json(&json!(i)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: u64 = r.headers()["x-restm-version"].to_str().unwrap().parse().unwrap();
        versions.push(v);
        let at = versions[(i as usize).saturating_sub(3)];
        let want = (i - 3).max(0);
        let base = &bases[i as usize % 3];
        let r =
            http.get(format!("{base}/ptr/exact")).header("X-reSTM-At", at.to_string()).send().await.unwrap();
        assert_eq!(r.status(), 200, "{base} at {at}");
        assert_eq!(r.json::<Value>().await.unwrap(), json!(want), "{base} at {at}");
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    // Once every member closed past the last write, each serves all of it itself, exactly,
    // including the moments between two writes.
    let last = *versions.last().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for base in &bases {
        while closed_on(&http, base).await < last {
            assert!(Instant::now() < deadline, "{base} never closed past {last}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for (m, base) in bases.iter().enumerate() {
        for (i, v) in versions.iter().enumerate() {
            for (at, want) in [(*v, i as i64), (v - 1, i as i64 - 1)] {
                let r = http
                    .get(format!("{base}/ptr/exact"))
                    .header("X-reSTM-At", at.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    r.headers()["x-restm-served-by"].to_str().unwrap(),
                    (m + 1).to_string(),
                    "{base} at {at}"
                );
                if want < 0 {
                    assert_eq!(r.status(), 404, "{base} before the first write");
                } else {
                    assert_eq!(r.status(), 200, "{base} at {at}");
                    assert_eq!(r.json::<Value>().await.unwrap(), json!(want), "{base} at {at}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pin_holds_every_members_history_and_outlives_its_leader() {
    let fast = ["--retention", "300ms", "--gc-interval", "50ms", "--hot-versions", "2"];
    let mut node = Node::cluster(3, &fast);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let l = leader_index(&node);
    let lead = member(&mut node, l).base.clone();
    let f = (l + 1) % 3;
    let follower = member(&mut node, f).base.clone();
    let r = http.put(format!("{lead}/ptr/p")).json(&json!(1)).send().await.unwrap();
    let v1: u64 = r.headers()["x-restm-version"].to_str().unwrap().parse().unwrap();
    // Pinned through a follower: it goes to the leader, and through the log to everyone.
    let r = http
        .post(format!("{follower}/pins"))
        .json(&json!({"at": v1.to_string(), "ttl": "5m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    for v in 2..=4 {
        assert_eq!(http.put(format!("{lead}/ptr/p")).json(&json!(v)).send().await.unwrap().status(), 200);
    }
    // Far past the retention: each member's own GC kept v1, so each serves it itself.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    for m in 0..3 {
        let base = member(&mut node, m).base.clone();
        let r = http.get(format!("{base}/ptr/p")).header("X-reSTM-At", v1.to_string()).send().await.unwrap();
        assert_eq!(r.status(), 200, "{base} at the pin");
        assert_eq!(r.headers()["x-restm-served-by"].to_str().unwrap(), (m + 1).to_string(), "{base}");
        assert_eq!(r.json::<Value>().await.unwrap(), json!(1));
    }
    // The leader dies; the next one still has the pin, and what it holds.
    member(&mut node, l).kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    let pins = loop {
        let r = http.get(format!("{follower}/pins")).send().await.unwrap();
        if r.status() == 200 {
            break r.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "no leader after the kill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(pins["pins"].as_array().unwrap().iter().any(|p| p["id"] == id.as_str()), "{pins}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = http.get(format!("{follower}/ptr/p")).header("X-reSTM-At", v1.to_string()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!(1));
    // Removed through the log, it is gone on the next leader too.
    assert_eq!(http.delete(format!("{follower}/pins/{id}")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{follower}/pins/{id}")).send().await.unwrap().status(), 404);
}

/// A long txn on the leader holds every member's GC, not only the leader's: the leader's
/// watermark is the cluster's horizon, and no member prunes past it. Each member serves the
/// txn's snapshot itself long after the retention, and the next leader still holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_txn_on_the_leader_holds_every_members_history() {
    let fast = ["--retention", "300ms", "--gc-interval", "50ms", "--hot-versions", "2"];
    let mut node = Node::cluster(3, &fast);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let l = leader_index(&node);
    let lead = member(&mut node, l).base.clone();
    assert_eq!(http.put(format!("{lead}/ptr/p")).json(&json!(1)).send().await.unwrap().status(), 200);
    let begin =
        json_ok(http.post(format!("{lead}/txn/begin")).json(&json!({"timeout_ms": 60_000})).send().await)
            .await
            .unwrap();
    let (txn, snapshot) =
        (begin["txn"].as_str().unwrap().to_string(), begin["read_version"].as_u64().unwrap());
    for v in 2..=4 {
        assert_eq!(http.put(format!("{lead}/ptr/p")).json(&json!(v)).send().await.unwrap().status(), 200);
    }
    // Far past the retention, with the txn still open.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let gc = json_ok(http.get(format!("{lead}/gc")).send().await).await.unwrap();
    assert_eq!(gc["held_by"]["kind"], "txn", "{gc}");
    for m in 0..3 {
        let base = member(&mut node, m).base.clone();
        let r = http
            .get(format!("{base}/ptr/p"))
            .header("X-reSTM-At", snapshot.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{base} at the txn's snapshot");
        assert_eq!(r.headers()["x-restm-served-by"].to_str().unwrap(), (m + 1).to_string(), "{base}");
        assert_eq!(r.json::<Value>().await.unwrap(), json!(1), "{base}");
    }
    let r = http.get(format!("{lead}/ptr/p")).header("X-reSTM-Txn", &txn).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!(1), "the txn reads its snapshot");
    // The leader dies with the txn: the next one has every version the txn could read.
    member(&mut node, l).kill();
    let f = (l + 1) % 3;
    let follower = member(&mut node, f).base.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = http.get(format!("{follower}/ptr/p")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no leader after the kill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = http
        .get(format!("{follower}/ptr/p"))
        .header("X-reSTM-At", snapshot.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    // Once the new leader's own watermark passes it, GC may go on: 410 then, never a wrong value.
    assert!(status == 200 && body == "1" || status == 410, "{status} {body}");
}

/// Where every member coordinates, the watermark is the cluster's: a long txn on one
/// member holds every replica's GC (its reads on groups led elsewhere keep their
/// snapshot), `/gc` on another member names it and its member, and a member that goes
/// silent holds the watermark at its last promise until it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watermark_is_every_members_and_a_silent_member_holds_it() {
    let fast = ["--retention", "300ms", "--gc-interval", "50ms", "--hot-versions", "2", "--groups", "4"];
    let mut node = Node::cluster(3, &fast);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let bases: Vec<String> = node.all().map(|m| m.base.clone()).collect();
    let gc = |base: &str| {
        let (http, url) = (http.clone(), format!("{base}/gc"));
        async move { json_ok(http.get(url).send().await).await.unwrap() }
    };
    // Pointers in every group, so that most are led away from the txn's coordinator.
    let ptrs: Vec<String> = (0..8).map(|i| format!("wm{i}")).collect();
    for p in &ptrs {
        assert_eq!(
            http.put(format!("{}/ptr/{p}", bases[0])).json(&json!(1)).send().await.unwrap().status(),
            200
        );
    }
    let begin = json_ok(
        http.post(format!("{}/txn/begin", bases[1])).json(&json!({"timeout_ms": 60_000})).send().await,
    )
    .await
    .unwrap();
    let (txn, snapshot) =
        (begin["txn"].as_str().unwrap().to_string(), begin["read_version"].as_u64().unwrap());
    assert!(txn.starts_with("n2-"), "member 2 coordinates it: {txn}");
    for v in 2..=4 {
        for p in &ptrs {
            let r = http.put(format!("{}/ptr/{p}", bases[2])).json(&json!(v)).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    // Far past the retention, with the txn still open.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let s = gc(&bases[0]).await;
    assert_eq!(s["held_by"], json!({"kind": "txn", "id": txn, "node": 2}), "{s}");
    assert!(s["watermark"].as_u64().unwrap() <= snapshot, "{s}");
    assert!(s["cluster_horizon"].as_u64().unwrap() <= snapshot, "{s}");
    for p in &ptrs {
        let r = http.get(format!("{}/ptr/{p}", bases[1])).header("X-reSTM-Txn", &txn).send().await.unwrap();
        assert_eq!(r.status(), 200, "{p} in the txn");
        assert_eq!(r.json::<Value>().await.unwrap(), json!(1), "{p}: the txn reads its snapshot");
    }
    for base in &bases {
        let r = http
            .get(format!("{base}/ptr/wm0"))
            .header("X-reSTM-At", snapshot.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{base} at the txn's snapshot");
        assert_eq!(r.json::<Value>().await.unwrap(), json!(1), "{base}");
    }
    // Once it ends, the watermark and every member's horizon move past it.
    let r = http.post(format!("{}/txn/{txn}/abort", bases[1])).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    for base in &bases {
        let s = gc_until(&http, base, "GC to pass the ended txn", |s| {
            s["held_by"]["kind"] != "txn" && s["horizon"].as_u64().unwrap() > snapshot
        })
        .await;
        assert!(s["cluster_horizon"].as_u64().unwrap() > snapshot, "{s}");
    }
    let r = http
        .get(format!("{}/ptr/wm0", bases[0]))
        .header("X-reSTM-At", snapshot.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410, "pruned once nothing holds it");
    // Member 3 goes silent: it holds the watermark at its last promise, never skipped.
    member(&mut node, 2).kill();
    let held = gc_until(&http, &bases[0], "the silent member to hold the watermark", |s| {
        s["held_by"] == json!({"kind": "unreachable", "node": 3})
    })
    .await;
    assert_eq!(held["unreachable"], json!([3]), "{held}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let still = gc(&bases[0]).await;
    assert_eq!(still["watermark"], held["watermark"], "{still}");
    assert!(still["cluster_horizon"].as_u64() <= held["watermark"].as_u64(), "{still}");
    // Back, it answers again, and the watermark moves on.
    member(&mut node, 2).restart();
    let w = held["watermark"].as_u64().unwrap();
    gc_until(&http, &bases[0], "the watermark to move once member 3 is back", |s| {
        s["watermark"].as_u64().unwrap() > w && s.get("unreachable").is_none()
    })
    .await;
}

/// Where every member coordinates, each group's leader closes its own partitions, so no
/// close refuses a commit in flight: writes of distinct pointers through every member, one
/// by one and in interactive txns, all commit, and every partition's closed timestamp moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closes_refuse_no_commit_in_flight_where_every_member_coordinates() {
    let node = Node::cluster(3, &["--groups", "4"]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let bases: Vec<String> = node.all().map(|m| m.base.clone()).collect();
    let closed = |base: String| {
        let http = http.clone();
        async move {
            let s = json_ok(http.get(format!("{base}/cluster")).send().await).await.unwrap();
            let mut at: Vec<(u64, u64)> = s["groups"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|g| g["closed"].as_array().unwrap().clone())
                .map(|c| (c["partition"].as_u64().unwrap(), c["version"].as_u64().unwrap()))
                .collect();
            at.sort_unstable();
            at
        }
    };
    let before = closed(bases[0].clone()).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut clients = Vec::new();
    for (m, base) in bases.iter().enumerate() {
        for c in 0..3 {
            let (http, base) = (http.clone(), base.clone());
            clients.push(tokio::spawn(async move {
                let (mut done, mut refused) = (0, Vec::new());
                let mut i = 0;
                while Instant::now() < deadline {
                    i += 1;
                    let ptr = format!("cl-{m}-{c}-{i}");
                    let r = if i % 2 == 0 {
                        http.put(format!("{base}/ptr/{ptr}")).json(&json!(i)).send().await.unwrap()
                    } else {
                        let begin =
                            http.post(format!("{base}/txn/begin")).json(&json!({})).send().await.unwrap();
                        let txn = begin.json::<Value>().await.unwrap()["txn"].as_str().unwrap().to_string();
                        let put = http
                            .put(format!("{base}/ptr/{ptr}"))
                            .header("X-reSTM-Txn", &txn)
                            .json(&json!(i))
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(put.status(), 200, "{ptr} in {txn}");
                        http.post(format!("{base}/txn/{txn}/commit")).send().await.unwrap()
                    };
                    if r.status().is_success() {
                        done += 1;
                    } else {
                        refused.push(format!("{ptr}: {} {}", r.status(), r.text().await.unwrap()));
                    }
                }
                (done, refused)
            }));
        }
    }
    let (mut done, mut refused) = (0, Vec::new());
    for c in clients {
        let (d, r) = c.await.unwrap();
        done += d;
        refused.extend(r);
    }
    assert!(
        refused.is_empty(),
        "{} of {} refused: {:?}",
        refused.len(),
        done + refused.len(),
        &refused[..refused.len().min(5)]
    );
    assert!(done > 50, "only {done} commits");
    let after = closed(bases[1].clone()).await;
    assert_eq!(after.len(), before.len());
    for ((p, was), (_, now)) in before.iter().zip(&after) {
        assert!(now > was, "partition {p}'s closed timestamp stood at {was}");
    }
}

/// Polls `base`'s `/gc` until `done` holds (at most 15 s).
async fn gc_until(http: &reqwest::Client, base: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = json_ok(http.get(format!("{base}/gc")).send().await).await.unwrap();
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /cluster` keeps each member's leader timeline and answers `X-reSTM-At`: as of a
/// moment before the leader was killed, the old leader led; now, the next one does, and
/// both changes are on the timeline in order, also after that member restarts. A bad
/// moment is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_as_of_a_moment_names_who_led_then() {
    let mut node = Node::cluster(3, &[]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let l = leader_index(&node);
    let old = l as u64 + 1;
    let follower = member(&mut node, (l + 1) % 3).base.clone();
    let r = http.put(format!("{follower}/ptr/led")).json(&json!(1)).send().await.unwrap();
    let before: u64 = r.headers()["x-restm-version"].to_str().unwrap().parse().unwrap();
    member(&mut node, l).kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    let now = loop {
        let s = json_ok(http.get(format!("{follower}/cluster")).send().await).await.unwrap();
        if s["groups"][0]["leader"].as_u64().is_some_and(|n| n != old) {
            break s;
        }
        assert!(Instant::now() < deadline, "no new leader: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let next = now["groups"][0]["leader"].as_u64().unwrap();
    let changes = now["leader_changes"].as_array().unwrap();
    let led: Vec<Option<u64>> = changes.iter().map(|c| c["leader"].as_u64()).collect();
    let (i_old, i_next) = (
        led.iter().position(|n| *n == Some(old)).expect("the old leader on the timeline"),
        led.iter().rposition(|n| *n == Some(next)).expect("the next leader on the timeline"),
    );
    assert!(i_old < i_next, "{changes:?}");
    let versions: Vec<u64> = changes.iter().map(|c| c["version"].as_u64().unwrap()).collect();
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
    let then = json_ok(
        http.get(format!("{follower}/cluster")).header("X-reSTM-At", before.to_string()).send().await,
    )
    .await
    .unwrap();
    assert_eq!(then["as_of"], before, "{then}");
    assert_eq!(then["groups"][0]["leader"], old, "as of before the kill: {then}");
    assert!(then["leader_changes"].as_array().unwrap().iter().all(|c| c["version"].as_u64() <= Some(before)));
    let r =
        http.get(format!("{follower}/cluster")).header("X-reSTM-At", "not a moment").send().await.unwrap();
    problem(r, 400, "bad-request").await;
    // The timeline is kept on disk: restarted, the member still answers who led then.
    member(&mut node, (l + 1) % 3).restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let then = loop {
        let r = http.get(format!("{follower}/cluster")).header("X-reSTM-At", before.to_string()).send().await;
        match json_ok(r).await {
            Ok(s) => break s,
            Err(_) => assert!(Instant::now() < deadline, "the restarted member does not answer /cluster"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(then["groups"][0]["leader"], old, "as of before the kill, after a restart: {then}");
    let now = json_ok(http.get(format!("{follower}/cluster")).send().await).await.unwrap();
    let kept: Vec<Option<u64>> =
        now["leader_changes"].as_array().unwrap().iter().map(|c| c["leader"].as_u64()).collect();
    assert!(kept.contains(&Some(old)) && kept.contains(&Some(next)), "after a restart: {kept:?}");
}

/// A follower hears only the leader, so of another follower it takes the leader's word:
/// a follower killed is `down` in the other follower's `/cluster`, not `unknown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_takes_the_leaders_word_for_another_follower() {
    let mut node = Node::cluster(3, &[]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let l = leader_index(&node);
    let (f1, f2) = ((l + 1) % 3, (l + 2) % 3);
    let asker = member(&mut node, f1).base.clone();
    member(&mut node, f2).kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = json_ok(http.get(format!("{asker}/cluster")).send().await).await.unwrap();
        let state = |id: usize| {
            s["members"].as_array().unwrap().iter().find(|m| m["node_id"] == id as u64 + 1).unwrap()["state"]
                .clone()
        };
        if state(f2) == "down" {
            assert_eq!(state(l), "up", "{s}");
            assert_eq!(state(f1), "up", "{s}");
            break;
        }
        assert!(state(f2) != "unknown" || Instant::now() < deadline, "still unknown: {s}");
        assert!(Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `restm cluster status` prints what `GET /cluster` says, as a table or as JSON.
#[test]
fn restm_cluster_status_prints_the_members_the_leader_and_the_lag() {
    let node = Node::cluster(3, &[]);
    let l = leader_index(&node);
    let status = |base: &str, json: bool| {
        let mut cmd = std::process::Command::new(restm_bin());
        cmd.args(["cluster", "status", "--target", base]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let lead = node.all().nth(l).unwrap().base.clone();
    let follower = node.all().nth((l + 1) % 3).unwrap().base.clone();
    let text = status(&lead, false);
    assert!(text.contains(&format!("leader node {}", l + 1)), "{text}");
    assert!(text.contains("this node: leader"), "{text}");
    assert_eq!(text.matches("follower ").count(), 2, "each follower's lag: {text}");
    for id in 1..=3 {
        assert!(
            text.lines().any(|line| line.trim_start().starts_with(&format!("{id} "))),
            "member {id}: {text}"
        );
    }
    let text = status(&follower, false);
    assert!(
        text.contains("this node: follower") && text.contains(&format!("leader node {}", l + 1)),
        "{text}"
    );
    let json: restm_shared::ClusterStatus = serde_json::from_str(&status(&follower, true)).unwrap();
    assert_eq!((json.members.len(), json.groups[0].leader), (3, Some(l as u64 + 1)));
    let timing = json.timing.expect("a cluster's timing");
    assert_eq!(
        (timing.heartbeat_interval_ms, timing.election_timeout_ms, timing.lease_ms),
        (250, 700, 350),
        "the defaults"
    );
    assert!(text.contains("election timeout 700 ms"), "{text}");
    assert!(text.contains(&format!("group 0: node {}, term", l + 1)), "the leader timeline: {text}");
    // As of an hour ago (within the day kept), before the cluster formed, no group had a
    // leader this member saw.
    let mut cmd = std::process::Command::new(restm_bin());
    cmd.args(["cluster", "status", "--target", &follower, "--at=-1h"]);
    let out = cmd.output().unwrap();
    let then = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && then.contains("saw it at") && then.contains("leader none elected"),
        "{then}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let one = Node::start();
    assert!(status(&one.base, false).contains("a cluster of one"));
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next event on `ws`, or `Err` with the close code once the stream ends.
async fn next_event(ws: &mut Ws) -> Result<Value, Option<u16>> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next()).await.expect("an event or the end") {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return Err(None),
        }
    }
}

/// `/events` on a follower is the leader's stream, so it shows the cluster's transactions
/// (a conflict names its winner). When the lead moves the stream ends with 1012 (reconnect),
/// and a reconnect to the same member follows the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_a_follower_are_the_leaders_and_follow_the_lead_when_it_moves() {
    let mut node = Node::cluster(3, &[]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let l = leader_index(&node);
    let f = (l + 1) % 3;
    let (follower, port) = {
        let m = member(&mut node, f);
        (m.base.clone(), m.port)
    };
    let subscribe = || async move {
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/events?kinds=conflict,commit")).await
    };
    let mut ws = subscribe().await.expect("the follower relays the leader's stream").0;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A conflict, all through the follower: a reads ev/x, a one-shot writes it, a commits.
    let begin = json_ok(http.post(format!("{follower}/txn/begin")).send().await).await.unwrap();
    let a = begin["txn"].as_str().unwrap().to_string();
    let r = http.get(format!("{follower}/ptr/ev%2Fx")).header("X-reSTM-Txn", &a).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http.put(format!("{follower}/ptr/ev%2Fx")).json(&json!(1)).send().await.unwrap();
    let winner: u64 = r.headers()["x-restm-version"].to_str().unwrap().parse().unwrap();
    let r = http
        .put(format!("{follower}/ptr/ev%2Fy"))
        .header("X-reSTM-Txn", &a)
        .json(&json!(2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(http.post(format!("{follower}/txn/{a}/commit")).send().await.unwrap().status(), 409);
    let conflict = loop {
        let e = next_event(&mut ws).await.expect("the conflict");
        if e["kind"] == "conflict" {
            break e;
        }
    };
    assert_eq!(conflict["txn"], a.as_str(), "{conflict}");
    assert_eq!(conflict["winner_version"], winner, "{conflict}");
    assert!(conflict["winner_txn"].as_str().is_some_and(|t| !t.is_empty()), "{conflict}");
    // The leader dies: the relayed stream ends, saying to reconnect.
    member(&mut node, l).kill();
    let code = loop {
        match next_event(&mut ws).await {
            Ok(_) => continue,
            Err(code) => break code,
        }
    };
    assert_eq!(code, Some(1012), "the stream ends with 'service restart'");
    // Reconnected to the same member, the stream is the new leader's.
    let deadline = Instant::now() + Duration::from_secs(20);
    let version = loop {
        let r = http.put(format!("{follower}/ptr/ev%2Fz")).json(&json!(3)).send().await.unwrap();
        if r.status() == 200 {
            break r.headers()["x-restm-version"].to_str().unwrap().parse::<u64>().unwrap();
        }
        assert!(Instant::now() < deadline, "no leader after the kill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut ws = subscribe().await.expect("a stream from the new leader").0;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = http.put(format!("{follower}/ptr/ev%2Fz")).json(&json!(4)).send().await.unwrap();
    let later: u64 = r.headers()["x-restm-version"].to_str().unwrap().parse().unwrap();
    assert!(later > version);
    loop {
        let e = next_event(&mut ws).await.expect("the commit");
        if e["kind"] == "commit" && e["version"] == later {
            break;
        }
    }
}

/// Commits one txn begun at `base` (so coordinated there); its id and commit version.
async fn commit_at(http: &reqwest::Client, base: &str, ptr: &str) -> (String, u64) {
    let begin = json_ok(http.post(format!("{base}/txn/begin")).send().await).await.unwrap();
    let txn = begin["txn"].as_str().unwrap().to_string();
    let r = http
        .put(format!("{base}/ptr/{ptr}"))
        .header("X-reSTM-Txn", &txn)
        .json(&json!(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let done = json_ok(http.post(format!("{base}/txn/{txn}/commit")).send().await).await.unwrap();
    (txn, done["commit_version"].as_u64().unwrap())
}

/// The next event on `ws` of one of `kinds`.
async fn next_of(ws: &mut Ws, kinds: &[&str]) -> Value {
    loop {
        let e = next_event(ws).await.expect("an event");
        if kinds.contains(&e["kind"].as_str().unwrap_or_default()) {
            return e;
        }
    }
}

/// Where every member coordinates, `/events` at any member is every member's stream merged:
/// each event names the member that numbered it, a reconnect with `since` per member resumes
/// each exactly (nothing twice, nothing lost), and a member that dies is said to be down,
/// then up, and its events flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_at_any_member_merge_every_members_and_resume_per_member() {
    let mut node = Node::cluster(3, &["--groups", "4"]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let bases: Vec<String> = node.all().map(|m| m.base.clone()).collect();
    let ports: Vec<u16> = node.all().map(|m| m.port).collect();
    let subscribe = |port: u16, since: String| async move {
        let q = if since.is_empty() { String::new() } else { format!("&since={since}") };
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/events?kinds=commit{q}"))
            .await
            .expect("a merged stream")
            .0
    };
    let mut ws = subscribe(ports[0], String::new()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut since = restm_shared::Since::default();
    for (i, base) in bases.iter().enumerate() {
        let (txn, version) = commit_at(&http, base, &format!("mg%2F{i}")).await;
        let e = next_of(&mut ws, &["commit"]).await;
        assert_eq!((e["txn"].as_str(), e["version"].as_u64()), (Some(txn.as_str()), Some(version)), "{e}");
        assert_eq!(e["node"], i as u64 + 1, "the member that coordinated it numbered it: {e}");
        since.saw(&serde_json::from_value(e).unwrap());
    }
    drop(ws);
    // Committed while nobody listens; a reconnect elsewhere, with since, gets exactly these.
    let (missed_3, _) = commit_at(&http, &bases[2], "mg%2Fm3").await;
    let (missed_1, _) = commit_at(&http, &bases[0], "mg%2Fm1").await;
    let mut ws = subscribe(ports[1], since.to_string()).await;
    let mut resumed = HashSet::new();
    while resumed.len() < 2 {
        let e = next_of(&mut ws, &["commit"]).await;
        let txn = e["txn"].as_str().unwrap().to_string();
        assert!(txn == missed_1 || txn == missed_3, "replayed an event seen before: {e} (since={since})");
        assert!(resumed.insert(txn), "sent twice: {e}");
    }
    // Member 3 dies: the stream says so, and says when it is back; its events follow.
    member(&mut node, 2).kill();
    let down = next_of(&mut ws, &["member_down"]).await;
    assert_eq!(down["node"], 3, "{down}");
    member(&mut node, 2).restart();
    let up = next_of(&mut ws, &["member_up"]).await;
    assert_eq!(up["node"], 3, "{up}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let txn = loop {
        let health = http.get(format!("{}/health", bases[2])).send().await;
        if health.as_ref().is_ok_and(|r| r.status() == 200) {
            let (txn, _) = commit_at(&http, &bases[2], "mg%2Fback").await;
            break txn;
        }
        assert!(Instant::now() < deadline, "member 3 did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    loop {
        let e = next_of(&mut ws, &["commit"]).await;
        if e["txn"] == txn.as_str() {
            assert_eq!(e["node"], 3, "{e}");
            break;
        }
    }
}

/// Where every member coordinates, a txn that writes and reads one partition of a group
/// another member leads commits in one entry, at that leader (`Request::CommitOne`), not
/// in three (`Prepare`, record, `Commit`): the coordinator counts one proposal per commit,
/// and what it committed is there at every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_partition_txn_commits_in_one_entry_at_its_groups_leader() {
    const TXNS: usize = 20;
    let node = Node::cluster(3, &["--groups", "2", "--rebalance-interval", "0s"]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let bases: Vec<String> = node.all().map(|n| n.base.clone()).collect();
    let s = restm_tests::cluster_until(&http, &bases[0], Duration::from_secs(30), "every group led", |s| {
        s.groups.iter().all(|g| g.leader.is_some())
    })
    .await;
    let leaders: HashSet<u64> = s.groups.iter().filter_map(|g| g.leader).collect();
    // A member that leads neither group coordinates every txn below elsewhere.
    let m = (1..=3u64).find(|n| !leaders.contains(n)).unwrap();
    let base = bases[m as usize - 1].clone();
    let proposals = |text: &str| sample(text, "restm_raft_proposals_total{outcome=\"ok\"}").unwrap_or(0.0);
    let before = proposals(&http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap());
    for i in 0..TXNS {
        let r = http.post(format!("{base}/txn/begin")).json(&json!({})).send().await.unwrap();
        assert_eq!(r.status(), 201);
        let txn = r.json::<restm_shared::BeginResponse>().await.unwrap().txn;
        let ptr = format!("{base}/ptr/one%2F{i}");
        let r =
            http.get(&ptr).header("X-reSTM-Txn", &txn).header("X-reSTM-Lock", "update").send().await.unwrap();
        assert_eq!(r.status(), 404, "{}", r.text().await.unwrap());
        let r = http.put(&ptr).header("X-reSTM-Txn", &txn).json(&json!(i)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let r = http.post(format!("{base}/txn/{txn}/commit")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let after = proposals(&http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap());
    let counted = (after - before) as usize;
    assert!(
        (TXNS..2 * TXNS).contains(&counted),
        "{TXNS} one-partition commits at member {m}, which leads no group, counted {counted} proposals"
    );
    for other in bases.iter().filter(|b| **b != base) {
        for i in 0..TXNS {
            let r = http.get(format!("{other}/ptr/one%2F{i}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "one/{i} at {other}");
            assert_eq!(r.json::<Value>().await.unwrap(), json!(i), "one/{i} at {other}");
        }
    }
}
