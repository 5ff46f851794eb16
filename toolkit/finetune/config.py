"""The fine-tuning configuration (:class:`FinetuneConfig`) and its learning-rate schedule.

Kept free of torch so that building the CLI parser (whose ``finetune`` flags are generated from the
fields here, help text included) reads the defaults without importing the trainer. Every field carries
its check (a :mod:`toolkit.schema` check, run by :class:`toolkit.schema.Record` on construction) and
its ``--flag`` help in its metadata.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from toolkit import schema
from toolkit.errors import ConfigError
from toolkit.schema import Invalid, Record, show

if TYPE_CHECKING:
    from toolkit.importance import Importance
    from toolkit.space import SearchSpace

FINETUNE_VERSION = 1
METHODS = ("global", "local", "local+global")


# -- checks the shared schema has no name for --------------------------------------------------------
def _in(low: float, high: float, low_open: bool = False) -> Callable[[Any], float]:
    """A number in [low, high] (or (low, high] with ``low_open``)."""

    def check(v: Any) -> float:
        x = float(schema.number(v))
        if (x <= low if low_open else x < low) or x > high:
            raise Invalid(f"must be in {'(' if low_open else '['}{low:g}, {high:g}], got {x:g}")
        return x

    return check


def _version(v: Any) -> int:
    if v != FINETUNE_VERSION:
        raise Invalid(f"unsupported finetune config version {v}")
    return v


def _option(check: Callable[[Any], Any], default: Any, help: str, choices: Sequence[str] = ()) -> Any:
    """A field with its check (see :func:`toolkit.schema.checked`) and its CLI help (and choices)."""
    meta: dict[str, Any] = {"check": check, "help": help}
    if choices:
        meta["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=meta)


def _one_of(options: Sequence[str], default: str, help: str) -> Any:
    return _option(schema.choice(*options), default, help, options)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_fraction: float) -> float:
    """The learning-rate factor at ``step``: linear warm-up over ``warmup_steps``, then cosine decay from 1
    to ``min_fraction`` at ``total_steps`` (and ``min_fraction`` after it). A pure function of the step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_fraction + (1 - min_fraction) * 0.5 * (1 + math.cos(math.pi * t))


# -- configuration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FinetuneConfig(Record):
    """Everything that decides what a fine-tuning run computes (recorded in finetune.json)."""

    method: str = _one_of(METHODS, "global", help=(
        "global: sandwich rule on whole sub-networks distilled from the teacher; local: blockwise local "
        "distillation (each layer's widths learn to reproduce the parent block from the parent's input; layers "
        "are independent jobs); local+global: local first, then global for the rest of the budget "
        "(benchmarks/README.md compares them at one CPU budget)"))
    steps: int = _option(schema.count, 400, "global optimizer steps in total")
    seq_len: int = _option(schema.count, 256, "tokens per training window")
    batch_size: int = _option(schema.count, 1, "windows per micro-batch")
    grad_accum: int = _option(schema.count, 1, "micro-batches per step")
    lr: float = _option(schema.positive, 1e-4, "peak learning rate (try 1e-3 with --train lora)")
    min_lr_fraction: float = _option(_in(0, 1), 0.1, "the cosine schedule decays the learning rate to lr x this")
    warmup_steps: int = _option(schema.index, 10, "steps of linear learning-rate warm-up")
    weight_decay: float = _option(schema.nonnegative, 0.0, "AdamW weight decay of the trained tensors")
    num_random: int = _option(schema.index, 1, "random sub-networks per step besides largest and smallest")
    teacher: str = _one_of(("original", "inplace"), "original", help=(
        "distil from the frozen original model (keeps the full network's accuracy; one no-grad forward per step) "
        "or from the super-network's own full network (in-place; the full network trains on the LM loss)"))
    kd_temperature: float = _option(schema.positive, 1.0, "softmax temperature of the distillation KL")
    # Weight 1 let the sub-networks' larger gradients pull the shared weights away from the full network
    # (SmolLM2's full held-out perplexity rose 4 % in 30 steps); 3 anchors it.
    full_weight: float = _option(schema.positive, 3.0, "loss weight of the full network (keeps it close to the original)")
    train: str = _one_of(("full", "lora"), "full", help="train full weights, or LoRA deltas merged at the end")
    lora_rank: int = _option(schema.count, 16, "rank r of the LoRA deltas (--train lora)")
    lora_alpha: float = _option(schema.positive, 32.0, "LoRA scale numerator: a delta is (alpha / r) B A")
    train_embeddings: bool = _option(schema.flag, False, "also train the (tied) embeddings (default: frozen)")
    precision: str = _one_of(("bf16", "fp32"), "bf16", help="autocast dtype on the training device")
    seed: int = _option(schema.index, 0, "seed of the data order, the sampled sub-networks and the LoRA init")
    # Local distillation (method local / local+global): per-layer job settings.
    local_steps: int = _option(schema.index, 150, "local distillation: AdamW steps per layer (0 = least squares only)")
    local_lr: float = _option(schema.positive, 1e-3, "local distillation learning rate")
    local_batch: int = _option(schema.count, 4, "windows per local step")
    local_windows: int = _option(schema.count, 64, (
        "training windows whose parent activations are cached for the local phase "
        "(disk: windows x seq-len x hidden x 4 bytes per layer)"))
    # Off by default: on SmolLM2 the refit lowers the narrow widths' error but raises the full and near-full
    # widths' (the shared columns must serve every width); the full network's perplexity rose 32.6 -> 41-45.
    ls_init: bool = _option(schema.flag, False, (
        "refit o_proj / down_proj by closed-form least squares over the space's widths before local training "
        "(lowers narrow widths' error, raises the full network's; off by default)"))
    # The search space trained for (SearchSpace.from_parent arguments).
    mlp_step: int = _option(schema.count, 64, "search space trained for: MLP widths on a grid of this step")
    min_mlp_fraction: float = _option(_in(0, 1, low_open=True), 0.33, "search space trained for: narrowest MLP, as a fraction")
    min_depth_fraction: float = _option(_in(0, 1, low_open=True), 0.9, "search space trained for: shallowest depth, as a fraction")
    min_head_groups: int = _option(schema.count, 2, "search space trained for: fewest GQA head groups")
    # Monitoring and checkpoints.
    val_docs: int = _option(schema.index, 40, "documents held out from the end of --data for the perplexity monitor (never trained on)")
    val_windows: int = _option(schema.count, 4, "held-out windows the perplexity monitor scores")
    eval_every: int = _option(schema.count, 50, "steps between held-out perplexity evaluations")
    checkpoint_every: int = _option(schema.count, 25, "steps between checkpoints (OUT/checkpoint)")
    version: int = schema.checked(_version, FINETUNE_VERSION)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], file: str | None = None) -> "FinetuneConfig":
        """A config from a mapping (a checkpoint's or finetune.json's); errors are ``FILE: field: problem``."""
        if not isinstance(data, Mapping):
            raise ConfigError("config", f"expected a mapping, got {show(data)}", file)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(unknown[0], "unknown field", file)
        try:
            return cls(**data)
        except ConfigError as exc:
            raise exc.with_file(file) from None

    def space(self, model, importance: Importance) -> SearchSpace:
        from toolkit.elastic import default_space

        return default_space(model, importance, mlp_step=self.mlp_step, min_mlp_fraction=self.min_mlp_fraction,
                             min_depth_fraction=self.min_depth_fraction, min_head_groups=self.min_head_groups)

    def lr_factor(self, step: int) -> float:
        """``lr_at(step) / lr``: the multiplier a ``torch.optim.lr_scheduler.LambdaLR`` applies."""
        return warmup_cosine(step, self.warmup_steps, self.steps, self.min_lr_fraction)

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to ``lr * min_lr_fraction`` at ``steps`` (a pure function)."""
        return self.lr * self.lr_factor(step)
