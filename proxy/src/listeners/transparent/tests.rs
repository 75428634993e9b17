use super::*;
use crate::balance::tests_support::cluster;
use crate::config::LbPolicy;

fn snapshot() -> MeshSnapshot {
    let mut s = MeshSnapshot::default();
    s.clusters
        .insert("hello".into(), cluster(LbPolicy::RoundRobin, &[1, 1]));
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
}
