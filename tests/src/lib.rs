//! The end-to-end test harness: "a mesh with these services and this policy" in a few lines.
//!
//! `Mesh::builder().service(Service::http1("hello")).start().await` starts, on ephemeral loopback
//! ports and inside the test's process: a real control plane (with its CA and a YAML file in a
//! temporary directory), one sidecar per workload and one echo app per workload. Everything stops
//! when the `Mesh` is dropped (tasks are aborted, the temp dir removed), also when a test panics.
#![forbid(unsafe_code)]

pub mod apps;
pub mod chaos;
pub mod client;
pub mod drain_probe;
pub mod fake_control_plane;
pub mod mesh;
pub mod otlp;
pub mod prometheus;
pub mod raw;
pub mod tools;
pub mod traffic;
pub mod websocket;

pub use apps::{EchoApp, Protocol};
pub use client::TestClient;
pub use mesh::{Mesh, MeshBuilder, Service};

/// Installs a test log subscriber once (RUST_LOG controls it; quiet by default).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
