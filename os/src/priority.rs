//! Background threads that must yield to the ones serving traffic: the span exporter encodes
//! and sends batches of spans, work that may wait, on machines where the proxy's one or two
//! workers share the cores with the app.
#![allow(unsafe_code)]

use std::io;

/// The nice value of a background thread: the lowest priority short of SCHED_IDLE, so it still
/// makes progress on a busy machine (about 1.5% of a core against one at nice 0) instead of
/// starving.
pub const BACKGROUND_NICE: i32 = 19;

/// Sets the calling thread's nice value (Linux applies it per thread, not per process). Raising
/// it needs no privilege; lowering it does.
pub fn set_current_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid has no preconditions; setpriority reads only its arguments.
    let result = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if result == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value (field 19) of the calling thread, from /proc/thread-self/stat.
    fn current_thread_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat")
            .unwrap_or_else(|e| panic!("/proc/thread-self/stat: {e}"));
        // The command name (field 2) may hold spaces; the fields after its ')' do not.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let nice = after_name.split_whitespace().nth(16);
        nice.and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no nice field in {stat}"))
    }

    #[test]
    fn only_the_calling_thread_is_lowered() {
        let before = current_thread_nice();
        let lowered = std::thread::spawn(|| {
            set_current_thread_nice(BACKGROUND_NICE).map(|()| current_thread_nice())
        })
        .join()
        .unwrap_or_else(|_| panic!("the thread panicked"));
        assert_eq!(lowered.ok(), Some(BACKGROUND_NICE));
        assert_eq!(
            current_thread_nice(),
            before,
            "the caller's own priority is unchanged"
        );
    }
}
