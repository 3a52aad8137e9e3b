//! Membership changes on a cluster of real processes: a node joins a running cluster
//! (`serve --join`) and becomes a voter of every group, serving what was written before it
//! came; a dead member is removed; a removal that would lose a majority is refused, naming
//! the partitions; and bad requests get problems, not changes.

use std::time::{Duration, Instant};

use restm_tests::list_append::Outcome;
use restm_tests::{Api, Node, cluster_of, cluster_until as until, problem};
use serde_json::{Value, json};

fn voter_everywhere(s: &restm_shared::ClusterStatus, node: u64) -> bool {
    !s.groups.is_empty() && s.groups.iter().all(|g| g.voters.contains(&node) && g.leader.is_some())
}

fn in_no_group(s: &restm_shared::ClusterStatus, node: u64) -> bool {
    s.groups.iter().all(|g| !g.voters.contains(&node) && !g.learners.contains(&node) && g.leader.is_some())
}

/// Writes `ptr` = `value` through `base`, retrying while a group elects (up to 20 s).
async fn put(http: &reqwest::Client, base: &str, ptr: &str, value: Value) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = http.put(format!("{base}/ptr/{}", restm_tests::enc(ptr))).json(&value).send().await;
        match r {
            Ok(r) if r.status() == 200 => return,
            other => assert!(Instant::now() < deadline, "PUT {ptr} at {base}: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_a_running_cluster_and_a_dead_one_is_removed() {
    let mut cluster = Node::cluster(3, &["--groups", "4"]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(90)).build().unwrap();
    let api = Api::new(&cluster);
    let mut before = 0;
    for i in 0..16 {
        before = api.put_ok(&format!("m/{i}"), &json!(i)).await;
    }
    let base1 = cluster.base.clone();
    let base2 = cluster.members[0].base.clone();

    // Bad requests change nothing.
    let members = format!("{base1}/cluster/members");
    for (body, why) in [
        (json!({"id": 0, "peer_url": "http://127.0.0.1:1"}), "a whole number from 1"),
        (json!({"id": 9, "peer_url": "127.0.0.1:1"}), "not http://host:port"),
        (json!({"id": 9, "peer_url": "http://127.0.0.1:0"}), "not http://host:port"),
        (json!({"id": 9}), "missing field"),
        (json!({"id": 9, "peer_url": "http://127.0.0.1:1", "role": "voter"}), "unknown field"),
    ] {
        let p = problem(http.post(&members).json(&body).send().await.unwrap(), 400, "bad-request").await;
        assert!(p.detail.contains(why), "{body}: {}", p.detail);
    }
    let moved = json!({"id": 2, "peer_url": "http://127.0.0.1:1"});
    let p = problem(http.post(&members).json(&moved).send().await.unwrap(), 409, "member-exists").await;
    assert!(p.detail.contains("node 2 is a member already"), "{}", p.detail);
    for (id, status, code) in
        [("abc", 400, "bad-request"), ("0", 400, "bad-request"), ("9", 404, "not-found")]
    {
        let r = http.delete(format!("{members}/{id}")).send().await.unwrap();
        problem(r, status, code).await;
    }
    let s = cluster_of(&http, &base1).await.unwrap();
    assert!(s.groups.iter().all(|g| g.voters == [1, 2, 3] && g.learners.is_empty()), "{s:?}");

    // A fourth node joins through member 1 and becomes a voter of every group; it then
    // serves what was written before it came, and what is written after.
    let joined = Instant::now();
    let mut n4 = cluster.join(4, &[]);
    for base in [&base1, &base2, &n4.base] {
        until(&http, base, Duration::from_secs(60), "with 4 a voter everywhere", |s| voter_everywhere(s, 4))
            .await;
    }
    eprintln!("node 4 was a voter of every group {:?} after it started", joined.elapsed());
    // The timeline keeps the change: as of before the join, the groups had three voters.
    let r =
        http.get(format!("{base1}/cluster")).header("X-reSTM-At", before.to_string()).send().await.unwrap();
    let then: restm_shared::ClusterStatus = r.json().await.unwrap();
    assert!(then.groups.iter().all(|g| g.voters == [1, 2, 3]), "{:?}", then.groups);
    let now = cluster_of(&http, &base1).await.unwrap();
    for g in 0..4 {
        let seen = now.leader_changes.iter().filter(|c| c.group == g);
        assert!(seen.clone().any(|c| c.voters == [1, 2, 3]), "group {g}: {:?}", now.leader_changes);
        assert!(seen.clone().any(|c| c.voters == [1, 2, 3, 4]), "group {g}: {:?}", now.leader_changes);
    }
    let api4 = Api::only(&n4.base);
    for i in 0..16 {
        assert_eq!(api4.value(&format!("m/{i}")).await, Some(json!(i)), "m/{i} on the new member");
    }
    put(&http, &n4.base, "m/after", json!("four")).await;
    assert_eq!(Api::only(&base2).value("m/after").await, Some(json!("four")));
    // Asking again for the same node at the same address changes nothing.
    let again = json!({"id": 4, "peer_url": n4.extra_arg("--peer-listen").map(|a| format!("http://{a}"))});
    let r = http.post(format!("{base2}/cluster/members")).json(&again).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // Member 1 dies; the other three (a majority of four) go on, and remove it.
    cluster.kill();
    put(&http, &base2, "m/without-1", json!(1)).await;
    // By the CLI, which prints the cluster as it then stands.
    let target = base2.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(restm_tests::restm_bin())
            .args(["cluster", "remove", "1", "--target", &target])
            .output()
            .expect("run restm cluster remove")
    })
    .await
    .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed} {}", String::from_utf8_lossy(&out.stderr));
    assert!(printed.contains("members") && !printed.contains("\n  1 "), "{printed}");
    for base in [&base2, &n4.base] {
        until(&http, base, Duration::from_secs(30), "without 1", |s| in_no_group(s, 1)).await;
    }
    put(&http, &n4.base, "m/after-removal", json!(2)).await;
    assert_eq!(Api::only(&base2).value("m/without-1").await, Some(json!(1)));

    // With 4 dead too, removing 3 would leave {2, 4} with one voter up: refused, naming
    // every partition of the groups it would break, and nothing changes.
    n4.kill();
    until(&http, &base2, Duration::from_secs(10), "with 4 down", |s| {
        s.members.iter().any(|m| m.node_id == 4 && m.state == "down")
    })
    .await;
    let r = http.delete(format!("{base2}/cluster/members/3")).send().await.unwrap();
    let p = problem(r, 409, "would-lose-majority").await;
    let partitions = p.partitions.clone().unwrap_or_default();
    let s = cluster_of(&http, &base2).await.unwrap();
    let all: Vec<u32> = {
        let mut v: Vec<u32> = s.groups.iter().flat_map(|g| g.partitions.iter().copied()).collect();
        v.sort_unstable();
        v
    };
    let mut named = partitions.clone();
    named.sort_unstable();
    assert_eq!(named, all, "{}", p.detail);
    assert!(s.groups.iter().all(|g| g.voters.contains(&3)), "{s:?}");

    // 4 comes back (a restart may pass --join again) and the cluster serves again.
    n4.restart();
    until(&http, &base2, Duration::from_secs(30), "with 4 back", |s| voter_everywhere(s, 4)).await;
    put(&http, &base2, "m/back", json!(3)).await;
    assert_eq!(Api::only(&n4.base).value("m/back").await, Some(json!(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_its_own_takes_no_membership_change() {
    let node = Node::start_with(&[]);
    if restm_tests::test_nodes() > 1 {
        return; // this is about a node of its own
    }
    let http = reqwest::Client::new();
    let body = json!({"id": 2, "peer_url": "http://127.0.0.1:7082"});
    let r = http.post(node.url("/cluster/members")).json(&body).send().await.unwrap();
    problem(r, 409, "not-a-cluster").await;
    let r = http.delete(node.url("/cluster/members/2")).send().await.unwrap();
    problem(r, 409, "not-a-cluster").await;
}

/// Moves `amount` from `from` to `to`, and counts the transfer in `done` (the worker's own
/// pointer), in one txn coordinated by `base`.
async fn transfer(
    http: &reqwest::Client,
    base: &str,
    from: usize,
    to: usize,
    amount: i64,
    done: &str,
) -> Outcome {
    let ptr = |p: &str| format!("{base}/ptr/{}", restm_tests::enc(p));
    let Ok(r) = http.post(format!("{base}/txn/begin")).json(&json!({})).send().await else {
        return Outcome::Fail;
    };
    let Ok(begun) = r.json::<restm_shared::BeginResponse>().await else { return Outcome::Fail };
    let txn = begun.txn;
    let names = [format!("bank/{from}"), format!("bank/{to}"), done.to_string()];
    let mut values = Vec::new();
    for name in &names {
        let r = http.get(ptr(name)).header("X-reSTM-Txn", &txn).send().await;
        let v = match r {
            Ok(r) if r.status() == 200 => r.json::<i64>().await.ok(),
            Ok(r) if r.status() == 404 => Some(0),
            _ => None,
        };
        let Some(v) = v else {
            let _ = http.post(format!("{base}/txn/{txn}/abort")).send().await;
            return Outcome::Fail;
        };
        values.push(v);
    }
    let new = [values[0] - amount, values[1] + amount, values[2] + 1];
    for (name, v) in names.iter().zip(new) {
        let r = http.put(ptr(name)).header("X-reSTM-Txn", &txn).json(&v).send().await;
        if !matches!(&r, Ok(r) if r.status() == 200) {
            let _ = http.post(format!("{base}/txn/{txn}/abort")).send().await;
            return Outcome::Fail;
        }
    }
    restm_tests::commit_outcome(http.post(format!("{base}/txn/{txn}/commit")).send().await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bank_keeps_its_money_while_a_node_joins_and_another_leaves() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    const ACCOUNTS: usize = 8;
    const WORKERS: usize = 4;
    let mut cluster = Node::cluster(3, &["--groups", "4"]);
    let api = Api::new(&cluster);
    for a in 0..ACCOUNTS {
        api.put_ok(&format!("bank/{a}"), &json!(100)).await;
    }
    let alive = Arc::new(Mutex::new(cluster.all().map(|n| n.base.clone()).collect::<Vec<_>>()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (alive, stop) = (alive.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
            let mut told = Vec::new();
            let mut n = w as u64;
            while !stop.load(Ordering::Relaxed) {
                n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let base = {
                    let alive = alive.lock().unwrap();
                    alive[(n >> 33) as usize % alive.len()].clone()
                };
                let (from, to) = ((n >> 20) as usize % ACCOUNTS, (n >> 40) as usize % ACCOUNTS);
                if from == to {
                    continue;
                }
                told.push(transfer(&http, &base, from, to, (n % 7) as i64 + 1, &format!("done/{w}")).await);
            }
            told
        }));
    }
    let http = reqwest::Client::builder().timeout(Duration::from_secs(90)).build().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A fourth node joins while the transfers go on, and takes clients once a voter.
    let n4 = cluster.join(4, &[]);
    until(&http, &cluster.members[0].base, Duration::from_secs(60), "with 4 a voter", |s| {
        voter_everywhere(s, 4)
    })
    .await;
    alive.lock().unwrap().push(n4.base.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Member 1, alive and leading some groups, leaves: its clients move off first.
    alive.lock().unwrap().retain(|b| *b != cluster.base);
    let base2 = cluster.members[0].base.clone();
    let r = http.delete(format!("{base2}/cluster/members/1")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    until(&http, &base2, Duration::from_secs(30), "without 1", |s| in_no_group(s, 1)).await;
    cluster.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut told = Vec::new();
    for w in workers {
        told.push(w.await.unwrap());
    }

    // Every cent is there, and every acknowledged transfer (and perhaps some unknown ones).
    let api4 = Api::only(&n4.base);
    let mut total = 0;
    for a in 0..ACCOUNTS {
        total += api4.value(&format!("bank/{a}")).await.and_then(|v| v.as_i64()).unwrap();
    }
    assert_eq!(total, 100 * ACCOUNTS as i64, "money was made or lost");
    let mut committed = 0;
    for (w, told) in told.iter().enumerate() {
        let acked = told.iter().filter(|t| **t == Outcome::Ok).count() as i64;
        let unknown = told.iter().filter(|t| **t == Outcome::Info).count() as i64;
        let done = api4.value(&format!("done/{w}")).await.and_then(|v| v.as_i64()).unwrap_or(0);
        assert!(
            acked <= done && done <= acked + unknown,
            "worker {w}: {acked} acknowledged, {unknown} unknown, {done} done"
        );
        committed += acked;
    }
    eprintln!("{committed} transfers acknowledged while node 4 joined and node 1 left");
    assert!(committed >= 20, "too few transfers to mean anything: {committed}");
}
