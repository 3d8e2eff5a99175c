#!/usr/bin/env python3
"""Python reference for `runner bench tokenize`: Hugging Face `tokenizers` (encode_batch, its
own parallelism) on the texts of a JSONL file ({"text": ...} per line).

    python3 scripts/bench_tokenize_py.py --tokenizer DIR/tokenizer.json --texts texts.jsonl --reps 3

Prints JSON: tokens, median seconds, tokens/s, peak RSS.
"""
import argparse
import json
import statistics
import time

from tokenizers import Tokenizer
from peak_rss import peak_rss_mb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--texts", required=True)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    tok = Tokenizer.from_file(args.tokenizer)
    texts = [json.loads(line)["text"] for line in open(args.texts, encoding="utf-8")]
    times, tokens = [], 0
    for _ in range(args.reps):
        t0 = time.perf_counter()
        enc = tok.encode_batch(texts, add_special_tokens=False)
        times.append(time.perf_counter() - t0)
        tokens = sum(len(e.ids) for e in enc)
    secs = statistics.median(times)
    print(json.dumps({"tokens": tokens, "seconds": secs, "tokens_per_s": tokens / secs,
                      "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
