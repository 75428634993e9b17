//! The demo's state directory and what the demo puts in it before the control plane starts: the
//! token key and one bootstrap token file per service account. A temporary directory is removed
//! when the demo ends; one given with `--state-dir` is the user's and is kept.

use super::layout::{find_service, PODS};
use anyhow::Context;
use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use trellis_control_plane::config::MeshConfig;
use trellis_control_plane::token::TokenAuthority;

/// Writes one bootstrap token file (mode 0600) per service account, after creating the token key
/// the control plane will load from the same directory.
pub(super) fn write_tokens(
    state_dir: &Path,
    mesh: &MeshConfig,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let authority = TokenAuthority::load_or_create(state_dir)
        .with_context(|| format!("creating the token key in {}", state_dir.display()))?;
    let services: BTreeSet<&str> = PODS.iter().map(|p| p.service).collect();
    let mut files = Vec::new();
    for name in services {
        let service = find_service(mesh, name)?;
        let token = authority.issue(&service.namespace, &service.service_account);
        let path = state_dir.join(format!("{}.token", service.service_account));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.write_all(token.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        files.push((name.to_owned(), path));
    }
    Ok(files)
}

/// The demo's state directory; a temporary one is removed on drop.
pub(super) struct StateDir {
    pub(super) path: PathBuf,
    remove_on_drop: bool,
}

impl StateDir {
    pub(super) fn create(given: Option<&Path>) -> anyhow::Result<StateDir> {
        let (path, remove_on_drop) = match given {
            Some(p) => (p.to_path_buf(), false),
            None => {
                let p = std::env::temp_dir().join(format!("trellis-demo-{}", std::process::id()));
                // Same name means same pid: a leftover of a demo that was killed, safe to reuse.
                if p.exists() {
                    std::fs::remove_dir_all(&p)
                        .with_context(|| format!("removing the stale {}", p.display()))?;
                }
                (p, true)
            }
        };
        // 0700: it holds the CA key and the token key.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating the state directory {}", path.display()))?;
        Ok(StateDir {
            path,
            remove_on_drop,
        })
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if self.remove_on_drop {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                eprintln!("could not remove {}: {e}", self.path.display());
            }
        }
    }
}
