//! `trellis`: one multi-call binary holding the control plane, the sidecar proxy, the injector, a
//! sample app and the local demo, so that a single `cargo run -p trellis -- demo` builds everything the demo
//! starts (it re-executes itself for each child process).
#![forbid(unsafe_code)]

mod demo;
mod sample_app;

use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "trellis",
    version,
    about = "Trellis, a service mesh",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole mesh on this machine (control plane, sidecars, sample apps) and send it traffic.
    Demo(demo::DemoArgs),
    /// Run the control plane (`trellis control-plane --help` for its subcommands).
    // The help flag is left to the forwarded command line so `--help` shows the real flags.
    #[command(disable_help_flag = true)]
    ControlPlane {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run the sidecar proxy (`trellis proxy --help` for its flags).
    #[command(disable_help_flag = true)]
    Proxy {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// The sidecar injector: `webhook`, `inject`, `manifests` (`trellis injector --help`).
    #[command(disable_help_flag = true)]
    Injector {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run a sample HTTP/1.1 + h2c service that reports what it received as JSON.
    SampleApp(sample_app::SampleAppArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::main(args),
        Command::ControlPlane { args } => {
            trellis_control_plane::cli::main_with_args(forwarded("trellis-control-plane", args))
        }
        Command::Proxy { args } => {
            trellis_proxy::cli::main_with_args(forwarded("trellis-proxy", args))
        }
        Command::Injector { args } => {
            // `inject` exits 1 after writing its output when a document failed.
            match trellis_injector::cli::main_with_args(forwarded("trellis-injector", args)) {
                Ok(trellis_injector::cli::Done::DocumentsFailed) => return ExitCode::FAILURE,
                other => other.map(|_| ()),
            }
        }
        Command::SampleApp(args) => sample_app::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The forwarded commands return clap's own errors (including `--help` and
            // `--version`): let clap print them with its usual exit code.
            if let Some(clap_error) = e.downcast_ref::<clap::Error>() {
                clap_error.exit();
            }
            eprintln!("trellis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The argument list a forwarded command expects: its own program name, then our remainder.
fn forwarded(argv0: &str, rest: Vec<OsString>) -> Vec<OsString> {
    std::iter::once(OsString::from(argv0)).chain(rest).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_commands_keep_their_flags() {
        let cli = Cli::try_parse_from(["trellis", "proxy", "--service", "hello", "--help"]);
        match cli.map(|c| c.command) {
            Ok(Command::Proxy { args }) => assert_eq!(args, ["--service", "hello", "--help"]),
            other => panic!("unexpected parse: {other:?}"),
        }
    }

    #[test]
    fn cli_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
