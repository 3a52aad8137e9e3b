//! The cluster's live views where every member coordinates: `GET /txns` and `GET /locks`
//! at any member gather every member's own and merge them.
//!
//! Each txn lives on its coordinator, with the locks it holds; a txn waiting for a lock at
//! another member is a waiter on its coordinator. So a member asks each other member for its
//! part (the same route, marked forwarded, so that it answers for itself alone) and joins
//! the parts: txns oldest first, each lock with every member's waiters for it. A member that
//! does not answer in time is left out, and named in `X-reSTM-Missing`.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use restm_shared::{ActiveTxns, LockView, LockWaiter, Locks, TxnStatus};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::route::HEADER_FORWARDED;

/// Names the members whose part is missing from a gathered view.
pub const HEADER_MISSING: &str = "x-restm-missing";

/// Longest a member's part may take.
const PART_TIMEOUT: Duration = Duration::from_secs(2);

/// One member's part of `/locks`: its txns' locks, and its txns' waits for locks it does
/// not hold.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LocksPart {
    pub locks: Vec<LockView>,
    #[serde(default)]
    pub waiting: Vec<(String, LockWaiter)>,
}

/// Whether a view at this member is the cluster's gathered one (every member coordinates,
/// and the request is a client's, not another member's asking for its part).
pub fn gathers(state: &AppState, headers: &axum::http::HeaderMap) -> bool {
    state.node.cluster().is_some_and(|c| c.coordinates_anywhere()) && !headers.contains_key(HEADER_FORWARDED)
}

/// Every other member's answer to `GET path`, parsed; and the members that gave none.
async fn parts<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    path: &str,
) -> (Vec<T>, Vec<u64>) {
    let Some(cluster) = state.node.cluster() else { return (Vec::new(), Vec::new()) };
    let me = cluster.node_id();
    let asks = cluster.members().into_iter().filter(|m| *m != me).map(|member| async move {
        let url = cluster.client_url(member).await?;
        let mut ask = state
            .forwarder
            .get(format!("{}{path}", url.trim_end_matches('/')))
            .header(HEADER_FORWARDED, me)
            .timeout(PART_TIMEOUT);
        if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) {
            ask = ask.header(axum::http::header::AUTHORIZATION, auth);
        }
        let answer = ask.send().await.ok()?.error_for_status().ok()?;
        answer.json::<T>().await.ok()
    });
    let members: Vec<u64> = cluster.members().into_iter().filter(|m| *m != me).collect();
    let answers = futures_util::future::join_all(asks).await;
    let mut got = Vec::new();
    let mut missing = Vec::new();
    for (member, answer) in members.into_iter().zip(answers) {
        match answer {
            Some(part) => got.push(part),
            None => missing.push(member),
        }
    }
    (got, missing)
}

/// Names the `missing` members on `resp`.
fn with_missing(mut resp: Response, missing: &[u64]) -> Response {
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(u64::to_string).collect();
        if let Ok(v) = axum::http::HeaderValue::from_str(&names.join(",")) {
            resp.headers_mut().insert(HEADER_MISSING, v);
        }
    }
    resp
}

/// The cluster's `/txns`: every member's active txns, oldest first.
pub async fn txns(state: &AppState, headers: &axum::http::HeaderMap, mine: ActiveTxns) -> Response {
    let (others, missing) = parts::<ActiveTxns>(state, headers, "/txns").await;
    let mut txns: Vec<TxnStatus> = mine.txns;
    txns.extend(others.into_iter().flat_map(|p| p.txns));
    txns.sort_by(|a, b| b.age_ms.cmp(&a.age_ms).then_with(|| a.txn.cmp(&b.txn)));
    let oldest = txns.first().map(|t| t.txn.clone());
    with_missing(axum::Json(ActiveTxns { txns, oldest }).into_response(), &missing)
}

/// The cluster's `/locks`: every member's txns' locks, each with its waiters on every
/// member, contended ones first.
pub async fn locks(state: &AppState, headers: &axum::http::HeaderMap, mine: LocksPart) -> Response {
    let (others, missing) = parts::<LocksPart>(state, headers, "/locks").await;
    let all = std::iter::once(mine).chain(others);
    let (locks, waiting): (Vec<_>, Vec<_>) = all.map(|p| (p.locks, p.waiting)).unzip();
    let merged = merge(locks.into_iter().flatten().collect(), waiting.into_iter().flatten().collect());
    with_missing(axum::Json(Locks { locks: merged }).into_response(), &missing)
}

/// Joins every member's locks with the waiters for them, longest waiting first; contended
/// locks first. A waiter for a lock no member's txn holds (it was just released) is left out.
fn merge(mut locks: Vec<LockView>, waiting: Vec<(String, LockWaiter)>) -> Vec<LockView> {
    for (ptr, waiter) in waiting {
        if let Some(lock) = locks.iter_mut().find(|l| l.ptr == ptr) {
            lock.waiters.push(waiter);
        }
    }
    for lock in &mut locks {
        lock.waiters.sort_by_key(|w| std::cmp::Reverse(w.waiting_ms));
    }
    locks.sort_by(|a, b| b.waiters.len().cmp(&a.waiters.len()).then_with(|| a.ptr.cmp(&b.ptr)));
    locks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(ptr: &str, holder: &str) -> LockView {
        LockView {
            ptr: ptr.into(),
            holder_txn: holder.into(),
            holder_trace_id: "t".into(),
            holder_age_ms: 5,
            waiters: vec![],
        }
    }

    #[test]
    fn waiters_on_other_members_join_the_lock_they_wait_for() {
        let waiter = |txn: &str, ms| LockWaiter { txn: txn.into(), waiting_ms: ms };
        let merged = merge(
            vec![lock("a", "n1-1"), lock("b", "n2-1")],
            vec![
                ("b".into(), waiter("n3-1", 10)),
                ("b".into(), waiter("n1-2", 30)),
                ("gone".into(), waiter("n3-2", 1)),
            ],
        );
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].ptr, "b", "the contended lock first");
        assert_eq!(merged[0].waiters, vec![waiter("n1-2", 30), waiter("n3-1", 10)]);
        assert!(merged[1].waiters.is_empty());
    }
}
