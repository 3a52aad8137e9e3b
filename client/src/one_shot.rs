//! A one-shot transaction (`POST /txn`): checks and writes known up front, committed
//! atomically in one round trip.

use restm_shared::{Check, CommitResponse, OneShotRequest, WriteOp};
use serde::Serialize;

use crate::{Client, Error};

/// Builder of a one-shot transaction.
#[derive(Debug)]
pub struct OneShot {
    client: Client,
    req: OneShotRequest,
}

impl OneShot {
    pub(crate) fn new(client: Client) -> Self {
        Self { client, req: OneShotRequest { checks: Vec::new(), writes: Vec::new() } }
    }

    /// Only commit if `ptr` is at `version` (`None`: absent).
    pub fn check(mut self, ptr: &str, version: Option<u64>) -> Self {
        self.req.checks.push(Check { ptr: ptr.to_string(), version });
        self
    }

    /// Writes `value` to `ptr`.
    pub fn put<T: Serialize + ?Sized>(mut self, ptr: &str, value: &T) -> Result<Self, Error> {
        let raw = serde_json::value::to_raw_value(value)?;
        self.req.writes.push(WriteOp { ptr: ptr.to_string(), value: Some(raw), delete: false });
        Ok(self)
    }

    /// Deletes `ptr`.
    pub fn delete(mut self, ptr: &str) -> Self {
        self.req.writes.push(WriteOp { ptr: ptr.to_string(), value: None, delete: true });
        self
    }

    /// Commits; returns the commit version. A failed check is a `409` problem naming it.
    pub async fn commit(self) -> Result<u64, Error> {
        let req = self.client.request(reqwest::Method::POST, "/txn").json(&self.req);
        Client::json::<CommitResponse>(req).await.map(|c| c.commit_version)
    }
}
