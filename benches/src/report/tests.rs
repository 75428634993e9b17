//! Tests of the report arithmetic, the target checks and the SVG writer.

use super::*;
use crate::procstat::Usage;

fn pct(p50: u64, p99: u64, max: u64) -> Percentiles {
    Percentiles {
        count: 100,
        p50_us: p50,
        p90_us: p50 + 10,
        p99_us: p99,
        p999_us: p99 + 5,
        max_us: max,
        mean_us: p50 as f64,
        curve: vec![(50.0, p50), (99.0, p99), (100.0, max)],
    }
}

fn scenario(system: &str, path: PathKind, latency: Percentiles) -> ScenarioResult {
    let mut s = ScenarioResult::empty(system, path, Protocol::Http1, 2000.0, 16);
    s.latency = latency;
    s
}

#[test]
fn added_latency_is_the_difference_to_direct_of_the_same_protocol_and_rate() {
    let mut v = vec![
        scenario("direct", PathKind::Direct, pct(100, 300, 900)),
        scenario("trellis", PathKind::Mesh, pct(220, 800, 2000)),
        scenario("nginx", PathKind::Mesh, pct(90, 1500, 800)),
    ];
    let mut other_rate = scenario("trellis", PathKind::OneHop, pct(1, 1, 1));
    other_rate.rate_rps = 500.0;
    v.push(other_rate);
    fill_added(&mut v);
    assert_eq!(v[0].added, None);
    let a = v[1].added.unwrap_or_default();
    assert_eq!(
        (a.p50_us, a.p90_us, a.p99_us, a.p999_us, a.max_us),
        (120, 120, 500, 500, 1100)
    );
    // Below direct shows as negative, not clamped.
    assert_eq!(v[2].added.map(|a| a.p50_us), Some(-10));
    // No direct run at 500 rps: nothing to subtract.
    assert_eq!(v[3].added, None);
}

#[test]
fn targets_are_met_missed_or_not_measured() {
    let mut v = vec![
        scenario("direct", PathKind::Direct, pct(100, 300, 900)),
        scenario("trellis", PathKind::Mesh, pct(220, 800, 2000)),
        scenario("haproxy", PathKind::Mesh, pct(200, 1200, 2000)),
    ];
    v[1].processes.push(Usage {
        process: "sidecar bench".into(),
        cpu_s: 1.0,
        cpu_s_per_1k_requests: 0.08,
        peak_rss_mib: 12.0,
    });
    fill_added(&mut v);
    let t = targets::check_all(&v, &[("sidecar bench".into(), 6.0)]);
    let verdict = |needle: &str| {
        t.iter()
            .find(|c| c.target.contains(needle))
            .map(|c| c.verdict)
    };
    assert_eq!(verdict("added p50"), Some(Verdict::Met)); // 120 µs
    assert_eq!(verdict("added p99 ≤ 1 ms"), Some(Verdict::Met)); // 500 µs
    assert_eq!(verdict("two-instance"), Some(Verdict::Met)); // 500 < 900
    assert_eq!(verdict("one hop"), Some(Verdict::NotMeasured));
    assert_eq!(verdict("idle"), Some(Verdict::Met));
    assert_eq!(verdict("20 MiB"), Some(Verdict::Met));
    assert_eq!(verdict("CPU"), Some(Verdict::Missed)); // 0.08 > 0.05
    assert_eq!(verdict("10,000 proxies"), Some(Verdict::NotMeasured));
}

#[test]
fn nines_axis() {
    assert!((svg::nines(90.0) - 1.0).abs() < 1e-9);
    assert!((svg::nines(99.9) - 3.0).abs() < 1e-6);
    assert_eq!(svg::nines(100.0), 5.0);
    assert_eq!(svg::nines(50.0), 2f64.log10());
}

#[test]
fn latency_chart_is_wellformed_svg_with_one_line_per_series() {
    let series = vec![
        (
            "direct".to_string(),
            vec![(50.0, 80), (99.0, 200), (100.0, 900)],
        ),
        (
            "a <b> & c".to_string(),
            vec![(50.0, 150), (99.0, 700), (100.0, 5000)],
        ),
    ];
    let s = svg::latency_chart("t", &series);
    assert!(s.starts_with("<svg ") && s.trim_end().ends_with("</svg>"));
    assert_eq!(s.matches("<polyline").count(), 2);
    assert!(s.contains("a &lt;b&gt; &amp; c"));
    assert!(s.contains("latency (µs, log scale)"));
    assert!(!s.contains("NaN") && !s.contains("inf"));
    // Each opened element is closed or self-closed: as many '<' as '>'.
    assert_eq!(s.matches('<').count(), s.matches('>').count());
}

#[test]
fn bar_chart_scales_to_the_largest_value() {
    let s = svg::bar_chart("cpu", "s", &[("a".into(), 1.0), ("b".into(), 2.0)]);
    assert_eq!(s.matches("<rect x=").count(), 2);
    assert!(s.contains("2.000 s") && s.contains("1.000 s"));
    let empty = svg::bar_chart("none", "s", &[]);
    assert!(!empty.contains("NaN"));
}

#[test]
fn markdown_says_units_and_verdicts() {
    let mut v = vec![
        scenario("direct", PathKind::Direct, pct(100, 300, 900)),
        scenario("trellis", PathKind::Mesh, pct(220, 800, 2000)),
    ];
    fill_added(&mut v);
    let settings = Settings {
        mode: "short".into(),
        duration_s: 3.0,
        warmup_s: 1.0,
        rounds: 2,
        connections: 16,
        payload_bytes: 1024,
        trellis_workers: 1,
    };
    let r = Report::new(
        settings,
        v,
        vec!["nginx skipped: not installed".into()],
        vec![],
    );
    let md = markdown::render(&r, &["cpu.svg".into()]);
    assert!(md.contains("| added p99 (µs) |"));
    assert!(md.contains("| trellis | mesh path | HTTP/1.1 | 2000 |"));
    assert!(md.contains("+120"));
    assert!(md.contains("nginx skipped"));
    assert!(md.contains("![cpu.svg](cpu.svg)"));
}

#[test]
fn timestamp_is_a_folder_name() {
    let t = timestamp();
    assert_eq!(t.len(), 20);
    assert!(!t.contains(':') && t.ends_with('Z'));
}
