//! What the task engine stores: a [`Task`] per task, a [`Lease`] per running task, and what
//! a handler may answer ([`Outcome`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a task is in its life. `done` and `failed` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waits for its dependencies (or the subtasks it spawned) to finish.
    Waiting,
    /// May be claimed by a worker.
    Ready,
    /// A worker holds its lease and runs its handler.
    Running,
    Done,
    Failed,
}

impl Status {
    pub const ALL: [Status; 5] =
        [Status::Waiting, Status::Ready, Status::Running, Status::Done, Status::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Waiting => "waiting",
            Status::Ready => "ready",
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Status::Done | Status::Failed)
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown status {s:?}; one of waiting, ready, running, done, failed"))
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A task as stored in `<ns>/task/<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    /// The registered handler that runs it next (a continuation replaces it).
    pub handler: String,
    pub input: Value,
    pub status: Status,
    /// The task that spawned it, if one did.
    #[serde(default)]
    pub parent: Option<String>,
    /// Tasks whose results the handler receives, in this order, once all are done.
    #[serde(default)]
    pub deps: Vec<String>,
    /// How many of `deps` are not done yet.
    #[serde(default)]
    pub waiting_on: u32,
    /// Tasks to tell when this one finishes.
    #[serde(default)]
    pub dependents: Vec<String>,
    /// Subtasks it spawned, over all its phases.
    #[serde(default)]
    pub children: Vec<String>,
    #[serde(default)]
    pub result: Option<Value>,
    /// Why the last attempt failed (kept when a retry then succeeds).
    #[serde(default)]
    pub error: Option<String>,
    /// Attempts started, the current one included.
    pub attempts: u32,
    pub max_attempts: u32,
    /// Handler runs started, over all phases (attempts restart at 0 after a spawn).
    #[serde(default)]
    pub runs: u32,
    /// The worker running it now, or the last one that did.
    #[serde(default)]
    pub worker: Option<String>,
    /// Node time (Unix ms) of its creation and of its last change.
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// A running task's lease, in `<ns>/lease/<id>`: only its holder may record a result, and
/// only while it has not been reaped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub worker: String,
    /// Which run of the task it is ([`Task::runs`] when claimed).
    pub run: u32,
    /// Node time (Unix ms) after which any worker may take the task back.
    pub expires_ms: u64,
}

/// A task to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub handler: String,
    pub input: Value,
    /// Tasks that must be done first; their results reach the handler in this order.
    #[serde(default)]
    pub deps: Vec<String>,
    /// Attempts before it fails for good (at least 1; default 3).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

fn default_attempts() -> u32 {
    3
}

impl TaskSpec {
    pub fn new(handler: impl Into<String>, input: Value) -> Self {
        Self { handler: handler.into(), input, deps: Vec::new(), max_attempts: default_attempts() }
    }

    /// Runs only after `deps` are done, with their results.
    pub fn after(mut self, deps: impl IntoIterator<Item = String>) -> Self {
        self.deps.extend(deps);
        self
    }

    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
}

/// What a handler's run ends with.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The task's result; it is done.
    Done(Value),
    /// Run `children` first, then continue this same task with `then` (a handler and its
    /// input), which receives the children's results in order. This is how a task fans
    /// out and joins (map/reduce, divide and conquer).
    Spawn { children: Vec<TaskSpec>, then: (String, Value) },
}
