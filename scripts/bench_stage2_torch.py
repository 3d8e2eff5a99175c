"""PyTorch eager reference for `runner bench stage2`: one stage-2 optimizer step of the same
hybrid student on the same CPU — the teacher (Hugging Face transformers, float32) without
gradients, the student (the teacher with the chosen layers' attention replaced by the RWKV-7
time mixer of SPEC §2, teacher-initialised, untied head, every parameter trainable), KL(teacher
‖ student) at τ = 1 over the vocabulary averaged over positions, backward, global-norm
clipping and AdamW (betas 0.9/0.95). The WKV-7 recurrence runs as a per-token loop, which is
how the original PyTorch code runs without its CUDA kernel.

Prints one JSON object: {"step_s": median seconds per optimizer step, "tokens_per_s", "loss",
"peak_rss_mb", "threads", "phases_s": median seconds of teacher forward, student forward +
loss, backward, clipping + AdamW}.
Usage: python bench_stage2_torch.py --teacher DIR --layers 6,12,18,24 --seq 512 --batch 1 --steps 3
"""
import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "kernels", "bench"))
from wkv_torch import wkv7_loop  # noqa: E402
from peak_rss import peak_rss_mb


def lora_ranks(c):
    """RWKV-LM's LoRA sizes for hidden size C (the runner's LoraRanks::for_hidden)."""
    def r(base, factor):
        return max(32, int(round(base * (c ** factor) / 32)) * 32)
    return r(1.8, 0.5), r(1.8, 0.5), r(1.3, 0.5), r(0.6, 0.8)


class TimeMixer(torch.nn.Module):
    def __init__(self, attn, cfg, shared):
        super().__init__()
        c = cfg.hidden_size
        n = cfg.head_dim if getattr(cfg, "head_dim", None) else c // cfg.num_attention_heads
        h = c // n
        kv = cfg.num_key_value_heads * n
        self.h, self.n, self.rep, self.shared = h, n, h // cfg.num_key_value_heads, shared
        dw, da, dv, dg = lora_ranks(c)
        p = lambda *s, v=0.0: torch.nn.Parameter(torch.full(s, v))
        self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g = (p(1, 1, c, v=0.5) for _ in range(6))
        self.w0, self.a0, self.v0 = p(1, 1, c, v=-2.0), p(1, 1, c), p(1, 1, c, v=1.0)
        rnd = lambda *s: torch.nn.Parameter(torch.randn(*s) * 0.01)
        self.w1, self.w2 = rnd(c, dw), rnd(dw, c)
        self.a1, self.a2 = rnd(c, da), rnd(da, c)
        self.v1, self.v2 = rnd(c, dv), rnd(dv, c)
        self.g1, self.g2 = rnd(c, dg), rnd(dg, c)
        self.k_k, self.k_a, self.r_k = p(1, 1, c, v=0.85), p(1, 1, c, v=1.0), p(h, n)
        self.receptance = copy.deepcopy(attn.q_proj)
        self.key = copy.deepcopy(attn.k_proj)
        self.value = copy.deepcopy(attn.v_proj)
        self.output = copy.deepcopy(attn.o_proj)
        self.ln_x = torch.nn.GroupNorm(h, c, eps=64e-5)
        self.first = False

    def forward(self, hidden_states, *args, **kwargs):
        x = hidden_states
        b, t, c = x.shape
        h, n = self.h, self.n
        xx = F.pad(x, (0, 0, 1, -1)) - x
        xr, xw, xk, xv, xa, xg = (x + xx * m for m in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))
        r = self.receptance(xr)
        rep = lambda y: y.view(b, t, -1, n).repeat_interleave(self.rep, dim=2).reshape(b, t, c)
        k, v = rep(self.key(xk)), rep(self.value(xv))
        w = -F.softplus(-(self.w0 + torch.tanh(xw @ self.w1) @ self.w2)) - 0.5
        if self.first:
            self.shared["v_first"] = v
        else:
            v = v + (self.shared["v_first"] - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = F.normalize((k * self.k_k).view(b, t, h, n), dim=-1).view(b, t, c)
        k = k * (1 + (a - 1) * self.k_a)
        split = lambda y: y.view(b, t, h, n)
        s0 = torch.zeros(b, h, n, n)
        y, _ = wkv7_loop(split(r), split(torch.exp(-torch.exp(w))), split(k), split(v), split(-kk), split(kk * a), s0)
        y = self.ln_x(y.reshape(b * t, c)).view(b, t, c)
        y = y + ((split(r) * split(k) * self.r_k).sum(-1, keepdim=True) * split(v)).view(b, t, c)
        return self.output(y * g), None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--layers", default="6,12,18,24")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher, torch_dtype=torch.float32).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher).train()
    cfg = student.config
    layers = [int(i) for i in args.layers.split(",")] if args.layers != "all" else list(range(cfg.num_hidden_layers))
    shared = {}
    for j, i in enumerate(sorted(layers)):
        m = TimeMixer(student.model.layers[i].self_attn, cfg, shared)
        m.first = j == 0
        student.model.layers[i].self_attn = m
    if student.lm_head.weight is student.model.embed_tokens.weight:
        student.lm_head.weight = torch.nn.Parameter(student.model.embed_tokens.weight.detach().clone())
    for p in student.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    vocab = cfg.vocab_size
    ids = torch.tensor([[(17 + 7919 * (i + 131 * s)) % vocab for i in range(args.seq)] for s in range(args.batch)])

    def step():
        t0 = time.perf_counter()
        with torch.no_grad():
            t_logits = teacher(input_ids=ids).logits
        t1 = time.perf_counter()
        log_t = F.log_softmax(t_logits, dim=-1)
        log_s = F.log_softmax(student(input_ids=ids).logits, dim=-1)
        loss = (log_t.exp() * (log_t - log_s)).sum(-1).mean()
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        t4 = time.perf_counter()
        return t4 - t0, loss.item(), [t1 - t0, t2 - t1, t3 - t2, t4 - t3]

    step()  # warm-up
    times, losses, phases = zip(*(step() for _ in range(args.steps)))
    s = statistics.median(times)
    print(json.dumps({
        "step_s": s,
        "tokens_per_s": args.batch * args.seq / s,
        "loss": losses[0],
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "phases_s": [statistics.median(p) for p in zip(*phases)],
    }))


if __name__ == "__main__":
    main()
