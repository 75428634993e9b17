//! Builders shared by the balancer and resilience unit tests.
use super::*;

use crate::config::{Cluster, ClusterPolicy, ClusterState, EndpointState};
use crate::resilience::outlier::OutlierState;
use crate::transport::MeshConnector;

pub(crate) fn cluster(lb: LbPolicy, weights: &[u32]) -> Arc<Cluster> {
    let connector = MeshConnector::for_tests();
    let endpoints: Vec<Arc<Endpoint>> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let addr = SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16));
            Arc::new(Endpoint {
                addr,
                identity: "spiffe://t/ns/a/sa/b".into(),
                weight: *w,
                plaintext: false,
                state: Arc::new(EndpointState {
                    conn: connector.connection(addr, "spiffe://t/ns/a/sa/b"),
                    load: Load::default(),
                    outlier: OutlierState::default(),
                }),
            })
        })
        .collect();
    let mut policy = ClusterPolicy {
        lb,
        ..ClusterPolicy::default()
    };
    if lb == LbPolicy::ConsistentHash {
        policy.hash = Some(HashKey::Header(http::HeaderName::from_static("x-user")));
    }
    let ring = (lb == LbPolicy::ConsistentHash).then(|| HashRing::new(&endpoints));
    Arc::new(Cluster {
        name: "c".into(),
        policy,
        endpoints,
        state: Arc::new(ClusterState::default()),
        ring,
    })
}
