"""Extraction is exact: the full config is the parent, and a sub-network is the parent with the dropped
channels, head groups and layers masked out."""

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from toolkit.elastic import default_space, extract, parent_shape, save_subnet
from toolkit.errors import ConfigError, UserError
from toolkit.importance import Importance
from toolkit.models.compat import cache_kwargs
from toolkit.space import SubnetConfig


def output_cache(output):
    """The KV cache of a model output, under its new name (``cache``) or its old one (transformers < 5)."""
    return output["cache"] if "cache" in output else output["past_key_values"]


class _Identity(torch.nn.Module):
    """A decoder layer that was dropped: passes the residual stream through."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@torch.no_grad()
def masked_parent(parent, cfg: SubnetConfig, imp: Importance):
    """The parent with everything the sub-network drops zeroed out / bypassed (the reference)."""
    m = copy.deepcopy(parent)
    group = m.config.num_attention_heads // m.config.num_key_value_heads
    hd = m.model.layers[0].self_attn.head_dim
    kept = dict(zip(cfg.layers, zip(cfg.mlp, cfg.heads)))
    for i, layer in enumerate(m.model.layers):
        if i not in kept:
            m.model.layers[i] = _Identity()
            continue
        width, heads = kept[i]
        ch = imp.mlp_keep(i, width)
        drop = torch.ones(layer.mlp.down_proj.in_features, dtype=torch.bool)
        drop[ch] = False
        layer.mlp.down_proj.weight[:, drop] = 0
        groups = imp.groups_keep(i, heads // group).tolist()
        for g in range(m.config.num_key_value_heads):
            if g not in groups:
                layer.self_attn.o_proj.weight[:, g * group * hd:(g + 1) * group * hd] = 0
    return m


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def test_full_config_reproduces_parent_logits(tiny, tiny_ids, tiny_importance):
    full = parent_shape(tiny).full_config()
    child = extract(tiny, full, tiny_importance)
    assert (logits(child, tiny_ids) - logits(tiny, tiny_ids)).abs().max() <= 1e-5


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_subnet_equals_masked_parent(tiny, tiny_ids, tiny_importance, seed):
    space = default_space(tiny, tiny_importance, mlp_step=32, min_depth_fraction=0.5)
    cfg = space.sample(np.random.default_rng(seed))
    child = extract(tiny, cfg, tiny_importance)
    ref = masked_parent(tiny, cfg, tiny_importance)
    diff = (logits(child, tiny_ids) - logits(ref, tiny_ids)).abs().max()
    assert diff <= 1e-5
    # ... and it is really smaller, and differs from the parent.
    assert sum(p.numel() for p in child.parameters()) == parent_shape(tiny).num_params(cfg)
    if cfg != parent_shape(tiny).full_config():
        assert (logits(child, tiny_ids) - logits(tiny, tiny_ids)).abs().max() > 1e-3


def test_extraction_does_not_touch_the_parent(tiny, tiny_ids, tiny_importance):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    child = extract(tiny, SubnetConfig((0, 2), (64, 128), (2, 4)), tiny_importance)
    with torch.no_grad():
        for p in child.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())


def test_kv_cache_and_generate_on_a_heterogeneous_subnet(tiny, tiny_ids, tiny_importance):
    cfg = SubnetConfig((0, 1, 3), (64, 256, 128), (2, 4, 2))
    child = extract(tiny, cfg, tiny_importance)
    ids = tiny_ids[:1, :8]
    with torch.no_grad():
        out = child(input_ids=ids, use_cache=True)
        step = child(input_ids=tiny_ids[:1, 8:9], **cache_kwargs(child, output_cache(out)), use_cache=True)
        full = child(input_ids=tiny_ids[:1, :9], use_cache=False)
    assert (step.logits[0, -1] - full.logits[0, -1]).abs().max() <= 1e-5
    cached = child.generate(ids, max_new_tokens=12, do_sample=False, use_cache=True)
    uncached = child.generate(ids, max_new_tokens=12, do_sample=False, use_cache=False)
    assert cached.shape == (1, 20) and torch.equal(cached, uncached)


def test_child_does_not_fit_parent(tiny, tiny_importance):
    with pytest.raises(ConfigError) as exc:
        extract(tiny, SubnetConfig((0,), (512,), (4,)), tiny_importance)
    assert exc.value.field == "mlp[0]"
    with pytest.raises(ConfigError) as exc:
        extract(tiny, SubnetConfig((0,), (64,), (3,)), tiny_importance)
    assert exc.value.field == "heads[0]"
    with pytest.raises(ConfigError) as exc:
        extract(tiny, SubnetConfig((0, 9), (64, 64), (2, 2)), tiny_importance)
    assert exc.value.field == "layers"


@pytest.mark.parametrize("cfg", [
    SubnetConfig((0, 1, 3), (128,) * 3, (2,) * 3),  # uniform: plain Llama folder
    SubnetConfig((0, 2, 3), (64, 256, 192), (4, 2, 2)),  # heterogeneous: elastic_llama + modeling file
])
def test_save_reload_toolkit_and_stock_transformers(tiny, tiny_ids, tiny_importance, tmp_path, cfg):
    from transformers import AutoModelForCausalLM

    from toolkit.models import load_model
    from toolkit.models.tiny import byte_tokenizer

    child = extract(tiny, cfg, tiny_importance)
    folder = save_subnet(child, tmp_path / "sub", tokenizer=byte_tokenizer(), cfg=cfg, parent_hash="abc")
    ref = logits(child, tiny_ids)
    mine = load_model(folder).model
    mine.config._attn_implementation = "eager"
    assert (logits(mine, tiny_ids) - ref).abs().max() <= 1e-6
    if cfg.is_uniform():
        stock = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
        assert type(stock).__name__ == "LlamaForCausalLM"
    else:
        with pytest.raises(ValueError):
            AutoModelForCausalLM.from_pretrained(folder)  # needs the user's consent to run the modeling file
        stock = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, attn_implementation="eager")
        assert type(stock).__name__ == "ElasticLlamaForCausalLM"
    assert (logits(stock, tiny_ids) - ref).abs().max() <= 1e-6
    assert SubnetConfig.from_dict(json.loads((folder / "subnet.json").read_text())["config"]) == cfg


def test_interrupted_save_leaves_nothing(tiny, tiny_importance, tmp_path, monkeypatch):
    child = extract(tiny, SubnetConfig((0,), (64,), (2,)), tiny_importance)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(child), "save_pretrained", boom)
    with pytest.raises(RuntimeError):
        save_subnet(child, tmp_path / "sub")
    assert list(tmp_path.iterdir()) == []


def test_importance_round_trip_and_activation_awareness(tiny, tiny_ids, tiny_importance, tmp_path):
    tiny_importance.save(tmp_path / "imp.safetensors")
    again = Importance.load(tmp_path / "imp.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(again.mlp, tiny_importance.mlp))
    assert torch.equal(again.layer_influence, tiny_importance.layer_influence)
    # Activation-aware: scaling a channel's input weights changes its score; a weight-norm score would not.
    m = copy.deepcopy(tiny)
    with torch.no_grad():
        m.model.layers[0].mlp.up_proj.weight[5] *= 100
    from toolkit.importance import compute_importance

    imp = compute_importance(m, [tiny_ids])
    assert int(torch.argmax(imp.mlp[0])) == 5


def test_removing_least_important_channels_hurts_less_than_most_important(tiny, tiny_ids, tiny_importance):
    """The ordering means something: dropping the lowest-scored half beats dropping the highest-scored."""
    full = logits(tiny, tiny_ids)
    flipped = Importance(tuple(-m for m in tiny_importance.mlp), tiny_importance.head_groups,
                         tiny_importance.layer_influence)
    cfg = SubnetConfig((0, 1, 2, 3), (128,) * 4, (4,) * 4)
    good = (logits(extract(tiny, cfg, tiny_importance), tiny_ids) - full).pow(2).mean()
    bad = (logits(extract(tiny, cfg, flipped), tiny_ids) - full).pow(2).mean()
    assert good < bad


def test_unknown_architecture_is_refused_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    from toolkit.models import load_model

    with pytest.raises(UserError) as exc:
        load_model(tmp_path)
    assert "GPT2LMHeadModel" in str(exc.value) and "architectures" in str(exc.value)
    r = subprocess.run([sys.executable, "-m", "toolkit.cli.main", "info", str(tmp_path), "--no-importance"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "GPT2LMHeadModel" in r.stderr


def test_info_on_a_local_folder(tiny_folder):
    r = subprocess.run([sys.executable, "-m", "toolkit.cli.main", "info", str(tiny_folder), "--no-importance", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["layers"] == 4 and info["source_kind"] == "hf"
    assert info["parameters"] == sum(p.numel() for p in __import__("toolkit.models.tiny", fromlist=["x"]).llama_tiny().parameters())


def test_model_space_uses_a_supernets_trained_space(tiny_folder, tmp_path):
    import shutil

    from toolkit.elastic import model_space
    from toolkit.models import load_model

    plain = load_model(tiny_folder)
    assert model_space(plain) == default_space(plain.model)
    folder = tmp_path / "supernet"
    shutil.copytree(tiny_folder, folder)
    trained = default_space(plain.model, mlp_step=64, min_mlp_fraction=0.5, min_depth_fraction=0.75)
    (folder / "finetune.json").write_text(json.dumps({"search_space": trained.to_dict()}))
    sup = load_model(folder)
    assert model_space(sup) == trained and model_space(sup).mlp_choices[0] == 128
    (folder / "finetune.json").write_text('{"search_space": {"version": 1,')  # torn by a kill
    from toolkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"finetune.json: line 1: invalid JSON"):
        model_space(sup)


def test_extract_runs_on_one_thread_and_restores_the_callers_count(tiny, monkeypatch):
    """Extraction gathers on one CPU thread (scoped by measure.torch_threads): the caller's thread count is
    back afterwards, also when extraction fails."""
    import toolkit.elastic as E

    seen = []
    real = E._extract
    monkeypatch.setattr(E, "_extract", lambda *a: seen.append(torch.get_num_threads()) or real(*a))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        child = extract(tiny, SubnetConfig((0, 1), (128, 128), (2, 2)))
        assert child.config.num_hidden_layers == 2 and seen == [1] and torch.get_num_threads() == 2
        with pytest.raises(ConfigError):
            extract(tiny, SubnetConfig((0, 1), (512, 128), (2, 2)))  # wider than the parent
        assert seen == [1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
