//! Jepsen-style fault tests: list-append txns run on every member of a 3-member cluster
//! (partitions in four groups, so most txns commit across groups in two phases) while the
//! nemesis kills, pauses and cuts links; the history is then checked for serializability
//! anomalies by [`restm_tests::list_append`].
//!
//! CI runs a short form (20 s of faults). A longer run by hand:
//! `RESTM_FAULT_SECS=300 RESTM_FAULT_SEED=7 cargo test -p restm-tests --test faults -- --nocapture`.

use restm_tests::list_append::{self, History, Mop, Outcome, Txn};
use restm_tests::nemesis::{self, Rng};
use restm_tests::{LinkProxy, Node, enc};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How many keys the txns share: few, so that they contend.
const KEYS: u64 = 6;
/// Clients per member.
const CLIENTS: usize = 2;

fn key(k: u64) -> String {
    format!("la/{k}")
}

/// One client: it runs txns on one member, which coordinates them.
struct Client {
    http: reqwest::Client,
    base: String,
    process: usize,
}

/// Why a txn stopped before its commit: it never asked to commit, so it did not.
struct Failed;

impl Client {
    fn ptr(&self, k: &str) -> String {
        format!("{}/ptr/{}", self.base, enc(k))
    }

    async fn read(&self, txn: &str, k: &str) -> Result<Vec<u64>, Failed> {
        let r = self.http.get(self.ptr(k)).header("X-reSTM-Txn", txn).send().await.map_err(|_| Failed)?;
        match r.status().as_u16() {
            200 => {
                let text = r.text().await.map_err(|_| Failed)?;
                let list = serde_json::from_str(&text);
                Ok(list.unwrap_or_else(|e| panic!("{k} holds {text}, not a list of appends: {e}")))
            }
            404 => Ok(vec![]),
            _ => Err(Failed),
        }
    }

    async fn write(&self, txn: &str, k: &str, list: &[u64]) -> Result<(), Failed> {
        let r = self
            .http
            .put(self.ptr(k))
            .header("X-reSTM-Txn", txn)
            .json(&list)
            .send()
            .await
            .map_err(|_| Failed)?;
        if r.status() == 200 { Ok(()) } else { Err(Failed) }
    }

    /// Runs the planned txn (`Some(k)` appends the next value to `k`, `None`s read `k`),
    /// recording what it did.
    async fn run(
        &self,
        plan: &[(u64, bool)],
        read_only: bool,
        values: &AtomicU64,
        epoch: Instant,
    ) -> Option<Txn> {
        let began = epoch.elapsed().as_secs_f64();
        let begin = self
            .http
            .post(format!("{}/txn/begin", self.base))
            .json(&serde_json::json!({"read_only": read_only}));
        let r = begin.send().await.ok()?;
        if r.status() != 201 {
            return None; // nothing began, so there is nothing to check
        }
        let txn = r.json::<restm_shared::BeginResponse>().await.ok()?.txn;
        let mut mops = Vec::new();
        let outcome = match self.steps(&txn, plan, values, &mut mops).await {
            Err(Failed) => {
                let abort = self.http.post(format!("{}/txn/{txn}/abort", self.base));
                let _ = abort.send().await;
                Outcome::Fail
            }
            Ok(()) => self.commit(&txn).await,
        };
        Some(Txn { process: self.process, mops, outcome, span: (began, epoch.elapsed().as_secs_f64()) })
    }

    async fn steps(
        &self,
        txn: &str,
        plan: &[(u64, bool)],
        values: &AtomicU64,
        mops: &mut Vec<Mop>,
    ) -> Result<(), Failed> {
        for &(k, append) in plan {
            let k = key(k);
            let mut list = self.read(txn, &k).await?;
            mops.push(Mop::Read(k.clone(), list.clone()));
            if append {
                let v = values.fetch_add(1, Ordering::Relaxed);
                list.push(v);
                // Recorded before it is sent: a failed txn's value must never be seen.
                mops.push(Mop::Append(k.clone(), v));
                self.write(txn, &k, &list).await?;
            }
        }
        Ok(())
    }

    async fn commit(&self, txn: &str) -> Outcome {
        restm_tests::commit_outcome(self.http.post(format!("{}/txn/{txn}/commit", self.base)).send().await)
            .await
    }
}

/// A client's loop until `stop`: txns of one to four reads or appends on random keys.
async fn client_loop(
    client: Client,
    seed: u64,
    stop: Arc<AtomicBool>,
    values: Arc<AtomicU64>,
    epoch: Instant,
) -> Vec<Txn> {
    let mut rng = Rng::new(seed);
    let mut txns = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let n = 1 + rng.below(4) as usize;
        let plan: Vec<(u64, bool)> = (0..n).map(|_| (rng.below(KEYS), rng.below(2) == 0)).collect();
        let read_only = plan.iter().all(|(_, a)| !a) && rng.below(2) == 0;
        match client.run(&plan, read_only, &values, epoch).await {
            Some(t) => txns.push(t),
            None => tokio::time::sleep(Duration::from_millis(50)).await, // the member is down
        }
    }
    txns
}

/// The latest value of every key, read after the faults healed (a read may first resolve a
/// txn its coordinator left prepared).
async fn finals(base: &str) -> std::collections::BTreeMap<String, Vec<u64>> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut out = std::collections::BTreeMap::new();
    for k in 0..KEYS {
        let k = key(k);
        let deadline = Instant::now() + Duration::from_secs(30);
        let list = loop {
            if let Ok(r) = http.get(format!("{base}/ptr/{}", enc(&k))).send().await {
                match r.status().as_u16() {
                    200 => break r.json::<Vec<u64>>().await.unwrap(),
                    404 => break vec![],
                    _ => {}
                }
            }
            assert!(Instant::now() < deadline, "no final read of {k} within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        out.insert(k, list);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_append_stays_serializable_through_kills_pauses_and_cut_links() {
    let secs: u64 = std::env::var("RESTM_FAULT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let seed: u64 =
        std::env::var("RESTM_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
    eprintln!("fault test: {secs} s, seed {seed} (RESTM_FAULT_SEED replays the schedule)");
    let proxy = LinkProxy::default();
    let mut cluster = Node::cluster_through(3, &["--groups", "4"], &proxy).await;
    let bases: Vec<String> = cluster.all().map(|n| n.base.clone()).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let values = Arc::new(AtomicU64::new(1));
    let mut clients = Vec::new();
    for (m, base) in bases.iter().enumerate() {
        for c in 0..CLIENTS {
            let process = m * CLIENTS + c;
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(4))
                .connect_timeout(Duration::from_secs(1))
                .build()
                .unwrap();
            let client = Client { http, base: base.clone(), process };
            clients.push(tokio::spawn(client_loop(
                client,
                seed ^ (process as u64 + 1),
                stop.clone(),
                values.clone(),
                epoch,
            )));
        }
    }
    let nemesis = {
        let stop = stop.clone();
        let proxy = proxy.clone();
        tokio::task::spawn_blocking(move || {
            let faults = nemesis::run(&mut cluster, &proxy, seed, &stop);
            (cluster, faults)
        })
    };
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut history = History::default();
    for c in clients {
        history.txns.extend(c.await.unwrap());
    }
    let (_cluster, faults) = nemesis.await.unwrap();
    history.finals = finals(&bases[0]).await;

    let report = list_append::check(&history);
    eprintln!("{faults}");
    for line in &faults.log {
        eprintln!("  {line}");
    }
    eprintln!("list-append: {report}");
    if !report.anomalies.is_empty() {
        let path = std::env::temp_dir().join(format!("restm-faults-{seed}.txt"));
        let mut dump = format!("{faults}\n{}\n{report}\n", faults.log.join("\n"));
        for (i, t) in history.txns.iter().enumerate() {
            dump.push_str(&format!(
                "{i} p{} {:?} {:.3}-{:.3} {:?}\n",
                t.process, t.outcome, t.span.0, t.span.1, t.mops
            ));
        }
        dump.push_str(&format!("finals {:?}\n", history.finals));
        std::fs::write(&path, dump).unwrap();
        panic!("seed {seed}: {report}\nthe history is in {}", path.display());
    }
    assert!(report.ok >= 30, "too few txns committed to mean anything: {report}");
    assert!(faults.total() >= secs as usize / 5, "too few faults: {faults}");
    let appended = history.finals.values().map(Vec::len).sum::<usize>();
    assert!(appended > 0, "nothing appended");
}
