//! The hybrid logical clock that issues versions.
//!
//! A version is a u64: physical milliseconds in the high 48 bits and a logical counter in
//! the low [`LOGICAL_BITS`]. Every value the clock issues is strictly greater than every
//! value it issued or observed before, so versions are unique and follow commit order even
//! when the wall clock stalls or steps back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::clock::Clock;

/// Bits of a version given to the logical counter.
pub const LOGICAL_BITS: u32 = 16;

/// The version that stands for "everything committed up to this wall-clock millisecond".
pub fn version_at_millis(millis: u64) -> u64 {
    (millis << LOGICAL_BITS) | ((1 << LOGICAL_BITS) - 1)
}

/// Physical milliseconds of a version.
pub fn millis_of(version: u64) -> u64 {
    version >> LOGICAL_BITS
}

/// RFC 3339 text of a version's wall-clock instant.
pub fn version_time(version: u64) -> String {
    version_time_ms(millis_of(version))
}

/// RFC 3339 text of a Unix time in milliseconds.
pub fn version_time_ms(millis: u64) -> String {
    let nanos = i128::from(millis) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// A hybrid logical clock over an injected physical [`Clock`].
pub struct Hlc {
    last: AtomicU64,
    clock: Arc<dyn Clock>,
}

impl Hlc {
    /// A clock that will never issue a value at or below `floor`.
    pub fn new(clock: Arc<dyn Clock>, floor: u64) -> Self {
        Self { last: AtomicU64::new(floor), clock }
    }

    /// Issues a new timestamp, strictly above every earlier one.
    pub fn tick(&self) -> u64 {
        let physical = self.clock.now_millis() << LOGICAL_BITS;
        let mut last = self.last.load(Ordering::Acquire);
        loop {
            let next = physical.max(last + 1);
            match self.last.compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// The last value issued or observed; no later tick is at or below it.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// Moves the clock past a timestamp seen from elsewhere (a message, a recovered commit).
    pub fn observe(&self, seen: u64) {
        self.last.fetch_max(seen, Ordering::AcqRel);
    }

    /// The physical clock's reading in milliseconds.
    pub fn physical_millis(&self) -> u64 {
        self.clock.now_millis()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::clock::ManualClock;

    #[test]
    fn ticks_are_strictly_increasing_even_when_time_stands_still_or_steps_back() {
        let clock = Arc::new(ManualClock::new(1_000));
        let hlc = Hlc::new(clock.clone(), 0);
        let a = hlc.tick();
        let b = hlc.tick();
        assert_eq!(a, 1_000 << LOGICAL_BITS);
        assert_eq!(b, a + 1);
        clock.set(500);
        let c = hlc.tick();
        assert!(c > b);
        clock.set(2_000);
        assert_eq!(hlc.tick(), 2_000 << LOGICAL_BITS);
    }

    #[test]
    fn observe_moves_the_floor() {
        let clock = Arc::new(ManualClock::new(1));
        let hlc = Hlc::new(clock, 0);
        hlc.observe(10 << LOGICAL_BITS);
        assert!(hlc.tick() > 10 << LOGICAL_BITS);
    }

    #[test]
    fn version_at_millis_covers_the_whole_millisecond() {
        let v = version_at_millis(7);
        assert_eq!(millis_of(v), 7);
        assert!(v >= (7 << LOGICAL_BITS) + 5);
        assert!(v < 8 << LOGICAL_BITS);
    }
}
