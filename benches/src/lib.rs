//! Trellis's latency benchmark as a library, so the binary, the integration tests and the
//! criterion benches share it. `load` is the open-loop load generator, `upstream` the fast server
//! behind every scenario, `procstat` the per-process CPU and memory readings, `systems` the
//! proxies under test (Trellis and its peers) started as processes, `suite` the scenarios and
//! their interleaved runs, `overload` (2× the saturation rate, load shedding) and `soak` (a long
//! fixed-rate run watching memory and descriptors), `instructions` (callgrind counts per request),
//! `footprint` (binary size, start to ready, idle memory),
//! `report` the JSON, markdown and SVG output.
#![forbid(unsafe_code)]

pub mod flame;
pub mod fleet;
pub mod fleet_plot;
pub mod footprint;
pub mod instructions;
pub mod load;
pub mod overload;
pub mod procstat;
pub mod report;
pub mod soak;
pub mod suite;
pub mod systems;
pub mod upstream;
