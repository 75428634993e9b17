use super::*;
use crate::balance::tests_support::cluster;
use crate::config::{AddressIndex, LbPolicy, VirtualService};

/// Cluster "hello" with endpoints 127.0.0.1:1000 and :1001; its service has the virtual
/// addresses 10.96.0.10 and fd00::10 with ports 80 -> 8080 and 25 -> 2525.
fn snapshot() -> MeshSnapshot {
    let mut s = MeshSnapshot::default();
    s.clusters
        .insert("hello".into(), cluster(LbPolicy::RoundRobin, &[1, 1]));
    s.addresses = AddressIndex::new(
        &s.clusters,
        [VirtualService {
            name: "default/hello".into(),
            cluster: "hello".into(),
            addresses: vec!["10.96.0.10".parse().unwrap(), "fd00::10".parse().unwrap()],
            ports: vec![(80, 8080), (25, 2525)],
        }],
    );
    s
}

#[test]
fn endpoint_addresses_are_mesh_destinations() {
    let s = snapshot();
    match classify(&s, "127.0.0.1:1001".parse().unwrap()) {
        Destination::Mesh { cluster, endpoint } => {
            assert_eq!(cluster, "hello");
            assert_eq!(endpoint.addr.port(), 1001);
        }
        _ => panic!("an endpoint address"),
    }
    assert!(matches!(
        classify(&s, "127.0.0.1:2525".parse().unwrap()),
        Destination::MeshPod { .. }
    ));
    for outside in ["127.0.0.2:1001", "[::1]:1001"] {
        assert!(matches!(
            classify(&s, outside.parse().unwrap()),
            Destination::Outside
        ));
    }
}

#[test]
fn a_virtual_address_on_a_service_port_is_the_service() {
    let s = snapshot();
    for (dst, target) in [
        ("10.96.0.10:80", 8080),
        ("[fd00::10]:80", 8080),
        ("10.96.0.10:25", 2525),
    ] {
        match classify(&s, dst.parse().unwrap()) {
            Destination::Service {
                service,
                cluster,
                target_port,
            } => {
                assert_eq!(service, "default/hello", "{dst}");
                assert_eq!(cluster, "hello", "{dst}");
                assert_eq!(target_port, target, "{dst}");
            }
            other => panic!("{dst}: {other:?}"),
        }
    }
}

#[test]
fn a_virtual_address_on_another_port_passes_through() {
    let s = snapshot();
    // 8080 is a target port, not a service port: nothing listens there on a ClusterIP.
    for dst in ["10.96.0.10:8080", "[fd00::10]:443", "10.96.0.11:80"] {
        assert!(
            matches!(classify(&s, dst.parse().unwrap()), Destination::Outside),
            "{dst}"
        );
    }
}

/// Service web as the control plane sends it: its route config (ports 80 and 25 to 8080 and
/// 2525, virtual address 10.96.0.10) and its one endpoint, 10.1.0.5:4143.
pub(super) fn web_resources() -> Vec<(&'static str, Vec<u8>)> {
    use prost::Message;
    use trellis_api::{config as pb, type_url};
    let routes = pb::RouteConfig {
        hosts: vec!["web".into()],
        ports: vec![80, 25],
        target_ports: vec![8080, 2525],
        addresses: vec!["10.96.0.10".into()],
        default_cluster: "default/web".into(),
        ..Default::default()
    };
    let endpoints = pb::Endpoints {
        cluster: "default/web".into(),
        endpoints: vec![pb::Endpoint {
            address: "10.1.0.5:4143".into(),
            identity: "spiffe://trellis.local/ns/default/sa/web".into(),
            weight: 1,
            plaintext: false,
        }],
    };
    vec![
        (type_url::ROUTES, routes.encode_to_vec()),
        (type_url::ENDPOINTS, endpoints.encode_to_vec()),
    ]
}

/// The snapshot a sidecar builds from `resources` (type URL, payload), each named default/web.
pub(super) fn snapshot_of(resources: Vec<(&'static str, Vec<u8>)>) -> MeshSnapshot {
    use crate::config::{build_snapshot, decode, ResourceCache};
    let mut cache = ResourceCache::new();
    for (t, payload) in resources {
        let res = trellis_api::discovery::Resource {
            name: "default/web".into(),
            version: "1".into(),
            payload,
        };
        let decoded = decode(t, &res).expect("valid");
        (cache.entry(t.to_string()).or_default()).insert(res.name, ("1".into(), decoded));
    }
    let connector = crate::transport::MeshConnector::for_tests();
    build_snapshot(&cache, &MeshSnapshot::default(), &connector)
}

#[test]
fn a_snapshot_from_the_protocol_knows_its_virtual_addresses() {
    let s = snapshot_of(web_resources());
    assert!(matches!(
        classify(&s, "10.96.0.10:25".parse().unwrap()),
        Destination::Service { ref cluster, target_port: 2525, .. } if cluster == "default/web"
    ));
    // The endpoint itself is still an endpoint, and its pod a meshed pod.
    assert!(matches!(
        classify(&s, "10.1.0.5:4143".parse().unwrap()),
        Destination::Mesh { .. }
    ));
    assert!(matches!(
        classify(&s, "10.1.0.5:9999".parse().unwrap()),
        Destination::MeshPod { .. }
    ));
}

#[tokio::test]
async fn opaque_tcp_to_a_service_reaches_an_endpoint_at_the_target_port() {
    // A plaintext (mTLS disabled) endpoint, so that no certificates are needed: the bytes go to
    // the picked endpoint's pod at the target port, not to the virtual address.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_port = app.local_addr().unwrap().port();
    let mut s = MeshSnapshot::default();
    let endpoint = Arc::new(Endpoint {
        addr: "127.0.0.1:4143".parse().unwrap(),
        identity: String::new(),
        weight: 1,
        plaintext: true,
        state: cluster(LbPolicy::RoundRobin, &[1]).endpoints[0]
            .state
            .clone(),
    });
    s.clusters.insert(
        "default/web".into(),
        Arc::new(crate::config::Cluster {
            name: "default/web".into(),
            policy: Default::default(),
            endpoints: vec![endpoint],
            state: Arc::default(),
            ring: None,
        }),
    );
    let ctx = Outbound {
        config: Arc::default(),
        store: Arc::new(arc_swap::ArcSwap::from_pointee(s)),
        tls: TlsContext::default(),
        metrics: Arc::new(ProxyMetrics::new("test".into())),
        tunnel: opaque::Tunnel::default(),
    };
    let (pair, accepted) = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (client, l.accept().await.unwrap().0)
    };
    let (_drain, watch) = crate::drain::channel();
    let dst: SocketAddr = "10.96.0.10:25".parse().unwrap();
    let carried = tokio::spawn(async move {
        to_service(
            accepted,
            dst,
            ("default/web", "default/web"),
            target_port,
            &ctx,
            watch,
        )
        .await
    });
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut client = pair;
    client.write_all(b"HELO\r\n").await.unwrap();
    let (mut server, _) = tokio::time::timeout(Duration::from_secs(5), app.accept())
        .await
        .expect("the endpoint's target port is connected to")
        .unwrap();
    let mut got = [0u8; 6];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"HELO\r\n");
    drop(server);
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(5), carried).await;
}

#[test]
fn the_listener_itself_is_not_a_destination() {
    let listener: SocketAddr = "127.0.0.1:4140".parse().unwrap();
    assert!(addressed_to_listener(listener, listener));
    assert!(!addressed_to_listener(
        "10.0.0.2:4140".parse().unwrap(),
        listener
    ));
    assert!(!addressed_to_listener(
        "127.0.0.1:8080".parse().unwrap(),
        listener
    ));
}

#[tokio::test]
async fn a_direct_connection_has_no_target_port() {
    // Not redirected: conntrack (when loaded) reports the listener's own address, so the
    // authority chooses the app port; without conntrack the lookup fails and says so.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _client = TcpStream::connect(addr).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    match inbound_target_port(&server) {
        Ok(port) => assert_eq!(port, None),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}"),
    }
}

#[test]
fn a_host_without_routes_is_routed_by_the_destination_cluster() {
    use crate::config::{RouteRule, RouteTable};
    use crate::http::route::{resolve, DestinationCluster};
    let mut s = snapshot();
    let table = Arc::new(RouteTable {
        name: "hello".into(),
        hosts: vec!["hello".into()],
        ports: vec![],
        rules: vec![],
        fallback: Arc::new(RouteRule::catch_all(
            "hello".into(),
            "hello".into(),
            Arc::default(),
        )),
    });
    s.routes.insert("hello".into(), table.clone());
    s.routes_by_host.insert("hello".into(), table);
    let store: SnapshotStore = Arc::new(arc_swap::ArcSwap::from_pointee(s));
    let request = |host: &str| {
        http::Request::builder()
            .uri("/")
            .header(http::header::HOST, host)
            .body(Body::empty())
            .unwrap()
    };
    // By Host, as in explicit mode.
    assert!(resolve(&store, &request("hello")).is_ok());
    // An IP authority has no route table...
    let mut by_ip = request("127.0.0.1:1001");
    assert!(resolve(&store, &by_ip).is_err());
    // ...unless the connection was addressed to a cluster's endpoint.
    by_ip
        .extensions_mut()
        .insert(DestinationCluster("hello".into()));
    let target = resolve(&store, &by_ip).expect("routed by destination");
    assert_eq!(target.rule.name, "hello");
    assert_eq!(target.cluster.endpoints.len(), 2);
    // A Host naming a service wins over the connection's destination (a ClusterIP's service).
    let mut named = request("hello");
    named
        .extensions_mut()
        .insert(DestinationCluster("elsewhere".into()));
    assert_eq!(resolve(&store, &named).expect("by Host").rule.name, "hello");
}
