"""PyTorch eager reference for `runner bench wkv`: the WKV-7 recurrence as a per-token loop
(the way the original PyTorch code runs on a CPU), forward and forward+backward.

Prints one JSON object: {"fwd_ms": ..., "fwdbwd_ms": ..., "peak_rss_mb": ..., "threads": ...}.
Usage: python wkv_torch.py --b 4 --t 1024 --h 9 --n 64 --reps 3
"""
import argparse
import json
import statistics
import time

import torch
import sys as _sys
from pathlib import Path as _Path
_sys.path.insert(0, str(_Path(__file__).resolve().parents[2] / "scripts"))
from peak_rss import peak_rss_mb  # noqa: E402


def wkv7_loop(r, w, k, v, a, b, s):
    """r..b: [B,T,H,N]; s: [B,H,N,N] (S[i,j], i value index). Returns y [B,T,H,N], state."""
    ys = []
    for t in range(r.shape[1]):
        rt, wt, kt, vt, at, bt = (x[:, t] for x in (r, w, k, v, a, b))  # [B,H,N]
        sa = torch.einsum("bhij,bhj->bhi", s, at)
        s = s * wt[:, :, None, :] + sa[:, :, :, None] * bt[:, :, None, :] + vt[:, :, :, None] * kt[:, :, None, :]
        ys.append(torch.einsum("bhij,bhj->bhi", s, rt))
    return torch.stack(ys, dim=1), s


def inputs(B, T, H, N, seed, grad):
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: (torch.rand(B, T, H, N, generator=g) * (hi - lo) + lo)
    r, w, k, v = u(-1, 1), u(0.55, 0.999), u(-1, 1), u(-1, 1)
    kk = torch.nn.functional.normalize(u(-1, 1), dim=-1)
    a, b = -kk, kk * u(0, 1)
    s0 = torch.zeros(B, H, N, N)
    xs = [r, w, k, v, a, b]
    if grad:
        xs = [x.requires_grad_() for x in xs]
    return xs, s0


def main():
    p = argparse.ArgumentParser()
    for name, default in [("b", 4), ("t", 1024), ("h", 9), ("n", 64), ("reps", 3), ("seed", 0)]:
        p.add_argument(f"--{name}", type=int, default=default)
    args = p.parse_args()
    B, T, H, N = args.b, args.t, args.h, args.n

    def fwd():
        xs, s0 = inputs(B, T, H, N, args.seed, grad=False)
        with torch.no_grad():
            t0 = time.perf_counter()
            wkv7_loop(*xs, s0)
            return time.perf_counter() - t0

    def fwdbwd():
        xs, s0 = inputs(B, T, H, N, args.seed, grad=True)
        t0 = time.perf_counter()
        y, s = wkv7_loop(*xs, s0)
        (y.sum() + s.sum()).backward()
        return time.perf_counter() - t0

    fwd()  # warm-up
    f = statistics.median(fwd() for _ in range(args.reps))
    fb = statistics.median(fwdbwd() for _ in range(max(1, args.reps)))
    print(json.dumps({
        "fwd_ms": f * 1e3,
        "fwdbwd_ms": fb * 1e3,
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
