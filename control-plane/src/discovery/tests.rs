//! The discovery service end to end in-process: the generated client against `DiscoveryServer`
//! over plain HTTP/2, asserting which stream receives which resources at which versions.
use std::collections::HashMap;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use trellis_api::discovery::aggregated_discovery_client::AggregatedDiscoveryClient;
use trellis_api::discovery::{DeltaDiscoveryResponse, Node};

use super::*;
use crate::authn::AuthError;
use crate::token::Grant;

/// Grants the identity the token names: `<namespace>/<service account>`.
struct NamedToken;

#[tonic::async_trait]
impl Authenticator for NamedToken {
    async fn authenticate(&self, token: &str) -> Result<Grant, AuthError> {
        let (namespace, service_account) = token
            .split_once('/')
            .ok_or_else(|| AuthError::Rejected("not ns/sa".into()))?;
        Ok(Grant {
            namespace: namespace.into(),
            service_account: service_account.into(),
        })
    }
}

fn mesh(web_endpoint: &str, hello_endpoint: &str) -> String {
    format!(
        "services:
  - name: hello
    ports: [{{port: 80}}]
    endpoints: [{{address: \"{hello_endpoint}\"}}]
  - name: web
    ports: [{{port: 80}}]
    endpoints: [{{address: \"{web_endpoint}\"}}]
"
    )
}

fn snapshot(version: u64, text: &str) -> SharedSnapshot {
    let config = crate::config::parse("mesh.yaml", text).expect("valid mesh");
    Arc::new(crate::resources::build(&config, &[vec![1]], version))
}

struct Proxy {
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: Streaming<DeltaDiscoveryResponse>,
}

impl Proxy {
    /// Opens a stream subscribing `names` for endpoints and nothing else.
    async fn open(addr: std::net::SocketAddr, id: &str, names: &[&str]) -> Proxy {
        Self::resume(addr, id, names, HashMap::new()).await
    }

    async fn resume(
        addr: std::net::SocketAddr,
        id: &str,
        names: &[&str],
        held: HashMap<String, String>,
    ) -> Proxy {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut client = AggregatedDiscoveryClient::new(channel);
        let (tx, rx) = mpsc::channel(8);
        tx.send(DeltaDiscoveryRequest {
            node: Some(Node {
                id: id.into(),
                ..Default::default()
            }),
            type_url: type_url::ENDPOINTS.into(),
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            initial_resource_versions: held,
            ..Default::default()
        })
        .await
        .expect("send");
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        let token = "Bearer default/hello".parse().expect("metadata");
        request.metadata_mut().insert("authorization", token);
        let responses = client
            .delta_resources(request)
            .await
            .expect("open")
            .into_inner();
        Proxy {
            requests: tx,
            responses,
        }
    }

    /// The next response, ACKed; (system version, [(name, version)], removed).
    async fn next(&mut self) -> (String, Vec<(String, String)>, Vec<String>) {
        let rsp = tokio::time::timeout(Duration::from_secs(5), self.responses.message())
            .await
            .expect("a response within 5 s")
            .expect("stream ok")
            .expect("stream open");
        self.requests
            .send(DeltaDiscoveryRequest {
                type_url: rsp.type_url.clone(),
                response_nonce: rsp.nonce.clone(),
                ..Default::default()
            })
            .await
            .expect("ack");
        let resources = (rsp.resources.into_iter())
            .map(|r| (r.name, r.version))
            .collect();
        (rsp.system_version_info, resources, rsp.removed_resources)
    }
}

fn names(resources: &[(String, String)]) -> Vec<&str> {
    resources.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test]
async fn each_stream_gets_only_what_it_subscribes_to_and_what_changed() {
    let (snapshots_tx, snapshots) = watch::channel(snapshot(1, &mesh("10.0.0.1:1", "10.0.1.1:1")));
    let (_stop, shutdown) = watch::channel(false);
    let status = Arc::new(watch::channel(ControlPlaneStatus::default()).0);
    let service = DiscoveryService::new(Arc::new(NamedToken), snapshots, status, shutdown);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = futures_util::stream::unfold(listener, |l| async move {
        let accepted = l.accept().await.map(|(s, _)| s);
        Some((accepted, l))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DiscoveryServer::new(service))
            .serve_with_incoming(incoming),
    );

    let mut all = Proxy::open(addr, "all", &["*"]).await;
    let mut one = Proxy::open(addr, "one", &["default/hello"]).await;
    let (v, first_all, _) = all.next().await;
    assert_eq!(
        (v.as_str(), names(&first_all)),
        ("1", vec!["default/hello", "default/web"])
    );
    let (_, first_one, _) = one.next().await;
    assert_eq!(names(&first_one), ["default/hello"]);

    // Only web's endpoints change: the wildcard stream gets exactly that, the other nothing.
    snapshots_tx.send_replace(snapshot(2, &mesh("10.0.0.2:1", "10.0.1.1:1")));
    let (v, changed, removed) = all.next().await;
    assert_eq!((v.as_str(), names(&changed)), ("2", vec!["default/web"]));
    assert!(removed.is_empty());
    assert_ne!(changed[0].1, first_all[1].1, "a new version");
    // Then hello changes: the next thing the named stream sees is version 3, not version 2.
    snapshots_tx.send_replace(snapshot(3, &mesh("10.0.0.2:1", "10.0.1.2:1")));
    let (v, changed, _) = one.next().await;
    assert_eq!((v.as_str(), names(&changed)), ("3", vec!["default/hello"]));
    let (v, changed, _) = all.next().await;
    assert_eq!((v.as_str(), names(&changed)), ("3", vec!["default/hello"]));

    // Subscribing to web later answers with web alone.
    one.requests
        .send(DeltaDiscoveryRequest {
            type_url: type_url::ENDPOINTS.into(),
            resource_names_subscribe: vec!["default/web".into()],
            ..Default::default()
        })
        .await
        .expect("subscribe");
    let (_, added, _) = one.next().await;
    assert_eq!(names(&added), ["default/web"]);

    // A proxy resuming with what `all` holds gets an empty first answer, then removals.
    let held: HashMap<String, String> = [
        ("default/hello".to_owned(), changed[0].1.clone()),
        ("default/web".to_owned(), added[0].1.clone()),
    ]
    .into();
    let mut resumed = Proxy::resume(addr, "resumed", &["*"], held).await;
    let (v, nothing, removed) = resumed.next().await;
    assert_eq!((v.as_str(), nothing.len(), removed.len()), ("3", 0, 0));
    snapshots_tx.send_replace(snapshot(
        4,
        "services:\n  - name: web\n    ports: [{port: 80}]\n    endpoints: [{address: \"10.0.0.2:1\"}]\n",
    ));
    for proxy in [&mut all, &mut one, &mut resumed] {
        let (v, changed, removed) = proxy.next().await;
        assert_eq!((v.as_str(), changed.len()), ("4", 0));
        assert_eq!(removed, ["default/hello"]);
    }
}
