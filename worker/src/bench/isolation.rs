//! The isolation overhead of `bench decode`: one workload (`iso_requests`
//! requests of distinct random prompts — no shared prefixes — `iso_batch` at
//! a time) run three ways, `rounds` times each in rotating order, in one
//! process:
//! - **one**: every request from one tenant;
//! - **many**: the requests spread over `tenants` tenants;
//! - **control**: one tenant again (an A/A run: the same workload as `one`).
//!
//! What differs between `one` and `many` is what isolation costs: per-tenant
//! prefix salts and quota bookkeeping, and zeroing blocks that change owner.
//! Overhead = `1 - best(many) / best(one)`: other load on the machine only
//! ever slows a run down, so the best run is the estimate it disturbs least.
//! It is computed on wall time and on this process's CPU time (Linux
//! `/proc`, less disturbed by other processes); the control gives the noise
//! floor, `|1 - best(control) / best(one)|`. A figure below the floor is not
//! resolved by this run.
use std::sync::Arc;

use serde::Serialize;

use super::decode::{Bench, DecodeBenchConfig};
use super::{BenchError, rate};

/// The runs of one way of spreading the workload.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Series {
    pub tokens_per_sec: Vec<f64>,
    /// Tokens per second of this process's CPU time (empty off Linux).
    pub tokens_per_cpu_sec: Vec<f64>,
    pub best: f64,
    pub best_cpu: f64,
    pub median: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IsolationFigure {
    pub tenants: usize,
    pub requests: usize,
    pub batch: usize,
    pub rounds: usize,
    pub one_tenant: Series,
    pub many_tenants: Series,
    /// One tenant again (A/A control).
    pub control: Series,
    /// `1 - best(many) / best(one)` on wall time, in percent (negative: many
    /// tenants were faster, i.e. noise).
    pub overhead_percent: f64,
    /// The same on CPU time, where measured.
    pub cpu_overhead_percent: Option<f64>,
    /// `|1 - best(control) / best(one)|` on wall time and CPU time.
    pub noise_floor_percent: f64,
    pub cpu_noise_floor_percent: Option<f64>,
    /// The overhead (CPU time where measured) is at most 1 %.
    pub target_met: bool,
    /// The noise floor of the figure judged is below 1 % (else the run
    /// cannot tell 1 % apart from noise).
    pub conclusive: bool,
}

/// User + system CPU time of this process so far (Linux; clock ticks of
/// 1/100 s, USER_HZ), or `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start at
    // field 3 (state); utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

pub(super) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// `1 - x / base` in percent (0 when there is no base).
fn loss(x: f64, base: f64) -> f64 {
    if base > 0.0 {
        (1.0 - x / base) * 100.0
    } else {
        0.0
    }
}

pub(super) fn measure(
    b: &mut Bench,
    cfg: &DecodeBenchConfig,
    one: &Arc<str>,
    many: &[Arc<str>],
) -> Result<IsolationFigure, BenchError> {
    let batch = cfg.iso_batch.max(1);
    let mut series = [Series::default(), Series::default(), Series::default()];
    for round in 0..cfg.rounds {
        for k in 0..3 {
            // Rotating order: each way runs first, second and third in turn.
            let which = (k + round) % 3;
            let cpu0 = cpu_seconds();
            let (mut tokens, mut secs) = (0u64, 0f64);
            for wave in 0..cfg.iso_requests.div_ceil(batch) {
                let n = batch.min(cfg.iso_requests - wave * batch);
                let names: Vec<Arc<str>> = (0..n)
                    .map(|i| match which {
                        1 => many[(wave * batch + i) % many.len()].clone(),
                        _ => one.clone(),
                    })
                    .collect();
                let (t, s) = b.run(&names)?;
                tokens += t;
                secs += s;
            }
            let s = &mut series[which];
            s.tokens_per_sec.push(rate(tokens, secs));
            if let (Some(a), Some(c)) = (cpu0, cpu_seconds()) {
                s.tokens_per_cpu_sec.push(rate(tokens, c - a));
            }
        }
    }
    for s in &mut series {
        s.best = best(&s.tokens_per_sec);
        s.best_cpu = best(&s.tokens_per_cpu_sec);
        s.median = median(&s.tokens_per_sec);
    }
    let [one_s, many_s, control] = series;
    let cpu = one_s.best_cpu > 0.0 && many_s.best_cpu > 0.0 && control.best_cpu > 0.0;
    let overhead = loss(many_s.best, one_s.best);
    let cpu_overhead = cpu.then(|| loss(many_s.best_cpu, one_s.best_cpu));
    let floor = loss(control.best, one_s.best).abs();
    let cpu_floor = cpu.then(|| loss(control.best_cpu, one_s.best_cpu).abs());
    let (judged, judged_floor) = match (cpu_overhead, cpu_floor) {
        (Some(o), Some(f)) => (o, f),
        _ => (overhead, floor),
    };
    Ok(IsolationFigure {
        tenants: many.len(),
        requests: cfg.iso_requests,
        batch,
        rounds: cfg.rounds,
        one_tenant: one_s,
        many_tenants: many_s,
        control,
        overhead_percent: overhead,
        cpu_overhead_percent: cpu_overhead,
        noise_floor_percent: floor,
        cpu_noise_floor_percent: cpu_floor,
        target_met: judged <= 1.0,
        conclusive: judged_floor < 1.0,
    })
}

impl std::fmt::Display for IsolationFigure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  isolation: {} requests, batch {}, {} rounds; best tokens/s: 1 tenant {:.1}, {} tenants {:.1}, control (1 tenant again) {:.1}",
            self.requests,
            self.batch,
            self.rounds,
            self.one_tenant.best,
            self.tenants,
            self.many_tenants.best,
            self.control.best
        )?;
        write!(
            f,
            "  isolation overhead: wall time {:.2}% (noise floor {:.2}%)",
            self.overhead_percent, self.noise_floor_percent
        )?;
        if let (Some(o), Some(n)) = (self.cpu_overhead_percent, self.cpu_noise_floor_percent) {
            write!(f, ", CPU time {o:.2}% (noise floor {n:.2}%)")?;
        }
        write!(
            f,
            "\n  isolation target (<= 1%): {}{}",
            if self.target_met { "met" } else { "NOT met" },
            if self.conclusive {
                ""
            } else {
                " — inconclusive: the A/A noise floor is above 1% on this machine"
            }
        )
    }
}
