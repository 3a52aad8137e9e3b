//! Project automation behind the README's two commands.
//!
//! - `cargo xtask serve [ARGS..]`: builds the explorer ([`ui`]) and the node in release
//!   mode, and starts `restm serve --ui-dir target/ui ARGS..` (defaults: `127.0.0.1:7070`,
//!   data in `./restm-data`).
//! - `cargo xtask test`: formatting, clippy (host and wasm32), every test of the workspace
//!   including the black-box tests that spawn the real binary, then the browser tests in
//!   `e2e/` (headless Debian Chromium driven by playwright-core).
//! - `cargo xtask ui`: only builds the explorer into `target/ui`.
//!
//! Each step installs what it needs (the wasm32 target, the `wasm-bindgen-cli` of exactly
//! the version in Cargo.lock, Chromium from Debian, the npm packages of `e2e/`), so both
//! commands work on a fresh machine. Tools go under `target/tools`, inside the repo.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// Where the built explorer goes; the node serves it with `--ui-dir`.
const UI_OUT: &str = "target/ui";
const TOOLS: &str = "target/tools";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("test") => test(),
        Some("ui") => ui(),
        _ => {
            eprintln!("usage: cargo xtask serve [restm serve args..] | cargo xtask test | cargo xtask ui");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{cmd:?} failed with {status}")) }
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn serve(extra: &[String]) -> Result<(), String> {
    ui()?;
    run(cargo().args(["build", "--release", "-p", "restm-server", "--bin", "restm"]))?;
    let mut cmd = Command::new("target/release/restm");
    cmd.arg("serve");
    if !extra.iter().any(|a| a.starts_with("--ui-dir")) {
        cmd.args(["--ui-dir", UI_OUT]);
    }
    run(cmd.args(extra))
}

/// The black-box suites that run a second time against a cluster.
const CLUSTER_SUITES: &[&str] =
    &["contract", "serializable", "as_of", "crash", "lease", "locking_read", "live_views"];

fn test() -> Result<(), String> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    ensure_wasm_target()?;
    run(cargo().args(["clippy", "-p", "restm-ui", "--target", WASM_TARGET, "--", "-D", "warnings"]))?;
    // The black-box tests spawn target/debug/restm, so build it before they run; the bench
    // tests also compare with a real etcd.
    run(cargo().args(["build", "-p", "restm-server", "--bin", "restm"]))?;
    ensure_debian_package("/usr/bin/etcd", "etcd-server")?;
    run(cargo().args(["test", "--workspace"]))?;
    // The same black-box suites again, against a 3-member cluster whose clients spread
    // over every member (the harness reads RESTM_TEST_NODES).
    run(cargo()
        .args(["test", "-p", "restm-tests"])
        .args(CLUSTER_SUITES.iter().flat_map(|t| ["--test", t]))
        .env("RESTM_TEST_NODES", "3"))?;
    // And once more with the partitions in four groups led by different members, where
    // every member coordinates its own txns (the harness reads RESTM_TEST_GROUPS).
    run(cargo()
        .args(["test", "-p", "restm-tests"])
        .args(CLUSTER_SUITES.iter().flat_map(|t| ["--test", t]))
        .env("RESTM_TEST_NODES", "3")
        .env("RESTM_TEST_GROUPS", "4"))?;
    e2e()
}

/// The browser tests: a real node (target/debug/restm) serving the release explorer.
fn e2e() -> Result<(), String> {
    ui()?;
    ensure_debian_package("/usr/bin/chromium", "chromium")?;
    let npm_ready = Path::new("e2e/node_modules/playwright-core/package.json").is_file();
    if !npm_ready {
        run(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir("e2e"))?;
    }
    run(Command::new("node")
        .args(["--test", "--test-concurrency=1", "tests/"])
        .current_dir("e2e")
        .env("RESTM_BIN", absolute("target/debug/restm")?)
        .env("RESTM_UI_DIR", absolute(UI_OUT)?))
}

fn absolute(p: &str) -> Result<PathBuf, String> {
    std::fs::canonicalize(p).map_err(|e| format!("{p}: {e}"))
}

/// Installs Debian's `package` (as root, or through sudo) unless `file` is there already.
fn ensure_debian_package(file: &str, package: &str) -> Result<(), String> {
    if Path::new(file).is_file() {
        return Ok(());
    }
    let root = output(Command::new("id").arg("-u")).is_some_and(|u| u.trim() == "0");
    let apt = |args: &[&str]| {
        let mut c = if root { Command::new("apt-get") } else { Command::new("sudo") };
        if !root {
            c.arg("apt-get");
        }
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut c)
    };
    apt(&["update"])?;
    apt(&["install", "-y", "--no-install-recommends", package])
}

fn ensure_wasm_target() -> Result<(), String> {
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if installed.lines().any(|l| l.trim() == WASM_TARGET) {
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
}

/// The `wasm-bindgen` version Cargo.lock resolved: the CLI must match it exactly.
fn locked_wasm_bindgen() -> Result<String, String> {
    let lock = std::fs::read_to_string("Cargo.lock").map_err(|e| format!("Cargo.lock: {e}"))?;
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l == "name = \"wasm-bindgen\""
            && let Some(v) = lines.next().and_then(|v| v.strip_prefix("version = \""))
        {
            return Ok(v.trim_end_matches('"').to_string());
        }
    }
    Err("Cargo.lock has no wasm-bindgen".into())
}

/// A `wasm-bindgen` of exactly `version`: on PATH, in target/tools, or installed there.
fn wasm_bindgen(version: &str) -> Result<PathBuf, String> {
    let wanted = format!("wasm-bindgen {version}");
    let local = PathBuf::from(TOOLS).join("bin/wasm-bindgen");
    for candidate in [PathBuf::from("wasm-bindgen"), local.clone()] {
        if output(Command::new(&candidate).arg("--version")).is_some_and(|v| v.trim() == wanted) {
            return Ok(candidate);
        }
    }
    // Not `--locked`: the CLI's own lock file names crate versions the registry mirror lacks.
    run(cargo().args(["install", "wasm-bindgen-cli", "--version", version, "--root", TOOLS, "--force"]))?;
    Ok(local)
}

/// Builds the explorer into target/ui: release WASM optimised for size, its JS glue, the
/// page and its stylesheet, and gzip copies the node serves to browsers that accept them.
fn ui() -> Result<(), String> {
    ensure_wasm_target()?;
    let bindgen = wasm_bindgen(&locked_wasm_bindgen()?)?;
    run(cargo().args([
        "build",
        "-p",
        "restm-ui",
        "--lib",
        "--target",
        WASM_TARGET,
        "--profile",
        "wasm-release",
    ]))?;
    let out = PathBuf::from(UI_OUT);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("pkg")).map_err(|e| format!("{UI_OUT}: {e}"))?;
    run(Command::new(&bindgen).args([
        "--target",
        "web",
        "--no-typescript",
        "--out-dir",
        &format!("{UI_OUT}/pkg"),
        &format!("target/{WASM_TARGET}/wasm-release/restm_ui.wasm"),
    ]))?;
    for f in ["index.html", "style.css"] {
        std::fs::copy(Path::new("ui").join(f), out.join(f)).map_err(|e| format!("copy ui/{f}: {e}"))?;
    }
    let wasm = out.join("pkg/restm_ui_bg.wasm");
    let size = std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0);
    let gz =
        Command::new("gzip").args(["-9", "-k", "-f"]).arg(&wasm).arg(out.join("pkg/restm_ui.js")).status();
    let gz_size = match gz {
        Ok(s) if s.success() => std::fs::metadata(out.join("pkg/restm_ui_bg.wasm.gz")).map(|m| m.len()).ok(),
        _ => None,
    };
    eprintln!(
        "xtask: explorer built in {UI_OUT}: restm_ui_bg.wasm {} KiB{}",
        size / 1024,
        gz_size.map(|g| format!(" ({} KiB gzipped)", g / 1024)).unwrap_or_default()
    );
    Ok(())
}
