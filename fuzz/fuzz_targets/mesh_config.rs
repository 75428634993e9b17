//! The mesh YAML (`control-plane/src/config*`): arbitrary text through parsing and validation, as
//! a mesh file and as a `TrafficPolicy` spec. It must give a config or a typed error that points
//! into the document, never a panic. A config the control plane accepts is then published as it
//! would be and decoded by the proxy: every resource must be accepted (the control plane must
//! never send what every proxy NACKs), and the proxy must build a snapshot from them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, HashSet};
use trellis_control_plane::config::{self, ConfigError};
use trellis_control_plane::resources;
use trellis_proxy::config::{build_snapshot, decode, MeshSnapshot};
use trellis_proxy::tls::TlsContext;
use trellis_proxy::transport::MeshConnector;

/// Only the part of the mesh file that names files to read (`trust.extraRoots`).
#[derive(serde::Deserialize)]
struct RootFiles {
    trust: Option<Trust>,
}

#[derive(serde::Deserialize)]
struct Trust {
    #[serde(rename = "extraRoots", default)]
    extra_roots: Vec<String>,
}

/// Validation reads the files `trust.extraRoots` names (relative to the current directory, as the
/// file is `mesh.yaml`). A generated name could be a device or a
/// FIFO (`/dev/zero`, `/dev/stdin`) that never ends; those inputs are skipped. YAML escapes can
/// spell any name, so this reads the names the way the real parser will rather than searching
/// the text.
fn names_unsafe_file(text: &str) -> bool {
    let Ok(probe) = serde_saphyr::from_str::<RootFiles>(text) else {
        // The real parser fails on the same document before it reads any file.
        return false;
    };
    probe.trust.is_some_and(|t| {
        t.extra_roots
            .iter()
            .any(|name| std::fs::metadata(name).is_ok_and(|m| !m.is_file() || m.len() > 1 << 20))
    })
}

fn check_error(text: &str, err: &ConfigError) {
    match err {
        ConfigError::Invalid {
            line, column, path, ..
        } => {
            // YAML ends a line at CR LF, LF or a lone CR (YAML 1.2 §5.4).
            let lines = text.replace("\r\n", "\n").matches(['\n', '\r']).count() as u64 + 1;
            assert!(*line >= 1 && *line <= lines, "line {line} of {lines}");
            assert!(*column >= 1, "column {column}");
            assert!(!path.is_empty());
        }
        ConfigError::Read { .. } => {}
        // A document with no node at all (whitespace, comments, markers, a bare anchor or tag):
        // refused naming the file, never parsed into a mesh without services.
        ConfigError::Empty { file } => assert!(!file.is_empty()),
    }
}

fn check_published(mesh: &config::MeshConfig) {
    let published = resources::build(mesh, &[], 1);
    let mut cache: trellis_proxy::config::ResourceCache = BTreeMap::new();
    for (type_url, named) in &published.resources {
        // No roots were given: the proxy rightly refuses an empty trust bundle.
        if *type_url == trellis_api::type_url::TRUST_BUNDLE {
            continue;
        }
        for (name, resource) in named {
            let wire = trellis_api::discovery::Resource {
                name: name.clone(),
                version: resource.version.clone(),
                payload: resource.payload.clone(),
            };
            match decode(type_url, &wire) {
                Ok(decoded) => {
                    (cache.entry(type_url.to_string()).or_default())
                        .insert(name.clone(), (resource.version.clone(), decoded));
                }
                Err(e) => panic!("the proxy refuses what the control plane accepted: {e}"),
            }
        }
    }
    let connector = MeshConnector::new(TlsContext::default());
    let first = build_snapshot(&cache, &MeshSnapshot::default(), &connector);
    build_snapshot(&cache, &first, &connector);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if names_unsafe_file(text) {
        return;
    }
    match config::parse("mesh.yaml", text) {
        Ok(mesh) => check_published(&mesh),
        Err(e) => check_error(text, &e),
    }
    let known: HashSet<(String, String)> = [("default", "web"), ("default", "web-canary")]
        .into_iter()
        .map(|(ns, name)| (ns.to_string(), name.to_string()))
        .collect();
    if let Err(e) = config::parse_service_policy("policy", text, "default", &known) {
        check_error(text, &e);
    }
    if config::parse_duration(text).is_some() {
        let t = text.trim();
        assert!(t.starts_with(|c: char| c.is_ascii_digit()), "{t:?}");
        assert!(
            ["ms", "s", "m", "h", "d"].iter().any(|u| t.ends_with(u)),
            "{t:?}"
        );
    }
});
