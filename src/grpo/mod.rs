//! Group relative policy optimisation on problems with verifiable answers (SPEC §6): reward
//! components, the objective (per-group advantages, clipped surrogate, k3 KL) and rollouts
//! (G completions per prompt decoded together from one prefilled state), the settings and the
//! training loop.

pub mod objective;
pub mod problems;
pub mod rewards;
pub mod rollout;
pub mod settings;
pub mod train;
