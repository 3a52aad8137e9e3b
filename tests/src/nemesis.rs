//! The nemesis of the fault tests, in the manner of Jepsen's: while clients run, it kills
//! members (SIGKILL, then a restart on the same data), pauses them (SIGSTOP, then SIGCONT)
//! and cuts the link between two of them (through a [`LinkProxy`]), one fault at a time at
//! seeded random moments, so a majority of every group stays whole between faults. When
//! told to stop, it heals everything and waits until every group has a leader again.

use crate::{LinkProxy, Node};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A small seeded generator (splitmix64): the nemesis and the workloads draw from it so a
/// seed names a schedule.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A duration between `lo` and `hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// What the nemesis did, for the report.
#[derive(Debug, Default)]
pub struct Faults {
    pub kills: usize,
    pub pauses: usize,
    pub cuts: usize,
    /// One line per fault: when (seconds from the start), what, and for how long.
    pub log: Vec<String>,
}

impl Faults {
    pub fn total(&self) -> usize {
        self.kills + self.pauses + self.cuts
    }
}

impl std::fmt::Display for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} faults: {} kills, {} pauses, {} cut links",
            self.total(),
            self.kills,
            self.pauses,
            self.cuts
        )
    }
}

/// The member at `i` of `cluster` (0 is the cluster's first node, then its members).
fn member(cluster: &mut Node, i: usize) -> &mut Node {
    if i == 0 { cluster } else { &mut cluster.members[i - 1] }
}

fn signal(node: &Node, sig: &str) {
    let _ = std::process::Command::new("kill").arg(sig).arg(node.child.id().to_string()).status();
}

/// Runs faults on `cluster` (whose members dial each other through `proxy`) until `stop`
/// is set, then heals and waits (up to 60 s) for every group of every member to be led.
/// Blocking: run it on a thread of its own.
pub fn run(cluster: &mut Node, proxy: &LinkProxy, seed: u64, stop: &AtomicBool) -> Faults {
    let mut rng = Rng::new(seed);
    let mut faults = Faults::default();
    let n = cluster.members.len() + 1;
    let start = Instant::now();
    let pause_while = |d: Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    while !stop.load(Ordering::Relaxed) {
        pause_while(rng.millis(500, 1500));
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let hold = rng.millis(500, 2500);
        let at = start.elapsed().as_secs_f64();
        let who = rng.below(n as u64) as usize;
        match rng.below(3) {
            0 => {
                member(cluster, who).kill();
                faults.kills += 1;
                faults.log.push(format!("{at:6.1}s kill -9 member {} for {hold:?}", who + 1));
                pause_while(hold);
                member(cluster, who).restart();
            }
            1 => {
                signal(member(cluster, who), "-STOP");
                faults.pauses += 1;
                faults.log.push(format!("{at:6.1}s pause member {} for {hold:?}", who + 1));
                pause_while(hold);
                signal(member(cluster, who), "-CONT");
            }
            _ => {
                let other = (who + 1 + rng.below(n as u64 - 1) as usize) % n;
                proxy.cut(who as u64 + 1, other as u64 + 1);
                faults.cuts += 1;
                faults.log.push(format!("{at:6.1}s cut {}-{} for {hold:?}", who + 1, other + 1));
                pause_while(hold);
                proxy.heal();
            }
        }
    }
    proxy.heal();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster.all().all(Node::every_group_led) {
        assert!(Instant::now() < deadline, "the cluster did not recover within 60 s of the last fault");
        std::thread::sleep(Duration::from_millis(100));
    }
    faults
}
