//! The peers Trellis is compared with, each started only when it is installed (skipped with a
//! note otherwise): nginx and haproxy as one-hop L7 proxies (HTTP/1.1 to a keep-alive upstream
//! pool) and as a two-instance path with mutual TLS between the instances (instance A plain in,
//! TLS 1.3 with client certificates to instance B, B to the upstream); the pingora baseline
//! (`benches/pingora-baseline`) one hop; and any proxy given as a command template, one hop.
//! Peers carry HTTP/1.1 only (nginx cannot proxy h2c upstream; comparing h2c/gRPC is future work).

use super::certs::{self, PeerPki, PEER_NAME};
use super::{addr, wait_port, PathKind, Process, Running};
use crate::load::{Protocol, Target};
use anyhow::{bail, Context};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Looks `name` up in PATH and the sbin directories (Debian puts nginx and haproxy there).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A command-line template for another proxy: `{listen}` and `{upstream}` are replaced by
/// addresses; the program is run directly (no shell).
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub command: String,
}

impl std::str::FromStr for Template {
    type Err = String;
    fn from_str(s: &str) -> Result<Template, String> {
        let (name, command) = s
            .split_once('=')
            .ok_or("expected NAME=COMMAND with {listen} and {upstream}")?;
        if !command.contains("{listen}") || !command.contains("{upstream}") {
            return Err("the command must contain {listen} and {upstream}".into());
        }
        Ok(Template {
            name: name.trim().to_string(),
            command: command.trim().to_string(),
        })
    }
}

fn one_hop(system: &str, entry: std::net::SocketAddr, pid: u32) -> Running {
    Running {
        system: system.into(),
        path: PathKind::OneHop,
        protocols: vec![Protocol::Http1],
        measured: vec![(format!("{system} A"), pid)],
        target: Box::new(move |_| Target::plain(entry, "upstream")),
    }
}

fn mesh(system: &str, entry: std::net::SocketAddr, a: u32, b: u32) -> Running {
    Running {
        system: system.into(),
        path: PathKind::Mesh,
        protocols: vec![Protocol::Http1],
        measured: vec![(format!("{system} A"), a), (format!("{system} B"), b)],
        target: Box::new(move |_| Target::plain(entry, "upstream")),
    }
}

/// Starts what is installed; returns the running paths and the notes about what was skipped.
pub async fn start_all(
    work: &Path,
    pingora: Option<&Path>,
    templates: &[Template],
    procs: &mut Vec<Process>,
) -> (Vec<Running>, Vec<String>) {
    let mut running = Vec::new();
    let mut notes = Vec::new();
    // A peer that fails to start has its processes stopped (truncating drops them) and is noted.
    let mut attempt = |name: &str,
                       before: usize,
                       procs: &mut Vec<Process>,
                       r: anyhow::Result<Vec<Running>>| match r {
        Ok(mut r) => running.append(&mut r),
        Err(e) => {
            procs.truncate(before);
            notes.push(format!("{name} skipped: {e:#}"));
        }
    };
    let n = procs.len();
    let r = start_nginx(work, procs, &Under::default()).await;
    attempt("nginx", n, procs, r);
    let n = procs.len();
    let r = start_haproxy(work, procs, &Under::default()).await;
    attempt("haproxy", n, procs, r);
    let pingora = pingora
        .map(Path::to_path_buf)
        .or_else(default_pingora_binary);
    let n = procs.len();
    let r = start_pingora(pingora, work, procs).await;
    attempt("pingora", n, procs, r);
    for (i, t) in templates.iter().enumerate() {
        let n = procs.len();
        let r = start_template(t, i, work, procs).await;
        attempt(&t.name, n, procs, r);
    }
    (running, notes)
}

/// How a peer is run: normally (two workers, as in the latency suite), or single-process and
/// single-threaded under a wrapper command such as valgrind (`trellis-bench instructions`).
#[derive(Debug, Clone, Default)]
pub struct Under {
    /// Program first, then its flags; the peer's own command line follows.
    pub wrapper: Vec<OsString>,
}

impl Under {
    fn spawn(
        &self,
        name: &str,
        bin: &Path,
        args: Vec<OsString>,
        log: &Path,
    ) -> anyhow::Result<Process> {
        match self.wrapper.split_first() {
            None => Process::spawn(name, bin, &args, log),
            Some((program, flags)) => {
                let mut all = flags.to_vec();
                all.push(bin.into());
                all.extend(args);
                Process::spawn(name, Path::new(program), &all, log)
            }
        }
    }

    fn wrapped(&self) -> bool {
        !self.wrapper.is_empty()
    }

    fn wait(&self) -> Duration {
        if self.wrapped() {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(10)
        }
    }
}

/// nginx and haproxy (one hop and mesh path) under `under`; the notes say what was skipped.
pub async fn start_under(
    work: &Path,
    under: &Under,
    procs: &mut Vec<Process>,
) -> (Vec<Running>, Vec<String>) {
    let mut running = Vec::new();
    let mut notes = Vec::new();
    let n = procs.len();
    match start_nginx(work, procs, under).await {
        Ok(mut r) => running.append(&mut r),
        Err(e) => {
            procs.truncate(n);
            notes.push(format!("nginx skipped: {e:#}"));
        }
    }
    let n = procs.len();
    match start_haproxy(work, procs, under).await {
        Ok(mut r) => running.append(&mut r),
        Err(e) => {
            procs.truncate(n);
            notes.push(format!("haproxy skipped: {e:#}"));
        }
    }
    (running, notes)
}

fn default_pingora_binary() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pingora-baseline/target/release/pingora-baseline");
    p.is_file().then_some(p)
}

const NGINX_A: u8 = 63;
const NGINX_B: u8 = 64;
const HAPROXY_A: u8 = 65;
const HAPROXY_B: u8 = 66;
const PINGORA: u8 = 67;
const TEMPLATES: u8 = 68;
const ONE_HOP_PORT: u16 = 18000;
const MESH_PORT: u16 = 18001;
const TLS_PORT: u16 = 18443;

fn pki(work: &Path, dir: &str, host: u8) -> anyhow::Result<PeerPki> {
    certs::peer_pki(&work.join(dir), addr::at(host, 0).ip())
}

async fn start_nginx(
    work: &Path,
    procs: &mut Vec<Process>,
    under: &Under,
) -> anyhow::Result<Vec<Running>> {
    let bin = which("nginx").context("nginx is not installed (benches/setup.sh installs it)")?;
    let dir = work.join("nginx");
    let pki = pki(work, "nginx/pki", NGINX_B)?;
    let upstream = addr::UPSTREAM_H1;
    // Under a wrapper, one process: valgrind would otherwise follow the master's forks.
    let processes = if under.wrapped() {
        "master_process off;\n"
    } else {
        "worker_processes 2;\n"
    };
    let common = |prefix: &Path| {
        let p = prefix.display();
        format!(
            "{processes}daemon off;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\n\
             events {{ worker_connections 8192; }}\n"
        )
    };
    // Under a wrapper (instruction counting), connections are never recycled: nginx's default of
    // 1,000 requests per keep-alive connection would put a TLS handshake between A and B into
    // a measured window, and Trellis's mesh connection is never recycled either.
    let keepalive = if under.wrapped() {
        "keepalive_requests 1000000;\n"
    } else {
        ""
    };
    let http_common = |prefix: &Path| {
        let p = prefix.display();
        format!(
            "{keepalive}access_log off;\nclient_body_temp_path {p}/tmp-body;\nproxy_temp_path {p}/tmp-proxy;\n\
             fastcgi_temp_path {p}/tmp-fcgi;\nuwsgi_temp_path {p}/tmp-uwsgi;\nscgi_temp_path {p}/tmp-scgi;\n\
             upstream app {{ server {upstream}; keepalive 64; {keepalive}}}\n"
        )
    };
    let pass = "proxy_http_version 1.1; proxy_set_header Connection \"\";";
    let (dir_a, dir_b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&dir_a)?;
    std::fs::create_dir_all(&dir_b)?;
    let conf_a = format!(
        "{}http {{\n{}upstream peer {{ server {peer}; keepalive 64; {keepalive}}}\n\
         server {{ listen {one}; location / {{ proxy_pass http://app; {pass} }} }}\n\
         server {{ listen {mesh}; location / {{ proxy_pass https://peer; {pass}\n\
           proxy_ssl_certificate {cc}; proxy_ssl_certificate_key {ck};\n\
           proxy_ssl_trusted_certificate {ca}; proxy_ssl_verify on; proxy_ssl_name {PEER_NAME};\n\
           proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on; }} }}\n}}\n",
        common(&dir_a),
        http_common(&dir_a),
        peer = addr::at(NGINX_B, TLS_PORT),
        one = addr::at(NGINX_A, ONE_HOP_PORT),
        mesh = addr::at(NGINX_A, MESH_PORT),
        cc = pki.client_cert.display(),
        ck = pki.client_key.display(),
        ca = pki.ca.display(),
    );
    let conf_b = format!(
        "{}http {{\n{}server {{ listen {tls} ssl; ssl_protocols TLSv1.3;\n\
           ssl_certificate {sc}; ssl_certificate_key {sk};\n\
           ssl_client_certificate {ca}; ssl_verify_client on;\n\
           location / {{ proxy_pass http://app; {pass} }} }}\n}}\n",
        common(&dir_b),
        http_common(&dir_b),
        tls = addr::at(NGINX_B, TLS_PORT),
        sc = pki.server_cert.display(),
        sk = pki.server_key.display(),
        ca = pki.ca.display(),
    );
    let mut pids = Vec::new();
    for (name, d, conf) in [("nginx A", &dir_a, conf_a), ("nginx B", &dir_b, conf_b)] {
        let path = d.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let args: Vec<OsString> = vec![
            "-p".into(),
            d.as_os_str().into(),
            "-c".into(),
            path.into(),
            "-e".into(),
            d.join("error.log").into(),
        ];
        let p = under.spawn(name, &bin, args, &d.join("stdout.log"))?;
        pids.push(p.pid().context("no pid")?);
        procs.push(p);
    }
    wait_port("nginx", addr::at(NGINX_A, ONE_HOP_PORT), under.wait()).await?;
    wait_port("nginx", addr::at(NGINX_B, TLS_PORT), under.wait()).await?;
    Ok(vec![
        one_hop("nginx", addr::at(NGINX_A, ONE_HOP_PORT), pids[0]),
        mesh("nginx", addr::at(NGINX_A, MESH_PORT), pids[0], pids[1]),
    ])
}

async fn start_haproxy(
    work: &Path,
    procs: &mut Vec<Process>,
    under: &Under,
) -> anyhow::Result<Vec<Running>> {
    let bin =
        which("haproxy").context("haproxy is not installed (benches/setup.sh installs it)")?;
    let dir = work.join("haproxy");
    let pki = pki(work, "haproxy/pki", HAPROXY_B)?;
    // haproxy wants certificate and key in one file.
    let combine = |cert: &Path, key: &Path, out: &Path| -> anyhow::Result<PathBuf> {
        let text = std::fs::read_to_string(cert)? + &std::fs::read_to_string(key)?;
        std::fs::write(out, text)?;
        Ok(out.to_path_buf())
    };
    let client = combine(
        &pki.client_cert,
        &pki.client_key,
        &dir.join("pki/client-combined.pem"),
    )?;
    let server = combine(
        &pki.server_cert,
        &pki.server_key,
        &dir.join("pki/server-combined.pem"),
    )?;
    let threads = if under.wrapped() { 1 } else { 2 };
    let common = format!(
        "global\n  nbthread {threads}\n  maxconn 4096\n\
                  defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  http-reuse always\n"
    );
    let conf_a = format!(
        "{common}frontend onehop\n  bind {one}\n  default_backend app\n\
         backend app\n  server app {up}\n\
         frontend mesh\n  bind {mesh}\n  default_backend peer\n\
         backend peer\n  server b {peer} ssl verify required ca-file {ca} crt {client} verifyhost {PEER_NAME} ssl-min-ver TLSv1.3\n",
        one = addr::at(HAPROXY_A, ONE_HOP_PORT),
        mesh = addr::at(HAPROXY_A, MESH_PORT),
        up = addr::UPSTREAM_H1,
        peer = addr::at(HAPROXY_B, TLS_PORT),
        ca = pki.ca.display(),
        client = client.display(),
    );
    let conf_b = format!(
        "{common}frontend tls\n  bind {tls} ssl crt {server} ca-file {ca} verify required ssl-min-ver TLSv1.3\n  default_backend app\n\
         backend app\n  server app {up}\n",
        tls = addr::at(HAPROXY_B, TLS_PORT),
        server = server.display(),
        ca = pki.ca.display(),
        up = addr::UPSTREAM_H1,
    );
    let mut pids = Vec::new();
    for (name, file, conf) in [
        ("haproxy A", "a.cfg", conf_a),
        ("haproxy B", "b.cfg", conf_b),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, conf)?;
        let args: Vec<OsString> = vec!["-db".into(), "-f".into(), path.into()];
        let p = under.spawn(name, &bin, args, &dir.join(format!("{file}.log")))?;
        pids.push(p.pid().context("no pid")?);
        procs.push(p);
    }
    wait_port("haproxy", addr::at(HAPROXY_A, ONE_HOP_PORT), under.wait()).await?;
    wait_port("haproxy", addr::at(HAPROXY_B, TLS_PORT), under.wait()).await?;
    Ok(vec![
        one_hop("haproxy", addr::at(HAPROXY_A, ONE_HOP_PORT), pids[0]),
        mesh("haproxy", addr::at(HAPROXY_A, MESH_PORT), pids[0], pids[1]),
    ])
}

async fn start_pingora(
    bin: Option<PathBuf>,
    work: &Path,
    procs: &mut Vec<Process>,
) -> anyhow::Result<Vec<Running>> {
    let Some(bin) = bin else {
        bail!("benches/pingora-baseline is not built (benches/setup.sh builds it; needs cmake)");
    };
    let listen = addr::at(PINGORA, ONE_HOP_PORT);
    let args: Vec<OsString> = vec![
        "--listen".into(),
        listen.to_string().into(),
        "--upstream".into(),
        addr::UPSTREAM_H1.to_string().into(),
    ];
    let p = Process::spawn("pingora", &bin, &args, &work.join("pingora.log"))?;
    let pid = p.pid().context("no pid")?;
    procs.push(p);
    wait_port("pingora", listen, Duration::from_secs(10)).await?;
    Ok(vec![one_hop("pingora", listen, pid)])
}

async fn start_template(
    t: &Template,
    index: usize,
    work: &Path,
    procs: &mut Vec<Process>,
) -> anyhow::Result<Vec<Running>> {
    let port = ONE_HOP_PORT + u16::try_from(index).unwrap_or(0);
    let listen = addr::at(TEMPLATES, port);
    let command = t
        .command
        .replace("{listen}", &listen.to_string())
        .replace("{upstream}", &addr::UPSTREAM_H1.to_string());
    let mut words = command.split_whitespace();
    let program = words.next().context("empty command")?;
    let program = which(program).unwrap_or_else(|| PathBuf::from(program));
    let args: Vec<OsString> = words.map(OsString::from).collect();
    let log = work.join(format!("{}.log", t.name));
    let p = Process::spawn(&t.name, &program, &args, &log)?;
    let pid = p.pid().context("no pid")?;
    procs.push(p);
    wait_port(&t.name, listen, Duration::from_secs(10)).await?;
    Ok(vec![one_hop(&t.name, listen, pid)])
}
