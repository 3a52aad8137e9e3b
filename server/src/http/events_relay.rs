//! `GET /events` on a member that does not lead: the leader's stream, relayed.
//!
//! The leader coordinates every transaction, so its events (begins, reads, writes, locks,
//! conflicts naming the winner, commits) are the cluster's. A member that does not lead
//! opens the same subscription on the leader (the query as the client sent it, the client's
//! credentials, marked forwarded) and relays every message. The numbering is the leader's.
//! When the lead moves the relay closes with code 1012 (service restart) and says so, so
//! the client reconnects, to any member, and resumes with `since`: a new leader that never
//! numbered that far answers with a `lagged` event first.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::route::HEADER_FORWARDED;
use crate::cluster::Cluster;

/// Longest opening the leader's stream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the relay needs of the client's request.
pub struct Upstream {
    /// `ws://` or `wss://` URL of the leader's `/events`, with the client's query.
    pub url: String,
    /// The client's `Authorization` and `Sec-WebSocket-Protocol`, passed on as they are.
    pub headers: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
    pub me: u64,
    pub tls: Option<Arc<crate::tls::Tls>>,
}

impl Upstream {
    /// The leader's `/events` for a client whose request was `query` with `headers`.
    pub fn new(
        leader_url: &str,
        query: Option<&str>,
        headers: &axum::http::HeaderMap,
        me: u64,
        tls: Option<Arc<crate::tls::Tls>>,
    ) -> Self {
        let base = leader_url.trim_end_matches('/');
        let base = match base.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}"),
            None => format!("ws://{}", base.trim_start_matches("http://")),
        };
        let url = match query {
            Some(q) if !q.is_empty() => format!("{base}/events?{q}"),
            _ => format!("{base}/events"),
        };
        let headers = [axum::http::header::AUTHORIZATION, axum::http::header::SEC_WEBSOCKET_PROTOCOL]
            .into_iter()
            .filter_map(|name| headers.get(&name).map(|v| (name, v.clone())))
            .collect();
        Self { url, headers, me, tls }
    }
}

type Leader = crate::tls::WsStream;

/// Opens the leader's stream.
pub(super) async fn open(up: &Upstream) -> Result<Leader, String> {
    let mut request = up.url.as_str().into_client_request().map_err(|e| e.to_string())?;
    for (name, value) in &up.headers {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    request.headers_mut().insert(HEADER_FORWARDED, axum::http::HeaderValue::from(up.me));
    let connector = up.tls.as_ref().map(|tls| &tls.connector);
    crate::tls::dial_ws(request, connector).await.map_err(|e| format!("the leader's stream: {e}"))
}

/// Relays the leader's stream to `socket` until either side ends or the lead moves.
pub async fn relay(mut socket: WebSocket, up: Upstream, cluster: Arc<Cluster>) {
    let leader = cluster.leader();
    let mut leader_ws = match tokio::time::timeout(CONNECT_TIMEOUT, open(&up)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            return close(socket, &format!("cannot open the leader's stream ({e}); reconnect")).await;
        }
        Err(_) => return close(socket, "the leader's stream did not open in time; reconnect").await,
    };
    let mut watch = cluster.watch();
    let why = loop {
        tokio::select! {
            from_leader = leader_ws.next() => match from_leader {
                Some(Ok(tungstenite::Message::Text(t))) => {
                    if socket.send(Message::Text(t.as_str().into())).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(tungstenite::Message::Close(_))) | None | Some(Err(_)) => {
                    break Some("the leader's stream ended (the lead may have moved); reconnect, with since");
                }
                Some(Ok(_)) => {}
            },
            from_client = socket.recv() => match from_client {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break None,
                Some(Ok(_)) => {}
            },
            changed = watch.changed() => {
                if changed.is_err() || watch.borrow_and_update().current_leader != leader {
                    break Some("the lead moved; reconnect, with since, for the new leader's stream");
                }
            }
        }
    };
    let _ = leader_ws.close(None).await;
    if let Some(why) = why {
        close(socket, why).await;
    }
}

/// Ends `socket` with 1012 (service restart): the client should reconnect.
async fn close(mut socket: WebSocket, why: &str) {
    tracing::debug!(reason = why, "closing a relayed event stream");
    // A close frame's reason is at most 123 bytes.
    let mut end = why.len().min(123);
    while !why.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame { code: 1012, reason: why[..end].into() };
    let _ = socket.send(Message::Close(Some(frame))).await;
}
