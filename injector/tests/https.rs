//! The webhook over real HTTPS: the server on 127.0.0.1:0 with an rcgen certificate, a rustls
//! client that trusts it, a review POSTed to /mutate, plus /healthz and a bad request.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::sync::Arc;
use trellis_injector::server::{serve, tls_config_from};
use trellis_injector::InjectorConfig;

struct Webhook {
    addr: std::net::SocketAddr,
    client_tls: Arc<rustls::ClientConfig>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start() -> Webhook {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let server_tls = tls_config_from(vec![cert.clone()], key).expect("server TLS");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let client_tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        listener,
        server_tls,
        Arc::new(InjectorConfig::default()),
        async move {
            let _ = stopped.await;
        },
    ));
    Webhook {
        addr,
        client_tls: Arc::new(client_tls),
        stop: Some(stop),
        task,
    }
}

impl Webhook {
    async fn request(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Bytes) {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let connector = tokio_rustls::TlsConnector::from(self.client_tls.clone());
        let name = ServerName::try_from("localhost").expect("name");
        let tls = connector.connect(name, tcp).await.expect("TLS handshake");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("HTTP handshake");
        tokio::spawn(conn);
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, body)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .expect("server task");
    }
}

#[tokio::test]
async fn mutate_over_tls() {
    let webhook = start().await;
    let review = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/review-pod.json"
    ))
    .expect("fixture");
    let (status, body) = webhook.request("POST", "/mutate", review).await;
    assert_eq!(status, 200);
    let out: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(
        out["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(out["response"]["allowed"], true);
    assert!(out["response"]["patch"].is_string());

    let (status, body) = webhook.request("GET", "/healthz", Vec::new()).await;
    assert_eq!((status, &body[..]), (200, &b"ok\n"[..]));

    let (status, body) = webhook.request("POST", "/mutate", b"nope".to_vec()).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("not JSON"));

    let (status, _) = webhook.request("GET", "/mutate", Vec::new()).await;
    assert_eq!(status, 405);
    webhook.stop().await;
}
