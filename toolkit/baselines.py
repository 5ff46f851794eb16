"""Pruning baselines the NAS front is compared against, at matched parameter counts.

* **Layer dropping** (ShortGPT-style): keep the ``d`` layers with the highest block influence, every
  kept layer at full width. A depth-only sub-network of the same space.
* **Uniform MLP-width pruning**: all layers kept, every MLP cut to the same width, channels chosen by the
  same activation-aware importance as the search (heads untouched).

Both return :class:`~toolkit.space.SubnetConfig`s, so they go through the same extraction, evaluator
and measurement primitive as the search's candidates. Random search is ``toolkit search --algorithm random``.
"""

from __future__ import annotations

from typing import Sequence

from toolkit.space import SearchSpace, SubnetConfig


def layer_drop(space: SearchSpace, depth: int) -> SubnetConfig:
    """Keep the ``depth`` most influential layers at full width."""
    p = space.parent
    layers = tuple(sorted(space.layer_order[:depth]))
    return SubnetConfig(layers, (p.intermediate_size,) * depth, (p.num_heads,) * depth)


def uniform_mlp(space: SearchSpace, width: int) -> SubnetConfig:
    """All layers, every MLP at ``width`` channels, all heads."""
    p = space.parent
    n = p.num_layers
    return SubnetConfig(tuple(range(n)), (width,) * n, (p.num_heads,) * n)


def _closest(candidates: Sequence[SubnetConfig], space: SearchSpace, target_params: float) -> SubnetConfig:
    return min(candidates, key=lambda c: (abs(space.parent.num_params(c, include_embeddings=False) - target_params), -c.depth))


def matched(space: SearchSpace, method: str, target_params: float, any_width: bool = True) -> SubnetConfig:
    """The baseline sub-network of ``method`` whose non-embedding parameter count is closest to
    ``target_params``. Depth ranges over 1..L (not only the search space's depth range), widths over
    multiples of 8 when ``any_width`` (pruning is not restricted to the search grid), else the grid."""
    p = space.parent
    if method == "layer_drop":
        return _closest([layer_drop(space, d) for d in range(1, p.num_layers + 1)], space, target_params)
    if method == "uniform_mlp":
        widths = range(8, p.intermediate_size + 1, 8) if any_width else space.mlp_choices
        return _closest([uniform_mlp(space, w) for w in widths], space, target_params)
    raise ValueError(f"unknown baseline {method!r} (layer_drop or uniform_mlp)")


BASELINES = ("layer_drop", "uniform_mlp")
