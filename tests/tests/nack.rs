//! A resource the proxy cannot accept (here: a load-balancing policy from a newer control plane)
//! is NACKed with a reason naming the resource and field, and the proxy keeps serving with what it
//! had. Uses the scripted FAKE control plane: ours validates and would never send such a resource.

use prost::Message;
use std::collections::BTreeMap;
use std::time::Duration;
use trellis_api::config as pb;
use trellis_api::discovery::{DeltaDiscoveryResponse, Resource};
use trellis_api::type_url;
use trellis_tests::fake_control_plane::FakeControlPlane;
use trellis_tests::mesh::{wait_until, TRUST_DOMAIN};
use trellis_tests::{Mesh, Service, TestClient};

fn resource(name: &str, version: &str, msg: &impl Message) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        payload: msg.encode_to_vec(),
    }
}

fn cluster(lb_policy: i32) -> pb::Cluster {
    pb::Cluster {
        name: "default/hello".into(),
        lb_policy,
        ..Default::default()
    }
}

#[tokio::test]
async fn an_unacceptable_resource_is_nacked_and_the_previous_one_keeps_serving() {
    let mesh = Mesh::builder()
        .service(Service::http1("hello"))
        .start()
        .await
        .expect("mesh starts");
    let mut sidecar = mesh.standalone_sidecar("hello").await.expect("sidecar");
    let root_der = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(mesh.ca_pem().as_bytes())
            .expect("root")
            .to_vec()
    };
    let hello = mesh.service_spiffe_id("hello").expect("id");
    let mut initial = BTreeMap::new();
    initial.insert(
        type_url::TRUST_BUNDLE.to_string(),
        vec![resource(
            "default",
            "t1",
            &pb::TrustBundle {
                trust_domain: TRUST_DOMAIN.into(),
                roots_der: vec![root_der],
            },
        )],
    );
    initial.insert(
        type_url::INBOUND.to_string(),
        vec![resource(
            "default/hello",
            "i1",
            &pb::InboundConfig {
                ports: vec![pb::AppPort {
                    port: 80,
                    target_port: u32::from(mesh.app_port("hello").expect("port")),
                    protocol: pb::AppProtocol::Http1 as i32,
                }],
                mtls_mode: pb::MtlsMode::Strict as i32,
                ..Default::default()
            },
        )],
    );
    initial.insert(
        type_url::CLUSTERS.to_string(),
        vec![resource(
            "default/hello",
            "c1",
            &cluster(pb::LbPolicy::RoundRobin as i32),
        )],
    );
    initial.insert(
        type_url::ENDPOINTS.to_string(),
        vec![resource(
            "default/hello",
            "e1",
            &pb::Endpoints {
                cluster: "default/hello".into(),
                endpoints: vec![pb::Endpoint {
                    address: sidecar.inbound.to_string(),
                    identity: hello.clone(),
                    weight: 1,
                    plaintext: false,
                }],
            },
        )],
    );
    initial.insert(
        type_url::ROUTES.to_string(),
        vec![resource(
            "default/hello",
            "r1",
            &pb::RouteConfig {
                hosts: vec!["hello".into()],
                default_cluster: "default/hello".into(),
                ..Default::default()
            },
        )],
    );
    let fake = FakeControlPlane::start(&mesh.state_dir, TRUST_DOMAIN, initial)
        .await
        .expect("fake control plane");
    sidecar.config.control_plane_url = format!("https://{}", fake.addr);
    sidecar.start().expect("start");
    wait_until(Duration::from_secs(10), || async {
        matches!(sidecar.admin_get("/ready").await, Ok((200, _)))
    })
    .await
    .expect("ready with the scripted config");
    assert_eq!(
        fake.replies().iter().filter(|r| r.error.is_none()).count(),
        type_url::ALL.len(),
        "every type's initial response ACKed"
    );

    let client = TestClient::new(sidecar.outbound, false);
    let (rsp, _) = client.get("hello", "/").await.expect("request");
    assert_eq!(rsp.status(), 200);

    fake.push(DeltaDiscoveryResponse {
        type_url: type_url::CLUSTERS.into(),
        resources: vec![resource("default/hello", "c2", &cluster(99))],
        nonce: "bad-1".into(),
        ..Default::default()
    });
    wait_until(Duration::from_secs(5), || async {
        fake.replies().iter().any(|r| r.nonce == "bad-1")
    })
    .await
    .expect("the bad response is answered");
    let reply = fake
        .replies()
        .into_iter()
        .find(|r| r.nonce == "bad-1")
        .expect("reply");
    let reason = reply.error.expect("it is a NACK");
    assert!(
        reason.contains("default/hello") && reason.contains("lb_policy"),
        "reason names resource and field: {reason}"
    );

    let (rsp, _) = client.get("hello", "/").await.expect("request after NACK");
    assert_eq!(rsp.status(), 200, "the previous config keeps serving");
    let (_, config) = sidecar.admin_get("/config").await.expect("config");
    let doc: serde_json::Value = serde_json::from_str(&config).expect("json");
    assert_eq!(
        doc["config"]["versions"][type_url::CLUSTERS]["default/hello"],
        "c1",
        "old version in force"
    );
    assert_eq!(
        doc["config"]["clusters"]["default/hello"]["policy"]["lb"],
        "roundRobin"
    );

    // The stream is still healthy: a valid update after the NACK is ACKed and applied.
    fake.push(DeltaDiscoveryResponse {
        type_url: type_url::CLUSTERS.into(),
        resources: vec![resource(
            "default/hello",
            "c3",
            &cluster(pb::LbPolicy::LeastRequest as i32),
        )],
        nonce: "good-2".into(),
        ..Default::default()
    });
    wait_until(Duration::from_secs(5), || async {
        fake.replies()
            .iter()
            .any(|r| r.nonce == "good-2" && r.error.is_none())
    })
    .await
    .expect("the good response is ACKed");
}
