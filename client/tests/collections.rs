//! Collections under concurrency against a real node: 8+ clients, thousands of operations,
//! no lost or duplicated item, and every invariant held at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use restm_client::collections::{Counter, Queue};
use restm_client::{Client, Error};
use restm_tests::Node;

#[tokio::test]
async fn a_striped_counter_loses_no_increment_under_contention() {
    let node = Node::start();
    let c = Client::new(&node.base).unwrap();
    let counter = Counter::new("hits", 8);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, counter) = (c.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..250 {
                let counter = counter.clone();
                c.transact(move |tx| {
                    let counter = counter.clone();
                    async move { counter.add(&tx, 1).await }
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = c.read_only(|tx| async move { counter.get(&tx).await }).await.unwrap();
    assert_eq!(total, 2000);
}

#[tokio::test]
async fn a_queue_with_8_producers_and_8_consumers_delivers_every_item_once_in_fifo_order() {
    let node = Node::start();
    let c = Client::new(&node.base).unwrap();
    let q = Queue::new("jobs");
    const PRODUCERS: u64 = 8;
    const EACH: u64 = 125;
    const TOTAL: u64 = PRODUCERS * EACH;
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let (c, q) = (c.clone(), q.clone());
        producers.push(tokio::spawn(async move {
            for k in 0..EACH {
                let q = q.clone();
                c.transact(move |tx| {
                    let q = q.clone();
                    async move { q.push(&tx, &(p, k)).await }
                })
                .await
                .unwrap();
            }
        }));
    }
    let taken = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for _ in 0..8 {
        let (c, q, taken) = (c.clone(), q.clone(), taken.clone());
        consumers.push(tokio::spawn(async move {
            let mut got: Vec<(u64, (u64, u64))> = Vec::new();
            while taken.load(Ordering::SeqCst) < TOTAL {
                let q = q.clone();
                let popped = c
                    .transact(move |tx| {
                        let q = q.clone();
                        async move { q.pop::<(u64, u64)>(&tx).await }
                    })
                    .await
                    .unwrap();
                match popped {
                    Some(item) => {
                        taken.fetch_add(1, Ordering::SeqCst);
                        got.push(item);
                    }
                    None => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
            got
        }));
    }
    for p in producers {
        p.await.unwrap();
    }
    let mut all: Vec<(u64, (u64, u64))> = Vec::new();
    for cons in consumers {
        all.extend(cons.await.unwrap());
    }
    // Nothing lost, nothing twice: every index and every item exactly once.
    assert_eq!(all.len() as u64, TOTAL);
    let indices: BTreeSet<u64> = all.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, (0..TOTAL).collect());
    let items: BTreeSet<(u64, u64)> = all.iter().map(|(_, it)| *it).collect();
    assert_eq!(items.len() as u64, TOTAL);
    // FIFO: each producer's items got increasing indices, in the order it pushed them.
    let mut by_producer: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for (i, (p, k)) in &all {
        by_producer.entry(*p).or_default().push((*k, *i));
    }
    for (p, mut seq) in by_producer {
        seq.sort();
        assert!(seq.windows(2).all(|w| w[0].1 < w[1].1), "producer {p} out of order: {seq:?}");
    }
    let empty = c.read_only(|tx| async move { q.is_empty(&tx).await }).await.unwrap();
    assert!(empty);
}

#[tokio::test]
async fn collections_compose_in_one_transaction() {
    let node = Node::start();
    let c = Client::new(&node.base).unwrap();
    let (q, n) = (Queue::new("outbox"), Counter::new("sent", 4));
    // Both or neither: an error after both operations leaves no trace of either.
    let (q2, n2) = (q.clone(), n.clone());
    let err = c
        .transact(move |tx| {
            let (q, n) = (q2.clone(), n2.clone());
            async move {
                q.push(&tx, "mail").await?;
                n.add(&tx, 1).await?;
                Err::<(), _>(Error::User("boom".into()))
            }
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::User(_)));
    let (q2, n2) = (q.clone(), n.clone());
    let state = c.read_only(|tx| async move { Ok((q2.len(&tx).await?, n2.get(&tx).await?)) }).await.unwrap();
    assert_eq!(state, (0, 0));
    let (q2, n2) = (q.clone(), n.clone());
    c.transact(move |tx| {
        let (q, n) = (q2.clone(), n2.clone());
        async move {
            q.push(&tx, "mail").await?;
            n.add(&tx, 1).await
        }
    })
    .await
    .unwrap();
    let (q2, n2) = (q.clone(), n.clone());
    let state = c
        .read_only(|tx| async move { Ok((q2.peek::<String>(&tx).await?, n2.get(&tx).await?)) })
        .await
        .unwrap();
    assert_eq!(state, (Some("mail".to_string()), 1));
}

#[tokio::test]
async fn a_map_under_8_clients_ends_exactly_as_each_writer_left_it() {
    use rand::Rng;
    use restm_client::collections::Map;
    let node = Node::start();
    let c = Client::new(&node.base).unwrap();
    let map = Map::new("users");
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let (c, map) = (c.clone(), map.clone());
        tasks.push(tokio::spawn(async move {
            // Each client owns 20 keys (so their final state is known exactly) and also
            // writes 5 keys every client shares.
            let mut own: BTreeMap<String, u64> = BTreeMap::new();
            for n in 0..250u64 {
                let (key, remove, shared) = {
                    let mut rng = rand::rng();
                    if rng.random_bool(0.25) {
                        (format!("shared/{}", rng.random_range(0..5)), false, true)
                    } else {
                        (format!("c{w}/{}", rng.random_range(0..20)), rng.random_bool(0.3), false)
                    }
                };
                let (m, k) = (map.clone(), key.clone());
                c.transact(move |tx| {
                    let (m, k) = (m.clone(), k.clone());
                    async move {
                        if remove {
                            m.remove(&tx, &k).await.map(drop)
                        } else {
                            m.put(&tx, &k, &(w, n)).await.map(drop)
                        }
                    }
                })
                .await
                .unwrap();
                if !shared {
                    if remove {
                        own.remove(&key);
                    } else {
                        own.insert(key, n);
                    }
                }
            }
            (w, own)
        }));
    }
    let mut expected: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for t in tasks {
        let (w, own) = t.await.unwrap();
        expected.extend(own.into_iter().map(|(k, n)| (k, (w, n))));
    }
    let m = map.clone();
    let (entries, len) = c
        .read_only(|tx| async move { Ok((m.entries::<(u64, u64)>(&tx).await?, m.len(&tx).await?)) })
        .await
        .unwrap();
    assert_eq!(len, entries.len() as i64, "the size counter matches the keys");
    let (shared, owned): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(k, _)| k.starts_with("shared/"));
    assert_eq!(owned.into_iter().collect::<BTreeMap<_, _>>(), expected);
    for (k, (w, n)) in shared {
        assert!(w < 8 && n < 250, "{k} holds a value nobody wrote: {w},{n}");
    }
}

#[tokio::test]
async fn an_ordered_map_under_8_clients_stays_a_valid_tree_and_scans_ranges_in_order() {
    use rand::Rng;
    use restm_client::collections::OrderedMap;
    use std::ops::Bound;
    let node = Node::start();
    let c = Client::new(&node.base).unwrap();
    // A small fanout makes splits, unlinks and root changes frequent.
    let tree = OrderedMap::with_fanout("index", 6);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Every snapshot taken while the writers run must already be a valid tree.
    let checker = {
        let (c, tree, done) = (c.clone(), tree.clone(), done.clone());
        tokio::spawn(async move {
            let mut checks = 0u32;
            while !done.load(Ordering::SeqCst) || checks == 0 {
                let t = tree.clone();
                let stats = c.read_only(|tx| async move { t.check(&tx).await }).await.unwrap();
                assert!(stats.height <= 8, "{stats:?}");
                checks += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            checks
        })
    };
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let (c, tree) = (c.clone(), tree.clone());
        tasks.push(tokio::spawn(async move {
            // Each client owns its keys, but they interleave in key order with everyone
            // else's, so clients share leaves and conflict on them.
            let mut own: BTreeMap<String, u64> = BTreeMap::new();
            for n in 0..250u64 {
                let (key, remove) = {
                    let mut rng = rand::rng();
                    (format!("{:03}/c{w}", rng.random_range(0..150)), rng.random_bool(0.3))
                };
                let (t, k) = (tree.clone(), key.clone());
                c.transact(move |tx| {
                    let (t, k) = (t.clone(), k.clone());
                    async move {
                        if remove {
                            t.remove(&tx, &k).await.map(drop)
                        } else {
                            t.insert(&tx, &k, &n).await.map(drop)
                        }
                    }
                })
                .await
                .unwrap();
                if remove {
                    own.remove(&key);
                } else {
                    own.insert(key, n);
                }
            }
            own
        }));
    }
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        expected.extend(t.await.unwrap());
    }
    done.store(true, Ordering::SeqCst);
    let checks = checker.await.unwrap();
    assert!(checks > 0);

    let t = tree.clone();
    let (stats, entries) = c
        .read_only(|tx| async move { Ok((t.check(&tx).await?, t.entries::<u64>(&tx).await?)) })
        .await
        .unwrap();
    assert_eq!(stats.entries, expected.len());
    assert!(stats.height >= 3, "fanout 6 with {} keys: {stats:?}", expected.len());
    assert_eq!(
        entries,
        expected.clone().into_iter().collect::<Vec<_>>(),
        "in key order, as each owner left them"
    );

    // Ranges with every kind of bound agree with the model.
    for _ in 0..40 {
        let (a, b, limit, kinds) = {
            let mut rng = rand::rng();
            let a = format!("{:03}", rng.random_range(0..160));
            let b = format!("{:03}/c{}", rng.random_range(0..160), rng.random_range(0..8));
            (a, b, rng.random_range(1..400usize), rng.random_range(0..9u8))
        };
        let bound = |s: &str, kind: u8| match kind {
            0 => Bound::Included(s.to_string()),
            1 => Bound::Excluded(s.to_string()),
            _ => Bound::Unbounded,
        };
        let (lo, hi) = (bound(&a, kinds % 3), bound(&b, kinds / 3));
        let want: Vec<(String, u64)> = expected
            .iter()
            .filter(|(k, _)| match &lo {
                Bound::Included(l) => *k >= l,
                Bound::Excluded(l) => *k > l,
                Bound::Unbounded => true,
            })
            .filter(|(k, _)| match &hi {
                Bound::Included(h) => *k <= h,
                Bound::Excluded(h) => *k < h,
                Bound::Unbounded => true,
            })
            .take(limit)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let (t, lo2, hi2) = (tree.clone(), lo.clone(), hi.clone());
        let got = c
            .read_only(|tx| async move {
                t.range::<u64>(&tx, lo2.as_ref().map(|s| s.as_str()), hi2.as_ref().map(|s| s.as_str()), limit)
                    .await
            })
            .await
            .unwrap();
        assert_eq!(got, want, "range {lo:?}..{hi:?} limit {limit}");
    }

    // Removing every key shrinks the tree back to one empty root leaf.
    for key in expected.keys() {
        let (t, k) = (tree.clone(), key.clone());
        let removed = c
            .transact(move |tx| {
                let (t, k) = (t.clone(), k.clone());
                async move { t.remove(&tx, &k).await }
            })
            .await
            .unwrap();
        assert!(removed, "{key}");
    }
    let t = tree.clone();
    let stats = c.read_only(|tx| async move { t.check(&tx).await }).await.unwrap();
    assert_eq!((stats.height, stats.nodes, stats.entries), (1, 1, 0));
    let left =
        reqwest::get(format!("{}/ptr?prefix=index/t/", node.base)).await.unwrap().text().await.unwrap();
    let left: serde_json::Value = serde_json::from_str(&left).unwrap();
    assert_eq!(left["pointers"].as_array().unwrap().len(), 1, "only the root is left: {left}");
}
