"""A Llama whose decoder layers may differ in MLP width and attention heads.

This file is self-contained (it imports only transformers and torch) because it is copied verbatim into
every exported folder whose layers are heterogeneous, where stock transformers loads it with
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``. The toolkit itself imports it
from the package and never needs ``trust_remote_code``.

Why hand-written: transformers' ``LlamaConfig`` has one ``intermediate_size`` and one head count for all
layers; no kept library models per-layer widths. The stock ``LlamaAttention`` forward is already
shape-agnostic (it reshapes with ``-1`` heads) as long as the query/kv ratio is unchanged, so only the
module shapes need to change: the forward pass is Llama's own.
"""

from __future__ import annotations

from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM


class ElasticLlamaConfig(LlamaConfig):
    model_type = "elastic_llama"

    def __init__(self, layer_intermediate_sizes=None, layer_num_attention_heads=None, **kwargs):
        super().__init__(**kwargs)
        n = self.num_hidden_layers
        self.layer_intermediate_sizes = list(layer_intermediate_sizes or [self.intermediate_size] * n)
        self.layer_num_attention_heads = list(layer_num_attention_heads or [self.num_attention_heads] * n)
        if len(self.layer_intermediate_sizes) != n or len(self.layer_num_attention_heads) != n:
            raise ValueError("layer_intermediate_sizes/layer_num_attention_heads need one entry per layer")
        group = self.num_attention_heads // self.num_key_value_heads
        for i, h in enumerate(self.layer_num_attention_heads):
            if h <= 0 or h % group:
                raise ValueError(f"layer_num_attention_heads[{i}]={h} is not a positive multiple of the GQA group {group}")


def resize_llama_layers(model, intermediate_sizes, num_heads_per_layer) -> None:
    """Give each decoder layer of ``model`` its own MLP width and number of query heads (new empty modules)."""
    config = model.config
    group = config.num_attention_heads // config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    hidden = config.hidden_size
    for layer, inter, heads in zip(model.model.layers, intermediate_sizes, num_heads_per_layer):
        kv = heads // group
        bias = bool(getattr(config, "attention_bias", False))
        mlp_bias = bool(getattr(config, "mlp_bias", False))
        like = layer.self_attn.q_proj.weight
        kw = dict(device=like.device, dtype=like.dtype)
        attn = layer.self_attn
        attn.q_proj = nn.Linear(hidden, heads * head_dim, bias=bias, **kw)
        attn.k_proj = nn.Linear(hidden, kv * head_dim, bias=bias, **kw)
        attn.v_proj = nn.Linear(hidden, kv * head_dim, bias=bias, **kw)
        attn.o_proj = nn.Linear(heads * head_dim, hidden, bias=bias, **kw)
        mlp = layer.mlp
        mlp.gate_proj = nn.Linear(hidden, inter, bias=mlp_bias, **kw)
        mlp.up_proj = nn.Linear(hidden, inter, bias=mlp_bias, **kw)
        mlp.down_proj = nn.Linear(inter, hidden, bias=mlp_bias, **kw)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = inter


class ElasticLlamaForCausalLM(LlamaForCausalLM):
    config_class = ElasticLlamaConfig

    def __init__(self, config: ElasticLlamaConfig):
        super().__init__(config)
        resize_llama_layers(self, config.layer_intermediate_sizes, config.layer_num_attention_heads)
        self.post_init()


ElasticLlamaConfig.register_for_auto_class()
ElasticLlamaForCausalLM.register_for_auto_class("AutoModelForCausalLM")
