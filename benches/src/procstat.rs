//! Per-process CPU time and memory from /proc: `utime + stime` of `/proc/<pid>/stat` (in clock
//! ticks) and `VmHWM` / `VmRSS` of `/proc/<pid>/status`. A process's children (nginx workers) are
//! counted with it. The peak (`VmHWM`) is reset through `/proc/<pid>/clear_refs` before each
//! measured run, so each scenario reports its own peak.

use serde::Serialize;
use std::time::Duration;

/// CPU time and peak memory of a process tree, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub cpu: Duration,
    pub peak_rss_kib: u64,
    pub rss_kib: u64,
}

/// What one proxy process used during a measured run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub process: String,
    pub cpu_s: f64,
    pub cpu_s_per_1k_requests: f64,
    pub peak_rss_mib: f64,
}

/// Clock ticks per second for /proc/<pid>/stat (sysconf(_SC_CLK_TCK); 100 on every Linux
/// architecture we run on, and what `getconf CLK_TCK` prints).
const TICKS_PER_SECOND: u64 = 100;

/// `utime + stime` in ticks, from the text of /proc/<pid>/stat. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its closing parenthesis.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Vm…:   1234 kB` line's value, in KiB.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The process and all its descendants.
fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    all.extend(crate::systems::descendants(pid));
    all
}

/// Reads a process tree now; None if the process is gone.
pub fn sample(pid: u32) -> Option<Sample> {
    let mut total = Sample::default();
    let mut found = false;
    for p in tree(pid) {
        let (Ok(stat), Ok(status)) = (
            std::fs::read_to_string(format!("/proc/{p}/stat")),
            std::fs::read_to_string(format!("/proc/{p}/status")),
        ) else {
            continue;
        };
        found = true;
        let ticks = parse_stat_ticks(&stat).unwrap_or(0);
        total.cpu += Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND);
        total.peak_rss_kib += parse_status_kib(&status, "VmHWM").unwrap_or(0);
        total.rss_kib += parse_status_kib(&status, "VmRSS").unwrap_or(0);
    }
    found.then_some(total)
}

/// Open file descriptors of one process (entries of /proc/<pid>/fd); None if it is gone.
pub fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|entries| entries.count())
}

/// Resets the peak RSS of the tree (writes 5 to clear_refs; allowed for our own children).
pub fn reset_peak(pid: u32) {
    for p in tree(pid) {
        let _ = std::fs::write(format!("/proc/{p}/clear_refs"), "5");
    }
}

/// Usage between two samples for `requests` requests.
pub fn usage(process: &str, before: Sample, after: Sample, requests: u64) -> Usage {
    let cpu_s = after.cpu.saturating_sub(before.cpu).as_secs_f64();
    Usage {
        process: process.to_string(),
        cpu_s,
        cpu_s_per_1k_requests: if requests == 0 {
            0.0
        } else {
            cpu_s * 1000.0 / requests as f64
        },
        peak_rss_mib: after.peak_rss_kib as f64 / 1024.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let stat =
            "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1 2 3";
        assert_eq!(parse_stat_ticks(stat), Some(300));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn status_values_in_kib() {
        let status = "Name:\ttrellis\nVmHWM:\t   20480 kB\nVmRSS:\t    8192 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(8192));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn our_own_process_can_be_sampled() {
        let s = sample(std::process::id());
        assert!(s.is_some_and(|s| s.peak_rss_kib > 0));
    }

    #[test]
    fn our_own_fds_can_be_counted() {
        let before = open_fds(std::process::id()).unwrap_or(0);
        let file = std::fs::File::open("/proc/self/status");
        let after = open_fds(std::process::id()).unwrap_or(0);
        assert!(
            file.is_ok() && before > 0 && after > before,
            "{before} -> {after}"
        );
    }

    #[test]
    fn usage_per_thousand_requests() {
        let before = Sample::default();
        let after = Sample {
            cpu: Duration::from_millis(500),
            peak_rss_kib: 10240,
            rss_kib: 0,
        };
        let u = usage("p", before, after, 10_000);
        assert!((u.cpu_s_per_1k_requests - 0.05).abs() < 1e-9);
        assert!((u.peak_rss_mib - 10.0).abs() < 1e-9);
    }
}
