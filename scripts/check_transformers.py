"""Loads a hybrid directory written by the runner with Hugging Face `transformers`
(`trust_remote_code=True`) and checks it against the runner:

- its logits for the given token ids against the runner's (raw little-endian float32
  `[sequences, positions, vocab]`), as the largest absolute difference over the largest
  absolute value;
- greedy `generate` with the cache equals greedy `generate` without it (the cache holds KV for
  attention layers and a fixed-size state for converted layers, which is checked too);
- `AutoTokenizer` loads the directory and round-trips a string.

Prints one JSON object; exits 1 when a check fails. Needs torch and transformers.
"""

import argparse
import json
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--ids", required=True, help="sequences of equal length: 1,2,3;4,5,6")
    ap.add_argument("--logits", required=True, help="the runner's logits, raw float32")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--new-tokens", type=int, default=8)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True)
    model.eval()
    ids = torch.tensor([[int(x) for x in s.split(",")] for s in args.ids.split(";")])
    runner = np.fromfile(args.logits, dtype="<f4")
    report = {"class": type(model).__name__, "dtype": str(model.dtype)}
    with torch.no_grad():
        logits = model(ids).logits.float().numpy()
        runner = runner.reshape(logits.shape)
        err = float(np.abs(logits - runner).max() / max(np.abs(runner).max(), 1e-30))
        report["max_relative_error"] = err
        report["logits_ok"] = err < args.tolerance

        prompt = ids[:1]
        with_cache = model.generate(
            prompt, max_new_tokens=args.new_tokens, do_sample=False, use_cache=True
        )
        without = model.generate(
            prompt, max_new_tokens=args.new_tokens, do_sample=False, use_cache=False
        )
        report["generated"] = with_cache[0, prompt.shape[1]:].tolist()
        report["generate_equal"] = bool(torch.equal(with_cache, without))
        report["generate_ok"] = report["generate_equal"] and with_cache.shape[1] > prompt.shape[1]

        # Converted layers' state does not grow with the context; attention caches do.
        out = model(prompt, use_cache=True)
        cache = out.cache
        converted = [i for i in model.config.wkv_layers]
        before = [cache.wkv[i].numel() + cache.shift[i].numel() for i in converted]
        for _ in range(4):
            nxt = out.logits[:, -1:].argmax(-1)
            out = model(nxt, cache=cache, use_cache=True)
            cache = out.cache
        after = [cache.wkv[i].numel() + cache.shift[i].numel() for i in converted]
        report["state_flat"] = before == after and cache.seen_tokens == prompt.shape[1] + 4

    tok = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
    text = "Hello world"
    report["tokenizer_ok"] = tok.decode(tok(text)["input_ids"], skip_special_tokens=True).strip() == text

    print("REPORT " + json.dumps(report))
    ok = all(report[k] for k in ("logits_ok", "generate_ok", "state_flat", "tokenizer_ok"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
