//! What a leader may close: the commit versions it has issued and not yet seen land.
//!
//! A partition's closed timestamp ([`super::command::Command::Close`]) promises that no
//! commit at or below it is still to come, so that any replica can serve a read at or below
//! it from its own state. The leader keeps that promise by closing below every commit
//! version in flight: a version is issued here, under the same lock that
//! [`InFlight::closable`] reads the clock under, so a commit either is in the set when the
//! leader closes or gets a version above what it closed.
//!
//! A commit leaves the set once its commands are applied on the leader (they then precede
//! any later `Close` in the log), or once it failed before the log took anything. A
//! one-partition commit whose outcome is unknown (its proposal timed out) stays until the
//! node loses the lead: its entry may still land.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use super::hlc::Hlc;

/// The commit versions issued and not yet landed, with how many commits hold each.
#[derive(Default)]
pub struct InFlight {
    versions: Mutex<BTreeMap<u64, usize>>,
    /// Fires whenever versions leave the set.
    landed: event_listener::Event,
}

impl InFlight {
    /// [`Self::issue`] into this set and `also` at once (a version both hold from the
    /// moment it exists).
    pub fn issue_with(&self, also: &InFlight, hlc: &Hlc) -> u64 {
        let mut versions = self.versions.lock();
        let mut others = also.versions.lock();
        let v = hlc.tick();
        *versions.entry(v).or_default() += 1;
        *others.entry(v).or_default() += 1;
        v
    }

    /// A listener that fires when a version leaves the set, if one at or below `at` is in it
    /// now (`None`: none is).
    pub fn at_or_below(&self, at: u64) -> Option<event_listener::EventListener> {
        let versions = self.versions.lock();
        let (lowest, _) = versions.first_key_value()?;
        (*lowest <= at).then(|| self.landed.listen())
    }

    /// Issues a commit version from `hlc` and holds the closed timestamp below it.
    pub fn issue(&self, hlc: &Hlc) -> u64 {
        let mut versions = self.versions.lock();
        let v = hlc.tick();
        *versions.entry(v).or_default() += 1;
        v
    }

    /// The commit at `version` landed (or never will): it no longer holds anything back.
    pub fn release(&self, version: u64) {
        let mut versions = self.versions.lock();
        if let Some(n) = versions.get_mut(&version) {
            *n -= 1;
            if *n == 0 {
                versions.remove(&version);
                self.landed.notify(usize::MAX);
            }
        }
    }

    /// The highest timestamp that can be closed now: below every version in flight, and no
    /// higher than the clock, which it ticks (every version issued later is above it; an idle
    /// leader's closed timestamp keeps up with the time).
    pub fn closable(&self, hlc: &Hlc) -> u64 {
        let versions = self.versions.lock();
        let now = hlc.tick();
        match versions.first_key_value() {
            Some((oldest, _)) => now.min(oldest - 1),
            None => now,
        }
    }

    /// Forgets every version (the node lost the lead: the next leader closes from what its
    /// log holds, and its clock is above all of it).
    pub fn forget(&self) {
        self.versions.lock().clear();
        self.landed.notify(usize::MAX);
    }

    /// How many commits hold the closed timestamp back.
    pub fn holding(&self) -> usize {
        self.versions.lock().values().sum()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::clock::ManualClock;

    #[test]
    fn closes_below_every_version_in_flight_and_at_most_the_clock() {
        let clock = Arc::new(ManualClock::new(1_000));
        let hlc = Hlc::new(clock.clone(), 0);
        let f = InFlight::default();
        let now = f.closable(&hlc);
        assert!(now >= 1_000 << 16, "nothing in flight: up to the clock");
        clock.advance(5);
        assert!(f.closable(&hlc) > now, "an idle clock still moves the closed timestamp");
        let a = f.issue(&hlc);
        let b = f.issue(&hlc);
        assert!(a > now && b > a);
        assert_eq!(f.closable(&hlc), a - 1);
        f.release(a);
        assert_eq!(f.closable(&hlc), b - 1);
        // A version issued after a close is above it.
        let closed = f.closable(&hlc);
        f.release(b);
        let c = f.issue(&hlc);
        assert!(c > closed);
        f.forget();
        assert_eq!(f.holding(), 0);
        assert!(f.closable(&hlc) > c);
    }
}
