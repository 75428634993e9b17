//! Transparent mode on demand: the sidecar holds the routes, clusters and endpoints of the
//! services its app calls, plus every service's addresses (`ServiceLocator`). A destination the
//! held services cannot place, but that a service not held yet owns, waits for that service's
//! subscription, so the first connection to a service goes where it would have gone with every
//! service held, and never outside the mesh in plaintext.

use super::{classify, Destination};
use crate::config::{Located, SnapshotStore};
use crate::discovery::{Demand, Lookup};
use crate::errors::ProxyError;
use std::net::SocketAddr;

/// Where `dst` goes: `classify` on the snapshot in force, after waiting (at most
/// `--discovery-wait-ms`) for the resources of the service that owns it if that one is not held
/// yet. `Err` when that wait fails (the control plane says the service is gone, or did not answer
/// in time, or the subscription set is full): the connection is refused rather than sent around
/// the mesh.
pub async fn place(store: &SnapshotStore, dst: SocketAddr) -> Result<Destination, ProxyError> {
    let snapshot = store.load();
    let destination = classify(&snapshot, dst);
    let Some(demand) = snapshot.demand.clone() else {
        return Ok(destination);
    };
    let pending = match (&destination, snapshot.locator.locate(dst)) {
        (Destination::Outside | Destination::MeshPod { .. }, Some(Located::Exact(s))) => {
            Some((s, Exactness::Exact))
        }
        (Destination::Outside, Some(Located::Pod(s))) => Some((s, Exactness::Pod)),
        _ => None,
    };
    let Some((service, exactness)) = pending.filter(|(s, _)| !snapshot.routes.contains_key(*s))
    else {
        touch(&demand, &destination);
        return Ok(destination);
    };
    let service = service.to_owned();
    drop(snapshot);
    tracing::debug!(%dst, service, "outbound: a service not held yet; subscribing");
    let Some(mut waiter) = demand.waiter(Lookup::Service(service.clone())) else {
        return Err(ProxyError::NotReady(
            "on-demand discovery: the subscription set is full",
        ));
    };
    loop {
        let snapshot = store.load();
        let now = classify(&snapshot, dst);
        if snapshot.routes.contains_key(&service) && exactness.placed(&now) {
            return Ok(now);
        }
        let miss = ProxyError::UnknownService {
            service: service.clone(),
        };
        waiter.retry_after(miss).await?;
    }
}

/// How the locator matched, and so what the held index must say once the service is in.
#[derive(Debug, Clone, Copy)]
enum Exactness {
    /// An endpoint's address or a virtual address and port: the service's own destination.
    Exact,
    /// Another port of one of its pods.
    Pod,
}

impl Exactness {
    fn placed(self, destination: &Destination) -> bool {
        matches!(
            (self, destination),
            (_, Destination::Mesh { .. } | Destination::Service { .. })
                | (Exactness::Pod, Destination::MeshPod { .. })
        )
    }
}

/// Keeps a held service in the subscription set while connections use it: opaque TCP moves no
/// route counter for the idle sweep to see.
fn touch(demand: &Demand, destination: &Destination) {
    match destination {
        Destination::Service { service: name, .. } | Destination::Mesh { cluster: name, .. } => {
            demand.touch(name)
        }
        Destination::MeshPod { .. } | Destination::Outside => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{snapshot_of, web_resources};
    use super::*;
    use crate::config::MeshSnapshot;
    use crate::discovery::{DiscoveryMode, DiscoverySettings};
    use prost::Message;
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use trellis_api::{config as pb, type_url};

    /// Every service's addresses: web at 10.96.0.10:80 with the endpoint 10.1.0.5:4143.
    fn addresses() -> (&'static str, Vec<u8>) {
        let addresses = pb::ServiceAddresses {
            addresses: vec!["10.96.0.10".into()],
            ports: vec![80],
            endpoints: vec!["10.1.0.5:4143".into()],
        };
        (type_url::SERVICE_ADDRESSES, addresses.encode_to_vec())
    }

    fn snapshot(held: Vec<(&'static str, Vec<u8>)>, demand: &Arc<Demand>) -> Arc<MeshSnapshot> {
        let mut s = snapshot_of(held);
        s.demand = Some(demand.clone());
        Arc::new(s)
    }

    fn demand(wait: Duration) -> Arc<Demand> {
        let settings = DiscoverySettings {
            mode: DiscoveryMode::OnDemand,
            wait,
            idle: Duration::from_secs(600),
        };
        settings.demand("default", true).expect("on demand")
    }

    fn wanted(demand: &Demand) -> Vec<String> {
        let config = serde_json::to_value(demand).expect("serializes");
        let services = config["services"].as_object().expect("services");
        services.keys().cloned().collect()
    }

    #[tokio::test]
    async fn a_destination_outside_every_service_passes_at_once_and_subscribes_nothing() {
        let demand = demand(Duration::from_secs(5));
        let store = Arc::new(arc_swap::ArcSwap::new(snapshot(vec![addresses()], &demand)));
        let started = Instant::now();
        let placed = place(&store, "10.9.9.9:80".parse().unwrap()).await;
        assert!(matches!(placed, Ok(Destination::Outside)), "{placed:?}");
        // A virtual address on a port its service does not have passes through too.
        let placed = place(&store, "10.96.0.10:25".parse().unwrap()).await;
        assert!(matches!(placed, Ok(Destination::Outside)), "{placed:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(wanted(&demand).is_empty());
    }

    #[tokio::test]
    async fn a_service_not_held_is_subscribed_and_its_first_connection_waits_for_it() {
        let demand = demand(Duration::from_secs(10));
        let store = Arc::new(arc_swap::ArcSwap::new(snapshot(vec![addresses()], &demand)));
        let waiting = {
            let store = store.clone();
            tokio::spawn(async move { place(&store, "10.96.0.10:80".parse().unwrap()).await })
        };
        // The discovery client's part: the service is wanted, its resources arrive.
        let deadline = Instant::now() + Duration::from_secs(5);
        while wanted(&demand).is_empty() {
            assert!(Instant::now() < deadline, "the service was never wanted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(wanted(&demand), ["default/web"]);
        assert!(
            !waiting.is_finished(),
            "the connection waits for the service"
        );
        let mut held = web_resources();
        held.push(addresses());
        store.store(snapshot(held, &demand));
        demand.notify_applied();
        let placed = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("placed once the service is held")
            .expect("joined");
        match placed {
            Ok(Destination::Service {
                service,
                target_port,
                ..
            }) => assert_eq!((service.as_str(), target_port), ("default/web", 8080)),
            other => panic!("{other:?}"),
        }
        // Held now: the endpoint's address is placed without waiting.
        let placed = place(&store, "10.1.0.5:4143".parse().unwrap()).await;
        assert!(matches!(placed, Ok(Destination::Mesh { .. })), "{placed:?}");
    }

    #[tokio::test]
    async fn a_service_that_never_arrives_refuses_the_connection_after_the_wait() {
        let demand = demand(Duration::from_millis(100));
        let store = Arc::new(arc_swap::ArcSwap::new(snapshot(vec![addresses()], &demand)));
        let started = Instant::now();
        let placed = place(&store, "10.1.0.5:4143".parse().unwrap()).await;
        assert!(
            matches!(placed, Err(ProxyError::DiscoveryTimeout { ref service, .. }) if service == "default/web"),
            "{placed:?}"
        );
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
    }
}
