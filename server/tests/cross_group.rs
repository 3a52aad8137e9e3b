//! A seeded model of a commit across Raft groups, on the partitions' deterministic apply
//! alone: no network, no engine, no locks.
//!
//! Each partition stands for a group led by another node, so no lock table sees more than
//! one coordinator's txns: what keeps them serializable is what `Partition::apply` keeps
//! in the replicated state. Coordinators interleave their steps in a seeded order:
//! - read a pointer's newest committed version (intents skipped, as a read below their mark
//!   would);
//! - on each partition touched, `Prepare` where it writes and `Guard` where it reads (both
//!   in one proposal where it does both);
//! - pick a commit version with a clock of their own, which may lag the partitions' (half
//!   the seeds carry it on every answer, as the HLC does; half never do), raised above the
//!   versions read and above every `Outcome::PreparedAbove`;
//! - `TxnRecord { Committed }` on the primary, then `Commit` everywhere; on a conflict,
//!   `Abort` everywhere.
//!
//! A coordinator may vanish after it prepared, and a resolver may take one for gone while it
//! still runs: the resolver records `Aborted` on the primary and, by what the record then
//! says, commits or aborts the txn everywhere. At the end every txn is resolved, and:
//! - a committed txn's writes are installed at its commit version, and an aborted txn's
//!   nowhere; every chain ascends; no intent or guard is left;
//! - the commits are serializable in commit-version order: every read of a committed txn
//!   saw the newest version below its commit version.
//!
//! `RESTM_XG_SEEDS=n` runs n seeds; `RESTM_XG_SEED=s` replays one.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use restm::engine::command::{Command, Outcome, TxnState};
use restm::engine::error::Conflict;
use restm::engine::partition::{Partition, PartitionRead};
use restm::engine::{PtrId, TxnId};

const PARTS: usize = 3;
const KEYS: usize = 6;
const TXNS: usize = 8;
const MAX_HOT: usize = 1_000;
const DEFAULT_SEEDS: u64 = 400;

fn part_of(key: usize) -> usize {
    key % PARTS
}

fn ptr(key: usize) -> PtrId {
    PtrId::from(format!("k{key}"))
}

/// Where a coordinator is in its txn.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Reading the `n`th pointer of its read set.
    Reading(usize),
    /// Preparing on the `n`th partition it touches.
    Preparing(usize),
    /// About to record its fate on the primary.
    Recording,
    /// Installing on the `n`th partition, committed at the version.
    Installing(usize, u64),
    /// Aborting on the `n`th partition.
    Aborting(usize),
    Done,
    /// Gone after it prepared: only a resolver ends the txn.
    Vanished,
}

#[derive(Debug)]
struct Txn {
    id: TxnId,
    reads: Vec<usize>,
    /// Key → value, ascending by key.
    writes: BTreeMap<usize, Bytes>,
    seen: BTreeMap<usize, Option<u64>>,
    /// The partitions touched, the primary's first.
    parts: Vec<usize>,
    primary: usize,
    clock: u64,
    /// The lowest commit version the answers allow.
    floor: u64,
    phase: Phase,
}

impl Txn {
    fn prepare_above(&self) -> u64 {
        self.clock
    }

    /// What it proposes to `part` to prepare there: `Prepare` where it writes, and `Guard`
    /// for the reads there (a `Prepare` validates its reads but guards none: under one
    /// leader's locks it need not).
    fn commands(&self, part: usize, above: u64) -> Vec<Command> {
        let reads: Vec<(PtrId, Option<u64>)> =
            self.reads.iter().filter(|k| part_of(**k) == part).map(|k| (ptr(*k), self.seen[k])).collect();
        let writes: Vec<(PtrId, Option<Bytes>)> = self
            .writes
            .iter()
            .filter(|(k, _)| part_of(**k) == part)
            .map(|(k, v)| (ptr(*k), Some(v.clone())))
            .collect();
        let primary = ptr(*self.writes.keys().next().expect("every txn writes"));
        let mut out = Vec::new();
        if !writes.is_empty() {
            out.push(Command::Prepare {
                txn: self.id.clone(),
                trace_id: "t".into(),
                prepared_above: above,
                reads: reads.clone(),
                writes,
                primary: primary.clone(),
            });
        }
        if !reads.is_empty() {
            out.push(Command::Guard { txn: self.id.clone(), reads, primary });
        }
        out
    }
}

/// The partitions, and the clock each one's leader keeps (above everything applied there).
struct Groups {
    parts: Vec<Partition>,
    clocks: Vec<u64>,
    /// Whether answers carry the partition's clock to the coordinator (the HLC).
    hlc: bool,
}

impl Groups {
    fn apply(&mut self, part: usize, cmd: &Command, coordinator: &mut u64) -> Outcome {
        // The request carries the coordinator's clock, the answer the partition's.
        if self.hlc {
            self.clocks[part] = self.clocks[part].max(*coordinator);
        }
        let out = self.parts[part].apply(cmd, MAX_HOT);
        if let Outcome::Committed(v) = out {
            self.clocks[part] = self.clocks[part].max(v);
        }
        if self.hlc {
            *coordinator = (*coordinator).max(self.clocks[part]);
        }
        out
    }
}

/// How a txn ended, by its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Committed(u64),
    Aborted,
}

/// A resolver's pass over `txn`: abort it by its record unless it is already committed,
/// then end it everywhere it holds intents or guards.
fn resolve(groups: &mut Groups, txn: &Txn, clock: &mut u64) -> Fate {
    let record = Command::TxnRecord { txn: txn.id.clone(), state: TxnState::Aborted };
    let fate = match groups.apply(txn.primary, &record, clock) {
        Outcome::Recorded | Outcome::Decided(TxnState::Aborted) => Fate::Aborted,
        Outcome::Decided(TxnState::Committed(v)) => Fate::Committed(v),
        other => panic!("a resolver's record answered {other:?}"),
    };
    let state = match fate {
        Fate::Committed(v) => TxnState::Committed(v),
        Fate::Aborted => TxnState::Aborted,
    };
    // Where it is still prepared (a partition's own list, as a group's leader finds them);
    // the record stays for the resolvers of other groups.
    for p in 0..PARTS {
        if groups.parts[p].prepared_txns().contains(&txn.id) {
            groups.apply(p, &Command::Resolve { txn: txn.id.clone(), state }, clock);
        }
    }
    fate
}

fn run(seed: u64) -> Result<(usize, usize, usize), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut groups = Groups {
        parts: (0..PARTS as u32).map(Partition::new).collect(),
        clocks: vec![0; PARTS],
        hlc: rng.random(),
    };
    let mut txns: Vec<Txn> = (0..TXNS)
        .map(|t| {
            let mut keys: Vec<usize> = (0..KEYS).collect();
            let n_reads = rng.random_range(1..=3);
            let n_writes = rng.random_range(1..=2);
            let mut pick = |n: usize| -> Vec<usize> {
                (0..n).map(|_| keys.swap_remove(rng.random_range(0..keys.len()))).collect()
            };
            let reads = pick(n_reads);
            let writes: BTreeMap<usize, Bytes> =
                pick(n_writes).into_iter().map(|k| (k, Bytes::from(format!("\"{seed}-{t}-{k}\"")))).collect();
            let primary = part_of(*writes.keys().next().expect("one write at least"));
            let touched: BTreeSet<usize> = reads.iter().chain(writes.keys()).map(|k| part_of(*k)).collect();
            let mut parts = vec![primary];
            parts.extend(touched.into_iter().filter(|p| *p != primary));
            Txn {
                id: TxnId::from(format!("n{}-{t}", t % 3 + 1)),
                reads,
                writes,
                seen: BTreeMap::new(),
                parts,
                primary,
                clock: rng.random_range(0..4),
                floor: 0,
                phase: Phase::Reading(0),
            }
        })
        .collect();
    let mut fates: BTreeMap<usize, Fate> = BTreeMap::new();
    let mut resolver_clock = 0u64;
    let mut steps = 0;
    loop {
        let live: Vec<usize> =
            (0..TXNS).filter(|t| !matches!(txns[*t].phase, Phase::Done | Phase::Vanished)).collect();
        if live.is_empty() {
            break;
        }
        steps += 1;
        if steps > 10_000 {
            return Err("no progress".into());
        }
        let t = live[rng.random_range(0..live.len())];
        // Now and then a resolver takes a prepared txn for gone (rightly, or not).
        let prepared =
            matches!(txns[t].phase, Phase::Preparing(n) if n > 0) || txns[t].phase == Phase::Recording;
        if prepared && rng.random_bool(0.08) {
            let fate = resolve(&mut groups, &txns[t], &mut resolver_clock);
            fates.entry(t).or_insert(fate);
            continue;
        }
        if prepared && rng.random_bool(0.04) {
            txns[t].phase = Phase::Vanished;
            continue;
        }
        let txn = &mut txns[t];
        txn.clock += rng.random_range(0..3);
        match txn.phase.clone() {
            Phase::Reading(n) => {
                let key = txn.reads[n];
                if groups.hlc {
                    txn.clock = txn.clock.max(groups.clocks[part_of(key)]);
                }
                txn.seen.insert(key, groups.parts[part_of(key)].latest_version(&ptr(key)));
                txn.phase = if n + 1 < txn.reads.len() { Phase::Reading(n + 1) } else { Phase::Preparing(0) };
            }
            Phase::Preparing(n) => {
                let part = txn.parts[n];
                let mut ok = true;
                for cmd in txn.commands(part, txn.prepare_above()) {
                    let mut clock = txn.clock;
                    let out = groups.apply(part, &cmd, &mut clock);
                    txn.clock = clock;
                    match out {
                        Outcome::Prepared => {}
                        Outcome::PreparedAbove(c) => {
                            txn.floor = txn.floor.max(c.winner().map_or(0, |(_, v)| v))
                        }
                        Outcome::Conflict(_) => {
                            ok = false;
                            break;
                        }
                        other => return Err(format!("{} prepare answered {other:?}", txn.id)),
                    }
                }
                txn.phase = match (ok, n + 1 < txn.parts.len()) {
                    (true, true) => Phase::Preparing(n + 1),
                    (true, false) => Phase::Recording,
                    (false, _) => Phase::Aborting(0),
                };
            }
            Phase::Recording => {
                // Above its clock, its prepare marks, what it read and what the answers named.
                txn.clock += 1;
                let read_max = txn.seen.values().flatten().max().copied().unwrap_or(0);
                let cv = txn.clock.max(read_max + 1).max(txn.floor + 1);
                txn.clock = cv;
                let cmd = Command::TxnRecord { txn: txn.id.clone(), state: TxnState::Committed(cv) };
                let mut clock = txn.clock;
                let out = groups.apply(txn.primary, &cmd, &mut clock);
                match out {
                    Outcome::Recorded => {
                        fates.entry(t).or_insert(Fate::Committed(cv));
                        txn.phase = Phase::Installing(0, cv);
                    }
                    Outcome::Decided(TxnState::Committed(v)) if v == cv => {
                        txn.phase = Phase::Installing(0, cv)
                    }
                    // A resolver decided first; what was prepared after it passed goes too.
                    Outcome::Decided(_) => txn.phase = Phase::Aborting(0),
                    other => return Err(format!("{} record answered {other:?}", txn.id)),
                }
            }
            Phase::Installing(n, cv) => {
                let cmd = Command::Commit { txn: txn.id.clone(), commit_version: cv };
                let part = txn.parts[txn.parts.len() - 1 - n]; // the primary last
                let mut clock = txn.clock;
                match groups.apply(part, &cmd, &mut clock) {
                    Outcome::Committed(_) => {}
                    other => return Err(format!("{} commit answered {other:?}", txn.id)),
                }
                txn.phase = if n + 1 < txn.parts.len() { Phase::Installing(n + 1, cv) } else { Phase::Done };
            }
            Phase::Aborting(n) => {
                let cmd = Command::Abort { txn: txn.id.clone() };
                let mut clock = txn.clock;
                groups.apply(txn.parts[n], &cmd, &mut clock);
                fates.entry(t).or_insert(Fate::Aborted);
                txn.phase = if n + 1 < txn.parts.len() { Phase::Aborting(n + 1) } else { Phase::Done };
            }
            Phase::Done | Phase::Vanished => unreachable!("only live txns step"),
        }
    }
    // The vanished are resolved; so is anything a resolver only half finished.
    for (t, txn) in txns.iter().enumerate() {
        if txn.phase == Phase::Vanished || groups.parts.iter().any(|p| p.prepared_txns().contains(&txn.id)) {
            let fate = resolve(&mut groups, txn, &mut resolver_clock);
            fates.entry(t).or_insert(fate);
        }
        // A txn aborted before it prepared anywhere has no record, and no fate yet.
        fates.entry(t).or_insert(Fate::Aborted);
    }
    check(&groups, &txns, &fates)?;
    let committed = fates.values().filter(|f| matches!(f, Fate::Committed(_))).count();
    let spanning = txns
        .iter()
        .enumerate()
        .filter(|(t, x)| matches!(fates[t], Fate::Committed(_)) && x.parts.len() > 1)
        .count();
    Ok((committed, spanning, TXNS - committed))
}

fn check(groups: &Groups, txns: &[Txn], fates: &BTreeMap<usize, Fate>) -> Result<(), String> {
    for (i, p) in groups.parts.iter().enumerate() {
        let dump = p.dump();
        if !dump.prepared.is_empty() || !dump.guards.guards.is_empty() {
            return Err(format!(
                "partition {i} still holds {:?} and guards {:?}",
                dump.prepared, dump.guards.guards
            ));
        }
        for (ptr, (versions, _, intent)) in &dump.pointers {
            if intent.is_some() {
                return Err(format!("{ptr} keeps an intent"));
            }
            if versions.windows(2).any(|w| w[0].version >= w[1].version) {
                let vs: Vec<u64> = versions.iter().map(|v| v.version).collect();
                return Err(format!("{ptr}'s chain does not ascend: {vs:?}"));
            }
            for v in versions {
                let t = txns.iter().position(|x| x.id == v.txn).ok_or("a version of no txn")?;
                if fates[&t] != Fate::Committed(v.version) {
                    return Err(format!("{ptr}@{} by {} whose fate is {:?}", v.version, v.txn, fates[&t]));
                }
            }
        }
    }
    let version_at = |key: usize, at: u64| match groups.parts[part_of(key)].read(&ptr(key), at, None) {
        PartitionRead::Found(v) => Ok(Some(v)),
        PartitionRead::Absent => Ok(None),
        _ => Err(format!("k{key} at {at} is not plainly readable")),
    };
    for (t, txn) in txns.iter().enumerate() {
        let Fate::Committed(cv) = fates[&t] else { continue };
        for (k, value) in &txn.writes {
            match version_at(*k, cv)? {
                Some(v) if v.version == cv && v.txn == txn.id && v.value.as_ref() == Some(value) => {}
                other => return Err(format!("{} committed at {cv}, but k{k} there is {other:?}", txn.id)),
            }
        }
        for (k, seen) in &txn.seen {
            let below = version_at(*k, cv - 1)?.map(|v| v.version);
            if below != *seen {
                return Err(format!(
                    "{} committed at {cv} having read k{k} at {seen:?}, but the newest below is {below:?}: not \
                     serializable",
                    txn.id
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn commits_across_groups_are_serializable_with_lagging_clocks_and_resolvers() {
    let seeds: Vec<u64> = match std::env::var("RESTM_XG_SEED") {
        Ok(s) => vec![s.parse().expect("RESTM_XG_SEED is a number")],
        Err(_) => {
            let n =
                std::env::var("RESTM_XG_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEEDS);
            (0..n).collect()
        }
    };
    let (mut committed, mut spanning, mut aborted) = (0, 0, 0);
    let mut failures = Vec::new();
    for &seed in &seeds {
        match run(seed) {
            Ok((c, s, a)) => {
                committed += c;
                spanning += s;
                aborted += a;
            }
            Err(why) => failures.push(format!("seed {seed}: {why}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
    eprintln!(
        "cross-group model: {} seeds; committed {committed} (across groups {spanning}), aborted {aborted}",
        seeds.len()
    );
    assert!(spanning > seeds.len() / 2, "too few txns committed across groups to mean anything");
}

/// The conflict a guard raises names the reader, as the conflict events and problems do.
#[test]
fn a_write_under_a_guard_names_the_reader() {
    let p = Partition::new(0);
    let guard = Command::Guard { txn: "n2-r".into(), reads: vec![(ptr(0), None)], primary: ptr(1) };
    assert_eq!(p.apply(&guard, MAX_HOT), Outcome::Prepared);
    let write = Command::PrepareCommit {
        txn: "n1-w".into(),
        trace_id: "t".into(),
        commit_version: 5,
        reads: vec![],
        writes: vec![(ptr(0), Some(Bytes::from_static(b"1")))],
    };
    let held = Conflict::Locked { ptr: ptr(0), holder: "n2-r".into() };
    assert_eq!(p.apply(&write, MAX_HOT), Outcome::Conflict(held));
}
