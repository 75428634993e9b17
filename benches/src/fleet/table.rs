//! The fleet report as markdown: the rows of the tables in docs/benchmarks.md (Fleet) and the
//! lines under them (push receivers, transparent mode's two latencies, the storm).

use super::{storm, FleetReport};
use std::fmt::Write as _;

pub const TABLE_HEADER: &str = "| proxies | services | connections | RSS idle → synced (MiB) | KiB per proxy | sync all (s) | push p50 / p99 / max (ms) | resources per push | CPU per push (ms) | CPU per push per proxy (µs) | errors |\n|---|---|---|---|---|---|---|---|---|---|---|\n";

/// One row of the table in docs/benchmarks.md.
pub fn table_row(r: &FleetReport) -> String {
    format!(
        "| {} | {} | {} | {:.1} → {:.1} | {:.1} | {:.2} | {:.0} / {:.0} / {:.0} | {:.2} | {:.1} | {:.2} | {} |\n",
        r.proxies,
        r.services,
        r.connections,
        r.rss_idle_kib as f64 / 1024.0,
        r.rss_synced_kib as f64 / 1024.0,
        r.kib_per_proxy,
        r.sync_all_s,
        r.push_p50_ms,
        r.push_p99_ms,
        r.push_max_ms,
        r.resources_per_push,
        r.cpu_per_push_ms,
        r.cpu_per_push_per_proxy_us,
        r.failed_streams + r.missed_pushes,
    )
}

pub const ON_DEMAND_TABLE_HEADER: &str = "| proxies | services | services per proxy (K) | connections | RSS idle → synced (MiB) | KiB per proxy | sync all (s) | payload to sync per proxy (KiB) | push reached / subscribers | push p50 / p99 / max (ms) | CPU per push (ms) | errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";

/// One row of the on-demand table in docs/benchmarks.md.
pub fn on_demand_table_row(r: &FleetReport) -> String {
    format!(
        "| {} | {} | {} | {} | {:.1} → {:.1} | {:.1} | {:.2} | {:.1} | {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {:.1} | {} |\n",
        r.proxies,
        r.services,
        services_per_proxy(r),
        r.connections,
        r.rss_idle_kib as f64 / 1024.0,
        r.rss_synced_kib as f64 / 1024.0,
        r.kib_per_proxy,
        r.sync_all_s,
        r.sync_payload_kib_per_proxy,
        r.push_reached,
        r.push_expected,
        r.push_p50_ms,
        r.push_p99_ms,
        r.push_max_ms,
        r.cpu_per_push_ms,
        r.failed_streams + r.missed_pushes,
    )
}

/// K, "K, transparent" (every service's addresses held too), or the mesh for the wildcard.
fn services_per_proxy(r: &FleetReport) -> String {
    match r.on_demand {
        None => r.services.to_string(),
        Some(k) if r.transparent => format!("{k}, transparent"),
        Some(k) => k.to_string(),
    }
}

pub fn markdown(r: &FleetReport) -> String {
    let mut md = match r.on_demand {
        None => format!("{TABLE_HEADER}{}", table_row(r)),
        Some(_) => format!("{ON_DEMAND_TABLE_HEADER}{}", on_demand_table_row(r)),
    };
    let _ = writeln!(
        md,
        "\n{} of {} proxies in sync; {} push rounds, each reaching {:.0} proxies on average ({:.0} \
         holding a changed resource); {:.1} KiB of payload per proxy to sync; load average \
         at the end: {}.",
        r.synced,
        r.proxies,
        r.pushes,
        r.push_reached,
        r.push_expected,
        r.sync_payload_kib_per_proxy,
        r.load_average
    );
    let _ = writeln!(
        md,
        "\nResources per receiving proxy per push: {:.2} received, {:.2} expected; {} proxies \
         received a push holding nothing it changed. The bench's own peak RSS: {:.1} MiB.",
        r.resources_per_push,
        r.resources_expected_per_push,
        r.unexpected_pushes,
        r.bench_peak_rss_kib as f64 / 1024.0
    );
    if r.transparent {
        let _ = writeln!(
            md,
            "\nTransparent: every proxy holds every service's addresses, so each push reaches \
             all of them; to the {:.0} proxies subscribed to the changed service's endpoints, the \
             new endpoints arrived at p50 / p99 / max {:.0} / {:.0} / {:.0} ms.",
            r.push_endpoints_subscribers,
            r.push_endpoints_p50_ms,
            r.push_endpoints_p99_ms,
            r.push_endpoints_max_ms
        );
    }
    if let Some(e) = &r.first_error {
        let _ = writeln!(md, "First error: {e}");
    }
    if let Some(s) = &r.storm {
        let _ = writeln!(md, "\n{}", storm::summary(s, r.proxies));
    }
    md
}
