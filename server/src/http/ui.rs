//! `/ui/`: the explorer's static files (index.html, the WASM and its JS glue), served from
//! the directory `--ui-dir` names. The node only serves them; `cargo xtask serve` builds
//! them. Without a directory, `/ui/` answers a problem that says how to build it.

use std::path::Path;

use axum::Router;
use axum::response::Redirect;
use axum::routing::get;
use tower_http::services::ServeDir;

use super::AppState;
use super::error::ApiError;

/// Routes of the explorer.
pub fn routes(dir: Option<&Path>) -> Router<AppState> {
    let router = Router::new().route("/ui", get(|| async { Redirect::permanent("/ui/") }));
    match dir {
        Some(dir) => router.nest_service(
            "/ui/",
            ServeDir::new(dir)
                .append_index_html_on_directories(true)
                .precompressed_gzip()
                .fallback(get(no_such_file)),
        ),
        None => router.route("/ui/", get(not_built)).route("/ui/{*rest}", get(not_built)),
    }
}

/// The explorer's page; its scripts and WASM live under `/ui/pkg/`.
#[utoipa::path(get, path = "/ui/", tag = "node",
    responses((status = 200, description = "the explorer's HTML page (open without a token)", content_type = "text/html"),
        (status = 404, description = "the node was started without --ui-dir", body = restm_shared::Problem)))]
#[allow(dead_code)] // Documents the route; ServeDir serves it.
pub async fn page() {}

async fn not_built() -> ApiError {
    ApiError::RouteNotFound(
        "the explorer is not here: build it with `cargo xtask serve` (or `cargo xtask ui`) and start \
         the node with --ui-dir target/ui"
            .into(),
    )
}

async fn no_such_file() -> ApiError {
    ApiError::RouteNotFound("no such file in the explorer; open /ui/".into())
}
