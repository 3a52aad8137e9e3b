//! Wire types of the reSTM HTTP contract (`../shared/api-contract.md`).
//!
//! Everything a client, the browser UI or the server puts on the wire is defined here once,
//! so the three can never disagree about a field name. The crate has no I/O and compiles to
//! `wasm32-unknown-unknown`. With the `openapi` feature each type also derives its OpenAPI
//! schema, which the server collects into `/openapi.json`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Header naming the transaction a pointer operation runs in.
pub const HEADER_TXN: &str = "x-restm-txn";
/// Header asking for a read as of a past moment: a version, an RFC 3339 instant or `-10s`.
pub const HEADER_AT: &str = "x-restm-at";
/// Header making a read inside a transaction a locking read: `update` takes the pointer's
/// write lock first (like `SELECT ... FOR UPDATE`) and reads its newest version.
pub const HEADER_LOCK: &str = "x-restm-lock";
/// Header carrying the version a read returned or a write committed.
pub const HEADER_VERSION: &str = "x-restm-version";
/// Header carrying the oldest readable version on `410 Gone`.
pub const HEADER_HORIZON: &str = "x-restm-horizon";
/// Media type of every error body (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Body of `POST /txn/begin`; every field is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BeginRequest {
    /// Lease of the transaction in milliseconds, renewed by every request on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// A read-only transaction reads one snapshot and never takes a lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// Answer of `POST /txn/begin`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BeginResponse {
    pub txn: String,
    pub read_version: u64,
}

/// Answer of a `PUT`/`DELETE` outside a transaction: the version it committed at.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WriteResponse {
    pub version: u64,
}

/// Answer of a `PUT`/`DELETE` inside a transaction: the write is staged and its lock held.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StagedResponse {
    pub txn: String,
    pub ptr: String,
    pub staged: bool,
}

/// Answer of `POST /txn/{id}/commit` and of the one-shot `POST /txn`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitResponse {
    pub commit_version: u64,
}

/// Answer of `POST /txn/{id}/abort`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AbortResponse {
    pub txn: String,
    pub state: TxnState,
}

/// Life-cycle state of a transaction.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TxnState {
    Active,
    Committed,
    Aborted,
}

/// One entry of a transaction's read set: the pointer and the version it saw
/// (`null` when the pointer was absent at the snapshot).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadEntry {
    pub ptr: String,
    pub version: Option<u64>,
}

/// One entry of a transaction's write set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WriteEntry {
    pub ptr: String,
    pub delete: bool,
}

/// Answer of `GET /txn/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TxnStatus {
    pub txn: String,
    pub state: TxnState,
    pub read_only: bool,
    pub read_version: u64,
    pub reads: Vec<ReadEntry>,
    pub writes: Vec<WriteEntry>,
    /// Pointers whose write lock this transaction holds.
    pub locks: Vec<String>,
    pub age_ms: u64,
    pub timeout_ms: u64,
    pub trace_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_version: Option<u64>,
    /// Why the transaction aborted, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_reason: Option<String>,
}

/// A condition of a one-shot transaction: the pointer's latest version must equal
/// `version`, or the pointer must be absent when `version` is `null`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub ptr: String,
    pub version: Option<u64>,
}

/// A write of a one-shot transaction: either `value` or `"delete": true`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WriteOp {
    pub ptr: String,
    /// The value to write; `"value": null` writes JSON null (it is not the same as leaving it out).
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub value: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete: bool,
}

/// A field that is present (even as `null`) deserializes to `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// Body of the one-shot conditional `POST /txn`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OneShotRequest {
    #[serde(default)]
    pub checks: Vec<Check>,
    #[serde(default)]
    pub writes: Vec<WriteOp>,
}

/// One version of a pointer in `GET /ptr/{id}/history`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryEntry {
    pub version: u64,
    /// The wall-clock instant of the version (RFC 3339).
    pub time: String,
    /// The transaction that wrote it.
    pub txn: String,
    /// The value, `null` for a deletion.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub value: Option<Box<RawValue>>,
    pub deleted: bool,
    pub trace_id: String,
}

/// A page of `GET /ptr/{id}/history`, ascending by version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryPage {
    pub versions: Vec<HistoryEntry>,
    /// Cursor for the next page (pass it as `after`), `null` on the last page.
    pub next: Option<String>,
}

/// One pointer in `GET /ptr`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PointerEntry {
    pub ptr: String,
    pub version: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub value: Box<RawValue>,
}

/// A page of `GET /ptr`, ordered by pointer id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ListPage {
    pub pointers: Vec<PointerEntry>,
    /// Cursor for the next page (pass it as `after`), `null` on the last page.
    pub next: Option<String>,
}

/// Answer of `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// Answer of `GET /cluster`: the members and the data group, as this node sees them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterStatus {
    /// The cluster's name (`--cluster-name`).
    pub cluster: String,
    /// The node that answered.
    pub node_id: u64,
    /// `false` for a node started without cluster flags (a cluster of one, unreplicated).
    pub replicated: bool,
    pub members: Vec<MemberStatus>,
    /// The replication groups; today one data group holds every partition.
    pub groups: Vec<GroupStatus>,
    /// The groups' Raft timing (`None` on a cluster of one).
    #[serde(default)]
    pub timing: Option<RaftTiming>,
    /// With `X-reSTM-At`: the moment asked for. Each group's `leader` and `term` are then
    /// as of it (by the answering member's timeline; `None` and 0 where it had not seen
    /// the group yet), and `leader_changes` stops there; the other fields are now's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<u64>,
    /// The last leader changes the answering member saw (at most 100, oldest first): its
    /// timeline, kept behind the GC horizon like versions.
    #[serde(default)]
    pub leader_changes: Vec<LeaderChange>,
}

/// From `version` on, as the answering member saw it, `group` was led by `leader` (`None`:
/// an election was under way) in `term`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaderChange {
    pub group: u32,
    pub leader: Option<u64>,
    pub term: u64,
    pub version: u64,
    /// The version's moment (RFC 3339).
    pub time: String,
    /// The group's voters from then on (a membership change is a change too).
    #[serde(default)]
    pub voters: Vec<u64>,
    /// The group's learners from then on: members catching up before they vote.
    #[serde(default)]
    pub learners: Vec<u64>,
}

/// How fast a cluster notices a dead leader, and how long a leader reads on its own.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RaftTiming {
    /// `--heartbeat-interval`: milliseconds between the leader's heartbeats.
    pub heartbeat_interval_ms: u64,
    /// `--election-timeout`: milliseconds a member refuses votes after it last heard the
    /// leader; it campaigns after a random half to whole of it more.
    pub election_timeout_ms: u64,
    /// How long a heartbeat round a majority acknowledged lets the leader serve latest
    /// reads without another (half the election timeout).
    pub lease_ms: u64,
}

/// One member of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberStatus {
    pub node_id: u64,
    /// The address peers dial (from `--initial-cluster`).
    pub peer_url: String,
    /// `up` or `down`: whether this node heard from it (a request or an answer) in the last
    /// 2 s. A leader calls every member each heartbeat; a follower hears only leaders, so of
    /// another follower it takes the first group's leader's word, and says `unknown` only
    /// when that leader does not answer either.
    pub state: String,
    /// Milliseconds since this node last heard from it (`None`: never, since it started).
    pub last_contact_ms: Option<u64>,
}

/// One replication group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupStatus {
    pub group: u32,
    /// The partitions it holds.
    pub partitions: Vec<u32>,
    pub leader: Option<u64>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub term: u64,
    /// This node's role: `leader`, `follower`, `candidate` or `learner`.
    pub role: String,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Milliseconds since a majority last acknowledged the leader (leader only).
    pub millis_since_quorum_ack: Option<u64>,
    /// Per follower: how many entries it trails the leader's log by (leader only).
    pub follower_lag: Vec<FollowerLag>,
    /// Per partition, as this node applied it: the closed timestamp. A read with
    /// `X-reSTM-At` at or below it is served by this node from its own state, without the
    /// leader (a follower read).
    #[serde(default)]
    pub closed: Vec<ClosedTimestamp>,
}

/// A partition's closed timestamp on one node: no commit at or below it is still to come.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClosedTimestamp {
    pub partition: u32,
    /// The closed version (0: never closed).
    pub version: u64,
    /// How far it trails this node's clock, in milliseconds.
    pub lag_ms: u64,
}

/// How far one follower trails.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FollowerLag {
    pub node_id: u64,
    pub matched_index: Option<u64>,
    pub lag: Option<u64>,
}

/// An RFC 9457 problem, the body of every 4xx and 5xx answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// One of the documented codes, see [`codes`].
    pub code: String,
    /// The pointer the problem is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// The transaction the problem happened to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
    /// The transaction that held the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_txn: Option<String>,
    /// The transaction whose commit invalidated a read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner_txn: Option<String>,
    /// The version that transaction committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner_version: Option<u64>,
    /// On `410`: the oldest version still readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon: Option<u64>,
    /// On a second commit: the version the transaction already committed at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_version: Option<u64>,
    /// On `would-lose-majority`: the partitions that would be left without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<u32>>,
}

/// The documented set of problem codes.
/// What holds the GC watermark where it is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WatermarkHolder {
    /// `retention` (now − retention), `latest` (nothing newer exists), `txn` (an active
    /// transaction's snapshot), `pin`, `horizon` (it cannot move back), `cluster` (the
    /// cluster's horizon, which the leader has not yet raised further), or `unreachable` (on
    /// a cluster: a member that did not answer holds it at its last promise).
    pub kind: String,
    /// The transaction or pin, for `txn` and `pin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// On a cluster: the member whose retention, txn or pin holds it, or which did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
}

/// Answer of `GET /gc`: where garbage collection stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GcStatus {
    /// Versions below this may be pruned (the newest at or below it is kept). On a cluster,
    /// the cluster's: the minimum over every member of its retention bound, its txns'
    /// snapshots and the pins, gathered from all of them for this answer.
    pub watermark: u64,
    pub watermark_time: String,
    /// How far the watermark is behind now, in milliseconds.
    pub watermark_lag_ms: u64,
    pub held_by: WatermarkHolder,
    /// The oldest version a read may ask for; older ones get `410 gone`.
    pub horizon: u64,
    pub horizon_time: String,
    pub retention_ms: u64,
    pub pins: usize,
    pub passes: u64,
    pub versions_pruned_memory: u64,
    pub versions_pruned_disk: u64,
    pub bytes_reclaimed_memory: u64,
    pub bytes_reclaimed_disk: u64,
    pub pointers_removed: u64,
    /// When the last pass that pruned anything ran (RFC 3339), and how long it took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pass: Option<String>,
    pub last_pass_ms: u64,
    /// Memory pressure: `low`, `high` or `critical`.
    pub pressure: String,
    /// Memory the engine holds for pointers and their versions in memory, by its accounting.
    pub memory_bytes: u64,
    /// The budget those are measured against (0: none).
    pub memory_budget_bytes: u64,
    /// On a cluster: how far every replica may prune now (the horizon the first group's
    /// leader last raised to the cluster's watermark).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_horizon: Option<u64>,
    /// On a cluster: the members that did not answer for the watermark (each holds it back
    /// at its last promise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<u64>,
}

/// Body of `POST /pins`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    /// The moment to keep, as `X-reSTM-At` takes it (a version, an RFC 3339 instant or
    /// `-10m`); default now.
    #[serde(default)]
    pub at: Option<String>,
    /// How long the pin lasts, e.g. `30m`, `2h` (at most 30 days).
    pub ttl: String,
    /// Why, for whoever lists pins later.
    #[serde(default)]
    pub note: Option<String>,
}

/// A pin: history at `version` is kept until `expires`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PinView {
    pub id: String,
    pub version: u64,
    pub time: String,
    pub expires: String,
    pub expires_in_ms: u64,
    /// How far behind now the pinned moment is.
    pub holds_back_ms: u64,
    /// How much history it keeps beyond the retention period (0: retention keeps it anyway).
    pub beyond_retention_ms: u64,
    /// Whether this pin is what holds the watermark now.
    pub holds_watermark: bool,
    pub note: String,
}

/// Answer of `GET /pins`, oldest version first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Pins {
    pub pins: Vec<PinView>,
}

pub mod codes {
    pub const CONFLICT: &str = "conflict";
    pub const LOCK_TIMEOUT: &str = "lock-timeout";
    pub const TXN_NOT_FOUND: &str = "txn-not-found";
    pub const TXN_ABORTED: &str = "txn-aborted";
    pub const TXN_COMMITTED: &str = "txn-committed";
    pub const READ_ONLY: &str = "read-only";
    pub const NOT_FOUND: &str = "not-found";
    pub const GONE: &str = "gone";
    pub const BAD_REQUEST: &str = "bad-request";
    pub const TOO_LARGE: &str = "too-large";
    pub const PRECONDITION_FAILED: &str = "precondition-failed";
    pub const METHOD_NOT_ALLOWED: &str = "method-not-allowed";
    pub const OVERLOADED: &str = "overloaded";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const FORBIDDEN: &str = "forbidden";
    pub const INTERNAL: &str = "internal";
    /// The node cannot answer now (its store is fenced, or a prepared commit did not land
    /// in time); nothing was changed. Retry, or another node.
    pub const UNAVAILABLE: &str = "unavailable";
    /// A commit's outcome is unknown (it may or may not be durable): read to learn it.
    pub const OUTCOME_UNKNOWN: &str = "outcome-unknown";
    /// A membership change names a node that is a member already, at another address.
    pub const MEMBER_EXISTS: &str = "member-exists";
    /// A removal would leave partitions (named in `partitions`) without a majority.
    pub const WOULD_LOSE_MAJORITY: &str = "would-lose-majority";
    /// A membership change asked of a node that is not a cluster member.
    pub const NOT_A_CLUSTER: &str = "not-a-cluster";
}

/// `POST /cluster/members`: a node to add to every group, and where its peers dial it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MemberRequest {
    /// The new node's id (its `--node-id`), a whole number from 1.
    pub id: u64,
    /// The address its peers dial (`http://host:port`, its `--peer-listen` or
    /// `--advertise-peer-url`).
    pub peer_url: String,
}

/// `POST /cluster/groups/{group}/leader`: hand the group's lead to another of its voters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaderMove {
    /// The voter to lead the group.
    pub to: u64,
}

/// What a leader move did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaderMoved {
    pub group: u32,
    /// Who led the group when the move was asked for.
    pub from: u64,
    /// Who leads it now: the voter asked for.
    pub leader: u64,
    /// `moved` (the lead was handed over) or `already` (that voter led it already).
    pub outcome: String,
}

/// Physical milliseconds since the Unix epoch encoded in a hybrid-logical-clock version.
pub fn version_millis(version: u64) -> u64 {
    version >> 16
}

/// One message of the `/events` stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// Increases by one per event; pass it as `since` to resume after it.
    pub seq: u64,
    /// `begin`, `read`, `write`, `lock_acquired`, `lock_wait`, `lock_released`, `conflict`,
    /// `commit`, `abort`, `gc`, `pressure` (a memory-pressure level change) or `lagged`; on
    /// a merged stream (every member coordinates) also `member_down` and `member_up`, when
    /// a member's own stream cannot be reached and when it flows again (its `node`).
    pub kind: String,
    /// RFC 3339 instant.
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ptr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// On `conflict` and `lock_wait`: the transaction holding the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_txn: Option<String>,
    /// On `conflict`: the transaction whose commit invalidated a read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner_txn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner_version: Option<u64>,
    /// On `conflict` and `lock_wait`: the trace id of the holder or winner, so both sides
    /// of a conflict can be opened in a trace viewer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_trace_id: Option<String>,
    /// On `abort`: why. On `gc`: what was pruned. On `pressure`: the new level first
    /// (`high: memory … of … bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// On `lagged`: how many events this subscriber missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
    /// On a cluster where every member coordinates (`--groups` above 1): the member that
    /// numbered this event. `seq` is that member's own; resume with `since=<node>:<seq>,…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    /// On an event about a pointer: the partition that holds it (as `/cluster` and
    /// `/metrics` number them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
}

/// Where an `/events` subscriber resumes: `since=<seq>`, or per member
/// `since=<node>:<seq>,<node>:<seq>`, optionally with one bare `<seq>` for every member not
/// named (`since=0,2:41` replays all that is buffered, except member 2's first 41).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Since {
    /// For every member not in `per_member`; `None`: from now on.
    pub default: Option<u64>,
    pub per_member: std::collections::BTreeMap<u64, u64>,
}

/// A `since` that is neither a number nor a list of `<node>:<seq>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSince(pub String);

impl std::fmt::Display for BadSince {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadSince {}

impl Since {
    /// Where member `node` resumes (`None`: a node that is not a cluster member of many).
    pub fn for_member(&self, node: Option<u64>) -> Option<u64> {
        node.and_then(|n| self.per_member.get(&n).copied()).or(self.default)
    }

    /// Records `event` as the last one seen.
    pub fn saw(&mut self, event: &Event) {
        match event.node {
            Some(n) => {
                self.per_member.insert(n, event.seq);
            }
            None => self.default = Some(event.seq),
        }
    }

    /// Whether it resumes nowhere (subscribe from now on).
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.per_member.is_empty()
    }
}

impl std::fmt::Display for Since {
    /// The query form: `12`, `1:40,2:7` or `0,2:7`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        if let Some(d) = self.default {
            write!(f, "{d}")?;
            first = false;
        }
        for (node, seq) in &self.per_member {
            if !first {
                f.write_str(",")?;
            }
            write!(f, "{node}:{seq}")?;
            first = false;
        }
        Ok(())
    }
}

impl std::str::FromStr for Since {
    type Err = BadSince;

    fn from_str(s: &str) -> Result<Self, BadSince> {
        let mut since = Since::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let number = |t: &str, what: &str| {
                t.parse::<u64>().map_err(|_| {
                    BadSince(format!(
                        "since={s:?}: {what} {t:?} is not a whole number; give <seq> or <node>:<seq>,<node>:<seq>"
                    ))
                })
            };
            match part.split_once(':') {
                None => {
                    if since.default.replace(number(part, "sequence")?).is_some() {
                        return Err(BadSince(format!(
                            "since={s:?} has two bare sequence numbers; give at most one, for every member not named"
                        )));
                    }
                }
                Some((node, seq)) => {
                    let node = number(node, "node")?;
                    if since.per_member.insert(node, number(seq, "sequence")?).is_some() {
                        return Err(BadSince(format!("since={s:?} names member {node} twice")));
                    }
                }
            }
        }
        Ok(since)
    }
}

/// Answer of `GET /txns`: every active transaction, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActiveTxns {
    pub txns: Vec<TxnStatus>,
    /// The oldest active transaction: the one holding back garbage collection.
    pub oldest: Option<String>,
}

/// A transaction waiting for a lock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LockWaiter {
    pub txn: String,
    pub waiting_ms: u64,
}

/// One held lock, its holder and who waits for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LockView {
    pub ptr: String,
    pub holder_txn: String,
    pub holder_trace_id: String,
    /// Age of the holding transaction.
    pub holder_age_ms: u64,
    pub waiters: Vec<LockWaiter>,
}

/// Answer of `GET /locks`: every held lock, contended ones (with waiters) first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Locks {
    pub locks: Vec<LockView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_parses_a_number_a_member_list_and_both() {
        let s: Since = "12".parse().unwrap();
        assert_eq!((s.default, s.per_member.len()), (Some(12), 0));
        assert_eq!(s.for_member(Some(3)), Some(12));
        let s: Since = "0, 2:41,1:7".parse().unwrap();
        assert_eq!(s.for_member(Some(2)), Some(41));
        assert_eq!(s.for_member(Some(1)), Some(7));
        assert_eq!(s.for_member(Some(3)), Some(0));
        assert_eq!(s.for_member(None), Some(0));
        assert_eq!(s.to_string(), "0,1:7,2:41");
        assert_eq!(s.to_string().parse::<Since>().unwrap(), s);
        let s: Since = "2:41".parse().unwrap();
        assert_eq!(s.for_member(Some(1)), None);
        assert_eq!(s.to_string(), "2:41");
    }

    #[test]
    fn since_names_what_is_wrong() {
        for (bad, says) in [
            ("x", "\"x\" is not a whole number"),
            ("1:y", "sequence \"y\""),
            ("z:1", "node \"z\""),
            ("1,2", "two bare"),
            ("1:2,1:3", "member 1 twice"),
            ("-1", "not a whole number"),
        ] {
            let e = bad.parse::<Since>().unwrap_err();
            assert!(e.0.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn since_follows_the_events_seen() {
        let mut s = Since { default: Some(0), ..Since::default() };
        s.saw(&Event { seq: 5, node: Some(2), ..Event::default() });
        s.saw(&Event { seq: 9, node: Some(1), ..Event::default() });
        s.saw(&Event { seq: 6, node: Some(2), ..Event::default() });
        assert_eq!(s.to_string(), "0,1:9,2:6");
        let mut single = Since::default();
        assert!(single.is_empty());
        single.saw(&Event { seq: 3, ..Event::default() });
        assert_eq!(single.to_string(), "3");
    }
}
