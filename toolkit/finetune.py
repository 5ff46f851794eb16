"""One-shot super-network fine-tuning: train the parent once so that its sub-networks are usable.

**Sort once, then slice.** :func:`sort_parent` permutes every layer's MLP channels (rows of gate/up,
columns of down) and GQA head groups (a group's query heads in q rows and o columns, its kv head in k/v
rows) so the most important come first. The permutation is function-preserving (the full network
computes exactly what it did). Afterwards every sub-network's weights are *prefixes* of the
super-network's tensors, and the saved ``importance.safetensors`` has strictly descending channel/group
scores, so :func:`toolkit.elastic.extract` keeps exactly those prefixes: the ordering used in training
and the one used in extraction agree by construction. Layer influence (the depth order) is the
original block influence.

**Shared-weight forward, no hidden state.** :func:`subnet_forward` builds the sub-network's module
structure on the meta device (the same ``subnet_hf_config`` that ``extract`` uses) and runs it with
``torch.func.functional_call`` on *views* (slices) of the parent's parameters, so gradients of every
sub-network land in the one set of shared weights. The parent never has an "active sub-network".

**Sandwich rule + in-place distillation.** Each step trains the full network, the smallest
sub-network and ``num_random`` random sub-networks of the search space. Sub-networks learn the
teacher's token distribution (KL, teacher detached). The teacher is either the frozen original model
(``teacher="original"``, the default: the full network is also distilled towards it, which keeps the
full network's accuracy; costs one no-grad forward) or the super-network's own full network
(``teacher="inplace"``, InstaTune/OFA style: the full network trains on the LM loss).

**Device and precision.** Training runs on the parent's device (``finetune(device=...)``, the CLI's
``--device``, default: the ``--profile``'s ``runtime.device``, else cpu) under ``torch.autocast`` of that
device type. ``precision="bf16"`` autocasts to bfloat16; :func:`auto_precision` picks it where the device
profile (or, without one, :func:`toolkit.profiles.detect` of this machine: the same detector a profile's
``features.bf16`` is written by) says the hardware has native bf16 (AVX512-BF16 / AMX CPUs, sm_80+ GPUs).
The importance ordering is computed on the CPU before the model moves.

**Resumable and reproducible.** A checkpoint holds the weights, AdamW state tensors (safetensors), and
step, sampler state (``numpy`` bit-generator state), torch RNG and loss history (JSON); the data order
and learning rate are pure functions of (seed, step). A resumed run reproduces the uninterrupted run's
losses exactly.

Why hand-written: peft/transformers' Trainer know nothing of weight-sharing sub-networks; once-for-all
and DyNAS-T keep an "active sub-network" inside the model, which our house style forbids. LoRA here is
"effective weight = W + s * B @ A", then sliced like any weight: simple and exact, but it saves only
optimizer memory, not compute (the weight gradient of the merged tensor is still formed).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from toolkit.corpus import read_texts
from toolkit.errors import ConfigError, UserError
from toolkit.finetune_config import FINETUNE_VERSION, FinetuneConfig  # noqa: F401  (re-exported)
from toolkit.fileio import atomic_directory, atomic_write_bytes, atomic_write_json
from toolkit.importance import Importance
from toolkit.space import SearchSpace, SubnetConfig

CHECKPOINT_VERSION = 1
_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# -- sort once ---------------------------------------------------------------------------------------
def _head_indices(groups: torch.Tensor, group: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows of q / cols of o, rows of k / v) of the given kv groups, in that order."""
    kv_idx = (groups[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
    q_heads = (groups[:, None] * group + torch.arange(group)).reshape(-1)
    q_idx = (q_heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
    return q_idx, kv_idx


@torch.no_grad()
def sort_parent(model, importance: Importance) -> Importance:
    """Permute ``model`` in place so each layer's most important channels/groups come first.

    Function-preserving. Returns the importance of the sorted model: strictly descending channel and
    group scores (ranks, so ``topk`` has no ties and keeps prefixes) and the original layer influence.
    """
    layers = model.model.layers
    if importance.num_layers != len(layers):
        raise UserError(f"importance: has {importance.num_layers} layers, the model has {len(layers)}")
    group = model.config.num_attention_heads // model.config.num_key_value_heads
    head_dim = layers[0].self_attn.head_dim

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
        q_idx, kv_idx = _head_indices(groups, group, head_dim)
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


# -- shared-weight sub-network forward -----------------------------------------------------------------
# parent model -> {SubnetConfig: skeleton}. Weakly keyed by the model object itself: an entry goes when its
# parent is garbage-collected, so a new model can never be handed a dead one's skeleton (an ``id()`` key
# can: ids are reused after collection).
_SKELETONS: "weakref.WeakKeyDictionary[Any, dict[SubnetConfig, Any]]" = weakref.WeakKeyDictionary()
_SKELETONS_PER_PARENT = 64


def _skeleton(parent, cfg: SubnetConfig):
    """The sub-network's module structure on the meta device (cached per parent model and shape)."""
    from transformers import LlamaForCausalLM

    from toolkit.elastic import subnet_hf_config
    from toolkit.models.modeling_elastic_llama import ElasticLlamaForCausalLM

    cache = _SKELETONS.setdefault(parent, {})
    if cfg in cache:
        return cache[cfg]
    config = subnet_hf_config(parent.config, cfg)
    cls = LlamaForCausalLM if cfg.is_uniform() else ElasticLlamaForCausalLM
    with torch.device("meta"):
        child = cls(config)
    if config.tie_word_embeddings:
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
    group = parent_config.num_attention_heads // parent_config.num_key_value_heads
    head_dim = getattr(parent_config, "head_dim", None) or parent_config.hidden_size // parent_config.num_attention_heads
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
        q, kv = heads * head_dim, heads // group * head_dim
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


# -- LoRA (merged effective weights) ----------------------------------------------------------------
class Lora(torch.nn.Module):
    """Low-rank deltas for the decoder linears of a parent: ``W_eff = W + (alpha / r) * B @ A``."""

    def __init__(self, parent, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.scale = alpha / rank
        self.names: list[str] = []
        self.a = torch.nn.ParameterDict()
        self.b = torch.nn.ParameterDict()
        for name, p in parent.named_parameters():
            parts = name.split(".")
            if p.dim() == 2 and len(parts) > 2 and parts[-2] in _LORA_TARGETS:
                key = name.replace(".", "__")
                out_f, in_f = p.shape
                a = torch.randn(rank, in_f, generator=generator) / math.sqrt(in_f)  # drawn on the CPU generator
                self.a[key] = torch.nn.Parameter(a.to(p.device))
                self.b[key] = torch.nn.Parameter(torch.zeros(out_f, rank, device=p.device))
                self.names.append(name)

    def effective(self, parent) -> dict[str, torch.Tensor]:
        params = dict(parent.named_parameters())
        for name in self.names:
            key = name.replace(".", "__")
            params[name] = params[name] + self.scale * (self.b[key] @ self.a[key])
        return params

    @torch.no_grad()
    def merge_into(self, parent) -> None:
        own = dict(parent.named_parameters())
        for name, t in self.effective(parent).items():
            if name in self.names:
                own[name].copy_(t)


# -- data ------------------------------------------------------------------------------------------
def pack(tokenizer, texts: Sequence[str], seq_len: int) -> torch.Tensor:
    """Tokenize documents (each followed by EOS), concatenate, cut into (N, seq_len) windows."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False).input_ids)
        ids.append(eos)
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def batch_indices(num_windows: int, seed: int, first_sample: int, count: int) -> np.ndarray:
    """Window indices of training samples ``first_sample .. first_sample+count-1``.

    Each epoch is a permutation drawn from (seed, epoch): a pure function, so nothing to checkpoint.
    """
    out = np.empty(count, dtype=np.int64)
    for j in range(count):
        s = first_sample + j
        epoch, pos = divmod(s, num_windows)
        out[j] = np.random.default_rng([seed, epoch]).permutation(num_windows)[pos]
    return out


# -- losses ----------------------------------------------------------------------------------------
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean per-token KL(teacher || student) at ``temperature`` (scaled by T^2, as usual)."""
    t = temperature
    s = torch.log_softmax(student_logits.float() / t, dim=-1)
    p = torch.log_softmax(teacher_logits.float() / t, dim=-1)
    return (p.exp() * (p - s)).sum(-1).mean() * t * t


def lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def autocast(device: str | torch.device, precision: str):
    """``torch.autocast`` for ``device``'s type (cpu, cuda, ...): bfloat16 when ``precision`` is bf16, else off."""
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def auto_precision(device: str, profile=None) -> str:
    """``"bf16"`` where the hardware computes bf16 natively, else ``"fp32"``.

    The answer is the device profile's ``features.bf16`` when ``profile`` describes this kind of device
    (a cpu profile for ``device="cpu"``, a gpu profile for ``cuda[:N]``); otherwise the same flag as
    :func:`toolkit.profiles.detect` reads it from the machine (CPU flags / CUDA capability >= 8.0).
    """
    kind = "gpu" if torch.device(device).type == "cuda" else "cpu"
    if profile is not None and profile.kind == kind:
        return "bf16" if profile.features.bf16 else "fp32"
    from toolkit.profiles import detect

    return "bf16" if detect(device).features.bf16 else "fp32"


@torch.no_grad()
def perplexity_windows(forward: Callable[[torch.Tensor], torch.Tensor], windows: torch.Tensor, batch_size: int = 4,
                       precision: str = "fp32", device: str | torch.device = "cpu") -> float:
    """exp(mean next-token NLL) over (N, T) windows on ``device``; a plain monitor, not the benchmark evaluator."""
    nll, count = 0.0, 0
    for i in range(0, windows.shape[0], batch_size):
        ids = windows[i : i + batch_size].to(device)
        with autocast(device, precision):
            logits = forward(ids)
        nll += lm_loss(logits, ids).item() * ids[:, 1:].numel()
        count += ids[:, 1:].numel()
    return float(math.exp(nll / count))


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


# -- the trainer ------------------------------------------------------------------------------------
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
        self.rng = np.random.default_rng(config.seed)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.monitor = monitor_configs(self.space)
        self.cpu_offset_s = 0.0  # training CPU spent before the global steps (the local phase)

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
        c = self.config
        t0, c0 = time.perf_counter(), time.process_time()
        lr = c.lr_at(self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
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


# -- the whole job (used by the CLI) ----------------------------------------------------------------
def finetune(model: str, data_file: str | Path, out: str | Path, config: FinetuneConfig, calibration_file: str | Path,
             resume: bool = False, overwrite: bool = False, log: Callable[[str], None] | None = None,
             max_minutes: float | None = None, command: str | None = None, device: str = "cpu",
             max_cpu_minutes: float | None = None, workers: int = 1, executor=None) -> Path | None:
    """Load, sort, train (resumably) on ``device`` and save the super-network. Returns the output folder, or
    None when the local phase was stopped between layers (nothing saved yet; ``--resume`` continues).

    ``max_cpu_minutes`` is a budget of training CPU time for the whole run (all sessions, all threads;
    monitor evaluations excluded): the unit in which methods are compared fairly on a shared machine.
    ``max_minutes`` (wall clock, this session) and SIGTERM stop training early but cleanly: the step in
    flight finishes, a checkpoint is written and the super-network is saved; ``--resume`` continues.
    """
    import copy
    import signal

    from toolkit.importance import load_or_compute_importance
    from toolkit.models import load_model
    from toolkit.progress import enabled as bar_enabled
    from toolkit.progress import progress_bar

    out = Path(out)
    ckpt = out / "checkpoint"
    local = config.method != "global"
    if resume and not (ckpt / "state.json").is_file() and not (local and (out / "local_cache").is_dir()):
        raise UserError(f"{ckpt}: no checkpoint to resume from")
    if not resume and out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out}: exists and is not empty (pass --resume to continue it, or --overwrite)")
    texts = read_texts(data_file, "training text")
    if config.val_docs >= len(texts):
        raise ConfigError("val_docs", f"{config.val_docs} held-out documents leave none of the {len(texts)} to train on")
    loaded = load_model(model)
    if (Path(loaded.folder) / "finetune.json").is_file():
        raise UserError(f"{model}: is already a fine-tuned super-network; fine-tune the original model")
    if local:
        from toolkit.local_distillation import check_local_supported

        check_local_supported(loaded.model.config)
    if overwrite and not resume:  # nothing of an earlier run may leak into this one (a later --resume included)
        for sub in ("local_cache", "checkpoint"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in ("local.json", "finetune.json"):
            (out / name).unlink(missing_ok=True)
    importance = load_or_compute_importance(loaded, calibration_file)  # on the CPU, where it was loaded
    loaded.model.to(device)
    teacher = copy.deepcopy(loaded.model) if config.teacher == "original" and config.method != "local" else None
    train_texts = texts[: len(texts) - config.val_docs]
    val_texts = texts[len(texts) - config.val_docs:]
    windows = pack(loaded.tokenizer, train_texts, config.seq_len)
    val = pack(loaded.tokenizer, val_texts, config.seq_len)[: config.val_windows] if config.val_docs else None
    trainer = SupernetTrainer(loaded.model, loaded.tokenizer, importance, windows, config, teacher=teacher, val_windows=val)
    local_record = _read_local_record(out) if resume and local else None
    if resume and (ckpt / "state.json").is_file():
        # Always: it checks that the checkpoint was trained with these settings (--method included). A local
        # run's checkpoint is written at the end of its local phase, so its weights are the locally trained ones.
        trainer.load_checkpoint(ckpt)
    elif local_record is not None:
        raise UserError(f"{out / 'local.json'}: the local phase is recorded but {ckpt} is missing; "
                        "start afresh with --overwrite")
    if local_record is not None:
        trainer.cpu_offset_s = local_record["cpu_seconds"]
    sessions = _previous_sessions(out) if resume else []
    info = {"model": str(model), "model_hash": loaded.model_hash, "data": str(data_file), "train_windows": int(windows.shape[0]),
            "train_tokens_per_step": config.seq_len * config.batch_size * config.grad_accum,
            "held_out_docs": config.val_docs, "device": str(device), "command": command, "method": config.method}
    first_step = trainer.step
    say = log or (lambda s: None)
    say(f"{config.method}: training {len(trainer.trainable)} tensors ({sum(p.numel() for p in trainer.trainable):,} parameters) on "
        f"{windows.shape[0]} windows of {config.seq_len} tokens; space: mlp {trainer.space.mlp_choices[0]}.."
        f"{trainer.space.mlp_choices[-1]}, heads {list(trainer.space.head_choices)}, depth "
        f"{trainer.space.depth_choices[0]}..{trainer.space.depth_choices[-1]}")
    if trainer.step == 0 and not trainer.evals:
        say(f"step 0 held-out perplexity: {json.dumps(trainer.evaluate(phase='sliced')['val_ppl'] if val is not None else {})}")
    stop = {"why": None}
    start = time.monotonic()

    def on_term(signum, frame):
        stop["why"] = "SIGTERM"

    old_handler = signal.signal(signal.SIGTERM, on_term) if hasattr(signal, "SIGTERM") else None
    try:
        if local and local_record is None:
            local_record = _local_phase(trainer, out, config, info, say, stop, start, max_minutes, workers, progress_bar,
                                        max_cpu_minutes, executor=executor)
            if local_record is None:  # stopped between layers: the trained layers are kept, --resume continues
                return None
        if local_record is not None:
            info["local"] = {k: v for k, v in local_record.items() if k != "layers"}
        if config.method != "local":  # global, or the global sandwich after the local phase
            _train_loop(trainer, config, ckpt, info, say, stop, start, max_minutes, bar_enabled, progress_bar,
                        max_cpu_minutes=max_cpu_minutes)
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    info = dict(info, stopped_early=stop["why"], sessions=sessions + [
        {"command": command, "steps_from": first_step, "steps_to": trainer.step, "stopped_early": stop["why"]}])
    save_supernet(trainer, out, info)
    if local:
        shutil.rmtree(out / "local_cache", ignore_errors=True)  # GBs of activations; local.json keeps the record
    return out


def _read_local_record(out: Path) -> dict[str, Any] | None:
    path = out / "local.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the local phase record ({exc}); start afresh with --overwrite") from None
    cpu = record.get("cpu_seconds") if isinstance(record, dict) else None
    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or cpu < 0:
        raise ConfigError("cpu_seconds", "missing or not a non-negative number; start afresh with --overwrite", str(path))
    return record


def _local_phase(trainer: SupernetTrainer, out: Path, config: FinetuneConfig, info, say, stop, start, max_minutes,
                 workers: int, progress_bar, max_cpu_minutes: float | None = None, executor=None) -> dict[str, Any] | None:
    """Blockwise local distillation of the sorted parent (toolkit.local_distillation), resumable per layer.

    Returns the phase's record (also written to ``out/local.json`` after a checkpoint of the result), or
    None when stopped between layers.
    """
    from toolkit import local_distillation as ld

    cache = out / "local_cache"
    parent = trainer.parent
    n = min(config.local_windows, trainer.windows.shape[0])
    idx = batch_indices(trainer.windows.shape[0], config.seed, 0, n)  # the first epoch's order: n distinct windows
    blocks = hashlib.sha256()  # the sorted parent's blocks: a different --calibration sorts them differently
    for name, t in parent.state_dict().items():
        if name.startswith("model.layers."):
            blocks.update(name.encode())
            blocks.update(t.detach().float().cpu().numpy().tobytes())
    key = {"model_hash": info["model_hash"], "blocks": blocks.hexdigest(),
           "windows": hashlib.sha256(trainer.windows[torch.from_numpy(idx)].numpy().tobytes()).hexdigest(),
           "val": None if trainer.val_windows is None else hashlib.sha256(trainer.val_windows.numpy().tobytes()).hexdigest()}
    was = parent.training
    parent.eval()
    with progress_bar() as bar:
        total = n + (0 if trainer.val_windows is None else trainer.val_windows.shape[0])
        t = bar.add_task("cache activations", total=total, info="")
        manifest = ld.cache_activations(parent, trainer.windows[torch.from_numpy(idx)], trainer.val_windows, cache, key,
                                        on_batch=lambda k: bar.advance(t, k))
        bar.update(t, completed=total)
    ld.prepare_layers(parent, cache)
    if executor is not None and executor.parallel:  # Ray workers: their own count and threads
        workers, threads = executor.workers, executor.worker_threads
    else:
        threads = max(1, torch.get_num_threads() // max(1, workers)) if workers > 1 else None
    specs = [dict(s, cache_key=manifest["key"]) for s in ld.layer_specs(parent, trainer.space, cache, config, threads=threads)]
    spent = {"cpu": manifest["cpu_seconds"]}

    def should_stop() -> bool:
        if max_minutes is not None and time.monotonic() - start > max_minutes * 60:
            stop["why"] = f"time budget of {max_minutes} min"
        if max_cpu_minutes is not None and spent["cpu"] >= max_cpu_minutes * 60:
            stop["why"] = f"CPU budget of {max_cpu_minutes} min (spent in the local phase)"
        return stop["why"] is not None

    with progress_bar() as bar:
        t = bar.add_task("local distillation", total=len(specs), info="")

        def done(rec):
            spent["cpu"] += rec["cpu_seconds"]
            e = rec["reconstruction_error"]
            small = max(e["trained"], key=e["trained"].get)  # the worst (narrowest) width
            bar.advance(t)
            bar.update(t, info=f"layer {rec['layer']}: {small} {e['sliced'][small]:.3f} -> {e['trained'][small]:.3f}")

        records = ld.run_jobs(specs, workers=workers, on_done=done, should_stop=should_stop, executor=executor)
    if len(records) < len(specs):
        say(f"local distillation stopped after {len(records)} of {len(specs)} layers ({stop['why']}); --resume continues")
        parent.train(was)
        return None
    ls_cpu = manifest["cpu_seconds"] + sum(r["ls_cpu_seconds"] for r in records)
    cpu = manifest["cpu_seconds"] + sum(r["cpu_seconds"] for r in records)
    if config.ls_init:
        ld.load_layers(parent, cache, "ls")
        ev = trainer.evaluate(phase="least_squares", cpu_seconds=ls_cpu)
        if ev:
            say(f"after least squares, held-out perplexity: {json.dumps(ev['val_ppl'])}")
    ld.load_layers(parent, cache, "trained")
    trainer.cpu_offset_s = cpu
    ev = trainer.evaluate(phase="local")
    if ev:
        say(f"after local distillation, held-out perplexity: {json.dumps(ev['val_ppl'])}")
    parent.train(was)
    tokens = max(r["tokens"] for r in records)
    record = {"version": 1, "layers_trained": len(records), "cache_windows": n, "cache_cpu_seconds": manifest["cpu_seconds"],
              "least_squares_cpu_seconds": round(ls_cpu, 3), "cpu_seconds": round(cpu, 3),
              "tokens_per_layer": tokens, "tokens_per_cpu_hour": round(tokens / cpu * 3600, 1) if cpu > 0 else None,
              "workers": workers, "executor": executor.describe() if executor is not None else {"executor": "local"},
              "layers": records}
    trainer.save_checkpoint(out / "checkpoint", {"info": info})
    atomic_write_json(out / "local.json", record)
    return record


def _previous_sessions(out: Path) -> list[dict[str, Any]]:
    """The invocations that trained ``out`` so far (from its ``finetune.json``), so that a resumed run
    records its whole history, not only its last command. A session killed before saving leaves a gap
    in the steps (the next one starts from the last checkpoint)."""
    path = Path(out) / "finetune.json"
    if not path.is_file():
        return []
    try:
        prev = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if isinstance(prev.get("sessions"), list):
        return list(prev["sessions"])
    return [{"command": prev.get("command"), "steps_from": None, "steps_to": prev.get("steps_done"),
             "stopped_early": prev.get("stopped_early")}]


def _train_loop(trainer, config, ckpt, info, say, stop, start, max_minutes, bar_enabled, progress_bar,
                max_cpu_minutes: float | None = None) -> None:
    with progress_bar() as bar:
        task = bar.add_task("finetune", total=config.steps, completed=trainer.step, info="")
        while trainer.step < config.steps:
            if max_minutes is not None and time.monotonic() - start > max_minutes * 60:
                stop["why"] = f"time budget of {max_minutes} min"
            if max_cpu_minutes is not None and trainer.train_cpu_seconds() >= max_cpu_minutes * 60:
                stop["why"] = f"CPU budget of {max_cpu_minutes} min"
            if stop["why"]:
                say(f"stopping at step {trainer.step}: {stop['why']}")
                if not trainer.evals or trainer.evals[-1]["step"] != trainer.step:
                    trainer.evaluate()
                trainer.save_checkpoint(ckpt, {"info": info})
                break
            rec = trainer.train_step()
            text = " ".join(f"{k}={v:.3f}" for k, v in rec["loss"].items())
            bar.update(task, completed=trainer.step, info=text)
            if not bar_enabled():
                say(f"step {trainer.step}/{config.steps} {rec['seconds']:.1f}s lr={rec['lr']:.2e} {text}")
            last = trainer.step == config.steps
            if trainer.step % config.eval_every == 0 or last:
                ev = trainer.evaluate()
                if ev:
                    say(f"step {trainer.step} held-out perplexity: {json.dumps(ev['val_ppl'])}")
            if trainer.step % config.checkpoint_every == 0 or last:
                trainer.save_checkpoint(ckpt, {"info": info})
