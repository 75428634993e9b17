//! The proxy image works with nothing but what the Dockerfile puts in it (issue 17). The test
//! builds `trellis-proxy` as the Dockerfile's builder does (its RUSTFLAGS, `--target
//! x86_64-unknown-linux-gnu`; debug instead of release, for time) into `target/static`, a target
//! directory of its own (the outer `cargo test` keeps its lock on its own directory, and the
//! shared debug build is not invalidated), then checks:
//!
//! - the ELF file has no program interpreter and needs no shared library;
//! - in a chroot holding only the binary and a CA file, as uid 2102 (the image's USER), it prints
//!   its version and its redirect rules, and serves: it connects to a stand-in control plane by
//!   IP and answers `/live` on its admin port (the chroot shares the network namespace);
//! - in a chroot laid out as the proxy image (`deploy/images/rootfs.sh --iptables`, the binary
//!   where the Dockerfile copies it, found on the Dockerfile's PATH) plus the /etc/hosts and
//!   /etc/resolv.conf the kubelet mounts, the static glibc resolves the control plane's name
//!   from /etc/hosts and from DNS (a stand-in DNS server on 127.77.0.53);
//! - in that chroot and a fresh network namespace, the injector's `trellis-init` command (as
//!   root) installs its iptables and ip6tables rules with the image's iptables.
//!
//! Root only (chroot, a network namespace, port 53): without root it prints SKIPPED; under CI
//! (`CI` set) it fails instead. Temporary roots, child processes and network namespaces are
//! removed on drop, also when an assertion fails.

#[path = "images/dockerfile.rs"]
mod dockerfile;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const TRIPLE: &str = "x86_64-unknown-linux-gnu";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// The stand-in DNS server: a loopback address of its own, so a resolver of the host on
/// 127.0.0.1:53 or 127.0.0.53:53 does not collide.
const DNS_SERVER: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 53);

/// Why these tests cannot run here, if they cannot.
fn missing_prerequisites() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next().map(str::to_owned));
    if uid.as_deref() != Some("0") {
        return Some("not running as root".into());
    }
    for tool in ["chroot", "unshare", "ldd", "mknod"] {
        if which(tool).is_none() {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    if !Path::new("/usr/sbin/xtables-nft-multi").exists() {
        return Some("iptables (nft) is not installed".into());
    }
    None
}

/// True when the test must stop here (SKIPPED); panics under CI.
fn skipped(test: &str) -> bool {
    let Some(why) = missing_prerequisites() else {
        return false;
    };
    if std::env::var_os("CI").is_some() {
        panic!("{test} cannot run under CI: {why}");
    }
    eprintln!("\n*** SKIPPED {test}: {why} ***\n");
    true
}

fn which(tool: &str) -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && path.starts_with('/')).then(|| PathBuf::from(path))
}

/// The statically linked proxy, built once for all the tests of this file.
fn static_proxy() -> &'static Path {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build_static_proxy) {
        Ok(path) => path,
        Err(e) => panic!("{e}"),
    }
}

fn build_static_proxy() -> Result<PathBuf, String> {
    let builder = dockerfile::load();
    let builder = builder.stage("builder").ok_or("no builder stage")?;
    let rustflags = builder
        .env("RUSTFLAGS")
        .ok_or("the builder stage sets no RUSTFLAGS")?;
    let root = dockerfile::workspace_root();
    let target_dir = root.join("target").join("static");
    std::fs::create_dir_all(&target_dir).map_err(|e| format!("{target_dir:?}: {e}"))?;
    let log_path = target_dir.join("build.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("{log_path:?}: {e}"))?;
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(&root)
        .args([
            "build",
            "--locked",
            "-p",
            "trellis-proxy",
            "--bin",
            "trellis-proxy",
        ])
        .args(["--target", TRIPLE])
        .env("CARGO_TARGET_DIR", &target_dir)
        // CARGO_ENCODED_RUSTFLAGS would win over RUSTFLAGS.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", &rustflags)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if started.elapsed() > BUILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{cmd:?} took over {BUILD_TIMEOUT:?}: see {log_path:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        return Err(format!("{cmd:?}: {status}\n{log}"));
    }
    eprintln!(
        "static build of trellis-proxy (RUSTFLAGS={rustflags:?}) took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(target_dir.join(TRIPLE).join("debug").join("trellis-proxy"))
}

// ---------------------------------------------------------------------------------------------
// ELF

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes")) as usize
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;

/// The program header types of a 64-bit little-endian x86-64 ELF file, and its DT_NEEDED count.
fn elf_summary(file: &[u8]) -> (Vec<u32>, usize) {
    assert_eq!(&file[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(file[4], 2, "not 64-bit");
    assert_eq!(file[5], 1, "not little-endian");
    assert_eq!(u16_at(file, 0x12), 62, "not x86-64");
    let (phoff, phentsize, phnum) = (
        u64_at(file, 0x20) as usize,
        u16_at(file, 0x36),
        u16_at(file, 0x38),
    );
    let mut types = Vec::new();
    let mut needed = 0;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = u32_at(file, ph);
        types.push(p_type);
        if p_type == PT_DYNAMIC {
            // A static-pie binary keeps a dynamic section for its own relocations.
            let (offset, size) = (
                u64_at(file, ph + 8) as usize,
                u64_at(file, ph + 32) as usize,
            );
            for entry in file[offset..offset + size].chunks_exact(16) {
                match u64_at(entry, 0) {
                    DT_NULL => break,
                    DT_NEEDED => needed += 1,
                    _ => {}
                }
            }
        }
    }
    (types, needed)
}

#[test]
fn the_proxy_binary_is_statically_linked() {
    if skipped("the_proxy_binary_is_statically_linked") {
        return;
    }
    let binary = std::fs::read(static_proxy()).expect("read the binary");
    let (types, needed) = elf_summary(&binary);
    assert!(!types.is_empty(), "no program headers");
    assert!(
        !types.contains(&PT_INTERP),
        "the binary asks for a program interpreter (dynamically linked)"
    );
    assert_eq!(needed, 0, "the binary needs shared libraries");

    // The check can fail: a dynamically linked program of the host has both.
    let dynamic = std::fs::read(which("chroot").expect("chroot")).expect("read chroot");
    let (types, needed) = elf_summary(&dynamic);
    assert!(types.contains(&PT_INTERP) && needed > 0);
}

// ---------------------------------------------------------------------------------------------
// Chroots and processes

/// A directory to chroot into, removed on drop.
struct Root {
    dir: tempfile::TempDir,
    /// Outside the root: the processes' output.
    logs: tempfile::TempDir,
}

impl Root {
    fn empty() -> Root {
        let root = Root {
            dir: tempfile::tempdir().expect("temp dir"),
            logs: tempfile::tempdir().expect("temp dir"),
        };
        // Traversable by the image's non-root uid.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        root
    }

    /// The proxy image's file system: what deploy/images/rootfs.sh makes for the proxy stage,
    /// and the binary where the Dockerfile copies it.
    fn proxy_image() -> Root {
        let root = Root::empty();
        let script = dockerfile::workspace_root().join("deploy/images/rootfs.sh");
        run(Command::new("sh")
            .arg(&script)
            .arg(root.path())
            .arg("--iptables"));
        let dockerfile = dockerfile::load();
        let stage = dockerfile.stage("proxy").expect("a proxy stage");
        let copy = stage
            .installed("trellis-proxy")
            .expect("the proxy stage installs trellis-proxy");
        root.add_binary(&copy.dest);
        // The devices every OCI runtime creates in a container's /dev (the redirect runs
        // iptables with stdin from /dev/null).
        std::fs::create_dir_all(root.file("/dev")).expect("mkdir dev");
        for (name, minor) in [
            ("null", 3),
            ("zero", 5),
            ("full", 7),
            ("random", 8),
            ("urandom", 9),
        ] {
            run(Command::new("mknod")
                .args(["-m", "666"])
                .arg(root.file(&format!("/dev/{name}")))
                .args(["c", "1", &minor.to_string()]));
        }
        root
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, inside: &str) -> PathBuf {
        self.path().join(inside.trim_start_matches('/'))
    }

    fn write(&self, inside: &str, contents: &str) {
        let path = self.file(inside);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }

    fn add_binary(&self, inside: &str) {
        let path = self.file(inside);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::copy(static_proxy(), &path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    /// Every file under the root, relative to it.
    fn files(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&path, base, out);
                } else {
                    out.push(
                        path.strip_prefix(base)
                            .expect("under base")
                            .display()
                            .to_string(),
                    );
                }
            }
        }
        let mut out = Vec::new();
        walk(self.path(), self.path(), &mut out);
        out.sort();
        out
    }

    /// `chroot [--userspec=uid:gid] ROOT program args…` with an empty environment but `env`.
    fn command(&self, user: Option<(u32, u32)>, env: &[(&str, &str)], program: &str) -> Command {
        let mut cmd = Command::new(which("chroot").expect("chroot"));
        if let Some((uid, gid)) = user {
            cmd.arg(format!("--userspec={uid}:{gid}"));
        }
        cmd.arg(self.path())
            .arg(program)
            .env_clear()
            .stdin(Stdio::null());
        for (key, value) in env {
            cmd.env(key, value);
        }
        cmd
    }

    fn spawn(&self, name: &str, mut cmd: Command) -> Running {
        let log_path = self.logs.path().join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        cmd.stdout(log.try_clone().expect("dup")).stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Running {
            name: name.to_string(),
            child,
            log: log_path,
        }
    }
}

/// A child process, killed on drop.
struct Running {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log if the process has exited.
    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.log());
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The proxy's flags for a stand-in control plane at `url` (nothing in the chroot but /ca.pem),
/// with ports of their own; returns them and the admin address.
fn proxy_args(url: &str) -> (Vec<String>, SocketAddr) {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut args: Vec<String> = [
        "--control-plane",
        url,
        "--control-plane-ca",
        "/ca.pem",
        "--token",
        "x",
        "--service",
        "static-test",
    ]
    .map(str::to_string)
    .to_vec();
    for (flag, addr) in [
        ("--admin", admin),
        ("--inbound", SocketAddr::from(([127, 0, 0, 1], free_port()))),
        (
            "--outbound",
            SocketAddr::from(([127, 0, 0, 1], free_port())),
        ),
    ] {
        args.extend([flag.to_string(), addr.to_string()]);
    }
    (args, admin)
}

fn ca_pem() -> String {
    let cert =
        rcgen::generate_simple_self_signed(vec!["control-plane.test".to_string()]).expect("rcgen");
    cert.cert.pem()
}

/// A TCP listener standing in for the control plane: proves the proxy found it.
struct StandIn {
    listener: TcpListener,
}

impl StandIn {
    fn new() -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        StandIn { listener }
    }

    fn port(&self) -> u16 {
        self.listener.local_addr().expect("addr").port()
    }

    /// Waits for the proxy's first connection.
    fn expect_connection(&self, proxy: &mut Running, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.listener.accept() {
                Ok(_) => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept: {e}"),
            }
            proxy.assert_alive();
            assert!(
                Instant::now() < deadline,
                "{what}: the proxy did not connect to the control plane in 30 s:\n{}",
                proxy.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `GET path` on the admin port until it answers 200 (or 30 s pass).
fn expect_200(proxy: &mut Running, admin: SocketAddr, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        proxy.assert_alive();
        let answer =
            TcpStream::connect_timeout(&admin, Duration::from_secs(1)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                write!(
                    s,
                    "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
                )?;
                let mut answer = String::new();
                s.read_to_string(&mut answer)?;
                Ok(answer)
            });
        match answer {
            Ok(a) if a.starts_with("HTTP/1.1 200") => return,
            Ok(a) => last = a,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{path} on {admin} did not answer 200 in 30 s (last: {last}):\n{}",
        proxy.log()
    );
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn the_proxy_runs_alone_in_an_empty_chroot() {
    if skipped("the_proxy_runs_alone_in_an_empty_chroot") {
        return;
    }
    let dockerfile = dockerfile::load();
    let (uid, gid) = dockerfile
        .stage("proxy")
        .and_then(|s| s.user())
        .expect("the proxy stage's USER");
    let user = Some((uid, gid.unwrap_or(uid)));
    let root = Root::empty();
    root.add_binary("/trellis-proxy");
    root.write("/ca.pem", &ca_pem());
    assert_eq!(root.files(), ["ca.pem", "trellis-proxy"]);

    // The version (proxy/src/cli.rs reports clap's --version through its error path today, so
    // the status is not checked, the text is).
    let out = root
        .command(user, &[], "/trellis-proxy")
        .arg("--version")
        .output()
        .expect("run --version");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(&format!("trellis-proxy {VERSION}")),
        "--version in the chroot: {}: {text}",
        out.status
    );

    // The redirect rules, printed (no iptables needed), with the injector's init arguments.
    let init = trellis_injector::sidecar::init_container(
        &trellis_injector::config::InjectorConfig::default(),
        &trellis_injector::annotations::Overrides::default(),
    );
    let out = run(root
        .command(user, &[], "/trellis-proxy")
        .args(init.args.expect("init args"))
        .arg("--dry-run"));
    let rules = String::from_utf8_lossy(&out.stdout);
    for rule in [
        format!("iptables -t nat -A TRELLIS_OUTBOUND -m owner --uid-owner {uid} -j RETURN"),
        "iptables -t nat -A TRELLIS_OUTBOUND -p tcp -j REDIRECT --to-ports 4140".to_string(),
        "iptables -t nat -A TRELLIS_INBOUND -p tcp -j REDIRECT --to-ports 4143".to_string(),
    ] {
        assert!(rules.lines().any(|l| l == rule), "no `{rule}` in:\n{rules}");
    }

    // Serving: the control plane by IP, the admin port's /live.
    let control_plane = StandIn::new();
    let (args, admin) = proxy_args(&format!("https://127.0.0.1:{}", control_plane.port()));
    let mut cmd = root.command(user, &[], "/trellis-proxy");
    cmd.args(args);
    let mut proxy = root.spawn("proxy", cmd);
    expect_200(&mut proxy, admin, "/live");
    control_plane.expect_connection(&mut proxy, "by IP");
    proxy.assert_alive();
}

/// A DNS server answering A queries for `name` with 127.0.0.1 (others: no data), recording
/// what it was asked; stops on drop.
struct StandInDns {
    stop: Arc<AtomicBool>,
    asked: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandInDns {
    fn start(name: &'static str) -> StandInDns {
        let socket = UdpSocket::bind((DNS_SERVER, 53))
            .unwrap_or_else(|e| panic!("bind {DNS_SERVER}:53: {e}"));
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (stop2, asked2) = (stop.clone(), asked.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some((qname, answer)) = dns_answer(&buf[..n], name) {
                    asked2.lock().expect("lock").push(qname);
                    let _ = socket.send_to(&answer, from);
                }
            }
        });
        StandInDns {
            stop,
            asked,
            thread: Some(thread),
        }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().expect("lock").clone()
    }
}

impl Drop for StandInDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The query's name (`a.b.c`) and the answer: for `name`, type A, 127.0.0.1; otherwise none.
fn dns_answer(query: &[u8], name: &str) -> Option<(String, Vec<u8>)> {
    if query.len() < 12 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_string());
        at += len;
    }
    let question = query.get(12..at + 4)?;
    let qtype = u16::from_be_bytes([query[at], query[at + 1]]);
    let qname = labels.join(".");
    let answer_a = qtype == 1 && qname.eq_ignore_ascii_case(name);
    let mut out = Vec::new();
    out.extend_from_slice(&query[..2]); // id
    out.extend_from_slice(&[0x81, 0x80]); // response, recursion desired and available, NOERROR
    out.extend_from_slice(&[0, 1, 0, u8::from(answer_a), 0, 0, 0, 0]);
    out.extend_from_slice(question);
    if answer_a {
        // name: pointer to the question's; A; IN; TTL 60; 4 bytes: 127.0.0.1
        out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
    }
    Some((qname, out))
}

#[test]
fn the_proxy_image_resolves_names_from_hosts_and_dns() {
    if skipped("the_proxy_image_resolves_names_from_hosts_and_dns") {
        return;
    }
    let dockerfile = dockerfile::load();
    let stage = dockerfile.stage("proxy").expect("a proxy stage");
    let (uid, gid) = stage.user().expect("USER");
    let path = stage.env("PATH").expect("the proxy stage sets PATH");
    let root = Root::proxy_image();
    root.write("/ca.pem", &ca_pem());
    // What the kubelet mounts into every container.
    root.write(
        "/etc/hosts",
        "127.0.0.1 localhost\n127.0.0.1 hosts-file.trellis.test\n",
    );
    root.write(
        "/etc/resolv.conf",
        &format!("nameserver {DNS_SERVER}\noptions timeout:1 attempts:3\n"),
    );
    // Name lookup must be the static glibc's own `files` and `dns` sources: no NSS module to
    // load (the control plane's and injector's images have no shared libraries at all).
    let files = root.files();
    assert!(
        !files.iter().any(|f| f.contains("libnss")),
        "the image has NSS modules: {files:?}"
    );
    const DNS_NAME: &str = "dns.trellis.test";
    let dns = StandInDns::start(DNS_NAME);

    for (name, via) in [("hosts-file.trellis.test", "/etc/hosts"), (DNS_NAME, "DNS")] {
        let control_plane = StandIn::new();
        let (args, admin) = proxy_args(&format!("https://{name}:{}", control_plane.port()));
        // By name, on the image's PATH, as the manifests run it.
        let mut cmd = root.command(
            Some((uid, gid.unwrap_or(uid))),
            &[("PATH", &path)],
            "trellis-proxy",
        );
        cmd.args(args);
        let mut proxy = root.spawn(&format!("proxy-{}", via.replace('/', "-")), cmd);
        control_plane.expect_connection(&mut proxy, via);
        expect_200(&mut proxy, admin, "/live");
    }
    let asked = dns.asked();
    assert!(
        asked.iter().any(|q| q == DNS_NAME),
        "the DNS server was not asked for {DNS_NAME}: {asked:?}"
    );
    assert!(
        !asked.iter().any(|q| q.starts_with("hosts-file")),
        "a name in /etc/hosts went to DNS: {asked:?}"
    );
}

#[test]
fn the_init_step_installs_the_redirect_with_the_image_iptables() {
    if skipped("the_init_step_installs_the_redirect_with_the_image_iptables") {
        return;
    }
    let dockerfile = dockerfile::load();
    let path = dockerfile
        .stage("proxy")
        .and_then(|s| s.env("PATH"))
        .expect("the proxy stage sets PATH");
    let root = Root::proxy_image();
    let config = trellis_injector::config::InjectorConfig::default();
    let init = trellis_injector::sidecar::init_container(
        &config,
        &trellis_injector::annotations::Overrides::default(),
    );
    let mut argv = init.command.expect("init command");
    argv.extend(init.args.expect("init args"));

    // One fresh network namespace for the step and the listing; gone when `unshare` exits.
    const SCRIPT: &str = r#"set -e
chroot=$1 root=$2; shift 2
"$chroot" "$root" "$@"
echo '== ipv4'
"$chroot" "$root" iptables -t nat -S
echo '== ipv6'
"$chroot" "$root" ip6tables -t nat -S
"#;
    let out = run(Command::new(which("unshare").expect("unshare"))
        .args(["--net", "--", "/bin/sh", "-c", SCRIPT, "sh"])
        .arg(which("chroot").expect("chroot"))
        .arg(root.path())
        .args(&argv)
        .env_clear()
        .env("PATH", &path));
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    let (v4, v6) = listing
        .split_once("== ipv6")
        .unwrap_or_else(|| panic!("no listing: {listing}"));
    for (family, rules) in [("ipv4", v4), ("ipv6", v6)] {
        for rule in [
            format!(
                "-A TRELLIS_OUTBOUND -m owner --uid-owner {} -j RETURN",
                config.proxy_uid
            ),
            "-A TRELLIS_OUTBOUND -p tcp -j REDIRECT --to-ports 4140".to_string(),
            "-A TRELLIS_INBOUND -p tcp -j REDIRECT --to-ports 4143".to_string(),
            "-A OUTPUT -p tcp -j TRELLIS_OUTBOUND".to_string(),
            "-A PREROUTING -p tcp -j TRELLIS_INBOUND".to_string(),
        ] {
            assert!(
                rules.lines().any(|l| l.trim() == rule),
                "{family}: no `{rule}` after `{}`:\n{listing}",
                argv.join(" ")
            );
        }
    }
}
