//! What the engine reports as it works: begins, reads, writes, lock traffic, conflicts,
//! commits and aborts. The engine hands each [`EngineEvent`] to an injected [`EventSink`]
//! and never waits on it; what the sink does (buffer, fan out, drop) is its own business.

use std::sync::Arc;

use super::error::{AbortReason, Conflict};
use super::{PtrId, TxnId};

/// Kinds of engine events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Begin,
    Read,
    Write,
    LockAcquired,
    LockWait,
    LockReleased,
    Conflict,
    Commit,
    Abort,
    Gc,
    Pressure,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::Begin,
        EventKind::Read,
        EventKind::Write,
        EventKind::LockAcquired,
        EventKind::LockWait,
        EventKind::LockReleased,
        EventKind::Conflict,
        EventKind::Commit,
        EventKind::Abort,
        EventKind::Gc,
        EventKind::Pressure,
    ];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Begin => "begin",
            EventKind::Read => "read",
            EventKind::Write => "write",
            EventKind::LockAcquired => "lock_acquired",
            EventKind::LockWait => "lock_wait",
            EventKind::LockReleased => "lock_released",
            EventKind::Conflict => "conflict",
            EventKind::Commit => "commit",
            EventKind::Abort => "abort",
            EventKind::Gc => "gc",
            EventKind::Pressure => "pressure",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One event, as the engine saw it.
#[derive(Debug, Clone)]
pub struct EngineEvent {
    pub kind: EventKind,
    /// Physical milliseconds of the engine's clock.
    pub time_ms: u64,
    pub txn: Option<TxnId>,
    pub ptr: Option<PtrId>,
    pub version: Option<u64>,
    pub trace_id: Option<Arc<str>>,
    pub holder_txn: Option<TxnId>,
    pub winner_txn: Option<TxnId>,
    pub winner_version: Option<u64>,
    /// On `conflict` and `lock_wait`: the trace of the holder or winner, while it is known.
    pub other_trace_id: Option<Arc<str>>,
    pub reason: Option<String>,
    /// On `abort`: the reason's short label.
    pub code: Option<&'static str>,
}

impl EngineEvent {
    pub fn new(kind: EventKind, time_ms: u64) -> Self {
        Self {
            kind,
            time_ms,
            txn: None,
            ptr: None,
            version: None,
            trace_id: None,
            holder_txn: None,
            winner_txn: None,
            winner_version: None,
            other_trace_id: None,
            reason: None,
            code: None,
        }
    }

    /// The `conflict` event of `txn` losing `conflict`.
    pub fn conflict(time_ms: u64, txn: &TxnId, trace_id: &Arc<str>, conflict: &Conflict) -> Self {
        let mut e = Self::new(EventKind::Conflict, time_ms);
        e.txn = Some(txn.clone());
        e.trace_id = Some(trace_id.clone());
        e.ptr = Some(conflict.ptr().clone());
        e.holder_txn = conflict.holder().cloned();
        e.winner_txn = conflict.winner().map(|(w, _)| w.clone());
        e.winner_version = conflict.winner().map(|(_, v)| v);
        e
    }

    /// The `conflict` event an abort reason implies, if any.
    pub fn from_abort(time_ms: u64, txn: &TxnId, trace_id: &Arc<str>, reason: &AbortReason) -> Option<Self> {
        match reason {
            AbortReason::Conflict(c) => Some(Self::conflict(time_ms, txn, trace_id, c)),
            AbortReason::LockTimeout { ptr, holder } => {
                let c = Conflict::Locked { ptr: ptr.clone(), holder: holder.clone() };
                Some(Self::conflict(time_ms, txn, trace_id, &c))
            }
            _ => None,
        }
    }
}

/// Receives engine events. Must not block: it is called on the commit path.
pub trait EventSink: Send + Sync + 'static {
    fn emit(&self, event: EngineEvent);

    /// Whether anyone could be interested; lets the engine skip building events.
    fn enabled(&self) -> bool {
        true
    }
}

/// A sink that keeps nothing, for an engine nobody observes.
#[derive(Debug, Default)]
pub struct DiscardEvents;

impl EventSink for DiscardEvents {
    fn emit(&self, _event: EngineEvent) {}

    fn enabled(&self) -> bool {
        false
    }
}

/// Hands every event to several sinks.
pub struct Tee(pub Vec<Arc<dyn EventSink>>);

impl EventSink for Tee {
    fn emit(&self, event: EngineEvent) {
        let mut live = self.0.iter().filter(|s| s.enabled()).peekable();
        while let Some(sink) = live.next() {
            if live.peek().is_none() {
                // The last sink takes the event itself: one clone fewer, no allocation.
                sink.emit(event);
                return;
            }
            sink.emit(event.clone());
        }
    }

    fn enabled(&self) -> bool {
        self.0.iter().any(|s| s.enabled())
    }
}
