"""Measure a model on a device profile's workload: prefill latency, decode throughput, peak memory.

All timing goes through :func:`toolkit.measure.time_callable` (warm-up, synchronisation, repeats,
median and spread). What is measured, for batch ``B``, prompt ``T`` and ``N`` generated tokens:

* **prefill**: one forward pass over ``(B, T)`` token ids with a fresh KV cache, logits for the last
  position only (``logits_to_keep=1``, as ``generate`` does);
* **decode**: ``N`` greedy steps of one token each on top of a prefilled cache, reported per token
  (median over repeats of the mean step time) and as tokens/s (``B`` tokens per step);
* **peak memory**: the exact bytes of the model's weights plus the peak growth during one prefill +
  decode (KV cache and activations). On CUDA the growth is ``max_memory_allocated`` after
  ``reset_peak_memory_stats`` minus what was allocated before (so a parent model, or anything else
  still on the device, is not counted against the sub-network); on CPU it is the resident-set growth,
  sampled every millisecond. While a CPU measurement runs, glibc's mmap threshold is pinned (``mallopt``) so
  that large freed blocks go back to the OS and one sub-network's leftovers do not hide the next one's
  growth; see :func:`mmap_threshold` for what it is set to afterwards (glibc's own behaviour cannot be
  restored, only approximated).

A measurement whose spread exceeds ``max_spread`` is re-measured once with more repeats, and flagged if
it is still noisy.

**Engines.** :func:`subnet_measure_fn` times a calibration sub-network in the profile's
``runtime.engine``: ``torch`` as above; ``llama.cpp`` and ``onnxruntime`` by exporting the extracted
sub-network to a temporary artifact (a GGUF at ``runtime.gguf_type`` through
:func:`toolkit.export.gguf.write_gguf`; an ONNX graph through :func:`toolkit.export.onnx.export_onnx`),
then timing a prefill of a fresh cache and single-token decode steps through the same primitive
(:meth:`toolkit.engines.llamacpp.LlamaCpp.measure`; :func:`ort_measure`). Their peak memory is the
resident-set growth while the artifact is opened and runs one prefill + decode (mapped weights, KV
cache, compute buffers: what the engine holds), never less than the artifact's size on disk (every
weight is touched by a prefill; a page already mapped would otherwise hide). The first artifact of a
process is opened once before that, so the engine's one-time set-up is not the first sub-network's
memory. The artifact lives in a temporary folder (next to the predictor file when the CLI calibrates),
removed after each measurement.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from toolkit.calibrate.predictor import Measurement
from toolkit.measure import time_prefill_decode

M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
# DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc: the ceiling of glibc's dynamic threshold, where it settles
# in a process that frees large tensors (what an evaluation does). Set on leaving mmap_threshold().
MMAP_THRESHOLD_AFTER = 32 * 1024 * 1024


def _libc():
    """glibc, or None (not Linux/glibc: musl, macOS; then nothing is pinned)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 - raises AttributeError where there is no mallopt
        return libc
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def mmap_threshold(threshold_bytes: int = 1 << 20):
    """Inside the block, glibc serves blocks >= ``threshold_bytes`` with mmap and returns them to the OS
    on free (best effort; a no-op without glibc). On exit the threshold is set to 32 MiB: glibc's
    own behaviour is *not* restored, only approximated.

    *Why it cannot be restored.* glibc starts with a 128 KiB threshold that it raises on its own as
    large mmapped blocks are freed, up to ``DEFAULT_MMAP_THRESHOLD_MAX`` (32 MiB on 64-bit). The first
    ``mallopt(M_MMAP_THRESHOLD, ...)`` switches that dynamic adjustment off for the rest of the
    process; no ``mallopt`` call switches it back on, and the current value cannot be read. Whatever
    is set on exit stays, static, for every later allocation. 128 KiB (the start value) would send
    every allocation of 128 KiB or more to mmap for good, a slowdown for every evaluation after a
    calibrate/export measurement; so the exit value is 32 MiB, where the dynamic threshold settles in a
    process that allocates and frees large tensors. What is lost: glibc would have kept a lower
    threshold in a process that never freed a large block, and blocks above 32 MiB still use mmap.
    """
    libc = _libc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, int(threshold_bytes))
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_AFTER)


class _RssSampler:
    """Peak RSS of this process while the context is open, sampled in a thread."""

    def __init__(self, interval_s: float = 0.001):
        import psutil

        self.proc = psutil.Process()
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def growth_bytes(self) -> int:
        return max(0, self.peak - self.base)


@dataclass(frozen=True)
class ModelMeasurement:
    prefill_ms: float
    decode_ms_per_token: float
    peak_mem_bytes: float
    weight_bytes: int
    spread: dict = field(default_factory=dict)  # relative spread per figure
    repeats: int = 0
    flagged: bool = False

    @property
    def decode_tokens_per_s(self) -> float:
        return 1e3 / self.decode_ms_per_token


def weight_bytes(model) -> int:
    """Bytes of the model's parameters and buffers, each block of memory counted once.

    ``model.parameters()`` already skips a tied ``Parameter`` seen twice; this also counts once two
    distinct ``Parameter`` objects over the same memory (e.g. ``lm_head.weight = Parameter(embed.weight)``).
    """
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        nbytes = t.numel() * t.element_size()
        region = (t.device, t.data_ptr(), nbytes)
        if region not in seen:
            seen.add(region)
            total += nbytes
    return total


def peak_mem_bytes(model, run, device) -> float:
    """Peak memory of ``model`` while ``run()`` runs: its weights plus what the run allocates on top.

    On CUDA, ``max_memory_allocated`` alone is the peak of *everything* on the device since the last
    reset, which includes the parent model a sub-network was extracted from (and the sub-network's own
    weights, already allocated): so the peak is reset, the allocation in place before the run is
    subtracted, and the model's weights are counted once. On the CPU, the resident-set growth during
    ``run()`` (after one untimed warm-up ``run()``: one-time library initialisation is not the model's).
    """
    wbytes = weight_bytes(model)
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return float(wbytes + max(0, torch.cuda.max_memory_allocated(device) - before))
    run()  # warm-up
    with _RssSampler() as rss:
        run()
    return float(wbytes + rss.growth_bytes)


def measure_model(model, prompt_tokens: int = 128, generate_tokens: int = 32, batch_size: int = 1,
                  repeats: int = 5, warmup: int = 1, max_spread: float = 0.10, seed: int = 0) -> ModelMeasurement:
    """Prefill ms, decode ms/token and peak memory of ``model`` on its current device and dtype.

    On the CPU the whole measurement (memory and timing alike) runs under :func:`mmap_threshold`; the
    threshold is set to 32 MiB before returning (an approximation of glibc's dynamic default, which no
    ``mallopt`` call can restore).
    """
    on_cpu = next(model.parameters()).device.type == "cpu"
    with mmap_threshold() if on_cpu else contextlib.nullcontext():
        return _measure_model(model, prompt_tokens, generate_tokens, batch_size, repeats, warmup, max_spread, seed)


@torch.inference_mode()
def _measure_model(model, prompt_tokens: int, generate_tokens: int, batch_size: int, repeats: int, warmup: int,
                   max_spread: float, seed: int) -> ModelMeasurement:
    from transformers import DynamicCache

    from toolkit.measure import sync_for
    from toolkit.models.compat import cache_arg_name

    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch_size, prompt_tokens), generator=gen).to(device)
    step_ids = torch.randint(3, vocab, (batch_size, generate_tokens), generator=gen).to(device)
    sync = sync_for(device)

    cache_arg = cache_arg_name(model)  # once, outside the timed loops

    def prefill():
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, **{cache_arg: cache}, use_cache=True, logits_to_keep=1)
        return cache

    def decode_from(cache):
        # Teacher-forced steps keep the work identical across repeats (greedy tokens would differ by model).
        for i in range(generate_tokens):
            out = model(input_ids=step_ids[:, i : i + 1], **{cache_arg: cache}, use_cache=True)
            out.logits.argmax(-1)

    # Peak memory over one full prefill + decode.
    peak = peak_mem_bytes(model, lambda: decode_from(prefill()), device)
    t_prefill, t_decode, flagged = time_prefill_decode(prefill, decode_from, repeats, warmup, max_spread, sync)
    return ModelMeasurement(
        prefill_ms=t_prefill.median_s * 1e3,
        decode_ms_per_token=t_decode.median_s * 1e3 / generate_tokens,
        peak_mem_bytes=peak,
        weight_bytes=weight_bytes(model),
        spread={"prefill_ms": t_prefill.spread, "decode_ms_per_token": t_decode.spread},
        repeats=t_decode.repeats,
        flagged=flagged,
    )


def subnet_measure_fn(loaded, importance, profile, repeats: int = 5, workdir: str | os.PathLike | None = None):
    """``cfg -> Measurement``: extract the sub-network and time it in the profile's engine
    (``runtime.engine``: torch, onnxruntime or llama.cpp), runtime (device, dtype, threads, GGUF type)
    and workload. ``workdir``: where the temporary artifacts of the exporting engines go (default: the
    system's temporary folder). A missing engine is a one-line error before anything is measured."""
    engine = profile.runtime.engine
    if engine not in _ENGINE_MEASURE_FNS:
        from toolkit.errors import UserError

        raise UserError(f"runtime.engine: no timing path for engine {engine!r} (have: {', '.join(_ENGINE_MEASURE_FNS)})")
    return _ENGINE_MEASURE_FNS[engine](loaded, importance, profile, repeats, workdir)


def _torch_measure_fn(loaded, importance, profile, repeats: int, workdir=None):
    from toolkit.elastic import extract
    from toolkit.measure import torch_threads

    wl = profile.workload
    device, dtype = torch.device(profile.runtime.device), getattr(torch, profile.runtime.dtype)

    def measure(cfg):
        # On the profile's device and dtype, whatever the parent was loaded with (a no-op when they agree).
        child = extract(loaded.model, cfg, importance).to(device=device, dtype=dtype)
        with torch_threads(profile.runtime.threads):
            m = measure_model(child, wl.prompt_tokens, wl.generate_tokens, wl.batch_size, repeats=repeats)
        del child
        return Measurement(cfg, m.prefill_ms, m.decode_ms_per_token, m.peak_mem_bytes, m.spread, m.flagged)

    return measure


@contextlib.contextmanager
def _artifact_dir(workdir: str | os.PathLike | None):
    """A fresh temporary folder for one sub-network's artifact, removed on the way out (errors and Ctrl-C too)."""
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".toolkit-calibrate-", dir=workdir) as tmp:
        yield Path(tmp)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _extract_fp32_cpu(loaded, cfg, importance):
    from toolkit.elastic import extract

    return extract(loaded.model, cfg, importance).to(device="cpu", dtype=torch.float32)


def _llamacpp_measure_fn(loaded, importance, profile, repeats: int, workdir=None):
    from toolkit.engines import require
    from toolkit.errors import UserError

    require("llama.cpp", "runtime.engine")
    import llama_cpp  # noqa: F401 - imported here, so that its libraries are not counted as a sub-network's memory

    from toolkit.engines.llamacpp import LlamaCpp
    from toolkit.export.gguf import source_gguf_of, write_gguf

    rt, wl = profile.runtime, profile.workload
    if wl.batch_size != 1:
        raise UserError(f"workload.batch_size: runtime.engine llama.cpp runs one sequence (llama-cpp-python), "
                        f"got {wl.batch_size}")
    source = source_gguf_of(loaded)
    n_ctx = wl.prompt_tokens + wl.generate_tokens
    first = [True]

    def measure(cfg):
        child = _extract_fp32_cpu(loaded, cfg, importance)
        with _artifact_dir(workdir) as tmp, mmap_threshold():
            path = tmp / "subnet.gguf"
            write_gguf(child, path, gguf_type=rt.gguf_type, tokenizer=getattr(loaded, "tokenizer", None),
                       source_gguf=source, threads=rt.threads)
            del child
            file_bytes = path.stat().st_size
            if first:  # the first load in a process initialises llama.cpp's backend: not this sub-network's memory
                first.clear()
                LlamaCpp(path, threads=rt.threads, n_ctx=n_ctx, logits_all=False).close()
            engine = None
            try:
                with _RssSampler() as rss:  # open + one prefill and decode (measure's untimed setup prefill too)
                    engine = LlamaCpp(path, threads=rt.threads, n_ctx=n_ctx, logits_all=False)
                    engine.measure(wl.prompt_tokens, wl.generate_tokens, repeats=1, warmup=0)
                m = engine.measure(wl.prompt_tokens, wl.generate_tokens, repeats=repeats)
            finally:
                if engine is not None:
                    engine.close()
        peak = float(max(rss.growth_bytes, file_bytes))
        return Measurement(cfg, m.prefill_ms, m.decode_ms_per_token, peak, dict(m.spread), m.flagged)

    return measure


def ort_measure(ort, vocab: int, prompt_tokens: int, generate_tokens: int, batch_size: int, repeats: int,
                 warmup: int = 1, max_spread: float = 0.10, seed: int = 0):
    """Prefill ms and decode ms/token of an :class:`toolkit.export.onnx.OrtCausalLM` on the workload
    (seeded random ids, teacher-forced steps). Returns (prefill Timing, decode Timing, flagged)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(3, max(4, vocab), (batch_size, prompt_tokens))  # (B, T)
    steps = rng.integers(3, max(4, vocab), (batch_size, generate_tokens))  # (B, N)

    def prefill():
        return ort.forward(ids, ort.empty_past(batch_size))[1]

    def decode_from(past):
        for i in range(generate_tokens):
            _, past = ort.forward(steps[:, i : i + 1], past)

    return time_prefill_decode(prefill, decode_from, repeats, warmup, max_spread)


def _onnx_measure_fn(loaded, importance, profile, repeats: int, workdir=None):
    from toolkit.engines import require

    require("onnxruntime", "runtime.engine")
    import onnxruntime  # noqa: F401 - imported here, so that its libraries are not counted as a sub-network's memory

    from toolkit.export.onnx import OrtCausalLM, export_onnx

    rt, wl = profile.runtime, profile.workload
    first = [True]

    def measure(cfg):
        child = _extract_fp32_cpu(loaded, cfg, importance)
        vocab = int(child.config.vocab_size)
        with _artifact_dir(workdir) as tmp, mmap_threshold():
            details = export_onnx(child, tmp)
            del child
            file_bytes = _folder_bytes(tmp)
            if first:  # the first session in a process sets up onnxruntime's environment
                first.clear()
                OrtCausalLM(tmp, details["kv_heads"], details["head_dim"], threads=rt.threads)
            with _RssSampler() as rss:  # open + one prefill and decode
                ort = OrtCausalLM(tmp, details["kv_heads"], details["head_dim"], threads=rt.threads)
                ort_measure(ort, vocab, wl.prompt_tokens, wl.generate_tokens, wl.batch_size, repeats=1, warmup=0)
            t_prefill, t_decode, flagged = ort_measure(ort, vocab, wl.prompt_tokens, wl.generate_tokens,
                                                        wl.batch_size, repeats)
            del ort
        peak = float(max(rss.growth_bytes, file_bytes))
        spread = {"prefill_ms": t_prefill.spread, "decode_ms_per_token": t_decode.spread}
        return Measurement(cfg, t_prefill.median_s * 1e3, t_decode.median_s * 1e3 / wl.generate_tokens, peak,
                           spread, flagged)

    return measure


# runtime.engine -> the builder of its ``cfg -> Measurement`` (names as toolkit.engines.ENGINES)
_ENGINE_MEASURE_FNS = {"torch": _torch_measure_fn, "onnxruntime": _onnx_measure_fn, "llama.cpp": _llamacpp_measure_fn}
