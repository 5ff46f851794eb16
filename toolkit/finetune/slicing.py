"""Sort once, then slice: the super-network's shared weights.

**Sort once.** :func:`sort_parent` permutes every layer's MLP channels (rows of gate/up, columns of down)
and GQA head groups (a group's query heads in q rows and o columns, its kv head in k/v rows) so the most
important come first. The permutation is function-preserving (the full network computes exactly what
it did). Afterwards every sub-network's weights are *prefixes* of the super-network's tensors, and the
returned importance has strictly descending channel/group scores, so :func:`toolkit.elastic.extract`
keeps exactly those prefixes: the ordering used in training and the one used in extraction agree by
construction. Layer influence (the depth order) is the original block influence.

**Shared-weight forward, no hidden state.** :func:`subnet_forward` builds the sub-network's module
structure on the meta device (:func:`toolkit.models.geometry.meta_child`, as ``extract`` does) and runs
it with ``torch.func.functional_call`` on *views* (slices) of the parent's parameters, so gradients of
every sub-network land in the one set of shared weights. The parent never has an "active sub-network".
"""

from __future__ import annotations

import json
import re
import weakref
from typing import Any, Mapping

import torch

from toolkit.errors import UserError
from toolkit.importance import Importance
from toolkit.models.geometry import group_size, head_dim, head_indices, meta_child
from toolkit.space import SubnetConfig


@torch.no_grad()
def sort_parent(model, importance: Importance) -> Importance:
    """Permute ``model`` in place so each layer's most important channels/groups come first.

    Function-preserving. Returns the importance of the sorted model: strictly descending channel and
    group scores (ranks, so ``topk`` has no ties and keeps prefixes) and the original layer influence.
    """
    layers = model.model.layers
    if importance.num_layers != len(layers):
        raise UserError(f"importance: has {importance.num_layers} layers, the model has {len(layers)}")
    group, hd = group_size(model.config), head_dim(model.config)

    def take(p: torch.nn.Parameter | None, dim: int, idx: torch.Tensor) -> None:
        if p is not None:
            p.copy_(p.index_select(dim, idx))

    mlp_scores, group_scores = [], []
    for i, layer in enumerate(layers):
        ch = torch.sort(importance.mlp[i], descending=True, stable=True).indices
        mlp = layer.mlp
        ch = ch.to(mlp.gate_proj.weight.device)
        for lin in (mlp.gate_proj, mlp.up_proj):
            take(lin.weight, 0, ch)
            take(lin.bias, 0, ch)
        take(mlp.down_proj.weight, 1, ch)
        groups = torch.sort(importance.head_groups[i], descending=True, stable=True).indices
        q_idx, kv_idx = head_indices(groups, group, hd)
        attn = layer.self_attn
        q_idx, kv_idx = q_idx.to(attn.q_proj.weight.device), kv_idx.to(attn.q_proj.weight.device)
        for lin, idx in ((attn.q_proj, q_idx), (attn.k_proj, kv_idx), (attn.v_proj, kv_idx)):
            take(lin.weight, 0, idx)
            take(lin.bias, 0, idx)
        take(attn.o_proj.weight, 1, q_idx)
        mlp_scores.append(torch.arange(ch.numel(), 0, -1, dtype=torch.float32))
        group_scores.append(torch.arange(groups.numel(), 0, -1, dtype=torch.float32))
    return Importance(
        mlp=tuple(mlp_scores),
        head_groups=tuple(group_scores),
        layer_influence=importance.layer_influence.detach().clone().float(),
        calibration=json.dumps({"sorted_supernet": True, "from": importance.calibration}),
    )


# parent model -> {SubnetConfig: skeleton}. Weakly keyed by the model object itself: an entry goes when its
# parent is garbage-collected, so a new model can never be handed a dead one's skeleton (an ``id()`` key
# can: ids are reused after collection).
_SKELETONS: "weakref.WeakKeyDictionary[Any, dict[SubnetConfig, Any]]" = weakref.WeakKeyDictionary()
_SKELETONS_PER_PARENT = 64


def _skeleton(parent, cfg: SubnetConfig):
    """The sub-network's module structure on the meta device (cached per parent model and shape)."""
    cache = _SKELETONS.setdefault(parent, {})
    if cfg in cache:
        return cache[cfg]
    child = meta_child(parent.config, cfg)
    if child.config.tie_word_embeddings:
        child.lm_head.weight = child.model.embed_tokens.weight
    child.model.rotary_emb = parent.model.rotary_emb  # real (non-persistent) buffers, shared
    for i, layer in enumerate(child.model.layers):
        layer.self_attn.layer_idx = i
    child.train(parent.training)
    if len(cache) >= _SKELETONS_PER_PARENT:
        cache.clear()
    cache[cfg] = child
    return child


_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def slice_params(params: Mapping[str, torch.Tensor], parent_config, cfg: SubnetConfig) -> dict[str, torch.Tensor]:
    """The sub-network's tensors as views (prefix slices) of a *sorted* parent's ``params``.

    Keys are the sub-network's own parameter names (layers renumbered 0..depth-1).
    """
    group, hd = group_size(parent_config), head_dim(parent_config)
    new_index = {old: new for new, old in enumerate(cfg.layers)}
    out: dict[str, torch.Tensor] = {}
    for name, t in params.items():
        m = _LAYER_RE.match(name)
        if m is None:
            out[name] = t
            continue
        old = int(m.group(1))
        if old not in new_index:
            continue
        new = new_index[old]
        width, heads = cfg.mlp[new], cfg.heads[new]
        q, kv = heads * hd, heads // group * hd
        suffix = m.group(2)
        if suffix.startswith("self_attn.q_proj."):
            t = t[:q]
        elif suffix.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
            t = t[:kv]
        elif suffix == "self_attn.o_proj.weight":
            t = t[:, :q]
        elif suffix.startswith(("mlp.gate_proj.", "mlp.up_proj.")):
            t = t[:width]
        elif suffix == "mlp.down_proj.weight":
            t = t[:, :width]
        out[f"model.layers.{new}.{suffix}"] = t
    return out


def subnet_forward(parent, cfg: SubnetConfig, input_ids: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Logits (B, T, V) of sub-network ``cfg`` of a *sorted* parent, sharing (and back-propagating
    into) the parent's weights. ``params`` overrides the parent's own tensors (e.g. LoRA-merged ones)."""
    from toolkit.elastic import check_fits

    check_fits(parent, cfg)
    if params is None:
        params = dict(parent.named_parameters())
    child = _skeleton(parent, cfg)
    child.train(parent.training)
    views = slice_params(params, parent.config, cfg)
    wanted = {n for n, _ in child.named_parameters()}
    views = {k: v for k, v in views.items() if k in wanted}
    if len(views) != len(wanted):
        raise RuntimeError(f"subnet_forward: missing tensors {sorted(wanted - set(views))[:3]}")
    out = torch.func.functional_call(child, views, (input_ids,), {"use_cache": False}, tie_weights=True, strict=False)
    return out.logits
