//! The injector's configuration (`injector.yaml`, mounted from the `trellis-injector-config`
//! ConfigMap): the proxy image, where the control plane is, and the sidecar defaults that pod
//! annotations may override. Every field has a default, so an empty file is a valid config.

use crate::annotations::{check_log_level, check_quantity, InvalidValue};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const DEFAULT_PROXY_IMAGE: &str = "ghcr.io/trellis-mesh/trellis-proxy:0.1.0";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct InjectorConfig {
    /// Image of the sidecar; the redirect init step runs the same image.
    pub proxy_image: String,
    pub image_pull_policy: String,
    /// `TRELLIS_CONTROL_PLANE` for the proxies.
    pub control_plane: String,
    /// `TRELLIS_CONTROL_PLANE_NAME`: the name in the control plane's certificate.
    pub control_plane_name: String,
    pub trust_domain: String,
    /// Pods in this namespace are never injected (the control plane's own).
    pub control_plane_namespace: String,
    /// Inject the proxy as a native sidecar (Kubernetes 1.29+); `false` for older clusters.
    pub native_sidecar: bool,
    /// The uid the proxy runs as, which the traffic redirect excludes.
    pub proxy_uid: i64,
    pub log_level: String,
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
    /// Seconds the proxy lets in-flight requests finish after SIGTERM.
    pub drain_grace_seconds: u32,
}

impl Default for InjectorConfig {
    fn default() -> Self {
        Self {
            proxy_image: DEFAULT_PROXY_IMAGE.to_string(),
            image_pull_policy: "IfNotPresent".to_string(),
            control_plane: "https://trellis-control-plane.trellis-system.svc:8090".to_string(),
            control_plane_name: "trellis-control-plane.trellis-system.svc".to_string(),
            trust_domain: "trellis.local".to_string(),
            control_plane_namespace: "trellis-system".to_string(),
            native_sidecar: true,
            proxy_uid: 2102,
            log_level: "info".to_string(),
            cpu_request: "10m".to_string(),
            memory_request: "20Mi".to_string(),
            cpu_limit: None,
            memory_limit: None,
            drain_grace_seconds: 5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: Box<serde_saphyr::Error>,
    },
    #[error("{path}: {source}")]
    Invalid { path: String, source: InvalidValue },
}

impl InjectorConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: shown,
                source,
            },
            ConfigError::Invalid { source, .. } => ConfigError::Invalid {
                path: shown,
                source,
            },
            other => other,
        })
    }

    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_saphyr::from_str(text).map_err(|source| ConfigError::Parse {
                path: "<config>".to_string(),
                source: Box::new(source),
            })?
        };
        config.validate().map_err(|source| ConfigError::Invalid {
            path: "<config>".to_string(),
            source,
        })?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), InvalidValue> {
        check_quantity("cpuRequest", &self.cpu_request)?;
        check_quantity("memoryRequest", &self.memory_request)?;
        if let Some(limit) = &self.cpu_limit {
            check_quantity("cpuLimit", limit)?;
        }
        if let Some(limit) = &self.memory_limit {
            check_quantity("memoryLimit", limit)?;
        }
        check_log_level("logLevel", &self.log_level)?;
        if self.proxy_image.trim().is_empty() {
            return Err(InvalidValue::new("proxyImage", "", "must not be empty"));
        }
        if !(1..=2_147_483_647).contains(&self.proxy_uid) {
            return Err(InvalidValue::new(
                "proxyUid",
                &self.proxy_uid.to_string(),
                "must be a non-root uid",
            ));
        }
        Ok(())
    }

    /// The YAML form, as written into the ConfigMap by `manifests`.
    pub fn to_yaml(&self) -> Result<String, serde_saphyr::SerializeError> {
        serde_saphyr::to_string(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_default_and_round_trips() {
        let config = InjectorConfig::from_yaml("").expect("empty");
        assert_eq!(config, InjectorConfig::default());
        let yaml = config.to_yaml().expect("yaml");
        assert_eq!(InjectorConfig::from_yaml(&yaml).expect("parse"), config);
    }

    #[test]
    fn refuses_unknown_fields_and_bad_values() {
        assert!(InjectorConfig::from_yaml("proxyImg: x\n").is_err());
        let err = InjectorConfig::from_yaml("memoryRequest: lots\n").expect_err("bad");
        assert!(err.to_string().contains("memoryRequest"), "{err}");
        let partial = InjectorConfig::from_yaml("nativeSidecar: false\n").expect("partial");
        assert!(!partial.native_sidecar);
        assert_eq!(partial.proxy_uid, 2102);
    }
}
