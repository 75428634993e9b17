//! Builds the mesh from what the cluster holds: a pure function of the watched objects (plus the
//! last accepted version of each TrafficPolicy, `Memory`), so it is tested without any API server.
//! Services in namespaces labelled `trellis.io/inject: enabled` become mesh services; their ready
//! EndpointSlice endpoints become endpoints (pod IP, sidecar inbound port); the pods behind them
//! give the service account the endpoints must prove; a TrafficPolicy gives a service its mTLS
//! mode, authorization, policy and routes; HTTPRoutes and GRPCRoutes with the Service as parent
//! give it routes (`gamma.rs`). What cannot be used is left out with a reason (`Built::skipped`),
//! everything else still applies, and every policy object gets the status that says which
//! (`Built::statuses`, written back by `status.rs`).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Namespace, Pod, Service as KubeService, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::crd::TrafficPolicy;
use super::gamma::{self, NamedPorts, Target};
use super::gateway::{GRPCRoute, HTTPRoute};
use super::status::{Desired, DesiredStatus, StatusKind, Verdict};
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
    pub http_routes: Vec<Arc<HTTPRoute>>,
    pub grpc_routes: Vec<Arc<GRPCRoute>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    pub mesh: MeshConfig,
    /// What was left out and why, one line each, sorted.
    pub skipped: Vec<String>,
    /// The status every policy object should show (TrafficPolicies, and HTTPRoutes/GRPCRoutes
    /// in meshed namespaces).
    pub statuses: Vec<DesiredStatus>,
}

/// What one build leaves for the next: the last accepted spec of each TrafficPolicy (by uid),
/// so that a bad edit keeps the previous version applying (as a refused mesh file keeps the
/// previous config) instead of silently dropping, say, its authorization rules.
#[derive(Debug, Default, Clone)]
pub struct Memory {
    last_good: HashMap<String, (Option<i64>, serde_json::Value)>,
}

/// The mesh from `state` alone (no earlier accepted TrafficPolicy versions to fall back on).
pub fn build(state: &ClusterState, settings: &MeshSettings) -> Built {
    build_with(state, settings, &mut Memory::default())
}

/// The mesh from `state`, falling back to (and updating) the last accepted TrafficPolicies.
pub fn build_with(state: &ClusterState, settings: &MeshSettings, memory: &mut Memory) -> Built {
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
    let attached = {
        let port_names = port_names(state, &meshed);
        let targets: BTreeMap<(String, String), Target> = (services.iter())
            .map(|(k, service)| {
                let ports = port_names.get(k).cloned().unwrap_or_default();
                (k.clone(), Target { service, ports })
            })
            .collect();
        let http: Vec<&HTTPRoute> = state.http_routes.iter().map(|r| &**r).collect();
        let grpc: Vec<&GRPCRoute> = state.grpc_routes.iter().map(|r| &**r).collect();
        gamma::attach(&http, &grpc, &meshed, &targets)
    };
    let mut statuses = attached.statuses;
    skipped.extend(attached.skipped);
    apply_policies(
        state,
        &meshed,
        &mut services,
        &attached.first,
        memory,
        &mut skipped,
        &mut statuses,
    );
    for (key, routes) in attached.routes {
        if let Some(service) = services.get_mut(&key) {
            service.routes = routes;
        }
    }
    skipped.sort();
    skipped.dedup();
    statuses.sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
    Built {
        mesh: MeshConfig {
            trust_domain: settings.trust_domain.clone(),
            cluster_domain: settings.cluster_domain.clone(),
            certificate_lifetime: settings.certificate_lifetime,
            services: services.into_values().collect(),
            trust: Default::default(),
        },
        skipped,
        statuses,
    }
}

/// The TCP ports of each meshed Service by name (a route's `sectionName` names one).
fn port_names(
    state: &ClusterState,
    meshed: &HashSet<&str>,
) -> HashMap<(String, String), NamedPorts> {
    let mut out = HashMap::new();
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
        let ports = (svc.spec.iter().flat_map(|s| s.ports.iter().flatten()))
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| Some((p.name.clone(), u16::try_from(p.port).ok()?)))
            .collect();
        out.insert((ns.to_owned(), name.to_owned()), ports);
    }
    out
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
        addresses: cluster_ips(spec),
        endpoints,
        policy: Policy::default(),
        routes: Vec::new(),
        authorization: None,
    })
}

/// The Service's virtual IPs: `clusterIPs` (one per IP family), else the older `clusterIP`.
/// A headless Service ("None") has none, and one not yet allocated (empty) none yet; its
/// callers then reach the pods' own IPs, which are endpoints.
fn cluster_ips(spec: &ServiceSpec) -> Vec<IpAddr> {
    let listed = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.as_slice(),
        _ => spec.cluster_ip.as_slice(),
    };
    let mut out: Vec<IpAddr> = Vec::with_capacity(listed.len());
    for ip in listed.iter().filter_map(|ip| ip.parse::<IpAddr>().ok()) {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
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
/// service. An invalid one is skipped with the field and reason, or, when an earlier version of it
/// was accepted, that version keeps applying. A service routed by Gateway API routes (`routed`)
/// takes the TrafficPolicy's policy, mTLS and authorization but not its routes.
fn apply_policies(
    state: &ClusterState,
    meshed: &HashSet<&str>,
    services: &mut BTreeMap<(String, String), Service>,
    routed: &BTreeMap<(String, String), String>,
    memory: &mut Memory,
    skipped: &mut Vec<String>,
    statuses: &mut Vec<DesiredStatus>,
) {
    let known: HashSet<(String, String)> = services.keys().cloned().collect();
    let ports: HashMap<(String, String), Vec<Port>> = (services.iter())
        .map(|(k, s)| (k.clone(), s.ports.clone()))
        .collect();
    let mut policies: Vec<&TrafficPolicy> = state.traffic_policies.iter().map(|p| &**p).collect();
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
    let mut present: HashSet<String> = HashSet::new();
    for tp in policies {
        let (Some(ns), Some(name)) = (
            tp.metadata.namespace.as_deref(),
            tp.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let generation = tp.metadata.generation;
        let mut status = |accepted: bool, reason: &str, message: String| {
            statuses.push(DesiredStatus {
                kind: StatusKind::TrafficPolicy,
                namespace: ns.to_owned(),
                name: name.to_owned(),
                uid: tp.metadata.uid.clone(),
                generation,
                desired: Desired::Conditions(vec![Verdict::new(
                    "Accepted", accepted, reason, message,
                )]),
            });
        };
        if !meshed.contains(ns) {
            status(
                false,
                "NamespaceNotMeshed",
                format!("namespace {ns:?} is not labelled {INJECT_LABEL}={INJECT_ENABLED}"),
            );
            continue;
        }
        let at = format!("trafficpolicies/{ns}/{name}");
        let memory_key = (tp.metadata.uid.clone()).unwrap_or_else(|| format!("{ns}/{name}"));
        present.insert(memory_key.clone());
        let parse = |spec: &serde_json::Value| {
            let document = serde_json::json!({ "spec": spec });
            let origin = format!("TrafficPolicy {ns}/{name}");
            config::parse_traffic_policy(&origin, &document.to_string(), ns, &known, &ports)
                .map_err(|e| match e {
                    config::ConfigError::Invalid { path, reason, .. } => {
                        format!("{path}: {reason}")
                    }
                    e => e.to_string(),
                })
        };
        let (parsed, fallback) = match parse(&tp.spec) {
            Ok(parsed) => {
                memory
                    .last_good
                    .insert(memory_key, (generation, tp.spec.clone()));
                (parsed, None)
            }
            Err(why) => {
                let previous = (memory.last_good.get(&memory_key))
                    .and_then(|(g, spec)| Some((*g, parse(spec).ok()?)));
                match previous {
                    Some((g, parsed)) => {
                        let g = g.map_or_else(|| "?".to_owned(), |g| g.to_string());
                        let message =
                            format!("{why} (generation {g}, the last accepted, still applies)");
                        skipped.push(format!("{at}: {message}"));
                        (parsed, Some(message))
                    }
                    None => {
                        skipped.push(format!("{at}: {why}"));
                        status(false, "Invalid", why);
                        continue;
                    }
                }
            }
        };
        let key = (ns.to_owned(), parsed.service.clone());
        if let Some(first) = applied.get(&key) {
            let message = format!(
                "service {ns}/{} already has TrafficPolicy {ns}/{first} (older), which applies",
                parsed.service
            );
            skipped.push(format!("{at}: {message}"));
            status(false, "Conflicted", message);
            continue;
        }
        let Some(service) = services.get_mut(&key) else {
            continue; // validation checked the target; a fallback's target may have gone
        };
        service.policy = parsed.policy;
        service.mtls = parsed.mtls.unwrap_or(MtlsMode::Strict);
        service.authorization = parsed.authorization;
        applied.insert(key.clone(), name.to_owned());
        let overridden = match routed.get(&key) {
            Some(by) if !parsed.routes.is_empty() => {
                let message = format!(
                    "spec.routes: not applied, Service {ns}/{} is routed by {by} (Gateway API \
                     routes take precedence); mtls, policy and authorization apply",
                    parsed.service
                );
                skipped.push(format!("{at}: {message}"));
                Some(message)
            }
            Some(_) => None,
            None => {
                service.routes = parsed.routes;
                None
            }
        };
        match (fallback, overridden) {
            (Some(message), _) => status(false, "Invalid", message),
            (None, Some(message)) => status(true, "RoutesOverridden", message),
            (None, None) => status(
                true,
                "Accepted",
                format!("applies to Service {ns}/{}", parsed.service),
            ),
        }
    }
    memory.last_good.retain(|k, _| present.contains(k));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(policies: Vec<serde_json::Value>) -> ClusterState {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop", "labels": {INJECT_LABEL: INJECT_ENABLED}}
        }))
        .unwrap();
        let svc: KubeService = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
        .unwrap();
        ClusterState {
            namespaces: vec![Arc::new(ns)],
            services: vec![Arc::new(svc)],
            traffic_policies: (policies.into_iter())
                .map(|p| Arc::new(serde_json::from_value(p).unwrap()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn cluster_ips_become_virtual_addresses_and_headless_services_have_none() {
        let addresses = |spec: serde_json::Value| {
            let mut state = state(vec![]);
            let svc: KubeService = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web", "namespace": "shop"}, "spec": spec
            }))
            .unwrap();
            state.services = vec![Arc::new(svc)];
            let built = build(&state, &MeshSettings::default());
            built.mesh.services[0].addresses.clone()
        };
        let ports = serde_json::json!([{"name": "http", "port": 80, "targetPort": 8080}]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Dual stack: every family's address, in the Service's order.
        assert_eq!(
            addresses(
                serde_json::json!({"ports": ports, "clusterIP": "10.96.0.10",
                                        "clusterIPs": ["10.96.0.10", "fd00::10"]})
            ),
            [ip("10.96.0.10"), ip("fd00::10")]
        );
        // Only the older single field (objects from before clusterIPs).
        assert_eq!(
            addresses(serde_json::json!({"ports": ports, "clusterIP": "10.96.0.11"})),
            [ip("10.96.0.11")]
        );
        // Headless, and not yet allocated.
        assert!(
            addresses(serde_json::json!({"ports": ports, "clusterIP": "None",
                                             "clusterIPs": ["None"]}))
            .is_empty()
        );
        assert!(addresses(serde_json::json!({"ports": ports, "clusterIP": ""})).is_empty());
        assert!(addresses(serde_json::json!({"ports": ports})).is_empty());
    }

    fn policy(generation: i64, spec: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1",
                         "generation": generation},
            "spec": spec
        })
    }

    fn accepted(built: &Built) -> Verdict {
        let d = (built.statuses.iter())
            .find(|s| s.kind == StatusKind::TrafficPolicy)
            .unwrap();
        match &d.desired {
            Desired::Conditions(c) => c[0].clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn trafficpolicy_mtls_and_authorization_apply_and_a_bad_edit_keeps_the_last_accepted() {
        let settings = MeshSettings::default();
        let mut memory = Memory::default();
        let good = serde_json::json!({"service": "web", "mtls": "disabled",
            "authorization": {"default": "deny", "rules": [
                {"name": "from-shop", "action": "allow", "from": {"namespaces": ["shop"]},
                 "to": {"ports": [80]}}]}});
        let built = build_with(&state(vec![policy(1, good)]), &settings, &mut memory);
        let web = &built.mesh.services[0];
        assert_eq!(web.mtls, MtlsMode::Disabled);
        let authz = web.authorization.as_ref().unwrap();
        assert_eq!(authz.default, config::AuthzAction::Deny);
        assert_eq!(authz.rules[0].to.ports, [80]);
        assert_eq!(
            accepted(&built),
            Verdict::new("Accepted", true, "Accepted", "applies to Service shop/web")
        );

        let bad = serde_json::json!({"service": "web", "mtls": "sometimes"});
        let built = build_with(&state(vec![policy(2, bad.clone())]), &settings, &mut memory);
        let web = &built.mesh.services[0];
        assert_eq!(web.mtls, MtlsMode::Disabled);
        assert!(web.authorization.is_some());
        let why = "spec.mtls: \"sometimes\" is not one of strict, permissive, disabled";
        assert_eq!(
            accepted(&built),
            Verdict::new(
                "Accepted",
                false,
                "Invalid",
                format!("{why} (generation 1, the last accepted, still applies)")
            )
        );
        assert_eq!(
            built.skipped,
            [format!(
                "trafficpolicies/shop/web: {why} (generation 1, the last accepted, still applies)"
            )]
        );

        // Without an accepted version to fall back on (a restart), the object is skipped.
        let built = build(&state(vec![policy(2, bad)]), &settings);
        let web = &built.mesh.services[0];
        assert_eq!(
            (web.mtls, web.authorization.is_none()),
            (MtlsMode::Strict, true)
        );
        assert_eq!(
            accepted(&built),
            Verdict::new("Accepted", false, "Invalid", why)
        );
    }
}
