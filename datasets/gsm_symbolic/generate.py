#!/usr/bin/env python3
"""Generates the seeded GSM-Symbolic math set committed beside this script.

The 100 templates of GSM-Symbolic (derived from GSM8K) ship in the PyPI wheel
reasoning-gym==0.1.25 (Apache-2.0, sha256 7f17a3ed…0435). This script reads the two generator
modules and `reasoning_gym/utils.py` straight from the wheel (no other part of the package is
imported, so none of its dependencies are needed), draws problems round-robin over the
templates with per-item seeds, and writes train.jsonl and test.jsonl:

    python3 -m pip download --no-deps reasoning-gym==0.1.25 -d /tmp/rg
    python3 datasets/gsm_symbolic/generate.py /tmp/rg/reasoning_gym-0.1.25-py3-none-any.whl

Each line: id, template, question, answer (the number as text), solution (worked steps ending
in `#### N`), and `messages` (user question, assistant solution) for SFT.
"""
import argparse
import hashlib
import json
import os
import sys
import types
import zipfile
from random import Random

WHEEL_SHA256 = "7f17a3eddb13c015d7d4a755ed576a061df889faf9468bcc2cca334ebe9e0435"
MODULES = ["reasoning_gym/arithmetic/gsm_symbolic/generators_00_49.py",
           "reasoning_gym/arithmetic/gsm_symbolic/generators_50_99.py"]


def load_generators(wheel):
    with open(wheel, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    if digest != WHEEL_SHA256:
        sys.exit(f"{wheel}: sha256 {digest} differs from the pinned {WHEEL_SHA256}")
    z = zipfile.ZipFile(wheel)
    pkg = types.ModuleType("reasoning_gym")
    pkg.__path__ = []
    utils = types.ModuleType("reasoning_gym.utils")
    exec(compile(z.read("reasoning_gym/utils.py"), "reasoning_gym/utils.py", "exec"), utils.__dict__)
    sys.modules["reasoning_gym"] = pkg
    sys.modules["reasoning_gym.utils"] = utils
    gens = {}
    for path in MODULES:
        mod = types.ModuleType(path)
        exec(compile(z.read(path), path, "exec"), mod.__dict__)
        for name, fn in mod.__dict__.items():
            if name.startswith("generate_") and name[9:].isdigit():
                gens[int(name[9:])] = fn
    return [gens[i] for i in sorted(gens)]


def make(gens, count, seed, start_id, exclude=frozenset()):
    items, i = [], 0
    while len(items) < count:
        template = i % len(gens)
        rng = Random(seed * 1_000_003 + i)
        i += 1
        try:
            ex = gens[template](rng, 1.0)
        except Exception:  # a few templates reject some draws; skip them
            continue
        meta = ex.get("metadata", ex)
        solution = meta.get("answer_cot") or ex.get("answer_cot")
        if not solution or "####" not in solution or ex["question"] in exclude:
            continue
        items.append({
            "id": start_id + len(items), "template": template, "question": ex["question"],
            "answer": str(ex["answer"]), "solution": solution,
            "messages": [{"role": "user", "content": ex["question"]}, {"role": "assistant", "content": solution}],
        })
    return items


def write(path, items):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        for it in items:
            fh.write(json.dumps(it, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheel")
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--seed", type=int, default=20261128)
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = ap.parse_args()
    gens = load_generators(args.wheel)
    assert len(gens) == 100, len(gens)
    train = make(gens, args.train, args.seed, 0)
    write(os.path.join(args.out, "train.jsonl"), train)
    # Other seeds for the test split, and no question shared with train.
    seen = frozenset(it["question"] for it in train)
    write(os.path.join(args.out, "test.jsonl"), make(gens, args.test, args.seed + 1, args.train, seen))


if __name__ == "__main__":
    main()
