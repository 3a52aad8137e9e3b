//! What can go wrong talking to a node, typed so callers can match on it.

use restm_shared::Problem;

/// An SDK error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node answered with a problem (4xx/5xx).
    #[error("{} {}: {} ({})", problem.status, problem.title, problem.detail, problem.code)]
    Problem { problem: Box<Problem> },
    /// A transaction kept losing conflicts until the retry budget ran out; `last` names the
    /// pointer and the winner of the last one.
    #[error("gave up after {attempts} attempts in {elapsed_ms} ms; last conflict: {}", last.detail)]
    RetriesExhausted { attempts: u32, elapsed_ms: u64, last: Box<Problem> },
    /// The node could not be reached, or the answer was cut short.
    #[error("cannot reach the node: {0}")]
    Transport(#[from] reqwest::Error),
    /// The client was set up with something unusable (a CA bundle that is not PEM).
    #[error("client configuration: {0}")]
    Config(String),
    /// The node's answer is not what the contract says.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// A value could not be turned into JSON or back.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A collection's pointers break its own invariants (someone wrote them by hand).
    #[error("corrupt collection: {0}")]
    Invariant(String),
    /// The caller's own error, passed through a transaction closure.
    #[error("{0}")]
    User(String),
}

impl Error {
    /// The problem the node answered with, if it did.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Problem { problem } | Error::RetriesExhausted { last: problem, .. } => Some(problem),
            _ => None,
        }
    }

    /// Whether running the whole transaction again may succeed: a conflict, a lock
    /// timeout, a transaction the node aborted (its lease ran out), or a node refusing new
    /// transactions under memory pressure.
    pub fn is_retryable(&self) -> bool {
        use restm_shared::codes::{CONFLICT, LOCK_TIMEOUT, OVERLOADED, TXN_ABORTED};
        match self {
            Error::Problem { problem } => {
                matches!(problem.code.as_str(), CONFLICT | LOCK_TIMEOUT | TXN_ABORTED | OVERLOADED)
            }
            _ => false,
        }
    }
}
