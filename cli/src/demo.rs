//! `trellis demo`: a whole mesh on one machine with no cluster. This file owns the order of
//! events: check the config and the addresses, tokens, control plane, apps, sidecars, a burst of
//! traffic, then idling until Ctrl-C so the user can poke at the mesh by hand, and stopping it all.
//! The pod table lives in `demo/layout.rs`, the state directory in `demo/state.rs`, child
//! processes in `demo/processes.rs`, the traffic and its summary in `demo/traffic.rs`.

mod layout;
mod processes;
mod state;
mod traffic;

use anyhow::{bail, Context};
use layout::{
    check_addresses_free, check_config_covers_pods, find_service, pod_name, source_pod, Pod,
    CONTROL_PLANE, DEMO_MESH_YAML, PODS, TARGET_SERVICES,
};
use processes::Children;
use state::{write_tokens, StateDir};
use std::ffi::OsString;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use trellis_control_plane::config::{MeshConfig, Protocol};

const STARTUP_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Mesh YAML to start from (default: the bundled examples/demo-mesh.yaml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// How many requests the burst sends.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Keep state (CA, tokens, mesh.yaml) here instead of a temporary directory removed on exit.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Show the sidecars' info logs (only warnings by default).
    #[arg(long)]
    verbose: bool,
}

pub fn main(args: DemoArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let (config_name, config_text) = match &args.config {
        Some(path) => (
            path.display().to_string(),
            std::fs::read_to_string(path)
                .with_context(|| format!("reading --config {}", path.display()))?,
        ),
        None => (
            "examples/demo-mesh.yaml".to_owned(),
            DEMO_MESH_YAML.to_owned(),
        ),
    };
    let mesh = trellis_control_plane::config::parse(&config_name, &config_text)?;
    check_config_covers_pods(&mesh, &config_name)?;
    // Fail before creating anything if another demo (or anything else) holds our addresses.
    check_addresses_free()?;

    let state = StateDir::create(args.state_dir.as_deref())?;
    let config_path = state.path.join("mesh.yaml");
    std::fs::write(&config_path, &config_text)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let token_files = write_tokens(&state.path, &mesh)?;
    println!("state directory: {}", state.path.display());

    let mut children = Children::new();
    let outcome = tokio::select! {
        r = run_mesh(&mut children, &args, &mesh, &state.path, &config_path, &token_files) => r,
        () = processes::stop_signal() => Ok(()),
    };
    eprintln!("stopping…");
    children.stop_all().await;
    drop(state);
    outcome?;
    println!("stopped");
    Ok(())
}

/// Starts everything, drives the burst, then idles until a child exits (an error) or the caller
/// drops this future on Ctrl-C/SIGTERM.
async fn run_mesh(
    children: &mut Children,
    args: &DemoArgs,
    mesh: &MeshConfig,
    state_dir: &Path,
    config_path: &Path,
    token_files: &[(String, PathBuf)],
) -> anyhow::Result<()> {
    let ca_path = state_dir.join(trellis_control_plane::ca::CERT_FILE);
    children.spawn(
        "control-plane",
        [
            "control-plane".into(),
            "serve".into(),
            "--config".into(),
            config_path.into(),
            "--state-dir".into(),
            state_dir.into(),
            "--listen".into(),
            CONTROL_PLANE.to_string().into(),
        ],
    )?;
    children
        .wait_for("the control plane", STARTUP_LIMIT, || async {
            ca_path.exists() && tokio::net::TcpStream::connect(CONTROL_PLANE).await.is_ok()
        })
        .await?;

    let log = if args.verbose { "info" } else { "warn" };
    for (i, pod) in PODS.iter().enumerate() {
        let name = pod_name(i);
        children.spawn(
            &format!("{name} app"),
            [
                "sample-app".into(),
                "--name".into(),
                name.clone().into(),
                "--listen".into(),
                pod.app().to_string().into(),
            ],
        )?;
        let service = find_service(mesh, pod.service)?;
        let token_file = token_files
            .iter()
            .find(|(s, _)| s == pod.service)
            .map(|(_, f)| f)
            .context("no token file for the service")?;
        let proxy_args: Vec<OsString> = vec![
            "proxy".into(),
            "--service".into(),
            pod.service.into(),
            "--namespace".into(),
            service.namespace.clone().into(),
            "--service-account".into(),
            service.service_account.clone().into(),
            "--node-id".into(),
            name.clone().into(),
            "--inbound".into(),
            pod.inbound().to_string().into(),
            "--outbound".into(),
            pod.outbound().to_string().into(),
            "--admin".into(),
            pod.admin().to_string().into(),
            "--app-host".into(),
            pod.ip.to_string().into(),
            "--token-file".into(),
            token_file.into(),
            "--control-plane".into(),
            format!("https://{CONTROL_PLANE}").into(),
            "--control-plane-ca".into(),
            ca_path.clone().into(),
            "--control-plane-name".into(),
            "localhost".into(),
            "--trust-domain".into(),
            mesh.trust_domain.clone().into(),
            "--log".into(),
            log.into(),
        ];
        children.spawn(&format!("{name} proxy"), proxy_args)?;
    }
    for (i, pod) in PODS.iter().enumerate() {
        let what = format!("the {} sidecar (admin {})", pod_name(i), pod.admin());
        let admin = pod.admin();
        let waited = children
            .wait_for(&what, STARTUP_LIMIT, || async move {
                matches!(
                    traffic::get(admin, "localhost", "/ready").await,
                    Ok((200, _))
                )
            })
            .await;
        if let Err(e) = waited {
            let why = match traffic::get(admin, "localhost", "/ready").await {
                Ok((status, body)) => format!("/ready answered {status}: {}", body.trim()),
                Err(e) => format!("/ready did not answer: {e:#}"),
            };
            return Err(e.context(why));
        }
    }
    eprintln!(
        "mesh ready: control plane, {} apps, {} sidecars",
        PODS.len(),
        PODS.len()
    );

    let source = source_pod()?;
    let targets = TARGET_SERVICES
        .iter()
        .map(|name| {
            let pod = PODS.iter().find(|p| p.service == *name);
            let pod = pod.with_context(|| format!("the pod table has no {name} pod"))?;
            Ok((name.to_string(), pod.protocol == Protocol::H2c))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let result = traffic::burst(source.outbound(), &targets, args.requests, 8).await?;
    let identities = server_identities(mesh, source.admin()).await;
    println!();
    print!("{}", traffic::render_summary(&result, &identities));
    println!();
    print_usage(source, config_path);
    let _ = std::io::stdout().flush();

    let (name, status) = children.wait_any_exit().await;
    // A Ctrl-C at a terminal reaches the children too (they share our process group) and they can
    // exit before our own handler runs: give the signal a moment so a normal stop is not reported
    // as a crash (the caller's select takes the signal branch while we sleep).
    tokio::time::sleep(Duration::from_millis(500)).await;
    bail!("{name} exited unexpectedly ({status}); stopping the demo")
}

/// The server identities the source sidecar requires of each endpoint, read from its `/config`
/// and checked against what the mesh YAML implies.
async fn server_identities(mesh: &MeshConfig, admin: SocketAddr) -> traffic::Identities {
    let expected = |addr: SocketAddr| -> Option<(String, String)> {
        let index = PODS.iter().position(|p| p.inbound() == addr)?;
        let service = find_service(mesh, PODS[index].service).ok()?;
        let id = format!(
            "spiffe://{}/ns/{}/sa/{}",
            mesh.trust_domain, service.namespace, service.service_account
        );
        Some((pod_name(index), id))
    };
    let body = match traffic::get(admin, "localhost", "/config").await {
        Ok((200, body)) => body,
        Ok((status, _)) => {
            return traffic::Identities::Unavailable(format!("/config answered {status}"))
        }
        Err(e) => return traffic::Identities::Unavailable(format!("{e:#}")),
    };
    let mut found = traffic::endpoint_identities(&body);
    found.retain(|(addr, _)| {
        PODS.iter()
            .any(|p| p.inbound() == *addr && TARGET_SERVICES.contains(&p.service))
    });
    if found.is_empty() {
        return traffic::Identities::Unavailable("no endpoints in the sidecar's /config".into());
    }
    traffic::Identities::Found(
        found
            .into_iter()
            .map(|(addr, required)| {
                let (pod, expected) = expected(addr).unwrap_or_default();
                traffic::RequiredIdentity {
                    pod,
                    addr,
                    matches_config: required == expected,
                    required,
                }
            })
            .collect(),
    )
}

fn print_usage(source: &Pod, config_path: &Path) {
    let (outbound, admin) = (source.outbound(), source.admin());
    println!("Try it by hand (you are the frontend app; its sidecar's outbound is {outbound}):");
    println!("  curl -s -H 'Host: hello' http://{outbound}/");
    println!("  curl -s --http2-prior-knowledge -H 'Host: echo' http://{outbound}/");
    println!("  curl -s -H 'Host: echo' --http2-prior-knowledge --data 'hi' http://{outbound}/");
    println!(
        "  curl -s http://{admin}/config      # your sidecar's view: the services it has called"
    );
    println!(
        "Edit {} to change the mesh live (the control plane logs whether it applied the edit).",
        config_path.display()
    );
    println!("Press Ctrl-C to stop.");
}
