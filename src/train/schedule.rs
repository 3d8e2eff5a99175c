//! The learning-rate schedule: linear warmup from `warmup_start·lr_init` to `lr_init` over
//! `warmup_steps`, then cosine decay from `lr_init` to `lr_final` over the step's token budget
//! (progress measured in tokens seen, so it reaches `lr_final` exactly at the budget).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub lr_init: f64,
    pub lr_final: f64,
    pub warmup_steps: u64,
    /// Fraction of `lr_init` the warmup starts from.
    pub warmup_start: f64,
    pub total_tokens: u64,
}

impl LrSchedule {
    /// The learning rate of optimizer step `step` (0-based) after `tokens` tokens.
    pub fn lr(&self, step: u64, tokens: u64) -> f64 {
        if step < self.warmup_steps {
            let f = step as f64 / self.warmup_steps as f64;
            return self.lr_init * (self.warmup_start + (1.0 - self.warmup_start) * f);
        }
        let p = (tokens as f64 / self.total_tokens.max(1) as f64).clamp(0.0, 1.0);
        self.lr_final
            + 0.5 * (self.lr_init - self.lr_final) * (1.0 + (std::f64::consts::PI * p).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_to_final_at_the_budget() {
        let s = LrSchedule {
            lr_init: 1e-3,
            lr_final: 1e-5,
            warmup_steps: 10,
            warmup_start: 0.01,
            total_tokens: 1000,
        };
        assert!((s.lr(0, 0) - 1e-5).abs() < 1e-12);
        assert!(s.lr(5, 50) > s.lr(1, 10));
        assert!((s.lr(10, 0) - 1e-3).abs() < 1e-12);
        assert!(s.lr(10, 600) < s.lr(10, 500));
        assert!((s.lr(99, 1000) - 1e-5).abs() < 1e-12);
        assert!((s.lr(99, 5000) - 1e-5).abs() < 1e-12);
    }
}
