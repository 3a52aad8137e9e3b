//! reSTM: a distributed software transactional memory served over HTTP.
//!
//! The crate is layered so that the transactional core can be tested without a network:
//! - [`cli`]: the `restm` command line (serve, and client subcommands).
//! - [`http`]: the axum routes of the HTTP contract, a thin room around the node.

pub mod cli;
pub mod cluster;
pub mod engine;
pub mod events;
pub mod every;
pub mod http;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod storage;
pub mod telemetry;
pub mod tls;
