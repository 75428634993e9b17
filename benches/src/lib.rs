//! Trellis's latency benchmark as a library, so the binary, the integration tests and the
//! criterion benches share it. `load` is the open-loop load generator, `upstream` the fast server
//! behind every scenario, `procstat` the per-process CPU and memory readings, `systems` the
//! proxies under test (Trellis and its peers) started as processes, `suite` the scenarios and
//! their interleaved runs, `report` the JSON, markdown and SVG output.
#![forbid(unsafe_code)]

pub mod load;
pub mod procstat;
pub mod report;
pub mod suite;
pub mod systems;
pub mod upstream;
