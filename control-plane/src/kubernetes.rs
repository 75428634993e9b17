//! Kubernetes as the config source and identity authority: the mesh is built from Services,
//! EndpointSlices, Pods, `TrafficPolicy` objects and Gateway API `HTTPRoute`/`GRPCRoute` objects
//! with a Service parent (GAMMA) in namespaces labelled `trellis.io/inject: enabled` (`source.rs`
//! watches, `translate.rs` and `gamma.rs` build, `status.rs` writes each object's verdict back
//! into its status), and proxies prove their identity with their pod's projected service-account
//! token, checked by the TokenReview API (`token_review.rs`). `crd.rs` defines the TrafficPolicy
//! resource, `gateway.rs` the Gateway API route types, and `trust_bundle.rs` publishes the CA's
//! certificate into every meshed namespace. docs/kubernetes.md is the operator's view.
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod crd;
mod gamma;
pub mod gateway;
pub mod source;
pub mod status;
pub mod token_review;
pub mod translate;
pub mod trust_bundle;

pub use source::KubernetesSource;
pub use token_review::TokenReviewAuthenticator;
pub use translate::MeshSettings;

/// How long `ControlPlane::bind` waits for the first complete list of every watched kind.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// The Kubernetes source's settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KubernetesOptions {
    /// A kubeconfig file; without one, the in-cluster config (or `$KUBECONFIG`, `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    pub mesh: MeshSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error("no Kubernetes client configuration (in-cluster or kubeconfig): {0}")]
    Infer(String),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("the Kubernetes watches did not sync within {timeout:?}: {kinds} (is the TrafficPolicy CRD installed, and the ClusterRole bound?)")]
    NotSynced { timeout: Duration, kinds: String },
}

/// A client from `kubeconfig`, or inferred (in-cluster first) when none is given.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, KubernetesError> {
    let config = match kubeconfig {
        Some(path) => {
            let bad = |message: String| KubernetesError::Kubeconfig {
                path: path.to_owned(),
                message,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(|e| bad(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubernetesError::Infer(e.to_string()))?,
    };
    Ok(kube::Client::try_from(config)?)
}
