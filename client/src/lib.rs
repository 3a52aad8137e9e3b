//! The Rust SDK of reSTM: a [`Client`] for one node, speaking the HTTP contract.
//!
//! - [`Client::transact`] runs a closure in a read-write transaction and retries it on
//!   conflicts with jittered exponential back-off ([`RetryPolicy`]); when the budget runs
//!   out, [`Error::RetriesExhausted`] names the last conflict's pointer and winner.
//! - [`Client::read_only`] and [`Client::read_at`] run a closure on one snapshot (now, or
//!   as of any `X-reSTM-At` moment); they never conflict.
//! - [`Client::one_shot`] commits writes known up front in one request (`POST /txn`).
//! - [`collections`]: a striped [`collections::Counter`], a [`collections::Map`] and a FIFO
//!   [`collections::Queue`] laid out on pointers, composable inside one transaction.
//! - Every transaction carries a W3C `traceparent`, so the node's spans for it form one
//!   trace whose id [`Txn::trace_id`] gives; a [`Txn`] dropped before it finished is
//!   aborted, never leaked. Connections are pooled and kept alive.

pub mod collections;
mod error;
mod one_shot;
mod retry;
pub mod tasks;
mod txn;

use std::time::{Duration, Instant};

use restm_shared::{
    BeginRequest, BeginResponse, HEADER_AT, HistoryPage, ListPage, PROBLEM_JSON, PointerEntry, Problem,
};
use serde::de::DeserializeOwned;

pub use error::Error;
pub use one_shot::OneShot;
pub use retry::RetryPolicy;
pub use txn::Txn;

/// A client of one node. Cheap to clone; clones share the connection pool.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    retry: RetryPolicy,
    /// Lease asked for each transaction.
    timeout_ms: Option<u64>,
}

impl Client {
    /// A client of the node at `base` (e.g. `http://127.0.0.1:7070`).
    pub fn new(base: impl Into<String>) -> Result<Self, Error> {
        Self::over(base, Self::http())
    }

    /// A client of the `https://` node at `base` that trusts only the certificates of the
    /// PEM bundle `ca_pem` (a private CA, or the node's own self-signed certificate; the
    /// CLI's `--ca`), not the system's roots.
    pub fn with_ca(base: impl Into<String>, ca_pem: &[u8]) -> Result<Self, Error> {
        let certs = reqwest::Certificate::from_pem_bundle(ca_pem)
            .map_err(|e| Error::Config(format!("the CA bundle is not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(Error::Config("the CA bundle holds no certificate".into()));
        }
        Self::over(base, Self::http().tls_certs_only(certs))
    }

    /// The connection pool's settings.
    fn http() -> reqwest::ClientBuilder {
        reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(90)).tcp_nodelay(true)
    }

    fn over(base: impl Into<String>, http: reqwest::ClientBuilder) -> Result<Self, Error> {
        let http = http.build()?;
        Ok(Self {
            http,
            base: base.into().trim_end_matches('/').to_string(),
            token: None,
            retry: RetryPolicy::default(),
            timeout_ms: None,
        })
    }

    /// Sends `Authorization: Bearer <token>` on every request.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The retry budget of [`Client::transact`].
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The lease each transaction asks for (the node's default otherwise).
    pub fn with_txn_timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = Some(timeout.as_millis().max(1) as u64);
        self
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Sends `req`; a problem answer becomes [`Error::Problem`].
    pub(crate) async fn send(req: reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
        let resp = req.send().await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let is_problem = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(PROBLEM_JSON));
        let text = resp.text().await?;
        match serde_json::from_str::<Problem>(&text) {
            Ok(problem) if is_problem => Err(Error::Problem { problem: Box::new(problem) }),
            _ => Err(Error::Protocol(format!("{status}: {}", text.chars().take(200).collect::<String>()))),
        }
    }

    pub(crate) async fn json<T: DeserializeOwned>(req: reqwest::RequestBuilder) -> Result<T, Error> {
        let resp = Self::send(req).await?;
        let bytes = resp.bytes().await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Protocol(format!("{e} in {}", String::from_utf8_lossy(&bytes))))
    }

    /// Begins a transaction; `at` pins a read-only one in the past.
    pub async fn begin(&self, read_only: bool, at: Option<&str>) -> Result<Txn, Error> {
        let traceparent = txn::new_traceparent();
        let mut req = self
            .request(reqwest::Method::POST, "/txn/begin")
            .header("traceparent", &traceparent)
            .json(&BeginRequest { timeout_ms: self.timeout_ms, read_only: read_only.then_some(true) });
        if let Some(at) = at {
            req = req.header(HEADER_AT, at);
        }
        let begun: BeginResponse = Self::json(req).await?;
        Ok(Txn::new(self.clone(), begun, traceparent))
    }

    /// Runs `body` in a read-write transaction and commits it. On a conflict (from any
    /// read, write or the commit) the transaction is aborted and `body` runs again after a
    /// jittered back-off, until it commits or the [`RetryPolicy`] runs out. Other errors
    /// abort and return at once. `body` may run several times: keep side effects out of it.
    ///
    /// ```no_run
    /// # async fn demo(c: restm_client::Client) -> Result<(), restm_client::Error> {
    /// c.transact(|tx| async move {
    ///     let n: i64 = tx.get("counter").await?.unwrap_or(0);
    ///     tx.put("counter", &(n + 1)).await
    /// })
    /// .await
    /// # }
    /// ```
    pub async fn transact<T, F, Fut>(&self, mut body: F) -> Result<T, Error>
    where
        F: FnMut(Txn) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let started = Instant::now();
        let mut attempt = 1u32;
        loop {
            let result = async {
                let txn = self.begin(false, None).await?;
                let out = body(txn.clone()).await;
                match out {
                    Ok(v) => txn.commit().await.map(|_| v),
                    Err(e) => {
                        txn.abort().await;
                        Err(e)
                    }
                }
            }
            .await;
            match result {
                Err(e) if e.is_retryable() => {
                    let out_of_budget = attempt >= self.retry.max_attempts.max(1)
                        || started.elapsed() >= self.retry.max_elapsed;
                    if out_of_budget {
                        let last = e.problem().cloned().unwrap_or_default();
                        return Err(Error::RetriesExhausted {
                            attempts: attempt,
                            elapsed_ms: started.elapsed().as_millis() as u64,
                            last: Box::new(last),
                        });
                    }
                    attempt += 1;
                    tracing::debug!(attempt, error = %e, "transaction conflict; retrying");
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// Runs `body` on a read-only snapshot of now. It takes no locks and never conflicts.
    pub async fn read_only<T, Fut>(&self, body: impl FnOnce(Txn) -> Fut) -> Result<T, Error>
    where
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        self.snapshot(None, body).await
    }

    /// Runs `body` on a read-only snapshot as of `at` (a version, an RFC 3339 instant, or
    /// `-10s`), as `X-reSTM-At` takes it.
    pub async fn read_at<T, Fut>(&self, at: &str, body: impl FnOnce(Txn) -> Fut) -> Result<T, Error>
    where
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        self.snapshot(Some(at), body).await
    }

    async fn snapshot<T, Fut>(&self, at: Option<&str>, body: impl FnOnce(Txn) -> Fut) -> Result<T, Error>
    where
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let txn = self.begin(true, at).await?;
        let out = body(txn.clone()).await;
        // A snapshot has nothing to commit; ending it frees its hold on garbage collection.
        txn.abort().await;
        out
    }

    /// Writes known up front, committed atomically in one request.
    pub fn one_shot(&self) -> OneShot {
        OneShot::new(self.clone())
    }

    /// One page of the pointers whose ids start with `prefix`, by id, after the id `after`
    /// (the previous page's `next`), now or as of `at`.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        at: Option<&str>,
    ) -> Result<ListPage, Error> {
        let mut path = format!("/ptr?limit={limit}&prefix={}", txn::encode(prefix));
        if let Some(a) = after {
            path.push_str(&format!("&after={}", txn::encode(a)));
        }
        let mut req = self.request(reqwest::Method::GET, &path);
        if let Some(at) = at {
            req = req.header(HEADER_AT, at);
        }
        Self::json(req).await
    }

    /// Every pointer whose id starts with `prefix` (at most `limit`), by id, now or as of
    /// `at`, gathered page by page.
    pub async fn list_all(
        &self,
        prefix: &str,
        at: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PointerEntry>, Error> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        while out.len() < limit {
            let page = self.list(prefix, after.as_deref(), (limit - out.len()).min(1000), at).await?;
            out.extend(page.pointers);
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        Ok(out)
    }

    /// One page of `ptr`'s versions, oldest first, after the cursor `after` (the previous
    /// page's `next`).
    pub async fn history(&self, ptr: &str, after: Option<&str>, limit: usize) -> Result<HistoryPage, Error> {
        let mut path = format!("{}/history?limit={limit}", txn::ptr_path(ptr));
        if let Some(a) = after {
            path.push_str(&format!("&after={}", txn::encode(a)));
        }
        Self::json(self.request(reqwest::Method::GET, &path)).await
    }

    /// The latest value of `ptr` outside any transaction (`None`: absent).
    pub async fn get<T: DeserializeOwned>(&self, ptr: &str) -> Result<Option<T>, Error> {
        txn::read(self, None, ptr, None).await.map(|r| r.map(|(v, _)| v))
    }
}
