//! The leader lease: how a group's leader serves latest reads without a heartbeat round per
//! read, and the vote refusals that make that safe on openraft 0.9.
//!
//! A leader whose heartbeat round, started at `t0` in its term, was acknowledged by a
//! majority holds a lease until `t0 + length`: until then no other member can be elected,
//! so its own state is the latest one and a read may be served from it. Why no other member
//! can be elected before `t0 + hold` (and `length` is half of `hold`):
//! - a follower that acknowledged the round took it at or after `t0`, and openraft
//!   (`Engine::handle_vote_req`) refuses every vote for `leader_lease` (set to the election
//!   timeout's maximum, `hold`) after it last heard the leader;
//! - the leader itself refuses every vote while it holds a lease ([`Lease::refuses_votes`],
//!   answered by the peer port before openraft sees the request): openraft 0.9 does not
//!   refresh a leader's own vote time, so it would grant one an election timeout after its election;
//! - a member that restarts has forgotten when it heard the leader last, but openraft takes
//!   its start as that moment (`StorageHelper::get_initial_state` stamps the saved vote with
//!   the time it starts), so it too refuses for `hold`.
//!
//! Every majority that could elect someone else therefore holds a member that refuses until
//! after the lease ran out. The clocks are monotonic ones on each member; the lease is half
//! of the refusal, which leaves the other half for clocks that run at different rates and
//! for the time a heartbeat takes to arrive. Losing the lead, or a new term, ends it.
//!
//! A leader that hands its lead to another member ([`Lease::stand_down`], for
//! `cluster::balance`) gives the lease up first and takes no new one until it
//! [`Lease::stands_again`]: it must grant the successor's vote, and a member that grants
//! votes may not read on its own.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// One member's lease on one group, and its vote refusals.
pub struct Lease {
    /// How long a confirmed round lets the leader read on its own.
    length: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The term of the confirmed round, and until when it lets this member read.
    held: Option<(u64, Instant)>,
    /// The lead is being handed over: no lease is held or taken.
    standing_down: bool,
}

impl Lease {
    /// The lease of a member whose peers refuse votes for `hold` after they last heard the
    /// leader.
    pub fn new(hold: Duration) -> Self {
        Self { length: Self::length_of(hold), state: Mutex::new(State::default()) }
    }

    /// How long a confirmed round lends the lead when peers refuse votes for `hold`: half
    /// of it, so a clock running up to twice as fast still expires the lease in time.
    pub fn length_of(hold: Duration) -> Duration {
        hold / 2
    }

    /// How long a confirmed round lets the leader read on its own.
    pub fn length(&self) -> Duration {
        self.length
    }

    /// A heartbeat round that started at `started`, with this member leading in `term`, was
    /// acknowledged by a majority.
    pub fn confirmed(&self, term: u64, started: Instant) {
        let until = started + self.length;
        let mut st = self.state.lock();
        if st.standing_down {
            return;
        }
        match st.held {
            Some((t, u)) if t == term && u >= until => {}
            _ => st.held = Some((term, until)),
        }
    }

    /// How much of the lease is left at `now` for a read while this member leads in `term`
    /// (`None`: no lease; confirm the lead with a round).
    pub fn remaining(&self, term: u64, now: Instant) -> Option<Duration> {
        match self.state.lock().held {
            Some((t, until)) if t == term && until > now => Some(until - now),
            _ => None,
        }
    }

    /// Whether this member must refuse a vote at `now`: it holds a lease (whatever the term:
    /// refusing costs a candidate at most the lease).
    pub fn refuses_votes(&self, now: Instant) -> bool {
        self.state.lock().held.is_some_and(|(_, until)| until > now)
    }

    /// Gives the lease up for a handover of the lead: from now on this member reads only
    /// after a heartbeat round, and refuses no vote, until [`Self::stands_again`]. A round
    /// that started before and is acknowledged after lends nothing either.
    pub fn stand_down(&self) {
        let mut st = self.state.lock();
        st.standing_down = true;
        st.held = None;
    }

    /// The handover is over (made or not): rounds lend the lease again.
    pub fn stands_again(&self) {
        self.state.lock().standing_down = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_millis(2_000);

    #[test]
    fn a_confirmed_round_lends_half_the_hold_from_its_start_and_only_in_its_term() {
        let t0 = Instant::now();
        let lease = Lease::new(HOLD);
        assert_eq!(lease.remaining(3, t0), None, "no round, no lease");
        assert!(!lease.refuses_votes(t0), "no lease, no refusal");
        lease.confirmed(3, t0);
        assert_eq!(lease.remaining(3, t0 + Duration::from_millis(400)), Some(Duration::from_millis(600)));
        assert_eq!(lease.remaining(4, t0), None, "another term");
        assert_eq!(lease.remaining(3, t0 + HOLD / 2), None, "ran out");
        // A round that started earlier but was answered later does not shorten it.
        lease.confirmed(3, t0 - Duration::from_millis(100));
        assert_eq!(lease.remaining(3, t0), Some(HOLD / 2));
        // While it runs, the leader refuses votes; after, it does not.
        assert!(lease.refuses_votes(t0 + Duration::from_millis(999)));
        assert!(!lease.refuses_votes(t0 + HOLD / 2));
        // A round of a new term replaces it.
        lease.confirmed(5, t0 + Duration::from_millis(10));
        assert_eq!(lease.remaining(3, t0 + Duration::from_millis(20)), None);
        assert!(lease.remaining(5, t0 + Duration::from_millis(20)).is_some());
    }

    #[test]
    fn standing_down_gives_the_lease_up_and_takes_none_until_it_stands_again() {
        let t0 = Instant::now();
        let lease = Lease::new(HOLD);
        lease.confirmed(3, t0);
        assert!(lease.refuses_votes(t0));
        lease.stand_down();
        assert_eq!(lease.remaining(3, t0), None, "given up");
        assert!(!lease.refuses_votes(t0), "the successor's vote must be granted");
        lease.confirmed(3, t0 + Duration::from_millis(5));
        assert_eq!(
            lease.remaining(3, t0 + Duration::from_millis(10)),
            None,
            "a round lends nothing meanwhile"
        );
        assert!(!lease.refuses_votes(t0 + Duration::from_millis(10)));
        lease.stands_again();
        lease.confirmed(3, t0 + Duration::from_millis(20));
        assert!(lease.remaining(3, t0 + Duration::from_millis(30)).is_some(), "rounds lend again");
    }
}
