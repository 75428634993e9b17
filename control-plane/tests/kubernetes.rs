//! The Kubernetes source and the TokenReview authenticator against a FAKE API server
//! (`fake_api_server/`) that replays recorded API responses: lists, watch events and token
//! reviews shaped exactly as the API server sends them (`fixtures/k8s/`).
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
        skipped.contains("TrafficPolicy shop/api: spec.policy.retry.attempts: 11 is not in 1..=10"),
        "{skipped}"
    );
    assert!(
        skipped.contains("TrafficPolicy shop/typo: spec.policy"),
        "{skipped}"
    );
    assert!(
        skipped.contains(
            "TrafficPolicy shop/web-duplicate: service shop/web already has TrafficPolicy shop/web"
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
