//! The Trellis sidecar proxy.
//!
//! Where things live: `authz` (inbound authorization policy), `listeners` (sockets and connection serving), `http` (the request layers:
//! rescue, route, fault, forward, the app client), `resilience` (timeouts, retries and their
//! budget, circuit breaking, outlier ejection), `balance` (endpoint choice), `telemetry`
//! (counters), `transport` (HTTP/2 over
//! mTLS between sidecars), `tls` (rustls configs and SPIFFE verification), `identity` (key, CSR,
//! certificate renewal), `control_plane` (the link both use: keepalive, deadlines, error causes),
//! `discovery` (the delta-xDS client), `config` (the snapshot the proxy
//! serves with), `admin`, `probes` (the app's own probes, performed for the kubelet on the admin
//! port), `drain` (and `seldom`: futures a connection polls often that are seldom ready), `limits` (the bounds on what a client or a flood may cost), `redirect` (the `trellis-proxy redirect` init step: iptables
//! rules), `detect` (protocol detection), and `proxy` (wiring). Transparent mode (original
//! destination, opaque TCP, passthrough) lives in `listeners`.
// `unsafe` is denied everywhere except `listeners::original_dst` (one getsockopt call).
#![deny(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod balance;
pub mod cli;
pub mod config;
pub mod control_plane;
pub mod detect;
pub mod discovery;
pub mod drain;
pub mod errors;
pub mod http;
pub mod identity;
pub mod limits;
pub mod listeners;
pub mod probes;
mod proxy;
pub mod random;
pub mod redirect;
pub mod resilience;
pub mod seldom;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod wait_ready;

pub use control_plane::LinkSettings;
pub use limits::Limits;
pub use listeners::Listeners;
pub use proxy::{run, LogControl, ProxyConfig, StartError, TelemetryConfig};
