//! How many runtime worker threads the proxy runs. A sidecar shares its pod's CPU limit with the
//! app, and workers beyond what the limit grants only add wake-ups and work stealing that the
//! CFS quota then throttles: on the mesh path, one worker used 28–36% less CPU per request than
//! one per core (issue #15). So the default is the container's CPU limit — cgroup v2 `cpu.max`,
//! else cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` — rounded up (a 1.5-CPU limit can use
//! two threads; tokio's default rounds down), at least 1; without a limit, the parallelism the
//! OS reports. `--workers` overrides all of it, and the choice and its source are logged.
//!
//! The parsers take file contents, so they are tested without a cgroup file system; `detect_in`
//! takes the directory layout, so the lookup order is tested with files in a temporary directory.

use std::fmt;
use std::path::Path;

/// Where the worker count came from, logged at startup so a throttled sidecar can be explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerSource {
    /// `--workers` / `TRELLIS_WORKERS`.
    Flag,
    /// cgroup v2 `cpu.max` at this path, with its quota and period.
    CgroupV2 {
        path: String,
        quota: u64,
        period: u64,
    },
    /// cgroup v1 CFS quota and period under this directory.
    CgroupV1 {
        dir: String,
        quota: u64,
        period: u64,
    },
    /// No CPU limit found: `std::thread::available_parallelism`.
    Parallelism,
    /// Neither a limit nor the parallelism could be read.
    Fallback,
}

impl fmt::Display for WorkerSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerSource::Flag => write!(f, "--workers"),
            WorkerSource::CgroupV2 {
                path,
                quota,
                period,
            } => write!(f, "cgroup v2 {path}: quota {quota} / period {period}"),
            WorkerSource::CgroupV1 { dir, quota, period } => {
                write!(f, "cgroup v1 {dir}: cfs quota {quota} / period {period}")
            }
            WorkerSource::Parallelism => write!(f, "no CPU limit; available parallelism"),
            WorkerSource::Fallback => write!(f, "no CPU limit and no parallelism readable"),
        }
    }
}

/// The chosen count and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workers {
    pub count: usize,
    pub source: WorkerSource,
}

/// A cgroup file that exists but does not say what the kernel documents.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CgroupError {
    #[error("expected `<quota|max> <period>`, found {0:?}")]
    CpuMaxShape(String),
    #[error("{what}: {value:?} is not a number")]
    NotANumber { what: &'static str, value: String },
    #[error("period is 0")]
    ZeroPeriod,
}

/// A CPU quota: `None` when the cgroup has no limit.
pub type Quota = Option<(u64, u64)>;

/// Parses cgroup v2 `cpu.max`: `"max 100000"` (no limit) or `"150000 100000"`.
pub fn parse_cpu_max(text: &str) -> Result<Quota, CgroupError> {
    let mut words = text.split_whitespace();
    let (Some(quota), period, None) = (words.next(), words.next(), words.next()) else {
        return Err(CgroupError::CpuMaxShape(text.trim().to_string()));
    };
    // The period may be omitted when written, but the kernel always prints it; default as it does.
    let period = match period {
        Some(p) => number("period", p)?,
        None => 100_000,
    };
    if quota == "max" {
        return Ok(None);
    }
    checked(number("quota", quota)?, period).map(Some)
}

/// Parses cgroup v1 `cpu.cfs_quota_us` (`-1`: no limit) and `cpu.cfs_period_us`.
pub fn parse_cfs(quota: &str, period: &str) -> Result<Quota, CgroupError> {
    let quota = quota.trim();
    if quota.starts_with('-') {
        return Ok(None);
    }
    checked(
        number("cfs_quota_us", quota)?,
        number("cfs_period_us", period)?,
    )
    .map(Some)
}

fn number(what: &'static str, text: &str) -> Result<u64, CgroupError> {
    text.trim().parse().map_err(|_| CgroupError::NotANumber {
        what,
        value: text.trim().to_string(),
    })
}

fn checked(quota: u64, period: u64) -> Result<(u64, u64), CgroupError> {
    if period == 0 {
        return Err(CgroupError::ZeroPeriod);
    }
    Ok((quota, period))
}

/// CPUs granted by a quota, rounded up (1.5 CPUs is 2 workers: the half CPU is usable and one
/// worker could not use it), at least 1.
pub fn cpus(quota: u64, period: u64) -> usize {
    let whole = quota.div_ceil(period.max(1));
    usize::try_from(whole).unwrap_or(usize::MAX).max(1)
}

/// The worker count for this process: `flag` if given, else from the real cgroup files.
pub fn choose(flag: Option<usize>) -> (Workers, Vec<String>) {
    if let Some(count) = flag {
        return (
            Workers {
                count: count.max(1),
                source: WorkerSource::Flag,
            },
            Vec::new(),
        );
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    detect_in(Path::new("/sys/fs/cgroup"), &own, || {
        std::thread::available_parallelism().ok().map(usize::from)
    })
}

/// The lookup under a cgroup mount `root`, given the text of `/proc/self/cgroup`: cgroup v2 (this
/// process's own cgroup, then the root as a container with its own cgroup namespace sees it),
/// then cgroup v1's `cpu` controller, then `parallelism`. Returns the choice and a warning per
/// file that exists but could not be used (the next source is tried).
pub fn detect_in(
    root: &Path,
    proc_self_cgroup: &str,
    parallelism: impl FnOnce() -> Option<usize>,
) -> (Workers, Vec<String>) {
    let mut warnings = Vec::new();
    let mut v2 = Vec::new();
    if let Some(own) = proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().trim_start_matches('/'))
        .filter(|p| !p.is_empty())
    {
        v2.push(root.join(own).join("cpu.max"));
    }
    v2.push(root.join("cpu.max"));
    for path in v2 {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        match parse_cpu_max(&text) {
            Ok(Some((quota, period))) => {
                return (
                    Workers {
                        count: cpus(quota, period),
                        source: WorkerSource::CgroupV2 {
                            path: path.display().to_string(),
                            quota,
                            period,
                        },
                    },
                    warnings,
                )
            }
            // No limit here; a v2 host has no v1 files, so go on to the parallelism.
            Ok(None) => break,
            Err(e) => warnings.push(format!("{}: {e}", path.display())),
        }
    }
    for dir in ["cpu", "cpu,cpuacct", "cpuacct,cpu"].map(|d| root.join(d)) {
        let (Ok(quota), Ok(period)) = (
            std::fs::read_to_string(dir.join("cpu.cfs_quota_us")),
            std::fs::read_to_string(dir.join("cpu.cfs_period_us")),
        ) else {
            continue;
        };
        match parse_cfs(&quota, &period) {
            Ok(Some((quota, period))) => {
                return (
                    Workers {
                        count: cpus(quota, period),
                        source: WorkerSource::CgroupV1 {
                            dir: dir.display().to_string(),
                            quota,
                            period,
                        },
                    },
                    warnings,
                )
            }
            Ok(None) => break,
            Err(e) => warnings.push(format!("{}: {e}", dir.display())),
        }
    }
    let workers = match parallelism() {
        Some(n) => Workers {
            count: n.max(1),
            source: WorkerSource::Parallelism,
        },
        None => Workers {
            count: 1,
            source: WorkerSource::Fallback,
        },
    };
    (workers, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn cpu_max_with_a_quota_rounds_up() {
        assert_eq!(
            parse_cpu_max("150000 100000\n"),
            Ok(Some((150_000, 100_000)))
        );
        assert_eq!(cpus(150_000, 100_000), 2);
        assert_eq!(cpus(100_000, 100_000), 1);
        assert_eq!(cpus(200_000, 100_000), 2);
        // A tenth of a CPU still gets one worker.
        assert_eq!(cpus(10_000, 100_000), 1);
        assert_eq!(cpus(0, 100_000), 1);
    }

    #[test]
    fn cpu_max_without_a_limit_is_none() {
        assert_eq!(parse_cpu_max("max 100000\n"), Ok(None));
        assert_eq!(parse_cpu_max("max"), Ok(None));
    }

    #[test]
    fn malformed_cpu_max_is_an_error() {
        assert!(matches!(
            parse_cpu_max(""),
            Err(CgroupError::CpuMaxShape(_))
        ));
        assert!(matches!(
            parse_cpu_max("1 2 3"),
            Err(CgroupError::CpuMaxShape(_))
        ));
        assert!(matches!(
            parse_cpu_max("lots 100000"),
            Err(CgroupError::NotANumber { what: "quota", .. })
        ));
        assert_eq!(parse_cpu_max("50000 0"), Err(CgroupError::ZeroPeriod));
    }

    #[test]
    fn cfs_quota_minus_one_is_no_limit() {
        assert_eq!(parse_cfs("-1\n", "100000\n"), Ok(None));
        assert_eq!(
            parse_cfs("250000\n", "100000\n"),
            Ok(Some((250_000, 100_000)))
        );
        assert!(parse_cfs("x", "100000").is_err());
        assert_eq!(parse_cfs("1", "0"), Err(CgroupError::ZeroPeriod));
    }

    /// A scratch directory removed on drop (the proxy has no tempfile dependency).
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("trellis-workers-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("creating a scratch directory");
            Scratch(dir)
        }

        fn write(&self, rel: &str, text: &str) {
            let path = self.0.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("creating a directory");
            }
            std::fs::write(path, text).expect("writing a file");
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn v2_own_cgroup_comes_before_the_root() {
        let s = Scratch::new("v2own");
        s.write("cpu.max", "max 100000\n");
        s.write("kubepods/pod1/c1/cpu.max", "250000 100000\n");
        let (w, warnings) = detect_in(&s.0, "0::/kubepods/pod1/c1\n", || Some(8));
        assert_eq!(w.count, 3);
        assert!(matches!(
            w.source,
            WorkerSource::CgroupV2 { quota: 250_000, .. }
        ));
        assert!(warnings.is_empty());
    }

    #[test]
    fn v2_root_as_seen_in_a_cgroup_namespace() {
        let s = Scratch::new("v2root");
        s.write("cpu.max", "50000 100000\n");
        let (w, _) = detect_in(&s.0, "0::/\n", || Some(8));
        assert_eq!(w.count, 1);
        assert!(matches!(w.source, WorkerSource::CgroupV2 { .. }));
    }

    #[test]
    fn v2_without_a_limit_uses_the_parallelism() {
        let s = Scratch::new("v2max");
        s.write("cpu.max", "max 100000\n");
        let (w, _) = detect_in(&s.0, "0::/\n", || Some(6));
        assert_eq!(
            w,
            Workers {
                count: 6,
                source: WorkerSource::Parallelism
            }
        );
    }

    #[test]
    fn v1_quota_under_either_mount_name() {
        for dir in ["cpu", "cpu,cpuacct"] {
            let s = Scratch::new(&format!("v1-{}", dir.replace(',', "-")));
            s.write(&format!("{dir}/cpu.cfs_quota_us"), "200000\n");
            s.write(&format!("{dir}/cpu.cfs_period_us"), "100000\n");
            let (w, _) = detect_in(&s.0, "1:cpu:/\n", || Some(8));
            assert_eq!(w.count, 2, "{dir}");
            assert!(matches!(w.source, WorkerSource::CgroupV1 { .. }), "{dir}");
        }
    }

    #[test]
    fn v1_without_a_limit_uses_the_parallelism() {
        let s = Scratch::new("v1none");
        s.write("cpu/cpu.cfs_quota_us", "-1\n");
        s.write("cpu/cpu.cfs_period_us", "100000\n");
        let (w, _) = detect_in(&s.0, "1:cpu:/\n", || Some(4));
        assert_eq!(w.count, 4);
        assert_eq!(w.source, WorkerSource::Parallelism);
    }

    #[test]
    fn a_broken_file_is_warned_about_and_skipped() {
        let s = Scratch::new("broken");
        s.write("cpu.max", "garbage\n");
        s.write("cpu/cpu.cfs_quota_us", "300000\n");
        s.write("cpu/cpu.cfs_period_us", "100000\n");
        let (w, warnings) = detect_in(&s.0, "", || Some(8));
        assert_eq!(w.count, 3);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("cpu.max"), "{warnings:?}");
    }

    #[test]
    fn nothing_readable_falls_back_to_one() {
        let s = Scratch::new("empty");
        let (w, _) = detect_in(&s.0, "", || None);
        assert_eq!(
            w,
            Workers {
                count: 1,
                source: WorkerSource::Fallback
            }
        );
    }

    #[test]
    fn the_flag_wins() {
        let (w, _) = choose(Some(3));
        assert_eq!(
            w,
            Workers {
                count: 3,
                source: WorkerSource::Flag
            }
        );
    }
}
