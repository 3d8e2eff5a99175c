//! Times the slice-level kernel alone (no tensor conversions): `cargo run --release -p rwkv-kernels --example cpu_kernel_time`.
use rwkv_kernels::cpu::{self, Dims, Inputs};
use std::time::Instant;

fn main() {
    let d = Dims {
        batch: 4,
        seq: 1024,
        heads: 9,
        head_size: 64,
    };
    let n = d.seq_len();
    let mk = |s: f32| {
        (0..n)
            .map(|i| (i as f32 * s).sin() * 0.5)
            .collect::<Vec<f32>>()
    };
    let (r, k, v, a, b) = (mk(0.1), mk(0.2), mk(0.3), mk(0.4), mk(0.5));
    let w: Vec<f32> = (0..n)
        .map(|i| 0.6 + 0.3 * ((i as f32 * 0.7).sin().abs()))
        .collect();
    let x = Inputs {
        r: &r,
        w: &w,
        k: &k,
        v: &v,
        a: &a,
        b: &b,
        mask: &[],
    };
    for _ in 0..3 {
        let t0 = Instant::now();
        let (y, _, saved) = cpu::forward(d, x, &[], true);
        let f = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let g = cpu::backward(d, x, &saved, &y, &[]);
        let bk = t1.elapsed().as_secs_f64() * 1e3;
        let flops = (d.batch * d.seq * d.heads * 64 * 64) as f64;
        println!(
            "forward {f:.1} ms ({:.1} GFLOP/s), backward {bk:.1} ms ({:.1} GFLOP/s) {}",
            flops * 9.0 / f / 1e6,
            flops * 30.0 / bk / 1e6,
            g.r[7]
        );
    }
}
