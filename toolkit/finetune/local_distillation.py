"""Blockwise local distillation: every layer's elastic widths learn to reproduce the parent block's output.

After NVIDIA Puzzle (Bercovich et al., 2024): instead of training whole sub-networks end to end (a teacher
forward plus several full forward/backward passes, vocabulary head included, per token), each decoder
block of the *sorted* parent is trained on its own, from the parent's own input to the parent's own
output. A block costs about 1/L of the trunk per token and has no vocabulary head, and its regression
target (a 576-wide vector per token for SmolLM2) is a much denser signal than a next-token KL. Layers
are independent jobs, so they run in worker processes or on a Ray pool (:func:`run_jobs`).

The data flow, all through files in ``<out>/local_cache`` (bounded memory, resumable per layer):

1. :func:`cache_activations` runs the sorted parent once over the training windows (and the held-out
   monitor windows) and streams every block's input into ``acts/{train,val}_{i:03d}.npy`` (``i = L`` is the
   last block's output). A ``manifest.json`` written last says the cache is complete.
2. One job per layer (:func:`train_layer`, a pure function of its spec and those files):
   - optional closed-form least-squares initialisation (``ls_init``): ``o_proj`` and ``down_proj`` are refit
     jointly over every width of the space (the columns are shared, so one least-squares problem: the
     Gram matrix of the kept channels, summed over the widths that keep them, each width weighted as in
     the sandwich rule below);
   - ``local_steps`` AdamW steps of the sandwich rule *within the block*: the widest (weight
     ``full_weight``), the narrowest, and ``num_random`` random (MLP width, head groups) per step, each on
     ``log(eps + e)`` of its relative reconstruction error ``e`` = mean over tokens of
     ``|block(h)_t - parent(h)_t|^2 / |parent(h)_t|^2`` (see :func:`token_weights`);
   - the block's reconstruction error on the held-out windows for every (width, head groups) of the space,
     before, after the least-squares step and after training.
   The job writes ``layers/{i:03d}.ls.safetensors`` and ``layers/{i:03d}.safetensors`` and, last, the
   ``layers/{i:03d}.json`` record: a layer is done when its record exists and carries the spec's hash.
3. The driver (:func:`run_local`) loads the trained blocks into the parent.

**Depth is not trained locally.** Each block learns from the parent's *own* input; a sub-network that
drops whole layers feeds the next block a hidden state it never saw. Which layers to drop stays ranked
by block influence (the importance ordering), and the global sandwich (``--method local+global``) is
what adapts the network to dropped layers and to the compounding of every block's small error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.errors import UserError
from toolkit.fileio import atomic_write_bytes, atomic_write_json
from toolkit.finetune.config import warmup_cosine
from toolkit.finetune.losses import autocast
from toolkit.models.geometry import head_dim

LOCAL_CACHE_VERSION = 1
LOG_EPS = 1e-2
_BLOCK_PARAMS = ("input_layernorm.weight", "post_attention_layernorm.weight",
                 "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                 "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias", "self_attn.o_proj.bias",
                 "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
                 "mlp.gate_proj.bias", "mlp.up_proj.bias", "mlp.down_proj.bias")


# -- one block, sliced ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BlockGeometry:
    """What a block forward needs beyond its weights (plain numbers: it travels to worker processes)."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def of(cls, config) -> "BlockGeometry":
        return cls(config.hidden_size, config.num_attention_heads, config.num_key_value_heads, head_dim(config),
                   float(config.rms_norm_eps))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_local_supported(config) -> None:
    """Local distillation re-implements the Llama block (below); refuse architectures it does not compute."""
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        raise UserError(f"--method local: the parent's hidden_act is {act!r}; local distillation computes Llama's silu MLP only")
    if getattr(config, "model_type", "llama") not in ("llama",):
        raise UserError(f"--method local: model_type {config.model_type!r} is not a plain Llama block")


def _rms_norm(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm (computed in float32, cast back), as transformers' LlamaRMSNorm."""
    x = h.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(h.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _bias(p: Mapping[str, torch.Tensor], name: str, n: int | None = None):
    b = p.get(name)
    return None if b is None else (b if n is None else b[:n])


def attention_heads(p: Mapping[str, torch.Tensor], h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    geom: BlockGeometry, heads: int) -> torch.Tensor:
    """The first ``heads`` query heads' outputs, before ``o_proj``: (B, T, heads * head_dim)."""
    B, T, _ = h.shape
    hd, kv = geom.head_dim, heads // geom.group_size
    x = _rms_norm(h, p["input_layernorm.weight"], geom.rms_norm_eps)
    q = F.linear(x, p["self_attn.q_proj.weight"][: heads * hd], _bias(p, "self_attn.q_proj.bias", heads * hd))
    k = F.linear(x, p["self_attn.k_proj.weight"][: kv * hd], _bias(p, "self_attn.k_proj.bias", kv * hd))
    v = F.linear(x, p["self_attn.v_proj.weight"][: kv * hd], _bias(p, "self_attn.v_proj.bias", kv * hd))
    q = q.view(B, T, heads, hd).transpose(1, 2)  # (B, heads, T, hd)
    k = k.view(B, T, kv, hd).transpose(1, 2)  # (B, kv, T, hd)
    v = v.view(B, T, kv, hd).transpose(1, 2)
    c, s = cos[:, None].to(q.dtype), sin[:, None].to(q.dtype)  # (1, 1, T, hd)
    q, k = q * c + _rotate_half(q) * s, k * c + _rotate_half(k) * s
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=hd ** -0.5, enable_gqa=kv != heads)
    return out.transpose(1, 2).reshape(B, T, heads * hd)


def mlp_hidden(p: Mapping[str, torch.Tensor], x: torch.Tensor, width: int) -> torch.Tensor:
    """silu(gate x) * up x for the first ``width`` channels (x already normed): (B, T, width)."""
    g = F.linear(x, p["mlp.gate_proj.weight"][:width], _bias(p, "mlp.gate_proj.bias", width))
    u = F.linear(x, p["mlp.up_proj.weight"][:width], _bias(p, "mlp.up_proj.bias", width))
    return F.silu(g) * u


def block_forward(p: Mapping[str, torch.Tensor], h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  geom: BlockGeometry, width: int, heads: int) -> torch.Tensor:
    """One Llama decoder block of a *sorted* parent cut to ``width`` MLP channels and ``heads`` query
    heads (prefix slices, as :func:`toolkit.finetune.slicing.slice_params`): (B, T, D) -> (B, T, D)."""
    a = attention_heads(p, h, cos, sin, geom, heads)
    h = h + F.linear(a, p["self_attn.o_proj.weight"][:, : heads * geom.head_dim], _bias(p, "self_attn.o_proj.bias"))
    x = _rms_norm(h, p["post_attention_layernorm.weight"], geom.rms_norm_eps)
    return h + F.linear(mlp_hidden(p, x, width), p["mlp.down_proj.weight"][:, :width], _bias(p, "mlp.down_proj.bias"))


def layer_params(model, i: int) -> dict[str, torch.Tensor]:
    """Block ``i``'s tensors under their in-block names (detached copies, float32)."""
    prefix = f"model.layers.{i}."
    return {n[len(prefix):]: t.detach().float().clone() for n, t in model.state_dict().items()
            if n.startswith(prefix) and n[len(prefix):] in _BLOCK_PARAMS}


# -- 1. the activation cache ---------------------------------------------------------------------
def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def cache_activations(model, windows: torch.Tensor, val_windows: torch.Tensor | None, folder: Path, key: Mapping[str, Any],
                      batch_size: int = 4, on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Stream every block's input (and the last block's output) over ``windows`` into ``folder/acts/*.npy``.

    Reuses a complete cache made with the same ``key`` (parent hash, windows, ...). float32, exact.
    Returns the manifest.
    """
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    acts = folder / "acts"
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            manifest = {}
        if manifest.get("key") == _hash(dict(key)) and manifest.get("version") == LOCAL_CACHE_VERSION:
            return manifest
    if folder.exists():  # another parent, text or sort: nothing in it (activations, layers) may be reused
        import shutil

        shutil.rmtree(folder)
    acts.mkdir(parents=True, exist_ok=True)
    layers = model.model.layers
    L, D = len(layers), model.config.hidden_size
    c0 = time.process_time()
    parts = {"train": windows} if val_windows is None or val_windows.shape[0] == 0 else {"train": windows, "val": val_windows}
    for part, ids_all in parts.items():
        N, T = ids_all.shape
        maps = [np.lib.format.open_memmap(acts / f"{part}_{i:03d}.npy.partial", mode="w+", dtype=np.float32, shape=(N, T, D))
                for i in range(L + 1)]
        rows = slice(0, 0)

        def grab(i):
            def hook(module, args, kwargs, output):
                x = args[0] if args else kwargs["hidden_states"]
                maps[i][rows] = x.float().cpu().numpy()
                if i == L - 1:
                    out = output[0] if isinstance(output, tuple) else output
                    maps[L][rows] = out.float().cpu().numpy()
            return hook

        handles = [layer.register_forward_hook(grab(i), with_kwargs=True) for i, layer in enumerate(layers)]
        try:
            for start in range(0, N, batch_size):
                rows = slice(start, min(N, start + batch_size))
                model.model(input_ids=ids_all[rows].to(model.device), use_cache=False)
                if on_batch:
                    on_batch(rows.stop - rows.start)
        finally:
            for hd in handles:
                hd.remove()
        for i, m in enumerate(maps):
            m.flush()
            del m
            os.replace(acts / f"{part}_{i:03d}.npy.partial", acts / f"{part}_{i:03d}.npy")
    pos = torch.arange(windows.shape[1])[None]
    cos, sin = model.model.rotary_emb(torch.zeros(1, dtype=torch.float32), pos)
    from safetensors.torch import save

    atomic_write_bytes(folder / "rope.safetensors", save({"cos": cos.float().contiguous(), "sin": sin.float().contiguous()}))
    manifest = {"version": LOCAL_CACHE_VERSION, "key": _hash(dict(key)), "num_layers": L, "hidden_size": D,
                "parts": {k: list(v.shape) for k, v in parts.items()}, "cpu_seconds": round(time.process_time() - c0, 3)}
    atomic_write_json(manifest_path, manifest)
    return manifest


# -- 2. one layer's job ----------------------------------------------------------------------------
def token_weights(target: torch.Tensor) -> torch.Tensor:
    """1 / |target_t|^2 per token: (B, T, D) -> (B, T, 1).

    The next block starts with an RMSNorm, which divides every token by its own norm, so an error matters in
    proportion to the token's norm. Without this the few attention-sink tokens whose hidden states are
    1000x larger (SmolLM2's layer 20: max |h| ~2e4) would dominate the fit and every other token's error
    would be invisible.
    """
    return 1.0 / target.float().pow(2).sum(-1, keepdim=True).clamp_min(1e-12)


def _relative_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean over tokens of |out_t - target_t|^2 / |target_t|^2 (see :func:`token_weights`)."""
    return ((out.float() - target).pow(2) * token_weights(target)).sum(-1).mean()


def _weights(choices: Sequence[int], full_weight: float) -> dict[int, float]:
    """Sandwich weights of a width list in the joint least-squares fit: the widest ``full_weight``,
    every other width 1."""
    return {c: (full_weight if c == max(choices) else 1.0) for c in choices}


def _joint_least_squares(gram: torch.Tensor, cross: torch.Tensor, block: int, choices: Sequence[int],
                         weights: Mapping[int, float], ridge: float = 1e-4) -> torch.Tensor:
    """The shared weight W (out x n) minimising ``sum_w weights[w] * |W[:, :w] a_{:w} - y|^2``.

    ``gram`` = sum a a^T (n x n), ``cross`` = sum a y^T (n x out), both over the calibration tokens;
    ``choices`` are widths in units of ``block`` columns. Column j enters every width that keeps it, so the
    normal equations are ``(gram * M) W^T = cross * m`` with ``M[j, k] = sum of weights of widths > max(j, k)``.
    """
    n = gram.shape[0]
    cum = torch.zeros(n, dtype=gram.dtype)
    for c in choices:
        cum[: c * block] += weights[c]
    m = torch.minimum(cum[:, None], cum[None, :])  # widths are prefixes: keeps both j and k iff it keeps max(j, k)
    g = gram * m
    g = g + torch.eye(n, dtype=g.dtype) * (ridge * g.diagonal().mean().clamp_min(1e-12))
    return torch.linalg.solve(g, cross * cum[:, None]).T.contiguous()


def _load_part(folder: Path, part: str, i: int) -> np.ndarray:
    return np.load(folder / f"{part}_{i:03d}.npy", mmap_mode="r", allow_pickle=False)


def monitor_grid(mlp_choices: Sequence[int], head_choices: Sequence[int], max_widths: int = 6) -> list[tuple[int, int]]:
    """The (width, heads) whose reconstruction error is recorded: up to ``max_widths`` widths evenly spread
    over the space (narrowest and widest always), each with every head choice."""
    ws = sorted(mlp_choices)
    if len(ws) > max_widths:
        ws = sorted({ws[round(k * (len(ws) - 1) / (max_widths - 1))] for k in range(max_widths)})
    return [(w, hh) for w in ws for hh in head_choices]


@torch.no_grad()
def reconstruction_errors(p, h, target, cos, sin, geom, grid, batch: int = 4) -> dict[str, float]:
    """Relative reconstruction error (mean over tokens of |out - target|^2 / |target|^2) of every
    (width, heads) on the given windows (float32)."""
    out = {}
    for w, hh in grid:
        num, count = 0.0, 0
        for s in range(0, h.shape[0], batch):
            hb, tb = h[s : s + batch], target[s : s + batch]
            y = block_forward(p, hb, cos, sin, geom, w, hh)
            num += float(((y - tb).pow(2) * token_weights(tb)).sum())
            count += tb.shape[0] * tb.shape[1]
        out[f"mlp{w}_heads{hh}"] = num / max(count, 1)
    return out


@torch.no_grad()
def least_squares_init(p: dict[str, torch.Tensor], h: np.ndarray, cos, sin, geom: BlockGeometry,
                       mlp_choices: Sequence[int], head_choices: Sequence[int], full_weight: float, batch: int = 4) -> None:
    """Refit ``o_proj`` over the head choices and ``down_proj`` over the MLP widths, in place (see module doc)."""
    hd, H = geom.head_dim, geom.num_heads
    F_ = p["mlp.down_proj.weight"].shape[1]
    step = math.gcd(*mlp_choices) if len(mlp_choices) > 1 else mlp_choices[0]
    gram_o = torch.zeros(H * hd, H * hd, dtype=torch.float64)
    cross_o = torch.zeros(H * hd, geom.hidden_size, dtype=torch.float64)
    gram_d = torch.zeros(F_, F_, dtype=torch.float64)
    cross_d = torch.zeros(F_, geom.hidden_size, dtype=torch.float64)
    o_bias = _bias(p, "self_attn.o_proj.bias")
    d_bias = _bias(p, "mlp.down_proj.bias")
    for s in range(0, h.shape[0], batch):
        hb = torch.from_numpy(np.array(h[s : s + batch]))  # a copy: the cache is a read-only memmap
        z = attention_heads(p, hb, cos, sin, geom, H)  # (B, T, H*hd)
        y = F.linear(z, p["self_attn.o_proj.weight"])
        mid = hb + y + (o_bias if o_bias is not None else 0)
        a = mlp_hidden(p, _rms_norm(mid, p["post_attention_layernorm.weight"], geom.rms_norm_eps), F_)
        y_mlp = F.linear(a, p["mlp.down_proj.weight"])
        # weighted least squares, each token weighted as in the training loss (1 / |block output|^2)
        wt = token_weights(mid + y_mlp + (d_bias if d_bias is not None else 0)).reshape(-1, 1).double()
        z2, y2 = z.reshape(-1, z.shape[-1]).double(), y.reshape(-1, y.shape[-1]).double()
        gram_o += z2.T @ (z2 * wt)
        cross_o += z2.T @ (y2 * wt)
        a2, y2 = a.reshape(-1, F_).double(), y_mlp.reshape(-1, y_mlp.shape[-1]).double()
        gram_d += a2.T @ (a2 * wt)
        cross_d += a2.T @ (y2 * wt)
    groups = [c // geom.group_size for c in head_choices]
    p["self_attn.o_proj.weight"] = _joint_least_squares(gram_o, cross_o, geom.group_size * hd, groups,
                                                        _weights(groups, full_weight)).float()
    widths = [c // step for c in mlp_choices]
    p["mlp.down_proj.weight"] = _joint_least_squares(gram_d, cross_d, step, widths, _weights(widths, full_weight)).float()


def train_layer(spec: Mapping[str, Any]) -> dict[str, Any]:
    """One layer's job (a pure function of ``spec`` and the files it names; see the module doc).

    Idempotent: a layer whose record exists with this spec's hash is returned as is.
    """
    from safetensors.torch import load_file, save

    folder, i = Path(spec["cache"]), int(spec["layer"])
    record_path = folder / "layers" / f"{i:03d}.json"
    spec_hash = _hash(dict(spec, threads=None, cache=None))  # the cache's content is in spec["cache_key"]
    if record_path.is_file():
        rec = json.loads(record_path.read_text())
        if rec.get("spec_hash") == spec_hash:
            return rec
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    c0, t0 = time.process_time(), time.perf_counter()
    geom = BlockGeometry(**spec["geometry"])
    mlp_choices, head_choices = list(spec["mlp_choices"]), list(spec["head_choices"])
    p = load_file(str(folder / "layers" / f"{i:03d}.parent.safetensors"))
    rope = load_file(str(folder / "rope.safetensors"))
    cos, sin = rope["cos"], rope["sin"]
    acts = folder / "acts"
    h_train, y_train = _load_part(acts, "train", i), _load_part(acts, "train", i + 1)
    has_val = (acts / f"val_{i:03d}.npy").is_file()
    if has_val:
        h_val = torch.from_numpy(np.array(_load_part(acts, "val", i)[:2]))
        y_val = torch.from_numpy(np.array(_load_part(acts, "val", i + 1)[:2]))
    else:  # no held-out windows: monitor on the last training windows (recorded as such)
        h_val = torch.from_numpy(np.array(h_train[-2:]))
        y_val = torch.from_numpy(np.array(y_train[-2:]))
    grid = monitor_grid(mlp_choices, head_choices)
    monitor_cpu = [0.0]

    def monitor(weights) -> dict[str, float]:  # CPU spent here is not training: excluded from cpu_seconds
        m0 = time.process_time()
        out = reconstruction_errors(weights, h_val, y_val, cos, sin, geom, grid)
        monitor_cpu[0] += time.process_time() - m0
        return out

    errors = {"sliced": monitor(p)}
    if spec["ls_init"]:
        ls_windows = h_train[: spec["ls_windows"]]
        least_squares_init(p, ls_windows, cos, sin, geom, mlp_choices, head_choices, spec["full_weight"])
        errors["least_squares"] = monitor(p)
    ls_cpu = time.process_time() - c0 - monitor_cpu[0]
    atomic_write_bytes(folder / "layers" / f"{i:03d}.ls.safetensors", save({k: v.contiguous() for k, v in p.items()}))

    steps, lr = int(spec["local_steps"]), float(spec["local_lr"])
    losses: list[float] = []
    if steps > 0:
        rng = np.random.default_rng([spec["seed"], i])  # all the job's randomness (no torch RNG is drawn)
        params = {k: torch.nn.Parameter(v.clone()) for k, v in p.items()}
        opt = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
        warm = max(1, steps // 20)  # warm-up, then cosine to lr / 10 at the last step
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, warm, steps, 0.1))
        N, bs = h_train.shape[0], int(spec["local_batch"])
        nets = [(max(mlp_choices), max(head_choices), spec["full_weight"]), (min(mlp_choices), min(head_choices), 1.0)]
        for _ in range(steps):
            idx = np.sort(rng.choice(N, size=min(bs, N), replace=False))
            hb = torch.from_numpy(np.ascontiguousarray(h_train[idx]))
            tb = torch.from_numpy(np.ascontiguousarray(y_train[idx]))
            sampled = nets + [(int(rng.choice(mlp_choices)), int(rng.choice(head_choices)), 1.0) for _ in range(spec["num_random"])]
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for w, hh, weight in sampled:
                with autocast("cpu", spec["precision"]):
                    out = block_forward(params, hb, cos, sin, geom, w, hh)
                loss = _relative_error(out, tb)
                # log: every sub-network's *relative* improvement counts alike, so the cuts that start far off
                # (halved heads: error ~0.7) do not drown the near-full ones (~0.03); LOG_EPS anchors the widest
                # (error 0 at the start) with gradient weight 1 / LOG_EPS.
                (torch.log(loss + LOG_EPS) * weight).backward()
                total += float(loss.detach()) * weight
            opt.step()
            schedule.step()
            losses.append(round(total, 6))
        p = {k: v.detach() for k, v in params.items()}
    errors["trained"] = monitor(p) if steps > 0 else errors.get("least_squares", errors["sliced"])
    atomic_write_bytes(folder / "layers" / f"{i:03d}.safetensors", save({k: v.contiguous() for k, v in p.items()}))
    rec = {"layer": i, "spec_hash": spec_hash, "steps": steps,
           "tokens": steps * min(int(spec["local_batch"]), int(h_train.shape[0])) * int(h_train.shape[1]),
           "monitor_windows": "held-out" if has_val else "training",
           "ls_cpu_seconds": round(ls_cpu, 3), "cpu_seconds": round(time.process_time() - c0 - monitor_cpu[0], 3),
           "monitor_cpu_seconds": round(monitor_cpu[0], 3),
           "seconds": round(time.perf_counter() - t0, 3), "loss_first": losses[:5], "loss_last": losses[-5:],
           "reconstruction_error": errors}
    atomic_write_json(record_path, rec)
    return rec


# -- 3. the driver ---------------------------------------------------------------------------------
def layer_specs(model, space, cache: Path, config, threads: int | None = None) -> list[dict[str, Any]]:
    """The per-layer job specs (plain JSON: they can travel to another process or machine)."""
    geom = BlockGeometry.of(model.config)
    base = {"cache": str(Path(cache).resolve()), "geometry": geom.to_dict(), "mlp_choices": list(space.mlp_choices),
            "head_choices": list(space.head_choices), "ls_init": bool(config.ls_init), "ls_windows": int(config.local_windows),
            "local_steps": int(config.local_steps), "local_lr": float(config.local_lr), "local_batch": int(config.local_batch),
            "num_random": int(config.num_random), "full_weight": float(config.full_weight), "precision": config.precision,
            "seed": int(config.seed), "threads": threads}
    return [dict(base, layer=i) for i in range(len(model.model.layers))]


def layer_worker() -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """The executor factory of the layer jobs (:mod:`toolkit.search.executors`): a job is a pure function of its
    spec and the cache files, so a worker needs nothing loaded."""
    return train_layer


def run_jobs(specs: Sequence[Mapping[str, Any]], workers: int = 1, on_done: Callable[[dict], None] | None = None,
             should_stop: Callable[[], bool] | None = None, executor=None) -> list[dict[str, Any]]:
    """Run the layer jobs: in this process (``workers=1``), in ``workers`` spawned processes, or on a Ray
    pool (``executor``: a :class:`toolkit.search.executors.ExecutorSpec` of kind ray; every node must see the
    cache folder at the same absolute path, e.g. a shared file system, since jobs read and write it).

    A job already done is not rerun (see :func:`train_layer`), so a killed run resumes layer by layer;
    a job re-queued after its worker died starts that layer afresh. ``should_stop`` is asked before each
    job starts (at most ``workers`` are in flight). A job that raises stops the phase.
    """
    results: list[dict[str, Any]] = []
    if executor is not None and executor.parallel:
        from toolkit.search.executors import RayExecutor

        with RayExecutor(layer_worker, executor) as pool:
            for i, out in pool.imap_unordered([dict(s) for s in specs], should_stop=should_stop):
                if out.status == "user_error":
                    raise UserError(out.error)
                if not out.ok:
                    raise RuntimeError(f"local distillation, layer {specs[i]['layer']}: {out.error}")
                results.append(out.value)
                if on_done:
                    on_done(out.value)
        return sorted(results, key=lambda r: r["layer"])
    if workers <= 1:
        for spec in specs:
            if should_stop and should_stop():
                break
            rec = train_layer(spec)
            results.append(rec)
            if on_done:
                on_done(rec)
        return results
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    pending = list(specs)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        running: set = set()
        while pending or running:
            while pending and len(running) < workers and not (should_stop and should_stop()):
                running.add(pool.submit(train_layer, dict(pending.pop(0))))
            if not running:
                break  # stopped: nothing in flight, the rest not submitted
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                rec = fut.result()
                results.append(rec)
                if on_done:
                    on_done(rec)
    return sorted(results, key=lambda r: r["layer"])


def prepare_layers(model, cache: Path) -> None:
    """Write each block's (sorted) parent tensors for the jobs; skipped for layers already written."""
    from safetensors.torch import save

    (cache / "layers").mkdir(parents=True, exist_ok=True)
    for i in range(len(model.model.layers)):
        path = cache / "layers" / f"{i:03d}.parent.safetensors"
        if not path.is_file():
            atomic_write_bytes(path, save({k: v.contiguous() for k, v in layer_params(model, i).items()}))


@torch.no_grad()
def load_layers(model, cache: Path, which: str = "trained") -> None:
    """Copy every block's tensors from the jobs' outputs into ``model`` (``which``: trained | ls)."""
    from safetensors.torch import load_file

    own = dict(model.named_parameters())
    suffix = ".safetensors" if which == "trained" else ".ls.safetensors"
    for i in range(len(model.model.layers)):
        for k, v in load_file(str(cache / "layers" / f"{i:03d}{suffix}")).items():
            own[f"model.layers.{i}.{k}"].copy_(v.to(own[f"model.layers.{i}.{k}"].dtype))
