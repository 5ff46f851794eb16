"""Before search: train the parent once as a super-network, so that its sub-networks are usable.

Reads a parent model (HF folder, GGUF or the embedded default), training text (JSONL or plain text) and
a calibration text for the importance ordering; writes a super-network folder: a plain HF folder with
the parent's shapes, ``importance.safetensors`` (sorted: every sub-network keeps prefixes) and
``finetune.json`` (config, search space trained for, loss and held-out perplexity curves), plus
``checkpoint/`` for ``--resume``. Search, eval, calibrate and export accept that folder as ``--model``.

* :mod:`~toolkit.finetune.config`: :class:`FinetuneConfig` (validated fields, CLI help) and the schedule.
* :mod:`~toolkit.finetune.slicing`: sort the parent once by importance, then run any sub-network on
  slices (views) of its shared weights.
* :mod:`~toolkit.finetune.lora`: LoRA deltas as merged effective weights.
* :mod:`~toolkit.finetune.data`: documents packed into windows; the window order of every step.
* :mod:`~toolkit.finetune.losses`: distillation and LM losses, the perplexity monitor, autocast.
* :mod:`~toolkit.finetune.trainer`: :class:`SupernetTrainer` (sandwich rule), checkpoints, saving.
* :mod:`~toolkit.finetune.local_distillation`: blockwise local distillation (``--method local``).
* :mod:`~toolkit.finetune.job`: :func:`finetune`, the whole job (budgets, SIGTERM, resume).

Why hand-written: peft/transformers' Trainer know nothing of weight-sharing sub-networks; once-for-all
and DyNAS-T keep an "active sub-network" inside the model, which this toolkit's style forbids.

The names below are imported on first use, so that the CLI parser can read :class:`FinetuneConfig`
(``toolkit.finetune.config`` needs no torch) without loading the trainer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "FinetuneConfig": "config",
    "sort_parent": "slicing", "slice_params": "slicing", "subnet_forward": "slicing",
    "batch_indices": "data",
    "autocast": "losses", "auto_precision": "losses",
    "SupernetTrainer": "trainer", "save_supernet": "trainer",
    "finetune": "job",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from toolkit.finetune.config import FinetuneConfig
    from toolkit.finetune.data import batch_indices
    from toolkit.finetune.job import finetune
    from toolkit.finetune.losses import auto_precision, autocast
    from toolkit.finetune.slicing import slice_params, sort_parent, subnet_forward
    from toolkit.finetune.trainer import SupernetTrainer, save_supernet


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
