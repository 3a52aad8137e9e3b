//! `GET /events` where every member coordinates (`--groups` above 1): every member's stream,
//! merged, at any member.
//!
//! Each member numbers the events of the txns it coordinates, and names itself on each
//! (`node`). A client's subscription at one member is served from its own hub and, for each
//! other member, from that member's stream (the same query, marked forwarded, so that it
//! answers for itself alone), all into one socket. The client resumes per member,
//! `since=1:120,2:88`, and the merge resumes each member's stream where the client or it
//! last saw one. A member whose stream ends is dialled again, with growing back-off and with
//! the last sequence seen from it, so nothing it still buffers is missed; while it cannot be
//! reached the client is told once, with `member_down`, and again with `member_up` when its
//! events flow again. The merged stream is in arrival order: each member's events keep
//! theirs, and `time` orders events of different members.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocket;
use futures_util::StreamExt;
use restm_shared::Since;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite;

use super::events::{Filter, Out, notice, stream};
use super::events_relay::{Upstream, open};
use crate::cluster::Cluster;
use crate::events::EventHub;

/// Messages queued between the members' streams and the client's socket. A client slower
/// than that holds the members' streams back, and their hubs then tell it `lagged`.
const QUEUE: usize = 4096;
/// Most messages written to the client before one flush.
const SEND_BATCH: usize = 256;
/// Longest opening a member's stream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const FIRST_RETRY: Duration = Duration::from_millis(250);
const LAST_RETRY: Duration = Duration::from_secs(4);

/// What dialling the other members needs of the client's request.
pub(super) struct Others {
    /// The client's query without `since` (each member gets its own).
    query: String,
    headers: axum::http::HeaderMap,
    tls: Option<Arc<crate::tls::Tls>>,
}

impl Others {
    pub fn new(
        query: Option<&str>,
        headers: &axum::http::HeaderMap,
        tls: Option<Arc<crate::tls::Tls>>,
    ) -> Self {
        let query = query
            .unwrap_or_default()
            .split('&')
            .filter(|kv| !kv.is_empty() && !kv.starts_with("since="))
            .collect::<Vec<_>>()
            .join("&");
        Self { query, headers: headers.clone(), tls }
    }

    /// The query for one member's stream, resuming after `since`.
    fn query(&self, since: Option<u64>) -> String {
        match (since, self.query.is_empty()) {
            (None, _) => self.query.clone(),
            (Some(s), true) => format!("since={s}"),
            (Some(s), false) => format!("{}&since={s}", self.query),
        }
    }
}

/// The merge's side of a member's stream: its messages, queued for the client.
struct Queue(mpsc::Sender<String>);

impl Out for Queue {
    async fn feed(&mut self, text: &str) -> bool {
        self.0.send(text.to_owned()).await.is_ok()
    }

    async fn flush(&mut self) -> bool {
        !self.0.is_closed()
    }

    async fn gone(&mut self) {
        self.0.closed().await;
    }
}

/// Serves `socket` every member's events after `since` that `filter` keeps, until the
/// client leaves.
pub(super) async fn merged(
    mut socket: WebSocket,
    hub: Arc<EventHub>,
    filter: Filter,
    since: Since,
    others: Others,
    cluster: Arc<Cluster>,
) {
    let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
    let me = cluster.node_id();
    let others = Arc::new(others);
    let mut members = tokio::task::JoinSet::new();
    for member in cluster.members().into_iter().filter(|m| *m != me) {
        let from = since.for_member(Some(member));
        members.spawn(follow(member, cluster.clone(), others.clone(), from, Queue(tx.clone())));
    }
    let mine = since.for_member(Some(me));
    let mut queue = Queue(tx);
    members.spawn(async move { stream(&mut queue, hub, filter, mine).await });
    'client: loop {
        let first = tokio::select! {
            got = rx.recv() => got,
            () = Out::gone(&mut socket) => break,
        };
        let mut next = first;
        let mut queued = 0usize;
        while let Some(text) = next.take() {
            if !Out::feed(&mut socket, &text).await {
                break 'client;
            }
            queued += 1;
            if queued < SEND_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !Out::flush(&mut socket).await {
            break;
        }
    }
    // Dropping the queue's receiver ends every member's stream; the set aborts the rest.
    drop(rx);
    members.shutdown().await;
}

/// The sequence number of one member's message.
fn seq_of(text: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    serde_json::from_str::<Seq>(text).ok().map(|s| s.seq)
}

/// Sends `member`'s stream, after `since`, into `queue` until the client leaves, dialling
/// it again whenever it ends.
async fn follow(
    member: u64,
    cluster: Arc<Cluster>,
    others: Arc<Others>,
    mut since: Option<u64>,
    mut queue: Queue,
) {
    let mut retry = FIRST_RETRY;
    let mut down = false;
    loop {
        let opened = match cluster.client_url(member).await {
            None => Err(format!("member {member} does not say where it serves clients")),
            Some(url) => {
                let query = others.query(since);
                let up =
                    Upstream::new(&url, Some(&query), &others.headers, cluster.node_id(), others.tls.clone());
                match tokio::time::timeout(CONNECT_TIMEOUT, open(&up)).await {
                    Ok(opened) => opened,
                    Err(_) => Err(format!("member {member}'s stream did not open in {CONNECT_TIMEOUT:?}")),
                }
            }
        };
        let mut ws = match opened {
            Ok(ws) => ws,
            Err(why) => {
                if !down {
                    down = true;
                    tracing::debug!(member, reason = %why, "a member's event stream is down");
                    let mut e = notice("member_down", since.unwrap_or(0), Some(member));
                    e.reason = Some(format!("{why}; its events follow when it is back"));
                    if !queue.feed(&serde_json::to_string(&e).unwrap_or_default()).await {
                        return;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = queue.gone() => return,
                }
                retry = (retry * 2).min(LAST_RETRY);
                continue;
            }
        };
        if down {
            down = false;
            let mut e = notice("member_up", since.unwrap_or(0), Some(member));
            e.reason =
                Some(format!("member {member}'s events flow again, from after seq {}", since.unwrap_or(0)));
            if !queue.feed(&serde_json::to_string(&e).unwrap_or_default()).await {
                return;
            }
        }
        retry = FIRST_RETRY;
        loop {
            tokio::select! {
                from_member = ws.next() => match from_member {
                    Some(Ok(tungstenite::Message::Text(t))) => {
                        if let Some(seq) = seq_of(t.as_str()) {
                            since = Some(seq);
                        }
                        if !queue.feed(t.as_str()).await {
                            return;
                        }
                    }
                    Some(Ok(tungstenite::Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
                () = queue.gone() => {
                    let _ = ws.close(None).await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_member_gets_the_clients_query_with_its_own_since() {
        let h = axum::http::HeaderMap::new();
        let o = Others::new(Some("since=0,2:5&prefix=acct%2F&kinds=conflict"), &h, None);
        assert_eq!(o.query(Some(5)), "prefix=acct%2F&kinds=conflict&since=5");
        assert_eq!(o.query(None), "prefix=acct%2F&kinds=conflict");
        let o = Others::new(Some("since=3"), &h, None);
        assert_eq!(o.query(Some(3)), "since=3");
        assert_eq!(o.query(None), "");
        assert_eq!(Others::new(None, &h, None).query(Some(1)), "since=1");
    }

    #[test]
    fn a_members_message_gives_its_seq() {
        assert_eq!(seq_of(r#"{"seq":41,"kind":"commit","time":"x","node":2}"#), Some(41));
        assert_eq!(seq_of("not json"), None);
    }
}
