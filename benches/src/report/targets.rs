//! The targets, checked against a run: met, missed, or not measured by this run.

use super::{ScenarioResult, TargetCheck, Verdict};
use crate::load::Protocol;
use crate::systems::PathKind;

fn find<'a>(
    s: &'a [ScenarioResult],
    system: &str,
    path: PathKind,
    protocol: Protocol,
    rate: f64,
) -> Option<&'a ScenarioResult> {
    s.iter().find(|r| {
        r.system == system && r.path == path && r.protocol == protocol && r.rate_rps == rate
    })
}

fn check(target: &str, measured: String, ok: Option<bool>) -> TargetCheck {
    TargetCheck {
        target: target.to_string(),
        measured,
        verdict: match ok {
            Some(true) => Verdict::Met,
            Some(false) => Verdict::Missed,
            None => Verdict::NotMeasured,
        },
    }
}

/// Added p99 of every peer on `path` (HTTP/1.1, 2,000 rps) against Trellis's.
fn versus_peers(s: &[ScenarioResult], path: PathKind, label: &str) -> TargetCheck {
    let Some(ours) = find(s, "trellis", path, Protocol::Http1, 2000.0).and_then(|r| r.added) else {
        return check(label, "no Trellis run at 2,000 rps HTTP/1.1".into(), None);
    };
    let peers: Vec<(&str, i64)> = s
        .iter()
        .filter(|r| r.system != "trellis" && r.path == path)
        .filter(|r| r.protocol == Protocol::Http1 && r.rate_rps == 2000.0)
        .filter_map(|r| Some((r.system.as_str(), r.added?.p99_us)))
        .collect();
    if peers.is_empty() {
        return check(label, "no peer ran (see skipped)".into(), None);
    }
    let text = peers
        .iter()
        .map(|(n, v)| format!("{n} {v} µs"))
        .collect::<Vec<_>>()
        .join(", ");
    check(
        label,
        format!("Trellis {} µs; {text}", ours.p99_us),
        Some(peers.iter().all(|(_, v)| ours.p99_us < *v)),
    )
}

pub fn check_all(s: &[ScenarioResult], idle: &[(String, f64)]) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    let mesh = find(s, "trellis", PathKind::Mesh, Protocol::Http1, 2000.0);
    match mesh.and_then(|r| r.added) {
        Some(a) => {
            out.push(check(
                "mesh path, 2,000 rps, HTTP/1.1, 1 KiB: added p50 ≤ 150 µs",
                format!("{} µs", a.p50_us),
                Some(a.p50_us <= 150),
            ));
            out.push(check(
                "mesh path, 2,000 rps, HTTP/1.1, 1 KiB: added p99 ≤ 1 ms",
                format!("{} µs", a.p99_us),
                Some(a.p99_us <= 1000),
            ));
        }
        None => out.push(check(
            "mesh path added latency at 2,000 rps",
            "not run".into(),
            None,
        )),
    }
    out.push(versus_peers(
        s,
        PathKind::Mesh,
        "mesh path: added p99 below every peer's two-instance path",
    ));
    out.push(versus_peers(
        s,
        PathKind::OneHop,
        "one hop: added p99 below nginx, haproxy and pingora",
    ));
    let max_idle = idle
        .iter()
        .map(|(_, v)| *v)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    out.push(check(
        "sidecar RSS ≤ 8 MiB idle",
        max_idle.map_or("not measured".into(), |v| {
            format!("{v:.1} MiB (largest sidecar)")
        }),
        max_idle.map(|v| v <= 8.0),
    ));
    let busy = mesh.map(|r| &r.processes);
    let peak = busy.and_then(|p| p.iter().map(|u| u.peak_rss_mib).reduce(f64::max));
    out.push(check(
        "sidecar RSS ≤ 20 MiB at 2,000 rps",
        peak.map_or("not measured".into(), |v| {
            format!("{v:.1} MiB peak (largest sidecar)")
        }),
        peak.map(|v| v <= 20.0),
    ));
    let cpu = busy.and_then(|p| p.iter().map(|u| u.cpu_s_per_1k_requests).reduce(f64::max));
    out.push(check(
        "CPU ≤ 0.05 core per 1,000 rps per sidecar",
        cpu.map_or("not measured".into(), |v| {
            format!("{v:.3} CPU s per 1,000 requests = cores per 1,000 rps (busiest sidecar, 2,000 rps HTTP/1.1)")
        }),
        cpu.map(|v| v <= 0.05),
    ));
    out.push(check(
        "config change reaches 10,000 proxies with p99 ≤ 1 s",
        "control-plane scale benchmark not built yet".into(),
        None,
    ));
    out
}
