//! `restm demo --nodes 3`: a local cluster in one command, as `cockroach demo` gives one.
//!
//! It starts `--nodes` members of this same binary on consecutive loopback ports (clients
//! from `--base-port`, peers from `--base-port + 10`), each with its own data directory
//! under `--data-dir` (a fresh temporary directory by default, removed on exit), waits
//! until they elect a leader, prints every member's address and what to try, and stops
//! them all on Ctrl-C. A member that exits early ends the demo with its status.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `restm demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How many members.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub nodes: u16,
    /// The first member's client port; the others follow, and peers listen 10 above.
    #[arg(long, default_value_t = 7071)]
    pub base_port: u16,
    /// Where the members keep their data (default: a temporary directory, removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The built explorer, served by every member at /ui/ (`cargo xtask ui` builds it into
    /// target/ui).
    #[arg(long, env = "RESTM_UI_DIR")]
    pub ui_dir: Option<PathBuf>,
}

/// The running members; stopped when dropped.
struct Members(Vec<Child>);

impl Drop for Members {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub async fn run(args: DemoArgs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let n = args.nodes;
    let port = |i: u16, peer: bool| args.base_port + i + if peer { 10 } else { 0 };
    if u32::from(args.base_port) + 10 + u32::from(n) > 65_535 {
        return Err(format!("--base-port {} leaves no room for {n} members", args.base_port));
    }
    let (root, temporary) = match &args.data_dir {
        Some(d) => (d.clone(), false),
        None => (std::env::temp_dir().join(format!("restm-demo-{}", std::process::id())), true),
    };
    let initial: Vec<String> =
        (0..n).map(|i| format!("{}=http://127.0.0.1:{}", i + 1, port(i, true))).collect();
    let initial = initial.join(",");
    let mut members = Members(Vec::new());
    for i in 0..n {
        let dir = root.join(format!("n{}", i + 1));
        let mut cmd = Command::new(&exe);
        cmd.arg("serve")
            .args(["--node-id", &(i + 1).to_string()])
            .args(["--listen", &format!("127.0.0.1:{}", port(i, false))])
            .args(["--peer-listen", &format!("127.0.0.1:{}", port(i, true))])
            .args(["--initial-cluster", &initial])
            .arg("--data-dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if std::env::var_os("RUST_LOG").is_none() {
            // Three members' start-up lines would bury the addresses printed below.
            cmd.env("RUST_LOG", "warn,openraft=error");
        }
        if let Some(ui) = &args.ui_dir {
            cmd.arg("--ui-dir").arg(ui);
        }
        members.0.push(cmd.spawn().map_err(|e| format!("cannot start member {}: {e}", i + 1))?);
    }
    let client =
        reqwest::Client::builder().timeout(Duration::from_secs(2)).build().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        for (i, c) in members.0.iter_mut().enumerate() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!("member {} exited ({status}) before the cluster formed", i + 1));
            }
        }
        // Every member must name the same leader: then the election has settled.
        let mut seen = Vec::new();
        for i in 0..n {
            let url = format!("http://127.0.0.1:{}/cluster", port(i, false));
            if let Ok(r) = client.get(url).send().await
                && let Ok(s) = r.json::<restm_shared::ClusterStatus>().await
            {
                seen.push(s.groups.first().and_then(|g| g.leader));
            }
        }
        if seen.len() == usize::from(n)
            && let Some(Some(l)) = seen.first().copied()
            && seen.iter().all(|s| *s == Some(l))
        {
            break l;
        }
        if Instant::now() > deadline {
            return Err("the members elected no leader within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "reSTM demo: {n} members, data in {}{}",
        root.display(),
        if temporary { " (removed on exit)" } else { "" }
    );
    for i in 0..n {
        let lead = if u64::from(i + 1) == leader { "  (leader)" } else { "" };
        println!("  node {}: http://127.0.0.1:{}{lead}", i + 1, port(i, false));
    }
    if args.ui_dir.is_some() {
        println!("explorer: http://127.0.0.1:{}/ui/", port(0, false));
    }
    println!(
        "try: curl -s -XPUT localhost:{}/ptr/hello -d '\"world\"'; curl -s localhost:{}/ptr/hello",
        port(0, false),
        port(n - 1, false)
    );
    println!("     curl -s localhost:{}/cluster   # then kill a member and look again", port(0, false));
    let first = format!("http://127.0.0.1:{}", port(0, false));
    // The next member's ports follow the others' (a tenth still fits below the peers').
    println!(
        "  add a member:  {} serve --node-id {} --listen 127.0.0.1:{} --peer-listen 127.0.0.1:{} --join {first} --data-dir {}",
        exe.display(),
        n + 1,
        port(n, false),
        port(n, true),
        root.join(format!("n{}", n + 1)).display()
    );
    println!("  move a lead:   {} cluster move-leader 0 --to {} --target {first}", exe.display(), n.min(2));
    println!("  remove one:    {} cluster remove {n} --target {first}", exe.display());
    println!("Ctrl-C (or SIGTERM) stops every member.");
    let mut gone = vec![false; members.0.len()];
    loop {
        tokio::select! {
            _ = crate::http::shutdown_signal() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for (i, c) in members.0.iter_mut().enumerate() {
                    if !gone[i] && let Ok(Some(status)) = c.try_wait() {
                        gone[i] = true;
                        eprintln!("member {} exited ({status}); the others go on", i + 1);
                    }
                }
            }
        }
    }
    drop(members);
    if temporary {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}
