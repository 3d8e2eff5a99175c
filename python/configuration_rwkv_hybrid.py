"""Configuration of an RWKV-7 hybrid exported by rwkvinside (`runner`'s `convert` step).

The fields are the base model's (Qwen2 or Llama family) plus those of the converted layers:
`wkv_layers` (indices of the layers whose attention was replaced by RWKV-7 time mixing),
`head_size`, `head_size_divisor`, `wkv_lora`, `wkv_gate_form`, `wkv_has_group_norm`,
`wkv_rope`, `wkv_bias`. Written by the runner; loaded with `trust_remote_code=True`.
"""

from transformers import PretrainedConfig


class RwkvHybridConfig(PretrainedConfig):
    model_type = "rwkv_hybrid"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(
        self,
        vocab_size=32000,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        head_dim=None,
        hidden_act="silu",
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        rope_scaling=None,
        attention_bias=None,
        mlp_bias=False,
        base_model_type="qwen2",
        wkv_layers=(),
        head_size=64,
        head_size_divisor=8,
        wkv_version=7,
        wkv_has_gate=True,
        wkv_gate_form="sigmoid",
        wkv_has_group_norm=True,
        wkv_rope=False,
        wkv_gqa="repeat",
        wkv_bias=None,
        wkv_lora=None,
        use_cache=True,
        tie_word_embeddings=False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        if rope_scaling is not None:  # only plain rotary embeddings are exported
            self.rope_scaling = rope_scaling
        self.base_model_type = base_model_type
        # Qwen2's projections carry biases, Llama's do not (unless the config says so).
        self.attention_bias = (
            attention_bias if attention_bias is not None else base_model_type == "qwen2"
        )
        self.mlp_bias = mlp_bias
        self.wkv_layers = [int(i) for i in wkv_layers]
        self.head_size = head_size
        self.head_size_divisor = head_size_divisor
        self.wkv_version = wkv_version
        self.wkv_has_gate = wkv_has_gate
        self.wkv_gate_form = wkv_gate_form
        self.wkv_has_group_norm = wkv_has_group_norm
        self.wkv_rope = wkv_rope
        self.wkv_gqa = wkv_gqa
        self.wkv_bias = self.attention_bias if wkv_bias is None else wkv_bias
        self.wkv_lora = dict(wkv_lora or {})
        self.use_cache = use_cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
