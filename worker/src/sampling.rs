//! Token sampling: logit bias, repetition / frequency / presence
//! penalties, then greedy or temperature, top-k, top-p, seeded. Pure logic.
//!
//! The adjustments, in vLLM's order: `logit_bias` is added; the repetition
//! penalty (transformers' `RepetitionPenaltyLogitsProcessor`: a positive
//! logit divided by it, a negative one multiplied) applies to every token of
//! the prompt and of the output so far; the frequency and presence penalties
//! (OpenAI's definition) subtract `frequency × count + presence × [count >
//! 0]` for the tokens generated so far. Log-probabilities are the model's
//! own, before any of this (`crate::logprobs`).
use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling parameters of one request (validated by the server).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 or 1 = disabled.
    pub top_p: f32,
    /// 0 = disabled.
    pub top_k: u32,
    pub seed: Option<u64>,
    /// -2..=2; 0 = off.
    pub frequency_penalty: f32,
    /// -2..=2; 0 = off.
    pub presence_penalty: f32,
    /// > 0; 1 = off.
    pub repetition_penalty: f32,
    /// Added to the logits of these token ids (-100..=100 each).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 0.0,
            top_k: 0,
            seed: None,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: vec![],
        }
    }
}

/// Most `logit_bias` entries per request (OpenAI's limit).
pub const MAX_LOGIT_BIAS: usize = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SamplingError {
    #[error("temperature must be a finite number >= 0, got {0}")]
    Temperature(String),
    #[error("top_p must be within [0, 1], got {0}")]
    TopP(String),
    #[error("{0} must be between -2 and 2, got {1}")]
    Penalty(&'static str, String),
    #[error("repetition_penalty must be greater than 0 and at most 10, got {0}")]
    Repetition(String),
    #[error("logit_bias: {0}")]
    LogitBias(String),
}

impl SamplingParams {
    pub fn validate(&self) -> Result<(), SamplingError> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(SamplingError::Temperature(self.temperature.to_string()));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(SamplingError::TopP(self.top_p.to_string()));
        }
        for (name, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(SamplingError::Penalty(name, v.to_string()));
            }
        }
        let r = self.repetition_penalty;
        if !(r > 0.0 && r <= 10.0) {
            return Err(SamplingError::Repetition(r.to_string()));
        }
        if self.logit_bias.len() > MAX_LOGIT_BIAS {
            return Err(SamplingError::LogitBias(format!(
                "at most {MAX_LOGIT_BIAS} tokens, got {}",
                self.logit_bias.len()
            )));
        }
        if let Some((id, b)) = self
            .logit_bias
            .iter()
            .find(|(_, b)| !(-100.0..=100.0).contains(b))
        {
            return Err(SamplingError::LogitBias(format!(
                "the bias of token {id} must be between -100 and 100, got {b}"
            )));
        }
        Ok(())
    }

    /// Whether the logits are used as the model gave them.
    fn adjusts(&self) -> bool {
        self.frequency_penalty != 0.0
            || self.presence_penalty != 0.0
            || self.repetition_penalty != 1.0
            || !self.logit_bias.is_empty()
    }
}

/// A per-request sampler with its own RNG and the tokens the penalties
/// count.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    scratch: Vec<(u32, f32)>,
    adjusted: Vec<f32>,
    /// Output tokens so far, with their counts.
    counts: HashMap<u32, u32>,
    /// Prompt tokens (for the repetition penalty).
    prompt: HashSet<u32>,
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
        Self::with_prompt(params, &[])
    }

    /// A sampler for a sequence whose prompt is `prompt`.
    pub fn with_prompt(params: SamplingParams, prompt: &[u32]) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        let prompt = if params.repetition_penalty != 1.0 {
            prompt.iter().copied().collect()
        } else {
            HashSet::new()
        };
        Self {
            params,
            rng,
            scratch: Vec::new(),
            adjusted: Vec::new(),
            counts: HashMap::new(),
            prompt,
        }
    }

    /// Picks the next token from the model's `logits` and counts it.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let id = if self.params.adjusts() {
            let mut adjusted = std::mem::take(&mut self.adjusted);
            adjusted.clear();
            adjusted.extend_from_slice(logits);
            self.adjust(&mut adjusted);
            let id = self.pick(&adjusted);
            self.adjusted = adjusted;
            id
        } else {
            self.pick(logits)
        };
        *self.counts.entry(id).or_default() += 1;
        id
    }

    /// Logit bias, then the repetition, frequency and presence penalties.
    fn adjust(&self, l: &mut [f32]) {
        let p = &self.params;
        for &(id, b) in &p.logit_bias {
            if let Some(v) = l.get_mut(id as usize) {
                *v += b;
            }
        }
        if p.repetition_penalty != 1.0 {
            let seen = self
                .prompt
                .iter()
                .chain(self.counts.keys().filter(|id| !self.prompt.contains(id)));
            for &id in seen {
                if let Some(v) = l.get_mut(id as usize) {
                    *v = if *v > 0.0 {
                        *v / p.repetition_penalty
                    } else {
                        *v * p.repetition_penalty
                    };
                }
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            for (&id, &n) in &self.counts {
                if let Some(v) = l.get_mut(id as usize) {
                    *v -= p.frequency_penalty * n as f32 + p.presence_penalty;
                }
            }
        }
    }

    fn pick(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
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
            ..Default::default()
        }
    }

    #[test]
    fn logit_bias_moves_the_choice_and_bans_a_token() {
        let logits = [1.0, 3.0, 2.0];
        let mut s = Sampler::new(SamplingParams {
            logit_bias: vec![(0, 5.0), (7, 100.0)],
            ..Default::default()
        });
        assert_eq!(s.sample(&logits), 0, "+5 makes token 0 the largest");
        let mut s = Sampler::new(SamplingParams {
            temperature: 2.0,
            seed: Some(1),
            logit_bias: vec![(1, -100.0), (2, -100.0)],
            ..Default::default()
        });
        for _ in 0..100 {
            assert_eq!(s.sample(&logits), 0, "-100 bans a token");
        }
    }

    #[test]
    fn frequency_and_presence_penalties_count_what_was_generated() {
        // Greedy on fixed logits repeats token 1 forever...
        let logits = [0.0, 1.0, 0.5, 0.2];
        let run = |params: SamplingParams| {
            let mut s = Sampler::new(params);
            (0..4).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(SamplingParams::default()), [1, 1, 1, 1]);
        // ... a presence penalty of 0.6 is paid once per token used: 1
        // (1.0), then 2 (0.5 > 1's 0.4), then 1 again (0.4 > 2's -0.1).
        let presence = SamplingParams {
            presence_penalty: 0.6,
            ..Default::default()
        };
        assert_eq!(run(presence), [1, 2, 1, 1]);
        // A frequency penalty grows with each use: 1 (1.0), 1 (0.7), 2 (0.5),
        // 1 (0.4 vs 0.2 and 0.2).
        let frequency = SamplingParams {
            frequency_penalty: 0.3,
            ..Default::default()
        };
        assert_eq!(run(frequency), [1, 1, 2, 1]);
    }

    #[test]
    fn the_repetition_penalty_covers_the_prompt_and_scales_by_sign() {
        let logits = [2.0, 1.5, -1.0, -1.2];
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        };
        // Token 0 is in the prompt: 2.0 / 2 = 1.0 < 1.5.
        let mut s = Sampler::with_prompt(p.clone(), &[0]);
        assert_eq!(s.sample(&logits), 1);
        // Then 1 was generated too: 0.75 < 1.0, so 0 again.
        assert_eq!(s.sample(&logits), 0);
        // A negative logit is multiplied: -1.0 * 2 = -2.0 < -1.2.
        let mut s = Sampler::with_prompt(p, &[0, 1, 2]);
        assert_eq!(s.sample(&[-5.0, -5.0, -1.0, -1.2]), 3);
    }

    #[test]
    fn adjustments_are_validated() {
        let ok = SamplingParams::default();
        assert!(ok.validate().is_ok());
        for bad in [
            SamplingParams {
                frequency_penalty: 2.5,
                ..Default::default()
            },
            SamplingParams {
                presence_penalty: f32::NAN,
                ..Default::default()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
            SamplingParams {
                logit_bias: vec![(1, 101.0)],
                ..Default::default()
            },
            SamplingParams {
                logit_bias: (0..301).map(|i| (i, 1.0)).collect(),
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
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
