//! The markdown rendering of a report: machine and settings, what was skipped, the latency table
//! (with latency added over direct), the resource table, and the targets.

use super::{Report, Verdict};
use std::fmt::Write as _;

fn signed(v: Option<i64>) -> String {
    v.map_or("–".into(), |v| format!("{v:+}"))
}

pub fn render(r: &Report, plots: &[String]) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let st = &r.settings;
    let _ = writeln!(
        s,
        "# Trellis latency benchmark, {} run, {}\n",
        st.mode, r.started_utc
    );
    let _ = writeln!(
        s,
        "Machine: {} CPUs ({}), Linux {}. Each scenario: {} s measured after {} s warm-up, {} rounds interleaved, {} connections, {} B response bodies, open-loop constant rate, latency from the intended send time. Trellis sidecars: {} runtime worker(s) each.\n",
        m.cpus, m.cpu_model, m.kernel, st.duration_s, st.warmup_s, st.rounds, st.connections, st.payload_bytes, st.trellis_workers
    );
    let noisy: Vec<String> = r
        .scenarios
        .iter()
        .filter(|x| x.pacer_late_slots * 100 > (x.ok + x.errors).max(1))
        .map(|x| format!("{} {} at {} rps", x.label(), x.protocol.name(), x.rate_rps))
        .collect();
    if !noisy.is_empty() {
        let _ = writeln!(
            s,
            "**Warning:** the load generator released more than 1% of its requests over 1 ms late in: {}. The machine was busy (other processes competing for the cores); latency there includes that, and the verdicts below are unreliable. Rerun on a quiet machine.\n",
            noisy.join("; ")
        );
    }
    if !r.skipped.is_empty() {
        s.push_str("Skipped:\n\n");
        for note in &r.skipped {
            let _ = writeln!(s, "- {note}");
        }
        s.push('\n');
    }
    s.push_str("## Latency\n\nAdded = this path's percentile minus the direct path's at the same protocol and rate (µs).\n\n");
    s.push_str("| system | path | protocol | rate (rps) | achieved (rps) | errors | p50 (µs) | p90 (µs) | p99 (µs) | p99.9 (µs) | max (µs) | added p50 (µs) | added p90 (µs) | added p99 (µs) | added p99.9 (µs) | added max (µs) |\n");
    s.push_str("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for x in &r.scenarios {
        let l = &x.latency;
        let a = x.added;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            x.system,
            x.path.name(),
            x.protocol.name(),
            x.rate_rps,
            x.achieved_rps,
            x.errors,
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us,
            l.max_us,
            signed(a.map(|a| a.p50_us)),
            signed(a.map(|a| a.p90_us)),
            signed(a.map(|a| a.p99_us)),
            signed(a.map(|a| a.p999_us)),
            signed(a.map(|a| a.max_us)),
        );
    }
    s.push_str("\n## Proxy processes\n\nCPU from /proc/<pid>/stat (user + system, warm-up included, divided by every request sent); peak RSS is VmHWM, reset before each run.\n\n");
    s.push_str("| system | path | protocol | rate (rps) | process | CPU (s) | CPU (s per 1,000 requests) | peak RSS (MiB) | connections (client) |\n|---|---|---|--:|---|--:|--:|--:|--:|\n");
    for x in &r.scenarios {
        for u in &x.processes {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.2} | {:.4} | {:.1} | {} |",
                x.system,
                x.path.name(),
                x.protocol.name(),
                x.rate_rps,
                u.process,
                u.cpu_s,
                u.cpu_s_per_1k_requests,
                u.peak_rss_mib,
                x.connections
            );
        }
    }
    if !r.idle_rss_mib.is_empty() {
        s.push_str("\nIdle RSS before any traffic: ");
        let idle: Vec<String> = r
            .idle_rss_mib
            .iter()
            .map(|(n, v)| format!("{n} {v:.1} MiB"))
            .collect();
        s.push_str(&idle.join(", "));
        s.push_str(".\n");
    }
    s.push_str("\n## Generator health\n\n| system | path | protocol | rate (rps) | uncorrected p99 (µs) | send lag p99 (µs) | pacer slots > 1 ms late |\n|---|---|---|--:|--:|--:|--:|\n");
    for x in &r.scenarios {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            x.system,
            x.path.name(),
            x.protocol.name(),
            x.rate_rps,
            x.uncorrected_p99_us,
            x.send_lag_p99_us,
            x.pacer_late_slots
        );
    }
    s.push_str("\n## Targets (issue 7)\n\n| target | measured | verdict |\n|---|---|---|\n");
    for t in &r.targets {
        let v = match t.verdict {
            Verdict::Met => "met",
            Verdict::Missed => "**missed**",
            Verdict::NotMeasured => "not measured",
        };
        let _ = writeln!(s, "| {} | {} | {v} |", t.target, t.measured);
    }
    if !plots.is_empty() {
        s.push_str("\n## Plots\n\n");
        for p in plots {
            let _ = writeln!(s, "![{p}]({p})");
        }
    }
    s
}
