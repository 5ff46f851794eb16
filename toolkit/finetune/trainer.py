"""The sandwich-rule trainer of a sorted parent, its checkpoints, and the saved super-network.

**Sandwich rule + in-place distillation.** Each step trains the full network, the smallest sub-network
and ``num_random`` random sub-networks of the search space, all through
:func:`toolkit.finetune.slicing.subnet_forward` on the one set of shared weights. Sub-networks learn the
teacher's token distribution (KL, teacher detached). The teacher is either the frozen original model
(``teacher="original"``, the default: the full network is also distilled towards it, which keeps the
full network's accuracy; costs one no-grad forward) or the super-network's own full network
(``teacher="inplace"``, InstaTune/OFA style: the full network trains on the LM loss).

**Resumable and reproducible.** A checkpoint holds the weights and AdamW state tensors (safetensors), and
the step, the learning-rate scheduler's state, the sampler state (``numpy`` bit-generator state), torch
RNG and loss history (JSON); the data order and learning rate are pure functions of (seed, step). A
resumed run reproduces the uninterrupted run's losses exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from toolkit.errors import ConfigError, UserError
from toolkit.fileio import atomic_directory, atomic_write_bytes, atomic_write_json
from toolkit.finetune.config import FINETUNE_VERSION, FinetuneConfig
from toolkit.finetune.data import batch_indices
from toolkit.finetune.lora import Lora
from toolkit.finetune.losses import autocast, kd_loss, lm_loss, perplexity_windows
from toolkit.finetune.slicing import sort_parent, subnet_forward
from toolkit.importance import Importance
from toolkit.space import SearchSpace, SubnetConfig

CHECKPOINT_VERSION = 1


def monitor_configs(space: SearchSpace) -> dict[str, SubnetConfig]:
    """A few fixed sub-networks whose held-out perplexity is logged during training."""
    full_depth = space.depth_choices[-1]
    mid = space.mlp_choices[len(space.mlp_choices) // 2]
    out = {"full": space.largest(), "smallest": space.smallest()}
    layers = space.kept_layers(full_depth)
    out[f"mlp{mid}"] = SubnetConfig(layers, (mid,) * full_depth, (space.head_choices[-1],) * full_depth)
    if space.depth_choices[0] < full_depth:
        d = space.depth_choices[0]
        out[f"depth{d}"] = SubnetConfig(space.kept_layers(d), (space.mlp_choices[-1],) * d, (space.head_choices[-1],) * d)
    return out


class SupernetTrainer:
    """Sandwich-rule training of a sorted parent. All state that decides the next step is checkpointed."""

    def __init__(self, parent, tokenizer, importance: Importance, windows: torch.Tensor, config: FinetuneConfig,
                 teacher=None, val_windows: torch.Tensor | None = None, sorted_already: bool = False):
        self.config = config
        self.parent = parent
        self.tokenizer = tokenizer
        self.original_importance = importance
        self.importance = importance if sorted_already else sort_parent(parent, importance)
        self.space = config.space(parent, self.importance)
        self.windows = windows
        self.val_windows = val_windows
        self.teacher = teacher
        self.device = parent.device  # training runs where the parent is (windows stay on the CPU until used)
        if config.teacher == "original" and teacher is None and config.method != "local":
            raise ValueError("teacher='original' needs the frozen original model")
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        if windows.shape[0] == 0:
            raise UserError("training text has fewer tokens than one window; lower --seq-len or give more text")
        torch.manual_seed(config.seed)
        gen = torch.Generator().manual_seed(config.seed)
        parent.train()
        for name, p in parent.named_parameters():
            is_emb = name in ("model.embed_tokens.weight", "lm_head.weight")
            p.requires_grad_(config.train == "full" and (config.train_embeddings or not is_emb))
        self.lora = Lora(parent, config.lora_rank, config.lora_alpha, gen) if config.train == "lora" else None
        if self.lora is not None:
            self.trainable = list(self.lora.parameters())
        else:
            self.trainable = [p for p in parent.parameters() if p.requires_grad]
        self.trainable_names = self._trainable_names()
        self.optimizer = torch.optim.AdamW(self.trainable, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
        self.scheduler = self._scheduler()
        self.rng = np.random.default_rng(config.seed)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.monitor = monitor_configs(self.space)
        self.cpu_offset_s = 0.0  # training CPU spent before the global steps (the local phase)

    def _scheduler(self, last_epoch: int = -1) -> torch.optim.lr_scheduler.LambdaLR:
        """Warm-up + cosine (:meth:`FinetuneConfig.lr_factor`); ``last_epoch``: the last step already taken."""
        config = self.config
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: config.lr_factor(step), last_epoch=last_epoch)

    def _trainable_names(self) -> list[str]:
        if self.lora is not None:
            return [f"lora.{n}" for n, _ in self.lora.named_parameters()]
        ids = {id(p) for p in self.trainable}
        return [n for n, p in self.parent.named_parameters() if id(p) in ids]

    # -- one step ----------------------------------------------------------------------------------
    def params(self) -> dict[str, torch.Tensor]:
        return self.lora.effective(self.parent) if self.lora is not None else dict(self.parent.named_parameters())

    def forward(self, cfg: SubnetConfig, ids: torch.Tensor) -> torch.Tensor:
        return subnet_forward(self.parent, cfg, ids, self.params())

    def sample_configs(self) -> list[tuple[str, SubnetConfig]]:
        nets = [("full", self.space.largest()), ("smallest", self.space.smallest())]
        nets += [(f"random{j}", self.space.sample(self.rng)) for j in range(self.config.num_random)]
        return nets

    def train_step(self) -> dict[str, Any]:
        """One optimizer step of the sandwich rule: the full, the smallest and ``num_random`` random sub-networks.

        Inputs: no arguments; the step is decided by the trainer's state alone: ``self.step`` (the data, a
        pure function of (seed, step): ``grad_accum`` micro-batches of ``batch_size`` windows), the sampler
        ``self.rng`` (the random sub-networks) and the scheduler (the learning rate).

        Returns the step's record (also appended to ``self.history``):

        * ``step``: steps done, this one included (1 after the first call);
        * ``lr``: the learning rate this step used;
        * ``loss``: ``{"full", "smallest", "random0", ...: float}``, each network's loss averaged over the
          micro-batches, before ``full_weight``: nats per token, a KL to the teacher (times
          ``kd_temperature**2``), or for ``full`` with ``teacher="inplace"`` the next-token cross-entropy;
        * ``configs``: ``{"random0": SubnetConfig.to_dict(), ...}``, the sampled sub-networks;
        * ``seconds`` and ``cpu_seconds``: wall-clock and process CPU time (all threads) of the step.

        Side effects: one AdamW update of the trainable tensors (the parent's weights in place, or the LoRA
        deltas with the parent untouched), their ``.grad`` left as computed; ``self.step`` + 1, one
        scheduler step, ``num_random`` draws from ``self.rng``, the record appended to ``self.history``.
        The teacher is only read. Windows move to the training device per micro-batch.
        """
        c = self.config
        t0, c0 = time.perf_counter(), time.process_time()
        lr = self.optimizer.param_groups[0]["lr"]
        nets = self.sample_configs()
        losses = {name: 0.0 for name, _ in nets}
        self.optimizer.zero_grad(set_to_none=True)
        first = self.step * c.grad_accum * c.batch_size
        for micro in range(c.grad_accum):
            idx = batch_indices(self.windows.shape[0], c.seed, first + micro * c.batch_size, c.batch_size)
            ids = self.windows[torch.from_numpy(idx)].to(self.device)
            teacher_logits = None
            if c.teacher == "original":
                with torch.no_grad(), autocast(self.device, c.precision):
                    teacher_logits = self.teacher(input_ids=ids, use_cache=False).logits.float()
            for name, cfg in nets:
                with autocast(self.device, c.precision):
                    logits = self.forward(cfg, ids)
                if name == "full" and c.teacher == "inplace":
                    loss = lm_loss(logits, ids)
                    teacher_logits = logits.detach().float()
                else:
                    loss = kd_loss(logits, teacher_logits, c.kd_temperature)
                weight = c.full_weight if name == "full" else 1.0
                (loss * (weight / c.grad_accum)).backward()
                losses[name] += loss.item() / c.grad_accum
                del logits, loss
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        record = {"step": self.step, "lr": lr, "loss": losses,
                  "configs": {n: cfg.to_dict() for n, cfg in nets if n.startswith("random")},
                  "seconds": round(time.perf_counter() - t0, 3), "cpu_seconds": round(time.process_time() - c0, 3)}
        self.history.append(record)
        return record

    def global_cpu_seconds(self) -> float:
        """CPU time of the global steps so far (wall time for steps recorded before CPU accounting)."""
        return sum(h.get("cpu_seconds", h["seconds"]) for h in self.history)

    def train_cpu_seconds(self) -> float:
        """Training CPU time so far: the local phase plus every global step (monitor evaluations excluded)."""
        return self.cpu_offset_s + self.global_cpu_seconds()

    @torch.no_grad()
    def evaluate(self, phase: str = "global", cpu_seconds: float | None = None) -> dict[str, Any]:
        """Held-out perplexity of the monitor sub-networks at the current step (``phase`` labels the point:
        sliced | least_squares | local | global; ``cpu_seconds`` overrides the training CPU it is plotted at)."""
        if self.val_windows is None or self.val_windows.shape[0] == 0:
            return {}
        was = self.parent.training
        self.parent.eval()
        try:
            params = self.params()
            ppl = {name: perplexity_windows(lambda ids, cfg=cfg: subnet_forward(self.parent, cfg, ids, params),
                                            self.val_windows, precision=self.config.precision, device=self.device)
                   for name, cfg in self.monitor.items()}
        finally:
            self.parent.train(was)
        record = {"step": self.step, "phase": phase, "val_ppl": ppl,
                  "train_cpu_seconds": round(self.train_cpu_seconds() if cpu_seconds is None else cpu_seconds, 3)}
        self.evals.append(record)
        return record

    # -- checkpoint --------------------------------------------------------------------------------
    def save_checkpoint(self, folder: str | Path, extra: Mapping[str, Any] | None = None) -> None:
        from safetensors.torch import save

        folder = Path(folder)
        weights = {n: p.detach().contiguous() for n, p in self.parent.named_parameters()}
        if self.lora is not None:
            weights.update({f"lora.{n}": p.detach().contiguous() for n, p in self.lora.named_parameters()})
        opt = self.optimizer.state_dict()
        opt_tensors, opt_scalars = {}, {}
        for idx, st in opt["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    opt_tensors[f"{idx}.{k}"] = v.detach().contiguous()
                else:
                    opt_scalars[f"{idx}.{k}"] = v
        state = {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "config": self.config.to_dict(),
            "sampler_state": _jsonable(self.rng.bit_generator.state),
            "trainable": self.trainable_names,
            "optimizer_scalars": opt_scalars,
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]],
            "lr_scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "evals": self.evals,
            **(extra or {}),
        }
        with atomic_directory(folder, overwrite=True) as tmp:
            atomic_write_bytes(tmp / "weights.safetensors", save(weights))
            atomic_write_bytes(tmp / "optimizer.safetensors", save(opt_tensors or {"_empty": torch.zeros(0)}))
            atomic_write_bytes(tmp / "torch_rng.safetensors", save({"cpu": torch.get_rng_state()}))
            atomic_write_json(tmp / "state.json", state)

    def load_checkpoint(self, folder: str | Path) -> None:
        from safetensors.torch import load_file

        folder = Path(folder)
        state_file = folder / "state.json"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{state_file}: cannot read checkpoint ({exc})") from None
        if state.get("version") != CHECKPOINT_VERSION:
            raise ConfigError("version", f"unsupported checkpoint version {state.get('version')!r}", str(state_file))
        saved = FinetuneConfig.from_dict(state["config"], str(state_file))
        mine = self.config.to_dict()
        for k, v in saved.to_dict().items():
            if k not in ("steps", "eval_every", "checkpoint_every") and mine[k] != v:
                raise ConfigError(k, f"checkpoint was trained with {v!r}, this run asks for {mine[k]!r}", str(state_file))
        weights = load_file(str(folder / "weights.safetensors"))
        with torch.no_grad():
            for n, p in self.parent.named_parameters():
                p.copy_(weights[n])
            if self.lora is not None:
                for n, p in self.lora.named_parameters():
                    p.copy_(weights[f"lora.{n}"])
        opt_tensors = load_file(str(folder / "optimizer.safetensors"))
        opt_state: dict[int, dict[str, Any]] = {}
        for key, v in list(opt_tensors.items()) + list(state["optimizer_scalars"].items()):
            if key == "_empty":
                continue
            idx, name = key.split(".", 1)
            opt_state.setdefault(int(idx), {})[name] = v
        groups = [dict(g, params=list(range(len(self.trainable)))) for g in state["param_groups"]]
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
        self.rng.bit_generator.state = state["sampler_state"]
        torch.set_rng_state(load_file(str(folder / "torch_rng.safetensors"))["cpu"])
        self.step = int(state["step"])
        if "lr_scheduler" in state:
            self.scheduler.load_state_dict(state["lr_scheduler"])
        else:  # a checkpoint without scheduler state: the schedule is a pure function of the step, so rebuild it there
            for g in self.optimizer.param_groups:
                g.setdefault("initial_lr", self.config.lr)
            self.scheduler = self._scheduler(last_epoch=self.step - 1)
        # The schedule is a pure function of the step and *this* run's config: a resume with a larger --steps
        # continues on the new schedule from its first step (the checkpoint's lr was computed for the old one).
        for g in self.optimizer.param_groups:
            g["lr"] = self.config.lr_at(self.step)
        self.history = list(state["history"])
        self.evals = list(state["evals"])

    # -- output ------------------------------------------------------------------------------------
    @torch.no_grad()
    def export_parent(self):
        """A copy-free view of the trained super-network as a plain parent (LoRA merged into a clone)."""
        if self.lora is None:
            return self.parent
        import copy

        merged = copy.deepcopy(self.parent)
        self.lora.merge_into(merged)
        return merged


def _tokens_per_cpu_hour(trainer: SupernetTrainer) -> float | None:
    """Training tokens per hour of process CPU time (all threads; monitor evaluations excluded)."""
    cpu = trainer.global_cpu_seconds()
    c = trainer.config
    tokens = len(trainer.history) * c.seq_len * c.batch_size * c.grad_accum
    return round(tokens / cpu * 3600, 1) if cpu > 0 else None  # the global steps; the local phase: finetune.json "local"


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def save_supernet(trainer: SupernetTrainer, folder: str | Path, info: Mapping[str, Any]) -> Path:
    """Write the super-network into ``folder``: a plain HF folder (parent shapes, safetensors, tokenizer),
    ``importance.safetensors`` (sorted: prefixes are kept) and ``finetune.json``. The ``checkpoint/``
    sub-folder, if any, is left alone."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = trainer.export_parent()
    was = model.training
    model.eval()
    tmp_root = folder / ".export.tmp"
    shutil.rmtree(tmp_root, ignore_errors=True)
    with atomic_directory(tmp_root, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if trainer.tokenizer is not None:
            trainer.tokenizer.save_pretrained(tmp)
        trainer.importance.save(tmp / "importance.safetensors")
        atomic_write_json(tmp / "finetune.json", {
            "version": FINETUNE_VERSION,
            "config": trainer.config.to_dict(),
            "steps_done": trainer.step,
            "search_space": trainer.space.to_dict(),
            "monitor_configs": {n: c.to_dict() for n, c in trainer.monitor.items()},
            "loss_curve": [{"step": h["step"], **h["loss"]} for h in trainer.history],
            "step_seconds": [h["seconds"] for h in trainer.history],
            "step_cpu_seconds": [h.get("cpu_seconds") for h in trainer.history],
            "tokens_per_cpu_hour": _tokens_per_cpu_hour(trainer),
            "val_ppl_curve": trainer.evals,
            **info,
        })
    model.train(was)
    for item in tmp_root.iterdir():
        os.replace(item, folder / item.name)
    shutil.rmtree(tmp_root, ignore_errors=True)
    return folder
