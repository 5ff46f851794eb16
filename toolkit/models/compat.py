"""One name for the KV cache across the transformers releases this project allows (see pyproject.toml).

transformers 5.x renamed the forward argument and output field ``past_key_values`` to ``cache``; the old
name still works but warns on every call (``FutureWarning``: removed in 5.40), which would reach users of
``toolkit eval`` and ``toolkit search``. These helpers pick whichever name the installed release uses,
so the toolkit works, silently, on both sides of the rename.
"""

from __future__ import annotations

import inspect
from typing import Any


def cache_arg_name(module) -> str:
    """``"cache"`` or ``"past_key_values"``, as ``module.forward`` names it (looked up on each call, ~20 us:
    no memo to go stale when a forward is wrapped; hot loops look it up once)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def cache_kwargs(module, cache) -> dict[str, Any]:
    """``{"cache": cache}`` or ``{"past_key_values": cache}``, as ``module.forward`` names it."""
    return {cache_arg_name(module): cache}

