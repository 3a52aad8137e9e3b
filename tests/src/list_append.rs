//! The list-append history and its checker, in the manner of Elle (Kingsbury and Alvaro,
//! "Elle: Inferring Isolation Anomalies from Experimental Observations", VLDB 2020).
//!
//! Clients run txns of reads and appends on pointers that each hold a list of integers,
//! and every value appended to a key is unique. A read then shows the whole order of the
//! appends to its key that it saw, so the versions of each key are known exactly, and
//! from them the dependencies between txns:
//!
//! - `ww`: `T1` appended a value and `T2` appended the next one to the same key;
//! - `wr`: `T2` read a list whose last value (not its own) `T1` appended;
//! - `rw`: `T1` read a list, and `T2` appended the value that came next.
//!
//! A cycle of `ww` edges is G0, of `ww` and `wr` edges G1c, and one with an `rw` edge
//! G-single (one) or G2 (more). Besides cycles, the checker finds aborted reads (G1a: a
//! value of a txn that failed), intermediate reads (G1b: a value its txn later followed with
//! another to the same key), reads of values never appended, duplicated values, two reads
//! of one key that no single order explains, a txn that does not see its own appends, and
//! lost writes: an acknowledged append missing from the final read of its key, made after
//! every client stopped.
//!
//! The checker proves serializability (not strictness: it draws no real-time edges). It is
//! pure, so its own tests feed it histories known to be bad.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;

/// One operation inside a txn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mop {
    /// Appended `value` to the list at `key`.
    Append(String, u64),
    /// Read the list at `key` (an absent pointer is the empty list).
    Read(String, Vec<u64>),
}

/// How a txn ended, as its client learned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed (acknowledged).
    Ok,
    /// Certainly did not commit: refused, aborted, or never asked to commit.
    Fail,
    /// May or may not have committed (the commit's answer was lost or unclear).
    Info,
}

/// A txn as its client saw it: the operations it completed, in order, and its outcome.
/// Only an acknowledged txn's reads are evidence: a failed one may have read an
/// inconsistent snapshot and been aborted for it, and an unknown one may not have
/// committed. A failed txn's appends are values nobody may read; an unknown one's count as
/// committed once some read shows one of them.
#[derive(Clone, Debug)]
pub struct Txn {
    /// Which client ran it.
    pub process: usize,
    pub mops: Vec<Mop>,
    pub outcome: Outcome,
    /// When it began and ended, in seconds from the start of the run (for reading a
    /// history that failed; the checker draws no real-time edges).
    pub span: (f64, f64),
}

/// A history: every txn the clients ran, and the final value of every key, read after they
/// all stopped and every fault healed.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub txns: Vec<Txn>,
    pub finals: BTreeMap<String, Vec<u64>>,
}

/// A dependency between two txns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dep {
    Ww,
    Wr,
    Rw,
}

impl fmt::Display for Dep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dep::Ww => "ww",
            Dep::Wr => "wr",
            Dep::Rw => "rw",
        })
    }
}

/// Something a serializable store can never show. Txns are named by their index in
/// [`History::txns`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Anomaly {
    /// A cycle of write dependencies: each step `(txn, dep)` leads to the next txn, the
    /// last back to the first.
    G0(Cycle),
    /// A cycle of write and read dependencies.
    G1c(Cycle),
    /// A cycle with exactly one anti-dependency (read skew).
    GSingle(Cycle),
    /// A cycle with two or more anti-dependencies (write skew and its kin).
    G2(Cycle),
    /// `reader` (or the final read, `None`) saw `value`, appended by `writer`, which failed.
    G1a { reader: Option<usize>, key: String, value: u64, writer: usize },
    /// `reader` (or the final read, `None`) saw `value` as the last of `key`, but `writer`
    /// appended another value to `key` after it.
    G1b { reader: Option<usize>, key: String, value: u64, writer: usize },
    /// `reader` (or the final read, `None`) saw a value that no txn appended to `key`.
    Garbage { reader: Option<usize>, key: String, value: u64 },
    /// A read showed `value` twice.
    Duplicate { reader: Option<usize>, key: String, value: u64 },
    /// Two reads of `key` that are not prefixes of one order.
    Incompatible { key: String, a: Vec<u64>, b: Vec<u64> },
    /// `txn` read `key` after appending to it, and its appends were not the end of the list.
    Internal { txn: usize, key: String, read: Vec<u64> },
    /// `writer`'s append of `value` to `key` was acknowledged, and the final read lacks it.
    LostWrite { writer: usize, key: String, value: u64 },
}

impl Anomaly {
    /// The anomaly's name, as Elle and Adya name them.
    pub fn name(&self) -> &'static str {
        match self {
            Anomaly::G0(_) => "G0",
            Anomaly::G1c(_) => "G1c",
            Anomaly::GSingle(_) => "G-single",
            Anomaly::G2(_) => "G2",
            Anomaly::G1a { .. } => "G1a",
            Anomaly::G1b { .. } => "G1b",
            Anomaly::Garbage { .. } => "garbage-read",
            Anomaly::Duplicate { .. } => "duplicate",
            Anomaly::Incompatible { .. } => "incompatible-order",
            Anomaly::Internal { .. } => "internal",
            Anomaly::LostWrite { .. } => "lost-write",
        }
    }
}

/// What the checker found, with the counts a closing note quotes.
#[derive(Debug, Default)]
pub struct Report {
    pub ok: usize,
    pub failed: usize,
    pub info: usize,
    /// `info` txns that some read shows committed.
    pub info_seen_committed: usize,
    /// Dependency edges inferred between committed txns.
    pub edges: usize,
    pub anomalies: Vec<Anomaly>,
}

impl Report {
    /// The anomaly names found, each once, in order.
    pub fn names(&self) -> BTreeSet<&'static str> {
        self.anomalies.iter().map(Anomaly::name).collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} txns ok, {} failed, {} unknown ({} of them seen committed); {} dependencies; {} anomalies",
            self.ok,
            self.failed,
            self.info,
            self.info_seen_committed,
            self.edges,
            self.anomalies.len()
        )?;
        for a in self.anomalies.iter().take(20) {
            write!(f, "\n  {}: {a:?}", a.name())?;
        }
        Ok(())
    }
}

/// Checks a history; see the module doc for what it finds.
pub fn check(history: &History) -> Report {
    let txns = &history.txns;
    let mut report = Report::default();
    for t in txns {
        match t.outcome {
            Outcome::Ok => report.ok += 1,
            Outcome::Fail => report.failed += 1,
            Outcome::Info => report.info += 1,
        }
    }

    // Who appended each value, and each txn's appends per key in order.
    let mut writer: HashMap<(&str, u64), usize> = HashMap::new();
    for (i, t) in txns.iter().enumerate() {
        for m in &t.mops {
            if let Mop::Append(k, v) = m {
                writer.insert((k.as_str(), *v), i);
            }
        }
    }

    // Every read that counts: those of acknowledged txns, and the final reads. An unknown
    // txn's reads are not evidence: it may not have committed, and a read of its own
    // append shows a value that may never have been.
    let mut reads: Vec<(Option<usize>, &str, &[u64])> = Vec::new();
    for (i, t) in txns.iter().enumerate() {
        if t.outcome != Outcome::Ok {
            continue;
        }
        for m in &t.mops {
            if let Mop::Read(k, list) = m {
                reads.push((Some(i), k.as_str(), list.as_slice()));
            }
        }
    }
    for (k, list) in &history.finals {
        reads.push((None, k.as_str(), list.as_slice()));
    }

    // Values that are not there or are there twice; reads of failed txns' values.
    for &(reader, key, list) in &reads {
        let mut seen = BTreeSet::new();
        for &v in list {
            if !seen.insert(v) {
                report.anomalies.push(Anomaly::Duplicate { reader, key: key.into(), value: v });
            }
            match writer.get(&(key, v)) {
                None => report.anomalies.push(Anomaly::Garbage { reader, key: key.into(), value: v }),
                Some(&w) if txns[w].outcome == Outcome::Fail => {
                    report.anomalies.push(Anomaly::G1a { reader, key: key.into(), value: v, writer: w })
                }
                Some(_) => {}
            }
        }
    }

    // The order of each key's versions: its longest read, which every other must prefix.
    let mut order: BTreeMap<&str, &[u64]> = BTreeMap::new();
    for &(_, key, list) in &reads {
        let longest = order.entry(key).or_insert(list);
        if list.len() > longest.len() {
            *longest = list;
        }
    }
    for &(_, key, list) in &reads {
        let longest = order[key];
        if !longest.starts_with(list) {
            let a = longest.to_vec();
            let b = list.to_vec();
            let dup = report.anomalies.iter().any(|x| {
                matches!(x, Anomaly::Incompatible { key: k, a: xa, b: xb } if k == key && *xa == a && *xb == b)
            });
            if !dup {
                report.anomalies.push(Anomaly::Incompatible { key: key.into(), a, b });
            }
        }
    }

    // Which txns committed: the acknowledged ones, and the unknown ones a read shows.
    let mut committed: Vec<bool> = txns.iter().map(|t| t.outcome == Outcome::Ok).collect();
    for (&key, list) in &order {
        for v in list.iter() {
            if let Some(&w) = writer.get(&(key, *v))
                && txns[w].outcome == Outcome::Info
                && !committed[w]
            {
                committed[w] = true;
                report.info_seen_committed += 1;
            }
        }
    }

    // Intermediate reads, and txns that do not see their own appends.
    for (i, t) in txns.iter().enumerate() {
        if !committed[i] {
            continue;
        }
        let mut own: HashMap<&str, Vec<u64>> = HashMap::new();
        for m in &t.mops {
            match m {
                Mop::Append(k, v) => own.entry(k.as_str()).or_default().push(*v),
                Mop::Read(k, list) => {
                    if let Some(mine) = own.get(k.as_str())
                        && !list.ends_with(mine)
                    {
                        report.anomalies.push(Anomaly::Internal {
                            txn: i,
                            key: k.clone(),
                            read: list.clone(),
                        });
                    }
                }
            }
        }
    }
    let mut last_append: HashMap<(usize, &str), u64> = HashMap::new();
    for (i, t) in txns.iter().enumerate() {
        for m in &t.mops {
            if let Mop::Append(k, v) = m {
                last_append.insert((i, k.as_str()), *v);
            }
        }
    }
    for &(reader, key, list) in &reads {
        let Some(&last) = list.last() else { continue };
        let Some(&w) = writer.get(&(key, last)) else { continue };
        if reader == Some(w) {
            continue;
        }
        if last_append.get(&(w, key)).is_some_and(|&l| l != last) {
            report.anomalies.push(Anomaly::G1b { reader, key: key.into(), value: last, writer: w });
        }
    }

    // Lost writes: acknowledged appends the final read lacks.
    for (i, t) in txns.iter().enumerate() {
        if t.outcome != Outcome::Ok {
            continue;
        }
        for m in &t.mops {
            if let Mop::Append(k, v) = m
                && let Some(fin) = history.finals.get(k)
                && !fin.contains(v)
            {
                report.anomalies.push(Anomaly::LostWrite { writer: i, key: k.clone(), value: *v });
            }
        }
    }

    // The dependency graph over committed txns.
    let mut graph = Graph::new(txns.len());
    for (&key, list) in &order {
        for pair in list.windows(2) {
            if let (Some(&a), Some(&b)) = (writer.get(&(key, pair[0])), writer.get(&(key, pair[1])))
                && committed[a]
                && committed[b]
            {
                graph.add(a, b, Dep::Ww);
            }
        }
    }
    for (i, t) in txns.iter().enumerate() {
        if !committed[i] {
            continue;
        }
        for m in &t.mops {
            let Mop::Read(k, list) = m else { continue };
            let key = k.as_str();
            // What the txn saw of others: its list without its own appends at the end.
            let mut seen = list.as_slice();
            while let Some((&last, rest)) = seen.split_last() {
                if writer.get(&(key, last)) == Some(&i) {
                    seen = rest;
                } else {
                    break;
                }
            }
            if let Some(&last) = seen.last()
                && let Some(&w) = writer.get(&(key, last))
                && committed[w]
            {
                graph.add(w, i, Dep::Wr);
            }
            // The version after what it saw, in the key's order, came from someone else.
            if let Some(full) = order.get(key)
                && full.starts_with(seen)
                && let Some(&next) = full.get(seen.len())
                && let Some(&w) = writer.get(&(key, next))
                && committed[w]
            {
                graph.add(i, w, Dep::Rw);
            }
        }
    }
    report.edges = graph.edges();
    report.anomalies.extend(graph.cycles());
    report
}

/// A cycle of dependencies: each step `(txn, dep)` leads to the next txn, the last back to
/// the first.
pub type Cycle = Vec<(usize, Dep)>;

/// A cycle's anomaly, by the edges it takes.
fn named(cycle: Cycle) -> Anomaly {
    let count = |dep: Dep| cycle.iter().filter(|(_, d)| *d == dep).count();
    match (count(Dep::Wr), count(Dep::Rw)) {
        (0, 0) => Anomaly::G0(cycle),
        (_, 0) => Anomaly::G1c(cycle),
        (_, 1) => Anomaly::GSingle(cycle),
        _ => Anomaly::G2(cycle),
    }
}

/// Dependency edges between txns, each edge with the kinds that join its ends.
struct Graph {
    out: Vec<BTreeMap<usize, BTreeSet<Dep>>>,
}

impl Graph {
    fn new(n: usize) -> Graph {
        Graph { out: vec![BTreeMap::new(); n] }
    }

    fn add(&mut self, from: usize, to: usize, dep: Dep) {
        if from != to {
            self.out[from].entry(to).or_default().insert(dep);
        }
    }

    fn edges(&self) -> usize {
        self.out.iter().map(|o| o.len()).sum()
    }

    /// One cycle per strongly connected component, named by the weakest edges it needs:
    /// a component of `ww` edges alone is G0; failing that, of `ww` and `wr` edges G1c;
    /// failing that, a cycle through anti-dependencies is G-single or G2.
    fn cycles(&self) -> Vec<Anomaly> {
        let mut found = Vec::new();
        let mut covered = vec![false; self.out.len()];
        let kinds: [&[Dep]; 3] = [&[Dep::Ww], &[Dep::Ww, Dep::Wr], &[Dep::Ww, Dep::Wr, Dep::Rw]];
        for allowed in kinds {
            for component in self.components(allowed) {
                if component.iter().any(|&t| covered[t]) {
                    continue; // already reported with weaker edges
                }
                if let Some(cycle) = self.cycle_in(&component, allowed) {
                    found.push(named(cycle));
                }
                for &t in &component {
                    covered[t] = true;
                }
            }
        }
        found
    }

    fn step<'a>(&'a self, from: usize, allowed: &'a [Dep]) -> impl Iterator<Item = (usize, Dep)> + 'a {
        self.out[from]
            .iter()
            .filter_map(move |(&to, deps)| deps.iter().find(|d| allowed.contains(d)).map(|&d| (to, d)))
    }

    /// The strongly connected components of more than one txn, over `allowed` edges
    /// (Tarjan's algorithm, without recursion).
    fn components(&self, allowed: &[Dep]) -> Vec<Vec<usize>> {
        let n = self.out.len();
        let mut index = vec![usize::MAX; n];
        let mut low = vec![0; n];
        let mut on_stack = vec![false; n];
        let mut stack = Vec::new();
        let mut next = 0;
        let mut out = Vec::new();
        for root in 0..n {
            if index[root] != usize::MAX || self.out[root].is_empty() {
                continue;
            }
            let mut work: Vec<(usize, Vec<usize>)> = Vec::new();
            let succ = |v: usize| -> Vec<usize> { self.step(v, allowed).map(|(t, _)| t).collect() };
            index[root] = next;
            low[root] = next;
            next += 1;
            stack.push(root);
            on_stack[root] = true;
            work.push((root, succ(root)));
            while let Some((v, todo)) = work.last_mut() {
                let v = *v;
                if let Some(w) = todo.pop() {
                    if index[w] == usize::MAX {
                        index[w] = next;
                        low[w] = next;
                        next += 1;
                        stack.push(w);
                        on_stack[w] = true;
                        work.push((w, succ(w)));
                    } else if on_stack[w] {
                        low[v] = low[v].min(index[w]);
                    }
                    continue;
                }
                work.pop();
                if let Some((parent, _)) = work.last() {
                    low[*parent] = low[*parent].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut component = Vec::new();
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        component.push(w);
                        if w == v {
                            break;
                        }
                    }
                    if component.len() > 1 {
                        component.sort_unstable();
                        out.push(component);
                    }
                }
            }
        }
        out
    }

    /// A shortest cycle through the component's first txn, over `allowed` edges inside it.
    fn cycle_in(&self, component: &[usize], allowed: &[Dep]) -> Option<Cycle> {
        let inside: BTreeSet<usize> = component.iter().copied().collect();
        let start = *component.first()?;
        let mut came: HashMap<usize, (usize, Dep)> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        while let Some(v) = queue.pop_front() {
            for (w, dep) in self.step(v, allowed) {
                if !inside.contains(&w) {
                    continue;
                }
                if w == start {
                    let mut cycle = vec![(v, dep)];
                    let mut at = v;
                    while at != start {
                        let (prev, d) = came[&at];
                        cycle.push((prev, d));
                        at = prev;
                    }
                    cycle.reverse();
                    return Some(cycle);
                }
                if let std::collections::hash_map::Entry::Vacant(e) = came.entry(w) {
                    e.insert((v, dep));
                    queue.push_back(w);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(k: &str, v: u64) -> Mop {
        Mop::Append(k.into(), v)
    }

    fn read(k: &str, list: &[u64]) -> Mop {
        Mop::Read(k.into(), list.to_vec())
    }

    fn ok(mops: Vec<Mop>) -> Txn {
        Txn { process: 0, mops, outcome: Outcome::Ok, span: (0.0, 0.0) }
    }

    fn history(txns: Vec<Txn>, finals: &[(&str, &[u64])]) -> History {
        History { txns, finals: finals.iter().map(|(k, l)| (k.to_string(), l.to_vec())).collect() }
    }

    fn names(h: &History) -> Vec<&'static str> {
        check(h).names().into_iter().collect()
    }

    #[test]
    fn a_serial_history_has_no_anomaly() {
        let h = history(
            vec![
                ok(vec![read("x", &[]), app("x", 1)]),
                ok(vec![read("x", &[1]), app("x", 2), read("y", &[]), app("y", 3)]),
                ok(vec![read("x", &[1, 2]), read("y", &[3])]),
                Txn { process: 1, mops: vec![app("x", 9)], outcome: Outcome::Fail, span: (0.0, 0.0) },
                Txn { process: 1, mops: vec![app("y", 8)], outcome: Outcome::Info, span: (0.0, 0.0) },
            ],
            &[("x", &[1, 2]), ("y", &[3])],
        );
        let report = check(&h);
        assert!(report.anomalies.is_empty(), "{report}");
        assert_eq!((report.ok, report.failed, report.info), (3, 1, 1));
        assert_eq!(report.edges, 2, "{report}"); // T0 -> T1 -> T2
    }

    #[test]
    fn a_write_cycle_is_g0() {
        // T0 and T1 both append to x and y, in opposite orders.
        let h = history(
            vec![ok(vec![app("x", 1), app("y", 1)]), ok(vec![app("x", 2), app("y", 2)])],
            &[("x", &[1, 2]), ("y", &[2, 1])],
        );
        assert_eq!(names(&h), ["G0"]);
        let Anomaly::G0(cycle) = &check(&h).anomalies[0] else { panic!() };
        assert_eq!(cycle.len(), 2);
    }

    #[test]
    fn reading_a_failed_append_is_g1a() {
        let h = history(
            vec![
                Txn { process: 0, mops: vec![app("x", 1)], outcome: Outcome::Fail, span: (0.0, 0.0) },
                ok(vec![read("x", &[1])]),
            ],
            &[("x", &[])],
        );
        let got = names(&h);
        assert!(got.contains(&"G1a"), "{got:?}");
    }

    #[test]
    fn reading_a_value_its_txn_overwrote_is_g1b() {
        let h =
            history(vec![ok(vec![app("x", 1), app("x", 2)]), ok(vec![read("x", &[1])])], &[("x", &[1, 2])]);
        // It is also a cycle: the reader saw T0's first append and missed its second.
        assert_eq!(names(&h), ["G-single", "G1b"]);
    }

    #[test]
    fn a_cycle_of_writes_and_reads_is_g1c() {
        // Each txn appends, and reads the other's append: each saw the other first.
        let h = history(
            vec![ok(vec![app("x", 1), read("y", &[2])]), ok(vec![app("y", 2), read("x", &[1])])],
            &[("x", &[1]), ("y", &[2])],
        );
        assert_eq!(names(&h), ["G1c"]);
    }

    #[test]
    fn write_skew_is_g2() {
        // Each reads the key the other appends to, and sees it empty.
        let h = history(
            vec![ok(vec![read("x", &[]), app("y", 1)]), ok(vec![read("y", &[]), app("x", 2)])],
            &[("x", &[2]), ("y", &[1])],
        );
        assert_eq!(names(&h), ["G2"]);
    }

    #[test]
    fn read_skew_is_g_single() {
        // T1 appends to x and y; T2 sees its y but not its x.
        let h = history(
            vec![ok(vec![app("x", 1), app("y", 2)]), ok(vec![read("x", &[]), read("y", &[2])])],
            &[("x", &[1]), ("y", &[2])],
        );
        assert_eq!(names(&h), ["G-single"]);
    }

    #[test]
    fn an_acknowledged_append_missing_at_the_end_is_lost() {
        let h = history(vec![ok(vec![app("x", 1)]), ok(vec![app("x", 2)])], &[("x", &[2])]);
        let report = check(&h);
        assert_eq!(
            report.anomalies,
            [Anomaly::LostWrite { writer: 0, key: "x".into(), value: 1 }],
            "{report}"
        );
    }

    #[test]
    fn unknown_outcomes_may_go_either_way_and_count_when_seen() {
        let h = history(
            vec![
                Txn { process: 0, mops: vec![app("x", 1)], outcome: Outcome::Info, span: (0.0, 0.0) },
                Txn { process: 0, mops: vec![app("x", 2)], outcome: Outcome::Info, span: (0.0, 0.0) },
                ok(vec![read("x", &[1])]),
            ],
            &[("x", &[1])],
        );
        let report = check(&h);
        assert!(report.anomalies.is_empty(), "{report}");
        assert_eq!(report.info_seen_committed, 1);
    }

    #[test]
    fn an_unknown_txn_reading_its_own_append_is_no_evidence() {
        // T0's commit answer was lost and it did not commit; it had read its own append.
        let h = history(
            vec![
                Txn {
                    process: 0,
                    mops: vec![read("x", &[1]), app("x", 2), read("x", &[1, 2])],
                    outcome: Outcome::Info,
                    span: (0.0, 0.0),
                },
                ok(vec![app("x", 1)]),
                ok(vec![read("x", &[1]), app("x", 3)]),
            ],
            &[("x", &[1, 3])],
        );
        let report = check(&h);
        assert!(report.anomalies.is_empty(), "{report}");
    }

    #[test]
    fn reads_no_single_order_explains_are_incompatible() {
        let h = history(
            vec![
                ok(vec![app("x", 1)]),
                ok(vec![app("x", 2)]),
                ok(vec![read("x", &[1])]),
                ok(vec![read("x", &[2])]),
            ],
            &[("x", &[1, 2])],
        );
        assert!(names(&h).contains(&"incompatible-order"), "{:?}", names(&h));
    }

    #[test]
    fn duplicates_garbage_and_blind_own_reads_are_named() {
        let h = history(
            vec![
                ok(vec![app("x", 1), read("x", &[])]),
                ok(vec![read("x", &[1, 1])]),
                ok(vec![read("y", &[7])]),
            ],
            &[("x", &[1]), ("y", &[])],
        );
        let got = names(&h);
        for want in ["duplicate", "garbage-read", "internal"] {
            assert!(got.contains(&want), "{want} in {got:?}");
        }
    }

    #[test]
    fn a_long_cycle_is_found_through_many_txns() {
        // T0 -> T1 -> ... -> T99 by ww on x, and T99 -> T0 by ww on y.
        let mut txns: Vec<Txn> = (0..100).map(|i| ok(vec![app("x", i)])).collect();
        txns[0].mops.push(app("y", 1000));
        txns[99].mops.push(app("y", 999));
        let h = history(txns, &[("x", &(0..100).collect::<Vec<_>>()), ("y", &[999, 1000])]);
        let report = check(&h);
        assert_eq!(report.names().into_iter().collect::<Vec<_>>(), ["G0"], "{report}");
        let Anomaly::G0(cycle) = &report.anomalies[0] else { panic!() };
        assert_eq!(cycle.len(), 100);
    }
}
