//! The HTTP face of a node: the axum router of the contract (`../shared/api-contract.md`).
//!
//! Handlers are thin: they read headers and bodies ([`request`]), call the [`Node`], and
//! turn results into JSON; every error becomes problem+json in [`error`]. One file per
//! group of routes: [`ptr`] and [`txn`].

pub mod auth;
pub mod error;
pub mod events;
pub mod events_merge;
mod events_relay;
pub mod gather;
pub mod gc;
pub mod leaders;
pub mod members;
pub mod observe;
pub mod openapi;
pub mod ptr;
pub mod request;
pub mod route;
pub mod txn;
pub mod ui;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Json, Router};
use restm_shared::Health;
use tower_http::trace::TraceLayer;

use crate::node::{Node, NodeConfig};
use error::ApiError;

/// State shared by every handler: one `Arc`, cloned for each request by axum.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// What [`AppState`] shares.
pub struct Shared {
    pub node: Arc<Node>,
    pub events: Arc<crate::events::EventHub>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub auth_token: Option<Arc<str>>,
    /// Hands requests on to the leader (see [`route`]).
    pub forwarder: reqwest::Client,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// This node's TLS (`--tls-cert`), for what it dials itself.
    pub tls: Option<Arc<crate::tls::Tls>>,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Builds the router of the contract over a node.
pub fn router(state: AppState, max_body: usize, ui_dir: Option<&std::path::Path>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/cluster", get(cluster_status))
        .route("/cluster/members", post(members::add))
        .route("/cluster/members/{id}", axum::routing::delete(members::remove))
        .route("/cluster/groups/{group}/leader", post(leaders::move_leader))
        .route("/events", get(events::events))
        .route("/metrics", get(observe::metrics))
        .route("/txns", get(observe::txns))
        .route("/locks", get(observe::locks))
        .route("/gc", get(gc::status))
        .route("/pins", get(gc::list_pins).post(gc::create_pin))
        .route("/pins/{id}", get(gc::get_pin).delete(gc::delete_pin))
        .route("/openapi.json", get(openapi::document))
        .route("/txn/begin", post(txn::begin))
        .route("/txn", post(txn::one_shot))
        .route("/txn/{id}", get(txn::status))
        .route("/txn/{id}/commit", post(txn::commit))
        .route("/txn/{id}/abort", post(txn::abort))
        .route("/ptr", get(ptr::list))
        .route("/ptr/{id}", get(ptr::get_ptr).put(ptr::put_ptr).delete(ptr::delete_ptr))
        .route("/ptr/{id}/history", get(ptr::history))
        .merge(ui::routes(ui_dir))
        .fallback(|| async { ApiError::RouteNotFound("no such route; see /openapi.json".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe::edge))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(TraceLayer::new_for_http().make_span_with({
            let state = state.clone();
            move |req: &axum::http::Request<axum::body::Body>| observe::request_span(&state, req)
        }))
        .with_state(state)
}

/// Liveness: `200` while the node serves.
#[utoipa::path(get, path = "/health", tag = "node", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
}

/// The members and the data group as this node sees them: leader, voters, term, log and
/// applied indexes, how far each follower trails, and each partition's closed timestamp.
#[utoipa::path(get, path = "/cluster", tag = "node",
    params(("X-reSTM-At" = Option<String>, Header, description = "who led each group at this moment (a version, an RFC 3339 instant or e.g. -10m)")),
    responses((status = 200, body = restm_shared::ClusterStatus),
        (status = 400, description = "a bad X-reSTM-At", body = restm_shared::Problem),
        (status = 410, description = "the moment is older than the GC horizon", body = restm_shared::Problem)))]
pub async fn cluster_status(
    axum::extract::State(state): axum::extract::State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Json<restm_shared::ClusterStatus>, error::ApiError> {
    let node = &state.node;
    let at = request::at_header(node, &headers)?;
    if let Some(at) = at {
        node.check_horizon(at)?;
    }
    let Some(c) = node.cluster() else {
        return Ok(Json(restm_shared::ClusterStatus {
            cluster: "restm".into(),
            node_id: 1,
            replicated: false,
            members: vec![restm_shared::MemberStatus {
                node_id: 1,
                peer_url: String::new(),
                state: "up".into(),
                last_contact_ms: Some(0),
            }],
            groups: vec![],
            timing: None,
            as_of: at,
            leader_changes: vec![],
        }));
    };
    let mut status = c.status_seen(node.now_millis()).await;
    let timeline = c.timeline();
    status.leader_changes = timeline
        .until(at.unwrap_or(u64::MAX), 100)
        .into_iter()
        .map(|ch| restm_shared::LeaderChange {
            group: ch.group,
            leader: ch.leader,
            term: ch.term,
            version: ch.version,
            time: request::version_time(ch.version),
            voters: ch.voters,
            learners: ch.learners,
        })
        .collect();
    if let Some(at) = at {
        let then = timeline.as_of(at);
        for g in &mut status.groups {
            let seen = then.iter().find(|ch| ch.group == g.group);
            g.leader = seen.and_then(|ch| ch.leader);
            g.term = seen.map_or(0, |ch| ch.term);
            if let Some(ch) = seen {
                g.voters = ch.voters.clone();
                g.learners = ch.learners.clone();
            }
        }
        status.as_of = Some(at);
    }
    Ok(Json(status))
}

/// What [`serve`] needs: the node's settings and the listener's. The CLI fills it.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: std::net::SocketAddr,
    pub node: NodeConfig,
    /// Bearer token every request must carry.
    pub auth_token: Option<String>,
    /// Listen on a non-loopback address without a token.
    pub insecure: bool,
    /// Events kept for subscribers resuming with `since`.
    pub event_buffer: usize,
    /// Events queued per subscriber before it is told it lagged.
    pub event_subscriber_buffer: usize,
    /// Largest request body in bytes.
    pub max_body: usize,
    /// Directory of the built explorer, served at `/ui/`.
    pub ui_dir: Option<std::path::PathBuf>,
    /// The cluster to join (`None`: a cluster of one, unreplicated).
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// With `cluster`: join a running one through this member (`--join`).
    pub join: Option<crate::cluster::membership::Join>,
    /// TLS on the client port (and the peer port), from these files.
    pub tls: Option<crate::tls::TlsFiles>,
}

/// Opens the node and serves until Ctrl-C or SIGTERM.
pub async fn serve(args: ServeConfig) -> Result<(), String> {
    if !args.listen.ip().is_loopback() && args.auth_token.is_none() && !args.insecure {
        return Err(format!(
            "refusing to listen on {} without --auth-token (or RESTM_AUTH_TOKEN): anyone who can reach it \
             could read and write every pointer. Pass --insecure to do it anyway.",
            args.listen
        ));
    }
    if args.auth_token.as_deref().is_some_and(str::is_empty) {
        return Err("--auth-token must not be empty".into());
    }
    let tls = match &args.tls {
        Some(files) => Some(crate::tls::Tls::load(files).map_err(|e| format!("cannot set up TLS: {e}"))?),
        None => None,
    };
    let mut cluster = args.cluster;
    if let Some(c) = cluster.as_mut() {
        c.tls = tls.clone();
    }
    let forwarder = route::forwarder(tls.as_deref());
    let data_dir = args.node.data_dir.clone();
    let fresh = std::fs::read_dir(&data_dir).map_or(true, |mut d| d.next().is_none());
    if let (Some(c), Some(_)) = (cluster.as_mut(), &args.join)
        && !fresh
    {
        // A restart: the data directory knows its groups and its members.
        c.groups = crate::cluster::GroupCount::Stored;
    }
    if let (Some(c), Some(join)) = (cluster.as_mut(), &args.join)
        && fresh
    {
        // The cluster's group count and name, before this node opens its replicas.
        let status = join.discover(&forwarder).await?;
        if status.cluster != c.name {
            return Err(format!(
                "{} is a member of cluster {:?}, not {:?} (--cluster-name)",
                join.url, status.cluster, c.name
            ));
        }
        c.groups = crate::cluster::GroupCount::Of((status.groups.len() as u32).max(1));
    }
    let durability = args.node.durability;
    let events = Arc::new(crate::events::EventHub::new(args.event_buffer, args.event_subscriber_buffer));
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let node = match cluster {
        None => Node::open(args.node, events.clone(), metrics.clone())
            .map_err(|e| format!("cannot open {}: {e}", data_dir.display()))?,
        Some(cluster) => {
            if matches!(cluster.groups, crate::cluster::GroupCount::Of(n) if n > 1) {
                // Every member coordinates, and numbers its own txns' events.
                events.number_as(cluster.node_id);
            }
            Node::open_cluster(args.node, events.clone(), metrics.clone(), cluster)
                .await
                .map_err(|e| format!("cannot join the cluster from {}: {e}", data_dir.display()))?
        }
    };
    if let Some(c) = node.cluster()
        && c.coordinates_anywhere()
    {
        events.number_as(c.node_id()); // again, for a count only the data directory knew
    }
    if let (Some(join), Some(c)) = (args.join, node.cluster()) {
        if c.voter_everywhere() {
            tracing::info!(node = c.node_id(), "a voter of every group already: --join has nothing to ask");
        } else {
            join.spawn_request(forwarder.clone(), c.node_id());
        }
    }
    events.place_in(node.partition_count());
    node.spawn_reaper();
    node.spawn_gc();
    let state = AppState::new(Shared {
        node,
        events,
        metrics,
        auth_token: args.auth_token.map(Arc::from),
        forwarder,
        max_body: args.max_body,
        tls: tls.clone(),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%local, ?durability, tls = tls.is_some(), "restm listening");
    println!("restm listening on {scheme}://{local}");
    match &args.ui_dir {
        Some(dir) if dir.join("index.html").is_file() => println!("explorer at {scheme}://{local}/ui/"),
        Some(dir) => tracing::warn!(dir = %dir.display(), "no index.html in --ui-dir; /ui/ will answer 404"),
        None => {}
    }
    let app = router(state, args.max_body, args.ui_dir.as_deref());
    if let Some(tls) = tls {
        let listener = crate::tls::TlsListener::spawn(listener, tls).map_err(|e| e.to_string())?;
        return axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(|e| e.to_string());
    }
    // Answers are small and clients wait for each one: send them without Nagle's delay.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.map_err(|e| e.to_string())
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
