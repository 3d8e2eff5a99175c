"""An RWKV-7 hybrid exported by rwkvinside, as a `transformers` causal language model.

The layers listed in `config.wkv_layers` use RWKV-7 ("x070") time mixing instead of attention;
the others are the base model's (Qwen2 / Llama) attention layers. Every layer keeps its RMSNorms
and SwiGLU MLP. The computation is the one the runner trains (its SPEC §2):

1. token shift `xx = x_{t-1} - x`, six mixes `x_* = x + xx * mu_*`;
2. `r = x_r W_r`, `k = x_k W_k`, `v = x_v W_v` (grouped k/v heads repeated per group);
3. decay `w = exp(-exp(-softplus(-(w0 + tanh(x_w W1) W2)) - 0.5))`, in (0.545, 1);
4. value residual `v += (v_first - v) * sigmoid(v0 + (x_v V1) V2)` after the first converted
   layer, whose `v` is `v_first`;
5. `a = sigmoid(a0 + (x_a A1) A2)`, removal key `kk = L2norm(k * k_k)` per head,
   `k *= 1 + (a - 1) * k_a`;
6. gate `g = sigmoid(x_g G1) G2` (or `1 + ...`, or none); optional rotary embedding of r, k;
7. WKV-7 per head, state `S` (N x N, float32):
   `S_t = S_{t-1} (diag(w_t) - kk_t^T (a_t kk_t)) + v_t^T k_t`, `y_t = S_t r_t`;
8. per-head GroupNorm (eps = 1e-5 * head_size_divisor^2), bonus `y += sum(r k r_k) v`,
   `out = (y g) W_o`.

Generation keeps a `RwkvHybridCache`: keys and values for attention layers, the last token's
input and the WKV state for converted layers, so the cost of a new token does not grow with
the context in converted layers. The recurrence runs as a float32 loop over tokens in PyTorch;
on CUDA, flash-linear-attention's `chunk_rwkv7` is used when it is installed (set
`RWKV_HYBRID_NO_FLA=1` to keep the loop).
"""

import math
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

try:
    from .configuration_rwkv_hybrid import RwkvHybridConfig
except ImportError:  # loaded as a plain module (tests)
    from configuration_rwkv_hybrid import RwkvHybridConfig


class RwkvHybridCache:
    """What generation carries between calls, per layer: attention keys/values
    `[B, KV heads, T, D]`, or the converted layer's last input `[B, C]` and WKV state
    `[B, H, N, N]` (float32, rows index values, columns keys)."""

    is_compileable = False

    def __init__(self, num_layers: int):
        self.keys = [None] * num_layers
        self.values = [None] * num_layers
        self.shift = [None] * num_layers
        self.wkv = [None] * num_layers
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reorder_cache(self, beam_idx: torch.LongTensor):
        """Selects batch rows (beam search)."""
        for lst in (self.keys, self.values, self.shift, self.wkv):
            for i, t in enumerate(lst):
                if t is not None:
                    lst[i] = t.index_select(0, beam_idx.to(t.device))
        return self

    def state_bytes(self) -> int:
        """Bytes held, by all layers together."""
        total = 0
        for lst in (self.keys, self.values, self.shift, self.wkv):
            total += sum(t.numel() * t.element_size() for t in lst if t is not None)
        return total


@dataclass
class RwkvHybridOutput(ModelOutput):
    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    cache: Optional[RwkvHybridCache] = None
    hidden_states: Optional[tuple] = None


class RmsNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary_tables(theta: float, dim: int, positions: torch.Tensor, dtype):
    """cos/sin `[B, T, dim]` for integer positions `[B, T]` (rotate-half convention)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    inv_freq = inv_freq.float().to(positions.device)
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x, cos, sin):
    """`x` `[B, H, T, D]`; cos/sin `[B, T, D]`."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def repeat_heads(x, groups: int):
    """`[B, KV, T, D]` -> `[B, KV * groups, T, D]`."""
    if groups == 1:
        return x
    b, kv, t, d = x.shape
    return x[:, :, None].expand(b, kv, groups, t, d).reshape(b, kv * groups, t, d)


class Mlp(nn.Module):
    def __init__(self, config):
        super().__init__()
        c, f, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(c, f, bias=bias)
        self.up_proj = nn.Linear(c, f, bias=bias)
        self.down_proj = nn.Linear(f, c, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Attention(nn.Module):
    """The base model's grouped-query attention with rotary embeddings."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.theta = config.rope_theta
        c, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(c, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(c, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(c, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, c, bias=False)

    def forward(self, x, positions, key_mask, cache):
        b, t, _ = x.shape
        d = self.head_dim
        q = self.q_proj(x).view(b, t, self.heads, d).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, d).transpose(1, 2)
        cos, sin = rotary_tables(self.theta, d, positions, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            i = self.layer_idx
            if cache.keys[i] is not None:
                k = torch.cat([cache.keys[i], k], dim=2)
                v = torch.cat([cache.values[i], v], dim=2)
            cache.keys[i], cache.values[i] = k, v
        groups = self.heads // self.kv_heads
        k, v = repeat_heads(k, groups), repeat_heads(v, groups)
        total = k.shape[2]
        # Query t sits at absolute index past + t: it sees keys up to itself that are not padding.
        past = total - t
        qi = torch.arange(t, device=x.device)[:, None] + past
        kj = torch.arange(total, device=x.device)[None, :]
        allowed = (kj <= qi)[None, None]
        if key_mask is not None:
            allowed = allowed & key_mask[:, None, None, :total].bool()
        # A padding query that sees nothing attends to itself (its output is never used).
        allowed = allowed | (kj == qi)[None, None]
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) / math.sqrt(d)
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        y = torch.matmul(probs, v.float()).to(x.dtype)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.heads * d))


def wkv7_loop(r, w, k, v, a, b, state, mask):
    """The WKV-7 recurrence, float32, `[B, T, H, N]` inputs, state `[B, H, N, N]`.
    `mask` `[B, T]` (or None): masked tokens leave the state unchanged and output 0."""
    bsz, t, h, n = r.shape
    if state is None:
        state = torch.zeros(bsz, h, n, n, dtype=torch.float32, device=r.device)
    ys = []
    for i in range(t):
        sa = torch.einsum("bhij,bhj->bhi", state, a[:, i])
        new = (
            state * w[:, i, :, None, :]
            + sa[..., None] * b[:, i, :, None, :]
            + v[:, i, :, :, None] * k[:, i, :, None, :]
        )
        if mask is not None:
            m = mask[:, i].to(torch.float32)[:, None, None, None]
            new = new * m + state * (1.0 - m)
        state = new
        y = torch.einsum("bhij,bhj->bhi", state, r[:, i])
        if mask is not None:
            y = y * mask[:, i].to(torch.float32)[:, None, None]
        ys.append(y)
    return torch.stack(ys, dim=1), state


def _fla_chunk_rwkv7():
    if os.environ.get("RWKV_HYBRID_NO_FLA"):
        return None
    try:
        from fla.ops.rwkv7 import chunk_rwkv7
    except Exception:
        return None
    return chunk_rwkv7


def wkv7(r, w, k, v, a, b, state, mask):
    """WKV-7: flash-linear-attention's chunked kernel on CUDA without padding when installed
    (it takes the log-decay and keeps its state as `[B, H, key, value]`, the transpose of
    ours), the float32 loop otherwise."""
    fla = _fla_chunk_rwkv7() if r.is_cuda and mask is None else None
    if fla is not None:
        y, state = fla(
            r=r, w=torch.log(w), k=k, v=v, a=a, b=b, scale=1.0,
            initial_state=None if state is None else state.transpose(-1, -2).contiguous(),
            output_final_state=True,
        )
        return y.float(), state.float().transpose(-1, -2).contiguous()
    return wkv7_loop(r, w, k, v, a, b, state, mask)


class TimeMixer(nn.Module):
    """RWKV-7 time mixing in place of attention (module docstring, steps 1-8)."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        c = config.hidden_size
        n = config.head_size
        self.n = n
        self.h = c // n
        lora = config.wkv_lora
        kv_width = c if config.wkv_gqa == "expand" else config.num_key_value_heads * config.head_dim
        self.kv_heads = kv_width // n
        self.gate_form = config.wkv_gate_form if config.wkv_has_gate else "none"
        self.group_norm = config.wkv_has_group_norm
        self.eps = 1e-5 * config.head_size_divisor ** 2
        self.rope = config.wkv_rope
        self.theta = config.rope_theta
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a"):
            setattr(self, name, nn.Parameter(torch.zeros(1, 1, c)))
        for name, rank in (("w", lora["decay"]), ("a", lora["a"]), ("v", lora["v"])):
            setattr(self, name + "1", nn.Parameter(torch.zeros(c, rank)))
            setattr(self, name + "2", nn.Parameter(torch.zeros(rank, c)))
        if self.gate_form != "none":
            self.g1 = nn.Parameter(torch.zeros(c, lora["gate"]))
            self.g2 = nn.Parameter(torch.zeros(lora["gate"], c))
        self.r_k = nn.Parameter(torch.zeros(self.h, n))
        bias = config.wkv_bias
        self.receptance = nn.Linear(c, c, bias=bias)
        self.key = nn.Linear(c, kv_width, bias=bias)
        self.value = nn.Linear(c, kv_width, bias=bias)
        self.output = nn.Linear(c, c, bias=False)
        if self.group_norm:
            self.ln_x = nn.GroupNorm(self.h, c, eps=self.eps)

    def _heads(self, x):
        bsz, t, _ = x.shape
        return x.view(bsz, t, -1, self.n)

    def _repeat(self, x):
        if self.kv_heads == self.h:
            return x
        bsz, t, _ = x.shape
        g = self.h // self.kv_heads
        return x.view(bsz, t, self.kv_heads, 1, self.n).expand(bsz, t, self.kv_heads, g, self.n).reshape(bsz, t, -1)

    def forward(self, x, v_first, positions, mask, cache):
        bsz, t, c = x.shape
        i = self.layer_idx
        shift = cache.shift[i] if cache is not None and cache.shift[i] is not None else x.new_zeros(bsz, c)
        prev = torch.cat([shift[:, None], x[:, :-1]], dim=1)
        xx = prev - x
        xr, xw, xk, xv, xa, xg = (x + xx * m for m in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))
        r = self.receptance(xr)
        w_raw = -F.softplus(-(self.w0 + torch.tanh(xw @ self.w1) @ self.w2)) - 0.5
        k = self._repeat(self.key(xk))
        v = self._repeat(self.value(xv))
        if v_first is None:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = None
        if self.gate_form == "sigmoid":
            g = torch.sigmoid(xg @ self.g1) @ self.g2
        elif self.gate_form == "one_plus":
            g = 1 + torch.sigmoid(xg @ self.g1) @ self.g2
        if self.rope:
            cos, sin = rotary_tables(self.theta, self.n, positions, r.dtype)
            rot = lambda z: apply_rotary(self._heads(z).transpose(1, 2), cos, sin).transpose(1, 2).reshape(bsz, t, c)
            r, k = rot(r), rot(k)
        kk = F.normalize(self._heads(k * self.k_k).float(), dim=-1, eps=1e-12)
        k = k * (1 + (a - 1) * self.k_a)
        w = torch.exp(-torch.exp(w_raw.float()))
        f32 = lambda z: self._heads(z).float()
        state = cache.wkv[i] if cache is not None else None
        y, state = wkv7(f32(r), self._heads(w), f32(k), f32(v), -kk, kk * f32(a), state, mask)
        if cache is not None:
            cache.shift[i] = x[:, -1].detach()
            cache.wkv[i] = state
        y = y.to(x.dtype)
        if self.group_norm:
            y = self.ln_x(y.reshape(bsz * t, c)).view(bsz, t, self.h, self.n)
        bonus = (self._heads(r) * self._heads(k) * self.r_k).sum(-1, keepdim=True) * self._heads(v)
        y = (y + bonus).reshape(bsz, t, c)
        if g is not None:
            y = y * g
        return self.output(y), v_first


class DecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.input_layernorm = RmsNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RmsNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = Mlp(config)
        self.converted = layer_idx in config.wkv_layers
        if self.converted:
            self.self_attn = nn.Module()
            self.self_attn.time_mixer = TimeMixer(config, layer_idx)
        else:
            self.self_attn = Attention(config, layer_idx)

    def forward(self, x, v_first, positions, mask, cache):
        h = self.input_layernorm(x)
        if self.converted:
            h, v_first = self.self_attn.time_mixer(h, v_first, positions, mask, cache)
        else:
            h = self.self_attn(h, positions, mask, cache)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, v_first


class RwkvHybridPreTrainedModel(PreTrainedModel):
    config_class = RwkvHybridConfig
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer"]
    supports_gradient_checkpointing = False

    def _init_weights(self, module):
        # Every weight comes from the checkpoint; fresh models are for tests only.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)


class RwkvHybridModel(RwkvHybridPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        scaling = getattr(config, "rope_scaling", None)
        if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
            raise ValueError(f"rope_scaling {scaling} is not supported by this export")
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RmsNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, output_hidden_states=False):
        bsz, t = input_ids.shape
        past = cache.seen_tokens if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=input_ids.device)[None].expand(bsz, t)
        # The recurrence skips padding of the new tokens; attention masks keys over all tokens.
        new_mask = None
        if attention_mask is not None:
            new_mask = attention_mask[:, -t:]
            if bool(new_mask.all()):
                new_mask = None
        x = self.embed_tokens(input_ids)
        hidden = [x] if output_hidden_states else None
        v_first = None
        for layer in self.layers:
            if layer.converted:
                x, v_first = layer(x, v_first, position_ids, new_mask, cache)
            else:
                x, _ = layer(x, None, position_ids, attention_mask, cache)
            if hidden is not None:
                hidden.append(x)
        if cache is not None:
            cache.seen_tokens += t
        return self.norm(x), hidden


class RwkvHybridForCausalLM(RwkvHybridPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.model = RwkvHybridModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        past_key_values=None,
        labels=None,
        use_cache=None,
        output_hidden_states=None,
        return_dict=None,
        logits_to_keep=0,
        **kwargs,
    ):
        if input_ids is None:
            raise ValueError("this model takes input_ids")
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, RwkvHybridCache):
            cache = None  # a cache object of another kind: start afresh
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = RwkvHybridCache(self.config.num_hidden_layers)
        hidden, all_hidden = self.model(
            input_ids, attention_mask, position_ids, cache if use_cache else None, bool(output_hidden_states)
        )
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        cache = cache if use_cache else None
        return RwkvHybridOutput(
            loss=loss,
            logits=logits,
            cache=cache,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
        )

    def prepare_inputs_for_generation(
        self, input_ids, cache=None, past_key_values=None, attention_mask=None, use_cache=True, **kwargs
    ):
        cache = cache if cache is not None else past_key_values
        if not isinstance(cache, RwkvHybridCache):
            cache = None
        if cache is not None:
            input_ids = input_ids[:, cache.seen_tokens:]
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "cache": cache,
            "use_cache": use_cache,
        }
        position_ids = kwargs.get("position_ids")
        if position_ids is not None:
            inputs["position_ids"] = position_ids[:, -input_ids.shape[1]:]
        return inputs

    def _reorder_cache(self, cache, beam_idx):
        return cache.reorder_cache(beam_idx)


