//! The per-namespace trust bundle: every namespace labelled `trellis.io/inject=enabled` gets the
//! ConfigMap `trellis-ca` (key `ca.pem`: the mesh's root certificates) that the injected sidecars
//! mount as their trust anchor for the control plane (`injector/src/sidecar.rs`). The control
//! plane writes it because it is the one that knows the CA: a manual copy per namespace went stale
//! and was a step operators forgot. Writes are server-side applies (field manager
//! `trellis-control-plane`, forced, so a hand edit is taken back) made only when `ca.pem`
//! differs from what the API server holds; every namespace is checked again every `resync`, which
//! restores a ConfigMap someone changed or deleted without needing list/watch on ConfigMaps (the
//! RBAC is get, create, patch). Writes run on their own task: a slow or failing API server
//! delays the bundle, never the mesh; failures are logged and retried with backoff.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The ConfigMap's name and key, as the injector mounts them.
pub const CONFIG_MAP: &str = "trellis-ca";
pub const KEY: &str = "ca.pem";
/// The server-side apply field manager.
pub const FIELD_MANAGER: &str = "trellis-control-plane";
/// How often every namespace's ConfigMap is compared with the CA again.
pub const RESYNC: Duration = Duration::from_secs(60);
const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// What the ConfigMaps should hold: the PEM, and the namespaces that get it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Desired {
    pem: String,
    namespaces: BTreeSet<String>,
}

/// The task that keeps the ConfigMaps in step; it stops when this is dropped.
pub struct TrustBundleWriter {
    desired: watch::Sender<Desired>,
    task: JoinHandle<()>,
}

impl TrustBundleWriter {
    pub fn start(client: kube::Client, resync: Duration) -> Self {
        let (desired, rx) = watch::channel(Desired::default());
        let task = tokio::spawn(run(client, rx, resync));
        TrustBundleWriter { desired, task }
    }

    /// The roots (DER) every listed namespace must trust. Nothing is written while `roots_der` is
    /// empty (there is no CA to publish).
    pub fn set(&self, roots_der: &[Vec<u8>], namespaces: impl IntoIterator<Item = String>) {
        let wanted = Desired {
            pem: roots_der.iter().map(|der| pem(der)).collect(),
            namespaces: namespaces.into_iter().collect(),
        };
        self.desired.send_if_modified(|current| {
            let changed = *current != wanted;
            *current = wanted;
            changed
        });
    }
}

impl Drop for TrustBundleWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(client: kube::Client, mut desired: watch::Receiver<Desired>, resync: Duration) {
    let mut retry = FIRST_RETRY;
    loop {
        let wanted = desired.borrow_and_update().clone();
        let mut failed = false;
        if !wanted.pem.is_empty() {
            for namespace in &wanted.namespaces {
                match reconcile(&client, namespace, &wanted.pem).await {
                    Ok(true) => {
                        tracing::info!(%namespace, "published the trust bundle ConfigMap {CONFIG_MAP}")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        failed = true;
                        tracing::warn!(%namespace, "cannot write ConfigMap {CONFIG_MAP}, retrying: {e}");
                    }
                }
            }
        }
        let wait = if failed {
            let wait = retry;
            retry = (retry * 2).min(MAX_RETRY);
            wait
        } else {
            retry = FIRST_RETRY;
            resync
        };
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Makes `namespace`'s ConfigMap hold `pem`; true when it had to be written.
async fn reconcile(client: &kube::Client, namespace: &str, pem: &str) -> Result<bool, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    if let Some(current) = api.get_opt(CONFIG_MAP).await? {
        if current
            .data
            .as_ref()
            .and_then(|d| d.get(KEY))
            .map(String::as_str)
            == Some(pem)
        {
            return Ok(false);
        }
    }
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(CONFIG_MAP.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/part-of".to_owned(), "trellis".to_owned()),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    FIELD_MANAGER.to_owned(),
                ),
            ])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(KEY.to_owned(), pem.to_owned())])),
        ..Default::default()
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(CONFIG_MAP, &params, &Patch::Apply(&config_map))
        .await?;
    Ok(true)
}

/// A certificate (DER) as PEM. k8s-openapi's `ByteString` serialises as standard base64 (the
/// API's `format: byte`), which saves a base64 dependency.
pub fn pem(der: &[u8]) -> String {
    let base64 = match serde_json::to_value(ByteString(der.to_vec())) {
        Ok(serde_json::Value::String(text)) => text,
        _ => String::new(),
    };
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in base64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn pem_wraps_base64_at_64_columns() {
        let der: Vec<u8> = (0..=255u8).collect();
        let text = pem(&der);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(*lines.last().unwrap(), "-----END CERTIFICATE-----");
        assert!(lines[1..lines.len() - 1].iter().all(|l| l.len() <= 64));
        assert_eq!(lines[1].len(), 64);
        let parsed = rustls_pki_types::CertificateDer::pem_slice_iter(text.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert_eq!(parsed[0].as_ref(), der.as_slice());
    }
}
