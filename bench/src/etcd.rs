//! The closest equivalents against etcd's v3 JSON gateway (`/v3/kv/range`, `/v3/kv/put`,
//! `/v3/kv/txn`): a read-modify-write is a range, then a txn whose compare checks the
//! key's `mod_revision` is unchanged (etcd's optimistic transaction), retried when it is
//! not; an as-of read is a range at a past `revision`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::Rng;
use serde_json::{Value, json};

use super::restm::distinct;
use super::run::{BoxFuture, Check, Op, Prepared, backoff, fill};
use super::{Accounts, Setup, Workload, count_check};

/// An etcd server under test.
#[derive(Clone)]
pub struct Etcd {
    http: reqwest::Client,
    /// One endpoint, or every member of a cluster: calls go to each in turn.
    bases: Arc<[String]>,
    turn: Arc<std::sync::atomic::AtomicUsize>,
}

fn b64(s: &str) -> String {
    B64.encode(s)
}

fn num(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        v => v.as_u64().unwrap_or(0),
    }
}

impl Etcd {
    pub fn new(http: reqwest::Client, bases: &[String]) -> Self {
        let bases = bases.iter().map(|b| b.trim_end_matches('/').to_string()).collect();
        Self { http, bases, turn: Arc::default() }
    }

    fn base(&self) -> &str {
        let i = self.turn.fetch_add(1, Ordering::Relaxed) % self.bases.len().max(1);
        self.bases.get(i).map_or("", String::as_str)
    }

    async fn call(&self, path: &str, body: &Value) -> Result<Value, String> {
        let r = self
            .http
            .post(format!("{}{path}", self.base()))
            .json(body)
            .send()
            .await
            .map_err(|e| format!("etcd request failed: {e}"))?;
        let status = r.status();
        let v: Value = r.json().await.map_err(|e| format!("etcd answered {status}, not JSON: {e}"))?;
        if !status.is_success() {
            return Err(format!("etcd {path}: {status} {v}"));
        }
        Ok(v)
    }

    async fn put(&self, key: &str, value: &str) -> Result<u64, String> {
        let v = self.call("/v3/kv/put", &json!({"key": b64(key), "value": b64(value)})).await?;
        Ok(num(&v["header"]["revision"]))
    }

    /// The value and mod revision of `key` (`None`: absent).
    async fn range(&self, key: &str, revision: Option<u64>) -> Result<Option<(String, u64)>, String> {
        let mut body = json!({"key": b64(key)});
        if let Some(r) = revision {
            body["revision"] = json!(r.to_string());
        }
        let v = self.call("/v3/kv/range", &body).await?;
        let Some(kv) = v["kvs"].get(0) else { return Ok(None) };
        let raw = B64.decode(kv["value"].as_str().unwrap_or_default()).map_err(|e| e.to_string())?;
        Ok(Some((String::from_utf8_lossy(&raw).into_owned(), num(&kv["mod_revision"]))))
    }

    async fn int(&self, key: &str) -> Result<(i64, u64), String> {
        match self.range(key, None).await? {
            Some((v, rev)) => Ok((v.parse().map_err(|e| format!("{key} is not an integer: {e}"))?, rev)),
            None => Ok((0, 0)),
        }
    }

    /// Puts `writes` only if every key in `expect` is at its mod revision; `false` if not.
    async fn txn(&self, expect: &[(&str, u64)], writes: &[(&str, String)]) -> Result<bool, String> {
        let compare: Vec<Value> = expect
            .iter()
            .map(|(k, rev)| json!({"key": b64(k), "target": "MOD", "result": "EQUAL", "mod_revision": rev.to_string()}))
            .collect();
        let success: Vec<Value> =
            writes.iter().map(|(k, v)| json!({"request_put": {"key": b64(k), "value": b64(v)}})).collect();
        let v = self.call("/v3/kv/txn", &json!({"compare": compare, "success": success})).await?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    async fn preload(&self, kvs: Vec<(String, String)>) -> Result<(), String> {
        for chunk in kvs.chunks(100) {
            let writes: Vec<(&str, String)> = chunk.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            self.txn(&[], &writes).await?;
        }
        Ok(())
    }
}

/// Sets `w` up on etcd and answers its operation.
pub async fn prepare(sys: &Etcd, w: Workload, s: &Setup) -> Result<Prepared, String> {
    let tag = format!("bench/{}", s.tag);
    let key = move |i: u64| format!("{tag}/k/{i}");
    let keys = s.keys;
    let value = s.value.to_string();
    let sys = Arc::new(sys.clone());
    let op: Op = match w {
        Workload::Health => {
            let sys = sys.clone();
            Arc::new(move || {
                let sys = sys.clone();
                Box::pin(async move {
                    let r = sys
                        .http
                        .get(format!("{}/health", sys.base()))
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    r.bytes().await.map_err(|e| e.to_string())?;
                    Ok(1)
                })
            })
        }
        Workload::LatestRead => {
            sys.preload((0..keys).map(|i| (key(i), value.clone())).collect()).await?;
            let sys = sys.clone();
            Arc::new(move || {
                let (sys, k) = (sys.clone(), key(rand::rng().random_range(0..keys)));
                Box::pin(
                    async move { sys.range(&k, None).await?.map(|_| 1).ok_or_else(|| format!("{k} absent")) },
                )
            })
        }
        Workload::AsOfRead => {
            let k = format!("bench/{}/deep", s.tag);
            let revisions = deep(&sys, &k, s).await?;
            let sys = sys.clone();
            Arc::new(move || {
                let rev = revisions[rand::rng().random_range(0..revisions.len())];
                let (sys, k) = (sys.clone(), k.clone());
                Box::pin(async move {
                    sys.range(&k, Some(rev)).await?.map(|_| 1).ok_or_else(|| format!("{k}@{rev} absent"))
                })
            })
        }
        Workload::Write => {
            let sys = sys.clone();
            Arc::new(move || {
                let (sys, k, v) = (sys.clone(), key(rand::rng().random_range(0..keys)), value.clone());
                Box::pin(async move { sys.put(&k, &v).await.map(|_| 1) })
            })
        }
        Workload::MultiWrite => {
            let (sys, batch) = (sys.clone(), s.batch);
            Arc::new(move || {
                let ks: Vec<String> = distinct(batch, keys).into_iter().map(&key).collect();
                let (sys, v) = (sys.clone(), value.clone());
                Box::pin(async move {
                    let writes: Vec<(&str, String)> = ks.iter().map(|k| (k.as_str(), v.clone())).collect();
                    sys.txn(&[], &writes).await.map(|_| 1)
                })
            })
        }
        Workload::Rmw | Workload::HotIncrement => {
            let hot = w == Workload::HotIncrement;
            let hot_key = key(0);
            let n = if hot { 1 } else { keys };
            sys.preload((0..n).map(|i| (key(i), "0".to_string())).collect()).await?;
            let commits = Arc::new(AtomicU64::new(0));
            let (op_sys, op_commits) = (sys.clone(), commits.clone());
            let op: Op = Arc::new(move || {
                let k = if hot { key(0) } else { key(rand::rng().random_range(0..keys)) };
                let (sys, commits) = (op_sys.clone(), op_commits.clone());
                Box::pin(async move {
                    let mut attempt = 1;
                    loop {
                        let (v, rev) = sys.int(&k).await?;
                        if sys.txn(&[(&k, rev)], &[(&k, (v + 1).to_string())]).await? {
                            commits.fetch_add(1, Ordering::Relaxed);
                            return Ok(attempt);
                        }
                        backoff(attempt).await;
                        attempt += 1;
                    }
                })
            });
            let check: Option<Check> = hot.then(|| {
                let (sys, k) = (sys.clone(), hot_key);
                Box::new(move || {
                    Box::pin(async move {
                        let (v, _) = sys.int(&k).await?;
                        count_check(v, commits.load(Ordering::Relaxed))
                    }) as BoxFuture<Result<String, String>>
                }) as Check
            });
            return Ok(Prepared { op, check });
        }
        Workload::Bank => {
            let accounts = Accounts::new(&s.tag, keys);
            let opening = Accounts::OPENING.to_string();
            sys.preload((0..keys).map(|i| (accounts.name(i), opening.clone())).collect()).await?;
            let (op_sys, op_accounts) = (sys.clone(), accounts.clone());
            let op: Op = Arc::new(move || {
                let (a, b, amount) = op_accounts.pick();
                let sys = op_sys.clone();
                Box::pin(async move {
                    let mut attempt = 1;
                    loop {
                        let ((va, ra), (vb, rb)) = (sys.int(&a).await?, sys.int(&b).await?);
                        if va < amount {
                            return Ok(attempt);
                        }
                        let writes = [
                            (a.as_str(), (va - amount).to_string()),
                            (b.as_str(), (vb + amount).to_string()),
                        ];
                        if sys.txn(&[(&a, ra), (&b, rb)], &writes).await? {
                            return Ok(attempt);
                        }
                        backoff(attempt).await;
                        attempt += 1;
                    }
                })
            });
            let check_sys = sys.clone();
            let check: Check = Box::new(move || {
                Box::pin(async move {
                    let prefix = &accounts.prefix;
                    let end = format!("{}0", &prefix[..prefix.len() - 1]);
                    let v = check_sys
                        .call(
                            "/v3/kv/range",
                            &json!({"key": b64(prefix), "range_end": b64(&end), "limit": 0}),
                        )
                        .await?;
                    let mut balances = Vec::new();
                    for kv in v["kvs"].as_array().cloned().unwrap_or_default() {
                        let raw = B64
                            .decode(kv["value"].as_str().unwrap_or_default())
                            .map_err(|e| e.to_string())?;
                        balances
                            .push(String::from_utf8_lossy(&raw).parse::<i64>().map_err(|e| e.to_string())?);
                    }
                    accounts.audit(&balances)
                })
            });
            return Ok(Prepared { op, check: Some(check) });
        }
    };
    Ok(Prepared { op, check: None })
}

/// Gives `key` `s.versions` revisions; answers them.
async fn deep(sys: &Arc<Etcd>, key: &str, s: &Setup) -> Result<Arc<Vec<u64>>, String> {
    let (sys, key, v) = (sys.clone(), key.to_string(), s.value.to_string());
    let revs = fill(s.versions, s.clients, move || {
        let (sys, key, v) = (sys.clone(), key.clone(), v.clone());
        async move { sys.put(&key, &v).await }
    })
    .await?;
    Ok(Arc::new(revs))
}
