"""Extract a standalone sub-network from a parent, and save/load it as a Hugging Face folder.

``extract(parent, cfg, importance)`` returns a new model whose weight tensors are truly smaller (so
timings measure the real thing), built on the meta device and filled by indexing the parent's tensors:
no weights are reloaded and the parent is never modified (there is no "active sub-network" state).

Per kept layer, it keeps the ``cfg.mlp[i]`` most important MLP channels (rows of gate/up, columns of
down) and the ``cfg.heads[i] / G`` most important GQA head groups (the group's ``G`` query heads in
q_proj rows and o_proj columns, and its kv head in k_proj/v_proj rows); see :mod:`toolkit.space`.

Saved folders: a uniform sub-network is a plain ``LlamaConfig`` folder that stock transformers loads;
a heterogeneous one is an ``elastic_llama`` folder with ``modeling_elastic_llama.py`` beside it, loaded
by stock transformers only with ``trust_remote_code=True`` (the toolkit loads it without). Either way
``subnet.json`` records the sub-network and the parent it came from.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from toolkit.errors import UserError
from toolkit.fileio import atomic_directory, atomic_write_json
from toolkit.schema import parse_json, read_text_file
from toolkit.importance import Importance
from toolkit.models.geometry import group_size, head_dim, head_indices, meta_child
from toolkit.space import ParentShape, SearchSpace, SubnetConfig

_ATTN_BIAS_NAMES = ("q_proj", "k_proj", "v_proj")


def _layer_shapes(model) -> list[tuple[int, int]]:
    """(MLP width, query heads) of each layer of a (possibly heterogeneous) model."""
    hd = head_dim(model.config)
    return [(l.mlp.down_proj.in_features, l.self_attn.o_proj.in_features // hd) for l in model.model.layers]


def check_fits(parent, cfg: SubnetConfig) -> None:
    """Raise a one-line error naming the field if ``cfg`` does not fit inside ``parent`` (the one
    validator of :func:`toolkit.space.check_fits`, on the parent's real per-layer shapes)."""
    from toolkit.space import check_fits as check

    check(cfg, _layer_shapes(parent), group_size(parent.config))


def extract(parent, cfg: SubnetConfig, importance: Importance | None = None):
    """A standalone sub-network of ``parent`` (a LlamaForCausalLM) with the given shape.

    ``importance`` decides which channels/groups are kept; ``None`` keeps the first ones (use that for a
    super-network whose weights are already sorted by importance).
    """
    from toolkit.measure import torch_threads

    # Gathers are memory copies: on a CPU, intra-op threads only add synchronisation (a small gather can
    # take 100x longer on 2 threads than on 1 when the other core is busy).
    # Scoped: the caller's thread count is back when this returns or raises.
    with torch_threads(1 if parent.device.type == "cpu" else None):
        return _extract(parent, cfg, importance)


@torch.no_grad()
def _extract(parent, cfg: SubnetConfig, importance: Importance | None):
    check_fits(parent, cfg)
    if importance is None:
        importance = Importance.identity(parent.config)
    if importance.num_layers != len(parent.model.layers):
        raise UserError(f"importance: has {importance.num_layers} layers, the parent has {len(parent.model.layers)}")
    child = meta_child(parent.config, cfg)
    config = child.config
    group, hd = group_size(parent.config), head_dim(parent.config)
    state: dict[str, torch.Tensor] = {}
    src = parent.model
    state["model.embed_tokens.weight"] = src.embed_tokens.weight.detach().clone()
    state["model.norm.weight"] = src.norm.weight.detach().clone()
    if not config.tie_word_embeddings:
        state["lm_head.weight"] = parent.lm_head.weight.detach().clone()
    for new_i, (old_i, width, heads) in enumerate(zip(cfg.layers, cfg.mlp, cfg.heads)):
        layer = src.layers[old_i]
        p = f"model.layers.{new_i}."
        ch = importance.mlp_keep(old_i, width)
        groups = importance.groups_keep(old_i, heads // group)
        q_idx, kv_idx = head_indices(groups, group, hd)  # rows of q and cols of o, rows of k/v
        attn, mlp = layer.self_attn, layer.mlp
        state[p + "self_attn.q_proj.weight"] = attn.q_proj.weight.index_select(0, q_idx)
        state[p + "self_attn.k_proj.weight"] = attn.k_proj.weight.index_select(0, kv_idx)
        state[p + "self_attn.v_proj.weight"] = attn.v_proj.weight.index_select(0, kv_idx)
        state[p + "self_attn.o_proj.weight"] = attn.o_proj.weight.index_select(1, q_idx)
        for name, idx in zip(_ATTN_BIAS_NAMES, (q_idx, kv_idx, kv_idx)):
            b = getattr(attn, name).bias
            if b is not None:
                state[p + f"self_attn.{name}.bias"] = b.index_select(0, idx)
        if attn.o_proj.bias is not None:
            state[p + "self_attn.o_proj.bias"] = attn.o_proj.bias.detach().clone()
        state[p + "mlp.gate_proj.weight"] = mlp.gate_proj.weight.index_select(0, ch)
        state[p + "mlp.up_proj.weight"] = mlp.up_proj.weight.index_select(0, ch)
        state[p + "mlp.down_proj.weight"] = mlp.down_proj.weight.index_select(1, ch)
        for name in ("gate_proj", "up_proj"):
            b = getattr(mlp, name).bias
            if b is not None:
                state[p + f"mlp.{name}.bias"] = b.index_select(0, ch)
        if mlp.down_proj.bias is not None:
            state[p + "mlp.down_proj.bias"] = mlp.down_proj.bias.detach().clone()
        state[p + "input_layernorm.weight"] = layer.input_layernorm.weight.detach().clone()
        state[p + "post_attention_layernorm.weight"] = layer.post_attention_layernorm.weight.detach().clone()
    missing, unexpected = child.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"extract: state mismatch (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if config.tie_word_embeddings:
        child.lm_head.weight = child.model.embed_tokens.weight
    # Non-persistent buffers (rotary inv_freq) are not in the state dict: take the parent's.
    child.model.rotary_emb = copy.deepcopy(src.rotary_emb)
    for new_i, layer in enumerate(child.model.layers):
        layer.self_attn.layer_idx = new_i
    child.generation_config = copy.deepcopy(parent.generation_config)
    return child.to(parent.dtype).eval()


# -- save / load ----------------------------------------------------------------------------------
def save_subnet(model, folder: str | Path, tokenizer=None, cfg: SubnetConfig | None = None,
                parent_hash: str | None = None, overwrite: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Write a sub-network as a HF folder (safetensors), atomically."""
    folder = Path(folder)
    with atomic_directory(folder, overwrite=overwrite) as tmp:
        write_subnet(model, tmp, tokenizer, cfg, parent_hash, extra)
    return folder


def write_subnet(model, tmp: Path, tokenizer=None, cfg: SubnetConfig | None = None, parent_hash: str | None = None,
                 extra: dict[str, Any] | None = None) -> None:
    """Write a sub-network's HF files into the (existing, temporary) folder ``tmp``."""
    tmp = Path(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    if model.config.model_type == "elastic_llama":
        # save_pretrained copies the modeling file for classes registered for auto classes; make sure.
        from toolkit.models import modeling_elastic_llama

        target = tmp / "modeling_elastic_llama.py"
        if not target.exists():
            shutil.copy(modeling_elastic_llama.__file__, target)
        cfg_json = json.loads((tmp / "config.json").read_text())
        cfg_json["auto_map"] = {
            "AutoConfig": "modeling_elastic_llama.ElasticLlamaConfig",
            "AutoModelForCausalLM": "modeling_elastic_llama.ElasticLlamaForCausalLM",
        }
        atomic_write_json(tmp / "config.json", cfg_json)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if cfg is not None:
        atomic_write_json(tmp / "subnet.json", {"config": cfg.to_dict(), "parent_hash": parent_hash, **(extra or {})})


def parent_shape(model) -> ParentShape:
    return ParentShape.from_hf_config(model.config)


def default_space(model, importance: Importance | None = None, **kw) -> SearchSpace:
    """The default search space of a loaded parent (layer order from block influence when known)."""
    order = importance.layer_order() if importance is not None else None
    return SearchSpace.from_parent(parent_shape(model), layer_order=order, **kw)


def model_space(loaded, importance: Importance | None = None) -> SearchSpace:
    """The search space a loaded model is searched in: the one a super-network was trained for (its
    ``finetune.json``), else :func:`default_space`. It takes no space options on purpose: sub-networks
    outside a super-network's trained range were never trained and collapse, so a wider space would be
    searching noise (build one with :func:`default_space` to search a plain model differently)."""
    trained = Path(loaded.folder) / "finetune.json"
    if trained.is_file():
        data = parse_json(read_text_file(trained), str(trained))
        if isinstance(data, dict) and "search_space" in data:
            space = SearchSpace.from_dict(data["search_space"], str(trained))
            if space.parent != parent_shape(loaded.model):
                raise UserError(f"{trained}: search_space.parent: does not match the model's shape")
            return space
    return default_space(loaded.model, importance)
