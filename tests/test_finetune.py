"""Super-network fine-tuning on tiny random Llamas: sorting, shared-weight slicing, training, resume, output."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from toolkit.elastic import extract
from toolkit.finetune import (
    FinetuneConfig,
    SupernetTrainer,
    batch_indices,
    save_supernet,
    slice_params,
    sort_parent,
    subnet_forward,
)
from toolkit.space import SubnetConfig

# A space that the 4-layer tiny model can express: MLP 128..256, 1 or 2 head groups, depth 2..4.
TINY_SPACE = dict(min_mlp_fraction=0.5, min_depth_fraction=0.5, min_head_groups=1)


def tiny_config(**kw) -> FinetuneConfig:
    base = dict(steps=4, seq_len=16, batch_size=2, lr=3e-3, warmup_steps=1, num_random=2, precision="fp32",
                val_docs=0, eval_every=2, checkpoint_every=2, **TINY_SPACE)
    base.update(kw)
    return FinetuneConfig(**base)


def windows(n: int = 12, t: int = 16) -> torch.Tensor:
    return torch.randint(3, 256, (n, t), generator=torch.Generator().manual_seed(7))


def make_trainer(config: FinetuneConfig, importance=None):
    from toolkit.importance import compute_importance
    from toolkit.models.tiny import llama_tiny

    parent = llama_tiny()
    if importance is None:
        importance = compute_importance(parent, [windows(4, 24)])
    teacher = copy.deepcopy(parent) if config.teacher == "original" else None
    return SupernetTrainer(parent, None, importance, windows(), config, teacher=teacher, val_windows=windows(2))


SUBNETS = [
    SubnetConfig((0, 1, 2, 3), (128, 128, 128, 128), (2, 2, 2, 2)),  # uniform, one head group
    SubnetConfig((0, 2, 3), (192, 128, 256), (4, 2, 4)),  # heterogeneous, one layer dropped
    SubnetConfig((1, 3), (256, 64), (2, 4)),
]


@pytest.mark.parametrize("cfg", SUBNETS, ids=["uniform", "hetero", "shallow"])
def test_sorting_is_function_preserving_and_extract_keeps_prefixes(tiny, tiny_importance, tiny_ids, cfg):
    """extract(original, cfg, importance) == extract(sorted, cfg, sorted importance) == sliced-view forward."""
    reference = extract(tiny, cfg, tiny_importance)(tiny_ids).logits
    sorted_parent = copy.deepcopy(tiny)
    sorted_imp = sort_parent(sorted_parent, tiny_importance)
    torch.testing.assert_close(sorted_parent(tiny_ids).logits, tiny(tiny_ids).logits, atol=1e-5, rtol=1e-5)
    # The sorted model's weights really moved (otherwise the test above proves nothing).
    assert not torch.equal(sorted_parent.model.layers[0].mlp.up_proj.weight, tiny.model.layers[0].mlp.up_proj.weight)
    from_supernet = extract(sorted_parent, cfg, sorted_imp)(tiny_ids).logits
    sliced = subnet_forward(sorted_parent, cfg, tiny_ids)
    torch.testing.assert_close(from_supernet, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sliced, from_supernet, atol=1e-5, rtol=1e-5)
    # The sorted importance keeps prefixes: its kept indices are 0..w-1.
    assert sorted_imp.mlp_keep(0, 100).tolist() == list(range(100))
    assert sorted_imp.groups_keep(1, 1).tolist() == [0]
    assert torch.equal(sorted_imp.layer_influence, tiny_importance.layer_influence)


def test_slices_are_views_of_the_parent(tiny):
    params = dict(tiny.named_parameters())
    cfg = SubnetConfig((1, 3), (128, 64), (2, 4))
    views = slice_params(params, tiny.config, cfg)
    q = views["model.layers.0.self_attn.q_proj.weight"]
    assert q.shape == (2 * 16, 64) and q.data_ptr() == params["model.layers.1.self_attn.q_proj.weight"].data_ptr()
    assert views["model.layers.1.mlp.down_proj.weight"].shape == (64, 64)
    assert "model.layers.2.mlp.up_proj.weight" not in views


def test_gradients_of_a_subnet_reach_only_its_slice(tiny, tiny_ids):
    cfg = SubnetConfig((0, 1, 2, 3), (128,) * 4, (2,) * 4)
    subnet_forward(tiny, cfg, tiny_ids).float().pow(2).mean().backward()
    g = tiny.model.layers[2].mlp.gate_proj.weight.grad
    assert g[:128].abs().sum() > 0 and g[128:].abs().sum() == 0
    o = tiny.model.layers[2].self_attn.o_proj.weight.grad
    assert o[:, :32].abs().sum() > 0 and o[:, 32:].abs().sum() == 0


def test_one_step_changes_the_shared_weights_of_several_subnets(tiny_ids):
    trainer = make_trainer(tiny_config(steps=1))
    parent = trainer.parent
    smallest, full = trainer.space.smallest(), trainer.space.largest()
    assert smallest.mlp[0] == 128 and full.mlp[0] == 256
    before = {n: p.detach().clone() for n, p in parent.named_parameters()}
    out_small = subnet_forward(parent, smallest, tiny_ids).detach()
    out_full = subnet_forward(parent, full, tiny_ids).detach()
    rec = trainer.train_step()
    assert set(rec["loss"]) == {"full", "smallest", "random0", "random1"}
    assert all(np.isfinite(v) for v in rec["loss"].values())
    layer = smallest.layers[0]
    up = parent.model.layers[layer].mlp.up_proj.weight
    # The prefix rows are shared by the smallest, the random and the full network: all moved them.
    assert not torch.equal(up[:128], before[f"model.layers.{layer}.mlp.up_proj.weight"][:128])
    assert not torch.equal(subnet_forward(parent, smallest, tiny_ids), out_small)
    assert not torch.equal(subnet_forward(parent, full, tiny_ids), out_full)
    # Embeddings are frozen by default.
    assert torch.equal(parent.model.embed_tokens.weight, before["model.embed_tokens.weight"])


def test_training_reduces_the_smallest_subnets_distillation_loss():
    trainer = make_trainer(tiny_config(steps=30, num_random=1, lr=3e-3, warmup_steps=2))
    losses = [trainer.train_step()["loss"]["smallest"] for _ in range(30)]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


@pytest.mark.parametrize("train", ["full", "lora"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, train):
    config = tiny_config(steps=4, train=train, lr=3e-3 if train == "full" else 1e-2)
    straight = make_trainer(config)
    for _ in range(4):
        straight.train_step()
    straight.evaluate()

    first = make_trainer(config)
    first.train_step()
    first.train_step()
    first.save_checkpoint(tmp_path / "ckpt")
    resumed = make_trainer(config)
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert resumed.step == 2
    resumed.train_step()
    resumed.train_step()
    resumed.evaluate()
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    assert [h["configs"] for h in resumed.history] == [h["configs"] for h in straight.history]
    assert resumed.evals[-1]["val_ppl"] == straight.evals[-1]["val_ppl"]
    for (n, a), (_, b) in zip(straight.parent.named_parameters(), resumed.parent.named_parameters()):
        assert torch.equal(a, b), n


def test_resume_refuses_a_different_setting(tmp_path):
    from toolkit.errors import ConfigError

    t = make_trainer(tiny_config())
    t.train_step()
    t.save_checkpoint(tmp_path / "ckpt")
    other = make_trainer(tiny_config(lr=1e-4))
    with pytest.raises(ConfigError, match="lr"):
        other.load_checkpoint(tmp_path / "ckpt")


def test_resume_from_a_checkpoint_without_scheduler_state(tmp_path):
    """A checkpoint written before the schedule was a LambdaLR (no "lr_scheduler", no "initial_lr") still
    resumes to the uninterrupted run: the schedule is a pure function of the step."""
    config = tiny_config(steps=4, warmup_steps=2)
    straight = make_trainer(config)
    for _ in range(4):
        straight.train_step()
    assert [h["lr"] for h in straight.history] == pytest.approx([config.lr_at(s) for s in range(4)], rel=1e-12)

    first = make_trainer(config)
    first.train_step()
    first.train_step()
    first.save_checkpoint(tmp_path / "ckpt")
    state_file = tmp_path / "ckpt" / "state.json"
    state = json.loads(state_file.read_text())
    del state["lr_scheduler"]
    state["param_groups"] = [{k: v for k, v in g.items() if k != "initial_lr"} for g in state["param_groups"]]
    state_file.write_text(json.dumps(state))
    resumed = make_trainer(config)
    resumed.load_checkpoint(tmp_path / "ckpt")
    resumed.train_step()
    resumed.train_step()
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in straight.history]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]


def test_resume_with_more_steps_follows_the_new_schedule_from_its_first_step(tmp_path):
    """--steps may grow on a resume: the cosine then decays over the new total, from the first resumed step
    (the checkpoint's lr belongs to the old schedule)."""
    first = make_trainer(tiny_config(steps=4, warmup_steps=1))
    first.train_step()
    first.train_step()
    first.save_checkpoint(tmp_path / "ckpt")
    longer = tiny_config(steps=8, warmup_steps=1)
    resumed = make_trainer(longer)
    resumed.load_checkpoint(tmp_path / "ckpt")
    resumed.train_step()
    resumed.train_step()
    assert [h["lr"] for h in resumed.history[2:]] == pytest.approx([longer.lr_at(2), longer.lr_at(3)], rel=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kd_loss_is_the_mean_per_token_kl_of_teacher_to_student(temperature):
    from toolkit.finetune.losses import kd_loss

    gen = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(2, 5, 11, generator=gen), torch.randn(2, 5, 11, generator=gen)
    s = torch.log_softmax(student / temperature, dim=-1)
    p = torch.log_softmax(teacher / temperature, dim=-1)
    by_hand = (p.exp() * (p - s)).sum(-1).mean() * temperature ** 2
    torch.testing.assert_close(kd_loss(student, teacher, temperature), by_hand, rtol=1e-6, atol=1e-7)
    assert kd_loss(teacher, teacher, temperature).abs() < 1e-6


def test_every_config_field_is_a_flag_with_help_and_its_default(capsys):
    import argparse
    import dataclasses

    from toolkit.cli.main import build_parser, main

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["finetune"]
    flags = {a.dest: a for a in sub._actions}
    for f in dataclasses.fields(FinetuneConfig):
        if f.name == "version":
            continue
        action = flags[f.name]
        assert action.option_strings == ["--" + f.name.replace("_", "-")] and action.help, f.name
        assert action.default == (f.default if f.name != "precision" else "auto"), f.name
    with pytest.raises(SystemExit) as exit_:  # the field's check runs on the flag, before anything loads
        main(["finetune", "--model", "m", "--out", "o", "--lora-alpha", "0"])
    assert exit_.value.code == 2 and "argument --lora-alpha: must be > 0, got 0" in capsys.readouterr().err


def test_lora_trains_only_deltas_and_merges_on_export(tiny_ids):
    trainer = make_trainer(tiny_config(train="lora", lr=1e-2))
    base = {n: p.detach().clone() for n, p in trainer.parent.named_parameters()}
    trainer.train_step()
    trainer.train_step()
    for n, p in trainer.parent.named_parameters():
        assert torch.equal(p, base[n]), n  # the base weights are untouched
    merged = trainer.export_parent()
    cfg = trainer.space.smallest()
    with torch.no_grad():
        live = subnet_forward(trainer.parent, cfg, tiny_ids, trainer.params())
        torch.testing.assert_close(subnet_forward(merged, cfg, tiny_ids), live, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(subnet_forward(trainer.parent, cfg, tiny_ids), live)


def test_inplace_teacher_trains_the_full_network_on_the_lm_loss():
    trainer = make_trainer(tiny_config(teacher="inplace"))
    rec = trainer.train_step()
    assert rec["loss"]["full"] > 3.0  # cross-entropy over 256 tokens, not a near-zero KL


def test_batch_order_is_a_pure_function_of_seed_and_sample():
    a = batch_indices(10, 3, 0, 25)
    assert sorted(a[:10].tolist()) == list(range(10))  # each epoch is a permutation
    assert a[7:19].tolist() == batch_indices(10, 3, 7, 12).tolist()
    assert a.tolist() != batch_indices(10, 4, 0, 25).tolist()


def test_config_round_trip_and_validation():
    from toolkit.errors import ConfigError

    c = tiny_config()
    assert FinetuneConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ConfigError, match="teacher"):
        FinetuneConfig(teacher="nope")
    with pytest.raises(ConfigError, match="min_mlp_fraction"):
        FinetuneConfig(min_mlp_fraction=0)
    with pytest.raises(ConfigError, match="f.json: steps"):
        FinetuneConfig.from_dict({"steps": "many"}, "f.json")
    with pytest.raises(ConfigError, match=r"^f.json: nope: unknown field$"):
        FinetuneConfig.from_dict({"nope": 1}, "f.json")
    with pytest.raises(ConfigError, match=r"^f.json: weight_decay: must be >= 0, got -1$"):
        FinetuneConfig.from_dict({"weight_decay": -1}, "f.json")
    with pytest.raises(ConfigError, match=r"^num_random: expected a non-negative integer, got boolean True$"):
        FinetuneConfig(num_random=True)
    w = tiny_config(warmup_steps=2)
    assert w.lr_at(0) < w.lr_at(1) == w.lr and w.lr_at(3) < w.lr_at(1)


def test_saved_supernet_is_a_parent_for_load_model_and_extract(tmp_path, tiny_ids):
    from toolkit.importance import load_or_compute_importance
    from toolkit.models import load_model
    from toolkit.models.tiny import byte_tokenizer

    trainer = make_trainer(tiny_config(steps=2))
    trainer.tokenizer = byte_tokenizer()
    trainer.train_step()
    trainer.train_step()
    trainer.evaluate()
    folder = save_supernet(trainer, tmp_path / "sn", {"model": "tiny"})
    loaded = load_model(folder)
    imp = load_or_compute_importance(loaded, tmp_path / "no-calibration-needed.txt")
    assert imp.mlp_keep(0, 3).tolist() == [0, 1, 2]
    info = json.loads((folder / "finetune.json").read_text())
    assert info["steps_done"] == 2 and info["search_space"]["mlp_choices"] == [128, 192, 256]
    assert len(info["loss_curve"]) == 2 and info["val_ppl_curve"][-1]["step"] == 2
    cfg = SubnetConfig((0, 1, 3), (192, 128, 256), (4, 2, 2))
    with torch.no_grad():
        live = subnet_forward(trainer.parent.eval(), cfg, tiny_ids)
        torch.testing.assert_close(extract(loaded.model, cfg, imp)(tiny_ids).logits, live, atol=1e-5, rtol=1e-5)


def test_cli_trains_resumes_and_refuses_bad_input(tmp_path, tiny_folder, monkeypatch, capsys, training_text):
    from toolkit.cli.main import main

    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    data, calib = training_text(12)
    out = tmp_path / "sn"
    common = ["finetune", "--model", str(tiny_folder), "--data", str(data), "--calibration", str(calib), "--out", str(out),
              "--seq-len", "32", "--precision", "fp32", "--min-mlp-fraction", "0.5", "--min-depth-fraction", "0.5",
              "--min-head-groups", "1", "--val-docs", "2", "--eval-every", "1", "--checkpoint-every", "1"]
    assert main(common + ["--steps", "1"]) == 0
    assert json.loads((out / "finetune.json").read_text())["steps_done"] == 1
    assert main(common + ["--steps", "1"]) == 2  # exists: needs --resume or --overwrite
    assert "--resume" in capsys.readouterr().err
    assert main(common + ["--steps", "2", "--resume"]) == 0
    info = json.loads((out / "finetune.json").read_text())
    assert info["steps_done"] == 2 and [r["step"] for r in info["loss_curve"]] == [1, 2]
    # the whole history of invocations, not only the last one
    assert [(s["steps_from"], s["steps_to"]) for s in info["sessions"]] == [(0, 1), (1, 2)]
    assert "--resume" not in info["sessions"][0]["command"] and "--resume" in info["sessions"][1]["command"]
    assert main(common + ["--steps", "3", "--resume", "--lr", "1"]) == 2  # settings differ from the checkpoint
    assert "lr" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": 1}\n')
    assert main(["finetune", "--model", str(tiny_folder), "--data", str(bad), "--calibration", str(calib),
                 "--out", str(tmp_path / "x")]) == 2
    assert "bad.jsonl: line 1: text" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_smollm2_sorted_supernet_slices_match_extraction(smollm2, data_dir):
    """On the real model: sorting keeps the function, and a sliced view equals the extracted sub-network."""
    from toolkit.importance import load_or_compute_importance

    imp = load_or_compute_importance(smollm2, data_dir / "calibration" / "calibration.txt")
    ids = smollm2.tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
    cfg = SubnetConfig(tuple(sorted(imp.layer_order()[:27])), (1024,) * 27, (6,) * 27)
    with torch.no_grad():
        reference = extract(smollm2.model, cfg, imp)(ids).logits
        sorted_parent = copy.deepcopy(smollm2.model)
        sorted_imp = sort_parent(sorted_parent, imp)
        torch.testing.assert_close(sorted_parent(ids).logits, smollm2.model(ids).logits, atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(subnet_forward(sorted_parent, cfg, ids), reference, atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(extract(sorted_parent, cfg, sorted_imp)(ids).logits, reference, atol=2e-4, rtol=1e-4)


def test_a_new_model_never_gets_another_models_skeleton(monkeypatch):
    """Skeletons are cached per parent *object*: even when a new model gets a dead one's ``id()`` (simulated
    here by making every id equal), it gets its own skeleton, and a collected parent's entries go with it."""
    import gc

    import toolkit.finetune.slicing as F
    from toolkit.models.tiny import llama_tiny

    monkeypatch.setattr(F, "id", lambda obj: 1, raising=False)  # ids reused after garbage collection
    cfg = SubnetConfig((0, 1), (128, 128), (2, 2))
    a, b = llama_tiny(), llama_tiny(vocab_size=300)
    skel_a, skel_b = F._skeleton(a, cfg), F._skeleton(b, cfg)
    assert skel_a is not skel_b and skel_b.config.vocab_size == 300
    assert skel_b.model.rotary_emb is b.model.rotary_emb and F._skeleton(b, cfg) is skel_b  # still cached
    del a, skel_a
    gc.collect()
    assert [m.config.vocab_size for m in F._SKELETONS.keys()] == [300]


def _profile(name: str, **features):
    import dataclasses

    from toolkit.profiles import load_profile

    p = load_profile(name)
    return dataclasses.replace(p, features=dataclasses.replace(p.features, **features)) if features else p


def _fake_cuda(monkeypatch, major: int):
    import types

    props = types.SimpleNamespace(name="Fake GPU", major=major, minor=0, total_memory=16 << 30, multi_processor_count=40)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda idx: props)


def test_auto_precision_comes_from_the_device_profile(monkeypatch):
    import toolkit.profiles.machine as D
    from toolkit.finetune import auto_precision

    def no_cpuinfo():
        raise AssertionError("read the CPU flags although a matching profile was given")

    monkeypatch.setattr(D, "_cpu_flags", no_cpuinfo)
    assert auto_precision("cpu", _profile("cloud-vm-2core-x86", bf16=True)) == "bf16"
    assert auto_precision("cpu", _profile("cloud-vm-2core-x86", bf16=False)) == "fp32"
    assert auto_precision("cuda", _profile("h100-sxm")) == "bf16"  # sm_90
    assert auto_precision("cuda:0", _profile("h100-sxm", bf16=False)) == "fp32"
    # Without a profile (or with one of another kind of device): the same detector profiles are written by.
    monkeypatch.setattr(D, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert auto_precision("cpu") == "bf16" and auto_precision("cpu", _profile("h100-sxm")) == "bf16"
    monkeypatch.setattr(D, "_cpu_flags", lambda: {"avx2"})
    assert auto_precision("cpu") == "fp32"
    _fake_cuda(monkeypatch, major=7)  # a V100/T4: no native bf16
    assert auto_precision("cuda", _profile("cloud-vm-2core-x86", bf16=True)) == "fp32"
    _fake_cuda(monkeypatch, major=8)
    assert auto_precision("cuda") == "bf16"


def test_autocast_follows_the_device():
    import warnings

    from toolkit.finetune import autocast

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available, disabling autocast" on this machine
        on_cuda = autocast("cuda:0", "bf16")
    assert on_cuda.device == "cuda" and on_cuda.fast_dtype == torch.bfloat16
    on_cpu = autocast(torch.device("cpu"), "fp32")
    assert on_cpu.device == "cpu" and not on_cpu._enabled


def test_cli_device_and_precision_from_the_profile(tmp_path, tiny_folder, monkeypatch, capsys):
    """`--profile` gives the default device and the auto precision; `--device` overrides the device; an
    unavailable CUDA device is a one-line error before anything loads."""
    import toolkit.finetune as F
    import toolkit.profiles.machine as D
    from toolkit.cli.main import main

    calls = []
    monkeypatch.setattr(F, "finetune", lambda *a, **kw: calls.append((kw["device"], a[3].precision)) or tmp_path)
    common = ["finetune", "--model", str(tiny_folder), "--data", "unused.jsonl", "--calibration", "unused.txt",
              "--out", str(tmp_path / "sn")]
    rc = main(common + ["--device", "cuda"])  # real torch: no CUDA here
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "CUDA is not available" in err and not calls
    monkeypatch.setattr(D, "_cpu_flags", lambda: {"avx2"})  # this machine: no native bf16
    assert main(common + ["--profile", "cloud-vm-2core-x86"]) == 0  # that profile's CPU has avx512_bf16
    _fake_cuda(monkeypatch, major=9)
    assert main(common + ["--profile", "h100-sxm"]) == 0
    assert main(common + ["--profile", "h100-sxm", "--device", "cpu"]) == 0  # a gpu profile says nothing of the CPU
    assert main(common + ["--profile", "h100-sxm", "--precision", "fp32"]) == 0
    assert calls == [("cpu", "bf16"), ("cuda", "bf16"), ("cpu", "fp32"), ("cuda", "fp32")]
