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
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from dataclasses import dataclass, field

import torch

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

    from toolkit.measure import sync_for, time_callable
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

    def once(n_repeats: int):
        t_prefill = time_callable(prefill, warmup=warmup, repeats=n_repeats, sync=sync)
        caches = []

        def setup():  # untimed: a fresh prefilled cache for each timed decode
            caches.append(prefill())

        def decode():
            decode_from(caches.pop())

        t_decode = time_callable(decode, warmup=warmup, repeats=n_repeats, sync=sync, setup=setup)
        return t_prefill, t_decode

    t_prefill, t_decode = once(repeats)
    if max(t_prefill.spread, t_decode.spread) > max_spread:
        t_prefill, t_decode = once(repeats * 2)
    flagged = max(t_prefill.spread, t_decode.spread) > max_spread
    return ModelMeasurement(
        prefill_ms=t_prefill.median_s * 1e3,
        decode_ms_per_token=t_decode.median_s * 1e3 / generate_tokens,
        peak_mem_bytes=peak,
        weight_bytes=weight_bytes(model),
        spread={"prefill_ms": t_prefill.spread, "decode_ms_per_token": t_decode.spread},
        repeats=t_decode.repeats,
        flagged=flagged,
    )


def subnet_measure_fn(loaded, importance, profile, repeats: int = 5):
    """``cfg -> predictor.Measurement``: extract the sub-network and time it on the profile's runtime
    (device, dtype, threads) and workload."""
    from toolkit.elastic import extract
    from toolkit.measure import torch_threads
    from toolkit.predictor import Measurement

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
