"""Measure a model on a device profile's workload: prefill latency, decode throughput, peak memory.

All timing goes through :func:`toolkit.measure.time_callable` (warm-up, synchronisation, repeats,
median and spread). What is measured, for batch ``B``, prompt ``T`` and ``N`` generated tokens:

* **prefill**: one forward pass over ``(B, T)`` token ids with a fresh KV cache, logits for the last
  position only (``logits_to_keep=1``, as ``generate`` does);
* **decode**: ``N`` greedy steps of one token each on top of a prefilled cache, reported per token
  (median over repeats of the mean step time) and as tokens/s (``B`` tokens per step);
* **peak memory**: on CUDA ``torch.cuda.max_memory_allocated`` over one prefill + decode; on CPU the
  exact bytes of the weights plus the peak resident-set growth during one prefill + decode (KV cache and
  activations), sampled every millisecond. glibc's mmap threshold is pinned (``mallopt``) so that large
  freed blocks go back to the OS and one sub-network's leftovers do not hide the next one's growth.

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

_MALLOPT_DONE = False


def _pin_mmap_threshold(threshold_bytes: int = 1 << 20) -> None:
    """Make glibc serve blocks >= 1 MiB with mmap and return them on free (best effort, Linux only)."""
    global _MALLOPT_DONE
    if _MALLOPT_DONE:
        return
    _MALLOPT_DONE = True
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        M_MMAP_THRESHOLD = -3
        libc.mallopt(M_MMAP_THRESHOLD, threshold_bytes)


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
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


@torch.inference_mode()
def measure_model(model, prompt_tokens: int = 128, generate_tokens: int = 32, batch_size: int = 1,
                  repeats: int = 5, warmup: int = 1, max_spread: float = 0.10, seed: int = 0) -> ModelMeasurement:
    """Prefill ms, decode ms/token and peak memory of ``model`` on its current device and dtype."""
    from transformers import DynamicCache

    from toolkit.measure import time_callable
    from toolkit.models.compat import cache_arg_name

    _pin_mmap_threshold()
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch_size, prompt_tokens), generator=gen).to(device)
    step_ids = torch.randint(3, vocab, (batch_size, generate_tokens), generator=gen).to(device)
    sync = torch.cuda.synchronize if cuda else None

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
    wbytes = weight_bytes(model)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        decode_from(prefill())
        torch.cuda.synchronize()
        peak = float(torch.cuda.max_memory_allocated(device))
    else:
        decode_from(prefill())  # warm-up: one-time library initialisation is not the model's memory
        with _RssSampler() as rss:
            decode_from(prefill())
        peak = float(wbytes + rss.growth_bytes)

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
        weight_bytes=wbytes,
        spread={"prefill_ms": t_prefill.spread, "decode_ms_per_token": t_decode.spread},
        repeats=t_decode.repeats,
        flagged=flagged,
    )


def subnet_measure_fn(loaded, importance, profile, repeats: int = 5):
    """``cfg -> predictor.Measurement``: extract the sub-network and time it on the profile's runtime
    (threads) and workload."""
    from toolkit.elastic import extract
    from toolkit.measure import torch_threads
    from toolkit.predictor import Measurement

    wl = profile.workload

    def measure(cfg):
        child = extract(loaded.model, cfg, importance)
        with torch_threads(profile.runtime.threads):
            m = measure_model(child, wl.prompt_tokens, wl.generate_tokens, wl.batch_size, repeats=repeats)
        del child
        return Measurement(cfg, m.prefill_ms, m.decode_ms_per_token, m.peak_mem_bytes, m.spread, m.flagged)

    return measure
