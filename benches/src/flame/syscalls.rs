//! `flame --syscalls`: each sidecar's system calls and context switches per request, counted
//! from `perf record -e raw_syscalls:sys_enter -e context-switches -c 1` (every event recorded, no
//! call graphs). The flame graphs put half of a sidecar's CPU in the kernel, mostly switching
//! tasks; these counts say which calls cause it and whether a change removed any.

use std::collections::BTreeMap;

/// One sidecar's counts over the recording.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyscallCounts {
    /// System call name (or `nr N` when the table below does not know it) → calls.
    pub calls: BTreeMap<String, u64>,
    pub context_switches: u64,
}

impl SyscallCounts {
    pub fn total_calls(&self) -> u64 {
        self.calls.values().sum()
    }
}

/// Counts the events of `perf script` output: a `raw_syscalls:sys_enter:` line carries `NR n (`,
/// a `context-switches:` line is one switch.
pub fn count(script: &str) -> SyscallCounts {
    let mut counts = SyscallCounts::default();
    for line in script.lines() {
        if line.contains("context-switches") || line.contains(" cs:") {
            counts.context_switches += 1;
        } else if let Some(rest) = line.split("sys_enter:").nth(1) {
            let nr = (rest.split_whitespace())
                .skip_while(|w| *w != "NR")
                .nth(1)
                .and_then(|n| n.parse::<u32>().ok());
            if let Some(nr) = nr {
                *counts.calls.entry(name(nr)).or_default() += 1;
            }
        }
    }
    counts
}

/// The x86_64 numbers of the calls a proxy makes on its request path; others by number.
fn name(nr: u32) -> String {
    let known = match nr {
        0 => "read",
        1 => "write",
        3 => "close",
        7 => "poll",
        19 => "readv",
        20 => "writev",
        24 => "sched_yield",
        41 => "socket",
        42 => "connect",
        44 => "sendto",
        45 => "recvfrom",
        46 => "sendmsg",
        47 => "recvmsg",
        48 => "shutdown",
        54 => "setsockopt",
        55 => "getsockopt",
        202 => "futex",
        228 => "clock_gettime",
        232 => "epoll_wait",
        233 => "epoll_ctl",
        281 => "epoll_pwait",
        288 => "accept4",
        318 => "getrandom",
        441 => "epoll_pwait2",
        _ => return format!("nr {nr}"),
    };
    known.to_string()
}

/// The markdown table: one column per sidecar, calls per request by name, the switches last.
pub fn table(sides: &[(String, SyscallCounts)], requests: u64) -> String {
    let per = |n: u64| n as f64 / requests.max(1) as f64;
    let mut names: Vec<&String> = sides.iter().flat_map(|(_, c)| c.calls.keys()).collect();
    names.sort();
    names.dedup();
    let mut out = String::from("| per request |");
    for (side, _) in sides {
        out.push_str(&format!(" {side} |"));
    }
    out.push_str("\n|---|");
    out.push_str(&"--:|".repeat(sides.len()));
    out.push('\n');
    let mut row = |label: &str, value: &dyn Fn(&SyscallCounts) -> u64| {
        out.push_str(&format!("| {label} |"));
        for (_, c) in sides {
            out.push_str(&format!(" {:.2} |", per(value(c))));
        }
        out.push('\n');
    };
    for name in names {
        row(name, &|c| c.calls.get(name).copied().unwrap_or(0));
    }
    row("**all system calls**", &|c| c.total_calls());
    row("**context switches**", &|c| c.context_switches);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "\
tokio-runtime-w  4242 [001]  10.000001: raw_syscalls:sys_enter: NR 232 (5, 7f00, 1024, 1, 0, 0)
tokio-runtime-w  4242 [001]  10.000002:          1 context-switches:
tokio-runtime-w  4242 [001]  10.000003: raw_syscalls:sys_enter: NR 0 (9, 7f00, 8192, 0, 0, 0)
tokio-runtime-w  4242 [001]  10.000004: raw_syscalls:sys_enter: NR 0 (9, 7f00, 8192, 0, 0, 0)
tokio-runtime-w  4242 [001]  10.000005: raw_syscalls:sys_enter: NR 20 (10, 7f00, 2, 0, 0, 0)
tokio-runtime-w  4242 [001]  10.000006: raw_syscalls:sys_enter: NR 999 (0, 0, 0, 0, 0, 0)
";

    #[test]
    fn counts_calls_by_name_and_switches() {
        let c = count(SCRIPT);
        assert_eq!(c.calls.get("read"), Some(&2));
        assert_eq!(c.calls.get("writev"), Some(&1));
        assert_eq!(c.calls.get("epoll_wait"), Some(&1));
        assert_eq!(c.calls.get("nr 999"), Some(&1));
        assert_eq!(c.total_calls(), 5);
        assert_eq!(c.context_switches, 1);
    }

    #[test]
    fn table_divides_by_requests() {
        let t = table(&[("a".into(), count(SCRIPT))], 2);
        assert!(t.contains("| read | 1.00 |"), "{t}");
        assert!(t.contains("| **all system calls** | 2.50 |"), "{t}");
        assert!(t.contains("| **context switches** | 0.50 |"), "{t}");
    }
}
