//! Leader balancing on a cluster of real processes: a member killed and restarted gets its
//! share of the groups' leads back within a minute (the balancer's handovers, at the
//! default `--rebalance-interval`), while a writer keeps writing through another member:
//! no acknowledged write is lost, and nothing is answered with a 5xx other than a
//! retryable `503` while the killed member's groups elect.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use restm_tests::{Node, cluster_until};
use serde_json::json;

const GROUPS: usize = 6;
const WRITERS: u64 = 4;

/// How many groups each of members 1..=3 leads, if every group has a leader.
fn leads(s: &restm_shared::ClusterStatus) -> Option<BTreeMap<u64, usize>> {
    let mut led: BTreeMap<u64, usize> = (1..=3).map(|n| (n, 0)).collect();
    for g in &s.groups {
        *led.entry(g.leader?).or_default() += 1;
    }
    (s.groups.len() == GROUPS).then_some(led)
}

fn balanced(s: &restm_shared::ClusterStatus) -> bool {
    leads(s).is_some_and(|led| led.values().max().unwrap_or(&0) - led.values().min().unwrap_or(&0) <= 1)
}

/// The sum of `restm_raft_leader_handovers_total{outcome="moved"}` over the members.
async fn handovers_moved(http: &reqwest::Client, bases: &[String]) -> u64 {
    let mut moved = 0;
    for base in bases {
        let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        moved += text
            .lines()
            .filter(|l| {
                l.starts_with("restm_raft_leader_handovers_total{") && l.contains("outcome=\"moved\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
    }
    moved
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_member_gets_its_share_of_leads_back_within_a_minute() {
    let mut cluster = Node::cluster(3, &["--groups", "6"]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let bases: Vec<String> = cluster.all().map(|n| n.base.clone()).collect();
    let base1 = bases[0].clone();
    let s =
        cluster_until(&http, &base1, Duration::from_secs(30), "led everywhere", |s| leads(s).is_some()).await;
    assert!(balanced(&s), "a new cluster's groups start led by different members: {:?}", leads(&s));

    // Writers through member 1, which stays up: what phase each answer came in.
    let (stop, phase) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU8::new(0)));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (http, base, stop, phase) = (http.clone(), base1.clone(), stop.clone(), phase.clone());
            tokio::spawn(async move {
                let (mut acked, mut answers) = (Vec::new(), Vec::new());
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    i += WRITERS;
                    let r = http.put(format!("{base}/ptr/w{i}")).json(&json!({ "i": i })).send().await;
                    let status = r.as_ref().map_or(0, |r| r.status().as_u16());
                    let body = match r {
                        Ok(r) if status != 200 => r.text().await.unwrap_or_default(),
                        _ => String::new(),
                    };
                    if status == 200 {
                        acked.push(i);
                    }
                    answers.push((phase.load(Ordering::Relaxed), status, body));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (acked, answers)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(500)).await;
    phase.store(1, Ordering::Relaxed);
    cluster.members[1].kill();
    let s = cluster_until(&http, &base1, Duration::from_secs(30), "led by 1 and 2 alone", |s| {
        leads(s).is_some_and(|led| led[&3] == 0)
    })
    .await;
    let while_down = leads(&s);

    phase.store(2, Ordering::Relaxed);
    let restarted = std::time::Instant::now();
    cluster.members[1].restart();
    let s = cluster_until(&http, &base1, Duration::from_secs(60), "balanced again", |s| {
        balanced(s) && leads(s).is_some_and(|led| led[&3] > 0)
    })
    .await;
    let took = restarted.elapsed();
    // Settled: a few ticks later the leads are still balanced.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut answers) = (Vec::new(), Vec::new());
    for writer in writers {
        let (a, b) = writer.await.unwrap();
        acked.extend(a);
        answers.extend(b);
    }
    let settled = cluster_until(&http, &base1, Duration::from_secs(5), "still balanced", balanced).await;
    eprintln!(
        "leads while 3 was down {while_down:?}; balanced {:?} after {took:?}, then {:?}",
        leads(&s),
        leads(&settled)
    );

    let mut by_phase: BTreeMap<(u8, u16), usize> = BTreeMap::new();
    for (phase, status, _) in &answers {
        *by_phase.entry((*phase, *status)).or_default() += 1;
    }
    eprintln!("answers by (phase, status): {by_phase:?}");
    let mut codes: BTreeMap<(u8, String), usize> = BTreeMap::new();
    for (phase, _, body) in answers.iter().filter(|(_, s, _)| *s != 200) {
        let code = serde_json::from_str::<restm_shared::Problem>(body).map(|p| p.code).unwrap_or_default();
        *codes.entry((*phase, code)).or_default() += 1;
    }
    eprintln!("problems by (phase, code): {codes:?}");
    for (phase, status, body) in &answers {
        assert!(
            *status == 200 || *status == 503 || *status == 409,
            "phase {phase}: a write answered {status}: {body}"
        );
        if *status != 200 {
            let p: restm_shared::Problem =
                serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
            assert_eq!(p.status, *status, "{body}");
        }
    }
    assert!(acked.len() > 50, "the writer kept writing: {by_phase:?}");
    // Handovers hold a group's writes for a moment, and answer none with an error.
    let refused_after: Vec<&String> = answers
        .iter()
        .filter(|(phase, status, _)| *phase == 2 && *status != 200)
        .map(|(_, _, b)| b)
        .collect();
    assert!(refused_after.is_empty(), "writes refused while the leads moved back: {refused_after:?}");

    // Every acknowledged write is there, read through another member.
    let base2 = &bases[1];
    for i in &acked {
        let r = http.get(format!("{base2}/ptr/w{i}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "w{i} was acknowledged");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v, json!({ "i": i }), "w{i}");
    }
    assert!(handovers_moved(&http, &bases).await >= 1, "the leads came back by handovers");
}
