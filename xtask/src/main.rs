//! Project automation behind the README's two commands.
//!
//! - `cargo xtask serve [ARGS..]`: builds the node in release mode and starts it with
//!   `restm serve ARGS..` (defaults: `127.0.0.1:7070`, data in `./restm-data`).
//! - `cargo xtask test`: formatting, clippy, then every test of the workspace, including the
//!   black-box tests that spawn the real binary.
//!
//! Each step installs what it needs, so both commands work on a fresh machine.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("test") => test(),
        _ => {
            eprintln!("usage: cargo xtask serve [restm serve args..] | cargo xtask test");
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

fn serve(extra: &[String]) -> Result<(), String> {
    run(cargo().args(["build", "--release", "-p", "restm-server", "--bin", "restm"]))?;
    run(Command::new("target/release/restm").arg("serve").args(extra))
}

fn test() -> Result<(), String> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // The black-box tests spawn target/debug/restm, so build it before they run.
    run(cargo().args(["build", "-p", "restm-server", "--bin", "restm"]))?;
    run(cargo().args(["test", "--workspace"]))
}
