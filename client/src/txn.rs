//! One transaction on the node: reads at its snapshot, staged writes, commit or abort, and
//! an abort on drop so that a forgotten transaction never holds locks until its lease ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use rand::Rng;
use restm_shared::{BeginResponse, CommitResponse, HEADER_TXN, HEADER_VERSION, codes};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Client, Error};

/// Characters left as they are in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Percent-encodes a path segment or a query value.
pub(crate) fn encode(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

pub(crate) fn ptr_path(ptr: &str) -> String {
    format!("/ptr/{}", encode(ptr))
}

/// A fresh W3C `traceparent` (version 00, sampled).
pub(crate) fn new_traceparent() -> String {
    let mut rng = rand::rng();
    let trace: u128 = rng.random_range(1..=u128::MAX);
    let span: u64 = rng.random_range(1..=u64::MAX);
    format!("00-{trace:032x}-{span:016x}-01")
}

/// Reads `ptr` (in `txn`, or outside any): the value and its version, `None` when absent.
/// The version is `None` for the transaction's own staged write, which has none yet.
pub(crate) async fn read<T: DeserializeOwned>(
    client: &Client,
    txn: Option<&str>,
    ptr: &str,
    at: Option<&str>,
) -> Result<Option<(T, Option<u64>)>, Error> {
    let mut req = client.request(reqwest::Method::GET, &ptr_path(ptr));
    if let Some(t) = txn {
        req = req.header(HEADER_TXN, t);
    }
    if let Some(a) = at {
        req = req.header(restm_shared::HEADER_AT, a);
    }
    let resp = match Client::send(req).await {
        Ok(r) => r,
        Err(Error::Problem { problem }) if problem.status == 404 && problem.code == codes::NOT_FOUND => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let version = match resp.headers().get(HEADER_VERSION) {
        None if txn.is_some() => None,
        header => Some(
            header
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::Protocol(format!("no valid {HEADER_VERSION} on a read")))?,
        ),
    };
    let bytes = resp.bytes().await?;
    Ok(Some((serde_json::from_slice(&bytes)?, version)))
}

/// A transaction: a cheap handle (clones share it). When the last handle goes before
/// [`Txn::commit`] or [`Txn::abort`], the transaction is aborted in the background.
#[derive(Debug, Clone)]
pub struct Txn(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    client: Client,
    id: String,
    read_version: u64,
    traceparent: String,
    done: AtomicBool,
}

impl Txn {
    pub(crate) fn new(client: Client, begun: BeginResponse, traceparent: String) -> Self {
        Self(Arc::new(Inner {
            client,
            id: begun.txn,
            read_version: begun.read_version,
            traceparent,
            done: AtomicBool::new(false),
        }))
    }

    /// The node's id of this transaction.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    pub(crate) fn client(&self) -> &Client {
        &self.0.client
    }

    /// The snapshot it reads.
    pub fn read_version(&self) -> u64 {
        self.0.read_version
    }

    /// The trace every request of this transaction belongs to (32 hex digits): open it in
    /// Jaeger.
    pub fn trace_id(&self) -> &str {
        self.0.traceparent.get(3..35).unwrap_or_default()
    }

    /// The value of `ptr` at the snapshot (or as this transaction wrote it); `None`: absent.
    pub async fn get<T: DeserializeOwned>(&self, ptr: &str) -> Result<Option<T>, Error> {
        Ok(self.get_versioned(ptr).await?.map(|(v, _)| v))
    }

    /// The value of `ptr` and the version it was read at; the version is `None` when the
    /// value is this transaction's own staged write.
    pub async fn get_versioned<T: DeserializeOwned>(
        &self,
        ptr: &str,
    ) -> Result<Option<(T, Option<u64>)>, Error> {
        read(&self.0.client, Some(&self.0.id), ptr, None).await
    }

    /// A locking read (`SELECT ... FOR UPDATE`): takes `ptr`'s lock first, waiting like a
    /// write, then reads its newest version (moving the snapshot forward if needed). Use it
    /// for a read-modify-write of a contended pointer: contenders queue on the lock instead
    /// of failing at commit. The lock is held until the transaction ends.
    pub async fn get_for_update<T: DeserializeOwned>(&self, ptr: &str) -> Result<Option<T>, Error> {
        let req = self
            .0
            .client
            .request(reqwest::Method::GET, &ptr_path(ptr))
            .header(HEADER_TXN, &self.0.id)
            .header(restm_shared::HEADER_LOCK, "update");
        let resp = match Client::send(req).await {
            Ok(r) => r,
            Err(Error::Problem { problem }) if problem.status == 404 && problem.code == codes::NOT_FOUND => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let bytes = resp.bytes().await?;
        Ok(Some(serde_json::from_slice(&bytes)?))
    }

    /// Stages `value` for `ptr`, taking its lock (waiting up to the node's lock timeout).
    pub async fn put<T: Serialize + ?Sized>(&self, ptr: &str, value: &T) -> Result<(), Error> {
        let req = self
            .0
            .client
            .request(reqwest::Method::PUT, &ptr_path(ptr))
            .header(HEADER_TXN, &self.0.id)
            .json(value);
        Client::send(req).await.map(drop)
    }

    /// Stages the deletion of `ptr`; `false` if it had no value at the snapshot.
    pub async fn delete(&self, ptr: &str) -> Result<bool, Error> {
        let req =
            self.0.client.request(reqwest::Method::DELETE, &ptr_path(ptr)).header(HEADER_TXN, &self.0.id);
        match Client::send(req).await {
            Ok(_) => Ok(true),
            Err(Error::Problem { problem }) if problem.status == 404 && problem.code == codes::NOT_FOUND => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Commits; returns the commit version.
    pub async fn commit(&self) -> Result<u64, Error> {
        self.0.done.store(true, Ordering::SeqCst);
        let req = self.0.client.request(reqwest::Method::POST, &format!("/txn/{}/commit", self.0.id));
        Client::json::<CommitResponse>(req).await.map(|c| c.commit_version)
    }

    /// Aborts (best effort: a transaction the node already ended is left as it is).
    pub async fn abort(&self) {
        if self.0.done.swap(true, Ordering::SeqCst) {
            return;
        }
        let req = self.0.client.request(reqwest::Method::POST, &format!("/txn/{}/abort", self.0.id));
        if let Err(e) = Client::send(req).await {
            tracing::debug!(txn = %self.0.id, error = %e, "abort failed");
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.done.load(Ordering::SeqCst) {
            return;
        }
        // Not finished: abort in the background so its locks go now, not at lease expiry.
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let req = self.client.request(reqwest::Method::POST, &format!("/txn/{}/abort", self.id));
        rt.spawn(async move {
            let _ = Client::send(req).await;
        });
    }
}
