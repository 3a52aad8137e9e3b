//! Client subcommands: thin wrappers over the HTTP contract that print what the node says.
//! Values go to stdout; a problem goes to stderr with its code, and the exit status is 1.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use restm_shared::{HEADER_AT, HEADER_TXN, HEADER_VERSION, Problem};

/// Characters left as they are in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Where the node is and how to reach it.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// Base URL of the node.
    #[arg(long, env = "RESTM_URL", default_value = "http://127.0.0.1:7070")]
    pub target: String,
    /// Bearer token.
    #[arg(long, env = "RESTM_AUTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Run inside this transaction.
    #[arg(long)]
    pub txn: Option<String>,
    /// PEM CA bundle to trust for an https:// node (for example its self-signed
    /// certificate), instead of the system's roots.
    #[arg(long, env = "RESTM_CA")]
    pub ca: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    pub ptr: String,
    /// Read as of a version, an RFC 3339 instant or a relative time (-10s).
    #[arg(long, allow_hyphen_values = true)]
    pub at: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Args)]
pub struct PutArgs {
    pub ptr: String,
    /// The JSON value.
    pub value: String,
    /// Only if the pointer is at this version.
    #[arg(long)]
    pub if_match: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Args)]
pub struct DelArgs {
    pub ptr: String,
    /// Only if the pointer is at this version.
    #[arg(long)]
    pub if_match: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    pub ptr: String,
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long)]
    pub after: Option<u64>,
    /// Only versions up to this moment.
    #[arg(long, allow_hyphen_values = true)]
    pub at: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

fn ptr_url(t: &Target, ptr: &str, suffix: &str) -> String {
    format!("{}/ptr/{}{}", t.target.trim_end_matches('/'), utf8_percent_encode(ptr, SEGMENT), suffix)
}

pub(crate) fn request(
    t: &Target,
    method: reqwest::Method,
    url: String,
) -> Result<reqwest::RequestBuilder, String> {
    let mut client = reqwest::Client::builder();
    if let Some(path) = &t.ca {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read --ca {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("--ca {}: not a PEM certificate bundle: {e}", path.display()))?;
        client = client.tls_certs_only(certs);
    }
    let client = client.build().map_err(|e| format!("cannot make an HTTP client: {e}"))?;
    let mut rb = client.request(method, url);
    if let Some(tok) = &t.token {
        rb = rb.bearer_auth(tok);
    }
    if let Some(txn) = &t.txn {
        rb = rb.header(HEADER_TXN, txn);
    }
    Ok(rb)
}

/// Why the node could not be reached: reqwest's own words say only which URL failed, its
/// causes say why (refused, a certificate not trusted, …).
pub(crate) fn unreachable(e: reqwest::Error) -> String {
    let mut why = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        why = format!("{why}: {s}");
        source = s.source();
    }
    format!("cannot reach the node: {why}")
}

async fn finish(resp: Result<reqwest::Response, reqwest::Error>) -> Result<(), String> {
    let resp = resp.map_err(unreachable)?;
    let status = resp.status();
    let version = resp.headers().get(HEADER_VERSION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        println!("{text}");
        if let Some(v) = version {
            eprintln!("version {v}");
        }
        Ok(())
    } else {
        Err(refusal(status, &text))
    }
}

/// What a node's non-success answer says: its problem's status, code and detail, or the
/// status and body when it is not a problem.
pub(crate) fn refusal(status: reqwest::StatusCode, text: &str) -> String {
    match serde_json::from_str::<Problem>(text) {
        Ok(p) => format!("{} {}: {}", p.status, p.code, p.detail),
        Err(_) => format!("{status}: {text}"),
    }
}

pub async fn get(a: GetArgs) -> Result<(), String> {
    let mut rb = request(&a.target, reqwest::Method::GET, ptr_url(&a.target, &a.ptr, ""))?;
    if let Some(at) = &a.at {
        rb = rb.header(HEADER_AT, at);
    }
    finish(rb.send().await).await
}

pub async fn put(a: PutArgs) -> Result<(), String> {
    serde_json::from_str::<serde::de::IgnoredAny>(&a.value)
        .map_err(|e| format!("the value is not JSON: {e}"))?;
    let mut rb = request(&a.target, reqwest::Method::PUT, ptr_url(&a.target, &a.ptr, ""))?
        .header("content-type", "application/json")
        .body(a.value);
    if let Some(m) = &a.if_match {
        rb = rb.header("if-match", m);
    }
    finish(rb.send().await).await
}

pub async fn del(a: DelArgs) -> Result<(), String> {
    let mut rb = request(&a.target, reqwest::Method::DELETE, ptr_url(&a.target, &a.ptr, ""))?;
    if let Some(m) = &a.if_match {
        rb = rb.header("if-match", m);
    }
    finish(rb.send().await).await
}

pub async fn history(a: HistoryArgs) -> Result<(), String> {
    let mut query = Vec::new();
    if let Some(l) = a.limit {
        query.push(format!("limit={l}"));
    }
    if let Some(af) = a.after {
        query.push(format!("after={af}"));
    }
    let suffix =
        if query.is_empty() { "/history".to_string() } else { format!("/history?{}", query.join("&")) };
    let mut rb = request(&a.target, reqwest::Method::GET, ptr_url(&a.target, &a.ptr, &suffix))?;
    if let Some(at) = &a.at {
        rb = rb.header(HEADER_AT, at);
    }
    finish(rb.send().await).await
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only events about pointers under this prefix.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Comma-separated kinds, e.g. conflict,lock_wait.
    #[arg(long)]
    pub kinds: Option<String>,
    /// Resume after this sequence number; where every member coordinates, per member:
    /// `1:120,2:88` (a bare number for every member not named).
    #[arg(long)]
    pub since: Option<restm_shared::Since>,
    #[command(flatten)]
    pub target: Target,
}

/// Prints one JSON event per line until the node closes the stream.
pub async fn events(a: EventsArgs) -> Result<(), String> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let mut query = Vec::new();
    if let Some(p) = &a.prefix {
        query.push(format!("prefix={}", utf8_percent_encode(p, SEGMENT)));
    }
    if let Some(k) = &a.kinds {
        query.push(format!("kinds={}", utf8_percent_encode(k, SEGMENT)));
    }
    if let Some(s) = a.since.as_ref().filter(|s| !s.is_empty()) {
        query.push(format!("since={s}"));
    }
    let base = a.target.target.trim_end_matches('/').replacen("http", "ws", 1);
    let url = format!("{base}/events?{}", query.join("&"));
    let mut request = url.as_str().into_client_request().map_err(|e| e.to_string())?;
    if let Some(tok) = &a.target.token {
        let v = format!("Bearer {tok}")
            .parse()
            .map_err(|_| "the token is not a valid header value".to_string())?;
        request.headers_mut().insert("authorization", v);
    }
    let connector = match request.uri().scheme_str() {
        Some("wss") => {
            Some(crate::tls::client_connector(a.target.ca.as_deref()).map_err(|e| format!("--ca: {e}"))?)
        }
        Some("ws") => None,
        _ => return Err(format!("--target {} is not an http:// or https:// URL", a.target.target)),
    };
    let mut ws = crate::tls::dial_ws(request, connector.as_ref())
        .await
        .map_err(|e| format!("cannot subscribe: {e}"))?;
    while let Some(msg) = ws.next().await {
        match msg.map_err(|e| e.to_string())? {
            Message::Text(t) => println!("{t}"),
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(())
}
