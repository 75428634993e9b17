//! `trellis-proxy wait-ready`: blocks until the local proxy answers `GET /ready` with 200, or
//! fails after a timeout. The injector's fallback mode (clusters without native sidecars) runs it
//! as the proxy container's postStart hook, which holds the app's start until the proxy can
//! serve. Plain blocking I/O: it runs alone in a hook, not inside the proxy.

use anyhow::bail;
use clap::Parser;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "trellis-proxy wait-ready",
    about = "Wait until the local proxy is ready"
)]
pub struct WaitReady {
    /// The proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:4191")]
    pub admin: SocketAddr,
    /// Give up (exit 1) after this long.
    #[arg(long, default_value_t = 120)]
    pub timeout_seconds: u64,
}

/// One probe: Ok(true) on 200, Ok(false) on any other answer.
fn probe(admin: SocketAddr) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    Ok(head.starts_with(b"HTTP/1.1 200"))
}

pub fn run(args: &WaitReady) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds);
    loop {
        if matches!(probe(args.admin), Ok(true)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the proxy at {} was not ready within {} s",
                args.admin,
                args.timeout_seconds
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// An admin port that answers 503 `not_ready_for` times, then 200.
    fn admin(not_ready_for: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        std::thread::spawn(move || {
            for (i, conn) in listener.incoming().enumerate() {
                let Ok(mut conn) = conn else { return };
                let mut buf = [0u8; 512];
                let _ = conn.read(&mut buf);
                let status = if i < not_ready_for {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let _ = conn.write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                );
            }
        });
        addr
    }

    #[test]
    fn waits_through_not_ready_answers_until_200() {
        let addr = admin(3);
        let started = Instant::now();
        assert!(run(&WaitReady {
            admin: addr,
            timeout_seconds: 10
        })
        .is_ok());
        assert!(
            started.elapsed() >= Duration::from_millis(600),
            "it waited between probes"
        );
    }

    #[test]
    fn gives_up_after_the_timeout() {
        let addr = admin(usize::MAX);
        let err = run(&WaitReady {
            admin: addr,
            timeout_seconds: 1,
        })
        .map(|_| ())
        .unwrap_err();
        assert!(err.to_string().contains("not ready within 1 s"), "{err}");
    }
}
