"""LoRA as merged effective weights: ``W_eff = W + (alpha / r) * B @ A``, then sliced like any weight.

Why hand-written: peft wraps modules, and the super-network's forward runs a meta-device skeleton on
sliced views of the parent's tensors, so a delta must be a tensor that can be sliced, not a module.
Simple and exact, but it saves only optimizer memory, not compute (the weight gradient of the merged
tensor is still formed).
"""

from __future__ import annotations

import math

import torch

_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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
