//! Times the slice-level kernels alone (no tensor conversions), per-token and chunked:
//! `cargo run --release -p rwkv-kernels --example cpu_kernel_time [per-token|chunked|both] [REPS]
//! [SEQ]` (REPS 3 by default; the best of them is printed last; SEQ 1024 by default, at batch 4
//! and 9 heads of 64). `SIMD=avx2` or `SIMD=base` caps the instruction set (same results, for
//! side-by-side timing on a CPU with more).
use rwkv_kernels::chunked;
use rwkv_kernels::cpu::{self, Dims, Inputs};
use std::time::Instant;

fn main() {
    match std::env::var("SIMD").as_deref() {
        Ok("avx2") => cpu::cap_simd_level(Some(cpu::SimdLevel::Avx2Fma)),
        Ok("base") => cpu::cap_simd_level(Some(cpu::SimdLevel::Base)),
        Ok(other) if !other.is_empty() => panic!("SIMD is avx2 or base, not {other}"),
        _ => {}
    }
    let seq: usize = std::env::args()
        .nth(3)
        .map_or(1024, |s| s.parse().expect("SEQ is a number"));
    let d = Dims {
        batch: 4,
        seq,
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
    let only = std::env::args().nth(1).filter(|f| f != "both");
    let reps: usize = std::env::args()
        .nth(2)
        .map_or(3, |r| r.parse().expect("REPS is a number"));
    for form in ["per-token", "chunked"] {
        if only.as_deref().is_some_and(|o| o != form) {
            continue;
        }
        let (mut fs, mut bs) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let t0 = Instant::now();
            let (y, _, saved) = if form == "chunked" {
                chunked::forward(d, x, &[], true)
            } else {
                cpu::forward(d, x, &[], true)
            };
            let f = t0.elapsed().as_secs_f64() * 1e3;
            let t1 = Instant::now();
            let g = if form == "chunked" {
                chunked::backward(d, x, &saved, &y, &[])
            } else {
                cpu::backward(d, x, &saved, &y, &[])
            };
            let bk = t1.elapsed().as_secs_f64() * 1e3;
            println!(
                "{form:>9}: forward {f:.1} ms, backward {bk:.1} ms {}",
                g.r[7]
            );
            fs.push(f);
            bs.push(bk);
        }
        let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "{form:>9}: best of {reps}: forward {:.1} ms, backward {:.1} ms",
            best(&fs),
            best(&bs)
        );
    }
}
