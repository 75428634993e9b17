//! The Trellis control plane: reads the mesh config (a YAML file, or Kubernetes objects), turns it
//! into discovery resources, serves them to proxies over a delta aggregated discovery stream, and
//! issues workload certificates from its own CA to authenticated proxies. `server::ControlPlane`
//! ties the modules together; `cli` is the binary's edge.
// The open-files limit (getrlimit/setrlimit) lives in `trellis-os`, shared with the proxy.
#![deny(unsafe_code)]

pub mod accept;
pub mod admin;
pub mod authn;
pub mod ca;
pub mod cli;
pub mod config;
pub mod discovery;
mod files;
pub mod identity;
pub mod kubernetes;
pub mod manifests;
pub mod metrics;
pub use trellis_os::open_files;
pub mod proxies;
pub mod publish;
pub mod resources;
pub mod server;
pub mod status;
pub mod token;
pub mod watch;

pub use server::{ConfigSource, ControlPlane, ControlPlaneConfig, Error};
pub use status::{ControlPlaneStatus, NackRecord};
