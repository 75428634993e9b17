//! The `trellis-injector` binary: parses the command line and runs the chosen subcommand.

#![forbid(unsafe_code)]

// Not `-> anyhow::Result<()>`: that prints the error with Debug, which with RUST_BACKTRACE set
// includes a stack backtrace. `cli::main` prints `error: …` and picks the exit status.
fn main() -> std::process::ExitCode {
    trellis_injector::cli::main()
}
