//! Child processes that must not outlive the process that started them: the benchmark's
//! upstreams, sidecars and peer proxies, which a killed `trellis-bench` (SIGKILL, a crash) could
//! not stop itself.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the kernel send SIGKILL to the child started from `command` when the thread that
/// starts it ends (PR_SET_PDEATHSIG: the thread, not the process; start children from threads
/// that live as long as they should, such as a runtime's workers).
pub fn killed_with_parent(command: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the forked child before exec and calls only prctl, which is
    // async-signal-safe, and reads errno.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};

    #[test]
    fn the_child_is_killed_when_the_thread_that_started_it_ends() {
        let mut child = std::thread::spawn(|| {
            killed_with_parent(Command::new("sleep").arg("30"))
                .spawn()
                .unwrap_or_else(|e| panic!("sleep: {e}"))
        })
        .join()
        .unwrap_or_else(|_| panic!("the starting thread panicked"));
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => {
                    let _ = child.kill();
                    panic!("the child outlived its starting thread: {other:?}");
                }
            }
        };
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }
}
