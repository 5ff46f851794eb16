"""The search space: which sub-networks of a parent model exist, and how a genome names one.

A :class:`SubnetConfig` says, for a parent with ``L`` layers:

* ``layers``: the parent layer indices that are kept, ascending;
* ``mlp``: the MLP intermediate size of each kept layer;
* ``heads``: the number of *query* heads of each kept layer.

**The GQA rule.** With ``H`` query heads and ``K`` key/value heads, query heads come in ``K`` groups of
``G = H / K`` heads that share one k/v head (query head ``j*G + r`` reads kv head ``j``). Heads are only
ever removed a whole group at a time: a layer keeping ``h`` query heads keeps ``h / G`` kv heads, so
``h`` must be a positive multiple of ``G`` and the ratio ``G`` never changes. That keeps k/v consistent
and lets the stock Llama attention run the smaller layer unchanged.

A :class:`SearchSpace` lists the allowed choices (MLP widths on a grid, head counts in group steps, a
depth range) and maps sub-networks to an integer genome for pymoo::

    genome = [depth_index] + [mlp_index] * L + [heads_index] * L

Depth ``d`` keeps the ``d`` most important layers of ``layer_order`` (block influence, most important
first), so the genome has a fixed length; the per-layer genes of dropped layers are ignored by
``decode`` and set to the widest choice by ``encode``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from toolkit.errors import ConfigError
from toolkit import schema
from toolkit.models import geometry
from toolkit.schema import parse_json, read_text_file
from toolkit.fileio import sha256_json

SUBNET_VERSION = 1
SPACE_VERSION = 1


def _ints(name: str, value: Any, file: str | None) -> tuple[int, ...]:
    return schema.check_value(value, schema.integers, name, file)


@dataclass(frozen=True)
class SubnetConfig:
    """A sub-network of a parent model (frozen, hashable, JSON round-trip)."""

    layers: tuple[int, ...]
    mlp: tuple[int, ...]
    heads: tuple[int, ...]
    version: int = SUBNET_VERSION

    def __post_init__(self) -> None:
        for name in ("layers", "mlp", "heads"):
            object.__setattr__(self, name, _ints(name, getattr(self, name), None))
        if not self.layers:
            raise ConfigError("layers", "a sub-network keeps at least one layer")
        if list(self.layers) != sorted(set(self.layers)) or self.layers[0] < 0:
            raise ConfigError("layers", f"must be distinct, ascending, non-negative indices, got {list(self.layers)}")
        for name in ("mlp", "heads"):
            values = getattr(self, name)
            if len(values) != len(self.layers):
                raise ConfigError(name, f"has {len(values)} entries but {len(self.layers)} layers are kept")
            for i, v in enumerate(values):
                if v <= 0:
                    raise ConfigError(f"{name}[{i}]", f"must be positive, got {v}")
        if self.version != SUBNET_VERSION:
            raise ConfigError("version", f"unsupported sub-network config version {self.version}")

    # -- identity ---------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.layers)

    def key(self) -> str:
        """A short stable hash: cache key for evaluations and measurements."""
        return sha256_json(self.to_dict())[:16]

    def is_uniform(self) -> bool:
        return len(set(self.mlp)) == 1 and len(set(self.heads)) == 1

    # -- JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "layers": list(self.layers), "mlp": list(self.mlp), "heads": list(self.heads)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], file: str | None = None) -> "SubnetConfig":
        if not isinstance(data, Mapping):
            raise ConfigError("<root>", "expected a JSON object", file)
        unknown = set(data) - {"version", "layers", "mlp", "heads"}
        if unknown:
            raise ConfigError(sorted(unknown)[0], "unknown field", file)
        for name in ("layers", "mlp", "heads"):
            if name not in data:
                raise ConfigError(name, "missing required field", file)
        try:
            return cls(
                layers=_ints("layers", data["layers"], file),
                mlp=_ints("mlp", data["mlp"], file),
                heads=_ints("heads", data["heads"], file),
                version=data.get("version", SUBNET_VERSION),
            )
        except ConfigError as exc:
            raise exc.with_file(file) from None

    @classmethod
    def from_nested(cls, data: Any, where: str, file: str | None = None,
                    check: Callable[["SubnetConfig", str | None], Any] | None = None) -> "SubnetConfig":
        """A config inside another record, at field ``where`` (``config``, ``front[3].config``, ...): its
        errors, and those of ``check(cfg, file)`` (a space's or a parent shape's), name the dotted field."""
        try:
            cfg = cls.from_dict(data, file)
            if check is not None:
                check(cfg, file)
        except ConfigError as exc:
            raise ConfigError(where if exc.field == "<root>" else f"{where}.{exc.field}", exc.problem, file) from None
        return cfg

    @classmethod
    def from_json(cls, text: str, file: str | None = None) -> "SubnetConfig":
        data = parse_json(text, file)
        # Accept files that wrap the config, e.g. a Pareto entry {"config": {...}, ...}.
        if isinstance(data, Mapping) and "config" in data and "layers" not in data:
            data = data["config"]
        return cls.from_dict(data, file)

    @classmethod
    def load(cls, path: str) -> "SubnetConfig":
        return cls.from_json(read_text_file(path), str(path))

    @classmethod
    def full(cls, num_layers: int, intermediate_size: int, num_heads: int) -> "SubnetConfig":
        return cls(tuple(range(num_layers)), (intermediate_size,) * num_layers, (num_heads,) * num_layers)


@dataclass(frozen=True)
class ParentShape:
    """The few numbers of the parent architecture the search space needs."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int) and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ConfigError(f.name, f"must be a positive integer, got {v!r}")
        if not isinstance(self.tie_word_embeddings, bool):
            raise ConfigError("tie_word_embeddings", f"must be true or false, got {self.tie_word_embeddings!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError("num_kv_heads", f"{self.num_heads} query heads are not a multiple of {self.num_kv_heads} kv heads")

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_dict(cls, data: Any, file: str | None = None, where: str = "shape") -> "ParentShape":
        if not isinstance(data, Mapping):
            raise ConfigError(where, "expected an object", file)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = set(data) - set(names)
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}", "unknown field", file)
        for n in names:
            if n not in data:
                raise ConfigError(f"{where}.{n}", "missing required field", file)
        try:
            return cls(**{n: data[n] for n in names})
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc.field}", exc.problem, file) from None

    def layer_shapes(self) -> list[tuple[int, int]]:
        """(MLP width, query heads) of each parent layer: all alike (see ``check_fits`` for others)."""
        return [(self.intermediate_size, self.num_heads)] * self.num_layers

    def check(self, cfg: SubnetConfig, file: str | None = None) -> SubnetConfig:
        """Raise a one-line :class:`ConfigError` if ``cfg`` does not fit inside this parent (see
        :func:`check_fits`); return ``cfg``."""
        check_fits(cfg, self.layer_shapes(), self.group_size, file)
        return cfg

    @classmethod
    def from_hf_config(cls, config: Any) -> "ParentShape":
        heads = config.num_attention_heads
        return cls(
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=geometry.head_dim(config),
            vocab_size=config.vocab_size,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )

    def full_config(self) -> SubnetConfig:
        return SubnetConfig.full(self.num_layers, self.intermediate_size, self.num_heads)

    def layer_params(self, mlp: int, heads: int) -> int:
        """Parameters of one decoder layer with ``mlp`` intermediate channels and ``heads`` query heads."""
        kv = heads // self.group_size
        attn = self.hidden_size * self.head_dim * (2 * heads + 2 * kv)  # q, o + k, v
        return attn + 3 * self.hidden_size * mlp + 2 * self.hidden_size  # gate, up, down + 2 RMSNorms

    def num_params(self, cfg: SubnetConfig, include_embeddings: bool = True) -> int:
        body = sum(self.layer_params(m, h) for m, h in zip(cfg.mlp, cfg.heads))
        if not include_embeddings:
            return body
        emb = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return body + emb + self.hidden_size  # + final norm


def check_fits(cfg: SubnetConfig, layer_shapes: Sequence[tuple[int, int]], group_size: int,
               file: str | None = None) -> None:
    """The one check that a sub-network fits inside its parent, used by ``predict``, ``eval --subnet``,
    ``export`` and ``extract`` alike: every kept layer exists, keeps at most the parent layer's MLP
    width and query heads, and keeps heads in whole GQA groups of ``group_size``.

    ``layer_shapes[i]`` is parent layer ``i``'s (MLP width, query heads); a heterogeneous parent (an
    extracted sub-network used as a parent) has different ones per layer.
    """
    n = len(layer_shapes)
    if cfg.layers[-1] >= n:
        raise ConfigError("layers", f"layer index {cfg.layers[-1]} out of range for a {n}-layer parent", file)
    for i, (layer, m, h) in enumerate(zip(cfg.layers, cfg.mlp, cfg.heads)):
        pm, ph = layer_shapes[layer]
        if m > pm:
            raise ConfigError(f"mlp[{i}]", f"width {m} exceeds the parent layer {layer}'s {pm}", file)
        if h % group_size:
            raise ConfigError(f"heads[{i}]", f"{h} query heads break the GQA groups of {group_size} "
                              "(heads are removed a whole group at a time)", file)
        if h > ph:
            raise ConfigError(f"heads[{i}]", f"{h} heads exceed the parent layer {layer}'s {ph}", file)


def check_fits_hf_config(cfg: SubnetConfig, config: Mapping[str, Any], file: str | None = None) -> None:
    """:func:`check_fits` against a parent's ``config.json`` (a dict), before its weights load, so that
    ``eval --subnet`` and ``export --config`` refuse a sub-network that does not fit in a second rather
    than after loading the model. Only uniform parents (``llama``/``mistral``) are checked here; a
    heterogeneous parent (per-layer sizes), or a config the model loader itself refuses with its own
    one-line error, is left to the check on the loaded model's real layers."""
    from types import SimpleNamespace

    if config.get("model_type") not in ("llama", "mistral"):
        return
    try:
        shape = ParentShape.from_hf_config(SimpleNamespace(**config))
    except (AttributeError, TypeError, ConfigError):
        return
    shape.check(cfg, file)


def _grid(lo: int, hi: int, step: int) -> tuple[int, ...]:
    return tuple(range(lo, hi + 1, step))


@dataclass(frozen=True)
class SearchSpace:
    """Allowed sub-networks of one parent, with an integer genome encoding for pymoo."""

    parent: ParentShape
    mlp_choices: tuple[int, ...]
    head_choices: tuple[int, ...]
    depth_choices: tuple[int, ...]
    layer_order: tuple[int, ...]  # parent layer indices, most important first
    version: int = SPACE_VERSION

    def __post_init__(self) -> None:
        p = self.parent
        for name in ("mlp_choices", "head_choices", "depth_choices", "layer_order"):
            object.__setattr__(self, name, _ints(name, getattr(self, name), None))
        if sorted(self.layer_order) != list(range(p.num_layers)):
            raise ConfigError("layer_order", f"must be a permutation of 0..{p.num_layers - 1}")
        for name, top in (("mlp_choices", p.intermediate_size), ("head_choices", p.num_heads), ("depth_choices", p.num_layers)):
            values = getattr(self, name)
            if not values or list(values) != sorted(set(values)):
                raise ConfigError(name, "must be a non-empty ascending list of distinct values")
            if values[0] <= 0 or values[-1] > top:
                raise ConfigError(name, f"values must lie in 1..{top}, got {list(values)}")
        for h in self.head_choices:
            if h % p.group_size:
                raise ConfigError("head_choices", f"{h} heads break the GQA groups of {p.group_size} query heads")

    @classmethod
    def from_parent(
        cls,
        parent: ParentShape,
        layer_order: Sequence[int] | None = None,
        mlp_step: int = 64,
        min_mlp_fraction: float = 0.25,
        min_depth_fraction: float = 0.5,
        min_head_groups: int = 1,
    ) -> "SearchSpace":
        """The default space: MLP widths on a ``mlp_step`` grid, heads in GQA-group steps, a depth range."""
        if not 0 < min_mlp_fraction <= 1:
            raise ConfigError("min_mlp_fraction", f"must be in (0, 1], got {min_mlp_fraction}")
        if not 0 < min_depth_fraction <= 1:
            raise ConfigError("min_depth_fraction", f"must be in (0, 1], got {min_depth_fraction}")
        step = min(mlp_step, parent.intermediate_size)
        lo = max(step, int(np.ceil(parent.intermediate_size * min_mlp_fraction / step)) * step)
        mlp = _grid(lo, parent.intermediate_size, step)
        if mlp[-1] != parent.intermediate_size:
            mlp = mlp + (parent.intermediate_size,)
        g = parent.group_size
        heads = tuple(k * g for k in range(max(1, min_head_groups), parent.num_kv_heads + 1))
        depth = tuple(range(max(1, int(np.ceil(parent.num_layers * min_depth_fraction))), parent.num_layers + 1))
        order = tuple(layer_order) if layer_order is not None else tuple(range(parent.num_layers))
        return cls(parent, mlp, heads, depth, order)

    # -- genome -----------------------------------------------------------------------------------
    @property
    def genome_length(self) -> int:
        """1 depth gene + one MLP-width gene and one head-count gene per parent layer."""
        return 1 + 2 * self.parent.num_layers

    def genome_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive integer bounds of each gene (pymoo's ``xl``, ``xu``)."""
        L = self.parent.num_layers
        xl = np.zeros(self.genome_length, dtype=np.int64)
        xu = np.array([len(self.depth_choices) - 1] + [len(self.mlp_choices) - 1] * L + [len(self.head_choices) - 1] * L)
        return xl, xu

    def size(self) -> int:
        """Number of distinct sub-networks (exact, may be huge)."""
        total = 0
        per_layer = len(self.mlp_choices) * len(self.head_choices)
        for d in self.depth_choices:
            total += per_layer**d
        return total

    def kept_layers(self, depth: int) -> tuple[int, ...]:
        return tuple(sorted(self.layer_order[:depth]))

    def decode(self, genome: Sequence[int]) -> SubnetConfig:
        """The sub-network of an integer genome of :attr:`genome_length` genes, each within
        :meth:`genome_bounds`: gene 0 indexes :attr:`depth_choices` (the kept layers are the first ``depth``
        of :attr:`layer_order`, in model order); genes ``1..L`` index :attr:`mlp_choices` and genes
        ``L+1..2L`` :attr:`head_choices`, one per parent layer. Genes of dropped layers are ignored, so
        many genomes decode to one config. A wrong length or an out-of-range gene is a ConfigError."""
        g = np.asarray(genome).astype(np.int64).ravel()
        L = self.parent.num_layers
        if g.shape[0] != self.genome_length:
            raise ConfigError("genome", f"expected {self.genome_length} genes, got {g.shape[0]}")
        xl, xu = self.genome_bounds()
        bad = np.nonzero((g < xl) | (g > xu))[0]
        if bad.size:
            raise ConfigError(f"genome[{bad[0]}]", f"{g[bad[0]]} outside 0..{xu[bad[0]]}")
        layers = self.kept_layers(self.depth_choices[g[0]])
        mlp = tuple(self.mlp_choices[g[1 + i]] for i in layers)
        heads = tuple(self.head_choices[g[1 + L + i]] for i in layers)
        return SubnetConfig(layers, mlp, heads)

    def encode(self, cfg: SubnetConfig) -> np.ndarray:
        """A genome that decodes to ``cfg`` (int64, :attr:`genome_length` genes): ``decode(encode(c)) == c``
        for every config of this space. Genes of dropped layers are set to the largest choice, so encoding
        is a function of the config. A config outside the space is a ConfigError (:meth:`validate`)."""
        self.validate(cfg)
        L = self.parent.num_layers
        g = np.empty(self.genome_length, dtype=np.int64)
        g[0] = self.depth_choices.index(cfg.depth)
        g[1 : 1 + L] = len(self.mlp_choices) - 1
        g[1 + L :] = len(self.head_choices) - 1
        for layer, m, h in zip(cfg.layers, cfg.mlp, cfg.heads):
            g[1 + layer] = self.mlp_choices.index(m)
            g[1 + L + layer] = self.head_choices.index(h)
        return g

    def validate(self, cfg: SubnetConfig, file: str | None = None) -> SubnetConfig:
        """Raise a one-line :class:`ConfigError` naming the field if ``cfg`` is not in this space (it must
        fit the parent, :meth:`ParentShape.check`, and use the space's depths, layers and widths)."""
        self.parent.check(cfg, file)
        if cfg.depth not in self.depth_choices:
            raise ConfigError("layers", f"depth {cfg.depth} outside the space's depth range {self.depth_choices[0]}..{self.depth_choices[-1]}", file)
        if cfg.layers != self.kept_layers(cfg.depth):
            raise ConfigError("layers", f"a depth-{cfg.depth} sub-network keeps the {cfg.depth} most important layers {list(self.kept_layers(cfg.depth))}", file)
        for i, m in enumerate(cfg.mlp):
            if m not in self.mlp_choices:
                raise ConfigError(f"mlp[{i}]", f"width {m} is not in the space's MLP widths {self.mlp_choices[0]}..{self.mlp_choices[-1]} (step {self._step(self.mlp_choices)})", file)
        for i, h in enumerate(cfg.heads):
            if h not in self.head_choices:
                raise ConfigError(f"heads[{i}]", f"{h} heads is not in the space's head choices {list(self.head_choices)}", file)
        return cfg

    @staticmethod
    def _step(values: Sequence[int]) -> int:
        return values[1] - values[0] if len(values) > 1 else 0

    def sample(self, rng: np.random.Generator) -> SubnetConfig:
        lo, hi = self.genome_bounds()
        return self.decode(rng.integers(lo, hi + 1))

    def smallest(self) -> SubnetConfig:
        d = self.depth_choices[0]
        layers = self.kept_layers(d)
        return SubnetConfig(layers, (self.mlp_choices[0],) * d, (self.head_choices[0],) * d)

    def largest(self) -> SubnetConfig:
        d = self.depth_choices[-1]
        layers = self.kept_layers(d)
        return SubnetConfig(layers, (self.mlp_choices[-1],) * d, (self.head_choices[-1],) * d)

    # -- JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "parent": dataclasses.asdict(self.parent),
            "mlp_choices": list(self.mlp_choices),
            "head_choices": list(self.head_choices),
            "depth_choices": list(self.depth_choices),
            "layer_order": list(self.layer_order),
        }

    @classmethod
    def from_dict(cls, data: Any, file: str | None = None) -> "SearchSpace":
        if not isinstance(data, Mapping):
            raise ConfigError("space", f"expected an object, got {type(data).__name__}", file)
        names = ("parent", "mlp_choices", "head_choices", "depth_choices", "layer_order")
        for name in names:
            if name not in data:
                raise ConfigError(name, "missing required field", file)
        parent = ParentShape.from_dict(data["parent"], file, "parent")
        lists = [_ints(name, data[name], file) for name in names[1:]]
        version = data.get("version", SPACE_VERSION)
        if version != SPACE_VERSION or isinstance(version, bool):
            raise ConfigError("version", f"unsupported search space version {version!r}", file)
        try:
            return cls(parent, *lists)
        except ConfigError as exc:
            raise exc.with_file(file) from None
