//! Token sampling: greedy, temperature, top-k, top-p, seeded. Pure logic.
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling parameters of one request (validated by the server).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 or 1 = disabled.
    pub top_p: f32,
    /// 0 = disabled.
    pub top_k: u32,
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SamplingError {
    #[error("temperature must be a finite number >= 0, got {0}")]
    Temperature(String),
    #[error("top_p must be within [0, 1], got {0}")]
    TopP(String),
}

impl SamplingParams {
    pub fn validate(&self) -> Result<(), SamplingError> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(SamplingError::Temperature(self.temperature.to_string()));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(SamplingError::TopP(self.top_p.to_string()));
        }
        Ok(())
    }
}

/// A per-request sampler with its own RNG.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    scratch: Vec<(u32, f32)>,
}

/// Index of the largest logit (NaN treated as -inf; ties go to the lowest id).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self {
            params,
            rng,
            scratch: Vec::new(),
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = self.params;
        if p.temperature == 0.0 || logits.len() <= 1 {
            return argmax(logits);
        }
        let c = &mut self.scratch;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, v)| !v.is_nan())
                .map(|(i, &v)| (i as u32, v / p.temperature)),
        );
        if c.is_empty() {
            return 0;
        }
        // Sort descending by logit, ties by id, so results are reproducible.
        c.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 && (p.top_k as usize) < c.len() {
            c.truncate(p.top_k as usize);
        }
        let max = c[0].1;
        let mut sum = 0.0f64;
        for e in c.iter_mut() {
            e.1 = (e.1 - max).exp();
            sum += e.1 as f64;
        }
        if p.top_p > 0.0 && p.top_p < 1.0 {
            let mut cum = 0.0f64;
            let mut keep = c.len();
            for (i, e) in c.iter().enumerate() {
                cum += e.1 as f64 / sum;
                if cum >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep);
            sum = c.iter().map(|e| e.1 as f64).sum();
        }
        let mut r = self.rng.random::<f64>() * sum;
        for e in c.iter() {
            r -= e.1 as f64;
            if r <= 0.0 {
                return e.0;
            }
        }
        c[c.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32, p: f32, k: u32, seed: Option<u64>) -> SamplingParams {
        SamplingParams {
            temperature: t,
            top_p: p,
            top_k: k,
            seed,
        }
    }

    #[test]
    fn greedy_picks_argmax_and_ignores_nan() {
        let mut s = Sampler::new(params(0.0, 0.0, 0, None));
        assert_eq!(s.sample(&[0.1, 3.0, f32::NAN, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(1.0, 0.0, 0, Some(seed)));
            (0..40).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits = [0.5, 0.1, 2.0, 1.9];
        let mut s = Sampler::new(params(5.0, 0.0, 1, Some(1)));
        for _ in 0..20 {
            assert_eq!(s.sample(&logits), 2);
        }
    }

    #[test]
    fn top_k_restricts_support() {
        let logits = [1.0, 0.9, 0.8, -5.0, -6.0];
        let mut s = Sampler::new(params(10.0, 0.0, 2, Some(3)));
        for _ in 0..200 {
            assert!(s.sample(&logits) < 2);
        }
    }

    #[test]
    fn top_p_small_keeps_only_the_top_token() {
        let logits = [0.0, 4.0, 1.0];
        let mut s = Sampler::new(params(1.0, 0.1, 0, Some(9)));
        for _ in 0..50 {
            assert_eq!(s.sample(&logits), 1);
        }
    }

    #[test]
    fn validation() {
        assert!(params(0.0, 0.0, 0, None).validate().is_ok());
        assert!(params(f32::NAN, 0.0, 0, None).validate().is_err());
        assert!(params(-1.0, 0.0, 0, None).validate().is_err());
        assert!(params(f32::INFINITY, 0.0, 0, None).validate().is_err());
        assert!(params(1.0, 1.5, 0, None).validate().is_err());
        assert!(params(1.0, -0.1, 0, None).validate().is_err());
        assert!(params(1.0, f32::NAN, 0, None).validate().is_err());
    }
}
