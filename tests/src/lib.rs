//! Harness for the black-box tests: spawns a real `restm` node on a free loopback port
//! and gives the tests an HTTP client for it.
//!
//! `RESTM_TEST_NODES=3` makes [`Node::start_with`] start a cluster of that many members
//! instead (the first is the [`Node`], the others its [`Node::members`]), and [`Api::new`]
//! spreads requests over all of them: the same tests, against a cluster.

pub mod list_append;
pub mod nemesis;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the `restm` binary built next to the test executable (`target/<profile>/restm`),
/// or `$RESTM_BIN` when set.
pub fn restm_bin() -> PathBuf {
    if let Ok(p) = std::env::var("RESTM_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/restm
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("restm");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p restm-server` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// A free loopback port, found by binding port 0, and never the same one twice in a test
/// binary (tests run in parallel: two could be handed one port between its release and
/// the node's bind).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A running node, killed when dropped.
pub struct Node {
    pub child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    pub port: u16,
    extra: Vec<String>,
    /// Remove the data directory on drop (only for directories the node made itself).
    owns_dir: bool,
    /// The other members, when this node is the first of a cluster.
    pub members: Vec<Node>,
}

/// How many members [`Node::start_with`] starts (`RESTM_TEST_NODES`, default 1); on a
/// cluster, `RESTM_TEST_GROUPS` sets its `--groups`.
pub fn test_nodes() -> usize {
    std::env::var("RESTM_TEST_NODES").ok().and_then(|v| v.parse().ok()).filter(|n| *n >= 1).unwrap_or(1)
}

impl Node {
    /// A node around a spawned `child` serving on `port`.
    fn of(child: Child, data_dir: PathBuf, port: u16, extra: Vec<String>, owns_dir: bool) -> Node {
        Node {
            child,
            base: format!("http://127.0.0.1:{port}"),
            data_dir,
            port,
            extra,
            owns_dir,
            members: vec![],
        }
    }

    /// Starts a node on a fresh data directory.
    pub fn start() -> Node {
        Self::start_with(&[])
    }

    /// Starts a node on a fresh data directory with extra `serve` arguments (a cluster of
    /// [`test_nodes`] members).
    pub fn start_with(extra: &[&str]) -> Node {
        let n = test_nodes();
        if n > 1 {
            let groups = std::env::var("RESTM_TEST_GROUPS").ok().filter(|g| !g.is_empty());
            let mut extra = extra.to_vec();
            if let Some(g) = groups.as_deref() {
                extra.extend(["--groups", g]);
            }
            return Self::cluster(n, &extra);
        }
        let mut node = Self::start_in(temp_dir("node"), extra);
        node.owns_dir = true;
        node
    }

    /// Starts a cluster of `n` members on fresh data directories, and waits until it has a
    /// leader. The first member is returned; the others are its [`Node::members`].
    pub fn cluster(n: usize, extra: &[&str]) -> Node {
        Self::cluster_with_env(n, extra, &[])
    }

    /// [`Node::cluster`] with extra environment variables for every member's first start
    /// (a restart runs without them).
    pub fn cluster_with_env(n: usize, extra: &[&str], env: &[(&str, &str)]) -> Node {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let dial: Vec<String> = ports.iter().map(|(_, peer)| format!("127.0.0.1:{peer}")).collect();
        Self::cluster_dialling(ports, dial, extra, env)
    }

    /// A cluster whose members dial each other through `proxy` (see [`LinkProxy`]), so a
    /// test can cut and heal links between two members.
    pub async fn cluster_through(n: usize, extra: &[&str], proxy: &LinkProxy) -> Node {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let mut dial = Vec::new();
        for (i, (_, peer)) in ports.iter().enumerate() {
            dial.push(proxy.front(i as u64 + 1, format!("127.0.0.1:{peer}")).await);
        }
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            Self::cluster_dialling(ports, dial, &extra, &[])
        })
        .await
        .expect("start the cluster")
    }

    /// Starts members on `ports` (client, peer) that dial each other at `dial`.
    fn cluster_dialling(
        ports: Vec<(u16, u16)>,
        dial: Vec<String>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Node {
        let initial: Vec<String> =
            dial.iter().enumerate().map(|(i, addr)| format!("{}=http://{addr}", i + 1)).collect();
        let initial = initial.join(",");
        let mut nodes: Vec<Node> = ports
            .iter()
            .enumerate()
            .map(|(i, (port, peer))| {
                let mut args: Vec<String> = vec![
                    "--node-id".into(),
                    (i + 1).to_string(),
                    "--peer-listen".into(),
                    format!("127.0.0.1:{peer}"),
                    "--initial-cluster".into(),
                    initial.clone(),
                ];
                args.extend(extra.iter().map(|s| s.to_string()));
                let data_dir = temp_dir(&format!("member{}", i + 1));
                let mut cmd = command(&data_dir, *port, &args);
                for (k, v) in env {
                    cmd.env(k, v);
                }
                let child = cmd.spawn().expect("spawn restm");
                Node::of(child, data_dir, *port, args, true)
            })
            .collect();
        for node in &mut nodes {
            node.wait_ready();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        // Every group, not only the first: a request to a partition of a group still
        // electing would be refused with 503.
        while nodes.iter().any(|n| !n.every_group_led()) {
            for (i, n) in nodes.iter_mut().enumerate() {
                if let Ok(Some(status)) = n.child.try_wait() {
                    panic!("member {} exited while the cluster formed: {status}", i + 1);
                }
            }
            assert!(Instant::now() < deadline, "the cluster elected no leader within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut first = nodes.remove(0);
        first.members = nodes;
        first
    }

    /// The leader this node reports in `GET /cluster`, if any (a blocking request): with
    /// partitions in groups of their own, the first group's.
    pub fn leader_seen(&self) -> Option<u64> {
        self.cluster_seen()?.groups.first()?.leader
    }

    /// Whether this node knows a leader for every group it lists in `GET /cluster`.
    pub fn every_group_led(&self) -> bool {
        self.cluster_seen()
            .is_some_and(|s| !s.groups.is_empty() && s.groups.iter().all(|g| g.leader.is_some()))
    }

    /// This node's `GET /cluster`, if it answers (a blocking request).
    fn cluster_seen(&self) -> Option<restm_shared::ClusterStatus> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let token = self.extra.iter().position(|a| a == "--auth-token").and_then(|i| self.extra.get(i + 1));
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let req = format!("GET /cluster HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let body = text.split("\r\n\r\n").nth(1)?;
        serde_json::from_str(body).ok()
    }

    /// Starts member `id` on a fresh data directory, joining the running cluster through
    /// this node (`serve --join`) with extra `serve` arguments. It is returned once it
    /// listens for clients; the members add it to their groups in the background.
    pub fn join(&self, id: u64, extra: &[&str]) -> Node {
        let (port, peer) = (free_port(), free_port());
        let mut args: Vec<String> = vec![
            "--node-id".into(),
            id.to_string(),
            "--peer-listen".into(),
            format!("127.0.0.1:{peer}"),
            "--join".into(),
            self.base.clone(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let data_dir = temp_dir(&format!("member{id}"));
        let child = spawn(&data_dir, port, &args);
        let mut node = Node::of(child, data_dir, port, args, true);
        node.wait_ready();
        node
    }

    /// The value this node was started with for the `serve` flag `flag`.
    pub fn extra_arg(&self, flag: &str) -> Option<&str> {
        let i = self.extra.iter().position(|a| a == flag)?;
        self.extra.get(i + 1).map(String::as_str)
    }

    /// Every member: this node, then the others.
    pub fn all(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(self).chain(self.members.iter())
    }

    /// Starts a node on a fresh data directory with extra environment variables.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Node {
        let data_dir = temp_dir("node");
        let port = free_port();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut cmd = command(&data_dir, port, &extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn restm");
        let mut node = Node::of(child, data_dir, port, extra, true);
        node.wait_ready();
        node
    }

    /// Starts a node on the given data directory, which it leaves in place when dropped.
    pub fn start_in(data_dir: PathBuf, extra: &[&str]) -> Node {
        let port = free_port();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn(&data_dir, port, &extra);
        let mut node = Node::of(child, data_dir, port, extra, false);
        node.wait_ready();
        node
    }

    /// Waits until the node listens, and fails at once (with its exit status) if it died.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("restm on port {} exited before it listened: {status}", self.port);
            }
            if listening(self.port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("restm did not start listening on port {}", self.port);
    }

    /// SIGKILLs the process (no shutdown hooks run).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Restarts on the same data directory and port.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(&self.data_dir, self.port, &self.extra);
        self.wait_ready();
    }

    /// URL of a path on this node.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// Whether a socket listens on the loopback port. Where the kernel's socket table can be
/// read it decides: a connect alone can be fooled, by a connect to itself (the kernel picked
/// that port as the source) or by two tests' probes meeting in a simultaneous open, each
/// taking the other for its node.
fn listening(port: u16) -> bool {
    match std::fs::read_to_string("/proc/net/tcp") {
        Ok(table) => table.lines().skip(1).any(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1).unwrap_or_default();
            let state = fields.nth(1).unwrap_or_default();
            state == "0A" // TCP_LISTEN
                && local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
        }),
        Err(_) => std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok_and(|s| s.local_addr().ok() != s.peer_addr().ok()),
    }
}

fn spawn(data_dir: &Path, port: u16, extra: &[String]) -> Child {
    command(data_dir, port, extra).spawn().expect("spawn restm")
}

fn command(data_dir: &Path, port: u16, extra: &[String]) -> Command {
    let mut cmd = Command::new(restm_bin());
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        // openraft warns of every unanswered heartbeat, which the fault tests cause on purpose.
        .env("RUST_LOG", "warn,openraft=error")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

/// A proxy in front of every member's peer port, through which the members dial each other
/// (their `--initial-cluster` names its addresses). It reads who is dialling from the
/// first frame (the transport's hello: cluster name, then the dialling node's id), so it
/// can cut the link between two members in both directions while each still talks to the
/// rest; a cut link takes no new connections (they hang, as across a real partition) and
/// its open ones are dropped.
#[derive(Clone, Default)]
pub struct LinkProxy {
    cut: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<(u64, u64)>>>,
}

impl LinkProxy {
    /// Cuts the link between `a` and `b`, both ways.
    pub fn cut(&self, a: u64, b: u64) {
        let mut cut = self.cut.lock().unwrap();
        cut.insert((a, b));
        cut.insert((b, a));
    }

    /// Heals every cut link.
    pub fn heal(&self) {
        self.cut.lock().unwrap().clear();
    }

    fn is_cut(&self, from: u64, to: u64) -> bool {
        self.cut.lock().unwrap().contains(&(from, to))
    }

    /// Starts the front of member `to`, whose peer port is `target`; returns its address.
    pub async fn front(&self, to: u64, target: String) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let proxy = self.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (proxy, target) = (proxy.clone(), target.clone());
                tokio::spawn(async move { proxy.relay(inbound, to, &target).await });
            }
        });
        addr
    }

    async fn relay(&self, mut inbound: tokio::net::TcpStream, to: u64, target: &str) {
        use tokio::io::AsyncReadExt;
        use tokio::io::AsyncWriteExt;
        let mut len = [0u8; 4];
        if inbound.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut hello = vec![0u8; u32::from_be_bytes(len) as usize];
        if inbound.read_exact(&mut hello).await.is_err() {
            return;
        }
        let Some(from) = hello_from(&hello) else { return };
        while self.is_cut(from, to) {
            tokio::time::sleep(Duration::from_millis(20)).await; // hangs, as a partition does
        }
        let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
        if outbound.write_all(&len).await.is_err() || outbound.write_all(&hello).await.is_err() {
            return;
        }
        let (mut ri, mut wi) = inbound.into_split();
        let (mut ro, mut wo) = outbound.into_split();
        let up = tokio::spawn(async move { tokio::io::copy(&mut ri, &mut wo).await });
        let down = tokio::spawn(async move { tokio::io::copy(&mut ro, &mut wi).await });
        while !up.is_finished() && !down.is_finished() && !self.is_cut(from, to) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        up.abort();
        down.abort();
    }
}

/// The dialling node's id in a transport hello (postcard: the cluster name as a varint
/// length and its bytes, then the id as a varint).
fn hello_from(frame: &[u8]) -> Option<u64> {
    fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*at)?;
            *at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut at = 0;
    let name = varint(frame, &mut at)? as usize;
    at += name;
    varint(frame, &mut at)
}

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "restm-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A small HTTP client for the contract, used by every test. Over a cluster it spreads its
/// requests over every member, in turn.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    /// Every member's base URL (just `base` on a node of its own).
    bases: std::sync::Arc<Vec<String>>,
    turn: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Percent-encodes a pointer id as one path segment.
pub fn enc(ptr: &str) -> String {
    let mut out = String::new();
    for b in ptr.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Api {
    pub fn new(node: &Node) -> Api {
        Self::over(node.all().map(|n| n.base.clone()).collect())
    }

    /// A client of the node at `base` alone.
    pub fn only(base: &str) -> Api {
        Self::over(vec![base.to_string()])
    }

    fn over(bases: Vec<String>) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: bases[0].clone(),
            bases: std::sync::Arc::new(bases),
            turn: Default::default(),
        }
    }

    /// The URL of `path` on the next member in turn.
    pub fn url(&self, path: &str) -> String {
        let i = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.bases.len();
        format!("{}{}", self.bases[i], path)
    }

    pub fn ptr_url(&self, ptr: &str) -> String {
        self.url(&format!("/ptr/{}", enc(ptr)))
    }

    /// `PUT /ptr/{id}` outside a transaction.
    pub async fn put(&self, ptr: &str, value: &serde_json::Value) -> reqwest::Response {
        self.http.put(self.ptr_url(ptr)).json(value).send().await.unwrap()
    }

    /// `PUT` and expect 200; returns the committed version.
    pub async fn put_ok(&self, ptr: &str, value: &serde_json::Value) -> u64 {
        let r = self.put(ptr, value).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        r.json::<restm_shared::WriteResponse>().await.unwrap().version
    }

    /// `GET /ptr/{id}` with optional txn and at headers.
    pub async fn get(&self, ptr: &str, txn: Option<&str>, at: Option<&str>) -> reqwest::Response {
        let mut rb = self.http.get(self.ptr_url(ptr));
        if let Some(t) = txn {
            rb = rb.header("X-reSTM-Txn", t);
        }
        if let Some(a) = at {
            rb = rb.header("X-reSTM-At", a);
        }
        rb.send().await.unwrap()
    }

    /// The value of a pointer (latest), or None on 404.
    pub async fn value(&self, ptr: &str) -> Option<serde_json::Value> {
        let r = self.get(ptr, None, None).await;
        match r.status().as_u16() {
            200 => Some(r.json().await.unwrap()),
            404 => None,
            s => panic!("GET {ptr}: {s} {}", r.text().await.unwrap()),
        }
    }

    /// `POST /txn/begin` with a JSON body; returns (txn, read_version).
    pub async fn begin_with(&self, body: serde_json::Value, at: Option<&str>) -> reqwest::Response {
        let mut rb = self.http.post(self.url("/txn/begin")).json(&body);
        if let Some(a) = at {
            rb = rb.header("X-reSTM-At", a);
        }
        rb.send().await.unwrap()
    }

    pub async fn begin(&self) -> String {
        let r = self.begin_with(serde_json::json!({}), None).await;
        assert_eq!(r.status(), 201);
        r.json::<restm_shared::BeginResponse>().await.unwrap().txn
    }

    pub async fn begin_read_only(&self) -> String {
        let r = self.begin_with(serde_json::json!({"read_only": true}), None).await;
        assert_eq!(r.status(), 201);
        r.json::<restm_shared::BeginResponse>().await.unwrap().txn
    }

    /// `PUT` inside a transaction.
    pub async fn tput(&self, txn: &str, ptr: &str, value: &serde_json::Value) -> reqwest::Response {
        self.http.put(self.ptr_url(ptr)).header("X-reSTM-Txn", txn).json(value).send().await.unwrap()
    }

    /// `DELETE` inside a transaction.
    pub async fn tdel(&self, txn: &str, ptr: &str) -> reqwest::Response {
        self.http.delete(self.ptr_url(ptr)).header("X-reSTM-Txn", txn).send().await.unwrap()
    }

    pub async fn commit(&self, txn: &str) -> reqwest::Response {
        self.http.post(self.url(&format!("/txn/{txn}/commit"))).send().await.unwrap()
    }

    pub async fn abort(&self, txn: &str) -> reqwest::Response {
        self.http.post(self.url(&format!("/txn/{txn}/abort"))).send().await.unwrap()
    }

    /// The one-shot `POST /txn`.
    pub async fn one_shot(&self, body: &serde_json::Value) -> reqwest::Response {
        self.http.post(self.url("/txn")).json(body).send().await.unwrap()
    }
}

/// `base`'s `GET /cluster`, if it answers.
pub async fn cluster_of(http: &reqwest::Client, base: &str) -> Option<restm_shared::ClusterStatus> {
    let r = http.get(format!("{base}/cluster")).send().await.ok()?;
    r.json().await.ok()
}

/// Waits (up to `within`) until `base`'s `GET /cluster` satisfies `done`, and answers it;
/// fails the test with the last one seen, naming `what` it waited for.
pub async fn cluster_until(
    http: &reqwest::Client,
    base: &str,
    within: Duration,
    what: &str,
    done: impl Fn(&restm_shared::ClusterStatus) -> bool,
) -> restm_shared::ClusterStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = cluster_of(http, base).await
            && done(&s)
        {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{base}: not {what} within {within:?}: {:?}",
            cluster_of(http, base).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a client may conclude from the answer to `POST /txn/{id}/commit`, by the
/// contract: `200` committed; `409` aborted it, `404` never knew it, and a `503` changed
/// nothing unless it says `outcome-unknown`; anything else (a timeout, a dropped
/// connection) leaves it unknown.
pub async fn commit_outcome(answer: Result<reqwest::Response, reqwest::Error>) -> list_append::Outcome {
    use list_append::Outcome;
    let Ok(r) = answer else { return Outcome::Info };
    match r.status().as_u16() {
        200 => Outcome::Ok,
        409 | 404 => Outcome::Fail,
        503 => match r.json::<restm_shared::Problem>().await {
            Ok(p) if p.code != restm_shared::codes::OUTCOME_UNKNOWN => Outcome::Fail,
            _ => Outcome::Info,
        },
        _ => Outcome::Info,
    }
}

/// Reads a problem+json body, checking the content type and status.
pub async fn problem(resp: reqwest::Response, status: u16, code: &str) -> restm_shared::Problem {
    let got = resp.status().as_u16();
    let ct = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "body: {text}");
    assert_eq!(ct, restm_shared::PROBLEM_JSON, "body: {text}");
    let p: restm_shared::Problem = serde_json::from_str(&text).unwrap();
    assert_eq!(p.code, code, "body: {text}");
    assert_eq!(p.status, status);
    p
}
