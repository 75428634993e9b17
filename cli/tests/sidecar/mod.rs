//! A `trellis proxy` process for tests of the real binary: started against a harness mesh as the
//! `client` workload's second instance, its output captured in a log file, killed on drop (also
//! when a test fails).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use trellis_tests::drain_probe::RawHttp1;
use trellis_tests::Mesh;

const BIN: &str = env!("CARGO_BIN_EXE_trellis");

/// A `trellis proxy` process; killed on drop if it is still running (also when a test fails).
pub struct SidecarProcess {
    pub child: Child,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

impl SidecarProcess {
    /// Starts the proxy with `extra` flags after the usual ones and waits until it is ready.
    pub async fn start(mesh: &Mesh, extra: &[&str]) -> SidecarProcess {
        SidecarProcess::start_limited(mesh, None, extra).await
    }

    /// `start`, with the open-files limit (soft and hard) set to `nofile` when given (`prlimit`).
    pub async fn start_limited(mesh: &Mesh, nofile: Option<u64>, extra: &[&str]) -> SidecarProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, mesh.ca_pem()).expect("write the CA");
        let token = dir.path().join("token");
        std::fs::write(&token, mesh.token("client").expect("client token")).expect("token");
        let log = dir.path().join("proxy.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let (inbound, outbound, admin) = (free_port(), free_port(), free_port());
        let mut command = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = command
            .arg("proxy")
            .args(["--service", "client", "--node-id", "client-binary"])
            .arg("--control-plane")
            .arg(format!("https://{}", mesh.control_plane_addr()))
            .arg("--control-plane-ca")
            .arg(&ca)
            .arg("--token-file")
            .arg(&token)
            .args(["--inbound", &inbound.to_string()])
            .args(["--outbound", &outbound.to_string()])
            .args(["--admin", &admin.to_string()])
            .args(["--log", "info"])
            .args(extra)
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .expect("start trellis proxy");
        let mut proxy = SidecarProcess {
            child,
            outbound,
            admin,
            log,
            _dir: dir,
        };
        proxy.wait_ready().await;
        proxy
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn wait_ready(&mut self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("trellis proxy exited early ({status}):\n{}", self.log());
            }
            let probe = async {
                let mut c =
                    RawHttp1::send(self.admin, b"GET /ready HTTP/1.1\r\nhost: admin\r\n\r\n")
                        .await?;
                c.response().await
            };
            if matches!(probe.await, Ok(rsp) if rsp.status == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("trellis proxy never ready:\n{}", self.log());
    }

    /// SIGTERM, as the kubelet sends it.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("running child");
        // The shell's builtin `kill`: no procps needed.
        let sent = std::process::Command::new("sh")
            .args(["-c", &format!("kill -TERM {pid}")])
            .status()
            .expect("run sh");
        assert!(sent.success(), "kill -TERM {pid}");
    }

    pub async fn exit_status(&mut self, within: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => status,
            other => panic!(
                "trellis proxy did not exit within {within:?} ({other:?}):\n{}",
                self.log()
            ),
        }
    }
}
