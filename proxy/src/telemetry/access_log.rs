//! The optional access log: one JSON object per request, written by a dedicated thread so the
//! runtime never blocks on a slow disk or terminal. A full queue drops lines rather than waiting.

use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender};

#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: SyncSender<String>,
}

impl AccessLog {
    /// `target` is `stdout` or a file path (appended to).
    pub fn open(target: &str) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn Write + Send> = if target == "stdout" || target == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)?,
            )
        };
        let (tx, rx) = sync_channel::<String>(4096);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                while let Ok(line) = rx.recv() {
                    if out
                        .write_all(line.as_bytes())
                        .and_then(|_| out.write_all(b"\n"))
                        .is_err()
                    {
                        break;
                    }
                    // Flush when the queue is drained, so lines appear promptly without a syscall
                    // per line under load.
                    if let Ok(mut queued) = rx.try_recv().map(Some) {
                        while let Some(next) = queued.take() {
                            let _ = out
                                .write_all(next.as_bytes())
                                .and_then(|_| out.write_all(b"\n"));
                            queued = rx.try_recv().ok();
                        }
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(AccessLog { tx })
    }

    pub fn write(&self, entry: &serde_json::Value) {
        let _ = self.tx.try_send(entry.to_string());
    }
}
