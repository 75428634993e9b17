//! `trellis-injector`: how a pod joins the Trellis mesh. The library owns the injection rules
//! (one function, [`inject::plan`], used by both the admission webhook and the `inject` command),
//! the AdmissionReview handling, the HTTPS server and the install manifests; `main.rs` is the
//! command-line edge.

#![forbid(unsafe_code)]

pub mod annotations;
pub mod cli;
pub mod config;
pub mod inject;
pub mod manifests;
pub mod probes;
pub mod quantity;
pub mod review;
pub mod server;
pub mod sidecar;
pub mod workload;
pub mod yaml;

pub use config::InjectorConfig;
pub use inject::{plan, InjectError, Outcome};
