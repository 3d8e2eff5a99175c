//! Choosing the next token from logits: repetition penalty, then temperature, top-k, top-p and
//! min-p (the order of Hugging Face's processors), then a seeded draw — or argmax when the
//! temperature is 0.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Sampling settings. The defaults are greedy decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1: off).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0: off).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of tokens already present (1: off).
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// Checks ranges; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("temperature must be ≥ 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return Err(format!("min_p must be in [0, 1), got {}", self.min_p));
        }
        if self.repetition_penalty <= 0.0 {
            return Err(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

pub struct Sampler {
    pub config: SamplingConfig,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(config: SamplingConfig) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        Self { config, rng }
    }

    /// Picks a token from `logits`, given the tokens seen so far (for the repetition penalty).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let cfg = &self.config;
        let mut logits = logits.to_vec();
        if cfg.repetition_penalty != 1.0 {
            let mut seen = history.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / cfg.repetition_penalty
                    } else {
                        *l * cfg.repetition_penalty
                    };
                }
            }
        }
        if cfg.temperature == 0.0 {
            return argmax(&logits);
        }
        // Candidates sorted by logit, most likely first.
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        if cfg.top_k > 0 {
            order.truncate(cfg.top_k);
        }
        let max = logits[order[0] as usize] / cfg.temperature;
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&t| ((logits[t as usize] / cfg.temperature - max) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if cfg.top_p < 1.0 {
            let mut cum = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    cum += p;
                    cum >= cfg.top_p as f64
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        if cfg.min_p > 0.0 {
            let floor = probs[0] * cfg.min_p as f64;
            let keep = probs.iter().take_while(|&&p| p >= floor).count().max(1);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut u = self.rng.random::<f64>() * total;
        for (i, p) in probs.iter().enumerate() {
            u -= p;
            if u <= 0.0 {
                return order[i];
            }
        }
        order[probs.len() - 1]
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(f: impl FnOnce(&mut SamplingConfig)) -> Sampler {
        let mut c = SamplingConfig {
            temperature: 1.0,
            ..Default::default()
        };
        f(&mut c);
        Sampler::new(c)
    }

    fn histogram(s: &mut Sampler, logits: &[f32], n: usize) -> Vec<usize> {
        let mut h = vec![0; logits.len()];
        for _ in 0..n {
            h[s.sample(logits, &[]) as usize] += 1;
        }
        h
    }

    #[test]
    fn greedy_and_repetition_penalty() {
        let mut s = Sampler::new(SamplingConfig::default());
        assert_eq!(s.sample(&[0.1, 2.0, 1.9], &[]), 1);
        let mut s = Sampler::new(SamplingConfig {
            repetition_penalty: 1.5,
            ..Default::default()
        });
        assert_eq!(s.sample(&[0.1, 2.0, 1.9], &[1]), 2);
        assert_eq!(s.sample(&[-1.0, -1.2, -3.0], &[0]), 1);
    }

    #[test]
    fn filters_restrict_the_support() {
        let logits = [3.0, 2.0, 1.0, 0.0, -1.0];
        let h = histogram(&mut sampler(|c| c.top_k = 2), &logits, 2000);
        assert!(
            h[0] > 0 && h[1] > 0 && h[2..].iter().all(|&n| n == 0),
            "{h:?}"
        );
        // p(0) ≈ 0.64, p(0)+p(1) ≈ 0.87: top_p 0.8 keeps two tokens.
        let h = histogram(&mut sampler(|c| c.top_p = 0.8), &logits, 2000);
        assert!(h[1] > 0 && h[2..].iter().all(|&n| n == 0), "{h:?}");
        // min_p 0.3 keeps tokens with p ≥ 0.3·p(0): only logits within ln(1/0.3) ≈ 1.2 of the max.
        let h = histogram(&mut sampler(|c| c.min_p = 0.3), &logits, 2000);
        assert!(h[1] > 0 && h[2..].iter().all(|&n| n == 0), "{h:?}");
        // Low temperature concentrates the draw.
        let h = histogram(&mut sampler(|c| c.temperature = 0.05), &logits, 500);
        assert_eq!(h[0], 500);
    }

    #[test]
    fn frequencies_follow_the_softmax_and_seed_repeats() {
        let logits = [0.0, (3.0f32).ln()];
        let h = histogram(&mut sampler(|_| {}), &logits, 8000);
        let frac = h[1] as f64 / 8000.0;
        assert!((frac - 0.75).abs() < 0.03, "{frac}");
        let a = histogram(&mut sampler(|c| c.seed = 7), &[1.0, 1.0, 1.0], 50);
        let b = histogram(&mut sampler(|c| c.seed = 7), &[1.0, 1.0, 1.0], 50);
        assert_eq!(a, b);
        assert!(
            SamplingConfig {
                top_p: 0.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
