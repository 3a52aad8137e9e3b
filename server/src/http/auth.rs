//! Bearer-token authentication. When the node has a token, every route but `/health`
//! requires `Authorization: Bearer <token>`; the comparison takes constant time.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;

/// Middleware: refuses requests without the node's token.
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = state.auth_token.as_deref() else { return next.run(req).await };
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    match given {
        None => ApiError::Unauthorized.into_response(),
        Some(g) if bool::from(g.trim().as_bytes().ct_eq(token.as_bytes())) => next.run(req).await,
        Some(_) => ApiError::Forbidden.into_response(),
    }
}
