"""The model measurement primitive on a tiny model (no speed assertions: those live in benchmarks/)."""

import functools
import math

import pytest
import torch

from toolkit.calibrate import latency
from toolkit.calibrate.latency import measure_model, peak_mem_bytes, weight_bytes


def test_weight_bytes_counts_shared_memory_once(tiny):
    from toolkit.models.tiny import llama_tiny

    once = sum(p.numel() * 4 for p in tiny.parameters()) + sum(b.numel() * b.element_size() for b in tiny.buffers())
    assert weight_bytes(tiny) == once
    # tied embeddings are one vocab x hidden block: an untied model has one more
    assert weight_bytes(llama_tiny(tie_word_embeddings=False)) - weight_bytes(tiny) == 256 * 64 * 4
    # a second Parameter object over the same memory: parameters() yields both, the memory is counted once
    n = len(list(tiny.parameters()))
    tiny.lm_head.weight = torch.nn.Parameter(tiny.model.embed_tokens.weight.data)
    assert len(list(tiny.parameters())) == n + 1
    assert weight_bytes(tiny) == once


def test_measure_model_reports_prefill_decode_and_memory(tiny):
    m = measure_model(tiny, prompt_tokens=16, generate_tokens=4, batch_size=2, repeats=3)
    assert m.prefill_ms > 0 and m.decode_ms_per_token > 0 and math.isfinite(m.decode_tokens_per_s)
    assert m.peak_mem_bytes >= m.weight_bytes == weight_bytes(tiny)
    assert set(m.spread) == {"prefill_ms", "decode_ms_per_token"} and m.repeats >= 3


class FakeCudaMemory:
    """torch.cuda's allocator counters, faked: a CPU-only test of the peak-memory arithmetic."""

    def __init__(self, monkeypatch):
        self.allocated = 0
        self.peak = 0
        for name, fn in {"is_available": lambda: True, "synchronize": lambda device=None: None,
                         "memory_allocated": lambda device=None: self.allocated,
                         "max_memory_allocated": lambda device=None: self.peak,
                         "reset_peak_memory_stats": lambda device=None: setattr(self, "peak", self.allocated)}.items():
            monkeypatch.setattr(torch.cuda, name, fn)

    def alloc(self, n):
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def free(self, n):
        self.allocated -= n


def test_cuda_peak_is_the_child_weights_plus_its_growth_not_the_parent(tiny, monkeypatch):
    cuda = FakeCudaMemory(monkeypatch)
    cuda.alloc(10_000_000)  # the parent model, still on the device
    cuda.alloc(weight_bytes(tiny))  # the child's weights
    cuda.alloc(5_000_000)
    cuda.free(5_000_000)  # an earlier job's peak, from before this measurement

    def run():  # KV cache + activations: 300 kB at the peak
        cuda.alloc(200_000)
        cuda.alloc(100_000)
        cuda.free(250_000)

    assert peak_mem_bytes(tiny, run, "cuda:0") == weight_bytes(tiny) + 300_000


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1


def test_mmap_threshold_is_pinned_only_while_measuring(tiny, monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(latency, "_libc", lambda: libc)
    seen = []
    orig = latency._measure_model

    def spy(*a, **k):
        seen.append(list(libc.calls))  # what was in effect during the measurement
        return orig(*a, **k)

    monkeypatch.setattr(latency, "_measure_model", spy)
    measure_model(tiny, prompt_tokens=4, generate_tokens=2, repeats=1, warmup=0)
    # after: 32 MiB (glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit, where its dynamic threshold settles),
    # not the 128 KiB start value, which mallopt would make static: every block >= 128 KiB mmapped for good
    pin, default = (latency.M_MMAP_THRESHOLD, 1 << 20), (latency.M_MMAP_THRESHOLD, 32 * 1024 * 1024)
    assert seen == [[pin]] and libc.calls == [pin, default]
    # set even when the measurement fails
    libc.calls.clear()
    with pytest.raises(RuntimeError):
        with latency.mmap_threshold():
            raise RuntimeError("boom")
    assert libc.calls == [pin, default]


def test_decode_runs_on_a_fresh_cache_each_repeat(tiny, monkeypatch):
    """Each timed decode starts from a cache holding exactly the prompt (setup is untimed and fresh)."""
    from transformers import DynamicCache

    lengths = []
    orig = type(tiny).forward

    @functools.wraps(orig)  # keeps forward's signature, which cache_kwargs reads
    def spy(self, *a, **k):
        cache = k.get("cache", k.get("past_key_values"))  # the name depends on the transformers release
        if isinstance(cache, DynamicCache) and k["input_ids"].shape[1] == 1:
            lengths.append(cache.get_seq_length())
        return orig(self, *a, **k)

    monkeypatch.setattr(type(tiny), "forward", spy)
    measure_model(tiny, prompt_tokens=8, generate_tokens=3, repeats=2, warmup=1)
    # every decode sequence is 8, 9, 10 (memory run + warm-up + 2 timed repeats, at least)
    assert lengths and all(lengths[i:i + 3] == [8, 9, 10] for i in range(0, len(lengths), 3))


def test_subnets_are_measured_on_the_profiles_device_and_dtype(tiny, monkeypatch):
    from types import SimpleNamespace

    from toolkit.space import SubnetConfig

    seen = []

    def fake_measure(model, *a, **k):
        p = next(model.parameters())
        seen.append((p.device.type, p.dtype))
        return latency.ModelMeasurement(1.0, 1.0, 1.0, 1)

    monkeypatch.setattr(latency, "measure_model", fake_measure)
    profile = SimpleNamespace(runtime=SimpleNamespace(device="cpu", dtype="bfloat16", threads=1, engine="torch"),
                              workload=SimpleNamespace(prompt_tokens=4, generate_tokens=2, batch_size=1))
    measure = latency.subnet_measure_fn(SimpleNamespace(model=tiny), None, profile, repeats=1)
    measure(SubnetConfig((0, 1), (128, 128), (2, 2)))
    assert seen == [("cpu", torch.bfloat16)]  # the parent is float32: the profile decides
