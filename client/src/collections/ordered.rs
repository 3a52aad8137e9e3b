//! An ordered map: a B+tree whose nodes are pointers (see the module docs for the layout).
//!
//! Every node lives in its own pointer. The root is always `name/t/root`; other nodes are
//! `name/t/<16 hex digits>`, named at random when a split makes them. A leaf holds up to
//! `fanout` sorted keys with their values; a branch holds up to `fanout` children and the
//! separator keys between them (child `i` holds the keys in `[keys[i-1], keys[i])`).
//!
//! - **Insert** descends from the root reading one node per level, writes the leaf, and
//!   splits a full node in two, pushing its middle key up; a full root moves into two new
//!   children, so the tree grows at the root and every leaf stays at the same depth.
//! - **Remove** writes the leaf; an emptied node is deleted and unlinked from its parent,
//!   and a root left with one child takes that child's place. Half-empty nodes are not
//!   merged (as in PostgreSQL's B-tree), so the height never exceeds that of the peak size.
//! - **Range scans** walk only the subtrees that overlap the range, depth first, in order.
//!
//! Contention: two writers conflict only when they write the same leaf, or when one splits
//! or unlinks a node the other read on its way down. Branches change only on splits and
//! unlinks (about once per `fanout / 2` inserts into a leaf), so writers of different
//! leaves almost never meet. The size is a striped counter, `name/len`.

use std::ops::Bound;

use rand::Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Counter;
use crate::{Error, Txn};

/// A node of the tree, as stored in its pointer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Node {
    Leaf { keys: Vec<String>, vals: Vec<Value> },
    Branch { keys: Vec<String>, kids: Vec<String> },
}

impl Node {
    fn empty() -> Self {
        Node::Leaf { keys: Vec::new(), vals: Vec::new() }
    }

    /// Entries of a leaf, children of a branch.
    fn width(&self) -> usize {
        match self {
            Node::Leaf { keys, .. } => keys.len(),
            Node::Branch { kids, .. } => kids.len(),
        }
    }

    /// Splits a node that is over full into a left and a right half and the key that
    /// separates them (the right half's smallest key).
    fn split(self) -> (Node, String, Node) {
        match self {
            Node::Leaf { mut keys, mut vals } => {
                let mid = keys.len() / 2;
                let (rk, rv) = (keys.split_off(mid), vals.split_off(mid));
                let sep = rk[0].clone();
                (Node::Leaf { keys, vals }, sep, Node::Leaf { keys: rk, vals: rv })
            }
            Node::Branch { mut keys, mut kids } => {
                let mid = kids.len() / 2;
                let rkids = kids.split_off(mid);
                let mut rkeys = keys.split_off(mid - 1);
                let sep = rkeys.remove(0);
                (Node::Branch { keys, kids }, sep, Node::Branch { keys: rkeys, kids: rkids })
            }
        }
    }
}

/// The shape of a tree, as [`OrderedMap::check`] measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeStats {
    /// Levels, the leaves included (1: the root is a leaf).
    pub height: usize,
    /// Nodes, that is pointers, in the tree.
    pub nodes: usize,
    pub entries: usize,
}

/// A map from string keys (in byte order) to JSON values, with range scans.
#[derive(Debug, Clone)]
pub struct OrderedMap {
    name: String,
    fanout: usize,
    len: Counter,
}

/// One step of a descent: a branch's pointer, the branch, and which child was taken.
type Step = (String, Node, usize);

impl OrderedMap {
    /// The map `name` with nodes of up to 64 entries.
    pub fn new(name: impl Into<String>) -> Self {
        Self::with_fanout(name, 64)
    }

    /// The map `name` with nodes of up to `fanout` (at least 3) entries. Every user of a
    /// map should use the same fanout; a mix stays correct but splits at either size.
    pub fn with_fanout(name: impl Into<String>, fanout: usize) -> Self {
        let name = name.into();
        Self { len: Counter::new(format!("{name}/len"), 8), name, fanout: fanout.max(3) }
    }

    fn root(&self) -> String {
        format!("{}/t/root", self.name)
    }

    fn fresh(&self) -> String {
        format!("{}/t/{:016x}", self.name, rand::rng().random::<u64>())
    }

    async fn node(&self, tx: &Txn, ptr: &str) -> Result<Node, Error> {
        match tx.get::<Node>(ptr).await? {
            Some(n) => Ok(n),
            None if ptr == self.root() => Ok(Node::empty()),
            None => Err(Error::Invariant(format!("{}: node {ptr} is linked but absent", self.name))),
        }
    }

    /// Reads from the root down to the leaf that holds (or would hold) `key`.
    async fn descend(&self, tx: &Txn, key: &str) -> Result<(Vec<Step>, String, Node), Error> {
        let mut path = Vec::new();
        let mut ptr = self.root();
        let mut node = self.node(tx, &ptr).await?;
        while let Node::Branch { keys, kids } = &node {
            let i = keys.partition_point(|s| s.as_str() <= key);
            let next = kids
                .get(i)
                .cloned()
                .ok_or_else(|| Error::Invariant(format!("{}: branch {ptr} has no child {i}", self.name)))?;
            let child = self.node(tx, &next).await?;
            path.push((std::mem::replace(&mut ptr, next), std::mem::replace(&mut node, child), i));
        }
        Ok((path, ptr, node))
    }

    pub async fn get<T: DeserializeOwned>(&self, tx: &Txn, key: &str) -> Result<Option<T>, Error> {
        let (_, _, leaf) = self.descend(tx, key).await?;
        let Node::Leaf { keys, vals } = leaf else { unreachable!("descend ends at a leaf") };
        match keys.binary_search_by(|k| k.as_str().cmp(key)) {
            Ok(j) => Ok(Some(serde_json::from_value(vals[j].clone())?)),
            Err(_) => Ok(None),
        }
    }

    /// Sets `key` to `value`; returns whether the key was new.
    pub async fn insert<T: Serialize + ?Sized>(&self, tx: &Txn, key: &str, value: &T) -> Result<bool, Error> {
        let value = serde_json::to_value(value)?;
        let (mut path, ptr, mut leaf) = self.descend(tx, key).await?;
        let Node::Leaf { keys, vals } = &mut leaf else { unreachable!("descend ends at a leaf") };
        match keys.binary_search_by(|k| k.as_str().cmp(key)) {
            Ok(j) => {
                vals[j] = value;
                tx.put(&ptr, &leaf).await?;
                return Ok(false);
            }
            Err(j) => {
                keys.insert(j, key.to_string());
                vals.insert(j, value);
            }
        }
        self.len.add(tx, 1).await?;
        // Write the changed node; split it while it is over full, carrying the separator
        // and the new right half up to the parent.
        let (mut ptr, mut node) = (ptr, leaf);
        loop {
            if node.width() <= self.fanout {
                return tx.put(&ptr, &node).await.map(|_| true);
            }
            let (left, sep, right) = node.split();
            let right_ptr = self.fresh();
            tx.put(&right_ptr, &right).await?;
            let Some((parent_ptr, mut parent, i)) = path.pop() else {
                // The root: its halves move down into two new nodes.
                let left_ptr = self.fresh();
                tx.put(&left_ptr, &left).await?;
                let root = Node::Branch { keys: vec![sep], kids: vec![left_ptr, right_ptr] };
                return tx.put(&ptr, &root).await.map(|_| true);
            };
            tx.put(&ptr, &left).await?;
            let Node::Branch { keys, kids } = &mut parent else { unreachable!("a path holds branches") };
            keys.insert(i, sep);
            kids.insert(i + 1, right_ptr);
            (ptr, node) = (parent_ptr, parent);
        }
    }

    /// Removes `key`; returns whether it was there.
    pub async fn remove(&self, tx: &Txn, key: &str) -> Result<bool, Error> {
        let (mut path, ptr, mut leaf) = self.descend(tx, key).await?;
        let Node::Leaf { keys, vals } = &mut leaf else { unreachable!("descend ends at a leaf") };
        let Ok(j) = keys.binary_search_by(|k| k.as_str().cmp(key)) else { return Ok(false) };
        keys.remove(j);
        vals.remove(j);
        self.len.add(tx, -1).await?;
        // Unlink emptied nodes up the path (the root stays, even when empty).
        let (mut ptr, mut node) = (ptr, leaf);
        while node.width() == 0 {
            let Some((parent_ptr, mut parent, i)) = path.pop() else { break };
            tx.delete(&ptr).await?;
            let Node::Branch { keys, kids } = &mut parent else { unreachable!("a path holds branches") };
            kids.remove(i);
            if !keys.is_empty() {
                keys.remove(i.saturating_sub(1));
            }
            (ptr, node) = (parent_ptr, parent);
        }
        if !path.is_empty() {
            return tx.put(&ptr, &node).await.map(|_| true);
        }
        // `node` is the root: a branch left with one child (or none) gives way to it.
        loop {
            node = match node {
                Node::Branch { kids, .. } if kids.is_empty() => Node::empty(),
                Node::Branch { kids, .. } if kids.len() == 1 => {
                    let child = self.node(tx, &kids[0]).await?;
                    tx.delete(&kids[0]).await?;
                    child
                }
                other => break tx.put(&ptr, &other).await.map(|_| true),
            };
        }
    }

    /// Entries with keys in `(lo, hi)`, in key order, at most `limit`.
    pub async fn range<T: DeserializeOwned>(
        &self,
        tx: &Txn,
        lo: Bound<&str>,
        hi: Bound<&str>,
        limit: usize,
    ) -> Result<Vec<(String, T)>, Error> {
        let above = |k: &str| match lo {
            Bound::Included(l) => k >= l,
            Bound::Excluded(l) => k > l,
            Bound::Unbounded => true,
        };
        let below = |k: &str| match hi {
            Bound::Included(h) => k <= h,
            Bound::Excluded(h) => k < h,
            Bound::Unbounded => true,
        };
        let mut out = Vec::new();
        // Depth first, right children pushed first so the leftmost pops next.
        let mut stack = vec![self.root()];
        while let Some(ptr) = stack.pop() {
            match self.node(tx, &ptr).await? {
                Node::Leaf { keys, vals } => {
                    for (k, v) in keys.into_iter().zip(vals) {
                        if !below(&k) || out.len() >= limit {
                            return Ok(out);
                        }
                        if above(&k) {
                            out.push((k, serde_json::from_value(v)?));
                        }
                    }
                }
                Node::Branch { keys, kids } => {
                    // Child i holds [keys[i-1], keys[i]): skip those wholly outside.
                    let first = match lo {
                        Bound::Included(l) | Bound::Excluded(l) => keys.partition_point(|s| s.as_str() <= l),
                        Bound::Unbounded => 0,
                    };
                    let last = match hi {
                        Bound::Included(h) => keys.partition_point(|s| s.as_str() <= h),
                        Bound::Excluded(h) => keys.partition_point(|s| s.as_str() < h),
                        Bound::Unbounded => keys.len(),
                    };
                    stack.extend(kids.get(first..=last.max(first)).unwrap_or_default().iter().rev().cloned());
                }
            }
        }
        Ok(out)
    }

    /// Every entry in key order.
    pub async fn entries<T: DeserializeOwned>(&self, tx: &Txn) -> Result<Vec<(String, T)>, Error> {
        self.range(tx, Bound::Unbounded, Bound::Unbounded, usize::MAX).await
    }

    /// Keys in the map (a striped counter kept with every insert and removal).
    pub async fn len(&self, tx: &Txn) -> Result<i64, Error> {
        self.len.get(tx).await
    }

    /// Walks the whole tree and checks that it is a B+tree: keys sorted and inside their
    /// separators, every leaf at one depth, no node over `fanout` or empty (the root
    /// aside), and as many entries as [`OrderedMap::len`] says.
    pub async fn check(&self, tx: &Txn) -> Result<TreeStats, Error> {
        let bad = |what: String| Error::Invariant(format!("{}: {what}", self.name));
        let mut stats = TreeStats { height: 0, nodes: 0, entries: 0 };
        let mut leaf_depth = None;
        // (pointer, depth, lower bound, upper bound)
        let mut stack: Vec<(String, usize, Option<String>, Option<String>)> =
            vec![(self.root(), 1, None, None)];
        while let Some((ptr, depth, lo, hi)) = stack.pop() {
            let node = self.node(tx, &ptr).await?;
            stats.nodes += 1;
            if node.width() > self.fanout {
                return Err(bad(format!("{ptr} has {} entries, over {}", node.width(), self.fanout)));
            }
            if node.width() == 0 && ptr != self.root() {
                return Err(bad(format!("{ptr} is empty but linked")));
            }
            let keys = match &node {
                Node::Leaf { keys, .. } | Node::Branch { keys, .. } => keys,
            };
            if keys.windows(2).any(|w| w[0] >= w[1]) {
                return Err(bad(format!("{ptr} has keys out of order")));
            }
            let inside = |k: &String| lo.as_ref().is_none_or(|l| k >= l) && hi.as_ref().is_none_or(|h| k < h);
            if let Some(k) = keys.iter().find(|k| !inside(k)) {
                return Err(bad(format!("{ptr} holds {k:?} outside [{lo:?}, {hi:?})")));
            }
            match node {
                Node::Leaf { keys, vals } => {
                    if keys.len() != vals.len() {
                        return Err(bad(format!("{ptr} has {} keys and {} values", keys.len(), vals.len())));
                    }
                    if *leaf_depth.get_or_insert(depth) != depth {
                        return Err(bad(format!("leaf {ptr} at depth {depth}, another at {leaf_depth:?}")));
                    }
                    stats.entries += keys.len();
                }
                Node::Branch { keys, kids } => {
                    if kids.len() != keys.len() + 1 {
                        return Err(bad(format!(
                            "{ptr} has {} keys for {} children",
                            keys.len(),
                            kids.len()
                        )));
                    }
                    for (i, kid) in kids.into_iter().enumerate() {
                        let klo = if i == 0 { lo.clone() } else { Some(keys[i - 1].clone()) };
                        let khi = keys.get(i).cloned().or_else(|| hi.clone());
                        stack.push((kid, depth + 1, klo, khi));
                    }
                }
            }
        }
        stats.height = leaf_depth.unwrap_or(1);
        let len = self.len(tx).await?;
        if len != stats.entries as i64 {
            return Err(bad(format!("the size counter says {len} but the tree holds {}", stats.entries)));
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(keys: &[&str]) -> Node {
        Node::Leaf {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            vals: keys.iter().map(|k| Value::from(*k)).collect(),
        }
    }

    #[test]
    fn a_leaf_splits_at_its_middle_key() {
        let (l, sep, r) = leaf(&["a", "b", "c", "d", "e"]).split();
        assert_eq!((l, sep.as_str(), r), (leaf(&["a", "b"]), "c", leaf(&["c", "d", "e"])));
    }

    #[test]
    fn a_branch_split_pushes_its_middle_separator_up() {
        let b = Node::Branch {
            keys: ["b", "c", "d", "e"].map(String::from).to_vec(),
            kids: ["1", "2", "3", "4", "5"].map(String::from).to_vec(),
        };
        let (l, sep, r) = b.split();
        assert_eq!(sep, "c");
        assert_eq!(l, Node::Branch { keys: vec!["b".into()], kids: vec!["1".into(), "2".into()] });
        assert_eq!(
            r,
            Node::Branch {
                keys: vec!["d".into(), "e".into()],
                kids: vec!["3".into(), "4".into(), "5".into()]
            }
        );
    }
}
