//! The Kubernetes source and the TokenReview authenticator against a FAKE API server
//! (`fake_api_server/`) that replays recorded API responses: lists, watch events and token
//! reviews shaped exactly as the API server sends them (`fixtures/k8s/`), and accepts status
//! PATCHes the way the status subresource does. Objects the tests add are written as the API
//! server returns them (defaults filled in: `parentRefs[].group`/`kind`, backendRef `group`,
//! `kind` and `weight`), for TrafficPolicy and the Gateway API's v1 HTTPRoute and GRPCRoute.
mod fake_api_server;

use std::sync::Arc;
use std::time::Duration;

use fake_api_server::FakeApiServer;
use prost::Message;
use tokio::sync::watch;
use tonic::metadata::MetadataMap;
use trellis_api::config::Endpoints;
use trellis_api::type_url;
use trellis_control_plane::authn::{grant_from_metadata, Authenticator};
use trellis_control_plane::config::{LoadBalancer, MeshConfig, Protocol, Service};
use trellis_control_plane::kubernetes::KubernetesOptions;
use trellis_control_plane::kubernetes::{KubernetesSource, MeshSettings, TokenReviewAuthenticator};
use trellis_control_plane::publish::Publisher;
use trellis_control_plane::resources::{self, SharedSnapshot};
use trellis_control_plane::{ConfigSource, ControlPlane, ControlPlaneConfig, ControlPlaneStatus};

const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const PODS: &str = "/api/v1/pods";

async fn synced_source(fake: &FakeApiServer) -> KubernetesSource {
    let source = KubernetesSource::start(fake.client(), MeshSettings::default());
    source
        .wait_synced(Duration::from_secs(10))
        .await
        .expect("the fake's lists sync");
    source
}

fn service<'a>(mesh: &'a MeshConfig, ns: &str, name: &str) -> &'a Service {
    (mesh.services.iter())
        .find(|s| s.namespace == ns && s.name == name)
        .unwrap_or_else(|| panic!("no service {ns}/{name} in {:?}", names(mesh)))
}

fn names(mesh: &MeshConfig) -> Vec<String> {
    mesh.services
        .iter()
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .collect()
}

fn addresses(service: &Service) -> Vec<String> {
    service
        .endpoints
        .iter()
        .map(|e| e.address.to_string())
        .collect()
}

#[tokio::test]
async fn fake_api_server_lists_become_the_mesh() {
    let fake = FakeApiServer::start(&[]).await;
    let built = synced_source(&fake).await.build();
    let mesh = &built.mesh;
    // Only the labelled namespace; the ExternalName service is not meshed.
    assert_eq!(names(mesh), ["shop/api", "shop/web"]);

    let web = service(mesh, "shop", "web");
    assert_eq!(web.service_account, "web");
    assert_eq!(web.ports.len(), 1);
    assert_eq!((web.ports[0].port, web.ports[0].target_port), (80, 8080));
    assert_eq!(web.ports[0].protocol, Protocol::Http1);
    // The not-ready endpoint is left out; the sidecar's inbound port replaces the app's.
    assert_eq!(addresses(web), ["10.244.1.10:4143", "10.244.2.11:4143"]);

    let api = service(mesh, "shop", "api");
    assert_eq!(api.service_account, "api");
    // grpc: named targetPort resolved through the EndpointSlice; metrics: appProtocol h2c; the
    // UDP port is not meshed.
    let ports: Vec<_> = api
        .ports
        .iter()
        .map(|p| (p.port, p.target_port, p.protocol))
        .collect();
    assert_eq!(
        ports,
        [(9090, 9091, Protocol::H2c), (8081, 8081, Protocol::H2c)]
    );
    // "ready" unset counts as ready; the pod running as another service account is left out.
    assert_eq!(addresses(api), ["10.244.1.20:4143"]);

    // The valid TrafficPolicy applies; the invalid ones and the later duplicate are skipped.
    assert_eq!(web.policy.load_balancer, LoadBalancer::LeastRequest);
    assert_eq!(web.policy.retry.attempts, 3);
    assert_eq!(web.routes.len(), 1);
    assert_eq!(web.routes[0].backends[1].cluster(), "shop/api");
    assert_eq!(api.policy, Default::default());
    let skipped = built.skipped.join("\n");
    assert!(
        skipped
            .contains("trafficpolicies/shop/api: spec.policy.retry.attempts: 11 is not in 1..=10"),
        "{skipped}"
    );
    assert!(
        skipped.contains("trafficpolicies/shop/typo: spec.policy.loadBalanser: unknown field"),
        "{skipped}"
    );
    assert!(
        skipped.contains(
            "trafficpolicies/shop/web-duplicate: service shop/web already has TrafficPolicy shop/web"
        ),
        "{skipped}"
    );
    assert!(
        skipped.contains("endpoint 10.244.1.21 runs as service account \"debugger\""),
        "{skipped}"
    );
    assert_eq!(built.skipped.len(), 4, "{skipped}");
}

/// The endpoints (address, identity) of `cluster` in a published snapshot.
fn endpoints(snapshot: &SharedSnapshot, cluster: &str) -> Vec<(String, String)> {
    let Some(resource) = snapshot
        .of_type(type_url::ENDPOINTS)
        .and_then(|r| r.get(cluster))
    else {
        return Vec::new();
    };
    let decoded = Endpoints::decode(resource.payload.as_slice()).unwrap();
    decoded
        .endpoints
        .into_iter()
        .map(|e| (e.address, e.identity))
        .collect()
}

async fn next_version(rx: &mut watch::Receiver<SharedSnapshot>) -> SharedSnapshot {
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("a new snapshot within 10s")
        .unwrap();
    rx.borrow_and_update().clone()
}

#[tokio::test]
async fn fake_api_server_watch_events_update_the_snapshot() {
    let fake = FakeApiServer::start(&[]).await;
    let source = synced_source(&fake)
        .await
        .with_debounce(Duration::from_millis(20));
    let first = source.build();
    let (snap_tx, mut snap_rx) = watch::channel(Arc::new(resources::build(&first.mesh, &[], 1)));
    let (status_tx, status_rx) = watch::channel(ControlPlaneStatus::default());
    let publisher = Publisher::new(vec![], snap_tx, Arc::new(status_tx));
    let (_stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(source.run(publisher, first, stop_rx));

    // Scale-up: the new pod, then its endpoint in the slice (with a bookmark before it).
    fake.replay(PODS, "watch-pods-scale-up.jsonl");
    fake.replay(SLICES, "watch-endpointslices-scale-up.jsonl");
    let mut snapshot = next_version(&mut snap_rx).await;
    while endpoints(&snapshot, "shop/web").len() < 3 {
        snapshot = next_version(&mut snap_rx).await;
    }
    let web_id = "spiffe://trellis.local/ns/shop/sa/web".to_string();
    assert_eq!(
        endpoints(&snapshot, "shop/web"),
        [
            ("10.244.1.10:4143".to_string(), web_id.clone()),
            ("10.244.2.11:4143".to_string(), web_id.clone()),
            ("10.244.3.13:4143".to_string(), web_id.clone()),
        ]
    );
    assert_eq!(endpoints(&snapshot, "shop/api").len(), 1);
    assert_eq!(status_rx.borrow().config_version, snapshot.system_version);

    // The api service's only EndpointSlice is deleted: its endpoints go, the service stays.
    fake.replay(SLICES, "watch-endpointslices-delete-api.jsonl");
    let snapshot = next_version(&mut snap_rx).await;
    assert_eq!(endpoints(&snapshot, "shop/api"), []);
    assert!(snapshot
        .of_type(type_url::CLUSTERS)
        .unwrap()
        .contains_key("shop/api"));
    assert_eq!(endpoints(&snapshot, "shop/web").len(), 3);
    // The skipped debugger endpoint went with its slice.
    assert_eq!(status_rx.borrow().skipped.len(), 3);

    let watches = fake
        .requests()
        .iter()
        .filter(|r| r.contains("watch=true"))
        .count();
    assert!(watches >= 5, "every kind is watched: {:?}", fake.requests());
    task.abort();
}

fn bearer(token: &str) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
    metadata
}

#[tokio::test]
async fn fake_api_server_token_reviews_grant_service_accounts_only() {
    let fake = FakeApiServer::start(&[
        ("token-web", "tokenreview-accept.json"),
        ("token-expired", "tokenreview-reject.json"),
        (
            "token-for-the-api-server",
            "tokenreview-wrong-audience.json",
        ),
        ("token-of-a-user", "tokenreview-user.json"),
    ])
    .await;
    let auth = TokenReviewAuthenticator::new(fake.client());

    let grant = grant_from_metadata(&auth, &bearer("token-web"))
        .await
        .unwrap();
    assert_eq!(
        (grant.namespace.as_str(), grant.service_account.as_str()),
        ("shop", "web")
    );

    for (token, why) in [
        ("token-expired", "service account token has expired"),
        ("token-for-the-api-server", "not for audience \"trellis\""),
        (
            "token-of-a-user",
            "\"jane@example.com\" is not a service account",
        ),
    ] {
        let status = grant_from_metadata(&auth, &bearer(token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{token}");
        assert!(
            status.message().contains(why),
            "{token}: {}",
            status.message()
        );
    }

    // The review asked for our audience.
    let reviews = || {
        fake.requests()
            .iter()
            .filter(|r| r.contains("tokenreviews"))
            .count()
    };
    assert_eq!(reviews(), 4);
    // Accepted tokens are cached: a reconnect storm costs no more reviews; rejected ones are not.
    for _ in 0..20 {
        assert!(auth.authenticate("token-web").await.is_ok());
    }
    assert_eq!(reviews(), 4);
    assert!(auth.authenticate("token-expired").await.is_err());
    assert_eq!(reviews(), 5);
}

#[tokio::test]
async fn fake_api_server_down_means_unavailable_not_unauthenticated() {
    let fake = FakeApiServer::start(&[]).await;
    let client = fake.client();
    drop(fake);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let auth = TokenReviewAuthenticator::new(client);
    let status = grant_from_metadata(&auth, &bearer("token-web"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn control_plane_serves_from_the_fake_api_server() {
    let fake = FakeApiServer::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig()).unwrap();
    let mut config = ControlPlaneConfig::new("unused.yaml", dir.path().join("state"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.source = ConfigSource::Kubernetes(KubernetesOptions {
        kubeconfig: Some(kubeconfig),
        mesh: MeshSettings {
            trust_domain: "cluster.example".into(),
            ..Default::default()
        },
    });
    let plane = ControlPlane::bind(config)
        .await
        .expect("bind syncs from the fake");
    assert_eq!(plane.trust_domain(), "cluster.example");
    let status = plane.status();
    assert_eq!(status.borrow().config_version, 1);
    assert_eq!(
        status.borrow().skipped.len(),
        4,
        "{:?}",
        status.borrow().skipped
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(plane.run(async {
        let _ = stopped.await;
    }));
    fake.replay(PODS, "watch-pods-scale-up.jsonl");
    fake.replay(SLICES, "watch-endpointslices-scale-up.jsonl");
    let mut status = status;
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.config_version >= 2),
    )
    .await
    .expect("the watch event is applied")
    .unwrap();
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

// --- Policy as Kubernetes users write it: TrafficPolicy mTLS/authorization, status conditions,
// --- Gateway API routes with a Service parent (GAMMA).

use fake_api_server::{StatusPatch, GRPC_ROUTES, HTTP_ROUTES, TRAFFIC_POLICIES};
use serde_json::{json, Value};
use trellis_api::config::{route_match, AuthzAction, InboundConfig, MtlsMode, RouteConfig};

/// Runs the source against `fake`, publishing into a watch channel; returns the receiver of
/// snapshots, the control plane status and the task.
async fn running(
    fake: &FakeApiServer,
) -> (
    watch::Receiver<SharedSnapshot>,
    watch::Receiver<ControlPlaneStatus>,
    tokio::task::JoinHandle<()>,
) {
    let source = synced_source(fake)
        .await
        .with_debounce(Duration::from_millis(20));
    let first = source.build();
    let (snap_tx, snap_rx) = watch::channel(Arc::new(resources::build(&first.mesh, &[], 1)));
    let (status_tx, status_rx) = watch::channel(ControlPlaneStatus::default());
    let publisher = Publisher::new(vec![], snap_tx, Arc::new(status_tx));
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let _keep = stop_tx;
        source.run(publisher, first, stop_rx).await
    });
    (snap_rx, status_rx, task)
}

fn decode<M: Message + Default>(snapshot: &SharedSnapshot, type_url: &str, name: &str) -> M {
    let resource = snapshot
        .of_type(type_url)
        .and_then(|r| r.get(name))
        .unwrap_or_else(|| panic!("no {type_url} {name}"));
    M::decode(resource.payload.as_slice()).unwrap()
}

/// Waits until the fake has applied at least `n` status patches, and returns them all.
async fn patches(fake: &FakeApiServer, n: usize) -> Vec<StatusPatch> {
    for _ in 0..200 {
        let patches = fake.status_patches();
        if patches.len() >= n {
            return patches;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "fewer than {n} status patches within 10s: {:#?}",
        fake.status_patches()
    );
}

fn patches_of<'a>(patches: &'a [StatusPatch], collection: &str, name: &str) -> Vec<&'a Value> {
    patches
        .iter()
        .filter(|p| p.collection == collection && p.namespace == "shop" && p.name == name)
        .map(|p| &p.body)
        .collect()
}

/// The single condition of a TrafficPolicy status patch, without its transition time (which is
/// the time of writing), after checking that the time is there.
fn accepted_condition(body: &Value) -> Value {
    let conditions = body["status"]["conditions"].as_array().unwrap();
    assert_eq!(conditions.len(), 1, "{body}");
    let mut c = conditions[0].clone();
    let time = c.as_object_mut().unwrap().remove("lastTransitionTime");
    assert!(
        time.as_ref()
            .and_then(Value::as_str)
            .is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );
    c
}

fn traffic_policy(name: &str, generation: i64, spec: Value) -> Value {
    json!({
        "apiVersion": "policy.trellis.io/v1alpha1",
        "kind": "TrafficPolicy",
        "metadata": {
            "name": name, "namespace": "shop",
            "uid": format!("a9b8c7d6-0100-4e5f-8a9b-{:012}", name.len()),
            "resourceVersion": "900", "generation": generation,
            "creationTimestamp": "2026-11-21T10:00:00Z"
        },
        "spec": spec
    })
}

fn list(api_version: &str, kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": kind,
           "metadata": {"resourceVersion": "1000"}, "items": items})
}

fn web_policy() -> Value {
    json!({
        "service": "web",
        "mtls": "permissive",
        "authorization": {
            "default": "allow",
            "rules": [{
                "name": "no-admin-from-batch",
                "action": "deny",
                "from": {"namespaces": ["batch"]},
                "to": {"ports": [80], "paths": [{"prefix": "/admin"}]}
            }]
        }
    })
}

#[tokio::test]
async fn trafficpolicy_mtls_and_authorization_reach_the_snapshot_and_accepted_is_written_once() {
    let policies = list(
        "policy.trellis.io/v1alpha1",
        "TrafficPolicyList",
        vec![traffic_policy("web", 1, web_policy())],
    );
    let fake = FakeApiServer::start_with(&[], &[(TRAFFIC_POLICIES, policies)]).await;
    let (mut snap_rx, _status, task) = running(&fake).await;

    let snapshot = snap_rx.borrow().clone();
    let inbound: InboundConfig = decode(&snapshot, type_url::INBOUND, "shop/web");
    assert_eq!(inbound.mtls_mode, MtlsMode::Permissive as i32);
    let authz = inbound.authorization.expect("the policy's authorization");
    assert_eq!(authz.default_action, AuthzAction::Allow as i32);
    let rule = &authz.rules[0];
    assert_eq!(
        (rule.name.as_str(), rule.action),
        ("no-admin-from-batch", AuthzAction::Deny as i32)
    );
    // A Service without a TrafficPolicy keeps the Kubernetes default: strict, no policy.
    let api: InboundConfig = decode(&snapshot, type_url::INBOUND, "shop/api");
    assert_eq!(api.mtls_mode, MtlsMode::Strict as i32);
    assert_eq!(api.authorization, None);

    let written = patches(&fake, 1).await;
    let web = patches_of(&written, TRAFFIC_POLICIES, "web");
    assert_eq!(web.len(), 1, "{written:#?}");
    assert_eq!(
        accepted_condition(web[0]),
        json!({"type": "Accepted", "status": "True", "reason": "Accepted",
               "message": "applies to Service shop/web", "observedGeneration": 1})
    );
    // The object holds it now (the patch went through the status subresource).
    let stored = fake.object(TRAFFIC_POLICIES, "shop", "web").unwrap();
    assert_eq!(stored["status"]["conditions"][0]["reason"], "Accepted");

    // Resyncs: unrelated changes rebuild the mesh, and the object itself comes back unchanged
    // (a relist or a no-op apply); none of it writes the status again.
    fake.replay(PODS, "watch-pods-scale-up.jsonl");
    fake.replay(SLICES, "watch-endpointslices-scale-up.jsonl");
    let mut snapshot = next_version(&mut snap_rx).await;
    while endpoints(&snapshot, "shop/web").len() < 3 {
        snapshot = next_version(&mut snap_rx).await;
    }
    let mut same = traffic_policy("web", 1, web_policy());
    same["status"] = stored["status"].clone();
    fake.apply(TRAFFIC_POLICIES, same);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.status_patches().len(),
        1,
        "{:#?}",
        fake.status_patches()
    );
    task.abort();
}

#[tokio::test]
async fn invalid_trafficpolicy_edit_is_refused_on_the_object_and_the_previous_version_serves() {
    let policies = list(
        "policy.trellis.io/v1alpha1",
        "TrafficPolicyList",
        vec![traffic_policy("web", 1, web_policy())],
    );
    let fake = FakeApiServer::start_with(&[], &[(TRAFFIC_POLICIES, policies)]).await;
    let (snap_rx, status_rx, task) = running(&fake).await;
    patches(&fake, 1).await;

    // The edit names a port the Service does not have, and drops the mTLS mode.
    let mut edited = web_policy();
    edited["authorization"]["rules"][0]["to"]["ports"] = json!([81]);
    edited.as_object_mut().unwrap().remove("mtls");
    fake.apply(TRAFFIC_POLICIES, traffic_policy("web", 1, edited));
    let written = patches(&fake, 2).await;
    let web = patches_of(&written, TRAFFIC_POLICIES, "web");
    assert_eq!(
        accepted_condition(web[1]),
        json!({"type": "Accepted", "status": "False", "reason": "Invalid",
               "message": "spec.authorization.rules[0].to.ports[0]: 81 is not one of this \
                           service's ports (generation 1, the last accepted, still applies)",
               "observedGeneration": 2})
    );
    // The previous version keeps serving: still permissive, still the deny rule.
    let snapshot = snap_rx.borrow().clone();
    let inbound: InboundConfig = decode(&snapshot, type_url::INBOUND, "shop/web");
    assert_eq!(inbound.mtls_mode, MtlsMode::Permissive as i32);
    assert_eq!(inbound.authorization.unwrap().rules.len(), 1);
    let skipped = status_rx.borrow().skipped.join("\n");
    assert!(
        skipped.contains("trafficpolicies/shop/web: spec.authorization.rules[0].to.ports[0]"),
        "{skipped}"
    );
    task.abort();
}

#[tokio::test]
async fn every_trafficpolicy_gets_its_condition_even_when_writes_fail_at_first() {
    let fake = FakeApiServer::start(&[]).await;
    // The API server fails the first two writes; the source keeps serving and retries.
    fake.fail_status_patches(2);
    let (_snap_rx, _status, task) = running(&fake).await;
    let written = patches(&fake, 4).await;
    let condition = |name: &str| {
        let bodies = patches_of(&written, TRAFFIC_POLICIES, name);
        assert_eq!(bodies.len(), 1, "{name}: {written:#?}");
        let c = accepted_condition(bodies[0]);
        (
            c["status"].as_str().unwrap().to_owned(),
            c["reason"].as_str().unwrap().to_owned(),
            c["message"].as_str().unwrap().to_owned(),
            c["observedGeneration"].as_i64().unwrap(),
        )
    };
    // web's routes are its own here: no Gateway API route names shop/web.
    assert_eq!(
        condition("web"),
        (
            "True".into(),
            "Accepted".into(),
            "applies to Service shop/web".into(),
            1
        )
    );
    assert_eq!(
        condition("api"),
        (
            "False".into(),
            "Invalid".into(),
            "spec.policy.retry.attempts: 11 is not in 1..=10".into(),
            2
        )
    );
    assert_eq!(
        condition("web-duplicate"),
        (
            "False".into(),
            "Conflicted".into(),
            "service shop/web already has TrafficPolicy shop/web (older), which applies".into(),
            1
        )
    );
    let (status, reason, message, _) = condition("typo");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Invalid"));
    assert!(
        message.starts_with("spec.policy.loadBalanser: unknown field `loadBalanser`"),
        "{message}"
    );
    task.abort();
}

/// An HTTPRoute as the API server returns it: defaults filled in.
fn http_route(name: &str, parent: Value, rules: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": name, "namespace": "shop",
            "uid": format!("b1c2d3e4-0200-4f5a-9b8c-{:012}", name.len()),
            "resourceVersion": "950", "generation": 1,
            "creationTimestamp": "2026-11-23T08:00:00Z"
        },
        "spec": {"parentRefs": [parent], "rules": rules}
    })
}

fn service_backend(name: &str, port: u16, weight: i32) -> Value {
    json!({"group": "", "kind": "Service", "name": name, "port": port, "weight": weight})
}

fn route_summary(
    route: &trellis_api::config::Route,
) -> (String, Option<String>, Vec<(String, u32)>) {
    let path = route
        .r#match
        .as_ref()
        .and_then(|m| m.path.clone())
        .map(|p| match p {
            route_match::Path::Exact(s) => format!("exact {s}"),
            route_match::Path::Prefix(s) => format!("prefix {s}"),
            route_match::Path::Regex(s) => format!("regex {s}"),
        });
    let backends = route
        .backends
        .iter()
        .map(|b| (b.cluster.clone(), b.weight))
        .collect();
    (route.name.clone(), path, backends)
}

#[tokio::test]
async fn gateway_api_routes_with_a_service_parent_become_the_services_routes() {
    let web_parent = json!({"group": "", "kind": "Service", "name": "web", "port": 80});
    let split = http_route(
        "web-split",
        web_parent.clone(),
        json!([
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET"}],
                "backendRefs": [service_backend("web", 80, 90), service_backend("api", 9090, 10)],
                "timeouts": {"request": "2s"}
            },
            {
                "matches": [{"path": {"type": "Exact", "value": "/healthz"}}],
                "backendRefs": [service_backend("web", 80, 1)]
            }
        ]),
    );
    // The same kind of route attached to a Gateway (group and kind as defaulted): not ours.
    let edge = http_route(
        "edge",
        json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}),
        json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [service_backend("api", 9090, 1)]}]),
    );
    let grpc = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {
            "name": "catalog", "namespace": "shop",
            "uid": "b1c2d3e4-0300-4f5a-9b8c-000000000001",
            "resourceVersion": "951", "generation": 3,
            "creationTimestamp": "2026-11-23T08:05:00Z"
        },
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "api"}],
            "rules": [{
                "matches": [{"method": {"type": "Exact", "service": "shop.Catalog",
                                        "method": "GetItem"}}],
                "backendRefs": [service_backend("api", 9090, 1)]
            }]
        }
    });
    let fake = FakeApiServer::start_with(
        &[],
        &[
            (
                HTTP_ROUTES,
                list(
                    "gateway.networking.k8s.io/v1",
                    "HTTPRouteList",
                    vec![split, edge],
                ),
            ),
            (
                GRPC_ROUTES,
                list("gateway.networking.k8s.io/v1", "GRPCRouteList", vec![grpc]),
            ),
        ],
    )
    .await;
    let (snap_rx, status_rx, task) = running(&fake).await;
    let snapshot = snap_rx.borrow().clone();

    // Exact path before the prefix (Gateway API precedence), whatever the rule order.
    let web: RouteConfig = decode(&snapshot, type_url::ROUTES, "shop/web");
    let summary: Vec<_> = web.routes.iter().map(route_summary).collect();
    assert_eq!(
        summary,
        [
            (
                "http:web-split:1:0".to_string(),
                Some("exact /healthz".to_string()),
                vec![("shop/web".to_string(), 1)]
            ),
            (
                "http:web-split:0:0".to_string(),
                // PathPrefix matches whole path elements: /api and /api/..., not /apix.
                Some("regex /api(?:/.*)?".to_string()),
                vec![("shop/web".to_string(), 90), ("shop/api".to_string(), 10)]
            ),
        ]
    );
    let split_route = &web.routes[1];
    assert_eq!(split_route.r#match.as_ref().unwrap().method, "GET");
    assert_eq!(split_route.timeout_ms, 2000);
    assert_eq!(split_route.fault, None);

    let api: RouteConfig = decode(&snapshot, type_url::ROUTES, "shop/api");
    let summary: Vec<_> = api.routes.iter().map(route_summary).collect();
    assert_eq!(
        summary,
        [(
            "grpc:catalog:0:0".to_string(),
            Some("exact /shop.Catalog/GetItem".to_string()),
            vec![("shop/api".to_string(), 1)]
        )]
    );

    // Statuses: both routes accepted per Service parent, the TrafficPolicy "web" told that its
    // routes give way; the Gateway's route is left alone.
    let written = patches(&fake, 6).await;
    let route_status = |collection: &str, name: &str| {
        let bodies = patches_of(&written, collection, name);
        assert_eq!(bodies.len(), 1, "{name}: {written:#?}");
        let body = bodies[0].clone();
        assert!(body["metadata"]["resourceVersion"].is_string(), "{body}");
        let parents = body["status"]["parents"].as_array().unwrap().clone();
        assert_eq!(parents.len(), 1, "{body}");
        let mut parent = parents[0].clone();
        for c in parent["conditions"].as_array_mut().unwrap() {
            c.as_object_mut()
                .unwrap()
                .remove("lastTransitionTime")
                .unwrap();
        }
        parent
    };
    let conditions = |generation: i64| {
        json!([
            {"type": "Accepted", "status": "True", "reason": "Accepted",
             "message": "routes the Service in the mesh", "observedGeneration": generation},
            {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs",
             "message": "all references resolved", "observedGeneration": generation}
        ])
    };
    assert_eq!(
        route_status(HTTP_ROUTES, "web-split"),
        json!({"parentRef": web_parent, "controllerName": "trellis.io/control-plane",
               "conditions": conditions(1)})
    );
    assert_eq!(
        route_status(GRPC_ROUTES, "catalog"),
        json!({"parentRef": {"group": "", "kind": "Service", "name": "api"},
               "controllerName": "trellis.io/control-plane", "conditions": conditions(3)})
    );
    assert!(
        patches_of(&written, HTTP_ROUTES, "edge").is_empty(),
        "{written:#?}"
    );
    let web_policy = patches_of(&written, TRAFFIC_POLICIES, "web");
    let c = accepted_condition(web_policy[0]);
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("True"), Some("RoutesOverridden"))
    );
    assert!(
        c["message"].as_str().unwrap().starts_with(
            "spec.routes: not applied, Service shop/web is routed by HTTPRoute shop/web-split"
        ),
        "{c}"
    );
    // The TrafficPolicy's policy still applies to the routed Service, and the skipped routes
    // are in the control plane's status.
    let built = synced_source(&fake).await.build();
    let web = service(&built.mesh, "shop", "web");
    assert_eq!(web.policy.load_balancer, LoadBalancer::LeastRequest);
    assert_eq!(web.routes.len(), 2);
    assert!(
        built
            .skipped
            .iter()
            .any(|s| s.starts_with("trafficpolicies/shop/web: spec.routes: not applied")),
        "{:?}",
        built.skipped
    );
    drop(status_rx);
    task.abort();
}

#[tokio::test]
async fn without_the_gateway_api_installed_the_source_still_syncs() {
    let fake = FakeApiServer::start_with(
        &[],
        &[(HTTP_ROUTES, Value::Null), (GRPC_ROUTES, Value::Null)],
    )
    .await;
    let built = synced_source(&fake).await.build();
    assert_eq!(names(&built.mesh), ["shop/api", "shop/web"]);
    // The TrafficPolicy's routes apply when no Gateway API route competes.
    assert_eq!(service(&built.mesh, "shop", "web").routes[0].name, "to-api");
}

/// Waits up to 5 s for the `trellis-ca` ConfigMap in `namespace` to hold `pem`.
async fn wait_for_bundle(fake: &FakeApiServer, namespace: &str, pem: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let object = fake.object(fake_api_server::CONFIG_MAPS, namespace, "trellis-ca");
        if let Some(object) = object.filter(|o| o["data"]["ca.pem"] == pem) {
            return object;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no trellis-ca ConfigMap with the CA in {namespace}: {:?}",
            fake.object(fake_api_server::CONFIG_MAPS, namespace, "trellis-ca")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config_map_applies(fake: &FakeApiServer, namespace: &str) -> usize {
    let path = format!("PATCH /api/v1/namespaces/{namespace}/configmaps/trellis-ca?");
    (fake.requests().iter())
        .filter(|r| r.starts_with(&path))
        .count()
}

#[tokio::test]
async fn meshed_namespaces_get_the_trust_bundle_and_keep_it() {
    let fake = FakeApiServer::start(&[]).await;
    let ca = trellis_control_plane::ca::CertificateAuthority::generate().unwrap();
    let roots = vec![ca.root_der().to_vec()];
    let source = synced_source(&fake)
        .await
        .with_trust_bundle_resync(Duration::from_millis(100));
    let first = source.build();
    let (snap_tx, _snap_rx) = watch::channel(Arc::new(resources::build(&first.mesh, &roots, 1)));
    let (status_tx, _status_rx) = watch::channel(ControlPlaneStatus::default());
    let publisher = Publisher::new(roots, snap_tx, Arc::new(status_tx));
    let (_stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(source.run(publisher, first, stop_rx));

    // The labelled namespace gets the CA's root certificate, as the injected sidecars mount it.
    let object = wait_for_bundle(&fake, "shop", ca.root_pem()).await;
    assert_eq!(
        object["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "trellis-control-plane"
    );
    let apply = (fake.requests().into_iter())
        .find(|r| r.starts_with("PATCH /api/v1/namespaces/shop/configmaps/trellis-ca?"))
        .unwrap();
    assert!(
        apply.contains("fieldManager=trellis-control-plane"),
        "{apply}"
    );
    assert!(apply.contains("force=true"), "{apply}");
    // The unlabelled namespace gets nothing, not even a read.
    assert!(fake
        .object(fake_api_server::CONFIG_MAPS, "default", "trellis-ca")
        .is_none());
    assert!(!(fake.requests().iter()).any(|r| r.contains("/namespaces/default/configmaps")));

    // Resyncs read but do not write an unchanged ConfigMap.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(config_map_applies(&fake, "shop"), 1);
    let reads = (fake.requests().iter())
        .filter(|r| r.starts_with("GET /api/v1/namespaces/shop/configmaps/trellis-ca"))
        .count();
    assert!(reads >= 2, "{reads} reads");

    // An edited ConfigMap is restored at the next resync.
    let mut tampered = object.clone();
    tampered["data"]["ca.pem"] = "not the CA".into();
    fake.apply(fake_api_server::CONFIG_MAPS, tampered);
    wait_for_bundle(&fake, "shop", ca.root_pem()).await;
    assert_eq!(config_map_applies(&fake, "shop"), 2);
    task.abort();
}
