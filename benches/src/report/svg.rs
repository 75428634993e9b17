//! SVG plots written by hand (no plotting dependency): latency by percentile with a logarithmic
//! "nines" x-axis (50%, 90%, 99%, 99.9%, … evenly spaced) and a logarithmic µs y-axis, one line
//! per system; and horizontal bar charts for CPU and memory.

use super::Report;
use std::fmt::Write as _;
use std::path::Path;

const W: f64 = 760.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 8] = [
    "#222222", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
];
/// Where "max" sits on the nines axis (99.999%).
const MAX_NINES: f64 = 5.0;

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Percentile (in %) to the nines axis: 90 → 1, 99 → 2, 99.9 → 3; 100 (the max) → `MAX_NINES`.
pub fn nines(percentile: f64) -> f64 {
    if percentile >= 100.0 {
        return MAX_NINES;
    }
    (-(1.0 - percentile / 100.0).log10()).min(MAX_NINES)
}

/// One line per series: (name, [(percentile %, latency µs)]).
pub fn latency_chart(title: &str, series: &[(String, Vec<(f64, u64)>)]) -> String {
    let values = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1.max(1) as f64));
    let (lo, hi) = values.fold((f64::MAX, 1.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let lo_exp = if lo == f64::MAX {
        0.0
    } else {
        lo.log10().floor()
    };
    let hi_exp = hi.log10().ceil().max(lo_exp + 1.0);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x = |n: f64| LEFT + pw * (n - nines(50.0)) / (MAX_NINES - nines(50.0));
    let y = |us: f64| TOP + ph * (1.0 - (us.max(1.0).log10() - lo_exp) / (hi_exp - lo_exp));
    let mut s = header(title);
    // Axes and grid.
    for (p, label) in [
        (50.0, "50%"),
        (90.0, "90%"),
        (99.0, "99%"),
        (99.9, "99.9%"),
        (99.99, "99.99%"),
        (100.0, "max"),
    ] {
        let gx = x(nines(p));
        let _ = write!(
            s,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + ph,
            TOP + ph + 16.0
        );
    }
    let mut e = lo_exp;
    while e <= hi_exp {
        let gy = y(10f64.powf(e));
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            gy + 4.0,
            format_us(10f64.powf(e))
        );
        e += 1.0;
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile (log scale of nines)</text>"#,
        LEFT + pw / 2.0,
        H - 10.0
    );
    let _ = write!(
        s,
        r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">latency (µs, log scale)</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(p, us)| format!("{:.1},{:.1}", x(nines(p)), y(us as f64)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let ly = TOP + 14.0 + 18.0 * i as f64;
        let lx = W - RIGHT + 12.0;
        let _ = write!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 18.0,
            lx + 24.0,
            ly + 4.0,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn format_us(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{} s", v / 1_000_000.0)
    } else if v >= 1000.0 {
        format!("{} ms", v / 1000.0)
    } else {
        format!("{v} µs")
    }
}

fn header(title: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/><text x="{:.1}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        W / 2.0,
        escape(title)
    )
}

/// Horizontal bars: (label, value) in `unit`.
pub fn bar_chart(title: &str, unit: &str, bars: &[(String, f64)]) -> String {
    let row = 18.0;
    let label_w = 330.0;
    let height = TOP + BOTTOM + row * bars.len().max(1) as f64;
    let max = bars
        .iter()
        .map(|b| b.1)
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let pw = W - label_w - 80.0;
    let mut s = header(title).replacen(
        &format!("height=\"{H}\" viewBox=\"0 0 {W} {H}\""),
        &format!("height=\"{height}\" viewBox=\"0 0 {W} {height}\""),
        1,
    );
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = TOP + row * i as f64;
        let w = pw * v / max;
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><rect x="{label_w}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="#1f77b4"/><text x="{:.1}" y="{:.1}">{}</text>"##,
            label_w - 6.0,
            y + 12.0,
            escape(label),
            y + 2.0,
            row - 4.0,
            label_w + w + 4.0,
            y + 12.0,
            escape(&format!("{v:.3} {unit}"))
        );
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text></svg>"#,
        label_w + pw / 2.0,
        height - 12.0,
        escape(unit)
    );
    s.push('\n');
    s
}

/// Writes every plot of `report` into `dir`; returns the file names.
pub fn write_all(report: &Report, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut files = Vec::new();
    let mut groups: Vec<(crate::load::Protocol, f64)> = Vec::new();
    for s in &report.scenarios {
        if !groups.contains(&(s.protocol, s.rate_rps)) {
            groups.push((s.protocol, s.rate_rps));
        }
    }
    for (protocol, rate) in groups {
        let series: Vec<(String, Vec<(f64, u64)>)> = report
            .scenarios
            .iter()
            .filter(|s| s.protocol == protocol && s.rate_rps == rate && s.latency.count > 0)
            .map(|s| (s.label(), s.latency.curve.clone()))
            .collect();
        let title = format!(
            "Latency by percentile, {} at {rate} rps, {} B bodies",
            protocol.name(),
            report.settings.payload_bytes
        );
        let name = format!(
            "latency-{}-{rate}rps.svg",
            protocol.name().replace('/', "").to_lowercase()
        );
        std::fs::write(dir.join(&name), latency_chart(&title, &series))?;
        files.push(name);
    }
    let per_process = |f: &dyn Fn(&crate::procstat::Usage) -> f64| -> Vec<(String, f64)> {
        report
            .scenarios
            .iter()
            .flat_map(|s| {
                s.processes.iter().map(move |u| {
                    (
                        format!(
                            "{} {} {} rps: {}",
                            s.label(),
                            s.protocol.name(),
                            s.rate_rps,
                            u.process
                        ),
                        f(u),
                    )
                })
            })
            .collect()
    };
    let cpu = per_process(&|u| u.cpu_s_per_1k_requests);
    std::fs::write(
        dir.join("cpu.svg"),
        bar_chart("CPU per proxy process", "CPU s per 1,000 requests", &cpu),
    )?;
    let mem = per_process(&|u| u.peak_rss_mib);
    std::fs::write(
        dir.join("memory.svg"),
        bar_chart("Peak RSS per proxy process", "MiB", &mem),
    )?;
    files.push("cpu.svg".into());
    files.push("memory.svg".into());
    Ok(files)
}
