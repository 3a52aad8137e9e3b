//! Harness for the black-box tests: spawns a real `restm` node on a free loopback port
//! and gives the tests an HTTP client for it.

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

/// A free loopback port, found by binding port 0.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running node, killed when dropped.
pub struct Node {
    pub child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    pub port: u16,
    extra: Vec<String>,
}

impl Node {
    /// Starts a node on a fresh data directory.
    pub fn start() -> Node {
        Self::start_with(&[])
    }

    /// Starts a node on a fresh data directory with extra `serve` arguments.
    pub fn start_with(extra: &[&str]) -> Node {
        let data_dir = temp_dir("node");
        Self::start_in(data_dir, extra)
    }

    /// Starts a node on the given data directory.
    pub fn start_in(data_dir: PathBuf, extra: &[&str]) -> Node {
        let port = free_port();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn(&data_dir, port, &extra);
        let node = Node { child, base: format!("http://127.0.0.1:{port}"), data_dir, port, extra };
        node.wait_ready();
        node
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
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
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn spawn(data_dir: &Path, port: u16, extra: &[String]) -> Child {
    Command::new(restm_bin())
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn restm")
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
