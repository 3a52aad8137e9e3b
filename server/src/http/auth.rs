//! Bearer-token authentication. When the node has a token, every route but `/health` and
//! the explorer's static files (`/ui/`) requires `Authorization: Bearer <token>`; the
//! comparison takes constant time. Browsers cannot set headers on a WebSocket, so
//! `/events` also takes the token as the subprotocol `restm.bearer.<token>`.

use axum::extract::Request;
use axum::http::header;
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;

/// Refuses a request without the node's token (see [`super::observe::edge`], which runs
/// this for every request).
pub fn check(state: &AppState, req: &Request) -> Result<(), ApiError> {
    let Some(token) = state.auth_token.as_deref() else { return Ok(()) };
    let path = req.uri().path();
    if path == "/health" || path == "/ui" || path.starts_with("/ui/") {
        return Ok(());
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .or_else(|| if path == "/events" { websocket_token(req) } else { None });
    match given {
        None => Err(ApiError::Unauthorized),
        Some(g) if bool::from(g.trim().as_bytes().ct_eq(token.as_bytes())) => Ok(()),
        Some(_) => Err(ApiError::Forbidden),
    }
}

/// The subprotocol that carries a token on a browser's WebSocket.
pub const WS_TOKEN_PROTOCOL: &str = "restm.bearer.";

/// The token offered as a `restm.bearer.<token>` WebSocket subprotocol, if any.
pub fn websocket_token(req: &Request) -> Option<&str> {
    websocket_token_protocol(req.headers()).map(|p| &p[WS_TOKEN_PROTOCOL.len()..])
}

/// The whole `restm.bearer.<token>` subprotocol offered, if any.
pub fn websocket_token_protocol(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| p.starts_with(WS_TOKEN_PROTOCOL))
}
