"""The model's geometry, in one place: GQA group size, head dim, head-group index maps, child skeletons.

A Llama-family config with ``H`` query heads and ``K`` key/value heads has GQA groups of ``G = H / K``
query heads (query head ``j*G + r`` reads kv head ``j``; see :mod:`toolkit.space`). Everything that
keeps, drops, permutes or slices heads goes through the numbers and index maps here:

* :func:`head_dim` and :func:`group_size` read a transformers config. The record that carries these
  numbers for a parent is :class:`toolkit.space.ParentShape` (``ParentShape.from_hf_config`` reads them
  with these functions); they are for code that holds a config, not a shape.
* :func:`head_indices`: the rows of q (= columns of o) and the rows of k / v that belong to some GQA
  groups, in the groups' order (extraction gathers them; the super-network sort permutes by them).
* :func:`subnet_hf_config` and :func:`meta_child`: a sub-network's transformers config and its module
  structure on the meta device (no memory), filled afterwards by extraction (copies) or by the
  super-network's shared-weight forward (views of the parent).

``modeling_elastic_llama.py`` repeats the two config formulas on purpose: it is copied verbatim into
exported folders and loaded there without the toolkit, so it may import only torch and transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from toolkit.space import SubnetConfig


def head_dim(config: Any) -> int:
    """Width of one attention head: the config's ``head_dim`` when set, else ``hidden_size / heads``."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def group_size(config: Any) -> int:
    """Query heads per kv head (``G``); 1 without GQA (no ``num_key_value_heads``)."""
    heads = config.num_attention_heads
    return heads // (getattr(config, "num_key_value_heads", None) or heads)


def head_indices(groups: "torch.Tensor", group: int, head_dim: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(rows of q / columns of o, rows of k / v) of the kv groups ``groups`` (1-D indices), in that order."""
    import torch

    kv_idx = (groups[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
    q_heads = (groups[:, None] * group + torch.arange(group)).reshape(-1)
    q_idx = (q_heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
    return q_idx, kv_idx


def subnet_hf_config(parent_config, cfg: "SubnetConfig"):
    """The transformers config of a sub-network: plain Llama if uniform, elastic_llama otherwise."""
    from transformers import LlamaConfig

    from toolkit.models.modeling_elastic_llama import ElasticLlamaConfig

    base = parent_config.to_dict()
    for key in ("layer_intermediate_sizes", "layer_num_attention_heads", "auto_map", "architectures",
                "model_type", "transformers_version", "_name_or_path", "quantization_config", "dtype", "torch_dtype"):
        base.pop(key, None)
    group = group_size(parent_config)
    base["head_dim"] = head_dim(parent_config)  # must stay explicit: hidden_size // heads changes with heads
    base["num_hidden_layers"] = cfg.depth
    base.pop("layer_types", None)
    if cfg.is_uniform():
        base.update(intermediate_size=cfg.mlp[0], num_attention_heads=cfg.heads[0], num_key_value_heads=cfg.heads[0] // group)
        config = LlamaConfig(**base)
        config.architectures = ["LlamaForCausalLM"]
    else:
        # Keep the parent's head counts as the reference for the GQA ratio; per-layer lists hold the truth.
        base.update(intermediate_size=max(cfg.mlp))
        config = ElasticLlamaConfig(layer_intermediate_sizes=list(cfg.mlp), layer_num_attention_heads=list(cfg.heads), **base)
        config.architectures = ["ElasticLlamaForCausalLM"]
    config._attn_implementation = parent_config._attn_implementation
    return config


def meta_child(parent_config, cfg: "SubnetConfig"):
    """The sub-network's model on the meta device (shapes only, no storage): a ``LlamaForCausalLM`` if
    uniform, else an ``ElasticLlamaForCausalLM``. Its ``config`` is :func:`subnet_hf_config`'s."""
    import torch
    from transformers import LlamaForCausalLM

    from toolkit.models.modeling_elastic_llama import ElasticLlamaForCausalLM

    config = subnet_hf_config(parent_config, cfg)
    cls = LlamaForCausalLM if cfg.is_uniform() else ElasticLlamaForCausalLM
    with torch.device("meta"):
        return cls(config)
