"""The fine-tuning configuration (:class:`FinetuneConfig`), apart from the trainer so that building the CLI
parser reads its defaults without importing torch. The trainer is :mod:`toolkit.finetune`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from toolkit.errors import ConfigError

if TYPE_CHECKING:
    from toolkit.importance import Importance
    from toolkit.space import SearchSpace

FINETUNE_VERSION = 1
METHODS = ("global", "local", "local+global")


# -- configuration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides what a fine-tuning run computes (recorded in finetune.json)."""

    # "global": the sandwich rule on whole sub-networks (teacher KL); "local": blockwise local distillation
    # only (toolkit.local_distillation); "local+global": local first, then the global sandwich for the rest
    # of the budget.
    method: str = "global"
    steps: int = 400
    seq_len: int = 256
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 1e-4
    min_lr_fraction: float = 0.1  # cosine decay to lr * this
    warmup_steps: int = 10
    weight_decay: float = 0.0
    num_random: int = 1  # k random sub-networks per step (besides largest and smallest)
    teacher: str = "original"  # "original" (frozen copy) | "inplace" (the super-network's full network)
    kd_temperature: float = 1.0
    # Loss weight of the full network. Measured on SmolLM2 with weight 1: its held-out perplexity rose 4 %
    # in the first 30 steps (the sub-networks' larger gradients move the shared weights); 3 anchors it.
    full_weight: float = 3.0
    train: str = "full"  # "full" weights | "lora"
    lora_rank: int = 16
    lora_alpha: float = 32.0
    train_embeddings: bool = False
    precision: str = "bf16"  # autocast dtype on the training device: "bf16" | "fp32" (see finetune.auto_precision)
    seed: int = 0
    # Local distillation (method local / local+global): per-layer job settings.
    local_steps: int = 150  # AdamW steps per layer
    local_lr: float = 1e-3
    local_batch: int = 4  # windows per local step
    local_windows: int = 64  # training windows whose activations are cached (local_windows x seq_len tokens)
    # Closed-form least-squares refit of o_proj / down_proj over the space's widths before local training. Off by
    # default: measured on SmolLM2 it lowers the narrow widths' error but raises the full and near-full widths'
    # (the shared columns must serve every width), and the full network's held-out perplexity rose 32.6 -> 41-45.
    ls_init: bool = False
    # The search space trained for (SearchSpace.from_parent arguments).
    mlp_step: int = 64
    min_mlp_fraction: float = 0.33
    min_depth_fraction: float = 0.9
    min_head_groups: int = 2
    # Monitoring and checkpoints.
    val_docs: int = 40  # held out from the end of the training file, never trained on
    val_windows: int = 4
    eval_every: int = 50
    checkpoint_every: int = 25
    version: int = FINETUNE_VERSION

    def __post_init__(self) -> None:
        positive = ("local_batch", "local_windows", "steps", "seq_len", "batch_size", "grad_accum", "lora_rank", "mlp_step", "val_windows",
                    "eval_every", "checkpoint_every")
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(name, f"must be a positive integer, got {v!r}")
        for name in ("num_random", "warmup_steps", "seed", "val_docs", "local_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(name, f"must be a non-negative integer, got {v!r}")
        for name in ("lr", "local_lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and v > 0):
                raise ConfigError(name, f"must be positive, got {v!r}")
        if not isinstance(self.ls_init, bool):
            raise ConfigError("ls_init", f"must be true or false, got {self.ls_init!r}")
        if not 0 <= self.min_lr_fraction <= 1:
            raise ConfigError("min_lr_fraction", f"must be in [0, 1], got {self.min_lr_fraction}")
        if self.full_weight <= 0:
            raise ConfigError("full_weight", f"must be positive, got {self.full_weight}")
        if self.kd_temperature <= 0:
            raise ConfigError("kd_temperature", f"must be positive, got {self.kd_temperature}")
        for name, allowed in (("method", METHODS), ("teacher", ("original", "inplace")), ("train", ("full", "lora")), ("precision", ("bf16", "fp32"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("min_mlp_fraction", "min_depth_fraction"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise ConfigError(name, f"must be in (0, 1], got {v}")
        if self.min_head_groups < 1:
            raise ConfigError("min_head_groups", f"must be at least 1, got {self.min_head_groups}")
        if self.version != FINETUNE_VERSION:
            raise ConfigError("version", f"unsupported finetune config version {self.version}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], file: str | None = None) -> "FinetuneConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(names)
        if unknown:
            raise ConfigError(sorted(unknown)[0], "unknown field", file)
        for k, v in data.items():
            want = names[k].type
            ok = {"int": isinstance(v, int) and not isinstance(v, bool), "float": isinstance(v, (int, float)) and not isinstance(v, bool),
                  "str": isinstance(v, str), "bool": isinstance(v, bool)}.get(want, True)
            if not ok:
                raise ConfigError(k, f"expected {want}, got {v!r}", file)
        try:
            return cls(**data)
        except ConfigError as exc:
            if file and exc.file is None:
                raise ConfigError(exc.field, str(exc).split(": ", 1)[1], file) from None
            raise

    def space(self, model, importance: Importance) -> SearchSpace:
        from toolkit.elastic import default_space

        return default_space(model, importance, mlp_step=self.mlp_step, min_mlp_fraction=self.min_mlp_fraction,
                             min_depth_fraction=self.min_depth_fraction, min_head_groups=self.min_head_groups)

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to ``lr * min_lr_fraction`` at ``steps`` (a pure function)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.lr * (self.min_lr_fraction + (1 - self.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * t)))
