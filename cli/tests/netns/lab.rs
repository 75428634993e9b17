//! The network-namespace lab of `netns.rs`: three namespaces (pods A and B, and a "control"
//! namespace C), veth links, processes started inside them, and clean-up on drop (processes
//! killed, namespaces deleted), also when the test fails.
//!
//! ```text
//!   C (control plane :8090, an outside server :9090)
//!   ├── veth 10.231.1.1 ── 10.231.1.2  A (app, redirect, sidecar as uid 2102)
//!   └── veth 10.231.2.1 ── 10.231.2.2  B (apps, redirect, sidecar as uid 2102)
//!   A 10.231.0.1 ── veth ── 10.231.0.2 B          (the pod-to-pod link, captured)
//! ```
//!
//! The control plane gets its own namespace (rather than running inside pod A) so that no pod's
//! iptables rules see its traffic and both sidecars reach it the same way, over a link of their
//! own; C also plays "the world outside the mesh". Every address is private and exists only
//! inside these namespaces.

// Each test binary uses a different part of the lab.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PROXY_UID: u32 = 2102;
pub const A_POD: &str = "10.231.0.1";
pub const B_POD: &str = "10.231.0.2";
pub const C_FOR_A: &str = "10.231.1.1";
pub const C_FOR_B: &str = "10.231.2.1";
pub const B_FROM_C: &str = "10.231.2.2";

/// Why the lab cannot run here, if it cannot.
pub fn missing_prerequisites() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next().map(str::to_owned));
    if uid.as_deref() != Some("0") {
        return Some("not running as root".into());
    }
    for tool in ["ip", "iptables", "tcpdump", "python3", "setpriv"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// Whether the lab can run here: if not, `test` is reported SKIPPED, or fails under CI (`CI`
/// set), where every prerequisite is installed and a skip would hide a lost suite.
pub fn can_run(test: &str) -> bool {
    let Some(why) = missing_prerequisites() else {
        return true;
    };
    if std::env::var_os("CI").is_some() {
        panic!("{test} cannot run under CI: {why}");
    }
    eprintln!("\n*** SKIPPED {test}: {why} ***\n");
    false
}

pub struct Lab {
    pub ns: [String; 3],
    pub dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
}

/// Runs a command to completion, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Lab {
    /// Creates the namespaces and links; names are unique per test run (pid-based).
    pub fn new() -> Lab {
        let id = std::process::id();
        let ns = [format!("tr{id}a"), format!("tr{id}b"), format!("tr{id}c")];
        let lab = Lab {
            ns,
            dir: tempfile::tempdir().expect("tempdir"),
            children: Vec::new(),
        };
        for ns in &lab.ns {
            run(Command::new("ip").args(["netns", "add", ns]));
            lab.ip(ns, &["link", "set", "lo", "up"]);
        }
        let [a, b, c] = [&lab.ns[0], &lab.ns[1], &lab.ns[2]];
        lab.link(("ab", a, "10.231.0.1/24"), ("ba", b, "10.231.0.2/24"));
        lab.link(("ac", a, "10.231.1.2/24"), ("ca", c, "10.231.1.1/24"));
        lab.link(("bc", b, "10.231.2.2/24"), ("cb", c, "10.231.2.1/24"));
        lab
    }

    /// The interface name of one end of a link (unique per run, at most 15 characters).
    pub fn veth(&self, end: &str) -> String {
        format!("t{}{end}", std::process::id() % 10_000_000)
    }

    fn ip(&self, ns: &str, args: &[&str]) {
        run(Command::new("ip").args(["-n", ns]).args(args));
    }

    fn link(&self, (e1, ns1, a1): (&str, &str, &str), (e2, ns2, a2): (&str, &str, &str)) {
        let (v1, v2) = (self.veth(e1), self.veth(e2));
        run(Command::new("ip").args(["link", "add", &v1, "type", "veth", "peer", "name", &v2]));
        for (v, ns, addr) in [(&v1, ns1, a1), (&v2, ns2, a2)] {
            run(Command::new("ip").args(["link", "set", v, "netns", ns]));
            self.ip(ns, &["addr", "add", addr, "dev", v]);
            self.ip(ns, &["link", "set", v, "up"]);
        }
    }

    /// A command run inside `ns` (as root).
    pub fn cmd(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// A command run inside `ns` as `uid` (`ip netns exec` needs root, so the uid is dropped
    /// by `setpriv` after entering the namespace).
    pub fn cmd_as(&self, ns: &str, uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = self.cmd(ns, "setpriv");
        let id = uid.to_string();
        c.args(["--reuid", &id, "--regid", &id, "--clear-groups", "--"])
            .arg(program);
        c
    }

    /// Starts a long-running process, logging to `<dir>/<name>.log`; killed on drop.
    pub fn spawn(&mut self, name: &str, mut cmd: Command) {
        let log = self.log_path(name);
        let file = std::fs::File::create(&log).expect("log file");
        let err = file.try_clone().expect("log file");
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{name}: {e}"));
        self.children.push((name.to_string(), child));
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Stops one process with SIGINT (so tcpdump flushes) and waits for it.
    pub fn interrupt(&mut self, name: &str) {
        if let Some(i) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.children.remove(i);
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs Python code inside `ns` (as root: the app, subject to the redirect).
    pub fn python(&self, ns: &str, code: &str) -> Output {
        self.cmd(ns, "python3")
            .args(["-c", code])
            .output()
            .expect("python3")
    }

    /// Polls `check` until it holds, or panics with the logs after `limit`.
    pub fn wait_for(&self, what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}\n{}", self.logs());
    }

    /// Every process log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (name, _) in &self.children {
            let text = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out += &format!("--- {name}\n");
            for line in tail.into_iter().rev() {
                out += line;
                out.push('\n');
            }
        }
        out
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A directory the proxy's uid can read (the lab's own is 0700).
    pub fn shared_dir(&self) -> PathBuf {
        let dir = self.path("shared");
        std::fs::create_dir_all(&dir).expect("mkdir");
        set_mode(self.dir.path(), 0o755);
        set_mode(&dir, 0o755);
        dir
    }
}

/// Python for a server-speaks-first TCP service (SMTP-like) on port 2525: it greets with
/// `220 <greeting>`, reads one line and answers `250 got <line>`.
pub fn banner_server(greeting: &str) -> String {
    format!(
        "import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 2525)); s.listen(8)
while True:
    c, a = s.accept()
    c.sendall(b'220 {greeting}\\r\\n')
    line = c.makefile('rb').readline()
    c.sendall(b'250 got ' + line); c.close()
"
    )
}

/// The `trellis` binary the lab runs for every role.
pub const BIN: &str = env!("CARGO_BIN_EXE_trellis");

/// A control plane started by `Lab::start_control_plane`.
pub struct ControlPlane {
    pub state: PathBuf,
    /// Its CA certificate, readable by the proxy's uid.
    pub ca: PathBuf,
}

/// How a sidecar listens: the values of `--inbound`, `--outbound` and `--admin`.
pub struct Listen<'a> {
    pub inbound: &'a str,
    pub outbound: &'a str,
    pub admin: &'a str,
}

/// As the injector configures a pod's sidecar.
pub const INJECTED: Listen<'static> = Listen {
    inbound: "0.0.0.0:4143,[::]:4143",
    outbound: "127.0.0.1:4140,[::1]:4140",
    admin: "0.0.0.0:4191,[::]:4191",
};

impl Lab {
    /// Starts the control plane in C (`ns[2]`) on port 8090 with `yaml` as its mesh config and
    /// waits until it accepts connections.
    pub fn start_control_plane(&mut self, yaml: &str) -> ControlPlane {
        let c = self.ns[2].clone();
        let state = self.path("state");
        let config = self.path("mesh.yaml");
        std::fs::write(&config, yaml).expect("mesh.yaml");
        let mut cp = self.cmd(&c, BIN);
        cp.args(["control-plane", "serve", "--listen", "0.0.0.0:8090"])
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state);
        self.spawn("control-plane", cp);
        let probe = "import socket; socket.create_connection(('127.0.0.1', 8090), timeout=1)";
        self.wait_for("the control plane", Duration::from_secs(30), || {
            self.python(&c, probe).status.success()
        });
        let ca = self.shared_dir().join("ca.pem");
        std::fs::copy(state.join("ca.crt.pem"), &ca).expect("copy the CA");
        set_mode(&ca, 0o644);
        ControlPlane { state, ca }
    }

    /// The pod's init step in `ns`, as the injector runs it, plus `extra` flags.
    pub fn redirect(&self, ns: &str, extra: &[&str]) {
        let mut redirect = self.cmd(ns, BIN);
        redirect.args(["proxy", "redirect", "--proxy-uid", &PROXY_UID.to_string()]);
        redirect.args(["--inbound-port", "4143", "--outbound-port", "4140"]);
        redirect.args(["--skip-inbound-ports", "4191"]);
        run(redirect.args(extra));
    }

    /// The sidecar of service `name` in `ns` (transparent mode, as uid `PROXY_UID`), reaching the
    /// control plane at `control_plane` (an address of C), to spawn. `extra` adds flags.
    pub fn sidecar(
        &self,
        cp: &ControlPlane,
        (ns, name, control_plane): (&str, &str, &str),
        listen: &Listen,
        extra: &[&str],
    ) -> Command {
        let token = run(Command::new(BIN)
            .args(["control-plane", "token", "--namespace", "default"])
            .args(["--service-account", name])
            .arg("--state-dir")
            .arg(&cp.state));
        let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
        let mut proxy = self.cmd_as(ns, PROXY_UID, BIN);
        proxy
            .args(["proxy", "--transparent", "--service", name])
            .args(["--inbound", listen.inbound, "--outbound", listen.outbound])
            .args(["--admin", listen.admin, "--log", "info,trellis_proxy=debug"])
            .arg("--control-plane")
            .arg(format!("https://{control_plane}:8090"))
            .arg("--control-plane-ca")
            .arg(&cp.ca)
            .args(extra)
            .env("TRELLIS_TOKEN", token);
        proxy
    }

    /// Waits until the sidecar in `ns` answers `/ready` on its admin port.
    pub fn wait_ready(&self, ns: &str) {
        let ready =
            "import urllib.request as u; u.urlopen('http://127.0.0.1:4191/ready', timeout=1)";
        self.wait_for("the sidecar to be ready", Duration::from_secs(30), || {
            self.python(ns, ready).status.success()
        });
    }

    /// Routes `cidr` out of the end `end` of a link, in `ns` (a node's route for its service
    /// range: the addresses exist nowhere, only the sidecar knows them).
    pub fn add_route(&self, ns: &str, end: &str, cidr: &str) {
        self.ip(ns, &["route", "add", cidr, "dev", &self.veth(end)]);
    }

    /// Adds an address to the end `end` (see `veth`) of a link, in `ns`. IPv6 addresses skip
    /// duplicate address detection, which would keep them unusable for a second or two.
    pub fn add_address(&self, ns: &str, end: &str, cidr: &str) {
        let mut args = vec!["addr", "add", cidr, "dev"];
        let veth = self.veth(end);
        args.push(&veth);
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(ns, &args);
    }
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
