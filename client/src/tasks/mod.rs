//! The distributed task engine: tasks, their graph and their leases live in ordinary
//! pointers, and any number of [`Worker`]s (in any processes) claim and run them
//! transactionally.
//!
//! Layout under a namespace `ns` (e.g. `tasks`):
//! - `ns/task/<id>`: the [`Task`]: handler, input, status, dependencies and dependents,
//!   result or error, attempts, the last worker. Its history is the task's history, so the
//!   explorer's time travel replays a graph.
//! - `ns/lease/<id>`: the [`Lease`] of a running task: worker, run number, expiry in node
//!   time (the node's clock, from the transaction's read version, so workers' clocks do not
//!   matter). Renewals write only this pointer.
//! - `ns/status/<status>/<id>`: an index marker per task in its current status, so work
//!   and views find tasks by status with one prefix listing.
//!
//! Life of a task: `waiting` (for dependencies) → `ready` → `running` (claimed under a
//! lease) → `done` with a result, or back to `ready` after an error while attempts remain,
//! or `failed` (which fails its dependents). A handler may answer [`Outcome::Spawn`]: the
//! subtasks are created and the task waits for them, then runs again with a continuation
//! handler that receives their results, which gives map/reduce and divide-and-conquer
//! graphs.
//!
//! Guarantees: every state change is one serializable transaction, so a ready task is
//! claimed by one worker at a time, and an outcome is recorded only by the holder of the
//! current lease: a result is recorded exactly once. A worker that dies stops renewing; any
//! worker's reaper takes the task back once the lease expires by node time and it runs
//! again (with a higher run number). Handlers are therefore run at least once and may run
//! more than once: write side outputs under names that include [`TaskCtx::run`] and
//! publish them through the result.

pub mod mergesort;
mod model;
mod store;
mod worker;

pub use model::{Lease, Outcome, Status, Task, TaskSpec};
pub use store::{Claim, Tasks};
pub use worker::{TaskCtx, Worker, WorkerStats};
