//! Builds the mesh from what the cluster holds: a pure function of the watched objects, so it is
//! tested without any API server. Services in namespaces labelled `trellis.io/inject: enabled`
//! become mesh services; their ready EndpointSlice endpoints become endpoints (pod IP, sidecar
//! inbound port); the pods behind them give the service account the endpoints must prove; a
//! TrafficPolicy gives a service its policy and routes. What cannot be used is left out with a
//! reason (`Built::skipped`) and everything else still applies.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service as KubeService, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::crd::TrafficPolicy;
use crate::config::{self, Endpoint, MeshConfig, MtlsMode, Policy, Port, Protocol, Service};

/// The namespace label that puts a namespace's services in the mesh (the injector's too).
pub const INJECT_LABEL: &str = "trellis.io/inject";
pub const INJECT_ENABLED: &str = "enabled";
/// The sidecar's inbound port on every pod: where other sidecars connect.
pub const SIDECAR_INBOUND_PORT: u16 = 4143;
/// The EndpointSlice label naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The mesh-wide settings the cluster does not say.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshSettings {
    pub trust_domain: String,
    pub cluster_domain: String,
    pub certificate_lifetime: Duration,
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            trust_domain: "trellis.local".to_owned(),
            cluster_domain: "cluster.local".to_owned(),
            certificate_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

/// Everything the watches hold at one moment.
#[derive(Debug, Default, Clone)]
pub struct ClusterState {
    pub namespaces: Vec<Arc<Namespace>>,
    pub services: Vec<Arc<KubeService>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub pods: Vec<Arc<Pod>>,
    pub traffic_policies: Vec<Arc<TrafficPolicy>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    pub mesh: MeshConfig,
    /// What was left out and why, one line each, sorted.
    pub skipped: Vec<String>,
}

pub fn build(state: &ClusterState, settings: &MeshSettings) -> Built {
    let meshed: HashSet<&str> = (state.namespaces.iter())
        .filter(|ns| label(&ns.metadata.labels, INJECT_LABEL) == Some(INJECT_ENABLED))
        .filter_map(|ns| ns.metadata.name.as_deref())
        .collect();
    let pods: HashMap<(&str, &str), &Pod> = (state.pods.iter())
        .filter_map(|p| {
            Some((
                (
                    p.metadata.namespace.as_deref()?,
                    p.metadata.name.as_deref()?,
                ),
                &**p,
            ))
        })
        .collect();
    let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in &state.endpoint_slices {
        let (Some(ns), Some(service)) = (
            slice.metadata.namespace.as_deref(),
            label(&slice.metadata.labels, SERVICE_NAME_LABEL),
        ) else {
            continue;
        };
        slices.entry((ns, service)).or_default().push(slice);
    }
    let mut skipped = Vec::new();
    // Sorted by namespace and name so that equal cluster states give equal configs.
    let mut services: BTreeMap<(String, String), Service> = BTreeMap::new();
    for svc in &state.services {
        let (Some(ns), Some(name)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
        ) else {
            continue;
        };
        if !meshed.contains(ns) {
            continue;
        }
        let slices = slices.get(&(ns, name)).map_or(&[][..], Vec::as_slice);
        if let Some(service) = service(svc, ns, name, slices, &pods, &mut skipped) {
            services.insert((ns.to_owned(), name.to_owned()), service);
        }
    }
    apply_policies(state, &meshed, &mut services, &mut skipped);
    skipped.sort();
    Built {
        mesh: MeshConfig {
            trust_domain: settings.trust_domain.clone(),
            cluster_domain: settings.cluster_domain.clone(),
            certificate_lifetime: settings.certificate_lifetime,
            services: services.into_values().collect(),
            trust: Default::default(),
        },
        skipped,
    }
}

fn label<'a>(labels: &'a Option<BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    labels.as_ref()?.get(key).map(String::as_str)
}

fn service(
    svc: &KubeService,
    ns: &str,
    name: &str,
    slices: &[&EndpointSlice],
    pods: &HashMap<(&str, &str), &Pod>,
    skipped: &mut Vec<String>,
) -> Option<Service> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let ports: Vec<Port> = (spec.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| port(p, slices))
        .collect();
    if ports.is_empty() {
        // Nothing HTTP can reach (no TCP ports): not an error, just not part of the mesh.
        return None;
    }
    let (service_account, endpoints) = endpoints(ns, name, slices, pods, skipped);
    Some(Service {
        name: name.to_owned(),
        namespace: ns.to_owned(),
        service_account,
        mtls: MtlsMode::Strict,
        ports,
        endpoints,
        policy: Policy::default(),
        routes: Vec::new(),
        authorization: None,
    })
}

/// A Service port: `targetPort` as the EndpointSlices resolved it (named ports too), else as
/// written when it is a number, else the port itself.
fn port(p: &ServicePort, slices: &[&EndpointSlice]) -> Option<Port> {
    let port = u16::try_from(p.port).ok().filter(|p| *p > 0)?;
    let resolved = (slices.iter())
        .flat_map(|s| s.ports.iter().flatten())
        .find(|sp| sp.name.as_deref().unwrap_or("") == p.name.as_deref().unwrap_or(""))
        .and_then(|sp| sp.port);
    let written = match &p.target_port {
        Some(IntOrString::Int(n)) => Some(*n),
        _ => None,
    };
    let target_port = (resolved.or(written))
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(port);
    Some(Port {
        port,
        target_port,
        protocol: protocol(p),
    })
}

/// `appProtocol` when given (`kubernetes.io/h2c`, `h2c`, `grpc` → h2c; anything else HTTP/1.1),
/// else the port's name (`h2c`, `grpc`, or prefixed `h2c-`, `grpc-` → h2c).
pub fn protocol(p: &ServicePort) -> Protocol {
    let h2c = match p.app_protocol.as_deref() {
        Some(app) => matches!(app, "kubernetes.io/h2c" | "h2c" | "grpc"),
        None => p.name.as_deref().is_some_and(|n| {
            n == "h2c" || n == "grpc" || n.starts_with("h2c-") || n.starts_with("grpc-")
        }),
    };
    if h2c {
        Protocol::H2c
    } else {
        Protocol::Http1
    }
}

/// The ready endpoints of a service and the service account they run as. Endpoints whose pod is
/// not (yet) known are left out until it is; a pod running as another account than the service's
/// (the most common one) is left out with a reason, since its certificate could not match.
fn endpoints(
    ns: &str,
    name: &str,
    slices: &[&EndpointSlice],
    pods: &HashMap<(&str, &str), &Pod>,
    skipped: &mut Vec<String>,
) -> (String, Vec<Endpoint>) {
    let mut found: BTreeMap<IpAddr, String> = BTreeMap::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        for ep in &slice.endpoints {
            // "ready" unset means unknown, which consumers must treat as ready.
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            let Some(target) = ep
                .target_ref
                .as_ref()
                .filter(|t| t.kind.as_deref() == Some("Pod"))
            else {
                continue;
            };
            let pod_ns = target.namespace.as_deref().unwrap_or(ns);
            let Some(pod) = target.name.as_deref().and_then(|n| pods.get(&(pod_ns, n))) else {
                continue;
            };
            if target.uid.is_some() && pod.metadata.uid.is_some() && target.uid != pod.metadata.uid
            {
                continue; // a new pod with the old one's name; its own slice update follows
            }
            if ready {
                let sa = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone());
                found.insert(ip, sa.unwrap_or_else(|| "default".to_owned()));
            }
        }
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for sa in found.values() {
        *counts.entry(sa).or_default() += 1;
    }
    // The most common account; ties go to the first name in order.
    let service_account = (counts.iter())
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map_or("default", |(sa, _)| *sa)
        .to_owned();
    let mut endpoints = Vec::with_capacity(found.len());
    for (ip, sa) in &found {
        if *sa != service_account {
            skipped.push(format!(
                "Service {ns}/{name}: endpoint {ip} runs as service account {sa:?}, not the \
                 service's {service_account:?}; left out"
            ));
            continue;
        }
        endpoints.push(Endpoint {
            address: SocketAddr::new(*ip, SIDECAR_INBOUND_PORT),
            weight: 1,
        });
    }
    (service_account, endpoints)
}

/// Applies each valid TrafficPolicy to its service; the oldest wins when several name the same
/// service. Invalid ones are skipped with the field and reason.
fn apply_policies(
    state: &ClusterState,
    meshed: &HashSet<&str>,
    services: &mut BTreeMap<(String, String), Service>,
    skipped: &mut Vec<String>,
) {
    let known: HashSet<(String, String)> = services.keys().cloned().collect();
    let mut policies: Vec<&TrafficPolicy> = (state.traffic_policies.iter())
        .map(|p| &**p)
        .filter(|p| {
            p.metadata
                .namespace
                .as_deref()
                .is_some_and(|ns| meshed.contains(ns))
        })
        .collect();
    policies.sort_by(|a, b| {
        let key = |p: &TrafficPolicy| {
            (
                p.metadata.creation_timestamp.clone(),
                p.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    let mut applied: BTreeMap<(String, String), String> = BTreeMap::new();
    for tp in policies {
        let ns = tp.metadata.namespace.clone().unwrap_or_default();
        let name = tp.metadata.name.clone().unwrap_or_default();
        let origin = format!("TrafficPolicy {ns}/{name}");
        let document = serde_json::json!({ "spec": tp.spec });
        let parsed = config::parse_service_policy(&origin, &document.to_string(), &ns, &known);
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(config::ConfigError::Invalid { path, reason, .. }) => {
                skipped.push(format!("{origin}: {path}: {reason}"));
                continue;
            }
            Err(e) => {
                skipped.push(format!("{origin}: {e}"));
                continue;
            }
        };
        let key = (ns.clone(), parsed.service.clone());
        if let Some(first) = applied.get(&key) {
            skipped.push(format!(
                "{origin}: service {ns}/{} already has TrafficPolicy {ns}/{first} (older), which \
                 applies",
                parsed.service
            ));
            continue;
        }
        if let Some(service) = services.get_mut(&key) {
            service.policy = parsed.policy;
            service.routes = parsed.routes;
            applied.insert(key, name);
        }
    }
}
