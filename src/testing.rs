//! Helpers shared by the unit tests.

/// The device the unit tests compute on: `RUNNER_TEST_DEVICE` (`cpu` when unset; `wgpu` in
/// builds with that feature), so the same tests can be pointed at a GPU.
pub fn device() -> burn::tensor::Device {
    let name = std::env::var("RUNNER_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    crate::commands::parse_device(&name).unwrap_or_else(|e| panic!("RUNNER_TEST_DEVICE: {e}"))
}
