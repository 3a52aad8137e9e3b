//! Talking to the node: settings kept in the browser (auth token, Jaeger address), JSON
//! requests with the token and `X-reSTM-At`, and failures turned into one readable line.

use gloo_net::http::{Request, Response};
use leptos::prelude::*;
use restm_shared::{HEADER_AT, HEADER_VERSION, Problem};
use serde::de::DeserializeOwned;

const TOKEN_KEY: &str = "restm.token";
const JAEGER_KEY: &str = "restm.jaeger";
/// Where `docker/compose.yaml` puts Jaeger's UI.
pub const DEFAULT_JAEGER: &str = "http://localhost:16686";

/// Settings the user can change in the header; saved in `localStorage`.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub token: RwSignal<String>,
    pub jaeger: RwSignal<String>,
}

fn storage() -> Option<web_sys::Storage> {
    web_sys::window().and_then(|w| w.local_storage().ok().flatten())
}

impl Settings {
    pub fn load() -> Self {
        let get = |k: &str| storage().and_then(|s| s.get_item(k).ok().flatten());
        Self {
            token: RwSignal::new(get(TOKEN_KEY).unwrap_or_default()),
            jaeger: RwSignal::new(get(JAEGER_KEY).unwrap_or_else(|| DEFAULT_JAEGER.to_string())),
        }
    }

    pub fn save(&self) {
        if let Some(s) = storage() {
            let _ = s.set_item(TOKEN_KEY, &self.token.get_untracked());
            let _ = s.set_item(JAEGER_KEY, &self.jaeger.get_untracked());
        }
    }

    /// A link to a trace in Jaeger.
    pub fn trace_url(&self, trace_id: &str) -> String {
        format!("{}/trace/{trace_id}", self.jaeger.get().trim_end_matches('/'))
    }
}

/// The settings provided at the root.
pub fn settings() -> Settings {
    expect_context::<Settings>()
}

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    String::from(js_sys::encode_uri_component(s))
}

/// The node's address: the page's own origin, since the node serves the explorer.
pub fn origin() -> String {
    web_sys::window().and_then(|w| w.location().origin().ok()).unwrap_or_default()
}

async fn send(path: &str, at: Option<&str>, token: &str) -> Result<Response, String> {
    let url = format!("{}{path}", origin());
    let mut req = Request::get(&url);
    if !token.is_empty() {
        req = req.header("Authorization", &format!("Bearer {token}"));
    }
    if let Some(at) = at.map(str::trim).filter(|a| !a.is_empty()) {
        req = req.header(HEADER_AT, at);
    }
    req.send().await.map_err(|e| format!("cannot reach the node ({url}): {e}"))
}

/// A failed response as one line: the problem's title, detail and code when it has one.
async fn failure(resp: Response) -> String {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<Problem>(&text) {
        Ok(p) => {
            let hint = match p.code.as_str() {
                "unauthorized" | "forbidden" => " Set the node's token in the header.",
                _ => "",
            };
            format!("{status} {}: {} ({}).{hint}", p.title, p.detail, p.code)
        }
        Err(_) => format!("{status} {}", text.chars().take(200).collect::<String>()),
    }
}

/// `GET path` as JSON.
pub async fn get_json<T: DeserializeOwned>(path: &str, at: Option<&str>, token: &str) -> Result<T, String> {
    let resp = send(path, at, token).await?;
    if !resp.ok() {
        return Err(failure(resp).await);
    }
    let text = resp.text().await.map_err(|e| format!("reading the answer of {path}: {e}"))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("the answer of {path} is not what the contract says: {e}"))
}

/// `POST path` with `body` as JSON; the answer as JSON.
pub async fn post_json<B: serde::Serialize, T: DeserializeOwned>(
    path: &str,
    body: &B,
    token: &str,
) -> Result<T, String> {
    let url = format!("{}{path}", origin());
    let mut req = Request::post(&url);
    if !token.is_empty() {
        req = req.header("Authorization", &format!("Bearer {token}"));
    }
    let req = req.json(body).map_err(|e| format!("encoding the request to {path}: {e}"))?;
    let resp = req.send().await.map_err(|e| format!("cannot reach the node ({url}): {e}"))?;
    if !resp.ok() {
        return Err(failure(resp).await);
    }
    let text = resp.text().await.map_err(|e| format!("reading the answer of {path}: {e}"))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("the answer of {path} is not what the contract says: {e}"))
}

/// A pointer's value as of `at`: `Ok(None)` when absent there.
pub async fn read_ptr(ptr: &str, at: Option<&str>, token: &str) -> Result<Option<(u64, String)>, String> {
    let resp = send(&format!("/ptr/{}", enc(ptr)), at, token).await?;
    if resp.status() == 404 {
        let text = resp.text().await.unwrap_or_default();
        return match serde_json::from_str::<Problem>(&text) {
            Ok(p) if p.code == "not-found" => Ok(None),
            Ok(p) => Err(format!("404 {}: {} ({})", p.title, p.detail, p.code)),
            Err(_) => Err(format!("404 {text}")),
        };
    }
    if !resp.ok() {
        return Err(failure(resp).await);
    }
    let version = resp.headers().get(HEADER_VERSION).and_then(|v| v.parse().ok()).unwrap_or(0);
    let text = resp.text().await.map_err(|e| e.to_string())?;
    Ok(Some((version, text)))
}

/// State of something loaded from the node.
#[derive(Debug, Clone, PartialEq)]
pub enum Load<T> {
    Idle,
    Loading,
    Ready(T),
    Failed(String),
}

/// Polls `fetch` while `active`: at once when the view opens, and when a signal `track`
/// reads changes, then every second; one request at a time (a tick while one is out is
/// skipped). Answers what the last request loaded.
pub fn poll_every_second<T, Fut>(
    active: Signal<bool>,
    track: impl Fn() + 'static,
    fetch: impl Fn() -> Fut + Copy + 'static,
) -> RwSignal<Load<T>>
where
    T: Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<T, String>> + 'static,
{
    let state = RwSignal::new(Load::Idle);
    let busy = StoredValue::new(false);
    let poll = move || {
        if !active.get_untracked() || busy.get_value() {
            return;
        }
        busy.set_value(true);
        if state.with_untracked(|s| matches!(s, Load::Idle)) {
            state.set(Load::Loading);
        }
        let answer = fetch();
        leptos::task::spawn_local(async move {
            state.set(match answer.await {
                Ok(v) => Load::Ready(v),
                Err(e) => Load::Failed(e),
            });
            busy.set_value(false);
        });
    };
    Effect::new(move |_| {
        track();
        if active.get() {
            poll();
        }
    });
    let _ = set_interval_with_handle(poll, std::time::Duration::from_millis(1000));
    state
}
