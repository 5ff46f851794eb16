"""llama.cpp as an engine: load a GGUF, run it teacher-forced, time it, quantize with llama.cpp's quantizer.

Through llama-cpp-python (the ``[llamacpp]`` extra; :func:`toolkit.engines.require` checks it first).
Only its low-level pieces are used: a model, a context, ``eval`` of token ids with the logits of every
position kept (``logits_all``), and ``llama_model_quantize``. Nothing from a GGUF file runs as code: a
GGUF is tensors and metadata, and llama.cpp reads its chat template as a string, never executing it.

* :class:`LlamaCpp` holds one loaded model and context. :meth:`LlamaCpp.logits` feeds a token sequence
  (teacher forcing) and returns the logits at every position; with ``reuse_prefix`` the KV cache of the
  longest common prefix with the previous call is kept, so scoring several continuations of one context
  evaluates the context once. :meth:`LlamaCpp.measure` times a profile's workload (prefill of a fresh
  cache, then single-token decode steps) through :func:`toolkit.measure.time_callable`, the project's one
  timing primitive, the same way :mod:`toolkit.calibrate.latency` times PyTorch.
* The KV cache is llama.cpp's default (f16) for timing, as deployed; parity checks ask for an f32 cache
  (``kv_f32``), because the f16 cache alone moves logits by ~3e-2 on SmolLM2 (f32: 5e-5).
* :data:`GGUF_TYPES`: the llama.cpp file types the export can write, with llama.cpp's ``llama_ftype`` ids
  and the nominal bytes per weight the latency predictor uses.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from toolkit.errors import UserError


@dataclass(frozen=True)
class GgufType:
    name: str
    ftype: int  # llama.cpp's llama_ftype (include/llama.h)
    bytes_per_weight: float  # nominal, for 2-D weights (block size / bytes per block; mixes: typical average)
    quantized: bool


# bytes per weight: q8_0 34 B / 32, q4_0 18/32, q4_1 20/32, q5_0 22/32, q5_1 24/32, q6_K 210/256,
# q5_K 176/256, q4_K 144/256, q3_K 110/256, q2_K 84/256; the _M / _S mixes keep some tensors at a higher
# type, so theirs are llama.cpp's typical averages (4.85, 5.69, 3.91 bits per weight).
GGUF_TYPES: dict[str, GgufType] = {t.name: t for t in (
    GgufType("f32", 0, 4.0, False),
    GgufType("f16", 1, 2.0, False),
    GgufType("q8_0", 7, 34 / 32, True),
    GgufType("q6_k", 18, 210 / 256, True),
    GgufType("q5_k_m", 17, 5.69 / 8, True),
    GgufType("q5_k_s", 16, 176 / 256, True),
    GgufType("q5_1", 9, 24 / 32, True),
    GgufType("q5_0", 8, 22 / 32, True),
    GgufType("q4_k_m", 15, 4.85 / 8, True),
    GgufType("q4_k_s", 14, 144 / 256, True),
    GgufType("q4_1", 3, 20 / 32, True),
    GgufType("q4_0", 2, 18 / 32, True),
    GgufType("q3_k_m", 12, 3.91 / 8, True),
    GgufType("q2_k", 10, 84 / 256, True),
)}
GGML_TYPE_F32 = 0  # ggml_type of an f32 KV cache


def gguf_type(name: str, flag: str = "--gguf-type") -> GgufType:
    key = str(name).lower()
    if key not in GGUF_TYPES:
        raise UserError(f"{flag}: unknown GGUF type {name!r}; choose from {', '.join(GGUF_TYPES)}")
    return GGUF_TYPES[key]


def _llama_cpp():
    from toolkit.engines import require

    require("llama.cpp")
    import llama_cpp

    _silence(llama_cpp)
    return llama_cpp


_LOG_CALLBACK = None  # kept alive: llama.cpp holds the pointer


def amx_backend(llama_cpp) -> bool:
    """Whether this llama.cpp build runs matmuls through ggml's AMX backend (built with -march=native on a
    host with AMX-INT8)."""
    try:
        return "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    except Exception:  # pragma: no cover - an older binding without the call
        return False


@contextlib.contextmanager
def _without_extra_buffers(llama_cpp):
    """Load with ``use_extra_bufts = False`` (llama.cpp's ``--no-repack``): its AMX buffer type crashes
    (SIGSEGV in ``ggml_backend_amx_mul_mat``, llama.cpp issue #20824, open) on q8_0 models here; the
    binding has no argument for it, so its default model parameters are wrapped for one load."""
    low = llama_cpp.llama_cpp
    real = low.llama_model_default_params

    def params():
        p = real()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = real


def _silence(llama_cpp) -> None:
    """Route llama.cpp's log lines (model loading, graph sizes) to nowhere unless TOOLKIT_LLAMA_LOG is set."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None or os.environ.get("TOOLKIT_LLAMA_LOG"):
        return

    @llama_cpp.llama_log_callback
    def _quiet(level, text, user_data):  # noqa: ARG001 - the C signature
        return None

    _LOG_CALLBACK = _quiet
    llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


def quantize(src: str | os.PathLike, dst: str | os.PathLike, type_name: str, threads: int | None = None,
             allow_requantize: bool = False) -> None:
    """Quantize the GGUF ``src`` (f32/f16) to ``type_name`` with llama.cpp's own ``llama_model_quantize``.

    ``allow_requantize``: also accept an already quantized ``src`` (llama.cpp dequantizes each tensor first).
    """
    llama_cpp = _llama_cpp()
    t = gguf_type(type_name)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = t.ftype
    params.nthread = int(threads or 0)
    params.allow_requantize = bool(allow_requantize)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise UserError(f"{src}: llama.cpp could not quantize it to {t.name} (llama_model_quantize returned {rc})")


@dataclass(frozen=True)
class EngineMeasurement:
    """Prefill latency and decode speed of one model in llama.cpp (fields as :class:`toolkit.calibrate.latency.ModelMeasurement`)."""

    prefill_ms: float
    decode_ms_per_token: float
    spread: Mapping[str, float] = field(default_factory=dict)
    repeats: int = 0
    flagged: bool = False

    @property
    def decode_tokens_per_s(self) -> float:
        return 1e3 / self.decode_ms_per_token


class LlamaCpp:
    """One GGUF loaded in llama.cpp with one context (batch 1: llama-cpp-python runs one sequence)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, n_ctx: int = 512,
                 kv_f32: bool = False, logits_all: bool = True, n_batch: int = 512):
        llama_cpp = _llama_cpp()
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such GGUF file")
        kw = dict(type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32) if kv_f32 else {}
        n_threads = int(threads) if threads else max(1, (os.cpu_count() or 2) // 2)
        try:
            with _without_extra_buffers(llama_cpp) if amx_backend(llama_cpp) else contextlib.nullcontext():
                self.llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=int(n_ctx), n_batch=min(n_batch, n_ctx),
                                           n_ubatch=min(n_batch, n_ctx), n_threads=n_threads, n_threads_batch=n_threads,
                                           logits_all=logits_all, verbose=bool(os.environ.get("TOOLKIT_LLAMA_LOG")),
                                           seed=0, **kw)
        except (ValueError, RuntimeError) as exc:
            raise UserError(f"{self.path}: llama.cpp could not load it ({str(exc).splitlines()[0]})") from None
        self.threads = n_threads
        self.n_ctx = int(n_ctx)
        self.logits_all = logits_all
        self._tokens: list[int] = []  # what the KV cache holds

    @property
    def n_vocab(self) -> int:
        return int(self.llm.n_vocab())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.llm.close()

    def __enter__(self) -> "LlamaCpp":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's token ids for ``text`` from the file's own tokenizer (no BOS, special tokens as text)."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _check_len(self, n: int) -> None:
        if n > self.n_ctx:
            raise UserError(f"{self.path}: a {n}-token sequence exceeds the context of {self.n_ctx} tokens")

    def logits(self, tokens: Sequence[int], reuse_prefix: bool = False) -> np.ndarray:
        """Logits at every position of ``tokens`` (teacher-forced), ``(T, vocab)`` float32.

        ``reuse_prefix``: keep the KV cache of the longest common prefix with the previous call and
        evaluate only the rest (at least the last token, so every returned row was computed by llama.cpp).
        """
        if not self.logits_all:
            raise ValueError("logits() needs a context opened with logits_all=True")
        tokens = [int(t) for t in tokens]
        self._check_len(len(tokens))
        keep = 0
        if reuse_prefix:
            for a, b in zip(self._tokens, tokens):
                if a != b:
                    break
                keep += 1
            keep = min(keep, len(tokens) - 1)
        self.llm.n_tokens = keep  # eval() drops the cache from n_tokens on (kv_cache_seq_rm)
        self.llm.eval(tokens[keep:])
        self._tokens = tokens
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32, copy=True)

    def greedy(self, prompt_ids: Sequence[int], n: int) -> list[int]:
        """``n`` greedy tokens after ``prompt_ids`` (argmax of the full logits, as the parity reference)."""
        seq = [int(t) for t in prompt_ids]
        out: list[int] = []
        for _ in range(n):
            nxt = int(self.logits(seq, reuse_prefix=True)[-1].argmax())
            out.append(nxt)
            seq.append(nxt)
        return out

    def _run(self, tokens: Sequence[int], fresh: bool) -> None:
        if fresh:
            self.llm.n_tokens = 0
        self.llm.eval(list(tokens))
        self._tokens = []  # the cache no longer holds a sequence logits() may reuse

    def measure(self, prompt_tokens: int = 128, generate_tokens: int = 32, repeats: int = 5, warmup: int = 1,
                max_spread: float = 0.10, seed: int = 0) -> EngineMeasurement:
        """Time the workload: prefill ``prompt_tokens`` into a fresh cache, then ``generate_tokens`` decode steps.

        Token ids are seeded random ids (teacher-forced steps: the work is the same on every repeat and for
        every model). Re-measured once with twice the repeats when the spread exceeds ``max_spread``.
        """
        from toolkit.measure import time_prefill_decode

        self._check_len(prompt_tokens + generate_tokens)
        rng = np.random.default_rng(seed)
        hi = max(4, self.n_vocab)
        ids = rng.integers(3, hi, prompt_tokens).tolist()
        steps = rng.integers(3, hi, generate_tokens).tolist()

        def prefill():
            self._run(ids, fresh=True)

        def decode_from(_cache):  # the cache lives in the llama.cpp context prefill() just filled
            for t in steps:
                self._run([t], fresh=False)

        t_pre, t_dec, flagged = time_prefill_decode(prefill, decode_from, repeats, warmup, max_spread)
        return EngineMeasurement(prefill_ms=t_pre.median_s * 1e3,
                                 decode_ms_per_token=t_dec.median_s * 1e3 / generate_tokens,
                                 spread={"prefill_ms": t_pre.spread, "decode_ms_per_token": t_dec.spread},
                                 repeats=t_dec.repeats, flagged=flagged)


def metadata(path: str | os.PathLike) -> dict[str, object]:
    """A GGUF file's key/value metadata (scalars and short arrays; token tables left out), read with ``gguf``."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    out: dict[str, object] = {}
    for name, f in r.fields.items():
        if name.startswith("tokenizer.ggml.") and name not in ("tokenizer.ggml.model", "tokenizer.ggml.pre"):
            continue
        try:
            out[name] = f.contents()
        except Exception:  # noqa: BLE001 - an exotic field type is left out, not fatal
            continue
    return out


def target_logprobs(logits: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """log P(target) per row of ``logits`` (n, V), in float64 (the precision the PyTorch evaluator scores in). (n,)"""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
    return x[np.arange(len(targets)), np.asarray(targets)] - lse


def perplexity(lm: LlamaCpp, ids: Sequence[int], window: int = 512, max_tokens: int | None = None) -> dict[str, float]:
    """Perplexity of token ids in non-overlapping windows of ``window`` tokens, each scoring its ``window - 1``
    predicted tokens: the protocol of :func:`toolkit.evaluate.perplexity` with its default stride."""
    ids = [int(t) for t in ids][: max_tokens or None]
    if len(ids) < 2:
        raise UserError("perplexity: the text has fewer than 2 tokens")
    nll, scored = 0.0, 0
    for begin in range(0, len(ids), window):
        chunk = ids[begin: begin + window]
        if len(chunk) < 2:
            break
        nll -= float(target_logprobs(lm.logits(chunk)[:-1], chunk[1:]).sum())
        scored += len(chunk) - 1
    return {"tokens": scored, "value": float(np.exp(nll / scored))}
