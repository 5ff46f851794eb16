import copy
import json

import numpy as np
import pytest

from toolkit.errors import ConfigError, UserError
from toolkit.calibrate import (TARGETS, Hardware, Measurement, Predictor, Workload, choose_calibration_configs,
                               roofline_features)
from toolkit.space import ParentShape, SearchSpace

SMOL = ParentShape(num_layers=30, hidden_size=576, intermediate_size=1536, num_heads=9, num_kv_heads=3,
                   head_dim=64, vocab_size=49152, tie_word_embeddings=True)
HW = Hardware(peak_flops=2e11, bandwidth_bytes_per_s=1e10, dtype="float32")
WL = Workload(128, 32, 1)
TRUE = {"prefill_ms": [30.0, 1.5, 1.3, 1.1], "decode_ms_per_token": [8.0, 0.9, 1.4, 1.2],
        "peak_mem_bytes": [5e6, 1.0, 1.0, 2.0]}


def space():
    return SearchSpace.from_parent(SMOL, layer_order=list(range(30)))


def synthetic(configs, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for c in configs:
        f = roofline_features(SMOL, c, HW, WL)
        v = {t: float(np.dot(TRUE[t], f[t])) * (1 + noise * rng.standard_normal()) for t in TARGETS}
        out.append(Measurement(c, v["prefill_ms"], v["decode_ms_per_token"], v["peak_mem_bytes"]))
    return out


def prior():
    return Predictor.prior("hash0", "test-device", "fp0", SMOL, HW, WL)


def test_fit_recovers_known_coefficients():
    configs = choose_calibration_configs(space(), 16, seed=0)
    fitted = prior().fit(synthetic(configs))
    for t in TARGETS:
        np.testing.assert_allclose(fitted.coefficients[t], TRUE[t], rtol=1e-5)
        assert fitted.cv[t]["mape_pct"] < 1e-3
    # ... and predicts unseen heterogeneous configs exactly.
    held_out = [space().sample(np.random.default_rng(s)) for s in range(20)]
    ev = fitted.evaluate(synthetic(held_out))
    assert all(ev[t]["mape_pct"] < 1e-3 for t in TARGETS) and ev["decode_tokens_per_s"]["kendall_tau"] > 0.99


def test_fit_with_noise_stays_close_and_reports_cv():
    configs = choose_calibration_configs(space(), 20, seed=1)
    fitted = prior().fit(synthetic(configs, noise=0.02, seed=3))
    held_out = [space().sample(np.random.default_rng(100 + s)) for s in range(30)]
    ev = fitted.evaluate(synthetic(held_out))
    assert ev["decode_ms_per_token"]["mape_pct"] < 3 and ev["prefill_ms"]["within_10pct"] == 1.0
    assert fitted.cv["folds"] == 20 and "uncalibrated" in fitted.cv


def test_uncalibrated_prior_predicts_something_sensible():
    p = prior().predict(SMOL.full_config())
    small = prior().predict(space().smallest())
    assert p["prefill_ms"] > small["prefill_ms"] > 0
    assert 0 < p["decode_tokens_per_s"] < small["decode_tokens_per_s"]
    assert p["peak_mem_bytes"] > SMOL.num_params(SMOL.full_config()) * 4  # weights + kv + activations


def test_calibration_configs_cover_the_space():
    cs = choose_calibration_configs(space(), 12, seed=0)
    assert cs[0] == space().largest() and cs[1] == space().smallest()
    assert len(set(cs)) == 12
    assert len({c.depth for c in cs}) >= 4 and any(not c.is_uniform() for c in cs)
    assert choose_calibration_configs(space(), 12, seed=0) == cs  # seeded


def test_json_round_trip_and_refit_without_timing(tmp_path):
    fitted = prior().fit(synthetic(choose_calibration_configs(space(), 8)))
    fitted.save(tmp_path / "p.json")
    again = Predictor.load(tmp_path / "p.json")
    assert again == fitted or again.to_dict() == fitted.to_dict()
    refit = again.fit(again.measurements)
    assert refit.coefficients == again.coefficients


def test_other_model_hash_is_refused_in_one_line():
    with pytest.raises(UserError) as exc:
        prior().check_model("other")
    assert "model_hash" in str(exc.value) and "\n" not in str(exc.value)


def test_malformed_predictor_file(tmp_path):
    p = tmp_path / "bad.json"
    d = prior().to_dict()
    d["coefficients"]["prefill_ms"] = [1.0]
    p.write_text(json.dumps(d))
    with pytest.raises(ConfigError) as exc:
        Predictor.load(p)
    assert exc.value.field == "coefficients.prefill_ms" and exc.value.file == str(p)
    p.write_text("{")
    with pytest.raises(ConfigError):
        Predictor.load(p)


# -- roofline_features() against torch's own FLOP counter -------------------------------------------------------------
def _flops_by_part(model, B, T):
    import re

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.randint(3, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    parts = {"attn_mm": 0, "attn_bmm": 0, "mlp": 0, "head": 0}
    for module, ops in counter.get_flop_counts().items():
        ops = {str(k): v for k, v in ops.items()}
        if re.search(r"\.model\.layers\.\d+\.self_attn$", module):
            parts["attn_mm"] += ops.get("aten.mm", 0)
            parts["attn_bmm"] += ops.get("aten.bmm", 0)
        elif re.search(r"\.model\.layers\.\d+\.mlp$", module):
            parts["mlp"] += ops.get("aten.mm", 0)
        elif module.endswith(".lm_head"):
            parts["head"] += ops.get("aten.mm", 0)
    return parts


def test_features_match_torch_flop_counter_and_real_weights(tiny):
    """roofline_features() is checked against what torch counts and holds, not against data made by it."""
    from toolkit.elastic import extract, parent_shape
    from toolkit.space import SubnetConfig

    shape = parent_shape(tiny)
    hw = Hardware(peak_flops=1e3, bandwidth_bytes_per_s=1e3)  # roofline "ms" == FLOPs
    B, T = 2, 16
    for cfg in (shape.full_config(), SubnetConfig((0, 2, 3), (128, 256, 64), (2, 4, 2))):
        child = extract(tiny, cfg)  # which channels are kept does not change the counts
        f = roofline_features(shape, cfg, hw, Workload(T, 4, B))
        counted = _flops_by_part(child, B, T)
        _, depth, attn, mlp = f["prefill_ms"]
        assert depth == cfg.depth and mlp == pytest.approx(counted["mlp"], rel=1e-9)
        # q/k/v/o projections exactly; scores and values over the causal half (eager attention computes the square)
        assert attn == pytest.approx(counted["attn_mm"] + counted["attn_bmm"] / 2, rel=1e-9)
        assert f["_head"][0] == pytest.approx(counted["head"], rel=1e-9)  # last-token logits only
        assert f["peak_mem_bytes"][1] == sum(p.numel() * 4 for p in child.parameters())


# -- the predictor file: every field's type -----------------------------------------------------------------
def _set(d, path, value):
    *parents, last = path
    for k in parents:
        d = d[k]
    d[last] = value


@pytest.fixture(scope="module")
def fitted_dict():
    return prior().fit(synthetic(choose_calibration_configs(space(), 4, pool=200))).to_dict()


@pytest.mark.parametrize("path, value, field", [
    (("coefficients", "prefill_ms", 0), "30.0", "coefficients.prefill_ms[0]"),
    (("coefficients", "decode_ms_per_token", 1), float("nan"), "coefficients.decode_ms_per_token[1]"),
    (("coefficients", "peak_mem_bytes"), "1 1 1 1", "coefficients.peak_mem_bytes"),
    (("coefficients",), [1, 2], "coefficients"),
    (("model_hash",), 5, "model_hash"),
    (("profile", "name"), None, "profile.name"),
    (("shape", "num_layers"), "30", "shape.num_layers"),
    (("shape", "tie_word_embeddings"), "yes", "shape.tie_word_embeddings"),
    (("hardware", "peak_flops"), "2e11", "hardware.peak_flops"),
    (("hardware", "dtype"), "int3", "hardware.dtype"),
    (("workload", "batch_size"), 1.5, "workload.batch_size"),
    (("features", "prefill_ms"), ["const"], "features"),
    (("measurements", 0, "prefill_ms"), "12.5", "measurements[0].prefill_ms"),
    (("measurements", 0, "flagged"), "false", "measurements[0].flagged"),
    (("measurements", 0, "spread"), {"prefill_ms": "0.1"}, "measurements[0].spread.prefill_ms"),
    (("measurements", 0, "config", "heads", 0), 4, "measurements[0].config.heads[0]"),  # breaks GQA groups of 3
    (("measurements", 0, "config", "mlp", 0), 4096, "measurements[0].config.mlp[0]"),  # wider than the parent
    (("cv",), [], "cv"),
])
def test_every_predictor_field_is_type_checked(tmp_path, fitted_dict, path, value, field):
    d = copy.deepcopy(fitted_dict)
    _set(d, path, value)
    p = tmp_path / "pred.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ConfigError) as exc:
        Predictor.load(p)
    assert (exc.value.field, exc.value.file) == (field, str(p)) and "\n" not in str(exc.value)


# -- the CLI: one line on stderr, exit 2, nothing written ---------------------------------------------------
def _one_line_error(capsys, rc, *needles):
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture
def saved_prior(tmp_path):
    path = tmp_path / "pred.json"
    prior().save(path)
    return path


@pytest.mark.parametrize("cfg, field", [
    ({"layers": [0, 1], "mlp": [1536, 1536], "heads": [9, 12]}, "heads[1]"),  # more heads than the parent's 9
    ({"layers": [0, 1], "mlp": [1536, 1536], "heads": [9, 4]}, "heads[1]"),  # not whole GQA groups of 3
    ({"layers": [0, 1], "mlp": [2048, 1536], "heads": [9, 9]}, "mlp[0]"),  # wider than the parent
    ({"layers": [0, 30], "mlp": [1536, 1536], "heads": [9, 9]}, "layers"),  # no layer 30
])
def test_cli_predict_refuses_a_config_that_does_not_fit(tmp_path, saved_prior, capsys, cfg, field):
    from toolkit.cli.main import main

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    _one_line_error(capsys, main(["predict", "--predictor", str(saved_prior), "--config", str(path)]), str(path), field)


def test_cli_predict_binary_files_and_string_coefficients(tmp_path, saved_prior, capsys):
    from toolkit.cli.main import main

    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)))
    _one_line_error(capsys, main(["predict", "--predictor", str(binary), "--full"]), str(binary), "UTF-8")
    _one_line_error(capsys, main(["predict", "--predictor", str(saved_prior), "--config", str(binary)]), str(binary), "UTF-8")
    d = json.loads(saved_prior.read_text())
    d["coefficients"]["prefill_ms"] = ["30", "1.5", "1", "1"]
    saved_prior.write_text(json.dumps(d))
    _one_line_error(capsys, main(["predict", "--predictor", str(saved_prior), "--full"]), str(saved_prior),
                    "coefficients.prefill_ms[0]")


@pytest.mark.parametrize("flags, needle", [
    (["--repeats", "0"], "--repeats"),
    (["--samples", "1"], "--samples"),
    (["--samples", "-3"], "--samples"),
    (["--seed", "-1"], "--seed"),
    (["--out", "{dir}"], "is a directory"),
])
def test_cli_calibrate_bad_arguments_before_loading_anything(tmp_path, capsys, model_must_not_load, flags, needle):
    from toolkit.cli.main import main

    out = tmp_path / "pred.json"
    flags = [f.format(dir=tmp_path) for f in flags]
    argv = ["calibrate", "--profile", "ryzen9-7950x", "--model", "smollm2-135m", "--out", str(out), *flags]
    _one_line_error(capsys, main(argv), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no journal, no predictor


def test_cli_output_into_a_closed_pipe_is_quiet(tmp_path, saved_prior, capsys, monkeypatch):
    import subprocess
    import sys

    from toolkit.cli.main import main

    class ClosedPipe:
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    for output in ([], ["--json"]):  # the table (rich) and the JSON document (print)
        monkeypatch.setattr(sys, "stdout", ClosedPipe())
        assert main(["predict", "--predictor", str(saved_prior), "--full", *output]) == 141
        monkeypatch.undo()
        assert capsys.readouterr().err == ""
    # the real thing: `toolkit predict ... | head -0`, the reader gone before the first write
    p = subprocess.Popen([sys.executable, "-m", "toolkit.cli.main", "predict", "--predictor", str(saved_prior), "--full"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait() == 141 and err == "", err


def test_predictor_without_a_workload_field_is_refused(tmp_path):
    """A missing workload field must not fall back to a default: the coefficients were fit for one workload."""
    import json

    from toolkit.errors import ConfigError
    from toolkit.calibrate import Hardware, Predictor, Workload
    from toolkit.space import ParentShape

    p = Predictor.prior("m", "x", "fp", ParentShape(4, 64, 256, 4, 2, 16, 256, True), Hardware(1e11, 1e10),
                        Workload(16, 4, 1))
    d = p.to_dict()
    del d["workload"]["generate_tokens"]
    with pytest.raises(ConfigError, match="workload.generate_tokens"):
        Predictor.from_dict(json.loads(json.dumps(d)), "p.json")
