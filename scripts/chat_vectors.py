#!/usr/bin/env python3
"""Writes chat-template test vectors with Hugging Face transformers' own `apply_chat_template`.

    python3 scripts/chat_vectors.py NAME=MODEL_DIR [NAME=MODEL_DIR ...] > tests/data/chat_vectors.json

Each MODEL_DIR needs tokenizer.json and tokenizer_config.json (with `chat_template`). The
output holds, per tokenizer, its template source and, per conversation, the rendered text and
token ids; the Rust tests render the same conversations with minijinja and compare.
"""
import json
import sys

from transformers import AutoTokenizer

CONVERSATIONS = [
    ([{"role": "user", "content": "What is the capital of France?"}], True),
    ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}], True),
    ([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
      {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6."}], False),
    ([{"role": "user", "content": "  spaces\n\nand lines  "}, {"role": "assistant", "content": "ok\n"}], False),
    ([{"role": "user", "content": "Think first."},
      {"role": "assistant", "content": "<think>\nadd them\n</think>\n\nThe answer is 5."}], False),
]


def main():
    out = {}
    for arg in sys.argv[1:]:
        name, path = arg.split("=", 1)
        tok = AutoTokenizer.from_pretrained(path)
        cases = []
        for messages, gen in CONVERSATIONS:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            cases.append({"messages": messages, "add_generation_prompt": gen, "rendered": text, "ids": ids})
        out[name] = {"template": tok.chat_template, "bos_token": tok.bos_token, "eos_token": tok.eos_token, "cases": cases}
    json.dump(out, sys.stdout, indent=1, ensure_ascii=False)
    print()


if __name__ == "__main__":
    main()
