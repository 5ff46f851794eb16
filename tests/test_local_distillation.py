"""Blockwise local distillation (toolkit.finetune.local_distillation) on the tiny random Llama.

What must hold: the re-implemented block is the HF block; the joint least-squares fit is the least-squares
optimum; training lowers every layer's reconstruction error at every trained width; a run killed between
layers resumes layer by layer to the very weights of an uninterrupted run; worker processes give the same
weights as the in-process path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from toolkit.finetune import local_distillation as ld


def _args(tiny_folder, data, calib, out, *extra) -> list[str]:
    return ["finetune", "--model", str(tiny_folder), "--data", str(data), "--calibration", str(calib), "--out", str(out),
            "--seq-len", "32", "--precision", "fp32", "--min-mlp-fraction", "0.5", "--min-depth-fraction", "0.5",
            "--min-head-groups", "1", "--val-docs", "2", "--local-windows", "150", "--local-batch", "4",
            "--method", "local", "--local-lr", "1e-3", *extra]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_block_forward_is_the_hf_decoder_layer(tiny, tiny_ids, tmp_path):
    """The cached activations are the HF layers' inputs, and the re-implemented full block maps each to the next."""
    tmp_path = tmp_path / "cache"
    manifest = ld.cache_activations(tiny, tiny_ids, None, tmp_path, {"k": 1})
    assert manifest["parts"] == {"train": list(tiny_ids.shape)}
    from safetensors.torch import load_file

    cs = load_file(str(tmp_path / "rope.safetensors"))
    geom = ld.BlockGeometry.of(tiny.config)
    with torch.no_grad():
        hs = tiny(tiny_ids, output_hidden_states=True).hidden_states
    for i in range(tiny.config.num_hidden_layers):
        h = torch.from_numpy(np.array(ld._load_part(tmp_path / "acts", "train", i)))
        torch.testing.assert_close(h, hs[i].float())  # HF's own hidden states: the cache holds block inputs
        y = torch.from_numpy(np.array(ld._load_part(tmp_path / "acts", "train", i + 1)))
        with torch.no_grad():
            out = ld.block_forward(ld.layer_params(tiny, i), h, cs["cos"], cs["sin"], geom,
                                   tiny.config.intermediate_size, tiny.config.num_attention_heads)
        torch.testing.assert_close(out, y, atol=1e-5, rtol=1e-5)
    # A cache with the same key is reused; a different key rebuilds it, and nothing of the old one survives.
    assert ld.cache_activations(tiny, tiny_ids, None, tmp_path, {"k": 1}) == manifest
    (tmp_path / "layers").mkdir()
    (tmp_path / "layers" / "000.json").write_text("{}")
    again = ld.cache_activations(tiny, tiny_ids[:1], None, tmp_path, {"k": 2})
    assert again["key"] != manifest["key"] and again["parts"] == {"train": [1, tiny_ids.shape[1]]}
    assert not (tmp_path / "layers").exists()


@pytest.mark.parametrize("bias", [False, True], ids=["plain", "biases"])
def test_a_cut_block_is_the_extracted_sub_networks_block(tmp_path, tiny_ids, bias):
    """block_forward(width, heads) on the sorted parent's tensors == the HF block of the sub-network that
    ``extract`` cuts (prefix slices; fewer MLP channels and fewer GQA groups), biases included."""
    from safetensors.torch import load_file

    from toolkit.elastic import extract
    from toolkit.finetune import sort_parent
    from toolkit.importance import compute_importance
    from toolkit.models.tiny import llama_tiny
    from toolkit.space import SubnetConfig

    parent = llama_tiny(attention_bias=bias, mlp_bias=bias)
    if bias:  # HF initialises biases to zero; make them matter
        with torch.no_grad():
            for name, p in parent.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    imp = sort_parent(parent, compute_importance(parent, [tiny_ids]))
    geom = ld.BlockGeometry.of(parent.config)
    for width, heads in ((128, 2), (192, 4), (256, 2)):
        cfg = SubnetConfig((0, 1, 2, 3), (width,) * 4, (heads,) * 4)
        child = extract(parent, cfg, imp).eval()
        folder = tmp_path / f"c{width}_{heads}"
        ld.cache_activations(child, tiny_ids, None, folder, {"w": width})
        cs = load_file(str(folder / "rope.safetensors"))
        for i in range(4):
            h = torch.from_numpy(np.array(ld._load_part(folder / "acts", "train", i)))
            y = torch.from_numpy(np.array(ld._load_part(folder / "acts", "train", i + 1)))
            with torch.no_grad():
                out = ld.block_forward(ld.layer_params(parent, i), h, cs["cos"], cs["sin"], geom, width, heads)
            torch.testing.assert_close(out, y, atol=2e-5, rtol=1e-5)


def test_joint_least_squares_is_the_stacked_least_squares_optimum():
    """Shared prefix columns fit to every width at once == lstsq of the stacked, weighted system."""
    g = torch.Generator().manual_seed(0)
    n_tok, n, out, block = 400, 12, 5, 2
    a = torch.randn(n_tok, n, generator=g, dtype=torch.float64)
    y = torch.randn(n_tok, out, generator=g, dtype=torch.float64)
    choices, weights = [2, 4, 6], {2: 1.0, 4: 1.0, 6: 3.0}
    w = ld._joint_least_squares(a.T @ a, a.T @ y, block, choices, weights, ridge=0.0)
    # Brute force: unknown W (out x n); for each width c the rows sqrt(weight) * [a[:, :c*block], 0] W^T ~ sqrt(weight) y.
    rows, rhs = [], []
    for c in choices:
        m = torch.zeros_like(a)
        m[:, : c * block] = a[:, : c * block]
        rows.append(m * weights[c] ** 0.5)
        rhs.append(y * weights[c] ** 0.5)
    ref = torch.linalg.lstsq(torch.cat(rows), torch.cat(rhs)).solution.T
    torch.testing.assert_close(w, ref, atol=1e-8, rtol=1e-8)
    # With the widest width alone the fit is the ordinary least squares of all columns.
    only = ld._joint_least_squares(a.T @ a, a.T @ y, block, [6], {6: 1.0}, ridge=0.0)
    torch.testing.assert_close(only, torch.linalg.lstsq(a, y).solution.T, atol=1e-8, rtol=1e-8)


def test_local_training_lowers_every_layers_error_at_every_trained_width(tmp_path, tiny_folder, monkeypatch, training_text):
    from toolkit.cli.main import main

    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    data, calib = training_text(16)
    out = tmp_path / "sn"
    assert main(_args(tiny_folder, data, calib, out, "--local-steps", "40")) == 0
    record = json.loads((out / "local.json").read_text())
    assert record["layers_trained"] == 4 and len(record["layers"]) == 4
    for layer in record["layers"]:
        e = layer["reconstruction_error"]
        assert "least_squares" not in e and layer["steps"] == 40
        narrower = [k for k, v in e["sliced"].items() if v > 1e-6]  # every cut (the full block starts exact)
        assert len(narrower) >= 3
        for k in narrower:
            assert e["trained"][k] < e["sliced"][k], (layer["layer"], k, e["sliced"][k], e["trained"][k])
    info = json.loads((out / "finetune.json").read_text())
    assert info["config"]["method"] == "local" and info["steps_done"] == 0
    assert info["local"]["tokens_per_cpu_hour"] > 0 and info["local"]["tokens_per_layer"] == 40 * 4 * 32
    phases = [e["phase"] for e in info["val_ppl_curve"]]
    assert phases == ["sliced", "local"]
    assert not (out / "local_cache").exists()  # the activations (GBs on a real model) are gone once saved
    # The least-squares step alone also lowers the narrow widths' error (it trades a little of the widest's).
    out2 = tmp_path / "sn-ls"
    assert main(_args(tiny_folder, data, calib, out2, "--local-steps", "0", "--ls-init")) == 0
    for layer in json.loads((out2 / "local.json").read_text())["layers"]:
        e = layer["reconstruction_error"]
        smallest = min(e["sliced"], key=lambda k: (int(k.split("_")[0][3:]), int(k.split("heads")[1])))
        assert e["least_squares"][smallest] < e["sliced"][smallest]


_KILL_SCRIPT = r"""
import sys, os, time
from toolkit.finetune import local_distillation as ld
real = ld.train_layer
def slow(spec):
    rec = real(spec)
    if spec["layer"] == 1:
        print("LAYER1", flush=True)
        time.sleep(60)  # killed here, after layer 1's record was written
    return rec
ld.train_layer = slow
from toolkit.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_local_run_resumes_layer_by_layer_to_the_same_weights(tmp_path, tiny_folder, training_text):
    data, calib = training_text(16)
    env = dict(os.environ, TOOLKIT_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1", TOOLKIT_PROGRESS="0")
    extra = ("--local-steps", "8", "--method", "local+global", "--steps", "2", "--seed", "3")

    def run(out, *more):
        return subprocess.run([sys.executable, "-m", "toolkit.cli.main", *_args(tiny_folder, data, calib, out, *extra, *more)],
                              env=env, capture_output=True, text=True, timeout=300)

    whole = tmp_path / "whole"
    r = run(whole)
    assert r.returncode == 0, r.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, *_args(tiny_folder, data, calib, killed, *extra)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    line = ""
    while "LAYER1" not in line and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert "LAYER1" in line, proc.stderr.read()[-2000:]
    layers = sorted(p.name for p in (killed / "local_cache" / "layers").glob("*.json"))
    assert layers == ["000.json", "001.json"]  # two layers done, two to go
    before = [json.loads((killed / "local_cache" / "layers" / n).read_text()) for n in layers]

    r = run(killed, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (killed / "local_cache").exists()
    a, b = _weights(whole), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rec = json.loads((killed / "local.json").read_text())
    assert all(layer["steps"] == 8 for layer in rec["layers"])
    # Resumed layer by layer: the two layers done before the kill were not trained again (their records,
    # timings included, are the ones written before the kill), the other two were.
    assert rec["layers"][:2] == before
    # and the local training really moved the weights (otherwise equality would prove nothing)
    for layer in rec["layers"]:
        e = layer["reconstruction_error"]
        assert any(e["trained"][k] < e["sliced"][k] for k in e["sliced"])


def test_worker_processes_give_the_in_process_weights(tmp_path, tiny_folder, monkeypatch, training_text):
    from toolkit.cli.main import main

    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # 2 workers x 1 thread, as the in-process run (conftest: 1)
    data, calib = training_text(16)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_args(tiny_folder, data, calib, one, "--local-steps", "5")) == 0
    assert main(_args(tiny_folder, data, calib, two, "--local-steps", "5", "--workers", "2")) == 0
    a, b = _weights(one), _weights(two)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((two / "local.json").read_text())["workers"] == 2


def test_local_refuses_a_block_it_does_not_compute(tmp_path, capsys, monkeypatch, training_text):
    from toolkit.cli.main import main
    from toolkit.models.tiny import byte_tokenizer, llama_tiny

    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "gelu"
    llama_tiny(hidden_act="gelu").save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    data, calib = training_text(16)
    assert main(_args(folder, data, calib, tmp_path / "out", "--local-steps", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hidden_act" in err[0] and "gelu" in err[0]
    assert not (tmp_path / "out").exists()
