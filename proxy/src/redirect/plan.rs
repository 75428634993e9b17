//! The iptables rules of the redirect step, as data. Nothing here runs a process: `install` and
//! `cleanup` return the list of `Step`s that `super::exec` runs (or prints, for `--dry-run`), so
//! exclusions, ordering, idempotency and clean-up are unit-tested without root.
//!
//! Everything lives in the `nat` table, in two chains of our own. `install` creates them if
//! missing, flushes and refills them, and adds the jumps from `PREROUTING`/`OUTPUT` only if absent,
//! so running it again rebuilds the chains and never duplicates a jump. `cleanup` deletes the
//! jumps and the chains and nothing else.

use std::fmt;

pub const TABLE: &str = "nat";
pub const INBOUND_CHAIN: &str = "TRELLIS_INBOUND";
pub const OUTBOUND_CHAIN: &str = "TRELLIS_OUTBOUND";

/// Which binary a step runs: `iptables` or `ip6tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn binary(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

/// A port or an inclusive range (`8000-8100`), as `--dport` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// An address block to leave alone, e.g. `10.96.0.0/12` or `fd00::/8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    pub family: Family,
    /// As given (validated), passed to `-d`.
    pub text: String,
}

/// What the redirect captures and what it leaves alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectSpec {
    /// The proxy's uid: its own connections are never captured (no loops).
    pub proxy_uid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// Inbound destination ports not captured (the admin port, always, from the injector).
    pub skip_inbound_ports: Vec<PortRange>,
    pub skip_outbound_ports: Vec<PortRange>,
    pub skip_outbound_cidrs: Vec<Cidr>,
}

/// One iptables invocation (arguments after the binary name).
pub type Args = Vec<String>;

/// What to run, for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Must succeed.
    Run(Args),
    /// Run `then` only if `check` fails (create what is missing).
    UnlessOk { check: Args, then: Args },
    /// Run `then` only if `check` succeeds (remove what is there).
    IfOk { check: Args, then: Args },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub family: Family,
    pub op: Op,
}

impl fmt::Display for Step {
    /// The step as a shell line, which is what `--dry-run` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bin = self.family.binary();
        let cmd = |args: &Args| format!("{bin} {}", args.join(" "));
        match &self.op {
            Op::Run(a) => write!(f, "{}", cmd(a)),
            Op::UnlessOk { check, then } => {
                write!(f, "{} 2>/dev/null || {}", cmd(check), cmd(then))
            }
            Op::IfOk { check, then } => write!(f, "{} 2>/dev/null && {}", cmd(check), cmd(then)),
        }
    }
}

fn args(parts: &[&str]) -> Args {
    parts.iter().map(|s| s.to_string()).collect()
}

/// `-t nat -A <chain> <rule…>`
fn append(chain: &str, rule: &[String]) -> Op {
    let mut a = args(&["-t", TABLE, "-A", chain]);
    a.extend(rule.iter().cloned());
    Op::Run(a)
}

fn dport_return(port: impl fmt::Display) -> Vec<String> {
    args(&["-p", "tcp", "--dport", &port.to_string(), "-j", "RETURN"])
}

/// The jump rules (base chain, rule) that lead into our chains.
fn jumps() -> [(&'static str, Args); 2] {
    [
        ("PREROUTING", args(&["-p", "tcp", "-j", INBOUND_CHAIN])),
        ("OUTPUT", args(&["-p", "tcp", "-j", OUTBOUND_CHAIN])),
    ]
}

/// The rules of `TRELLIS_INBOUND`, in order: first match wins, so every exclusion (a `RETURN`)
/// comes before the final `REDIRECT`.
pub fn inbound_rules(spec: &RedirectSpec) -> Vec<Args> {
    let mut rules = vec![args(&["-i", "lo", "-j", "RETURN"])];
    // The proxy's own ports: a peer sidecar may address the inbound port directly.
    rules.push(dport_return(spec.inbound_port));
    rules.push(dport_return(spec.outbound_port));
    rules.extend(spec.skip_inbound_ports.iter().map(dport_return));
    rules.push(args(&[
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &spec.inbound_port.to_string(),
    ]));
    rules
}

/// The loopback block of a family: connections to it are never the pod calling itself through
/// a service (the proxy reaches the app there).
fn loopback(family: Family) -> &'static str {
    match family {
        Family::V4 => "127.0.0.0/8",
        Family::V6 => "::1/128",
    }
}

/// The self-call rules, first in `TRELLIS_OUTBOUND`: the proxy's own connection to one of its
/// pod's addresses (a service calling itself, or the balancer picking this replica) is sent to
/// its own inbound port, so it is served like a peer's (TLS terminated, identity and policy
/// checked) instead of landing on the app with a ClientHello. Local traffic never passes
/// `PREROUTING`, so without this the inbound redirect would not see it. Loopback destinations
/// (the proxy's connections to the app), the proxy's own ports and the skipped inbound ports
/// go through unchanged, which is also why no loop is possible.
fn self_call_rules(spec: &RedirectSpec, family: Family) -> Vec<Args> {
    let uid = spec.proxy_uid.to_string();
    let own = |tail: &[&str]| {
        let mut rule = args(&["-o", "lo", "!", "-d", loopback(family)]);
        rule.extend(args(&["-m", "owner", "--uid-owner", &uid, "-p", "tcp"]));
        rule.extend(args(tail));
        rule
    };
    let mut rules: Vec<Args> = [spec.inbound_port, spec.outbound_port]
        .iter()
        .map(|p| own(&["--dport", &p.to_string(), "-j", "RETURN"]))
        .collect();
    rules.extend(
        (spec.skip_inbound_ports.iter()).map(|p| own(&["--dport", &p.to_string(), "-j", "RETURN"])),
    );
    rules.push(own(&[
        "-j",
        "REDIRECT",
        "--to-ports",
        &spec.inbound_port.to_string(),
    ]));
    rules
}

/// The rules of `TRELLIS_OUTBOUND` for one family, in order.
pub fn outbound_rules(spec: &RedirectSpec, family: Family) -> Vec<Args> {
    let mut rules = self_call_rules(spec, family);
    // Otherwise the proxy's own connections (to peers, to the app, passthrough) are never
    // captured: this is what makes a redirect loop impossible.
    rules.push(args(&[
        "-m",
        "owner",
        "--uid-owner",
        &spec.proxy_uid.to_string(),
        "-j",
        "RETURN",
    ]));
    // Loopback destinations, including the pod's own addresses (routed through `lo`).
    rules.push(args(&["-o", "lo", "-j", "RETURN"]));
    let cidrs = spec
        .skip_outbound_cidrs
        .iter()
        .filter(|c| c.family == family);
    rules.extend(cidrs.map(|c| args(&["-d", &c.text, "-j", "RETURN"])));
    rules.extend(spec.skip_outbound_ports.iter().map(dport_return));
    rules.push(args(&[
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &spec.outbound_port.to_string(),
    ]));
    rules
}

/// Installs (or rebuilds) the rules for each family, chains first and jumps last, so a jump never
/// leads into a chain that is not filled yet on first install.
pub fn install(spec: &RedirectSpec, families: &[Family]) -> Vec<Step> {
    let mut steps = Vec::new();
    for &family in families {
        let mut push = |op| steps.push(Step { family, op });
        for chain in [INBOUND_CHAIN, OUTBOUND_CHAIN] {
            push(Op::UnlessOk {
                check: args(&["-t", TABLE, "-n", "-L", chain]),
                then: args(&["-t", TABLE, "-N", chain]),
            });
            push(Op::Run(args(&["-t", TABLE, "-F", chain])));
        }
        for rule in inbound_rules(spec) {
            push(append(INBOUND_CHAIN, &rule));
        }
        for rule in outbound_rules(spec, family) {
            push(append(OUTBOUND_CHAIN, &rule));
        }
        for (base, rule) in jumps() {
            let with = |verb: &str| {
                let mut a = args(&["-t", TABLE, verb, base]);
                a.extend(rule.iter().cloned());
                a
            };
            push(Op::UnlessOk {
                check: with("-C"),
                then: with("-A"),
            });
        }
    }
    steps
}

/// Removes exactly what `install` added: the two jumps, then the two chains. Absent pieces are
/// skipped, so clean-up also works after a partial install or twice in a row.
pub fn cleanup(families: &[Family]) -> Vec<Step> {
    let mut steps = Vec::new();
    for &family in families {
        let mut push = |op| steps.push(Step { family, op });
        for (base, rule) in jumps() {
            let with = |verb: &str| {
                let mut a = args(&["-t", TABLE, verb, base]);
                a.extend(rule.iter().cloned());
                a
            };
            push(Op::IfOk {
                check: with("-C"),
                then: with("-D"),
            });
        }
        for chain in [INBOUND_CHAIN, OUTBOUND_CHAIN] {
            for verb in ["-F", "-X"] {
                push(Op::IfOk {
                    check: args(&["-t", TABLE, "-n", "-L", chain]),
                    then: args(&["-t", TABLE, verb, chain]),
                });
            }
        }
    }
    steps
}
