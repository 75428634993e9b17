//! The demo's child processes: each is this same binary run with a subcommand, so the demo needs
//! nothing installed. Owns starting them with their output forwarded line by line under their
//! name, noticing when one exits, and stopping them all (they are also killed if the demo's
//! handle is dropped, so an early return cannot leave a sidecar holding its ports).

use anyhow::{bail, Context};
use std::ffi::OsString;
use std::future::Future;
use std::io::IsTerminal as _;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

const POLL: Duration = Duration::from_millis(100);
const STOP_LIMIT: Duration = Duration::from_secs(5);

struct Running {
    name: String,
    child: Child,
}

/// The running children, in start order.
pub struct Children {
    running: Vec<Running>,
}

impl Children {
    pub fn new() -> Children {
        Children {
            running: Vec::new(),
        }
    }

    /// Starts `trellis <args>` as `name`, forwarding its stdout and stderr to ours.
    pub fn spawn(
        &mut self,
        name: &str,
        args: impl IntoIterator<Item = OsString>,
    ) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("finding the trellis executable")?;
        let mut command = Command::new(&exe);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Their logs end up wherever ours go: no colour codes in a file or a pipe.
        if !std::io::stderr().is_terminal() {
            command.env("NO_COLOR", "1");
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {name} ({})", exe.display()))?;
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward(name.to_owned(), out));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward(name.to_owned(), err));
        }
        self.running.push(Running {
            name: name.to_owned(),
            child,
        });
        Ok(())
    }

    /// Polls `ready` until it holds; fails if `limit` passes or a child exits first.
    pub async fn wait_for<F, Fut>(
        &mut self,
        what: &str,
        limit: Duration,
        mut ready: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let start = Instant::now();
        loop {
            if ready().await {
                return Ok(());
            }
            if let Some((name, status)) = self.first_exited() {
                bail!("{name} exited ({status}) while waiting for {what}; its output is above");
            }
            if start.elapsed() > limit {
                bail!("{what} was not ready within {} s", limit.as_secs());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Resolves when any child exits, with its name and how it ended.
    pub async fn wait_any_exit(&mut self) -> (String, String) {
        loop {
            if let Some(exited) = self.first_exited() {
                return exited;
            }
            tokio::time::sleep(POLL * 2).await;
        }
    }

    fn first_exited(&mut self) -> Option<(String, String)> {
        self.running
            .iter_mut()
            .find_map(|r| match r.child.try_wait() {
                Ok(Some(status)) => Some((r.name.clone(), status.to_string())),
                Ok(None) => None,
                Err(e) => Some((r.name.clone(), format!("cannot tell: {e}"))),
            })
    }

    /// Kills every child and waits for each to be gone, so none outlives the demo.
    pub async fn stop_all(&mut self) {
        for r in &mut self.running {
            // Already exited is fine: that is what we want.
            let _ = r.child.start_kill();
        }
        for mut r in self.running.drain(..) {
            match tokio::time::timeout(STOP_LIMIT, r.child.wait()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => eprintln!("waiting for {}: {e}", r.name),
                Err(_) => eprintln!("{} did not stop within {STOP_LIMIT:?}", r.name),
            }
        }
    }
}

/// Copies a child's output to our stderr, each line prefixed with the child's name.
async fn forward(name: String, stream: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("{name:<15}| {line}");
    }
}

/// Ctrl-C, SIGTERM or SIGHUP (the terminal went away): all mean "stop the demo".
pub async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let hup = signal(SignalKind::hangup());
    match (term, hup) {
        (Ok(mut term), Ok(mut hup)) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
        }
        _ => {
            eprintln!("cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
