//! The one place where errors become HTTP answers: every 4xx/5xx is an RFC 9457
//! `application/problem+json` body with a documented `code`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use restm_shared::{HEADER_HORIZON, PROBLEM_JSON, Problem, codes};

use crate::cluster::balance::MoveError;
use crate::cluster::membership::MembershipError;
use crate::engine::EngineError;

/// Every error a handler can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    RouteNotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("pointer {ptr:?} has no live value at that snapshot")]
    PointerNotFound { ptr: String },
    #[error("If-Match wanted version {expected}, but pointer {ptr:?} is at {actual:?}")]
    PreconditionFailed { ptr: String, expected: String, actual: Option<u64> },
    #[error("this node requires a bearer token (Authorization: Bearer <token>)")]
    Unauthorized,
    #[error("the bearer token is not valid for this node")]
    Forbidden,
    /// The partitions' leader cannot be reached from this node, or none is elected.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Membership(#[from] crate::cluster::membership::MembershipError),
    #[error(transparent)]
    Move(#[from] MoveError),
    /// A membership change asked of a node of its own.
    #[error(
        "this node is not a cluster member (it runs without --node-id, --peer-listen and --initial-cluster)"
    )]
    NotAClusterMember,
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::BadRequest(detail.into())
    }

    /// The problem document describing this error.
    pub fn problem(&self) -> Problem {
        let (status, code, title) = self.classify();
        let mut p = Problem {
            type_uri: format!("urn:restm:problem:{code}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: self.to_string(),
            code: code.to_string(),
            ..Default::default()
        };
        match self {
            ApiError::Engine(e) => match e {
                EngineError::Conflict { txn, conflict } => {
                    p.txn = Some(txn.to_string());
                    p.pointer = Some(conflict.ptr().to_string());
                    p.holder_txn = conflict.holder().map(|h| h.to_string());
                    p.winner_txn = conflict.winner().map(|(w, _)| w.to_string());
                    p.winner_version = conflict.winner().map(|(_, v)| v);
                }
                EngineError::LockTimeout { txn, ptr, holder } => {
                    p.txn = Some(txn.to_string());
                    p.pointer = Some(ptr.to_string());
                    p.holder_txn = Some(holder.to_string());
                }
                EngineError::CheckFailed { txn, ptr, actual, actual_txn, .. } => {
                    p.txn = Some(txn.to_string());
                    p.pointer = Some(ptr.to_string());
                    p.winner_version = *actual;
                    p.winner_txn = actual_txn.as_ref().map(|t| t.to_string());
                }
                EngineError::TxnAborted { txn, .. }
                | EngineError::TxnCommitting { txn }
                | EngineError::ReadOnly(txn) => p.txn = Some(txn.to_string()),
                EngineError::TxnCommitted { txn, version } => {
                    p.txn = Some(txn.to_string());
                    p.commit_version = Some(*version);
                }
                EngineError::TxnNotFound(txn) => p.txn = Some(txn.clone()),
                EngineError::NotFound { ptr } => p.pointer = Some(ptr.to_string()),
                EngineError::Gone { horizon, .. } => p.horizon = Some(*horizon),
                EngineError::PreparedWaitTimeout { ptr, holder, .. } => {
                    p.pointer = Some(ptr.to_string());
                    p.holder_txn = Some(holder.to_string());
                }
                EngineError::OutcomeUnknown { txn, commit_version, .. } => {
                    p.txn = Some(txn.to_string());
                    p.commit_version = Some(*commit_version);
                }
                EngineError::FutureVersion { .. }
                | EngineError::WritesFenced { .. }
                | EngineError::Storage(_)
                | EngineError::PinNotFound(_)
                | EngineError::NotLeader { .. }
                | EngineError::Unreplicated { .. }
                | EngineError::Overloaded => {}
            },
            ApiError::PointerNotFound { ptr } | ApiError::PreconditionFailed { ptr, .. } => {
                p.pointer = Some(ptr.clone())
            }
            ApiError::Membership(MembershipError::WouldLoseMajority { partitions, .. }) => {
                p.partitions = Some(partitions.clone())
            }
            _ => {}
        }
        p
    }

    fn classify(&self) -> (StatusCode, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            ApiError::Engine(e) => match e {
                EngineError::TxnNotFound(_) => (S::NOT_FOUND, codes::TXN_NOT_FOUND, "Transaction not found"),
                EngineError::TxnAborted { .. } => (S::CONFLICT, codes::TXN_ABORTED, "Transaction aborted"),
                EngineError::TxnCommitted { .. } | EngineError::TxnCommitting { .. } => {
                    (S::CONFLICT, codes::TXN_COMMITTED, "Transaction already committed")
                }
                EngineError::ReadOnly(_) => (S::BAD_REQUEST, codes::READ_ONLY, "Transaction is read-only"),
                EngineError::Conflict { .. } | EngineError::CheckFailed { .. } => {
                    (S::CONFLICT, codes::CONFLICT, "Transaction conflict")
                }
                EngineError::LockTimeout { .. } => (S::CONFLICT, codes::LOCK_TIMEOUT, "Lock wait timed out"),
                EngineError::NotFound { .. } => (S::NOT_FOUND, codes::NOT_FOUND, "Pointer not found"),
                EngineError::FutureVersion { .. } => {
                    (S::BAD_REQUEST, codes::BAD_REQUEST, "Version in the future")
                }
                EngineError::Storage(_) => (S::SERVICE_UNAVAILABLE, codes::INTERNAL, "Storage failure"),
                EngineError::PreparedWaitTimeout { .. } => {
                    (S::SERVICE_UNAVAILABLE, codes::UNAVAILABLE, "A prepared commit did not land in time")
                }
                EngineError::WritesFenced { .. } => {
                    (S::SERVICE_UNAVAILABLE, codes::UNAVAILABLE, "The node takes no writes")
                }
                EngineError::OutcomeUnknown { .. } => {
                    (S::SERVICE_UNAVAILABLE, codes::OUTCOME_UNKNOWN, "Commit outcome unknown")
                }
                EngineError::Gone { .. } => (S::GONE, codes::GONE, "Older than the GC horizon"),
                EngineError::PinNotFound(_) => (S::NOT_FOUND, codes::NOT_FOUND, "Pin not found"),
                EngineError::Overloaded => {
                    (S::SERVICE_UNAVAILABLE, codes::OVERLOADED, "Memory pressure is critical")
                }
                EngineError::NotLeader { .. } => {
                    (S::SERVICE_UNAVAILABLE, codes::UNAVAILABLE, "Not the partitions' leader")
                }
                EngineError::Unreplicated { .. } => {
                    (S::SERVICE_UNAVAILABLE, codes::UNAVAILABLE, "Not replicated")
                }
            },
            ApiError::Unavailable(_) => {
                (S::SERVICE_UNAVAILABLE, codes::UNAVAILABLE, "Partitions unavailable")
            }
            ApiError::BadRequest(_) => (S::BAD_REQUEST, codes::BAD_REQUEST, "Bad request"),
            ApiError::TooLarge(_) => (S::PAYLOAD_TOO_LARGE, codes::TOO_LARGE, "Request body too large"),
            ApiError::RouteNotFound(_) => (S::NOT_FOUND, codes::NOT_FOUND, "No such route"),
            ApiError::MethodNotAllowed => {
                (S::METHOD_NOT_ALLOWED, codes::METHOD_NOT_ALLOWED, "Method not allowed")
            }
            ApiError::PointerNotFound { .. } => (S::NOT_FOUND, codes::NOT_FOUND, "Pointer not found"),
            ApiError::PreconditionFailed { .. } => {
                (S::PRECONDITION_FAILED, codes::PRECONDITION_FAILED, "Precondition failed")
            }
            ApiError::Unauthorized => (S::UNAUTHORIZED, codes::UNAUTHORIZED, "Unauthorized"),
            ApiError::NotAClusterMember => (S::CONFLICT, codes::NOT_A_CLUSTER, "Not a cluster member"),
            ApiError::Membership(m) => match m {
                MembershipError::Invalid(_) => (S::BAD_REQUEST, codes::BAD_REQUEST, "Bad membership change"),
                MembershipError::Exists { .. } => (S::CONFLICT, codes::MEMBER_EXISTS, "A member already"),
                MembershipError::NotAMember(_) => (S::NOT_FOUND, codes::NOT_FOUND, "Not a member"),
                MembershipError::WouldLoseMajority { .. } => {
                    (S::CONFLICT, codes::WOULD_LOSE_MAJORITY, "The removal would lose a majority")
                }
                MembershipError::Unavailable { .. } => {
                    (S::SERVICE_UNAVAILABLE, codes::UNAVAILABLE, "The membership change could not be made")
                }
            },
            ApiError::Move(m) => match m {
                MoveError::NoGroup { .. } => (S::NOT_FOUND, codes::NOT_FOUND, "No such group"),
                MoveError::NotAVoter { .. } => {
                    (S::BAD_REQUEST, codes::BAD_REQUEST, "Not a voter of the group")
                }
                MoveError::Unavailable { .. } => {
                    (S::SERVICE_UNAVAILABLE, codes::UNAVAILABLE, "The lead was not moved")
                }
            },
            ApiError::Forbidden => (S::FORBIDDEN, codes::FORBIDDEN, "Forbidden"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if matches!(self, ApiError::Engine(EngineError::Overloaded)) {
            tracing::warn!(code = %problem.code, "refused: memory pressure is critical");
        } else if status.is_server_error() {
            tracing::error!(code = %problem.code, detail = %problem.detail, "request failed");
        } else {
            tracing::debug!(code = %problem.code, detail = %problem.detail, "request refused");
        }
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut resp = (status, [(header::CONTENT_TYPE, PROBLEM_JSON)], body).into_response();
        if let Some(h) = problem.horizon
            && let Ok(v) = HeaderValue::from_str(&h.to_string())
        {
            resp.headers_mut().insert(HEADER_HORIZON, v);
        }
        if matches!(
            self,
            ApiError::Engine(
                EngineError::Overloaded
                    | EngineError::PreparedWaitTimeout { .. }
                    | EngineError::WritesFenced { .. }
                    | EngineError::NotLeader { .. }
            ) | ApiError::Unavailable(_)
                | ApiError::Membership(MembershipError::Unavailable { .. })
                | ApiError::Move(MoveError::Unavailable { .. })
        ) {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(r: axum::extract::rejection::BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!("the body is larger than this node's limit: {}", r.body_text()))
        } else {
            ApiError::BadRequest(format!("cannot read the body: {}", r.body_text()))
        }
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(r: axum::extract::rejection::PathRejection) -> Self {
        ApiError::BadRequest(format!("bad path: {}", r.body_text()))
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadRequest(format!("bad query string: {}", r.body_text()))
    }
}
