"""Perplexity of a text (or a text file) on a PyTorch model, in fixed windows: :func:`perplexity` returns a
:class:`PerplexityResult`, what ``toolkit eval`` reports for ``--task wikitext2`` or ``--text FILE``.

(The module is not named ``perplexity`` so that it does not share the name of the function that
:mod:`toolkit.evaluate` re-exports.)"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from toolkit.errors import UserError
from toolkit.evaluate.engine import decoder_and_head, token_logprobs
from toolkit.evaluate.results import EVAL_VERSION


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll_sum: float
    tokens_scored: int
    tokens_total: int
    window: int
    stride: int
    seconds: float
    higher_is_better: dict[str, bool] = field(default_factory=lambda: {"perplexity": False})
    version: int = EVAL_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "perplexity": self.perplexity, "nll_sum": self.nll_sum,
                "tokens_scored": self.tokens_scored, "tokens_total": self.tokens_total, "window": self.window,
                "stride": self.stride, "seconds": self.seconds, "higher_is_better": dict(self.higher_is_better)}


def _read_text(text_or_file: str | os.PathLike) -> str:
    if isinstance(text_or_file, os.PathLike) or (
        isinstance(text_or_file, str) and "\n" not in text_or_file and len(text_or_file) < 4096
        and os.path.isfile(text_or_file)
    ):
        path = Path(text_or_file)
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read text file ({exc})") from None
    return str(text_or_file)


@torch.inference_mode()
def perplexity(
    model,
    tokenizer,
    text_or_file: str | os.PathLike,
    window: int = 512,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 8,
) -> PerplexityResult:
    """Perplexity of a text (or a file: a ``Path``, or a ``str`` naming an existing file) in fixed windows.

    The text is tokenized once without special tokens (and cut to ``max_tokens``); windows of ``window``
    tokens start every ``stride`` tokens (default: ``window``, i.e. non-overlapping, the GPTQ/AWQ
    protocol where each window scores its ``window - 1`` predicted tokens). A token is scored at most
    once, by the first window that predicts it, with the earlier tokens of that window as its context
    (the Hugging Face sliding-window protocol when ``stride < window``); a window's first token is only
    context. Windows are batched, and the LM head runs only on the scored positions.
    """
    t0 = time.perf_counter()
    stride = window if stride is None else stride
    if window < 2 or not 1 <= stride <= window:
        raise UserError(f"perplexity: need window >= 2 and 1 <= stride <= window, got window={window} stride={stride}")
    text = _read_text(text_or_file)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n = len(ids)
    if n < 2:
        raise UserError("perplexity: the text has fewer than 2 tokens")
    decoder, head = decoder_and_head(model)
    device = next(model.parameters()).device
    spans = []  # (begin, end, first scored position in the text)
    scored_until = 1
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        first = max(scored_until, begin + 1)
        if end > first:
            spans.append((begin, end, first))
            scored_until = end
        if end == n:
            break
    ids_t = torch.tensor(ids)
    nll = 0.0
    scored = 0
    by_len: dict[int, list[tuple[int, int, int]]] = {}
    for s in spans:
        by_len.setdefault(s[1] - s[0], []).append(s)
    for length, group in by_len.items():
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            x = torch.stack([ids_t[b:e - 1] for b, e, _ in chunk]).to(device)  # (B, length - 1): the last token is only a target
            h = decoder(input_ids=x, use_cache=False).last_hidden_state  # (B, length - 1, H)
            rows, tgt = [], []
            for j, (b, e, first) in enumerate(chunk):
                for t in range(first, e):  # text token t is predicted at window position t - 1 - b >= 0
                    rows.append(j * (length - 1) + (t - 1 - b))
                    tgt.append(ids[t])
            hidden = h.reshape(-1, h.shape[-1]).index_select(0, torch.tensor(rows, device=device))
            lp = token_logprobs(head, hidden, torch.tensor(tgt, device=device))
            nll -= float(lp.sum())
            scored += len(tgt)
    return PerplexityResult(
        perplexity=math.exp(nll / scored), nll_sum=nll, tokens_scored=scored, tokens_total=n, window=window,
        stride=stride, seconds=time.perf_counter() - t0,
    )
