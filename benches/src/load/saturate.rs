//! Saturation mode: constant-rate steps of rising rate until one misses (p99 over the bound, more
//! than 1% errors, or less than 98% of the asked rate achieved). The answer is the highest rate
//! held, with every step's numbers so the knee is visible.

use super::{run, LoadConfig, LoadResult};
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct SaturationConfig {
    /// The first step's rate; `base.rate` is ignored.
    pub start_rps: f64,
    /// Each step's rate is the previous one times this (> 1).
    pub factor: f64,
    /// Stop after this rate even if it held.
    pub max_rps: f64,
    pub p99_bound_us: u64,
}

/// One step and whether it held.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub result: LoadResult,
    pub held: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SaturationResult {
    /// The highest asked rate that held, in requests per second (0 if none did).
    pub max_held_rps: f64,
    pub p99_bound_us: u64,
    pub steps: Vec<Step>,
}

/// Whether a step held: p99 within the bound, ≤ 1% errors, ≥ 98% of the asked rate achieved.
pub fn held(result: &LoadResult, p99_bound_us: u64) -> bool {
    let total = result.ok + result.errors;
    let error_share = if total == 0 {
        1.0
    } else {
        result.errors as f64 / total as f64
    };
    result.latency.p99_us <= p99_bound_us
        && error_share <= 0.01
        && result.achieved_rps >= 0.98 * result.asked_rps
}

pub async fn saturate(
    base: &LoadConfig,
    sat: &SaturationConfig,
) -> anyhow::Result<SaturationResult> {
    anyhow::ensure!(sat.factor > 1.0, "the step factor must be above 1");
    anyhow::ensure!(sat.start_rps > 0.0, "the start rate must be positive");
    let mut steps = Vec::new();
    let mut max_held_rps: f64 = 0.0;
    let mut rate = sat.start_rps;
    while rate <= sat.max_rps {
        let mut config = base.clone();
        config.rate = rate;
        let result = run(&config).await?;
        let ok = held(&result, sat.p99_bound_us);
        eprintln!(
            "  {rate:.0} rps: achieved {:.0} rps, p99 {} µs, {} errors -> {}",
            result.achieved_rps,
            result.latency.p99_us,
            result.errors,
            if ok { "held" } else { "missed" }
        );
        steps.push(Step { result, held: ok });
        if !ok {
            break;
        }
        max_held_rps = rate;
        rate *= sat.factor;
    }
    Ok(SaturationResult {
        max_held_rps,
        p99_bound_us: sat.p99_bound_us,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::record::new_histogram;
    use crate::load::Percentiles;

    fn result(asked: f64, achieved: f64, p99_us: u64, ok: u64, errors: u64) -> LoadResult {
        let h = match new_histogram() {
            Ok(h) => h,
            Err(e) => panic!("{e:#}"),
        };
        LoadResult {
            asked_rps: asked,
            achieved_rps: achieved,
            ok,
            errors,
            shed: 0,
            shed_latency: Percentiles::default(),
            shed_uncorrected: Percentiles::default(),
            connections: 1,
            payload_bytes: 0,
            duration_s: 1.0,
            latency: Percentiles {
                p99_us,
                ..Percentiles::default()
            },
            uncorrected: Percentiles::default(),
            send_lag: Percentiles::default(),
            pacer_late_slots: 0,
            histogram: h.clone(),
            uncorrected_histogram: h,
        }
    }

    #[test]
    fn a_step_holds_only_within_bound_errors_and_rate() {
        assert!(held(&result(1000.0, 995.0, 900, 1000, 0), 1000));
        assert!(!held(&result(1000.0, 995.0, 1100, 1000, 0), 1000)); // p99 over the bound
        assert!(!held(&result(1000.0, 995.0, 900, 980, 20), 1000)); // 2% errors
        assert!(held(&result(1000.0, 995.0, 900, 995, 5), 1000)); // 0.5% errors
        assert!(!held(&result(1000.0, 950.0, 900, 1000, 0), 1000)); // 95% of the rate
        assert!(!held(&result(1000.0, 0.0, 0, 0, 0), 1000)); // nothing answered
    }
}
