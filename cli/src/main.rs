//! `trellis`: one multi-call binary holding the control plane, the sidecar proxy, the injector, a
//! sample app and the local demo, so that a single `cargo run -p trellis -- demo` builds everything the demo
//! starts (it re-executes itself for each child process), and the cluster lifecycle: `install`,
//! `upgrade`, `uninstall` (`install.rs`) and `check` (`check.rs`).
#![forbid(unsafe_code)]

mod check;
mod demo;
mod explain;
mod install;
mod pki;
mod sample_app;
mod stat;
mod tap;

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
        /// The command's own arguments, passed on as they are.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run the sidecar proxy (`trellis proxy --help` for its flags).
    #[command(disable_help_flag = true)]
    Proxy {
        /// The command's own arguments, passed on as they are.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// The sidecar injector: `webhook`, `inject`, `manifests` (`trellis injector --help`).
    #[command(disable_help_flag = true)]
    Injector {
        /// The command's own arguments, passed on as they are.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run a sample HTTP/1.1 + h2c service that reports what it received as JSON.
    SampleApp(sample_app::SampleAppArgs),
    /// Print everything a cluster needs as one YAML stream: `trellis install | kubectl apply -f -`.
    ///
    /// The trellis-system namespace, a fresh mesh CA (root and issuing intermediate; only the
    /// intermediate's key goes into the cluster) as Secret trellis-control-plane-ca, the
    /// injector's webhook certificate as Secret trellis-injector-tls with its CA in the webhook's
    /// caBundle (or cert-manager Issuers and Certificates with --cert-manager), the TrafficPolicy
    /// CRD, RBAC, the control plane (two replicas) and the injector. The control plane publishes
    /// the ConfigMap trellis-ca into every namespace labelled trellis.io/inject=enabled.
    Install(install::InstallArgs),
    /// Print the install stream for the current version, keeping the cluster's CA:
    /// `trellis upgrade | kubectl apply -f -`.
    ///
    /// Reads the Secrets trellis-control-plane-ca and trellis-injector-tls from the cluster and
    /// writes them back unchanged, so proxies keep trusting the CA. A webhook certificate that
    /// expires within 30 days (or that its caBundle does not verify) is replaced, keeping the old
    /// CA in the caBundle; stderr then says to restart the injector.
    Upgrade(install::UpgradeArgs),
    /// Print the installed objects for deletion: `trellis uninstall | kubectl delete -f -`.
    ///
    /// Names only (no secret content), webhook first. Deleting the CRD deletes every
    /// TrafficPolicy; deleting the namespace deletes the Secrets. The trellis-ca ConfigMaps the
    /// control plane wrote into meshed namespaces are removed with
    /// `kubectl delete configmap -A -l app.kubernetes.io/managed-by=trellis-control-plane`; then
    /// remove the trellis.io/inject label and restart the workloads to drop their sidecars.
    Uninstall(install::UninstallArgs),
    /// Check the cluster before an install (--pre) or the installed mesh; exit status 1 when any
    /// check fails.
    ///
    /// After an install: the TrafficPolicy CRD, the control plane and injector Deployments, the
    /// mesh CA certificate, the webhook's caBundle against the injector's certificate (and its
    /// expiry), and every pod with a trellis-proxy container: sidecar ready, proxy version equal
    /// to the control plane's, workload certificate not near expiry (from the proxy's /metrics
    /// through the API server's pod proxy).
    Check(check::CheckArgs),
    /// Requests per second, success rate and latency p50/p95/p99 per service (or route), added up
    /// over the sidecars given, from their admin /metrics.
    Stat(stat::StatArgs),
    /// Stream a sidecar's requests as they finish: method, authority, path, status, latency,
    /// attempts and the identities on both sides (bounded by --max and --seconds).
    Tap(tap::TapArgs),
    /// What a sidecar would do with a request: the route and why earlier ones did not match, the
    /// timeouts, retries and budget, the endpoints and their state, the destination's
    /// authorization decision, and recent requests on that route.
    Explain(explain::ExplainArgs),
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
        Command::Install(args) => install::install(args),
        Command::Upgrade(args) => install::upgrade(args),
        Command::Uninstall(args) => install::uninstall(args),
        Command::Stat(args) => stat::main(args),
        Command::Tap(args) => tap::main(args),
        Command::Explain(args) => explain::main(args),
        Command::Check(args) => match check::main(args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
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

    /// Every flag and subcommand a user can reach says what it is for in `--help`.
    #[test]
    fn every_flag_and_subcommand_has_help() {
        use clap::CommandFactory;
        let mut all = vec![
            Cli::command(),
            trellis_control_plane::cli::command(),
            trellis_injector::cli::command(),
        ];
        all.extend(trellis_proxy::cli::commands());
        let mut missing = Vec::new();
        for command in &all {
            undocumented(command, command.get_name(), &mut missing);
        }
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    fn undocumented(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            let generated = ["help", "version"].contains(&id);
            if !generated && arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} --{}", arg.get_long().unwrap_or(id)));
            }
        }
        for sub in command.get_subcommands() {
            let sub_path = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                missing.push(sub_path.clone());
            }
            undocumented(sub, &sub_path, missing);
        }
    }
}
