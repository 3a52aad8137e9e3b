//! The workloads against a reSTM node, over the HTTP contract with a bare HTTP client (no
//! SDK), so that what is measured is the node.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;
use restm_shared::{BeginResponse, HEADER_AT, HEADER_TXN, ListPage};
use serde_json::{Value, json};

use super::run::{Prepared, backoff, fill};
use super::{Accounts, Setup, Workload, count_check};

/// A reSTM node under test, or the members of a cluster: requests go to each in turn.
#[derive(Clone)]
pub struct Restm {
    http: reqwest::Client,
    bases: Arc<[String]>,
    turn: Arc<std::sync::atomic::AtomicUsize>,
    token: Option<String>,
}

/// How a request inside a transaction ended.
enum Fail {
    /// `409` (the transaction is aborted) or `503`: run it again.
    Retry,
    Fatal(String),
}

impl Restm {
    /// Load on `bases` (one node, or every member of a cluster), spread request by request.
    pub fn new(http: reqwest::Client, bases: &[String], token: Option<String>) -> Self {
        let bases = bases.iter().map(|b| b.trim_end_matches('/').to_string()).collect();
        Self { http, bases, turn: Arc::default(), token }
    }

    /// The same system with every request sent to `base` only.
    pub fn only(&self, base: &str) -> Self {
        Self::new(self.http.clone(), &[base.to_string()], self.token.clone())
    }

    fn base(&self) -> &str {
        let i = self.turn.fetch_add(1, Ordering::Relaxed) % self.bases.len().max(1);
        self.bases.get(i).map_or("", String::as_str)
    }

    /// The member that leads the cluster's data group (asked of each member's `/cluster`);
    /// `None` on a node of its own or without a leader.
    pub async fn leader(&self) -> Option<String> {
        let mut leader = None;
        let mut ids = Vec::new();
        for base in self.bases.iter() {
            let mut req = self.http.get(format!("{base}/cluster"));
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let Ok(r) = req.send().await else { continue };
            let Ok(status) = r.json::<restm_shared::ClusterStatus>().await else { continue };
            leader = leader.or_else(|| status.groups.first().and_then(|g| g.leader));
            ids.push((status.node_id, base.clone()));
        }
        let leader = leader?;
        ids.into_iter().find(|(id, _)| *id == leader).map(|(_, base)| base)
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base()));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    fn ptr(ptr: &str) -> String {
        format!("/ptr/{}", super::enc(ptr))
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, Fail> {
        let resp = req.send().await.map_err(|e| Fail::Fatal(format!("request failed: {e}")))?;
        match resp.status().as_u16() {
            200..=299 | 404 => Ok(resp),
            409 | 503 => Err(Fail::Retry),
            s => Err(Fail::Fatal(format!("{s}: {}", resp.text().await.unwrap_or_default()))),
        }
    }

    /// Sends `req` once: any answer but a success (or 404) is the run's error, named.
    async fn fatal(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
        let resp = req.send().await.map_err(|e| format!("request failed: {e}"))?;
        match resp.status().as_u16() {
            200..=299 | 404 => Ok(resp),
            s => Err(format!("{s}: {}", resp.text().await.unwrap_or_default())),
        }
    }

    /// Writes `ptrs` in one-shot transactions of 200.
    async fn preload(&self, ptrs: Vec<(String, Value)>) -> Result<(), String> {
        for chunk in ptrs.chunks(200) {
            let writes: Vec<Value> = chunk.iter().map(|(p, v)| json!({"ptr": p, "value": v})).collect();
            self.fatal(self.req(reqwest::Method::POST, "/txn").json(&json!({ "writes": writes }))).await?;
        }
        Ok(())
    }

    async fn begin(&self) -> Result<String, Fail> {
        let r = self.send(self.req(reqwest::Method::POST, "/txn/begin")).await?;
        let b: BeginResponse = r.json().await.map_err(|e| Fail::Fatal(e.to_string()))?;
        Ok(b.txn)
    }

    /// Reads an integer in `txn` (absent: 0), with a locking read when `lock`.
    async fn get_int(&self, txn: &str, ptr: &str, lock: bool) -> Result<i64, Fail> {
        let mut req = self.req(reqwest::Method::GET, &Self::ptr(ptr)).header(HEADER_TXN, txn);
        if lock {
            req = req.header(restm_shared::HEADER_LOCK, "update");
        }
        let r = self.send(req).await?;
        if r.status() == 404 {
            return Ok(0);
        }
        r.json::<i64>().await.map_err(|e| Fail::Fatal(format!("{ptr} is not an integer: {e}")))
    }

    async fn put(&self, txn: &str, ptr: &str, v: &Value) -> Result<(), Fail> {
        self.send(self.req(reqwest::Method::PUT, &Self::ptr(ptr)).header(HEADER_TXN, txn).json(v))
            .await
            .map(drop)
    }

    async fn commit(&self, txn: &str) -> Result<(), Fail> {
        self.send(self.req(reqwest::Method::POST, &format!("/txn/{txn}/commit"))).await.map(drop)
    }

    async fn abort(&self, txn: &str) {
        let _ = self.send(self.req(reqwest::Method::POST, &format!("/txn/{txn}/abort"))).await;
    }

    /// Runs `body` in transactions until one commits; answers the attempts.
    async fn retrying<F, Fut>(&self, body: F) -> Result<u32, String>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<bool, Fail>>,
    {
        let mut attempt = 1;
        loop {
            let out = match self.begin().await {
                Ok(txn) => match body(txn.clone()).await {
                    Ok(true) => self.commit(&txn).await,
                    Ok(false) => {
                        self.abort(&txn).await;
                        Ok(())
                    }
                    Err(f) => Err(f),
                },
                Err(f) => Err(f),
            };
            match out {
                Ok(()) => return Ok(attempt),
                Err(Fail::Fatal(e)) => return Err(e),
                Err(Fail::Retry) => {
                    backoff(attempt).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn list_ints(&self, prefix: &str) -> Result<Vec<i64>, String> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("/ptr?limit=1000&prefix={}", super::enc(prefix));
            if let Some(a) = &after {
                path.push_str(&format!("&after={}", super::enc(a)));
            }
            let page: ListPage = self
                .fatal(self.req(reqwest::Method::GET, &path))
                .await?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            for p in page.pointers {
                out.push(serde_json::from_str(p.value.get()).map_err(|e| e.to_string())?);
            }
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    }
}

/// Sets `w` up on the node and answers its operation.
pub async fn prepare(sys: &Restm, w: Workload, s: &Setup) -> Result<Prepared, String> {
    let tag = format!("bench/{}", s.tag);
    let key = move |i: u64| format!("{tag}/k/{i}");
    let keys = s.keys;
    let value = s.value.clone();
    let lock = s.lock_reads;
    let sys = Arc::new(sys.clone());
    let op: super::run::Op = match w {
        Workload::Health => {
            let sys = sys.clone();
            Arc::new(move || {
                let sys = sys.clone();
                Box::pin(async move { sys.fatal(sys.req(reqwest::Method::GET, "/health")).await.map(|_| 1) })
            })
        }
        Workload::LatestRead => {
            sys.preload((0..keys).map(|i| (key(i), value.clone())).collect()).await?;
            let sys = sys.clone();
            Arc::new(move || {
                let (sys, ptr) = (sys.clone(), key(rand::rng().random_range(0..keys)));
                Box::pin(async move {
                    let r = sys.fatal(sys.req(reqwest::Method::GET, &Restm::ptr(&ptr))).await?;
                    r.bytes().await.map_err(|e| e.to_string())?;
                    Ok(1)
                })
            })
        }
        Workload::AsOfRead => {
            let ptr = format!("bench/{}/deep", s.tag);
            let versions = deep(&sys, &ptr, s).await?;
            let sys = sys.clone();
            Arc::new(move || {
                let at = versions[rand::rng().random_range(0..versions.len())];
                let (sys, path) = (sys.clone(), Restm::ptr(&ptr));
                Box::pin(async move {
                    let r = sys
                        .fatal(sys.req(reqwest::Method::GET, &path).header(HEADER_AT, at.to_string()))
                        .await?;
                    if r.status() != 200 {
                        return Err(format!("as-of read at {at}: {}", r.status()));
                    }
                    r.bytes().await.map_err(|e| e.to_string())?;
                    Ok(1)
                })
            })
        }
        Workload::Write => {
            let sys = sys.clone();
            Arc::new(move || {
                let (sys, ptr, v) = (sys.clone(), key(rand::rng().random_range(0..keys)), value.clone());
                Box::pin(async move {
                    sys.fatal(sys.req(reqwest::Method::PUT, &Restm::ptr(&ptr)).json(&v)).await.map(|_| 1)
                })
            })
        }
        Workload::MultiWrite => {
            let (sys, batch) = (sys.clone(), s.batch);
            Arc::new(move || {
                let writes: Vec<Value> = distinct(batch, keys)
                    .into_iter()
                    .map(|i| json!({"ptr": key(i), "value": value}))
                    .collect();
                let sys = sys.clone();
                Box::pin(async move {
                    let body = json!({ "writes": writes });
                    sys.fatal(sys.req(reqwest::Method::POST, "/txn").json(&body)).await.map(|_| 1)
                })
            })
        }
        Workload::Rmw | Workload::HotIncrement => {
            let hot = w == Workload::HotIncrement;
            let hot_key = key(0);
            let preload: Vec<(String, Value)> =
                if hot { vec![(key(0), json!(0))] } else { (0..keys).map(|i| (key(i), json!(0))).collect() };
            sys.preload(preload).await?;
            let commits = Arc::new(AtomicU64::new(0));
            let op_sys = sys.clone();
            let op_commits = commits.clone();
            let op: super::run::Op = Arc::new(move || {
                let ptr = if hot { key(0) } else { key(rand::rng().random_range(0..keys)) };
                let (sys, commits) = (op_sys.clone(), op_commits.clone());
                Box::pin(async move {
                    let n = sys
                        .retrying(|txn| {
                            let (sys, ptr) = (sys.clone(), ptr.clone());
                            async move {
                                let v = sys.get_int(&txn, &ptr, lock).await?;
                                sys.put(&txn, &ptr, &json!(v + 1)).await?;
                                Ok(true)
                            }
                        })
                        .await?;
                    commits.fetch_add(1, Ordering::Relaxed);
                    Ok(n)
                })
            });
            let check: Option<super::run::Check> = hot.then(|| {
                let (sys, ptr) = (sys.clone(), hot_key);
                Box::new(move || {
                    Box::pin(async move {
                        let r = sys.fatal(sys.req(reqwest::Method::GET, &Restm::ptr(&ptr))).await?;
                        let v: i64 = r.json().await.map_err(|e| e.to_string())?;
                        count_check(v, commits.load(Ordering::Relaxed))
                    }) as super::run::BoxFuture<Result<String, String>>
                }) as super::run::Check
            });
            return Ok(Prepared { op, check });
        }
        Workload::Bank => {
            let accounts = Accounts::new(&s.tag, keys);
            sys.preload((0..keys).map(|i| (accounts.name(i), json!(Accounts::OPENING))).collect()).await?;
            let (op_sys, op_accounts) = (sys.clone(), accounts.clone());
            let op: super::run::Op = Arc::new(move || {
                let (a, b, amount) = op_accounts.pick();
                let sys = op_sys.clone();
                Box::pin(async move {
                    sys.retrying(|txn| {
                        let (sys, a, b) = (sys.clone(), a.clone(), b.clone());
                        async move {
                            // Locking reads in id order, so two transfers never wait on each
                            // other in a cycle.
                            let (first, second) = if a < b { (&a, &b) } else { (&b, &a) };
                            let v1 = sys.get_int(&txn, first, lock).await?;
                            let v2 = sys.get_int(&txn, second, lock).await?;
                            let (va, vb) = if a < b { (v1, v2) } else { (v2, v1) };
                            if va < amount {
                                return Ok(false);
                            }
                            // Lock in id order, so two transfers never wait on each other.
                            let mut w = [(a, va - amount), (b, vb + amount)];
                            w.sort();
                            for (p, v) in w {
                                sys.put(&txn, &p, &json!(v)).await?;
                            }
                            Ok(true)
                        }
                    })
                    .await
                })
            });
            let check_sys = sys.clone();
            let check: super::run::Check = Box::new(move || {
                Box::pin(async move {
                    let balances = check_sys.list_ints(&accounts.prefix).await?;
                    accounts.audit(&balances)
                })
            });
            return Ok(Prepared { op, check: Some(check) });
        }
    };
    Ok(Prepared { op, check: None })
}

/// `n` distinct random indices below `keys` (all of them when `keys <= n`).
pub fn distinct(n: u64, keys: u64) -> Vec<u64> {
    let mut rng = rand::rng();
    let mut out: Vec<u64> = Vec::with_capacity(n as usize);
    if keys <= n {
        return (0..keys).collect();
    }
    while (out.len() as u64) < n {
        let i = rng.random_range(0..keys);
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// Gives `ptr` `s.versions` versions, written by `s.clients` writers; answers them.
async fn deep(sys: &Arc<Restm>, ptr: &str, s: &Setup) -> Result<Arc<Vec<u64>>, String> {
    let (sys, path, v) = (sys.clone(), Restm::ptr(ptr), s.value.clone());
    let versions = fill(s.versions, s.clients, move || {
        let (sys, path, v) = (sys.clone(), path.clone(), v.clone());
        async move {
            // Writers queue on the one pointer's lock; one that waited too long (a 409
            // lock-timeout, likelier behind a cluster's log) or met a moving lead writes again.
            let mut attempt = 0;
            let r = loop {
                match sys.send(sys.req(reqwest::Method::PUT, &path).json(&v)).await {
                    Ok(r) => break r,
                    Err(Fail::Retry) if attempt < 20 => {
                        attempt += 1;
                        backoff(attempt).await;
                    }
                    Err(Fail::Retry) => {
                        return Err(format!("writing {path} failed {attempt} times (409/503)"));
                    }
                    Err(Fail::Fatal(e)) => return Err(e),
                }
            };
            let w: restm_shared::WriteResponse = r.json().await.map_err(|e| e.to_string())?;
            Ok(w.version)
        }
    })
    .await?;
    Ok(Arc::new(versions))
}
