//! The systems under test, started as separate processes so each one's CPU and memory can be read
//! from /proc: the upstream (`trellis-bench upstream`), Trellis (`trellis.rs`: a control plane and
//! two sidecars), and the peers (`peers.rs`: nginx, haproxy, the pingora baseline, a command
//! template). Owns the child-process handle (killed with its descendants when dropped, also on
//! failure), the loopback address plan, and readiness polling.

pub mod certs;
pub mod otlp_sink;
pub mod peers;
pub mod trellis;

use crate::load::{Protocol, Target};
use anyhow::{bail, Context};
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Loopback "pods": every system gets its own 127.0.0.x so ports never clash with a running demo.
pub mod addr {
    use super::*;
    pub const fn at(host: u8, port: u16) -> SocketAddr {
        SocketAddr::V4(std::net::SocketAddrV4::new(
            Ipv4Addr::new(127, 0, 0, host),
            port,
        ))
    }
    pub const CONTROL_PLANE: SocketAddr = at(60, 18090);
    /// The client pod (sidecar A) and the server pod (sidecar B, the upstream).
    pub const CLIENT_POD: u8 = 61;
    pub const SERVER_POD: u8 = 62;
    /// A second sidecar pair that samples every trace and exports it (the tracing-cost path).
    pub const TRACED_CLIENT_POD: u8 = 71;
    pub const TRACED_SERVER_POD: u8 = 72;
    /// The OTLP sink the traced pair exports to.
    pub const OTLP_SINK: SocketAddr = at(60, 14317);
    pub const UPSTREAM_H1: SocketAddr = at(SERVER_POD, 18080);
    pub const UPSTREAM_H2C: SocketAddr = at(SERVER_POD, 18081);
}

/// The upstream port for a protocol.
pub fn upstream_for(protocol: Protocol) -> SocketAddr {
    match protocol {
        Protocol::Http1 => addr::UPSTREAM_H1,
        Protocol::H2c | Protocol::Grpc => addr::UPSTREAM_H2C,
    }
}

/// Which path through a system a scenario takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    Direct,
    OneHop,
    Mesh,
}

impl PathKind {
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::OneHop => "one hop",
            PathKind::Mesh => "mesh path",
        }
    }
}

/// A child process; it and its descendants are killed when this is dropped.
pub struct Process {
    pub name: String,
    child: Child,
}

impl Process {
    /// Starts `program args`, output appended to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[OsString],
        log: &Path,
    ) -> anyhow::Result<Process> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let mut command = std::process::Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env("NO_COLOR", "1");
        // Killed with the bench too when it cannot clean up (SIGKILL, a crash). Spawned from the
        // runtime's workers, which live as long as the run.
        trellis_os::child::killed_with_parent(&mut command);
        let child = Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Process {
            name: name.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("{} exited ({status}); see its log", self.name),
            Err(e) => bail!("{}: {e}", self.name),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Collect the descendants first, then kill the process itself (so a master cannot respawn
        // a worker), then the descendants by pid (nginx workers outlive a killed master).
        let kids = self.child.id().map(descendants).unwrap_or_default();
        let _ = self.child.start_kill();
        for kid in kids {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &kid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Every descendant of `pid`, from /proc/<pid>/task/*/children.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
                let found: Vec<u32> = text
                    .split_whitespace()
                    .filter_map(|c| c.parse().ok())
                    .collect();
                queue.extend(&found);
                all.extend(found);
            }
        }
        if all.len() > 1024 {
            break;
        }
    }
    all
}

/// Polls until a TCP connect to `addr` succeeds.
pub async fn wait_port(what: &str, addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!(
                "{what} did not listen on {addr} within {} s",
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One plain HTTP/1.1 GET; (status, body).
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, host)
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let rsp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .context("timed out")??;
    let status = rsp.status().as_u16();
    let body = rsp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A system ready for traffic on one path.
pub struct Running {
    /// "trellis", "nginx", …
    pub system: String,
    pub path: PathKind,
    pub protocols: Vec<Protocol>,
    /// The processes whose CPU and memory are reported (the proxies, not the upstream).
    pub measured: Vec<(String, u32)>,
    pub target: Box<dyn Fn(Protocol) -> Target + Send + Sync>,
}

/// The direct path: the load generator talks to the upstream.
pub fn direct() -> Running {
    Running {
        system: "direct".into(),
        path: PathKind::Direct,
        protocols: vec![Protocol::Http1, Protocol::H2c, Protocol::Grpc],
        measured: Vec::new(),
        target: Box::new(|p| Target::plain(upstream_for(p), "upstream")),
    }
}

/// Starts the upstream process (this binary's `upstream` subcommand).
pub async fn start_upstream(log: &Path) -> anyhow::Result<Process> {
    let exe = std::env::current_exe().context("finding the trellis-bench executable")?;
    let args: Vec<OsString> = vec![
        "upstream".into(),
        "--listen".into(),
        addr::UPSTREAM_H1.to_string().into(),
        "--listen".into(),
        addr::UPSTREAM_H2C.to_string().into(),
    ];
    let p = Process::spawn("upstream", &exe, &args, log)?;
    wait_port("the upstream", addr::UPSTREAM_H1, Duration::from_secs(10)).await?;
    wait_port("the upstream", addr::UPSTREAM_H2C, Duration::from_secs(10)).await?;
    Ok(p)
}
