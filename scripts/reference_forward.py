#!/usr/bin/env python3
"""Independent reference forward pass of a Qwen2/Llama-family model, or of an RWKV-7 hybrid
student (`model_type = "rwkv_hybrid"`: the layers in `wkv_layers` use the RWKV-7 time mixer of
SPEC §2, computed token by token), in numpy (float64).

Reads either a Hugging Face directory (config.json + model.safetensors, parsed here by hand)
or a llama.cpp GGUF file (through the `gguf` package's reader and dequantiser). For GGUF the
q/k weights are used as stored, with llama.cpp's interleaved rotary embedding, so agreement
with a rotate-half implementation on converted weights also checks the conversion.

    python3 scripts/reference_forward.py (--hf DIR | --gguf FILE) --ids 1,2,3[;4,5,6] --out LOGITS.f32

Writes the logits of every sequence and position as little-endian float32, row-major
[sequences, positions, vocab], and prints {"shape": [...]} as JSON.
"""
import argparse
import json
import sys

import numpy as np


def load_hf(path):
    with open(f"{path}/config.json") as fh:
        cfg = json.load(fh)
    with open(f"{path}/model.safetensors", "rb") as fh:
        raw = fh.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    w = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        buf = raw[base + a:base + b]
        if info["dtype"] == "F32":
            arr = np.frombuffer(buf, dtype="<f4")
        elif info["dtype"] == "BF16":
            arr = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] == "F16":
            arr = np.frombuffer(buf, dtype="<f2")
        else:
            sys.exit(f"unsupported dtype {info['dtype']}")
        w[name] = arr.astype(np.float64).reshape(info["shape"])
    c = cfg["hidden_size"]
    h = cfg["num_attention_heads"]
    spec = {
        "layers": cfg["num_hidden_layers"], "heads": h, "kv_heads": cfg.get("num_key_value_heads") or h,
        "head_dim": cfg.get("head_dim") or c // h, "eps": cfg.get("rms_norm_eps", 1e-6),
        "theta": cfg.get("rope_theta", 10000.0), "interleaved": False,
        "wkv_layers": cfg.get("wkv_layers", []) if cfg.get("model_type") == "rwkv_hybrid" else [],
        "gate": cfg.get("wkv_gate_form", "sigmoid" if cfg.get("wkv_has_gate", True) else "none"),
        "rope_rk": cfg.get("wkv_rope", False),
    }
    for i in spec["wkv_layers"]:
        prefix = f"model.layers.{i}.self_attn.time_mixer."
        spec[f"{i}.mixer"] = {k[len(prefix):]: v for k, v in w.items() if k.startswith(prefix)}
    names = {"embed": "model.embed_tokens.weight", "norm": "model.norm.weight",
             "head": "model.embed_tokens.weight" if cfg.get("tie_word_embeddings") else "lm_head.weight"}
    for i in range(spec["layers"]):
        p = f"model.layers.{i}"
        names.update({f"{i}.attn_norm": f"{p}.input_layernorm.weight", f"{i}.ffn_norm": f"{p}.post_attention_layernorm.weight",
                      f"{i}.q": f"{p}.self_attn.q_proj.weight", f"{i}.k": f"{p}.self_attn.k_proj.weight",
                      f"{i}.v": f"{p}.self_attn.v_proj.weight", f"{i}.o": f"{p}.self_attn.o_proj.weight",
                      f"{i}.q_bias": f"{p}.self_attn.q_proj.bias", f"{i}.k_bias": f"{p}.self_attn.k_proj.bias",
                      f"{i}.v_bias": f"{p}.self_attn.v_proj.bias",
                      f"{i}.gate": f"{p}.mlp.gate_proj.weight", f"{i}.up": f"{p}.mlp.up_proj.weight",
                      f"{i}.down": f"{p}.mlp.down_proj.weight"})
    return spec, {k: w[v] for k, v in names.items() if v in w}


def load_gguf(path):
    import gguf  # the llama.cpp project's own reader and dequantiser

    r = gguf.GGUFReader(path)

    def field(key):
        f = r.fields[key]
        return f.parts[f.data[0]].tolist()[0]

    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    w = {}
    for t in r.tensors:
        arr = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        w[t.name] = arr.reshape([int(d) for d in reversed(t.shape.tolist())])
    c = field(f"{arch}.embedding_length")
    h = field(f"{arch}.attention.head_count")
    spec = {
        "layers": field(f"{arch}.block_count"), "heads": h, "kv_heads": field(f"{arch}.attention.head_count_kv"),
        "head_dim": c // h, "eps": field(f"{arch}.attention.layer_norm_rms_epsilon"),
        "theta": field(f"{arch}.rope.freq_base"), "interleaved": True,
    }
    names = {"embed": "token_embd.weight", "norm": "output_norm.weight",
             "head": "output.weight" if "output.weight" in w else "token_embd.weight"}
    for i in range(spec["layers"]):
        for ours, theirs in [("attn_norm", "attn_norm"), ("ffn_norm", "ffn_norm"), ("q", "attn_q"), ("k", "attn_k"),
                             ("v", "attn_v"), ("o", "attn_output"), ("gate", "ffn_gate"), ("up", "ffn_up"),
                             ("down", "ffn_down")]:
            names[f"{i}.{ours}"] = f"blk.{i}.{theirs}.weight"
    return spec, {k: w[v] for k, v in names.items()}


def rms(x, weight, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def rope(x, theta, interleaved):
    # x: [heads, T, D]
    _, t, d = x.shape
    inv = (1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)).astype(np.float32).astype(np.float64)
    ang = np.arange(t, dtype=np.float64)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x1 * cos - x2 * sin
        out[..., 1::2] = x1 * sin + x2 * cos
        return out
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def time_mixer(p, x, v_first, spec):
    """SPEC §2 on x [T, C]; returns (out [T, C], v_first)."""
    t, c = x.shape
    h, n = spec["heads"], spec["head_dim"]
    prev = np.concatenate([np.zeros((1, c)), x[:-1]], 0)
    xx = prev - x
    mix = {name: x + xx * p[f"x_{name}"].reshape(c) for name in "rwkvag"}
    r = mix["r"] @ p["receptance.weight"].T + p.get("receptance.bias", 0.0)
    k = mix["k"] @ p["key.weight"].T + p.get("key.bias", 0.0)
    v = mix["v"] @ p["value.weight"].T + p.get("value.bias", 0.0)
    if k.shape[1] != c:  # grouped k/v: repeat each head for its group
        g = c // k.shape[1]
        k = np.repeat(k.reshape(t, -1, 1, n), g, axis=2).reshape(t, c)
        v = np.repeat(v.reshape(t, -1, 1, n), g, axis=2).reshape(t, c)
    z = p["w0"].reshape(c) + np.tanh(mix["w"] @ p["w1"]) @ p["w2"]
    w_raw = -np.logaddexp(0.0, -z) - 0.5
    if v_first is None:
        v_first = v
    else:
        v = v + (v_first - v) * sigmoid(p["v0"].reshape(c) + (mix["v"] @ p["v1"]) @ p["v2"])
    a = sigmoid(p["a0"].reshape(c) + (mix["a"] @ p["a1"]) @ p["a2"])
    gate = None
    if spec["gate"] != "none":
        gate = sigmoid(mix["g"] @ p["g1"]) @ p["g2"]
        if spec["gate"] == "one_plus":
            gate = gate + 1.0
    if spec["rope_rk"]:
        r = rope(r.reshape(t, h, n).transpose(1, 0, 2), spec["theta"], False).transpose(1, 0, 2).reshape(t, c)
        k = rope(k.reshape(t, h, n).transpose(1, 0, 2), spec["theta"], False).transpose(1, 0, 2).reshape(t, c)
    kk = (k * p["k_k"].reshape(c)).reshape(t, h, n)
    kk = kk / np.maximum(np.linalg.norm(kk, axis=-1, keepdims=True), 1e-12)
    k = k * (1.0 + (a - 1.0) * p["k_a"].reshape(c))
    decay = np.exp(-np.exp(w_raw)).reshape(t, h, n)
    rh, kh, vh, ah = (z_.reshape(t, h, n) for z_ in (r, k, v, a))
    y = np.zeros((t, h, n))
    for head in range(h):
        state = np.zeros((n, n))
        for s in range(t):
            alpha, beta = -kk[s, head], kk[s, head] * ah[s, head]
            state = state * decay[s, head][None, :] + np.outer(state @ alpha, beta) + np.outer(vh[s, head], kh[s, head])
            y[s, head] = state @ rh[s, head]
    if "ln_x.weight" in p:
        mean = y.mean(-1, keepdims=True)
        var = ((y - mean) ** 2).mean(-1, keepdims=True)
        y = ((y - mean) / np.sqrt(var + 64e-5)).reshape(t, c) * p["ln_x.weight"] + p["ln_x.bias"]
        y = y.reshape(t, h, n)
    y = y + (rh * kh * p["r_k"][None]).sum(-1, keepdims=True) * vh
    y = y.reshape(t, c)
    if gate is not None:
        y = y * gate
    return y @ p["output.weight"].T, v_first


def forward(spec, w, ids):
    h, kv, d = spec["heads"], spec["kv_heads"], spec["head_dim"]
    x = w["embed"][ids]
    t = len(ids)
    causal = np.triu(np.full((t, t), -np.inf), 1)
    v_first = None
    for i in range(spec["layers"]):
        a = rms(x, w[f"{i}.attn_norm"], spec["eps"])
        if i in spec.get("wkv_layers", []):
            out, v_first = time_mixer(spec[f"{i}.mixer"], a, v_first, spec)
            x = x + out
            m = rms(x, w[f"{i}.ffn_norm"], spec["eps"])
            g = m @ w[f"{i}.gate"].T
            x = x + ((g / (1.0 + np.exp(-g))) * (m @ w[f"{i}.up"].T)) @ w[f"{i}.down"].T
            continue
        q = a @ w[f"{i}.q"].T + w.get(f"{i}.q_bias", 0.0)
        k = a @ w[f"{i}.k"].T + w.get(f"{i}.k_bias", 0.0)
        v = a @ w[f"{i}.v"].T + w.get(f"{i}.v_bias", 0.0)
        q = rope(q.reshape(t, h, d).transpose(1, 0, 2), spec["theta"], spec["interleaved"])
        k = rope(k.reshape(t, kv, d).transpose(1, 0, 2), spec["theta"], spec["interleaved"])
        v = v.reshape(t, kv, d).transpose(1, 0, 2)
        k = np.repeat(k, h // kv, axis=0)
        v = np.repeat(v, h // kv, axis=0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(d) + causal
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = (s @ v).transpose(1, 0, 2).reshape(t, h * d)
        x = x + o @ w[f"{i}.o"].T
        m = rms(x, w[f"{i}.ffn_norm"], spec["eps"])
        g = m @ w[f"{i}.gate"].T
        x = x + ((g / (1.0 + np.exp(-g))) * (m @ w[f"{i}.up"].T)) @ w[f"{i}.down"].T
    return rms(x, w["norm"], spec["eps"]) @ w["head"].T


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf")
    src.add_argument("--gguf")
    ap.add_argument("--ids", required=True, help="comma-separated token ids; ';' between sequences of equal length")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    spec, w = load_hf(args.hf) if args.hf else load_gguf(args.gguf)
    seqs = [[int(v) for v in s.split(",")] for s in args.ids.split(";")]
    logits = np.stack([forward(spec, w, np.array(s)) for s in seqs]).astype("<f4")
    logits.tofile(args.out)
    print(json.dumps({"shape": list(logits.shape)}))


if __name__ == "__main__":
    main()
