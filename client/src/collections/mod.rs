//! Transactional collections laid out on pointers. Every operation takes a [`crate::Txn`],
//! so several operations (on several collections) compose into one atomic transaction;
//! run them in [`crate::Client::transact`] to get retries. Each layout is chosen so that
//! concurrent users touch as few common pointers as possible:
//!
//! - [`Counter`]: `name/s/<i>` for `i` in `0..stripes`. An increment reads and writes one
//!   random stripe (a locking read, so two adders of one stripe queue rather than
//!   conflict), so `k` concurrent incrementers wait on each other about `k / stripes` as
//!   often as on one pointer; a read sums every stripe.
//! - [`Map`]: `name/k/<key>`, one pointer per key, so operations on different keys never
//!   contend; its size is a striped counter `name/len` that inserts and removals adjust.
//!   [`Map::entries`] lists the keys at the transaction's snapshot.
//! - [`Queue`]: `name/head` and `name/tail` (next index to pop and to push) and
//!   `name/item/<index, 20 digits>`. A push reads and writes `tail` and writes one item; a
//!   pop reads and writes `head`, reads and deletes the item at `head`; `tail` and `head`
//!   are read with their lock, so producers queue on `tail` and consumers on `head`. Producers contend
//!   only with producers and consumers only with consumers, except on an empty queue,
//!   where a pop's read of the missing item conflicts with the push that creates it. The
//!   order is strict FIFO by index.
//! - [`OrderedMap`]: a B+tree, one pointer per node: the root at `name/t/root`, the others
//!   at `name/t/<random id>`, up to `fanout` (64) entries each; its size is a striped
//!   counter `name/len`. Writers of different leaves share only reads of the branches
//!   above them, which change on splits, so they rarely conflict; range scans read only
//!   the nodes that overlap the range. See [`ordered`] for the algorithm.

mod counter;
mod map;
pub mod ordered;
mod queue;

pub use counter::Counter;
pub use map::Map;
pub use ordered::{OrderedMap, TreeStats};
pub use queue::Queue;
