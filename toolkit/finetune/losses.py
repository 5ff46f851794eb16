"""The training losses, the held-out perplexity monitor, and the autocast precision they run under."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean per-token KL(teacher || student) at ``temperature`` (scaled by T^2, as usual)."""
    t = temperature
    vocab = student_logits.shape[-1]
    s = torch.log_softmax(student_logits.float() / t, dim=-1).reshape(-1, vocab)  # (tokens, V)
    p = torch.log_softmax(teacher_logits.float() / t, dim=-1).reshape(-1, vocab)
    return F.kl_div(s, p, reduction="batchmean", log_target=True) * t * t  # batchmean: sum / tokens


def lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of (B, T, V) logits on the (B, T) ids they were computed from."""
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


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
