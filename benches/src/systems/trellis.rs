//! Trellis under test, as the demo runs it: the `trellis` binary started as a control plane and two
//! sidecars, each its own process, on loopback "pods". Sidecar A (127.0.0.61) is the load
//! generator's sidecar; sidecar B (127.0.0.62) fronts the upstream as service `bench` (port 80 →
//! HTTP/1.1 upstream, port 81 → h2c upstream).
//!
//! - mesh path: client → A's outbound (plain, `Host: bench[:81]`) → HTTP/2 over mTLS → B's inbound
//!   → upstream. Both sidecars are measured.
//! - tracing cost: the mesh path again through a second pair (127.0.0.71/72) that samples every
//!   trace and exports the spans over OTLP to a local sink; the first pair samples none
//!   (`--trace-sample-ratio 0`), so `trellis` vs `trellis-traced` is tracing at 0% vs 100%.
//! - one hop: client → B's inbound directly, presenting a mesh certificate (SPIFFE ID
//!   `…/sa/loadgen`, signed by the mesh CA from the state directory) → upstream. Only B is in the
//!   path; the TLS the client does is on the generator's side. This is the honest single-proxy
//!   path: a Trellis inbound never accepts plain text.

use super::{addr, certs, PathKind, Process, Running};
use crate::load::{Protocol, Target};
use anyhow::{bail, Context};
use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TRUST_DOMAIN: &str = "trellis.local";
const NAMESPACE: &str = "default";
const INBOUND: u16 = 4143;
const OUTBOUND: u16 = 4140;
const ADMIN: u16 = 4191;

fn mesh_yaml() -> String {
    format!(
        "trustDomain: {TRUST_DOMAIN}
services:
  - name: loadgen
    ports:
      - port: 80
        targetPort: 18099
        protocol: http1
    endpoints:
      - address: {client}
  - name: bench
    ports:
      - port: 80
        targetPort: {h1}
        protocol: http1
      - port: 81
        targetPort: {h2}
        protocol: h2c
    endpoints:
      - address: {server}
    policy:
      loadBalancer: roundRobin
      connectTimeout: 1s
      requestTimeout: 15s
  - name: loadgen-traced
    ports:
      - port: 80
        targetPort: 18099
        protocol: http1
    endpoints:
      - address: {traced_client}
  - name: bench-traced
    ports:
      - port: 80
        targetPort: {h1}
        protocol: http1
      - port: 81
        targetPort: {h2}
        protocol: h2c
    endpoints:
      - address: {traced_server}
    policy:
      loadBalancer: roundRobin
      connectTimeout: 1s
      requestTimeout: 15s
",
        client = addr::at(addr::CLIENT_POD, INBOUND),
        server = addr::at(addr::SERVER_POD, INBOUND),
        traced_client = addr::at(addr::TRACED_CLIENT_POD, INBOUND),
        traced_server = addr::at(addr::TRACED_SERVER_POD, INBOUND),
        h1 = addr::UPSTREAM_H1.port(),
        h2 = addr::UPSTREAM_H2C.port(),
    )
}

/// The `Host` a client sends to reach the upstream for a protocol.
fn authority(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Http1 => "bench",
        Protocol::H2c | Protocol::Grpc => "bench:81",
    }
}

/// The same, through the traced pair.
fn traced_authority(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Http1 => "bench-traced",
        Protocol::H2c | Protocol::Grpc => "bench-traced:81",
    }
}

fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Finds the `trellis` binary: `--trellis`, else next to this executable (target/release).
pub fn find_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe()?;
    let beside = exe.with_file_name("trellis");
    if beside.exists() {
        return Ok(beside);
    }
    bail!(
        "no trellis binary at {} (run benches/setup.sh or `cargo build --release -p trellis`)",
        beside.display()
    )
}

/// A sidecar's admin address (`/metrics`, `/ready`), by pod.
pub fn admin_addr(pod: u8) -> std::net::SocketAddr {
    addr::at(pod, ADMIN)
}

/// The sidecars' runtime workers unless told otherwise: one, as a sidecar with a one-CPU limit
/// gets by default, and because two workers on this 2-core machine compete with the generator
/// and the other sidecar for the same cores.
pub const DEFAULT_WORKERS: usize = 1;

/// How the sidecars are started.
#[derive(Debug, Clone)]
pub struct Sidecars {
    /// `--workers` of every sidecar.
    pub workers: usize,
    /// More flags for every sidecar (e.g. `--max-in-flight-requests`).
    pub flags: Vec<OsString>,
    /// Start the traced pair (127.0.0.71/72) too.
    pub traced: bool,
    /// A command the untraced pair runs under (program first, e.g. valgrind and its flags).
    pub wrapper: Vec<OsString>,
    /// The traced pair runs under `wrapper` too.
    pub wrap_traced: bool,
    /// How long a sidecar may take to become ready (much longer under valgrind).
    pub ready_timeout: Duration,
    /// Run the sidecars as this `trellis-proxy` binary (the sidecar image's) instead of
    /// `trellis proxy`.
    pub proxy_binary: Option<PathBuf>,
}

impl Default for Sidecars {
    fn default() -> Self {
        Sidecars {
            workers: DEFAULT_WORKERS,
            flags: Vec::new(),
            traced: true,
            wrapper: Vec::new(),
            wrap_traced: false,
            ready_timeout: Duration::from_secs(30),
            proxy_binary: None,
        }
    }
}

impl Sidecars {
    /// The untraced pair only, run as the sidecar image's `trellis-proxy` when it was built
    /// beside `binary` (else as `trellis proxy`), with `workers` each: what the footprint and
    /// flame benches measure.
    pub fn untraced_as_shipped(binary: &Path, workers: usize) -> Sidecars {
        Sidecars {
            workers,
            traced: false,
            proxy_binary: Some(binary.with_file_name("trellis-proxy")).filter(|p| p.exists()),
            ..Default::default()
        }
    }
}

/// Starts the control plane and both sidecars; waits until both are ready.
pub async fn start(
    binary: &Path,
    work: &Path,
    procs: &mut Vec<Process>,
) -> anyhow::Result<Vec<Running>> {
    start_with(binary, work, procs, &Sidecars::default()).await
}

/// The same, with the sidecars started as `opts` says.
pub async fn start_with(
    binary: &Path,
    work: &Path,
    procs: &mut Vec<Process>,
    opts: &Sidecars,
) -> anyhow::Result<Vec<Running>> {
    let state = work.join("trellis-state");
    std::fs::create_dir_all(&state)?;
    let config = work.join("mesh.yaml");
    std::fs::write(&config, mesh_yaml())?;
    let log = work.join("trellis.log");
    // Tokens first: `token` creates the token key the control plane then loads.
    let mut tokens = Vec::new();
    for service in ["loadgen", "bench", "loadgen-traced", "bench-traced"] {
        tokens.push(token(binary, &state, service).await?);
    }
    procs.push(Process::spawn(
        "trellis control plane",
        binary,
        &[
            "control-plane".into(),
            "serve".into(),
            "--config".into(),
            config.into(),
            "--state-dir".into(),
            state.clone().into(),
            "--listen".into(),
            addr::CONTROL_PLANE.to_string().into(),
        ],
        &log,
    )?);
    super::wait_port(
        "the control plane",
        addr::CONTROL_PLANE,
        Duration::from_secs(20),
    )
    .await?;
    let ca_cert = state.join("ca.crt.pem");
    if opts.traced {
        super::otlp_sink::start(addr::OTLP_SINK)
            .await
            .context("starting the OTLP sink")?;
    }
    let untraced = ["--trace-sample-ratio".to_string(), "0".to_string()];
    let traced = [
        "--trace-sample-ratio".to_string(),
        "1".to_string(),
        "--otlp-endpoint".to_string(),
        format!("http://{}", addr::OTLP_SINK),
    ];
    let mut pods = vec![
        ("loadgen", addr::CLIENT_POD, &untraced[..]),
        ("bench", addr::SERVER_POD, &untraced[..]),
    ];
    if opts.traced {
        pods.push(("loadgen-traced", addr::TRACED_CLIENT_POD, &traced[..]));
        pods.push(("bench-traced", addr::TRACED_SERVER_POD, &traced[..]));
    }
    let mut measured = Vec::new();
    let mut measured_traced = Vec::new();
    for ((service, pod, extra), token) in pods.into_iter().zip(&tokens) {
        let token_file = state.join(format!("{service}.token"));
        write_secret(&token_file, token)?;
        let mut args = sidecar_args(service, pod, &token_file, &ca_cert);
        args.extend(extra.iter().map(OsString::from));
        args.extend(["--workers".into(), opts.workers.to_string().into()]);
        args.extend(opts.flags.iter().cloned());
        let name = format!("sidecar {service}");
        let (binary, args) = sidecar_command(binary, opts.proxy_binary.as_deref(), args);
        let p = match opts.wrapper.split_first() {
            Some((program, wrapper)) if opts.wrap_traced || !service.ends_with("-traced") => {
                let mut wrapped = wrapper.to_vec();
                wrapped.push(binary.into());
                wrapped.extend(args);
                Process::spawn(&name, Path::new(program), &wrapped, &log)?
            }
            _ => Process::spawn(&name, binary, &args, &log)?,
        };
        let pid = p.pid().context("sidecar has no pid")?;
        if service.ends_with("-traced") {
            measured_traced.push((name, pid));
        } else {
            measured.push((name, pid));
        }
        procs.push(p);
    }
    if opts.traced {
        for pod in [addr::TRACED_CLIENT_POD, addr::TRACED_SERVER_POD] {
            wait_ready(addr::at(pod, ADMIN), procs, opts.ready_timeout, READY_POLL).await?;
        }
    }
    for pod in [addr::CLIENT_POD, addr::SERVER_POD] {
        wait_ready(addr::at(pod, ADMIN), procs, opts.ready_timeout, READY_POLL).await?;
    }
    let mut systems = vec![Running {
        system: "trellis".into(),
        path: PathKind::Mesh,
        protocols: vec![Protocol::Http1, Protocol::H2c, Protocol::Grpc],
        measured: measured.clone(),
        target: Box::new(|p| Target::plain(addr::at(addr::CLIENT_POD, OUTBOUND), authority(p))),
    }];
    if opts.traced {
        // The same path with every request traced: both sidecars make, batch and export spans.
        systems.push(Running {
            system: "trellis-traced".into(),
            path: PathKind::Mesh,
            protocols: vec![Protocol::Http1, Protocol::H2c, Protocol::Grpc],
            measured: measured_traced,
            target: Box::new(|p| {
                Target::plain(
                    addr::at(addr::TRACED_CLIENT_POD, OUTBOUND),
                    traced_authority(p),
                )
            }),
        });
    }
    match one_hop_tls(&state) {
        Ok(tls) => systems.push(Running {
            system: "trellis".into(),
            path: PathKind::OneHop,
            protocols: vec![Protocol::Http1, Protocol::H2c, Protocol::Grpc],
            measured: measured
                .into_iter()
                .filter(|(n, _)| n.ends_with("bench"))
                .collect(),
            target: Box::new(move |p| Target {
                addr: addr::at(addr::SERVER_POD, INBOUND),
                authority: authority(p).into(),
                tls: Some(tls.clone()),
            }),
        }),
        Err(e) => eprintln!("skipping the Trellis one-hop path: {e:#}"),
    }
    Ok(systems)
}

/// How often the suite asks a starting sidecar whether it is ready.
const READY_POLL: Duration = Duration::from_millis(100);

/// The program and arguments that run a sidecar with `args` (`sidecar_args`, `proxy` first): the
/// `trellis-proxy` binary without the subcommand when given, else `trellis proxy`.
pub fn sidecar_command<'a>(
    trellis: &'a Path,
    proxy: Option<&'a Path>,
    mut args: Vec<OsString>,
) -> (&'a Path, Vec<OsString>) {
    match proxy {
        Some(proxy) => (proxy, args.split_off(1)),
        None => (trellis, args),
    }
}

/// The `trellis proxy` arguments of a sidecar for `service` on loopback pod `pod` (inbound
/// 4143, outbound 4140, admin 4191 there), in front of the upstream, logging warnings only.
pub fn sidecar_args(service: &str, pod: u8, token_file: &Path, ca_cert: &Path) -> Vec<OsString> {
    let upstream_host = addr::at(addr::SERVER_POD, 0).ip().to_string();
    let args: [OsString; 27] = [
        "proxy".into(),
        "--service".into(),
        service.into(),
        "--namespace".into(),
        NAMESPACE.into(),
        "--node-id".into(),
        format!("{service}-{pod}").into(),
        "--inbound".into(),
        addr::at(pod, INBOUND).to_string().into(),
        "--outbound".into(),
        addr::at(pod, OUTBOUND).to_string().into(),
        "--admin".into(),
        addr::at(pod, ADMIN).to_string().into(),
        // Every server sidecar fronts the one upstream.
        "--app-host".into(),
        upstream_host.into(),
        "--token-file".into(),
        token_file.into(),
        "--control-plane".into(),
        format!("https://{}", addr::CONTROL_PLANE).into(),
        "--control-plane-ca".into(),
        ca_cert.into(),
        "--control-plane-name".into(),
        "localhost".into(),
        "--trust-domain".into(),
        TRUST_DOMAIN.into(),
        "--log".into(),
        "warn".into(),
    ];
    args.into()
}

/// Polls a sidecar's `/ready` every `every` until it answers 200, failing early if a process in
/// `procs` died.
pub async fn wait_ready(
    admin: std::net::SocketAddr,
    procs: &mut [Process],
    limit: Duration,
    every: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if let Ok((200, _)) = super::http_get(admin, "localhost", "/ready").await {
            return Ok(());
        }
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        if start.elapsed() > limit {
            let why = super::http_get(admin, "localhost", "/ready").await;
            bail!(
                "sidecar with admin {admin} not ready within {} s: {why:?}",
                limit.as_secs()
            );
        }
        tokio::time::sleep(every).await;
    }
}

/// The client TLS config for the one-hop path: a `loadgen` certificate from the mesh CA, trusting
/// the mesh root, requiring the server to be `bench`.
fn one_hop_tls(state: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let cert = certs::mesh_cert(state, &trellis_api_id("loadgen"))?;
    let tls = trellis_proxy::tls::TlsContext::default();
    let chain = cert
        .chain_der
        .into_iter()
        .map(rustls_pki_types::CertificateDer::from)
        .collect();
    let key = tls
        .provider()
        .key_provider
        .load_private_key(rustls_pki_types::PrivateKeyDer::Pkcs8(cert.key_der.into()))
        .context("loading the generated key")?;
    tls.certs
        .set(Arc::new(rustls::sign::CertifiedKey::new(chain, key)));
    tls.trust.set_roots(&[cert.root_der]);
    Ok(tls.client_config(&trellis_api_id("bench"))?)
}

fn trellis_api_id(service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{service_account}")
}

/// A bootstrap token for `service_account` from `trellis control-plane token` (which creates the
/// token key in `state` if there is none yet).
pub async fn token(binary: &Path, state: &Path, service_account: &str) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(binary)
        .args(["control-plane", "token", "--namespace", NAMESPACE])
        .args(["--service-account", service_account])
        .arg("--state-dir")
        .arg(state)
        .output()
        .await
        .context("running `trellis control-plane token`")?;
    if !out.status.success() {
        bail!(
            "`trellis control-plane token` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
