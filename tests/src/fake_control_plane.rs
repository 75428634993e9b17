//! FAKE control plane, for what the real one never does: its discovery side is scripted (it sends
//! exactly the resources a test gives it, including ones a proxy must refuse, and records every
//! ACK and NACK). Its identity side is the real `IdentityService` over the mesh's real CA, so the
//! proxy under test gets a genuine certificate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};
use trellis_api::discovery::aggregated_discovery_server::{
    AggregatedDiscovery, AggregatedDiscoveryServer,
};
use trellis_api::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use trellis_api::identity::identity_server::IdentityServer;
use trellis_control_plane::ca::{CaSource, CertificateAuthority};
use trellis_control_plane::identity::IdentityService;
use trellis_control_plane::resources::Snapshot;
use trellis_control_plane::token::TokenAuthority;

/// An ACK (error None) or NACK (error Some) received from the proxy.
#[derive(Debug, Clone)]
pub struct Reply {
    pub type_url: String,
    pub nonce: String,
    pub error: Option<String>,
}

pub struct FakeControlPlane {
    pub addr: SocketAddr,
    replies: Arc<Mutex<Vec<Reply>>>,
    push: broadcast::Sender<DeltaDiscoveryResponse>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for FakeControlPlane {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl FakeControlPlane {
    /// Serves on 127.0.0.1:0 with a certificate from the CA in `state_dir` (the real mesh's), and
    /// answers each first subscription of a type with `initial[type]`.
    pub async fn start(
        state_dir: &std::path::Path,
        trust_domain: &str,
        initial: BTreeMap<String, Vec<Resource>>,
    ) -> anyhow::Result<FakeControlPlane> {
        let ca = Arc::new(CertificateAuthority::load(&CaSource::StateDir(
            state_dir.to_path_buf(),
        ))?);
        let tokens = Arc::new(TokenAuthority::load_or_create(state_dir)?);
        let (cert, key) = ca.server_certificate(trust_domain, &["localhost".to_string()])?;
        let snapshot = Snapshot {
            system_version: 1,
            trust_domain: trust_domain.to_string(),
            certificate_lifetime: Duration::from_secs(3600),
            resources: BTreeMap::new(),
        };
        let (_snapshot_tx, snapshots) = watch::channel(Arc::new(snapshot));
        let identity = IdentityService::new(ca, tokens, snapshots);
        let replies = Arc::new(Mutex::new(Vec::new()));
        let (push, _) = broadcast::channel(16);
        let discovery = ScriptedDiscovery {
            initial: Arc::new(initial),
            replies: replies.clone(),
            push: push.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = Server::builder()
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))?
            .add_service(IdentityServer::new(identity))
            .add_service(AggregatedDiscoveryServer::new(discovery));
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = server
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(FakeControlPlane {
            addr,
            replies,
            push,
            stop: Some(stop),
        })
    }

    /// Sends a response on every open stream.
    pub fn push(&self, response: DeltaDiscoveryResponse) {
        let _ = self.push.send(response);
    }

    pub fn replies(&self) -> Vec<Reply> {
        self.replies.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

struct ScriptedDiscovery {
    initial: Arc<BTreeMap<String, Vec<Resource>>>,
    replies: Arc<Mutex<Vec<Reply>>>,
    push: broadcast::Sender<DeltaDiscoveryResponse>,
}

#[tonic::async_trait]
impl AggregatedDiscovery for ScriptedDiscovery {
    type DeltaResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaResourcesStream>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let (initial, replies) = (self.initial.clone(), self.replies.clone());
        let mut pushes = self.push.subscribe();
        tokio::spawn(async move {
            let mut nonce = 0u64;
            loop {
                tokio::select! {
                    req = requests.message() => {
                        let Ok(Some(req)) = req else { return };
                        if !req.response_nonce.is_empty() {
                            if let Ok(mut r) = replies.lock() {
                                r.push(Reply {
                                    type_url: req.type_url.clone(),
                                    nonce: req.response_nonce.clone(),
                                    error: req.error_detail.map(|e| e.message),
                                });
                            }
                            continue;
                        }
                        nonce += 1;
                        let rsp = DeltaDiscoveryResponse {
                            type_url: req.type_url.clone(),
                            resources: initial.get(&req.type_url).cloned().unwrap_or_default(),
                            nonce: format!("initial-{nonce}"),
                            ..Default::default()
                        };
                        if tx.send(Ok(rsp)).await.is_err() {
                            return;
                        }
                    }
                    pushed = pushes.recv() => {
                        let Ok(rsp) = pushed else { return };
                        if tx.send(Ok(rsp)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
