//! The `restm` binary: parses the command line and hands over to [`restm::cli`].

fn main() -> std::process::ExitCode {
    restm::cli::main()
}
