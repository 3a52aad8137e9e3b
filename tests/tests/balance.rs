//! Leader balancing on clusters of real processes, at the default `--rebalance-interval`:
//! a member killed and restarted gets its share of the groups' leads back within a minute,
//! and so does a member that joins. Writers keep writing through a member that stays:
//! no acknowledged write is lost, and while the leads move nothing is refused (only the
//! killed member's groups answer a retryable `503` while they elect).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use restm_tests::{Node, cluster_until};
use serde_json::json;
use tokio::task::JoinHandle;

const WRITERS: u64 = 4;

/// How many groups each of `members` leads, once every group has a leader.
fn leads(s: &restm_shared::ClusterStatus, members: u64) -> Option<BTreeMap<u64, usize>> {
    let mut led: BTreeMap<u64, usize> = (1..=members).map(|n| (n, 0)).collect();
    for g in &s.groups {
        *led.entry(g.leader?).or_default() += 1;
    }
    (!s.groups.is_empty()).then_some(led)
}

/// Whether the leads of `members` are at most 1 apart.
fn balanced(s: &restm_shared::ClusterStatus, members: u64) -> bool {
    leads(s, members)
        .is_some_and(|led| led.values().max().unwrap_or(&0) - led.values().min().unwrap_or(&0) <= 1)
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

/// One writer's acknowledged writes, and every answer: (phase, status, body).
type Written = (Vec<u64>, Vec<(u8, u16, String)>);

/// Writers of fresh pointers through one member, each answer marked with the phase of
/// the test it came in.
struct Writers {
    http: reqwest::Client,
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU8>,
    tasks: Vec<JoinHandle<Written>>,
}

impl Writers {
    fn start(http: &reqwest::Client, base: &str) -> Writers {
        let (stop, phase) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU8::new(0)));
        let tasks = (0..WRITERS)
            .map(|w| {
                let (http, base, stop, phase) = (http.clone(), base.to_string(), stop.clone(), phase.clone());
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
        Writers { http: http.clone(), stop, phase, tasks }
    }

    fn phase(&self, phase: u8) {
        self.phase.store(phase, Ordering::Relaxed);
    }

    /// Stops the writers and checks their answers: every one a `200`, a `409` or a
    /// problem; none but a `200` in `calm_phase`; at least `least` acknowledged, and
    /// every acknowledged write there when read through `read_at`.
    async fn check(self, calm_phase: u8, least: usize, read_at: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut acked, mut answers) = (Vec::new(), Vec::new());
        for task in self.tasks {
            let (a, b) = task.await.unwrap();
            acked.extend(a);
            answers.extend(b);
        }
        let mut by_phase: BTreeMap<(u8, u16), usize> = BTreeMap::new();
        let mut codes: BTreeMap<(u8, String), usize> = BTreeMap::new();
        for (phase, status, body) in &answers {
            *by_phase.entry((*phase, *status)).or_default() += 1;
            if *status != 200 {
                assert!(matches!(status, 409 | 503), "phase {phase}: a write answered {status}: {body}");
                let p: restm_shared::Problem =
                    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
                *codes.entry((*phase, p.code)).or_default() += 1;
            }
        }
        eprintln!("answers by (phase, status): {by_phase:?}; problems by (phase, code): {codes:?}");
        let refused: Vec<&String> =
            answers.iter().filter(|(p, s, _)| *p == calm_phase && *s != 200).map(|(_, _, b)| b).collect();
        assert!(refused.is_empty(), "writes refused while the leads moved: {refused:?}");
        assert!(acked.len() >= least, "the writers kept writing: {by_phase:?}");
        for i in &acked {
            let r = self.http.get(format!("{read_at}/ptr/w{i}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "w{i} was acknowledged");
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v, json!({ "i": i }), "w{i}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_member_gets_its_share_of_leads_back_within_a_minute() {
    let mut cluster = Node::cluster(3, &["--groups", "6"]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let bases: Vec<String> = cluster.all().map(|n| n.base.clone()).collect();
    let base1 = bases[0].clone();
    let s =
        cluster_until(&http, &base1, Duration::from_secs(30), "led everywhere", |s| leads(s, 3).is_some())
            .await;
    assert!(balanced(&s, 3), "a new cluster's groups start led by different members: {:?}", leads(&s, 3));

    let writers = Writers::start(&http, &base1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    writers.phase(1);
    cluster.members[1].kill();
    let s = cluster_until(&http, &base1, Duration::from_secs(30), "led by 1 and 2 alone", |s| {
        leads(s, 3).is_some_and(|led| led[&3] == 0)
    })
    .await;
    let while_down = leads(&s, 3);

    writers.phase(2);
    let restarted = Instant::now();
    cluster.members[1].restart();
    let s = cluster_until(&http, &base1, Duration::from_secs(60), "balanced again", |s| {
        balanced(s, 3) && leads(s, 3).is_some_and(|led| led[&3] > 0)
    })
    .await;
    let took = restarted.elapsed();
    // Settled: a few ticks later the leads are still balanced.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled =
        cluster_until(&http, &base1, Duration::from_secs(5), "still balanced", |s| balanced(s, 3)).await;
    eprintln!(
        "leads while 3 was down {while_down:?}; balanced {:?} after {took:?}, then {:?}",
        leads(&s, 3),
        leads(&settled, 3)
    );
    writers.check(2, 50, &bases[1]).await;
    assert!(handovers_moved(&http, &bases).await >= 1, "the leads came back by handovers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_joins_gets_its_share_of_leads_within_a_minute() {
    let cluster = Node::cluster(3, &["--groups", "4"]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let base1 = cluster.base.clone();
    cluster_until(&http, &base1, Duration::from_secs(30), "led everywhere", |s| leads(s, 3).is_some()).await;

    let writers = Writers::start(&http, &base1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let joined = Instant::now();
    let fourth = cluster.join(4, &[]);
    let s = cluster_until(&http, &base1, Duration::from_secs(60), "balanced with 4", |s| {
        balanced(s, 4)
            && leads(s, 4).is_some_and(|led| led[&4] > 0)
            && s.groups.iter().all(|g| g.voters.contains(&4))
    })
    .await;
    eprintln!("joined and balanced {:?} after {:?}", leads(&s, 4), joined.elapsed());
    writers.check(0, 50, &fourth.base).await;
    let bases: Vec<String> = cluster.all().chain([&fourth]).map(|n| n.base.clone()).collect();
    assert!(handovers_moved(&http, &bases).await >= 1, "the new member's lead came by a handover");
}

/// `POST /cluster/groups/{group}/leader` at a member that does not lead the group: the lead
/// moves to the voter asked for, while a writer writes (nothing refused, nothing lost); a
/// move to the leader itself is `already`; bad asks are problems that move nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_moves_a_lead_through_any_member() {
    let cluster = Node::cluster(3, &["--groups", "2", "--rebalance-interval", "0s"]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let bases: Vec<String> = cluster.all().map(|n| n.base.clone()).collect();
    let s =
        cluster_until(&http, &bases[0], Duration::from_secs(30), "led everywhere", |s| leads(s, 3).is_some())
            .await;
    let from = s.groups[0].leader.unwrap();
    let to = (from % 3) + 1;
    let asked = (to % 3) + 1; // the member that neither leads nor gets the lead
    assert!(asked != from && asked != to);
    let at = |n: u64| bases[n as usize - 1].clone();

    let writers = Writers::start(&http, &at(to));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = format!("{}/cluster/groups/0/leader", at(asked));
    let r = http.post(&url).json(&json!({ "to": to })).send().await.unwrap();
    let (status, body) = (r.status(), r.text().await.unwrap());
    assert_eq!(status, 200, "{body}");
    let moved: restm_shared::LeaderMoved = serde_json::from_str(&body).unwrap();
    assert_eq!((moved.group, moved.from, moved.leader, moved.outcome.as_str()), (0, from, to, "moved"));
    for base in &bases {
        cluster_until(&http, base, Duration::from_secs(5), "led by the voter asked for", |s| {
            s.groups[0].leader == Some(to)
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    writers.check(0, 20, &at(from)).await;

    // Again: it leads already.
    let r = http.post(&url).json(&json!({ "to": to })).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let again: restm_shared::LeaderMoved = r.json().await.unwrap();
    assert_eq!((again.from, again.leader, again.outcome.as_str()), (to, to, "already"));

    // Bad asks, each a problem, and the lead stays.
    let base = at(asked);
    let post = |path: &str, body: &str| {
        http.post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    restm_tests::problem(post("/cluster/groups/0/leader", r#"{"to": 9}"#).await.unwrap(), 400, "bad-request")
        .await;
    restm_tests::problem(post("/cluster/groups/7/leader", r#"{"to": 1}"#).await.unwrap(), 404, "not-found")
        .await;
    restm_tests::problem(post("/cluster/groups/x/leader", r#"{"to": 1}"#).await.unwrap(), 400, "bad-request")
        .await;
    restm_tests::problem(
        post("/cluster/groups/0/leader", r#"{"too": 1}"#).await.unwrap(),
        400,
        "bad-request",
    )
    .await;
    restm_tests::problem(post("/cluster/groups/0/leader", "not json").await.unwrap(), 400, "bad-request")
        .await;
    let s = restm_tests::cluster_of(&http, &base).await.unwrap();
    assert_eq!(s.groups[0].leader, Some(to), "bad asks moved nothing");

    // The CLI does the same.
    let back = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            std::process::Command::new(restm_tests::restm_bin())
                .args(["cluster", "move-leader", "0", "--to", &from.to_string(), "--target", &base])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let printed = String::from_utf8_lossy(&back.stdout);
    assert!(back.status.success(), "{printed} {}", String::from_utf8_lossy(&back.stderr));
    assert!(printed.contains(&format!("node {from} leads it")), "{printed}");

    // A node of its own has no groups to move.
    let single = Node::start_in(restm_tests::temp_dir("single"), &[]);
    let r = http.post(single.url("/cluster/groups/0/leader")).json(&json!({ "to": 1 })).send().await.unwrap();
    restm_tests::problem(r, 409, "not-a-cluster").await;
}

/// Latest reads at every member ride through lead moves: while the leads of both groups are
/// handed from member to member, every read (its barrier at a member that leads, that just
/// stopped leading, or that asks a leader that just stood down) answers `200` with the
/// value written, none a `503`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latest_reads_at_every_member_ride_through_lead_moves() {
    const POINTERS: usize = 16;
    const MOVES: usize = 6;
    let cluster = Node::cluster(3, &["--groups", "2", "--rebalance-interval", "0s"]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let bases: Vec<String> = cluster.all().map(|n| n.base.clone()).collect();
    cluster_until(&http, &bases[0], Duration::from_secs(30), "led everywhere", |s| leads(s, 3).is_some())
        .await;
    for p in 0..POINTERS {
        let r = http.put(format!("{}/ptr/r{p}", bases[0])).json(&json!(p)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<JoinHandle<(usize, Vec<String>)>> = bases
        .iter()
        .flat_map(|base| [base.clone(), base.clone()])
        .enumerate()
        .map(|(k, base)| {
            let (http, stop) = (http.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut served, mut wrong) = (0, Vec::new());
                let mut p = k;
                while !stop.load(Ordering::Relaxed) {
                    p = (p + 1) % POINTERS;
                    match http.get(format!("{base}/ptr/r{p}")).send().await {
                        Ok(r) if r.status() == 200 => match r.json::<serde_json::Value>().await {
                            Ok(v) if v == json!(p) => served += 1,
                            other => wrong.push(format!("{base} r{p}: {other:?}")),
                        },
                        Ok(r) => {
                            let status = r.status();
                            wrong.push(format!(
                                "{base} r{p}: {status} {}",
                                r.text().await.unwrap_or_default()
                            ));
                        }
                        Err(e) => wrong.push(format!("{base} r{p}: {e}")),
                    }
                }
                (served, wrong)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(300)).await;
    for m in 0..MOVES {
        let group = m % 2;
        let s = restm_tests::cluster_of(&http, &bases[m % 3]).await.unwrap();
        let from = s.groups[group].leader.expect("a leader");
        let to = (from % 3) + 1;
        let url = format!("{}/cluster/groups/{group}/leader", bases[m % 3]);
        let r = http.post(&url).json(&json!({ "to": to })).send().await.unwrap();
        assert_eq!(r.status(), 200, "move {m}: {}", r.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut served, mut wrong) = (0, Vec::new());
    for reader in readers {
        let (s, w) = reader.await.unwrap();
        served += s;
        wrong.extend(w);
    }
    eprintln!("{served} latest reads served through {MOVES} lead moves; {} not", wrong.len());
    assert!(wrong.is_empty(), "reads that did not ride through the moves: {wrong:?}");
    assert!(served >= 100, "the readers kept reading: {served}");
}
