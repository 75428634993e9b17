//! Endpoint selection. Today: smooth weighted round robin driven by one atomic counter per cluster,
//! lock-free on the request path. The resilience work adds P2C over peak-EWMA latency, least
//! request and consistent hashing here, chosen by the cluster's `LbPolicy`.

use crate::config::Endpoint;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Picks an endpoint: the counter walks a virtual ring in which each endpoint appears `weight`
/// times, so weights hold exactly over every full turn.
pub fn pick<'a>(
    endpoints: &'a [Arc<Endpoint>],
    counter: &AtomicUsize,
) -> Option<&'a Arc<Endpoint>> {
    match endpoints {
        [] => None,
        [only] => Some(only),
        _ => {
            let total: usize = endpoints.iter().map(|e| e.weight.max(1) as usize).sum();
            let mut slot = counter.fetch_add(1, Ordering::Relaxed) % total;
            for ep in endpoints {
                let w = ep.weight.max(1) as usize;
                if slot < w {
                    return Some(ep);
                }
                slot -= w;
            }
            endpoints.last()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::MeshConnector;

    fn endpoint(connector: &MeshConnector, port: u16, weight: u32) -> Arc<Endpoint> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        Arc::new(Endpoint {
            addr,
            identity: "spiffe://t/ns/a/sa/b".into(),
            weight,
            conn: connector.connection(addr, "spiffe://t/ns/a/sa/b"),
        })
    }

    #[test]
    fn weights_hold_over_a_full_turn() {
        let connector = MeshConnector::for_tests();
        let eps = vec![endpoint(&connector, 1, 3), endpoint(&connector, 2, 1)];
        let counter = AtomicUsize::new(0);
        let mut hits = [0usize; 2];
        for _ in 0..400 {
            let ep = pick(&eps, &counter).map(|e| e.addr.port());
            hits[usize::from(ep == Some(2))] += 1;
        }
        assert_eq!(hits, [300, 100]);
    }

    #[test]
    fn no_endpoints_no_pick() {
        assert!(pick(&[], &AtomicUsize::new(0)).is_none());
    }
}
