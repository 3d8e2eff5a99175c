//! Running a burst of small parallel operations from inside rayon's pool.
//!
//! Each parallel operation started from a thread outside the pool is handed to a worker and
//! waited for: a wake-up and a sleep per operation, tens of microseconds here. A decoding step
//! is hundreds of such operations on small tensors (projections of a few rows, one token of
//! every head's recurrence), so those hand-offs were a tenth of a step. From a worker, an
//! operation starts on the spot and the other workers steal its pieces.

/// Runs `f` on a worker of rayon's global pool (on the calling thread when it is one) and
/// returns its result. `f` must not wait on anything but rayon's own joins: it holds a worker.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let mut out = None;
    rayon::scope(|s| s.spawn(|_| out = Some(f())));
    out.expect("the pool ran the job")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_a_worker_and_returns_the_result() {
        assert_eq!(rayon::current_thread_index(), None);
        let (on_worker, sum) = on_pool(|| {
            let sum: u64 = (0..1000u64).map(|x| x * x).sum();
            (rayon::current_thread_index().is_some(), sum)
        });
        assert!(on_worker);
        assert_eq!(sum, 332_833_500);
        // Nested: already on a worker, runs in place.
        assert!(on_pool(|| on_pool(
            || rayon::current_thread_index().is_some()
        )));
    }
}
