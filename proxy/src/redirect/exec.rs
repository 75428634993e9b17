//! Runs a redirect plan: one `iptables`/`ip6tables` process per command, in order, stopping at
//! the first failure with an error that names the command and what iptables said. The `Runner`
//! trait lets the tests run plans against an in-memory table instead.

use super::plan::{Family, Op, Step};
use std::process::Command;

/// Runs one iptables command; `Err` carries its diagnostics.
pub trait Runner {
    fn run(&mut self, family: Family, args: &[String]) -> Result<(), String>;
}

/// The real binaries, found on `PATH`.
pub struct System;

impl Runner for System {
    fn run(&mut self, family: Family, args: &[String]) -> Result<(), String> {
        let out = Command::new(family.binary())
            // Wait for the xtables lock rather than fail when another writer holds it.
            .arg("-w")
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", family.binary()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{command}` failed: {reason}")]
pub struct StepError {
    /// The command that failed, as a shell line.
    pub command: String,
    pub reason: String,
}

/// Runs the steps in order; the first failure stops the run.
pub fn run(steps: &[Step], runner: &mut dyn Runner) -> Result<(), StepError> {
    for step in steps {
        let fail = |args: &[String], reason| StepError {
            command: format!("{} {}", step.family.binary(), args.join(" ")),
            reason,
        };
        match &step.op {
            Op::Run(args) => runner.run(step.family, args).map_err(|r| fail(args, r))?,
            Op::UnlessOk { check, then } => {
                if runner.run(step.family, check).is_err() {
                    runner.run(step.family, then).map_err(|r| fail(then, r))?;
                }
            }
            Op::IfOk { check, then } => {
                if runner.run(step.family, check).is_ok() {
                    runner.run(step.family, then).map_err(|r| fail(then, r))?;
                }
            }
        }
    }
    Ok(())
}

/// Whether `ip6tables` can list the nat table here (binary present, IPv6 enabled).
pub fn ip6tables_works() -> bool {
    Command::new("ip6tables")
        .args(["-w", "-t", "nat", "-n", "-L", "OUTPUT"])
        .output()
        .is_ok_and(|o| o.status.success())
}
