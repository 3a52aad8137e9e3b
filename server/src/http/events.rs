//! `GET /events`: the live event stream over WebSocket, filtered by `prefix` and `kinds`,
//! resumable with `since`. A subscriber that falls behind gets `lagged` with the count it
//! missed; the engine never waits for it. On a cluster of one group, a member that does not
//! lead relays the leader's stream ([`super::events_relay`]); where every member coordinates,
//! any member serves every member's stream merged ([`super::events_merge`]).

use std::collections::HashSet;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures_util::SinkExt;
use restm_shared::{Event, Problem, Since};
use serde::Deserialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::AppState;
use super::error::ApiError;
use crate::engine::events::EventKind;
use crate::events::Numbered;

/// Most events written to a subscriber before one flush.
const SEND_BATCH: usize = 256;

/// Query of `GET /events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events about pointers whose id starts with this (events without a pointer, such
    /// as `begin` and `commit`, are left out when a prefix is given).
    pub prefix: Option<String>,
    /// Comma-separated kinds to keep, e.g. `conflict,lock_wait`.
    pub kinds: Option<String>,
    /// Resume after this sequence number, while it is still buffered. Where every member
    /// coordinates (`--groups` above 1), each event names the member that numbered it
    /// (`node`) and the stream resumes per member: `since=1:120,2:88`, with an optional bare
    /// number for every member not named (`since=0` replays all that is buffered).
    pub since: Option<String>,
}

pub(super) struct Filter {
    prefix: Option<String>,
    kinds: Option<HashSet<EventKind>>,
}

impl Filter {
    fn keeps(&self, e: &Numbered) -> bool {
        if let Some(k) = &self.kinds
            && !k.contains(&e.event.kind)
        {
            return false;
        }
        match &self.prefix {
            None => true,
            Some(p) => e.event.ptr.as_ref().is_some_and(|ptr| ptr.starts_with(p.as_str())),
        }
    }
}

/// Streams engine events as JSON text messages. On a cluster of one group, a member that
/// does not lead relays the leader's stream (the leader's numbering), and closes it with
/// code 1012 when the lead moves: reconnect, with `since`. Where every member coordinates,
/// every member's events come merged, each naming its member, and `since` is per member.
#[utoipa::path(get, path = "/events", tag = "observability", params(EventsQuery),
    responses((status = 101, description = "WebSocket: one JSON Event per text message", body = Event),
        (status = 400, description = "unknown kind or bad query", body = Problem),
        (status = 503, description = "a cluster member that does not lead and finds no leader to relay", body = Problem)))]
pub async fn events(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let since = match q.since.as_deref() {
        None => Since::default(),
        Some(s) => s.parse::<Since>().map_err(|e| ApiError::bad_request(e.0))?,
    };
    let kinds = match &q.kinds {
        None => None,
        Some(list) => {
            let mut set = HashSet::new();
            for k in list.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                let kind = EventKind::parse(k).ok_or_else(|| {
                    let all: Vec<_> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                    ApiError::bad_request(format!("unknown event kind {k:?}; kinds are {}", all.join(", ")))
                })?;
                set.insert(kind);
            }
            Some(set)
        }
    };
    let ws = ws.map_err(|r| {
        ApiError::bad_request(format!(
            "GET /events is a WebSocket; connect with a WebSocket client ({})",
            r.body_text()
        ))
    })?;
    // A browser that sent its token as a subprotocol must see it chosen, or it drops the socket.
    let ws = match super::auth::websocket_token_protocol(&headers) {
        Some(p) => ws.protocols([p.to_string()]),
        None => ws,
    };
    // On a cluster the leader's events are the cluster's: a member that does not lead
    // relays its stream (and one handed on to it after the lead moved says so).
    if let Some(cluster) =
        state.node.cluster().filter(|c| !c.is_leader() && !c.coordinates_anywhere()).cloned()
    {
        let (_, url) = super::route::hand_on_to(&cluster, &headers).await?;
        let up = super::events_relay::Upstream::new(
            &url,
            uri.query(),
            &headers,
            cluster.node_id(),
            state.tls.clone(),
        );
        return Ok(ws.on_upgrade(move |socket| super::events_relay::relay(socket, up, cluster)));
    }
    let filter = Filter { prefix: q.prefix.filter(|p| !p.is_empty()), kinds };
    let hub = state.events.clone();
    if let Some(cluster) = state.node.cluster().filter(|_| super::gather::gathers(&state, &headers)).cloned()
    {
        let others = super::events_merge::Others::new(uri.query(), &headers, state.tls.clone());
        return Ok(ws.on_upgrade(move |socket| {
            super::events_merge::merged(socket, hub, filter, since, others, cluster)
        }));
    }
    let since = since.for_member(hub.node());
    Ok(ws.on_upgrade(move |mut socket| async move { stream(&mut socket, hub, filter, since).await }))
}

/// Where a subscription's messages go: the client's socket, or a merged stream's queue.
pub(super) trait Out {
    /// Queues one message; false when the receiver is gone.
    async fn feed(&mut self, text: &str) -> bool;
    /// Writes what is queued; false when the receiver is gone.
    async fn flush(&mut self) -> bool;
    /// Resolves when the receiver is gone.
    async fn gone(&mut self);
}

impl Out for WebSocket {
    async fn feed(&mut self, text: &str) -> bool {
        SinkExt::feed(self, Message::Text(text.into())).await.is_ok()
    }

    async fn flush(&mut self) -> bool {
        SinkExt::flush(self).await.is_ok()
    }

    async fn gone(&mut self) {
        loop {
            match self.recv().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    }
}

async fn send_text<O: Out>(out: &mut O, text: &str) -> bool {
    out.feed(text).await && out.flush().await
}

async fn send<O: Out>(out: &mut O, event: &Event) -> bool {
    match serde_json::to_string(event) {
        Ok(text) => send_text(out, &text).await,
        Err(_) => false,
    }
}

/// A stream-level event (`lagged`, and a merged stream's `member_down` and `member_up`)
/// stamped now.
pub(super) fn notice(kind: &str, seq: u64, node: Option<u64>) -> Event {
    Event {
        seq,
        kind: kind.into(),
        time: super::request::version_time_ms(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        ),
        node,
        ..Default::default()
    }
}

fn lagged(seq: u64, missed: u64, node: Option<u64>) -> Event {
    Event { missed: Some(missed), ..notice("lagged", seq, node) }
}

/// Serves `hub`'s events after `since` that `filter` keeps to `out`, until `out` is gone.
pub(super) async fn stream<O: Out>(
    out: &mut O,
    hub: std::sync::Arc<crate::events::EventHub>,
    filter: Filter,
    since: Option<u64>,
) {
    use std::sync::atomic::Ordering;
    hub.subscribers.fetch_add(1, Ordering::Relaxed);
    let node = hub.node();
    let sub = hub.subscribe(since);
    let mut live = sub.live;
    let mut ok = true;
    if sub.reset {
        // The subscriber resumes from a previous life of the node: whatever happened
        // between its last event and the restart is unknown, so say so, then start over.
        let mut e = lagged(0, sub.missed, node);
        e.reason = Some(format!(
            "since={} is ahead of this node's events: it restarted, or (on a cluster) the lead moved \
             to it, and its numbering is its own",
            since.unwrap_or(0)
        ));
        ok = send(out, &e).await;
    } else if sub.missed > 0 {
        let first = sub.backlog.first().map_or(hub.next_seq(), |e| e.seq);
        hub.lagged.fetch_add(sub.missed, Ordering::Relaxed);
        ok = send(out, &lagged(first - 1, sub.missed, node)).await;
    }
    let mut last = if sub.reset { 0 } else { since.unwrap_or(0) };
    for e in sub.backlog {
        if !ok {
            break;
        }
        last = e.seq;
        if filter.keeps(&e) {
            ok = send_text(out, &e.json()).await;
        }
    }
    // Live: wake on one event, then take whatever else is queued (up to a batch) and write
    // the batch with one flush, so a busy stream costs one wake-up and one write per batch.
    let mut pending_missed = 0u64;
    'live: while ok {
        let first = tokio::select! {
            received = live.recv() => received,
            () = out.gone() => break,
        };
        let mut next = Some(first);
        let mut queued = 0usize;
        while let Some(received) = next.take() {
            match received {
                Ok(e) if e.seq > last => {
                    last = e.seq;
                    if pending_missed > 0 {
                        let text = serde_json::to_string(&lagged(e.seq - 1, pending_missed, node))
                            .unwrap_or_default();
                        ok = out.feed(&text).await;
                        pending_missed = 0;
                        queued += 1;
                    }
                    if ok && filter.keeps(&e) {
                        ok = out.feed(&e.json()).await;
                        queued += 1;
                    }
                }
                Ok(_) => {} // already sent from the backlog
                Err(RecvError::Lagged(n)) => {
                    hub.lagged.fetch_add(n, Ordering::Relaxed);
                    pending_missed += n;
                }
                Err(RecvError::Closed) => break 'live,
            }
            if !ok {
                break 'live;
            }
            if queued < SEND_BATCH {
                next = match live.try_recv() {
                    Ok(e) => Some(Ok(e)),
                    Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                    Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
                    Err(TryRecvError::Empty) => None,
                };
            }
        }
        if queued > 0 {
            ok = out.flush().await;
        }
    }
    hub.subscribers.fetch_sub(1, Ordering::Relaxed);
}
