//! The discovery client against a scripted server on loopback (plain h2c: TLS is not what these
//! tests are about): it honours the control plane's retry pushback, and it reopens a stream on
//! which nothing arrives for `max_silence`.

use super::*;
use crate::control_plane::{Problem, RETRY_PUSHBACK};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status, Streaming};
use trellis_api::discovery::aggregated_discovery_server::{
    AggregatedDiscovery, AggregatedDiscoveryServer,
};

/// What the scripted server does with every stream.
#[derive(Clone, Copy)]
enum Script {
    /// Refuses with RESOURCE_EXHAUSTED, asking for this many milliseconds of pause.
    Exhausted(u64),
    /// Accepts and never sends anything.
    Silent,
}

#[derive(Clone)]
struct Scripted {
    script: Script,
    /// When each stream was asked for.
    attempts: Arc<Mutex<Vec<Instant>>>,
}

#[tonic::async_trait]
impl AggregatedDiscovery for Scripted {
    type DeltaResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaResourcesStream>, Status> {
        self.attempts.lock().unwrap().push(Instant::now());
        match self.script {
            Script::Exhausted(ms) => {
                let mut status = Status::resource_exhausted("too many discovery streams");
                status
                    .metadata_mut()
                    .insert(RETRY_PUSHBACK, ms.to_string().parse().unwrap());
                Err(status)
            }
            Script::Silent => {
                let (tx, rx) = mpsc::channel(1);
                // Kept open (never sends) until the client gives up on the stream.
                tokio::spawn(async move { tx.closed().await });
                Ok(Response::new(ReceiverStream::new(rx)))
            }
        }
    }
}

/// Runs a discovery client against `script` for `run_for`; returns when each stream was asked
/// for, and the client's status.
async fn attempts_against(
    script: Script,
    link: LinkSettings,
    run_for: Duration,
) -> (Vec<Instant>, SharedStatus) {
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let server = Scripted {
        script,
        attempts: attempts.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServer::new(server))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let status = SharedStatus::default();
    let client = DiscoveryClient {
        client: AggregatedDiscoveryClient::new(channel),
        token: "test".into(),
        node: Node::default(),
        store: crate::config::new_store(),
        connector: MeshConnector::for_tests(),
        tls: TlsContext::default(),
        status: status.clone(),
        link,
        control_plane_name: "localhost".into(),
        demand: None,
    };
    let _ = tokio::time::timeout(run_for, client.run()).await;
    serving.abort();
    let attempts = attempts.lock().unwrap().clone();
    (attempts, status)
}

#[tokio::test]
async fn a_refused_stream_waits_at_least_the_pushback_before_retrying() {
    let (attempts, status) = attempts_against(
        Script::Exhausted(1500),
        LinkSettings::default(),
        Duration::from_millis(2500),
    )
    .await;
    // Without the pushback the backoff (200-400 ms, then 400-800 ms, …) would try 3+ times.
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    let gap = attempts[1] - attempts[0];
    assert!(gap >= Duration::from_millis(1500), "{gap:?}");
    let status = status.lock().unwrap();
    let exhausted = status.link.errors[Problem::Exhausted as usize];
    assert_eq!(exhausted, 2, "{:?}", status.link);
}

#[tokio::test]
async fn a_silent_stream_is_reopened_after_max_silence() {
    let link = LinkSettings {
        max_silence: Duration::from_millis(400),
        ..LinkSettings::default()
    };
    let (attempts, status) =
        attempts_against(Script::Silent, link, Duration::from_millis(2000)).await;
    // Open, 400 ms of silence, 200-400 ms of backoff, open again, …
    assert!((2..=4).contains(&attempts.len()), "{attempts:?}");
    let gap = attempts[1] - attempts[0];
    assert!(gap >= Duration::from_millis(550), "{gap:?}");
    let status = status.lock().unwrap();
    assert!(status.failed_streams >= 2, "{status:?}");
    // Each silent stream counts as a timeout (the error itself clears when the next one opens).
    let timeouts = status.link.errors[Problem::Timeout as usize];
    assert_eq!(timeouts, status.failed_streams, "{:?}", status.link);
}
