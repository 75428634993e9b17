//! `trellis-proxy redirect`: the pod's init step. Installs the iptables `nat` rules that send the
//! pod's inbound TCP to the proxy's inbound port and the app's outbound TCP to the outbound port
//! (see docs/interception.md), removes them with `--cleanup`, or prints them with `--dry-run`.
//!
//! `plan` builds the rules as data (pure, unit-tested), `exec` runs them with the `iptables` and
//! `ip6tables` binaries, and this module parses the flags (the names the injector emits, see
//! `injector/src/sidecar.rs`).

pub mod exec;
pub mod plan;
#[cfg(test)]
mod tests;

pub use plan::{Cidr, Family, PortRange, RedirectSpec, Step};

use std::net::IpAddr;

/// The flags of `trellis-proxy redirect`.
#[derive(Debug, clap::Args)]
pub struct RedirectArgs {
    /// The uid the proxy runs as; its traffic is never captured.
    #[arg(long, env = "TRELLIS_PROXY_UID", default_value_t = 2102)]
    pub proxy_uid: u32,
    /// The proxy's inbound port: where the pod's incoming TCP (and the proxy's calls to its own
    /// pod) are sent.
    #[arg(long, env = "TRELLIS_INBOUND_PORT", default_value_t = 4143)]
    pub inbound_port: u16,
    /// The proxy's outbound port: where the app's outgoing TCP is sent.
    #[arg(long, env = "TRELLIS_OUTBOUND_PORT", default_value_t = 4140)]
    pub outbound_port: u16,
    /// Comma-separated ports or ranges (`8000-8100`) whose inbound traffic is not captured.
    #[arg(long, env = "TRELLIS_SKIP_INBOUND_PORTS", default_value = "")]
    pub skip_inbound_ports: String,
    /// Comma-separated ports or ranges whose outbound traffic is not captured.
    #[arg(long, env = "TRELLIS_SKIP_OUTBOUND_PORTS", default_value = "")]
    pub skip_outbound_ports: String,
    /// Comma-separated CIDRs (IPv4 or IPv6) whose outbound traffic is not captured.
    #[arg(long, env = "TRELLIS_SKIP_OUTBOUND_CIDRS", default_value = "")]
    pub skip_outbound_cidrs: String,
    /// ip6tables too: `auto` when ip6tables works in this namespace.
    #[arg(long, env = "TRELLIS_IPV6", default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub ipv6: String,
    /// Remove the rules instead of installing them.
    #[arg(long)]
    pub cleanup: bool,
    /// Print the commands instead of running them.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("{flag}: {value:?} is not a port or a port range (1-65535, e.g. 8080 or 8000-8100)")]
    Port { flag: &'static str, value: String },
    #[error("{flag}: {value:?} is not a CIDR (e.g. 10.0.0.0/8 or fd00::/8)")]
    Cidr { flag: &'static str, value: String },
    #[error("--inbound-port and --outbound-port must differ (both {0})")]
    SamePorts(u16),
}

impl RedirectArgs {
    pub fn spec(&self) -> Result<RedirectSpec, SpecError> {
        if self.inbound_port == self.outbound_port {
            return Err(SpecError::SamePorts(self.inbound_port));
        }
        Ok(RedirectSpec {
            proxy_uid: self.proxy_uid,
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            skip_inbound_ports: parse_ports("--skip-inbound-ports", &self.skip_inbound_ports)?,
            skip_outbound_ports: parse_ports("--skip-outbound-ports", &self.skip_outbound_ports)?,
            skip_outbound_cidrs: parse_cidrs("--skip-outbound-cidrs", &self.skip_outbound_cidrs)?,
        })
    }
}

fn items(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

pub fn parse_ports(flag: &'static str, list: &str) -> Result<Vec<PortRange>, SpecError> {
    items(list)
        .map(|item| {
            let bad = || SpecError::Port {
                flag,
                value: item.to_string(),
            };
            let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p != 0);
            let (first, last) = match item.split_once('-') {
                Some((a, b)) => (port(a).ok_or_else(bad)?, port(b).ok_or_else(bad)?),
                None => {
                    let p = port(item).ok_or_else(bad)?;
                    (p, p)
                }
            };
            if first > last {
                return Err(bad());
            }
            Ok(PortRange { first, last })
        })
        .collect()
}

pub fn parse_cidrs(flag: &'static str, list: &str) -> Result<Vec<Cidr>, SpecError> {
    items(list)
        .map(|item| {
            let bad = || SpecError::Cidr {
                flag,
                value: item.to_string(),
            };
            let (addr, len) = item.split_once('/').unwrap_or((item, ""));
            let addr: IpAddr = addr.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len: u8 = match len {
                "" => max,
                l => l.parse().ok().filter(|l| *l <= max).ok_or_else(bad)?,
            };
            let family = if addr.is_ipv4() {
                Family::V4
            } else {
                Family::V6
            };
            Ok(Cidr {
                family,
                text: format!("{addr}/{len}"),
            })
        })
        .collect()
}

/// Runs `trellis-proxy redirect`.
pub fn main(args: RedirectArgs) -> anyhow::Result<()> {
    let spec = args.spec()?;
    let families = match args.ipv6.as_str() {
        "on" => vec![Family::V4, Family::V6],
        "off" => vec![Family::V4],
        _ if args.dry_run || exec::ip6tables_works() => vec![Family::V4, Family::V6],
        _ => vec![Family::V4],
    };
    let steps = if args.cleanup {
        plan::cleanup(&families)
    } else {
        plan::install(&spec, &families)
    };
    if args.dry_run {
        for step in &steps {
            println!("{step}");
        }
        return Ok(());
    }
    exec::run(&steps, &mut exec::System)?;
    let what = if args.cleanup { "removed" } else { "installed" };
    eprintln!(
        "trellis-proxy redirect: rules {what} ({} steps, {})",
        steps.len(),
        families
            .iter()
            .map(|f| f.binary())
            .collect::<Vec<_>>()
            .join(" + ")
    );
    Ok(())
}
