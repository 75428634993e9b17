//! The proxies connected to this control plane right now, as the admin port's `/proxies` lists
//! them: who each one is (node, service, SPIFFE identity, version) and where its admin port answers
//! `/metrics`, so that `trellis stat` can find every sidecar of the mesh without a Kubernetes API.
//! An entry lives exactly as long as its discovery stream: the guard that adds it removes it,
//! however the stream ends, and the list is also what `trellis_control_plane_connected_proxies`
//! counts. One small record per proxy (a few hundred bytes), under a lock taken when a stream
//! opens or closes and when `/metrics` or `/proxies` read it, never on the push path.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use trellis_api::discovery::Node;

/// What `/proxies` shows about one connected proxy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectedProxy {
    pub node_id: String,
    pub service: String,
    pub namespace: String,
    /// The identity the proxy's credential was granted (not the one it claimed).
    pub identity: String,
    pub proxy_version: String,
    /// `ip:port` of its admin port; empty when the proxy did not say.
    pub admin_address: String,
    /// When its stream opened (unix milliseconds).
    pub connected_unix_ms: u64,
}

impl ConnectedProxy {
    pub fn new(node: &Node, granted_identity: &str) -> ConnectedProxy {
        let connected_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        ConnectedProxy {
            node_id: node.id.clone(),
            service: node.service.clone(),
            namespace: node.namespace.clone(),
            identity: granted_identity.to_string(),
            proxy_version: node.proxy_version.clone(),
            admin_address: node.admin_address.clone(),
            connected_unix_ms,
        }
    }
}

/// Every connected proxy, by stream.
#[derive(Debug, Default)]
pub struct ConnectedProxies {
    next: AtomicU64,
    entries: Mutex<BTreeMap<u64, ConnectedProxy>>,
}

impl ConnectedProxies {
    fn entries(&self) -> MutexGuard<'_, BTreeMap<u64, ConnectedProxy>> {
        // Inserts and removals cannot leave the map half-changed; a panic elsewhere must not
        // hide the list.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `proxy` until the returned guard is dropped.
    pub fn add(self: &Arc<Self>, proxy: ConnectedProxy) -> Listed {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.entries().insert(key, proxy);
        Listed {
            proxies: self.clone(),
            key,
        }
    }

    /// The connected proxies, by namespace, service and node id.
    pub fn list(&self) -> Vec<ConnectedProxy> {
        let mut all: Vec<ConnectedProxy> = self.entries().values().cloned().collect();
        all.sort_by(|a, b| {
            (&a.namespace, &a.service, &a.node_id).cmp(&(&b.namespace, &b.service, &b.node_id))
        });
        all
    }

    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A proxy's place in the list; dropping it removes the proxy.
#[derive(Debug)]
pub struct Listed {
    proxies: Arc<ConnectedProxies>,
    key: u64,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.proxies.entries().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, service: &str, admin: &str) -> Node {
        Node {
            id: id.into(),
            service: service.into(),
            namespace: "default".into(),
            identity: "claimed".into(),
            proxy_version: "1.0".into(),
            admin_address: admin.into(),
        }
    }

    #[test]
    fn entries_live_as_long_as_their_guard_and_list_sorted() {
        let proxies = Arc::new(ConnectedProxies::default());
        let web = proxies.add(ConnectedProxy::new(
            &node("web-1", "web", "10.0.0.2:4191"),
            "g",
        ));
        let api = proxies.add(ConnectedProxy::new(
            &node("api-1", "api", "10.0.0.3:4191"),
            "g",
        ));
        let again = proxies.add(ConnectedProxy::new(&node("api-1", "api", ""), "g"));
        let listed = proxies.list();
        let names: Vec<_> = listed.iter().map(|p| p.service.as_str()).collect();
        assert_eq!(names, ["api", "api", "web"]);
        assert_eq!(listed[2].admin_address, "10.0.0.2:4191");
        assert_eq!(
            listed[2].identity, "g",
            "the granted identity, not the claimed one"
        );
        drop(api);
        assert_eq!(proxies.len(), 2);
        drop((web, again));
        assert!(proxies.is_empty());
    }
}
