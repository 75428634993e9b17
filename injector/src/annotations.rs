//! The pod annotations the injector reads (names in one place), and their parsing: each value is
//! checked here so that a bad one is denied naming the annotation and the value.

use crate::quantity;
use std::collections::BTreeMap;
use std::net::IpAddr;

pub const INJECT: &str = "trellis.io/inject";
pub const NATIVE_SIDECAR: &str = "trellis.io/native-sidecar";
pub const SERVICE: &str = "trellis.io/service";
pub const SKIP_OUTBOUND_PORTS: &str = "trellis.io/skip-outbound-ports";
pub const SKIP_INBOUND_PORTS: &str = "trellis.io/skip-inbound-ports";
pub const SKIP_OUTBOUND_CIDRS: &str = "trellis.io/skip-outbound-cidrs";
pub const PROXY_CPU_REQUEST: &str = "trellis.io/proxy-cpu-request";
pub const PROXY_MEMORY_REQUEST: &str = "trellis.io/proxy-memory-request";
pub const PROXY_CPU_LIMIT: &str = "trellis.io/proxy-cpu-limit";
pub const PROXY_MEMORY_LIMIT: &str = "trellis.io/proxy-memory-limit";
pub const PROXY_LOG_LEVEL: &str = "trellis.io/proxy-log-level";
/// `"false"` keeps the app's probes as they are (see `crate::probes`).
pub const REWRITE_PROBES: &str = "trellis.io/rewrite-probes";

/// A value the injector refuses: names the annotation (or config field), the value and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?}: {reason}")]
pub struct InvalidValue {
    pub name: String,
    pub value: String,
    pub reason: String,
}

impl InvalidValue {
    pub fn new(name: &str, value: &str, reason: impl Into<String>) -> Self {
        Self {
            name: name.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// `trellis.io/inject`: `enabled` or `disabled`; absent means "follow the namespace".
pub fn inject(annotations: &BTreeMap<String, String>) -> Result<Option<bool>, InvalidValue> {
    match annotations.get(INJECT).map(|v| v.trim()) {
        None => Ok(None),
        Some("enabled") => Ok(Some(true)),
        Some("disabled") => Ok(Some(false)),
        Some(other) => Err(InvalidValue::new(
            INJECT,
            other,
            "expected \"enabled\" or \"disabled\"",
        )),
    }
}

/// What the per-pod annotations ask for, validated. `None` means "use the injector's config".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub native_sidecar: Option<bool>,
    /// Canonical comma-separated lists (`80,8000-8100`), empty when not set.
    pub skip_outbound_ports: String,
    pub skip_inbound_ports: String,
    pub skip_outbound_cidrs: String,
    pub cpu_request: Option<String>,
    pub memory_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
    pub log_level: Option<String>,
    /// `trellis.io/rewrite-probes`; `None`: rewrite.
    pub rewrite_probes: Option<bool>,
}

/// Reads and validates every annotation the sidecar depends on.
pub fn overrides(annotations: &BTreeMap<String, String>) -> Result<Overrides, InvalidValue> {
    let get = |name: &str| annotations.get(name).map(|v| v.trim());
    let boolean = |name: &str| match get(name) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(InvalidValue::new(
            name,
            other,
            "expected \"true\" or \"false\"",
        )),
    };
    let native_sidecar = boolean(NATIVE_SIDECAR)?;
    let rewrite_probes = boolean(REWRITE_PROBES)?;
    let quantity = |name: &str| -> Result<Option<String>, InvalidValue> {
        get(name)
            .map(|v| check_quantity(name, v).map(|()| v.to_string()))
            .transpose()
    };
    Ok(Overrides {
        native_sidecar,
        skip_outbound_ports: get(SKIP_OUTBOUND_PORTS)
            .map(|v| port_list(SKIP_OUTBOUND_PORTS, v))
            .transpose()?
            .unwrap_or_default(),
        skip_inbound_ports: get(SKIP_INBOUND_PORTS)
            .map(|v| port_list(SKIP_INBOUND_PORTS, v))
            .transpose()?
            .unwrap_or_default(),
        skip_outbound_cidrs: get(SKIP_OUTBOUND_CIDRS)
            .map(|v| cidr_list(SKIP_OUTBOUND_CIDRS, v))
            .transpose()?
            .unwrap_or_default(),
        cpu_request: quantity(PROXY_CPU_REQUEST)?,
        memory_request: quantity(PROXY_MEMORY_REQUEST)?,
        cpu_limit: quantity(PROXY_CPU_LIMIT)?,
        memory_limit: quantity(PROXY_MEMORY_LIMIT)?,
        log_level: get(PROXY_LOG_LEVEL)
            .map(|v| check_log_level(PROXY_LOG_LEVEL, v).map(|()| v.to_string()))
            .transpose()?,
        rewrite_probes,
    })
}

/// `80, 443,8000-8100` → `80,443,8000-8100`. Ports are 1..=65535; ranges are `low-high`.
pub fn port_list(name: &str, value: &str) -> Result<String, InvalidValue> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = |why: &str| InvalidValue::new(name, value, format!("{item:?} {why}"));
        let port = |s: &str| match s.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(bad("is not a port (1-65535) or a range low-high")),
        };
        match item.split_once('-') {
            Some((low, high)) => {
                let (low, high) = (port(low)?, port(high)?);
                if low > high {
                    return Err(bad("is a range whose low end is above its high end"));
                }
                out.push(format!("{low}-{high}"));
            }
            None => out.push(port(item)?.to_string()),
        }
    }
    Ok(out.join(","))
}

/// `10.0.0.0/8, fd00::/8, 192.168.1.1` → `10.0.0.0/8,fd00::/8,192.168.1.1/32`.
pub fn cidr_list(name: &str, value: &str) -> Result<String, InvalidValue> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || InvalidValue::new(name, value, format!("{item:?} is not an IP CIDR"));
        let (addr, len) = match item.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (item, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(len) => match len.parse::<u8>() {
                Ok(l) if l <= max && !len.starts_with('+') => l,
                _ => return Err(bad()),
            },
        };
        out.push(format!("{addr}/{len}"));
    }
    Ok(out.join(","))
}

/// A resource quantity such as `10m` or `20Mi` (non-negative).
pub fn check_quantity(name: &str, value: &str) -> Result<(), InvalidValue> {
    match quantity::parse(value) {
        Some(_) => Ok(()),
        None => Err(InvalidValue::new(
            name,
            value,
            "not a Kubernetes quantity (e.g. 100m, 0.5, 64Mi, 1Gi)",
        )),
    }
}

/// A proxy log filter: `info`, or directives `target=level` separated by commas.
pub fn check_log_level(name: &str, value: &str) -> Result<(), InvalidValue> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let ok = !value.is_empty()
        && value.split(',').all(|directive| {
            let level = directive
                .rsplit_once('=')
                .map_or(directive, |(target, level)| {
                    if target.is_empty()
                        || !target
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_:-.".contains(c))
                    {
                        "invalid"
                    } else {
                        level
                    }
                });
            LEVELS.contains(&level)
        });
    if ok {
        Ok(())
    } else {
        Err(InvalidValue::new(
            name,
            value,
            "expected a level (trace, debug, info, warn, error, off) or target=level directives",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn port_lists_are_canonical_and_checked() {
        assert_eq!(
            port_list("p", " 80, 8000-8100 ,").as_deref(),
            Ok("80,8000-8100")
        );
        assert_eq!(port_list("p", "").as_deref(), Ok(""));
        for bad in ["http", "0", "65536", "90-80", "1-", "-5", "80;443"] {
            let err = port_list("p", bad).expect_err(bad);
            assert_eq!(err.name, "p");
        }
    }

    #[test]
    fn cidr_lists_are_canonical_and_checked() {
        assert_eq!(
            cidr_list("c", "10.0.0.0/8, fd00::/8,192.168.1.1").as_deref(),
            Ok("10.0.0.0/8,fd00::/8,192.168.1.1/32")
        );
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "fd00::/129",
            "x/1",
            "10.0.0.0/+8",
        ] {
            assert!(cidr_list("c", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn log_levels() {
        for good in ["info", "warn,trellis_proxy=debug", "h2::codec=off"] {
            assert!(check_log_level("l", good).is_ok(), "{good}");
        }
        for bad in ["", "loud", "a b=info", "=info", "info,"] {
            assert!(check_log_level("l", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn overrides_name_the_bad_annotation() {
        let err = overrides(&map(&[(PROXY_MEMORY_LIMIT, "lots")])).expect_err("bad");
        assert_eq!(err.name, PROXY_MEMORY_LIMIT);
        assert!(err
            .to_string()
            .contains("trellis.io/proxy-memory-limit=\"lots\""));
        let err = inject(&map(&[(INJECT, "yes")])).expect_err("bad");
        assert_eq!(err.name, INJECT);
        let ok =
            overrides(&map(&[(NATIVE_SIDECAR, "false"), (PROXY_CPU_LIMIT, "1")])).expect("valid");
        assert_eq!(ok.native_sidecar, Some(false));
        assert_eq!(ok.cpu_limit.as_deref(), Some("1"));
    }
}
