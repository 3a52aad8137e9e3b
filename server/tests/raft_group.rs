//! A partition group under openraft: its storage against openraft's own conformance suite,
//! and three members on loopback TCP (the real transport, each with its own fjall database)
//! that apply one log to identical partitions, lose their leader, and catch a restarted
//! member up from the log or a snapshot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fjall::Database;
use openraft::SnapshotPolicy;
use openraft::testing::{StoreBuilder, Suite};
use restm::engine::command::{Command, Outcome};
use restm::engine::partition::partition_of;
use restm::raft::log_store::{Flusher, LogStore};
use restm::raft::replica::{Host, Replica, ReplicaError, Timing};
use restm::raft::state_machine::{Held, Observer, PartitionMachine, Unobserved, partitions};
use restm::raft::transport::{Groups, Identity, PeerServer, Peers};
use restm::raft::{BasicNode, NodeId, Restm, StorageError};
use tokio::net::TcpListener;

const PARTITIONS: u32 = 8;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "restm-raft-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn open_db(dir: &Path) -> Database {
    Database::builder(dir).open().expect("open fjall")
}

/// Removes a suite store's directory when the suite is done with it.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Fresh;

impl StoreBuilder<Restm, LogStore, PartitionMachine, DirGuard> for Fresh {
    async fn build(&self) -> Result<(DirGuard, LogStore, PartitionMachine), StorageError> {
        let dir = temp_dir("suite");
        let db = open_db(&dir);
        let log = LogStore::open(&db, 3, Flusher::start(db.clone())).expect("log store");
        let machine = PartitionMachine::open(
            &db,
            Held { group: 3, of: 1 },
            partitions(PARTITIONS),
            Arc::new(Unobserved),
        )?;
        Ok((DirGuard(dir), log, machine))
    }
}

#[test]
fn log_store_and_state_machine_pass_openraft_suite() {
    Suite::test_all(Fresh).expect("openraft's storage suite");
}

/// One node of the test cluster.
struct Member {
    id: NodeId,
    dir: PathBuf,
    addr: String,
    replica: Replica,
    _server: PeerServer,
}

fn identity(id: NodeId) -> Arc<Identity> {
    Arc::new(Identity {
        cluster: "raft-test".into(),
        node: id,
        token: Some("secret".into()),
        client_url: String::new(),
        tls: None,
    })
}

/// Counts the versions a machine tells its node it installed.
#[derive(Default)]
struct Counting(std::sync::atomic::AtomicU64);

impl Observer for Counting {
    fn installed(
        &self,
        _: &restm::engine::TxnId,
        _: &Arc<str>,
        _: u64,
        writes: &[(restm::engine::PtrId, Option<Bytes>)],
    ) {
        self.0.fetch_add(writes.len() as u64, std::sync::atomic::Ordering::SeqCst);
    }
    fn saw_version(&self, _: u64) {}
}

/// The groups' timing here: a longer election timeout than the default, so that a member
/// restarted on a loaded machine is asked for its vote well inside the refusal it owes.
fn timing() -> Timing {
    Timing::new(Duration::from_millis(250), Duration::from_secs(2)).expect("timing")
}

async fn start(id: NodeId, dir: &Path, listener: TcpListener) -> Member {
    start_observed(id, dir, listener, Arc::new(Unobserved)).await
}

async fn start_observed(
    id: NodeId,
    dir: &Path,
    listener: TcpListener,
    observer: Arc<dyn Observer>,
) -> Member {
    let addr = listener.local_addr().expect("addr").to_string();
    let host = Host::new(open_db(dir), identity(id));
    let server = PeerServer::spawn(listener, identity(id), host.groups.clone());
    let mut config = timing().raft_config("raft-test");
    config.snapshot_policy = SnapshotPolicy::LogsSinceLast(40);
    config.max_in_snapshot_log_to_keep = 0;
    let replica = Replica::start(&host, Held::ALL, partitions(PARTITIONS), observer, config)
        .await
        .expect("start replica");
    Member { id, dir: dir.to_path_buf(), addr, replica, _server: server }
}

/// Waits for a leader among `members` and returns its position.
/// Binds the address a stopped member listened on: its accept loop lets go of it when it
/// next runs, which on a loaded machine may be a moment after the stop.
async fn rebind(addr: &str) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => assert!(Instant::now() < deadline, "rebinding {addr}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn leader(members: &[Member]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(i) = members.iter().position(|m| m.replica.is_leader()) {
            return i;
        }
        assert!(Instant::now() < deadline, "no leader within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A blind one-partition write of `ptr` at `version`.
fn write(ptr: &str, version: u64) -> (u32, Command) {
    let ptr: Arc<str> = ptr.into();
    (
        partition_of(&ptr, PARTITIONS),
        Command::PrepareCommit {
            txn: format!("t{version}").into(),
            trace_id: "trace".into(),
            commit_version: version,
            reads: vec![],
            writes: vec![(ptr, Some(Bytes::from(version.to_string())))],
        },
    )
}

/// Proposes `count` writes from version `from` on the leader, riding out a leader change.
async fn propose_writes(members: &[Member], from: u64, count: u64) {
    for v in from..from + count {
        let (partition, cmd) = write(&format!("p{}", v % 23), v);
        loop {
            let l = leader(members).await;
            match members[l].replica.propose(partition, cmd.clone(), None).await {
                Ok(out) => {
                    assert_eq!(out, Outcome::Committed(v));
                    break;
                }
                Err(ReplicaError::NotLeader { .. }) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("proposing version {v}: {e}"),
            }
        }
    }
}

/// Waits until every member applied what the leader has, then checks they hold the same.
/// (The leader's metrics may trail its last apply by a moment, so this polls.)
async fn converge(members: &[Member]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let l = leader(members).await;
        let index = members[l].replica.metrics().last_applied.expect("applied").index;
        for m in members {
            m.replica.wait_applied(index, Duration::from_secs(15)).await.expect("catch up");
        }
        let want = members[l].replica.dumps();
        let differ: Vec<NodeId> =
            members.iter().filter(|m| m.replica.dumps() != want).map(|m| m.id).collect();
        if differ.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "nodes {differ:?} still differ from the leader after 15 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_apply_one_log_and_survive_losing_the_leader() {
    let dirs: Vec<PathBuf> = (1..=3).map(|i| temp_dir(&format!("n{i}"))).collect();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    }
    let addrs: Vec<String> = listeners.iter().map(|l| l.local_addr().expect("addr").to_string()).collect();
    let mut members = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        members.push(start(i as NodeId + 1, &dirs[i], l).await);
    }
    let voters: BTreeMap<NodeId, BasicNode> =
        members.iter().map(|m| (m.id, BasicNode { addr: m.addr.clone() })).collect();
    members[0].replica.initialize(voters).await.expect("initialize");

    propose_writes(&members, 1, 120).await;
    converge(&members).await;

    // Commands proposed together share entries (one append, one fsync), and each still gets
    // its own outcome, on every member alike.
    let l = leader(&members).await;
    let before = members[l].replica.metrics().last_log_index.expect("a log");
    let together = (1001..=1200).map(|v| {
        let (partition, cmd) = write(&format!("q{v}"), v);
        let replica = &members[l].replica;
        async move { (v, replica.propose(partition, cmd, None).await) }
    });
    for (v, out) in futures_util::future::join_all(together).await {
        assert_eq!(out.expect("proposed together"), Outcome::Committed(v));
    }
    let entries = members[l].replica.metrics().last_log_index.expect("a log") - before;
    assert!(entries < 200, "200 commands proposed at once took {entries} entries: none were batched");
    converge(&members).await;
    assert!(
        members.iter().all(|m| m.replica.metrics().snapshot.is_some()),
        "120 entries with a snapshot every 40 leave a snapshot on every member"
    );

    // The leader goes; the other two elect one and go on.
    let l = leader(&members).await;
    let gone = members.remove(l);
    let (gone_id, gone_dir, gone_addr) = (gone.id, gone.dir.clone(), gone.addr.clone());
    gone.replica.shutdown().await;
    drop(gone._server);
    propose_writes(&members, 121, 100).await;
    converge(&members).await;

    // It comes back on its own directory and catches up from the log (the leader keeps what
    // a known member has not acknowledged).
    assert_eq!(gone_addr, addrs[gone_id as usize - 1]);
    let listener = rebind(&gone_addr).await;
    members.push(start(gone_id, &gone_dir, listener).await);
    propose_writes(&members, 221, 10).await;
    converge(&members).await;

    // A new member joins as a learner after the log's start was purged into a snapshot:
    // the snapshot is what it gets.
    let l = leader(&members).await;
    let purged = members[l].replica.metrics().purged.expect("the leader purged its log").index;
    assert!(purged > 1, "the log's start is gone ({purged})");
    let dir4 = temp_dir("n4");
    let seen = Arc::new(Counting::default());
    let learner =
        start_observed(4, &dir4, TcpListener::bind("127.0.0.1:0").await.expect("bind"), seen.clone()).await;
    members[l].replica.add_learner(4, &learner.addr).await.expect("add learner");
    members.push(learner);
    converge(&members).await;
    // What came in the snapshot reached its node's version store too.
    let versions: usize =
        members[3].replica.dumps().iter().flat_map(|(_, d)| d.pointers.values()).map(|p| p.0.len()).sum();
    assert_eq!(
        seen.0.load(std::sync::atomic::Ordering::SeqCst),
        versions as u64,
        "every version, from the image or applied"
    );
    let _ = std::fs::remove_dir_all(&dir4);

    for m in members {
        m.replica.shutdown().await;
    }
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_the_wrong_token_or_cluster_is_refused() {
    use restm::raft::transport::Request;
    let groups = Arc::new(Groups::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let _server = PeerServer::spawn(listener, identity(1), groups);
    let vote = openraft::raft::VoteRequest { vote: openraft::Vote::new(1, 2), last_log_id: None };
    let ask_node = |me: Identity, target: NodeId| {
        let vote = vote.clone();
        let addr = addr.clone();
        async move {
            Peers::new(Arc::new(me))
                .client(target, &addr)
                .call(&Request::Vote { group: 0, rpc: vote }, Duration::from_secs(2))
                .await
        }
    };
    let ask = |me: Identity| ask_node(me, 1);
    // A node that believes it dials node 3 reached node 1: a typo in --initial-cluster.
    let wrong_node = ask_node(
        Identity {
            cluster: "raft-test".into(),
            node: 2,
            token: Some("secret".into()),
            client_url: String::new(),
            tls: None,
        },
        3,
    )
    .await;
    assert_eq!(wrong_node.expect_err("refused").kind(), std::io::ErrorKind::PermissionDenied);
    let wrong_token = ask(Identity {
        cluster: "raft-test".into(),
        node: 2,
        token: Some("guess".into()),
        client_url: String::new(),
        tls: None,
    })
    .await;
    assert_eq!(wrong_token.expect_err("refused").kind(), std::io::ErrorKind::PermissionDenied);
    let no_token = ask(Identity {
        cluster: "raft-test".into(),
        node: 2,
        token: None,
        client_url: String::new(),
        tls: None,
    })
    .await;
    assert_eq!(no_token.expect_err("refused").kind(), std::io::ErrorKind::PermissionDenied);
    let other_cluster = ask(Identity {
        cluster: "other".into(),
        node: 2,
        token: Some("secret".into()),
        client_url: String::new(),
        tls: None,
    })
    .await;
    assert_eq!(other_cluster.expect_err("refused").kind(), std::io::ErrorKind::PermissionDenied);
    // The right cluster and token get through: the node answers that it holds no group 0.
    let welcome = ask(Identity {
        cluster: "raft-test".into(),
        node: 2,
        token: Some("secret".into()),
        client_url: String::new(),
        tls: None,
    })
    .await;
    assert!(matches!(welcome, Ok(restm::raft::transport::Response::NoGroup(0))), "{welcome:?}");
}

/// Asks the member at `addr` (node `to`) for its vote in `term`, as node 9 with a log
/// longer than anyone's: openraft alone would grant it to such a candidate.
async fn ask_vote(to: NodeId, addr: &str, term: u64) -> openraft::raft::VoteResponse<NodeId> {
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    let mut network = restm::raft::network::Network::new(Peers::new(identity(9)), 0);
    let mut link = network.new_client(to, &BasicNode { addr: addr.to_string() }).await;
    let last = openraft::LogId::new(openraft::CommittedLeaderId::new(term - 1, 9), 1_000_000);
    let rpc = openraft::raft::VoteRequest::new(openraft::Vote::new(term, 9), Some(last));
    link.vote(rpc, RPCOption::new(Duration::from_secs(2))).await.expect("a vote answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_under_its_lease_and_a_restarted_member_refuse_votes() {
    let dirs: Vec<PathBuf> = (1..=3).map(|i| temp_dir(&format!("v{i}"))).collect();
    let mut members = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        members.push(start(i as NodeId + 1, dir, l).await);
    }
    let voters: BTreeMap<NodeId, BasicNode> =
        members.iter().map(|m| (m.id, BasicNode { addr: m.addr.clone() })).collect();
    members[0].replica.initialize(voters).await.expect("initialize");
    propose_writes(&members, 1, 10).await;
    let l = leader(&members).await;
    // openraft's own refusal on a leader lapses an election timeout after its election; the
    // lease's does not.
    tokio::time::sleep(timing().election + Duration::from_millis(200)).await;
    members[l].replica.confirm_leader().await.expect("the lead is confirmed");
    let term = members[l].replica.metrics().current_term;
    let answer = ask_vote(members[l].id, &members[l].addr, term + 10).await;
    assert!(!answer.vote_granted, "a leader under its lease granted a vote");
    assert!(members[l].replica.is_leader(), "and it still leads");

    // A member restarts while nobody leads (no heartbeat tells it whom to follow): it still
    // refuses every vote for the election timeout's maximum, since a lease it acknowledged
    // before may still run. openraft does this (it stamps the saved vote with the start
    // time); the lease relies on it, so a version bump that changes it fails here.
    let f = (l + 1) % 3;
    let (id, dir, addr) = (members[f].id, members[f].dir.clone(), members[f].addr.clone());
    for m in members {
        m.replica.shutdown().await;
        drop(m._server);
    }
    let back = start(id, &dir, rebind(&addr).await).await;
    let answer = ask_vote(back.id, &back.addr, term + 20).await;
    assert!(!answer.vote_granted, "a restarted member granted a vote at once");
    back.replica.shutdown().await;
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A node's clock as the cluster sees it: the highest version it was told of.
#[derive(Default)]
struct Clocked(std::sync::atomic::AtomicU64);

impl Observer for Clocked {
    fn installed(
        &self,
        _: &restm::engine::TxnId,
        _: &Arc<str>,
        _: u64,
        _: &[(restm::engine::PtrId, Option<Bytes>)],
    ) {
    }
    fn saw_version(&self, v: u64) {
        self.0.fetch_max(v, std::sync::atomic::Ordering::SeqCst);
    }
    fn last_version(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A member of a grouped test cluster: its cluster, its clock and its partitions.
type GroupedNode = (Arc<restm::cluster::Cluster>, Arc<Clocked>, restm::raft::state_machine::Partitions);

/// Three `Cluster`s whose partitions are in `groups` groups, once every group has a leader
/// all three agree on; with their directories and the leaders.
async fn start_grouped(groups: u32, tag: &str) -> (Vec<GroupedNode>, Vec<PathBuf>, Vec<Option<NodeId>>) {
    start_some_grouped(groups, tag, 3).await
}

/// [`start_grouped`], with only the first `up` of the three members started.
async fn start_some_grouped(
    groups: u32,
    tag: &str,
    up: u64,
) -> (Vec<GroupedNode>, Vec<PathBuf>, Vec<Option<NodeId>>) {
    use restm::cluster::{Cluster, ClusterConfig};
    let dirs: Vec<PathBuf> = (1..=3).map(|i| temp_dir(&format!("{tag}{i}"))).collect();
    // Each member is handed the listener bound here, so no other test takes its port.
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(Some(TcpListener::bind("127.0.0.1:0").await.expect("bind")));
    }
    let addrs: Vec<std::net::SocketAddr> =
        listeners.iter().map(|l| l.as_ref().expect("bound").local_addr().expect("addr")).collect();
    let initial: BTreeMap<NodeId, String> =
        (1..=3u64).map(|id| (id, format!("http://{}", addrs[id as usize - 1]))).collect();
    let mut nodes: Vec<GroupedNode> = Vec::new();
    for id in 1..=up {
        let config = ClusterConfig {
            node_id: id,
            name: "raft-test".into(),
            peer_listen: addrs[id as usize - 1],
            initial: initial.clone(),
            token: Some("secret".into()),
            client_url: format!("http://node{id}"),
            tls: None,
            timing: timing(),
            groups: restm::cluster::GroupCount::Of(groups),
            lock_wait: Duration::from_millis(200),
            rebalance: None,
        };
        let clock = Arc::new(Clocked::default());
        let parts = partitions(PARTITIONS);
        let metrics = Arc::new(restm::metrics::Metrics::new());
        let listener = listeners[id as usize - 1].take().expect("each member's listener once");
        let db = open_db(&dirs[id as usize - 1]);
        let cluster = Cluster::start_on(listener, config, db, parts.clone(), clock.clone(), metrics)
            .await
            .expect("start the cluster member");
        nodes.push((cluster, clock, parts));
    }
    // Every group elects a leader that every node knows.
    let deadline = Instant::now() + Duration::from_secs(30);
    let leaders = loop {
        let leaders: Vec<Option<NodeId>> = (0..groups).map(|g| nodes[0].0.leader_of(g)).collect();
        if leaders.iter().all(Option::is_some)
            && (0..groups).all(|g| nodes.iter().all(|n| n.0.leader_of(g) == leaders[g as usize]))
        {
            break leaders;
        }
        assert!(Instant::now() < deadline, "the groups have no agreed leaders within 30 s: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    (nodes, dirs, leaders)
}

/// Three nodes whose partitions are in four groups, each with a log and a leader of its
/// own: a node proposes to a group it does not lead through that group's leader, the
/// answer carries the leader's clock, and every replica of every group ends with the same
/// partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_in_groups_of_their_own_take_proposals_from_any_node() {
    const GROUPS: u32 = 4;
    let (nodes, dirs, leaders) = start_grouped(GROUPS, "g").await;
    // Each group was formed by its turn among the members, which led it from the start.
    let ids: Vec<NodeId> = (0..GROUPS as u64).map(|g| g % 3 + 1).collect();
    assert_eq!(leaders, ids.iter().map(|id| Some(*id)).collect::<Vec<_>>(), "the first leaders are spread");
    // Each node writes one pointer of each group: at least two nodes propose to a group
    // led elsewhere.
    let mut version = 1_000;
    let mut written = 0;
    for (n, (cluster, clock, _)) in nodes.iter().enumerate() {
        for g in 0..GROUPS {
            let ptr = (0..)
                .map(|i| format!("n{n}-g{g}-{i}"))
                .find(|p| partition_of(p, PARTITIONS) % GROUPS == g)
                .expect("a pointer of the group");
            version += 10;
            let (partition, cmd) = write(&ptr, version);
            assert_eq!(cluster.group_of(partition), g);
            let answer = cluster.propose(partition, cmd).await.expect("propose anywhere");
            assert_eq!(answer, Outcome::Committed(version), "node {} writing group {g}", n + 1);
            assert!(clock.last_version() >= version, "the answer carries the leader's clock past the commit");
            assert_eq!(
                nodes[n].2[partition as usize].latest_version(&ptr),
                Some(version),
                "node {} reads its own write to group {g} at once",
                n + 1
            );
            written += 1;
        }
    }
    assert_eq!(written, 12);
    // A read barrier makes any member's replica hold every acknowledged write: written
    // through each group's leader, read at once on every member after the barrier.
    for g in 0..GROUPS {
        let leader =
            nodes.iter().position(|n| Some(n.0.node_id()) == leaders[g as usize]).expect("the leader");
        for round in 0..5 {
            let ptr = (0..)
                .map(|i| format!("barrier-g{g}-{round}-{i}"))
                .find(|p| partition_of(p, PARTITIONS) % GROUPS == g)
                .expect("a pointer of the group");
            version += 10;
            let (partition, cmd) = write(&ptr, version);
            assert_eq!(
                nodes[leader].0.propose(partition, cmd).await.expect("propose"),
                Outcome::Committed(version)
            );
            for (n, node) in nodes.iter().enumerate() {
                node.0.read_barrier(partition).await.expect("a read barrier");
                assert_eq!(
                    node.2[partition as usize].latest_version(&ptr),
                    Some(version),
                    "node {} after a read barrier on group {g}",
                    n + 1
                );
            }
            written += 1;
        }
    }
    // `/cluster` lists every group with its own partitions and leader.
    let status = nodes[1].0.status(0);
    assert_eq!(status.groups.len(), GROUPS as usize);
    for gs in &status.groups {
        assert!(
            gs.partitions.iter().all(|p| p % GROUPS == gs.group),
            "group {} lists {:?}",
            gs.group,
            gs.partitions
        );
        assert_eq!(gs.leader, leaders[gs.group as usize]);
    }
    // Every replica converges on the same partitions.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let dumps: Vec<Vec<_>> = nodes.iter().map(|n| n.2.iter().map(|p| p.dump()).collect()).collect();
        let versions: usize =
            dumps[0].iter().map(|d| d.pointers.values().map(|v| v.0.len()).sum::<usize>()).sum();
        if dumps[1] == dumps[0] && dumps[2] == dumps[0] && versions == written {
            break;
        }
        assert!(Instant::now() < deadline, "replicas differ after 15 s ({versions} versions on node 1)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Two txns prepared across two groups whose coordinator (`n9`) is gone: one recorded
/// committed on its primary, one with no record. Each group's leader ends them by the
/// record: the first installed at its version on both groups, the second aborted (and a
/// late commit of it refused). A resolver leaves alone what is younger than its patience
/// and what this node is running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_end_txns_their_coordinator_abandoned_by_the_record() {
    use restm::cluster::resolver::Resolver;
    use restm::engine::command::TxnState;
    const GROUPS: u32 = 2;
    let (nodes, dirs, _) = start_grouped(GROUPS, "res").await;
    let of_group = |g: u32, tag: &str| {
        (0..)
            .map(|i| format!("{tag}-{i}"))
            .find(|p| partition_of(p, PARTITIONS) % GROUPS == g)
            .expect("a pointer of the group")
    };
    let (a, b) = (of_group(0, "a"), of_group(1, "b"));
    let prepare = |txn: &str, ptr: &str, primary: &str| {
        (
            partition_of(ptr, PARTITIONS),
            Command::Prepare {
                txn: txn.into(),
                trace_id: "t".into(),
                prepared_above: 5_000,
                reads: vec![],
                writes: vec![(ptr.into(), Some(Bytes::from(format!("\"{txn}\""))))],
                primary: primary.into(),
            },
        )
    };
    let propose = |partition: u32, cmd: Command| {
        let cluster = nodes[2].0.clone();
        async move { cluster.propose(partition, cmd).await.expect("propose") }
    };
    // n9-c: prepared on a (its primary) and b, recorded committed at 5_010, never installed.
    for (p, cmd) in [prepare("n9-c", &a, &a), prepare("n9-c", &b, &a)] {
        assert_eq!(propose(p, cmd).await, Outcome::Prepared);
    }
    let record = Command::TxnRecord { txn: "n9-c".into(), state: TxnState::Committed(5_010) };
    assert_eq!(propose(partition_of(&a, PARTITIONS), record).await, Outcome::Recorded);
    // n9-o: prepared on other pointers of both groups, no record.
    let (a2, b2) = (of_group(0, "a2"), of_group(1, "b2"));
    for (p, cmd) in [prepare("n9-o", &a2, &a2), prepare("n9-o", &b2, &a2)] {
        assert_eq!(propose(p, cmd).await, Outcome::Prepared);
    }
    // Each leader's replica must have applied them before its pass looks.
    let leaders: Vec<usize> = (0..GROUPS)
        .map(|g| {
            let id = nodes[0].0.leader_of(g).expect("a leader");
            nodes.iter().position(|n| n.0.node_id() == id).expect("a member")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !leaders.iter().all(|l| nodes[*l].2.iter().map(|p| p.prepared_txns().len()).sum::<usize>() >= 2) {
        assert!(Instant::now() < deadline, "the leaders did not apply the prepares");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Patience, and the txns a node runs itself, hold a resolver back.
    for n in &nodes {
        let mut patient = Resolver::new(Duration::from_secs(3600));
        assert!(patient.pass(&n.0, &n.2, |_| false).await.is_empty());
        let mut eager = Resolver::new(Duration::ZERO);
        assert!(eager.pass(&n.0, &n.2, |_| true).await.is_empty());
    }
    let mut resolved = Vec::new();
    for n in &nodes {
        resolved.extend(Resolver::new(Duration::ZERO).pass(&n.0, &n.2, |_| false).await);
    }
    resolved.sort_by(|x, y| x.txn.cmp(&y.txn));
    let fates: Vec<(&str, TxnState, usize)> =
        resolved.iter().map(|r| (&*r.txn, r.state, r.partitions.len())).collect();
    // Once per group each (the groups may share a leader: then once, on two partitions).
    let count = |txn: &str| fates.iter().filter(|f| f.0 == txn).map(|f| f.2).sum::<usize>();
    assert_eq!((count("n9-c"), count("n9-o")), (2, 2), "{fates:?}");
    assert!(
        fates
            .iter()
            .all(|f| f.1 == if f.0 == "n9-c" { TxnState::Committed(5_010) } else { TxnState::Aborted })
    );
    // Every replica ends the same: n9-c's writes at 5_010, nothing of n9-o, nothing prepared.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let done = nodes.iter().all(|n| {
            let at = |ptr: &str| n.2[partition_of(ptr, PARTITIONS) as usize].latest_version(ptr);
            n.2.iter().all(|p| p.prepared_txns().is_empty())
                && at(&a) == Some(5_010)
                && at(&b) == Some(5_010)
                && at(&a2).is_none()
                && at(&b2).is_none()
        });
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the replicas did not all end the abandoned txns");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The coordinator comes back too late: its commit is refused by the abort recorded.
    let late = Command::TxnRecord { txn: "n9-o".into(), state: TxnState::Committed(5_020) };
    assert_eq!(propose(partition_of(&a2, PARTITIONS), late).await, Outcome::Decided(TxnState::Aborted));
    drop(nodes);
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A data directory keeps the group count it was created with: asking for another is
/// refused (its logs hold each partition's commands in the group it was in), and a
/// directory from before the count was stored, with a vote in group 0, has one group.
#[tokio::test]
async fn the_group_count_of_a_data_directory_cannot_change() {
    use restm::raft::log_store::group_count;
    let dir = temp_dir("count");
    let db = open_db(&dir);
    assert_eq!(group_count(&db, 4).ok(), Some(4));
    assert_eq!(group_count(&db, 4).ok(), Some(4));
    assert!(matches!(group_count(&db, 2), Err(Ok(4))), "another count is refused, naming the stored one");
    drop(db);
    // An older directory: a member of group 0 voted, no count stored.
    let old = temp_dir("count-old");
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let m = start(1, &old, l).await;
    let me: BTreeMap<NodeId, BasicNode> = [(1, BasicNode { addr: m.addr.clone() })].into();
    m.replica.initialize(me).await.expect("initialize");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !m.replica.is_leader() {
        assert!(Instant::now() < deadline, "a lone member did not elect itself");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let server = m._server;
    m.replica.shutdown().await;
    drop(server);
    let db = open_db(&old);
    assert!(matches!(group_count(&db, 4), Err(Ok(1))), "an older directory has one group");
    assert_eq!(group_count(&db, 1).ok(), Some(1));
    drop(db);
    for d in [dir, old] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A group whose turn to form was a member's that is down is formed by the others, after
/// their wait: every group of a two-of-three cluster gets a leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_whose_first_member_is_down_is_formed_by_the_others() {
    let started = Instant::now();
    let (nodes, dirs, leaders) = start_some_grouped(3, "down", 2).await;
    assert!(leaders.iter().all(|l| matches!(l, Some(1 | 2))), "{leaders:?}");
    assert!(
        started.elapsed() >= timing().election * 3,
        "group 2 (node 3's turn) had a leader before the others' wait: {:?}",
        started.elapsed()
    );
    drop(nodes);
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}
