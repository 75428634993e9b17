//! The open-files limit (RLIMIT_NOFILE): raising the soft limit to the hard one at start, and the
//! connection budget derived from it. At the common default soft limit of 1,024 a flood of
//! connections takes every descriptor: the control plane's reloader can no longer open the mesh
//! YAML, a sidecar can no longer reach the app, its peers or the control plane. So each binary
//! asks for all it may have and keeps a reserve that accepted connections never get.
//! This is the crate's only `unsafe`: two libc calls that have no std wrapper.
use std::io;

/// Descriptors kept back from connections: the reloader's reads, the CA and token files, the
/// runtime's own (epoll, eventfds, blocking threads), logs.
pub const RESERVE: u64 = 64;
/// The connection budget never goes below this, even under a tiny limit.
pub const MIN_CONNECTIONS: u64 = 8;

/// The soft and hard RLIMIT_NOFILE (`u64::MAX` for unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub soft: u64,
    pub hard: u64,
}

#[allow(unsafe_code)]
fn get() -> io::Result<Limits> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct we pass, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Limits {
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

#[allow(unsafe_code)]
fn set(limits: Limits) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: limits.soft,
        rlim_max: limits.hard,
    };
    // SAFETY: setrlimit only reads the struct we pass, which lives for the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The current limits.
pub fn current() -> io::Result<Limits> {
    get()
}

/// Raises the soft limit to the hard one; returns (before, after). Failing to raise is not fatal
/// (the caller logs it and runs with what it has).
pub fn raise_to_hard() -> io::Result<(Limits, Limits)> {
    let before = get()?;
    if before.soft < before.hard {
        set(Limits {
            soft: before.hard,
            hard: before.hard,
        })?;
    }
    Ok((before, get()?))
}

/// How many connections may be open at once under a soft limit of `soft` descriptors.
pub fn connection_budget(soft: u64) -> usize {
    let budget = soft.saturating_sub(RESERVE).max(MIN_CONNECTIONS);
    usize::try_from(budget).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_keeps_the_reserve() {
        assert_eq!(connection_budget(1024), 960);
        assert_eq!(connection_budget(128), 64);
        assert_eq!(connection_budget(20), MIN_CONNECTIONS as usize);
        assert!(connection_budget(u64::MAX) > 1 << 32);
    }

    #[test]
    fn raising_never_lowers() {
        let before = current().unwrap();
        let (was, now) = raise_to_hard().unwrap();
        assert_eq!(was.hard, before.hard);
        assert_eq!(now.soft, now.hard);
        assert!(now.soft >= before.soft);
    }
}
