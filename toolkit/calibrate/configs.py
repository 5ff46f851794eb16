"""Which sub-networks a calibration measures: a few that cover the search space."""

from __future__ import annotations

from typing import Any

import numpy as np

from toolkit.errors import UserError
from toolkit.space import SearchSpace, SubnetConfig


def choose_calibration_configs(space: SearchSpace, n: int, seed: int = 0, pool: int = 4000) -> list[SubnetConfig]:
    """``n`` sub-networks that cover the space: the parent, the smallest, then greedy max-min distance
    over (depth, mean heads, mean MLP width, heterogeneity) among a seeded random pool that mixes
    uniform and heterogeneous configs."""
    if n < 2:
        raise UserError(f"--samples: need at least 2 calibration sub-networks, got {n}")
    rng = np.random.default_rng(seed)
    p = space.parent
    L, lo, hi = p.num_layers, *space.genome_bounds()
    mlp_choices, head_choices = np.asarray(space.mlp_choices), np.asarray(space.head_choices)
    kept = {d: np.asarray(space.kept_layers(d)) for d in space.depth_choices}

    def vec(depth, heads, mlp) -> list[float]:
        return [depth / L, np.mean(heads) / p.num_heads, np.mean(mlp) / p.intermediate_size,
                np.std(mlp) / p.intermediate_size]

    # The pool is kept as genomes / uniform sizes; only the chosen few become SubnetConfigs.
    cands: list[Any] = [space.largest(), space.smallest()]
    V = [vec(c.depth, c.heads, c.mlp) for c in cands]
    for i in range(pool):
        g = rng.integers(lo, hi + 1)  # what space.sample(rng) draws
        if i % 2:  # a uniform config at a random size: covers the diagonal of the space
            d = int(rng.choice(space.depth_choices))
            m, h = int(rng.choice(space.mlp_choices)), int(rng.choice(space.head_choices))
            cands.append((d, m, h))
            V.append([d / L, h / p.num_heads, m / p.intermediate_size, 0.0])
        else:
            layers = kept[space.depth_choices[g[0]]]
            cands.append(g)
            V.append(vec(len(layers), head_choices[g[1 + L + layers]], mlp_choices[g[1 + layers]]))
    V = np.asarray(V)
    chosen = [0, 1]
    dist = np.minimum(np.linalg.norm(V - V[0], axis=1), np.linalg.norm(V - V[1], axis=1))
    while len(chosen) < min(n, len(cands)):
        j = int(np.argmax(dist))
        if dist[j] <= 0:
            break
        chosen.append(j)
        dist = np.minimum(dist, np.linalg.norm(V - V[j], axis=1))

    def config(c) -> SubnetConfig:
        if isinstance(c, SubnetConfig):
            return c
        if isinstance(c, tuple):
            d, m, h = c
            return SubnetConfig(space.kept_layers(d), (m,) * d, (h,) * d)
        return space.decode(c)

    return [config(cands[i]) for i in chosen]
