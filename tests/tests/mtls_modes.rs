//! mTLS modes on the inbound port (strict, permissive, disabled) and the client sidecar's check
//! of the server's identity. A plaintext caller never carries an identity: a `trellis-client-id`
//! it sends is dropped, and authorization sees it as unauthenticated.

use bytes::Bytes;
use http::Request;
use rcgen::{CertificateParams, DistinguishedName, Issuer, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trellis_tests::client::{collect, full};
use trellis_tests::{Mesh, Service, TestClient};

const CLIENT_ID: &str = "spiffe://trellis.local/ns/default/sa/client";

/// GET through `client`, returning status, the identity the app saw, and `trellis-error`.
async fn get(client: &TestClient, url: &str, spoof: bool) -> anyhow::Result<(u16, String, String)> {
    let mut req = Request::get(url);
    if spoof {
        req = req.header("trellis-client-id", CLIENT_ID);
    }
    let (rsp, _) = collect(client.send(req.body(full(Bytes::new()))?).await?).await?;
    let header = |name: &str| {
        (rsp.headers().get_all(name).iter())
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
    };
    Ok((
        rsp.status().as_u16(),
        header("x-echo-h-trellis-client-id"),
        header("trellis-error"),
    ))
}

#[tokio::test]
async fn strict_refuses_plaintext() {
    let mesh = Mesh::client_and(Service::http1("hello")).await;
    let plain = TestClient::new(mesh.workload("hello").inbound, false);
    assert!(get(&plain, "http://hello/", false).await.is_err());
    // The mesh path still works.
    let (status, id, _) = get(&mesh.client("client", false), "http://hello/", false)
        .await
        .expect("mesh call");
    assert_eq!((status, id.as_str()), (200, CLIENT_ID));
}

#[tokio::test]
async fn permissive_serves_both_and_plaintext_never_has_an_identity() {
    let policy = "\
mtls: permissive
authorization:
  default: deny
  rules:
    - name: public
      action: allow
      from: {unauthenticated: true}
      to: {paths: [{prefix: /public}]}
    - name: client
      action: allow
      from: {identities: [\"spiffe://trellis.local/ns/default/sa/client\"]}
";
    let mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::http1("hello").yaml(policy))
        .start()
        .await
        .expect("mesh starts");
    let inbound = mesh.workload("hello").inbound;
    for h2c in [false, true] {
        let plain = TestClient::new(inbound, h2c);
        // Plaintext is served, and the forged identity never reaches the app.
        let (status, id, _) = get(&plain, "http://hello/public", true)
            .await
            .expect("plain");
        assert_eq!((status, id.as_str()), (200, ""), "h2c={h2c}");
        // Nor does it count as an identity for authorization.
        let (status, _, reason) = get(&plain, "http://hello/private", true)
            .await
            .expect("plain");
        assert_eq!(status, 403, "h2c={h2c}");
        // A caller without an identity is told the kind of refusal, not the rule's name.
        assert_eq!(reason, "forbidden", "h2c={h2c}");
    }
    // mTLS on the same port.
    let (status, id, _) = get(&mesh.client("client", false), "http://hello/private", true)
        .await
        .expect("mesh call");
    assert_eq!((status, id.as_str()), (200, CLIENT_ID));
}

#[tokio::test]
async fn disabled_serves_plaintext_only_and_callers_follow() {
    let mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::http1("legacy").yaml("mtls: disabled"))
        .start()
        .await
        .expect("mesh starts");
    // The caller's sidecar connects in plaintext; the app sees no identity.
    let (status, id, _) = get(&mesh.client("client", false), "http://legacy/", true)
        .await
        .expect("mesh call");
    assert_eq!((status, id.as_str()), (200, ""));
    // A TLS ClientHello is refused.
    let mut tcp = TcpStream::connect(mesh.workload("legacy").inbound)
        .await
        .expect("connect");
    tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00])
        .await
        .expect("write");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection is closed without an answer");
}

/// A TLS server presenting a valid mesh certificate for `identity`.
/// `completed` is set if any handshake succeeds.
async fn impostor(mesh: &Mesh, identity: &str, completed: Arc<AtomicBool>) -> SocketAddr {
    let key_pem = std::fs::read_to_string(mesh.state_dir.join("ca.key.pem")).expect("root key");
    let root_key = KeyPair::from_pem(&key_pem).expect("key");
    let issuer = Issuer::from_ca_cert_pem(mesh.ca_pem(), root_key).expect("issuer");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.try_into().expect("uri"))];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).expect("leaf");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    // What a sidecar's inbound offers: sidecars send HTTP/1.1 as such (ALPN `http/1.1`).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, completed) = (acceptor.clone(), completed.clone());
            tokio::spawn(async move {
                if acceptor.accept(tcp).await.is_ok() {
                    completed.store(true, Ordering::SeqCst);
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_valid_certificate_for_the_wrong_identity_is_refused_by_the_client_sidecar() {
    let mut mesh = Mesh::builder()
        .service(Service::http1("client"))
        .service(Service::external("payments", &[]))
        .start()
        .await
        .expect("mesh starts");
    // "payments" is served by someone holding a genuine mesh certificate, but for "client".
    let handshakes = Arc::new(AtomicBool::new(false));
    let addr = impostor(&mesh, CLIENT_ID, handshakes.clone()).await;
    let payments = (mesh.services.iter_mut())
        .find(|s| s.name == "payments")
        .expect("payments");
    payments.external = vec![addr];
    mesh.write_config().expect("config");
    let client = mesh.client("client", false);
    // Until the endpoint arrives the answer is 503 (no endpoints).
    let mut last = (0, String::new(), String::new());
    for _ in 0..200 {
        last = get(&client, "http://payments/", false)
            .await
            .expect("answer");
        if last.0 != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, reason) = last;
    assert_eq!(status, 502, "{reason}");
    assert!(
        reason.contains("tls") && reason.contains(CLIENT_ID),
        "{reason}"
    );
    assert!(!handshakes.load(Ordering::SeqCst), "no handshake completed");
}

/// An app cannot speak for the proxy: a `trellis-error` it sets is removed by its sidecar, so
/// callers never take an app's answer for a proxy's. The proxy's own answers still carry it.
#[tokio::test]
async fn a_trellis_error_set_by_the_app_does_not_reach_callers() {
    let mut mesh = Mesh::client_and(Service::http1("hello")).await;
    let index = (mesh.workloads.iter())
        .position(|w| w.service == "hello")
        .expect("hello");
    let addr = trellis_tests::raw::free_app_address(&mut mesh, index).await;
    // The echo app lets go of the address a moment after it is stopped.
    let mut listener = None;
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind(addr).await {
            listener = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listener = listener.expect("the app's address");
    let app = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let answer =
                    "HTTP/1.1 503 Service Unavailable\r\ntrellis-error: forged by the app\r\n\
                              content-length: 0\r\n\r\n";
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    let (status, _, reason) = get(&mesh.client("client", false), "http://hello/", false)
        .await
        .expect("call");
    assert_eq!(
        (status, reason.as_str()),
        (503, ""),
        "the app's 503 passes, its header not"
    );
    // A proxy-made answer on the same path still says why.
    let (status, _, reason) = get(&mesh.client("client", false), "http://nowhere/", false)
        .await
        .expect("call");
    assert_eq!(status, 404);
    // On demand (the default), the control plane has answered that the service does not exist.
    assert_eq!(reason, "no service \"default/nowhere\" in the mesh");
    app.abort();
}
