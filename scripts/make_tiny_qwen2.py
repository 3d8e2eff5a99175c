#!/usr/bin/env python3
"""Writes a small, randomly initialised Qwen2 checkpoint in Hugging Face layout.

It has the structure of Qwen2.5 (biases on q/k/v, grouped-query attention, tied embeddings)
at toy size, and a byte-level BPE tokenizer without merges (256 byte tokens + ChatML special
tokens), so the whole Qwen code path can be tested without downloading anything.

    python3 scripts/make_tiny_qwen2.py OUT_DIR [--seed 0] [--dtype f32|bf16] [--layers 2]
                                       [--hidden 64] [--heads 4] [--kv-heads 2]
                                       [--intermediate 160] [--vocab N] [--gguf FILE]

Needs only numpy; `--gguf` (the same weights and tokenizer as a llama.cpp `qwen2` GGUF file,
f32) also needs the `gguf` package.
"""
import argparse
import json
import os

import numpy as np

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_safetensors(path, tensors, dtype):
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name], dtype=np.float32)
        if dtype == "bf16":
            bits = arr.view(np.uint32)
            # round to nearest even, as torch does
            bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            blob, st = bits.tobytes(), "BF16"
        else:
            blob, st = arr.tobytes(), "F32"
        header[name] = {"dtype": st, "shape": list(arr.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=160)
    ap.add_argument("--vocab", type=int, default=0,
                    help="embedding rows (default: the tokenizer's 259, padded to 16); larger "
                         "values give a real model's embedding size, the extra rows unused")
    ap.add_argument("--gguf", help="also write the model as a qwen2 GGUF file here")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    vocab = 256 + len(SPECIAL)
    vocab_padded = max((vocab + 15) // 16 * 16, args.vocab)
    c, h, kv = args.hidden, args.heads, args.kv_heads
    d = c // h
    f = args.intermediate

    def mat(out, inp):
        return rng.normal(0.0, 1.0 / np.sqrt(inp), size=(out, inp))

    t = {"model.embed_tokens.weight": rng.normal(0.0, 0.5, size=(vocab_padded, c)),
         "model.norm.weight": rng.uniform(0.8, 1.2, size=c)}
    for i in range(args.layers):
        p = f"model.layers.{i}"
        t[f"{p}.input_layernorm.weight"] = rng.uniform(0.8, 1.2, size=c)
        t[f"{p}.post_attention_layernorm.weight"] = rng.uniform(0.8, 1.2, size=c)
        for name, out in [("q_proj", h * d), ("k_proj", kv * d), ("v_proj", kv * d)]:
            t[f"{p}.self_attn.{name}.weight"] = mat(out, c)
            t[f"{p}.self_attn.{name}.bias"] = rng.normal(0.0, 0.1, size=out)
        t[f"{p}.self_attn.o_proj.weight"] = mat(c, h * d)
        t[f"{p}.mlp.gate_proj.weight"] = mat(f, c)
        t[f"{p}.mlp.up_proj.weight"] = mat(f, c)
        t[f"{p}.mlp.down_proj.weight"] = mat(c, f)

    os.makedirs(args.out, exist_ok=True)
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "vocab_size": vocab_padded, "hidden_size": c, "intermediate_size": f,
        "num_hidden_layers": args.layers, "num_attention_heads": h, "num_key_value_heads": kv,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": True, "hidden_act": "silu", "attention_dropout": 0.0,
        "bos_token_id": 256, "eos_token_id": 258, "torch_dtype": "float32" if args.dtype == "f32" else "bfloat16",
        "use_sliding_window": False, "sliding_window": None, "rope_scaling": None,
    }
    with open(os.path.join(args.out, "config.json"), "w") as fh:
        json.dump(config, fh, indent=2)
    write_safetensors(os.path.join(args.out, "model.safetensors"), t, args.dtype)

    byte_chars = bytes_to_unicode()
    vocab_map = {byte_chars[b]: b for b in range(256)}
    added = [{"id": 256 + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, s in enumerate(SPECIAL)]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab_map, "merges": []},
    }
    with open(os.path.join(args.out, "tokenizer.json"), "w") as fh:
        json.dump(tokenizer, fh, ensure_ascii=False)
    tok_config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                  "chat_template": CHATML, "model_max_length": 4096,
                  "tokenizer_class": "Qwen2Tokenizer", "add_bos_token": False}
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as fh:
        json.dump(tok_config, fh, indent=2)
    with open(os.path.join(args.out, "generation_config.json"), "w") as fh:
        json.dump({"bos_token_id": 256, "eos_token_id": [258, 256], "do_sample": False}, fh, indent=2)
    if args.gguf:
        write_gguf(args.gguf, config, t, byte_chars, vocab_padded)


def write_gguf(path, config, t, byte_chars, vocab_padded):
    """The checkpoint as llama.cpp writes a Qwen2 model: `blk.N.*` names, q/k rows as they are
    (Qwen2 uses the rotate-half rotary embedding), biases, and the tokenizer as metadata."""
    import gguf

    w = gguf.GGUFWriter(path, "qwen2")
    w.add_block_count(config["num_hidden_layers"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_freq_base(config["rope_theta"])
    # 256 byte tokens, the special tokens, one merged token (GGUF needs a non-empty merge list)
    # and unused padding rows up to the embedding size.
    tokens = [byte_chars[b] for b in range(256)] + SPECIAL + ["ĠĠ"]
    types = [1] * 256 + [3] * len(SPECIAL) + [1]
    while len(tokens) < vocab_padded:
        tokens.append(f"<|unused_{len(tokens)}|>")
        types.append(5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["Ġ Ġ"])
    w.add_bos_token_id(config["bos_token_id"])
    w.add_eos_token_id(config["eos_token_id"])
    w.add_chat_template(CHATML)
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for name in sorted(t):
        if name == "model.embed_tokens.weight":
            g = "token_embd.weight"
        elif name == "model.norm.weight":
            g = "output_norm.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            part, suffix = rest.rsplit(".", 1)
            g = f"blk.{layer}.{names[part]}.{suffix}"
        w.add_tensor(g, np.ascontiguousarray(t[name], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
