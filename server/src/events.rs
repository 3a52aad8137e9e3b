//! The event hub behind `GET /events`: a bounded ring of recent engine events for `since`
//! resumption, and a broadcast channel that fans them out to WebSocket subscribers.
//!
//! The engine calls [`EventHub::emit`] on its hot path; it numbers the event, stores it in
//! the ring (dropping the oldest past capacity) and broadcasts it, and never waits. Each
//! subscriber has a bounded queue: one that falls behind loses the oldest events and is told
//! how many with a `lagged` message. Events are turned into JSON by the subscriber's task,
//! not by the engine.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use restm_shared::Event;
use tokio::sync::broadcast;

use crate::engine::events::{EngineEvent, EventSink};
use crate::engine::hlc::version_time_ms;

/// An engine event with its stream sequence number.
#[derive(Debug)]
pub struct Numbered {
    pub seq: u64,
    pub event: EngineEvent,
    /// The member that numbered it, on a cluster where every member coordinates.
    pub node: Option<u64>,
    /// The partition of the event's pointer, once the hub knows how many there are.
    pub partition: Option<u32>,
    /// The JSON text, made once by the first subscriber that sends it and shared by the rest.
    json: OnceLock<Arc<str>>,
}

impl Numbered {
    pub fn new(seq: u64, event: EngineEvent, node: Option<u64>) -> Self {
        Self { seq, event, node, partition: None, json: OnceLock::new() }
    }

    /// The JSON text of the wire form.
    pub fn json(&self) -> Arc<str> {
        self.json.get_or_init(|| serde_json::to_string(&self.to_wire()).unwrap_or_default().into()).clone()
    }

    /// The wire form.
    pub fn to_wire(&self) -> Event {
        let e = &self.event;
        Event {
            seq: self.seq,
            kind: e.kind.as_str().to_string(),
            time: version_time_ms(e.time_ms),
            txn: e.txn.as_ref().map(|t| t.to_string()),
            ptr: e.ptr.as_ref().map(|p| p.to_string()),
            version: e.version,
            trace_id: e.trace_id.as_ref().map(|t| t.to_string()),
            holder_txn: e.holder_txn.as_ref().map(|t| t.to_string()),
            winner_txn: e.winner_txn.as_ref().map(|t| t.to_string()),
            winner_version: e.winner_version,
            other_trace_id: e.other_trace_id.as_ref().map(|t| t.to_string()),
            reason: e.reason.clone(),
            missed: None,
            node: self.node,
            partition: self.partition,
        }
    }
}

struct Ring {
    next_seq: u64,
    buf: VecDeque<Arc<Numbered>>,
}

/// The hub.
pub struct EventHub {
    ring: Mutex<Ring>,
    capacity: usize,
    tx: broadcast::Sender<Arc<Numbered>>,
    /// Events subscribers missed because they fell behind.
    pub lagged: AtomicU64,
    /// Current subscribers.
    pub subscribers: AtomicU64,
    /// Set on a cluster where every member coordinates: this member, named on each event.
    node: OnceLock<u64>,
    /// How many partitions the pointers hash to, once known: each event about a pointer
    /// names its partition.
    partitions: OnceLock<u32>,
}

/// What a new subscriber starts with.
pub struct Subscription {
    /// Buffered events after `since`, oldest first.
    pub backlog: Vec<Arc<Numbered>>,
    /// Events after `since` that are no longer buffered.
    pub missed: u64,
    /// `since` was at or past this node's next number: numbering restarted (the node
    /// restarted), so the stream starts over from the oldest buffered event.
    pub reset: bool,
    pub live: broadcast::Receiver<Arc<Numbered>>,
}

impl EventHub {
    /// A hub keeping `capacity` events for resumption, with `per_subscriber` queued events
    /// per subscriber.
    pub fn new(capacity: usize, per_subscriber: usize) -> Self {
        let (tx, _) = broadcast::channel(per_subscriber.max(1));
        Self {
            ring: Mutex::new(Ring { next_seq: 1, buf: VecDeque::with_capacity(capacity.min(1 << 16)) }),
            capacity: capacity.max(1),
            tx,
            lagged: AtomicU64::new(0),
            subscribers: AtomicU64::new(0),
            node: OnceLock::new(),
            partitions: OnceLock::new(),
        }
    }

    /// Subscribes; with `since`, the buffered events after it come first.
    pub fn subscribe(&self, since: Option<u64>) -> Subscription {
        let ring = self.ring.lock();
        // Subscribing under the ring lock: no event falls between the backlog and the live feed.
        let live = self.tx.subscribe();
        let reset = since.is_some_and(|s| s >= ring.next_seq);
        let since = if reset { Some(0) } else { since };
        let (backlog, missed) = match since {
            None => (Vec::new(), 0),
            Some(since) => {
                let oldest = ring.buf.front().map_or(ring.next_seq, |e| e.seq);
                let missed = oldest.saturating_sub(since.saturating_add(1));
                (ring.buf.iter().filter(|e| e.seq > since).cloned().collect(), missed)
            }
        };
        Subscription { backlog, missed, reset, live }
    }

    /// Names `node` on every event from now on: on a cluster where every member
    /// coordinates, each member numbers its own txns' events, and a merged stream tells
    /// them apart by it.
    pub fn number_as(&self, node: u64) {
        let _ = self.node.set(node);
    }

    /// Names on every event about a pointer its partition, of `partitions`.
    pub fn place_in(&self, partitions: u32) {
        let _ = self.partitions.set(partitions);
    }

    /// The member named on this hub's events, if any.
    pub fn node(&self) -> Option<u64> {
        self.node.get().copied()
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.ring.lock().next_seq
    }
}

impl EventSink for EventHub {
    fn emit(&self, event: EngineEvent) {
        let mut ring = self.ring.lock();
        let seq = ring.next_seq;
        ring.next_seq += 1;
        let partition = match (&event.ptr, self.partitions.get()) {
            (Some(ptr), Some(n)) => Some(crate::engine::partition::partition_of(ptr, *n)),
            _ => None,
        };
        let numbered = Arc::new(Numbered { partition, ..Numbered::new(seq, event, self.node()) });
        if ring.buf.len() == self.capacity {
            ring.buf.pop_front();
        }
        ring.buf.push_back(numbered.clone());
        // No receiver is not an error: the event stays in the ring.
        let _ = self.tx.send(numbered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::events::EventKind;

    fn ev() -> EngineEvent {
        EngineEvent::new(EventKind::Begin, 0)
    }

    #[test]
    fn since_from_a_previous_life_starts_over() {
        let hub = EventHub::new(8, 8);
        for _ in 0..3 {
            hub.emit(ev());
        }
        let sub = hub.subscribe(Some(40));
        assert!(sub.reset);
        assert_eq!(sub.backlog.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(!hub.subscribe(Some(2)).reset);
    }

    #[test]
    fn numbers_events_and_resumes_from_the_ring() {
        let hub = EventHub::new(3, 8);
        for _ in 0..5 {
            hub.emit(ev());
        }
        let s = hub.subscribe(Some(3));
        assert_eq!(s.backlog.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5]);
        assert_eq!(s.missed, 0);
        let s = hub.subscribe(Some(0));
        assert_eq!(s.backlog.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(s.missed, 2, "events 1 and 2 fell out of the ring");
    }

    #[test]
    fn a_slow_subscriber_lags_instead_of_blocking() {
        let hub = EventHub::new(16, 2);
        let mut s = hub.subscribe(None);
        for _ in 0..10 {
            hub.emit(ev());
        }
        assert!(matches!(s.live.try_recv(), Err(broadcast::error::TryRecvError::Lagged(8))));
        assert_eq!(s.live.try_recv().unwrap().seq, 9);
    }
}
