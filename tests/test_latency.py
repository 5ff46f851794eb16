"""The model measurement primitive on a tiny model (no speed assertions: those live in benchmarks/)."""

import functools
import math


from toolkit.latency import measure_model, weight_bytes


def test_weight_bytes_counts_tied_weights_once(tiny):
    assert weight_bytes(tiny) == sum(p.numel() * 4 for p in tiny.parameters()) + sum(
        b.numel() * b.element_size() for b in tiny.buffers())


def test_measure_model_reports_prefill_decode_and_memory(tiny):
    m = measure_model(tiny, prompt_tokens=16, generate_tokens=4, batch_size=2, repeats=3)
    assert m.prefill_ms > 0 and m.decode_ms_per_token > 0 and math.isfinite(m.decode_tokens_per_s)
    assert m.peak_mem_bytes >= m.weight_bytes == weight_bytes(tiny)
    assert set(m.spread) == {"prefill_ms", "decode_ms_per_token"} and m.repeats >= 3


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
