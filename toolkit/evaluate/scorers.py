"""Scorers: the one thing the evaluator asks of an engine, the log-likelihood of each token request.

Building requests and computing metrics is the evaluator's (:mod:`toolkit.evaluate.tokenization`,
:mod:`toolkit.evaluate.results`); scoring the requests is a :class:`Scorer`'s: :class:`TorchScorer` (the
packed tree engine of :mod:`toolkit.evaluate.engine`, on a PyTorch model) or :class:`LlamaCppScorer` (a
GGUF file in llama.cpp, one request after another with the KV cache of the shared prefix kept,
log-softmax in float64), so a quantized artifact's accuracy is measured in the engine it is deployed in,
on the same requests. Its tokenizer is the one transformers builds from the GGUF
(:func:`~toolkit.evaluate.tokenization.gguf_tokenizer`), the PyTorch path's. On an f32 GGUF export both
engines give the same predictions (``tests/test_eval_llamacpp.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from toolkit.errors import UserError
from toolkit.evaluate.engine import DEFAULT_BATCH_TOKENS, common_prefix_length, score_token_requests
from toolkit.evaluate.tokenization import DEFAULT_MAX_LENGTH, lm_eval_inputs, model_max_length


class Scorer:
    """What the evaluator asks of an engine: the log-likelihood sum of each (context tokens, continuation
    tokens) request. Everything else (tokenization, subsets, splits, metrics, the result record) is the
    evaluator's and the same for every engine.

    ``engine`` names the engine (:data:`toolkit.engines.ENGINES`); ``max_length`` is lm-eval's maximum
    length of the model (the left truncation and the over-long continuation check use it).
    """

    engine: str = ""
    max_length: int = DEFAULT_MAX_LENGTH

    def score(self, requests: Sequence[tuple[list[int], list[int]]], owners: Sequence[int] | None = None,
              on_batch: Callable[[int], None] | None = None) -> tuple[np.ndarray, int]:
        """(log-likelihoods (R,) float64, tokens the engine computed); ``on_batch(n)`` after n requests."""
        raise NotImplementedError


class TorchScorer(Scorer):
    """A PyTorch model, scored by the packed tree engine (:func:`score_token_requests`)."""

    engine = "torch"

    def __init__(self, model, max_batch_tokens: int = DEFAULT_BATCH_TOKENS):
        self.model = model
        self.max_batch_tokens = max_batch_tokens
        self.max_length = model_max_length(model)

    def score(self, requests, owners=None, on_batch=None):
        return score_token_requests(self.model, requests, owners, max_batch_tokens=self.max_batch_tokens,
                                    on_batch=on_batch)


_LLAMACPP_CTX_STEP = 64  # the llama.cpp context is the longest input rounded up to this many tokens


class LlamaCppScorer(Scorer):
    """A GGUF file, scored in llama.cpp (:class:`toolkit.engines.llamacpp.LlamaCpp`, ``logits_all``).

    Requests run one after another in lexicographic order of their input tokens, so neighbours share the
    longest prefixes (an example's context, few-shot examples); :meth:`LlamaCpp.logits` keeps the KV cache
    of the prefix shared with the previous request and computes only the rest. The log-softmax of the
    rows that predict continuation tokens is computed in float64 from llama.cpp's float32 logits.

    The llama.cpp context is opened on the first :meth:`score` with room for its longest input (rounded
    up to 64 tokens: the ``logits_all`` buffer is ``n_ctx x vocab`` floats) and reopened larger when a
    later call needs it. ``max_length`` is the GGUF's ``<arch>.context_length``, which is what transformers
    makes ``max_position_embeddings`` of, so lm-eval's truncation is the same as the PyTorch path's on
    the same file. ``kv_f32``: an f32 KV cache (for parity with PyTorch; llama.cpp's default f16 cache
    moves SmolLM2's logits by ~3e-2).
    """

    engine = "llama.cpp"

    def __init__(self, path: str | os.PathLike, threads: int | None = None, kv_f32: bool = False):
        from toolkit.engines import require
        from toolkit.engines.llamacpp import GGUF_TYPES, metadata

        require("llama.cpp")
        self.path = Path(path)
        meta = metadata(self.path)
        arch = meta.get("general.architecture")
        ctx_train = meta.get(f"{arch}.context_length")
        self.n_ctx_train = int(ctx_train) if isinstance(ctx_train, (int, np.integer)) and ctx_train > 0 else None
        self.max_length = self.n_ctx_train or DEFAULT_MAX_LENGTH  # transformers' default when it is absent
        ftype = meta.get("general.file_type")
        by_id = {t.ftype: t.name for t in GGUF_TYPES.values()}
        self.file_type = by_id.get(int(ftype), int(ftype)) if isinstance(ftype, (int, np.integer)) else None
        self.threads = threads
        self.kv_f32 = kv_f32
        self._llm = None

    def _context(self, longest: int):
        if self.n_ctx_train is not None and longest > self.n_ctx_train:
            raise UserError(f"{self.path}: a {longest}-token request exceeds the model's trained context of "
                            f"{self.n_ctx_train} tokens")
        if self._llm is None or self._llm.n_ctx < longest:
            from toolkit.engines.llamacpp import LlamaCpp

            self.close()
            n_ctx = -(-longest // _LLAMACPP_CTX_STEP) * _LLAMACPP_CTX_STEP
            if self.n_ctx_train is not None:
                n_ctx = min(n_ctx, self.n_ctx_train)
            self._llm = LlamaCpp(self.path, threads=self.threads, n_ctx=n_ctx, kv_f32=self.kv_f32, logits_all=True)
        return self._llm

    def score(self, requests, owners=None, on_batch=None):
        from toolkit.engines.llamacpp import target_logprobs

        inputs, starts, targets = lm_eval_inputs(requests, self.max_length)
        llm = self._context(max(len(x) for x in inputs))
        loglik = np.zeros(len(inputs), dtype=np.float64)
        tokens_run, previous = 0, []
        for r in sorted(range(len(inputs)), key=inputs.__getitem__):
            x = inputs[r]
            keep = min(common_prefix_length([previous, x]), len(x) - 1) if previous else 0  # what logits() keeps
            logits = llm.logits(x, reuse_prefix=True)  # (T, V)
            loglik[r] = target_logprobs(logits[starts[r]:], targets[r]).sum()
            tokens_run += len(x) - keep
            previous = x
            if on_batch is not None:
                on_batch(1)
        return loglik, tokens_run

    @property
    def threads_used(self) -> int | None:
        return None if self._llm is None else self._llm.threads

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def __enter__(self) -> "LlamaCppScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def as_scorer(model, max_batch_tokens: int = DEFAULT_BATCH_TOKENS) -> Scorer:
    """``model`` if it is already a :class:`Scorer`, else a PyTorch model scored by :class:`TorchScorer`."""
    return model if isinstance(model, Scorer) else TorchScorer(model, max_batch_tokens)

