#!/usr/bin/env python3
"""PyTorch reference for `runner bench generate`: Hugging Face transformers' own model class
for the directory (LlamaForCausalLM / Qwen2ForCausalLM), float32, eager, on the CPU.

    python3 scripts/bench_generate_torch.py --model DIR --prompt-tokens 128 --new-tokens 32 --reps 3

Prompt ids are the same deterministic sequence the runner uses. Prints JSON: prefill and
decode tokens/s (median over reps) and peak RSS.
"""
import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM
from peak_rss import peak_rss_mb


def prompt_ids(n, vocab):
    return [(17 + 7919 * i) % vocab for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-tokens", type=int, required=True)
    ap.add_argument("--new-tokens", type=int, required=True)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    ids = torch.tensor([prompt_ids(args.prompt_tokens, model.config.vocab_size)])
    prefill, decode = [], []
    for _ in range(args.reps + 1):
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        t1 = time.perf_counter()
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(args.new_tokens):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        t2 = time.perf_counter()
        prefill.append(args.prompt_tokens / (t1 - t0))
        decode.append(args.new_tokens / (t2 - t1))
    print(json.dumps({
        "prefill_tok_s": statistics.median(prefill[1:]),
        "decode_tok_s": statistics.median(decode[1:]),
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
