//! What the injector adds to a pod: the `trellis-init` traffic-redirect step, the `trellis-proxy`
//! sidecar (native, or a regular first container on older clusters) and the two volumes it reads
//! (the control plane's CA and a projected service-account token with the mesh audience). Plain
//! constructors of k8s-openapi types; the decisions (whether, and with what overrides) are made in
//! `inject.rs`.

use crate::annotations::Overrides;
use crate::config::InjectorConfig;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, Probe,
    ProjectedVolumeSource, ResourceRequirements, SecurityContext, ServiceAccountTokenProjection,
    Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

pub const PROXY_CONTAINER: &str = "trellis-proxy";
pub const INIT_CONTAINER: &str = "trellis-init";
pub const CA_VOLUME: &str = "trellis-ca";
pub const TOKEN_VOLUME: &str = "trellis-token";
/// The ConfigMap (in the pod's namespace) holding the control plane's CA as `ca.pem`.
pub const CA_CONFIG_MAP: &str = "trellis-ca";
pub const CA_DIR: &str = "/var/run/trellis/ca";
pub const TOKEN_DIR: &str = "/var/run/trellis/tokens";
/// The audience of the projected token the control plane accepts.
pub const TOKEN_AUDIENCE: &str = "trellis";
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
pub const INBOUND_PORT: u16 = 4143;
pub const OUTBOUND_PORT: u16 = 4140;
pub const ADMIN_PORT: u16 = 4191;

/// The sidecar's resources once annotations and config are merged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
}

/// The `trellis-init` container: installs the redirect rules, then exits. Runs as root with
/// NET_ADMIN and NET_RAW only (iptables needs both), nothing else.
pub fn init_container(config: &InjectorConfig, overrides: &Overrides) -> Container {
    let mut skip_inbound = ADMIN_PORT.to_string();
    if !overrides.skip_inbound_ports.is_empty() {
        skip_inbound = format!("{skip_inbound},{}", overrides.skip_inbound_ports);
    }
    let mut args = vec![
        "redirect".to_string(),
        "--proxy-uid".to_string(),
        config.proxy_uid.to_string(),
        "--inbound-port".to_string(),
        INBOUND_PORT.to_string(),
        "--outbound-port".to_string(),
        OUTBOUND_PORT.to_string(),
        "--skip-inbound-ports".to_string(),
        skip_inbound,
    ];
    for (flag, value) in [
        ("--skip-outbound-ports", &overrides.skip_outbound_ports),
        ("--skip-outbound-cidrs", &overrides.skip_outbound_cidrs),
    ] {
        if !value.is_empty() {
            args.extend([flag.to_string(), value.clone()]);
        }
    }
    Container {
        name: INIT_CONTAINER.to_string(),
        image: Some(config.proxy_image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        command: Some(vec!["trellis-proxy".to_string()]),
        args: Some(args),
        resources: Some(requirements(&Resources {
            cpu_request: "10m".to_string(),
            memory_request: "10Mi".to_string(),
            cpu_limit: None,
            memory_limit: None,
        })),
        security_context: Some(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".to_string(), "NET_RAW".to_string()]),
                drop: Some(vec!["ALL".to_string()]),
            }),
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The `trellis-proxy` container. `native`: an init container with `restartPolicy: Always` and
/// a startup probe on `/ready`, so the kubelet starts the app only once the proxy is ready and
/// stops the proxy only after the app. Otherwise a regular container meant to be first, whose
/// postStart hook holds the next container until the proxy is ready.
pub fn proxy_container(
    config: &InjectorConfig,
    service: &str,
    log_level: &str,
    resources: &Resources,
    native: bool,
    app_probes: Option<&str>,
) -> Container {
    let ready = || probe("/ready", 1, 1, 3);
    let (restart_policy, startup_probe, lifecycle) = if native {
        (
            Some("Always".to_string()),
            Some(Probe {
                failure_threshold: Some(300),
                ..probe("/ready", 1, 1, 1)
            }),
            None,
        )
    } else {
        let wait = vec![
            "trellis-proxy".to_string(),
            "wait-ready".to_string(),
            "--admin".to_string(),
            format!("127.0.0.1:{ADMIN_PORT}"),
            "--timeout-seconds".to_string(),
            "300".to_string(),
        ];
        (
            None,
            None,
            Some(Lifecycle {
                post_start: Some(LifecycleHandler {
                    exec: Some(ExecAction {
                        command: Some(wait),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
    };
    Container {
        name: PROXY_CONTAINER.to_string(),
        image: Some(config.proxy_image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        command: Some(vec!["trellis-proxy".to_string()]),
        restart_policy,
        env: Some(env(config, service, log_level, app_probes)),
        ports: Some(vec![
            port("trellis-inbound", INBOUND_PORT),
            port("trellis-admin", ADMIN_PORT),
        ]),
        startup_probe,
        readiness_probe: Some(Probe {
            period_seconds: Some(5),
            ..ready()
        }),
        liveness_probe: Some(Probe {
            period_seconds: Some(10),
            ..probe("/live", 1, 10, 3)
        }),
        lifecycle,
        resources: Some(requirements(resources)),
        security_context: Some(SecurityContext {
            run_as_user: Some(config.proxy_uid),
            run_as_group: Some(config.proxy_uid),
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: None,
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount(CA_VOLUME, CA_DIR),
            mount(TOKEN_VOLUME, TOKEN_DIR),
        ]),
        ..Default::default()
    }
}

/// The CA ConfigMap and the projected token (audience `trellis`, one hour, refreshed by the
/// kubelet).
pub fn volumes() -> Vec<Volume> {
    vec![
        Volume {
            name: CA_VOLUME.to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: CA_CONFIG_MAP.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: TOKEN_VOLUME.to_string(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.to_string()),
                        expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                        path: "token".to_string(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

/// The proxy's environment: its flags (see `proxy/src/cli.rs`) and who it is, from the downward
/// API.
fn env(
    config: &InjectorConfig,
    service: &str,
    log_level: &str,
    app_probes: Option<&str>,
) -> Vec<EnvVar> {
    let field = |name: &str, path: &str| EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                api_version: None,
            }),
            ..Default::default()
        }),
        value: None,
    };
    let value = |name: &str, value: String| EnvVar {
        name: name.to_string(),
        value: Some(value),
        value_from: None,
    };
    let mut env = vec![
        field("TRELLIS_NODE_ID", "metadata.name"),
        field("TRELLIS_NAMESPACE", "metadata.namespace"),
        field("TRELLIS_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field("TRELLIS_POD_IP", "status.podIP"),
        value("TRELLIS_SERVICE", service.to_string()),
        value("TRELLIS_CONTROL_PLANE", config.control_plane.clone()),
        value(
            "TRELLIS_CONTROL_PLANE_NAME",
            config.control_plane_name.clone(),
        ),
        value("TRELLIS_CONTROL_PLANE_CA", format!("{CA_DIR}/ca.pem")),
        value("TRELLIS_TOKEN_FILE", format!("{TOKEN_DIR}/token")),
        value("TRELLIS_TRUST_DOMAIN", config.trust_domain.clone()),
        // Both families: the init step redirects IPv6 too when the pod has it (ip6tables'
        // REDIRECT lands on `[::1]`), and the proxy skips an IPv6 address the pod lacks.
        value(
            "TRELLIS_INBOUND",
            format!("0.0.0.0:{INBOUND_PORT},[::]:{INBOUND_PORT}"),
        ),
        value(
            "TRELLIS_OUTBOUND",
            format!("127.0.0.1:{OUTBOUND_PORT},[::1]:{OUTBOUND_PORT}"),
        ),
        value(
            "TRELLIS_ADMIN",
            format!("0.0.0.0:{ADMIN_PORT},[::]:{ADMIN_PORT}"),
        ),
        // The init step redirects the pod's traffic to the proxy, which reads the original
        // destination of each connection.
        value("TRELLIS_TRANSPARENT", "true".to_string()),
        value(
            "TRELLIS_DRAIN_GRACE_SECONDS",
            config.drain_grace_seconds.to_string(),
        ),
        value("TRELLIS_LOG", log_level.to_string()),
    ];
    if let Some(probes) = app_probes {
        // The app's original probes, which the proxy performs for the kubelet.
        env.push(value(crate::probes::ENV, probes.to_string()));
    }
    env
}

fn probe(path: &str, timeout: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(i32::from(ADMIN_PORT)),
            ..Default::default()
        }),
        timeout_seconds: Some(timeout),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn port(name: &str, number: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: i32::from(number),
        protocol: Some("TCP".to_string()),
        ..Default::default()
    }
}

fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.to_string(),
        mount_path: path.to_string(),
        read_only: Some(true),
        ..Default::default()
    }
}

fn requirements(resources: &Resources) -> ResourceRequirements {
    let mut requests = BTreeMap::new();
    requests.insert("cpu".to_string(), Quantity(resources.cpu_request.clone()));
    requests.insert(
        "memory".to_string(),
        Quantity(resources.memory_request.clone()),
    );
    let mut limits = BTreeMap::new();
    if let Some(cpu) = &resources.cpu_limit {
        limits.insert("cpu".to_string(), Quantity(cpu.clone()));
    }
    if let Some(memory) = &resources.memory_limit {
        limits.insert("memory".to_string(), Quantity(memory.clone()));
    }
    ResourceRequirements {
        requests: Some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    }
}
