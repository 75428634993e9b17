//! The `trellis-injector` binary: parses the command line and runs the chosen subcommand.

#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    trellis_injector::cli::main_with_args(std::env::args_os())
}
