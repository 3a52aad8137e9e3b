//! The heatmap's model, free of the browser: conflict and lock-wait events bucketed by time
//! (x) and by row (y): a pointer-prefix group, the way TiDB's Key Visualizer groups key
//! ranges, or the partition that holds the pointer, or the cluster member that coordinated
//! the txn ([`Rows`]). The busiest rows get their own; the rest share one, so a keyspace of
//! thousands of pointers stays a readable number of rows.

use std::collections::{BTreeMap, HashMap};

/// What the heatmap keeps of one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub seq: u64,
    pub time_ms: f64,
    pub conflict: bool,
    pub ptr: String,
    pub txn: String,
    pub trace_id: String,
    /// The holder (lock) or winner (commit) on the other side.
    pub other_txn: String,
    pub other_trace_id: String,
    pub winner_version: Option<u64>,
    /// The partition holding the pointer, as the node named it.
    pub partition: Option<u32>,
    /// The member that coordinated the txn (on a merged stream).
    pub node: Option<u64>,
}

/// What the heatmap's rows stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// The pointer's first `n` segments ([`group_of`]).
    Prefix(usize),
    /// The partition that holds the pointer.
    Partition,
    /// The member whose txn it was.
    Node,
}

/// The row of an event whose stream named no member: the one coordinator of a single
/// node, or of a cluster whose one group's leader runs every txn.
pub const COORDINATOR: &str = "the coordinator";

impl Rows {
    /// From the row picker's value: a segment count, `partition` or `node`.
    pub fn parse(value: &str) -> Option<Rows> {
        match value {
            "partition" => Some(Rows::Partition),
            "node" => Some(Rows::Node),
            n => n.parse().ok().filter(|n| *n > 0).map(Rows::Prefix),
        }
    }

    /// The label of `hit`'s row.
    pub fn label(self, hit: &Hit) -> String {
        match self {
            Rows::Prefix(depth) => group_of(&hit.ptr, depth),
            Rows::Partition => match hit.partition {
                Some(p) => format!("partition {p}"),
                None => "partition ?".to_string(),
            },
            Rows::Node => match hit.node {
                Some(n) => format!("node {n}"),
                None => COORDINATOR.to_string(),
            },
        }
    }
}

/// The row label that collects every group beyond the busiest ones.
pub const OTHER: &str = "(other)";

/// The group of a pointer: its first `depth` segments, split at `/` or `:`.
pub fn group_of(ptr: &str, depth: usize) -> String {
    let mut end = ptr.len();
    let mut seen = 0;
    for (i, c) in ptr.char_indices() {
        if c == '/' || c == ':' {
            seen += 1;
            if seen == depth {
                end = i + 1;
                break;
            }
        }
    }
    ptr[..end].to_string()
}

/// One cell: counts of conflicts and lock waits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cell {
    pub conflicts: u32,
    pub waits: u32,
}

impl Cell {
    pub fn total(&self) -> u32 {
        self.conflicts + self.waits
    }
}

/// The grid to draw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grid {
    /// Row labels, busiest first; [`OTHER`] last when some groups were folded.
    pub rows: Vec<String>,
    /// Index of the first (oldest) column's bucket.
    pub first_bucket: i64,
    pub columns: usize,
    /// Non-empty cells: (row, column) → counts.
    pub cells: BTreeMap<(usize, usize), Cell>,
    pub max: u32,
}

/// Buckets `hits` into `columns` buckets of `bucket_ms` ending with the one holding
/// `now_ms`, and at most `max_rows` rows.
pub fn grid(hits: &[Hit], now_ms: f64, bucket_ms: f64, columns: usize, rows: Rows, max_rows: usize) -> Grid {
    let last = (now_ms / bucket_ms).floor() as i64;
    let first = last - columns as i64 + 1;
    let mut per_group: HashMap<String, Vec<(usize, bool)>> = HashMap::new();
    for h in hits {
        let b = (h.time_ms / bucket_ms).floor() as i64;
        if b < first || b > last {
            continue;
        }
        per_group.entry(rows.label(h)).or_default().push(((b - first) as usize, h.conflict));
    }
    let mut groups: Vec<(String, Vec<(usize, bool)>)> = per_group.into_iter().collect();
    // Conflicts weigh more than waits when choosing which groups get their own row.
    let weight = |v: &Vec<(usize, bool)>| v.iter().map(|(_, c)| if *c { 4u64 } else { 1 }).sum::<u64>();
    groups.sort_by(|a, b| weight(&b.1).cmp(&weight(&a.1)).then_with(|| a.0.cmp(&b.0)));
    let fold = groups.len() > max_rows;
    let keep = if fold { max_rows.saturating_sub(1) } else { groups.len() };
    let mut g = Grid { first_bucket: first, columns, ..Grid::default() };
    for (i, (name, entries)) in groups.into_iter().enumerate() {
        let row = if i < keep {
            g.rows.push(name);
            i
        } else {
            if g.rows.len() == keep {
                g.rows.push(OTHER.to_string());
            }
            keep
        };
        for (col, conflict) in entries {
            let cell = g.cells.entry((row, col)).or_default();
            if conflict {
                cell.conflicts += 1;
            } else {
                cell.waits += 1;
            }
            g.max = g.max.max(cell.total());
        }
    }
    g
}

/// The hits of the cell of row `label` and time bucket `bucket`, newest first. `rows` are
/// the grid's row labels, which say what [`OTHER`] holds.
pub fn hits_in<'a>(
    hits: &'a [Hit],
    rows: &[String],
    label: &str,
    bucket: i64,
    bucket_ms: f64,
    by: Rows,
) -> Vec<&'a Hit> {
    let mut out: Vec<&Hit> = hits
        .iter()
        .filter(|h| (h.time_ms / bucket_ms).floor() as i64 == bucket)
        .filter(|h| {
            let g = by.label(h);
            if label == OTHER { !rows.iter().any(|r| r == &g) } else { g == label }
        })
        .collect();
    // Newest first: by time, since members of a cluster number their events apart.
    out.sort_by(|a, b| b.time_ms.total_cmp(&a.time_ms).then(b.seq.cmp(&a.seq)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(seq: u64, t: f64, ptr: &str, conflict: bool) -> Hit {
        Hit {
            seq,
            time_ms: t,
            conflict,
            ptr: ptr.into(),
            txn: format!("t{seq}"),
            trace_id: String::new(),
            other_txn: String::new(),
            other_trace_id: String::new(),
            winner_version: None,
            partition: Some((seq % 4) as u32),
            node: (seq > 1).then_some(seq % 3 + 1),
        }
    }

    #[test]
    fn groups_by_leading_segments() {
        assert_eq!(group_of("acct/42/balance", 1), "acct/");
        assert_eq!(group_of("acct/42/balance", 2), "acct/42/");
        assert_eq!(group_of("queue:jobs", 1), "queue:");
        assert_eq!(group_of("plain", 1), "plain");
        assert_eq!(group_of("a/b", 3), "a/b");
    }

    #[test]
    fn buckets_by_time_and_folds_quiet_groups() {
        let mut hits = vec![hit(1, 10_500.0, "hot/1", true), hit(2, 10_900.0, "hot/2", false)];
        hits.push(hit(3, 9_100.0, "warm/1", true));
        for i in 0..5 {
            hits.push(hit(10 + i, 8_000.0, &format!("cold{i}/x"), false));
        }
        hits.push(hit(99, 1_000.0, "hot/1", true)); // before the window
        let g = grid(&hits, 10_999.0, 1000.0, 3, Rows::Prefix(1), 3);
        assert_eq!(g.first_bucket, 8);
        assert_eq!(g.rows, vec!["hot/".to_string(), "warm/".to_string(), OTHER.to_string()]);
        assert_eq!(g.cells[&(0, 2)], Cell { conflicts: 1, waits: 1 });
        assert_eq!(g.cells[&(1, 1)], Cell { conflicts: 1, waits: 0 });
        assert_eq!(g.cells[&(2, 0)], Cell { conflicts: 0, waits: 5 });
        assert_eq!(g.max, 5);
        let in_cell: Vec<u64> =
            hits_in(&hits, &g.rows, "hot/", 10, 1000.0, Rows::Prefix(1)).iter().map(|h| h.seq).collect();
        assert_eq!(in_cell, vec![2, 1]);
        assert_eq!(hits_in(&hits, &g.rows, OTHER, 8, 1000.0, Rows::Prefix(1)).len(), 5);
    }

    #[test]
    fn rows_by_partition_or_by_member() {
        assert_eq!(Rows::parse("2"), Some(Rows::Prefix(2)));
        assert_eq!(Rows::parse("partition"), Some(Rows::Partition));
        assert_eq!(Rows::parse("node"), Some(Rows::Node));
        assert_eq!(Rows::parse("0"), None);
        assert_eq!(Rows::parse("nodes"), None);
        // Seqs 1..=6 in one bucket: partitions seq % 4, members seq % 3 + 1 (seq 1 unnamed).
        let hits: Vec<Hit> = (1..=6).map(|i| hit(i, 10_100.0, &format!("k/{i}"), i % 2 == 0)).collect();
        let g = grid(&hits, 10_999.0, 1000.0, 2, Rows::Partition, 10);
        let mut rows = g.rows.clone();
        rows.sort();
        assert_eq!(rows, ["partition 0", "partition 1", "partition 2", "partition 3"]);
        let g = grid(&hits, 10_999.0, 1000.0, 2, Rows::Node, 10);
        let mut rows = g.rows.clone();
        rows.sort();
        assert_eq!(rows, ["node 1", "node 2", "node 3", COORDINATOR]);
        let of_2: Vec<u64> =
            hits_in(&hits, &g.rows, "node 2", 10, 1000.0, Rows::Node).iter().map(|h| h.seq).collect();
        assert_eq!(of_2, vec![4]);
        let of_1: Vec<u64> =
            hits_in(&hits, &g.rows, "node 1", 10, 1000.0, Rows::Node).iter().map(|h| h.seq).collect();
        assert_eq!(of_1, vec![6, 3]);
    }
}
