//! On-demand discovery against a scripted server: the opening requests subscribe by name to the
//! wanted set, a name answered as removed is recorded as unknown, and a reopened stream resumes
//! with the same set and the versions held.

use super::*;
use prost::Message;
use std::time::Duration;
use tonic::{Request, Response, Status, Streaming};
use trellis_api::discovery::aggregated_discovery_server::{
    AggregatedDiscovery, AggregatedDiscoveryServer,
};
use trellis_api::discovery::Resource;

/// Every request of every stream, by stream.
type Seen = Arc<Mutex<Vec<Vec<DeltaDiscoveryRequest>>>>;

/// Stream 1: after the five opening requests, one route config and one removal, then closed
/// once that response is ACKed. Later streams: recorded, kept open, never answered.
#[derive(Clone)]
struct Resuming {
    seen: Seen,
}

fn hello_routes() -> DeltaDiscoveryResponse {
    let payload = trellis_api::config::RouteConfig {
        hosts: vec!["hello".into()],
        default_cluster: "default/hello".into(),
        ..Default::default()
    };
    DeltaDiscoveryResponse {
        type_url: type_url::ROUTES.into(),
        nonce: "1".into(),
        resources: vec![Resource {
            name: "default/hello".into(),
            version: "v1".into(),
            payload: payload.encode_to_vec(),
        }],
        removed_resources: vec!["default/nope".into()],
        ..Default::default()
    }
}

#[tonic::async_trait]
impl AggregatedDiscovery for Resuming {
    type DeltaResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaResourcesStream>, Status> {
        let index = {
            let mut seen = self.seen.lock().unwrap();
            seen.push(Vec::new());
            seen.len() - 1
        };
        let (tx, rx) = mpsc::channel(4);
        let mut requests = request.into_inner();
        let seen = self.seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = requests.message().await {
                let acked = !req.response_nonce.is_empty();
                let count = {
                    let mut seen = seen.lock().unwrap();
                    seen[index].push(req);
                    seen[index].len()
                };
                if index == 0 && count == type_url::ALL.len() {
                    let _ = tx.send(Ok(hello_routes())).await;
                }
                if index == 0 && acked {
                    return; // closes the stream: the client reconnects
                }
            }
            tx.closed().await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn opening(stream: &[DeltaDiscoveryRequest], t: &str) -> DeltaDiscoveryRequest {
    let found = stream
        .iter()
        .find(|r| r.type_url == t && r.response_nonce.is_empty());
    found
        .cloned()
        .unwrap_or_else(|| panic!("no opening request for {t}"))
}

#[tokio::test]
async fn a_reopened_stream_resumes_the_named_set_with_the_versions_held() {
    let seen = Seen::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Resuming { seen: seen.clone() };
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServer::new(server))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let settings = DiscoverySettings {
        mode: DiscoveryMode::OnDemand,
        ..DiscoverySettings::default()
    };
    let demand = settings.demand("default", false).expect("on demand");
    for service in ["default/hello", "default/nope"] {
        let now = std::time::Instant::now();
        assert_eq!(demand.tracker.lock().unwrap().want(service, now), Want::New);
    }
    let store = crate::config::new_store();
    let client = DiscoveryClient {
        client: AggregatedDiscoveryClient::new(channel),
        token: "test".into(),
        node: Node {
            namespace: "default".into(),
            service: "client".into(),
            ..Node::default()
        },
        store: store.clone(),
        connector: MeshConnector::for_tests(),
        tls: TlsContext::default(),
        status: SharedStatus::default(),
        link: LinkSettings::default(),
        control_plane_name: "localhost".into(),
        demand: Some(demand.clone()),
    };
    let _ = tokio::time::timeout(Duration::from_millis(1500), client.run()).await;
    serving.abort();

    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 2, "reconnected: {} streams", seen.len());
    let wanted = ["default/hello", "default/nope"];
    let first = opening(&seen[0], type_url::ROUTES);
    assert_eq!(first.resource_names_subscribe, wanted);
    assert!(first.initial_resource_versions.is_empty());
    for t in [type_url::CLUSTERS, type_url::ENDPOINTS] {
        assert_eq!(opening(&seen[0], t).resource_names_subscribe, wanted, "{t}");
    }
    let inbound = opening(&seen[0], type_url::INBOUND).resource_names_subscribe;
    assert_eq!(inbound, ["default/client"]);

    let resumed = opening(&seen[1], type_url::ROUTES);
    assert_eq!(resumed.resource_names_subscribe, wanted);
    let versions: Vec<(&String, &String)> = resumed.initial_resource_versions.iter().collect();
    assert_eq!(
        versions,
        [(&"default/hello".to_string(), &"v1".to_string())]
    );

    assert!(demand
        .tracker
        .lock()
        .unwrap()
        .service_missing("default/nope"));
    let snapshot = store.load();
    assert!(snapshot.routes_by_host.contains_key("hello"));
    assert!(snapshot.demand.is_some(), "the router finds the handle");
}
