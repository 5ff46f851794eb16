"""The profile's engine (issue 17, item 2): ``runtime.engine`` / ``runtime.gguf_type`` in the profile schema,
the engines record, predictor features at the engine's bytes per weight, a search refusing a predictor of
another engine, a missing engine refused before the model loads, and calibration timed in llama.cpp and
onnxruntime on the tiny model."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from toolkit.cli.main import main
from toolkit.errors import ConfigError, UserError
from toolkit.models.tiny import tiny_profile_yaml
from toolkit.calibrate import Hardware, Measurement, Predictor, Workload, calibrate, roofline_features
from toolkit.profiles import DeviceProfile, load_profile, shipped_profiles_dir
from toolkit.space import ParentShape, SubnetConfig

VM = "cloud-vm-2core-x86"
VM_LLAMA = "cloud-vm-2core-x86-llamacpp"


def base() -> dict:
    """A resolved, valid cpu profile as a mapping (the shipped development VM)."""
    return copy.deepcopy(load_profile(VM).to_dict())


def with_runtime(**runtime) -> dict:
    d = base()
    d["runtime"].update(runtime)
    return d


def one_line_error(capsys, rc, *needles) -> str:
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error:") and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


# ------------------------------------------------------------------------------------------ profile schema


def test_engine_defaults_to_torch_and_existing_profiles_stay_valid():
    for path in sorted(shipped_profiles_dir().glob("*.yaml")):
        prof = load_profile(path)
        if prof.runtime.engine == "llama.cpp":  # the VM's llama.cpp profiles (AVX-512 and AVX2 hosts)
            assert prof.runtime.gguf_type == "q8_0", prof.name
            continue
        assert prof.runtime.engine == "torch" and prof.runtime.gguf_type is None, prof.name
    d = base()
    del d["runtime"]["engine"]
    assert DeviceProfile.from_dict(d).runtime.engine == "torch"


@pytest.mark.parametrize("runtime, field, needle", [
    ({"engine": "tensorrt"}, "runtime.engine", "torch, onnxruntime, llama.cpp"),
    ({"engine": "torch", "gguf_type": "q8_0"}, "runtime.gguf_type", "only meaningful with runtime.engine llama.cpp"),
    ({"engine": "onnxruntime", "gguf_type": "q4_k_m"}, "runtime.gguf_type", "only meaningful"),
    ({"engine": "llama.cpp", "gguf_type": "q9_9"}, "runtime.gguf_type", "q8_0"),
    ({"engine": "llama.cpp", "gguf_type": 8}, "runtime.gguf_type", "integer 8"),
    ({"engine": "llama.cpp", "dtype": "bfloat16"}, "runtime.dtype", "float32"),
    ({"engine": "onnxruntime", "dtype": "bfloat16"}, "runtime.dtype", "float32"),
])
def test_bad_engine_settings_name_the_field(runtime, field, needle):
    with pytest.raises(ConfigError) as exc:
        DeviceProfile.from_dict(with_runtime(**runtime), "p.yaml")
    assert exc.value.field == field and needle in exc.value.problem, str(exc.value)
    assert str(exc.value).startswith(f"p.yaml: {field}: ")


def test_llama_cpp_runs_one_sequence_on_the_cpu():
    d = with_runtime(engine="llama.cpp")
    d["workload"]["batch_size"] = 2
    with pytest.raises(ConfigError, match="workload.batch_size: runtime.engine llama.cpp runs one sequence"):
        DeviceProfile.from_dict(d)
    gpu = copy.deepcopy(load_profile("h100-sxm").to_dict())
    gpu["runtime"].update(engine="llama.cpp")
    with pytest.raises(ConfigError, match="runtime.engine: llama.cpp runs on the cpu"):
        DeviceProfile.from_dict(gpu)


def test_llama_cpp_gguf_type_defaults_to_q8_0_and_is_normalised():
    assert DeviceProfile.from_dict(with_runtime(engine="llama.cpp")).runtime.gguf_type == "q8_0"
    assert DeviceProfile.from_dict(with_runtime(engine="llama.cpp", gguf_type="Q4_K_M")).runtime.gguf_type == "q4_k_m"


def test_bad_engine_in_a_file_is_one_line_naming_file_and_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"version: 1\nname: bad\nextends: {VM}\nruntime: {{engine: llama.cpp, gguf_type: q3}}\n")
    one_line_error(capsys, main(["profile", "validate", str(bad)]), str(bad), "runtime.gguf_type")


def test_engine_round_trips_and_does_not_change_the_fingerprint(tmp_path):
    vm, llama = load_profile(VM), load_profile(VM_LLAMA)
    assert (llama.runtime.engine, llama.runtime.gguf_type, llama.runtime.threads) == ("llama.cpp", "q8_0", 2)
    assert llama.fingerprint == vm.fingerprint  # the engine is the toolkit's setting, not the machine's
    onnx = DeviceProfile.from_dict(with_runtime(engine="onnxruntime"))
    assert onnx.fingerprint == vm.fingerprint
    for prof in (llama, onnx):
        first = prof.save(tmp_path / f"{prof.runtime.engine}.yaml")
        again = load_profile(first)
        assert again == prof and again.to_dict() == prof.to_dict()
        assert again.save(tmp_path / "again.yaml").read_text() == first.read_text()
    assert "gguf_type" not in vm.to_dict()["runtime"]  # absent, not null, for the other engines


def test_a_child_of_a_llama_profile_switching_engine_must_null_the_gguf_type(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"version: 1\nname: child\nextends: {VM_LLAMA}\nruntime: {{engine: torch}}\n")
    with pytest.raises(ConfigError, match="runtime.gguf_type: only meaningful"):
        load_profile(child)
    child.write_text(f"version: 1\nname: child\nextends: {VM_LLAMA}\nruntime: {{engine: torch, gguf_type: null}}\n")
    assert load_profile(child).runtime.engine == "torch"


def test_engines_record_validates_and_round_trips(tmp_path):
    d = base()
    d["engines"] = {"llama.cpp": "0.3.36", "torch": "2.13.0+cpu"}
    prof = DeviceProfile.from_dict(d)
    assert list(prof.engines) == ["torch", "llama.cpp"]  # canonical order
    assert load_profile(prof.save(tmp_path / "e.yaml")) == prof
    assert prof.fingerprint == load_profile(VM).fingerprint
    for engines, field in (({"tensorrt": "10"}, "engines.tensorrt"), ({"torch": None}, "engines.torch"),
                           (["torch"], "engines")):
        d["engines"] = engines
        with pytest.raises(ConfigError) as exc:
            DeviceProfile.from_dict(d)
        assert exc.value.field == field, str(exc.value)


def test_toolkit_profile_records_the_installed_engines(tmp_path, capsys, monkeypatch):
    import toolkit.engines
    import toolkit.profiles.microbench as M

    monkeypatch.setattr(M, "_plan", lambda kind, cap, quick: M._Plan(128, 4 << 20, rounds=1, repeats=2, warmup=1,
                                                                      min_time_s=0.0, max_time_s=1.0))
    monkeypatch.setattr(toolkit.engines, "installed", lambda: {"torch": "2.13.0+cpu", "onnxruntime": "1.32.0"})
    out = tmp_path / "here.yaml"
    assert main(["profile", "--quick", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert load_profile(out).engines == {"torch": "2.13.0+cpu", "onnxruntime": "1.32.0"}
    assert "engines torch 2.13.0+cpu, onnxruntime 1.32.0 (not installed: llama.cpp)" in stdout


def test_installed_engines_are_real_versions():
    from toolkit.engines import installed

    found = installed()
    import torch

    assert found["torch"] == torch.__version__
    DeviceProfile.from_dict({**base(), "engines": found})  # what `toolkit profile` writes validates


# ------------------------------------------------------------------------------------------ predictor

SHAPE = ParentShape(4, 64, 256, 4, 2, 16, 256, True)
CFG = SubnetConfig((0, 1, 3), (256, 128, 64), (4, 2, 2))
WL = Workload(16, 4, 1)


def hw(**kw) -> Hardware:
    return Hardware(peak_flops=2e11, bandwidth_bytes_per_s=1e10, **kw)


def test_features_read_weights_at_the_engines_bytes_per_weight():
    f32 = roofline_features(SHAPE, CFG, hw(), WL)
    q8 = roofline_features(SHAPE, CFG, hw(engine="llama.cpp", gguf_type="q8_0"), WL)
    q4 = roofline_features(SHAPE, CFG, hw(engine="llama.cpp", gguf_type="q4_0"), WL)
    # decode: [const, depth, attn (weights + KV cache), mlp (weights only)]; memory: [const, weights, kv, act]
    assert q8["decode_ms_per_token"][3] == pytest.approx(f32["decode_ms_per_token"][3] * 1.0625 / 4, rel=1e-12)
    assert q4["decode_ms_per_token"][3] == pytest.approx(f32["decode_ms_per_token"][3] * (18 / 32) / 4, rel=1e-12)
    assert q8["peak_mem_bytes"][1] == pytest.approx(f32["peak_mem_bytes"][1] * 1.0625 / 4, rel=1e-12)
    assert q8["peak_mem_bytes"][2] == pytest.approx(f32["peak_mem_bytes"][2] / 2, rel=1e-12)  # f16 KV cache
    # the attention term mixes weights (x 1.0625/4) and an f16 cache (x 1/2): strictly between the two
    ratio = q8["decode_ms_per_token"][2] / f32["decode_ms_per_token"][2]
    assert 1.0625 / 4 < ratio < 0.5
    # prefill is FLOPs at the runtime dtype's peak: the same work in every engine
    assert np.array_equal(q8["prefill_ms"], f32["prefill_ms"])
    assert roofline_features(SHAPE, CFG, hw(engine="onnxruntime"), WL)["decode_ms_per_token"][3] == f32["decode_ms_per_token"][3]
    bf16 = roofline_features(SHAPE, CFG, hw(dtype="bfloat16"), WL)
    assert bf16["decode_ms_per_token"][3] == pytest.approx(f32["decode_ms_per_token"][3] / 2, rel=1e-12)


def test_hardware_from_profile_follows_the_engine():
    h = Hardware.from_profile(load_profile(VM_LLAMA))
    assert (h.engine, h.gguf_type, h.weight_bytes_per_param, h.kv_bytes_per_element) == ("llama.cpp", "q8_0", 1.0625, 2)
    h = Hardware.from_profile(load_profile(VM))
    assert (h.engine, h.gguf_type, h.weight_bytes_per_param, h.kv_bytes_per_element) == ("torch", None, 4.0, 4)


def llama_prior(fingerprint: str = "fp0", gguf_type: str = "q8_0") -> Predictor:
    return Predictor.prior("m", "vm-llama", fingerprint, SHAPE, hw(engine="llama.cpp", gguf_type=gguf_type), WL)


def test_predictor_json_records_the_engine_and_round_trips(tmp_path):
    p = llama_prior()
    d = p.to_dict()
    assert d["hardware"]["engine"] == "llama.cpp" and d["hardware"]["gguf_type"] == "q8_0"
    assert d["hardware"]["weight_bytes_per_param"] == 1.0625 and d["hardware"]["kv_bytes_per_element"] == 2
    p.save(tmp_path / "p.json")
    again = Predictor.load(tmp_path / "p.json")
    assert again.hardware == p.hardware and again.predict(CFG) == p.predict(CFG)


def test_predictor_written_before_engines_reads_as_torch():
    d = Predictor.prior("m", "vm", "fp0", SHAPE, hw(), WL).to_dict()
    d["hardware"] = {k: d["hardware"][k] for k in ("peak_flops", "bandwidth_bytes_per_s", "dtype")}  # an old file
    p = Predictor.from_dict(json.loads(json.dumps(d)))
    assert (p.hardware.engine, p.hardware.gguf_type) == ("torch", None)


@pytest.mark.parametrize("edit, field", [
    ({"engine": 3}, "hardware.engine"),
    ({"engine": "tensorrt"}, "hardware.engine"),
    ({"gguf_type": 8}, "hardware.gguf_type"),
    ({"gguf_type": "q9"}, "hardware.gguf_type"),
    ({"gguf_type": None}, "hardware.gguf_type"),  # llama.cpp needs its type
    ({"engine": "torch"}, "hardware.gguf_type"),  # a torch predictor has none
    ({"weight_bytes_per_param": 0.5}, "hardware.weight_bytes_per_param"),  # features made with other bytes
    ({"kv_bytes_per_element": "2"}, "hardware.kv_bytes_per_element"),
    ({"quant": "q8_0"}, "hardware.quant"),  # unknown field
])
def test_predictor_engine_fields_are_strict(tmp_path, edit, field):
    d = llama_prior().to_dict()
    d["hardware"].update(edit)
    with pytest.raises(ConfigError) as exc:
        Predictor.from_dict(d, "p.json")
    assert exc.value.field == field and str(exc.value).startswith(f"p.json: {field}: "), str(exc.value)


def test_resumed_calibration_journal_of_another_engine_is_refused(tmp_path):
    configs = [SubnetConfig((0, 1, 2, 3)[:d], (256,) * d, (4,) * d) for d in (1, 2, 3, 4)]

    def fake(cfg):
        return Measurement(cfg, 1.0 + cfg.depth, 0.5 + cfg.depth, 1e6 * cfg.depth)

    journal = tmp_path / "p.measurements.jsonl"
    torch_prior = Predictor.prior("m", "vm", "fp0", SHAPE, hw(), WL)
    calibrate(torch_prior, configs, fake, journal)
    with pytest.raises(UserError, match="runtime was .*'engine': 'torch'.*now .*'engine': 'llama.cpp'"):
        calibrate(llama_prior(), configs, fake, journal)
    q4 = tmp_path / "q4.measurements.jsonl"
    calibrate(llama_prior(gguf_type="q4_k_m"), configs, fake, q4)
    with pytest.raises(UserError, match="'gguf_type': 'q4_k_m'.*now .*'gguf_type': 'q8_0'"):
        calibrate(llama_prior(), configs, fake, q4)
    assert calibrate(llama_prior(gguf_type="q4_k_m"), configs, fake, q4).calibrated  # same settings resume


# ------------------------------------------------------------------------------------------ search / calibrate CLI


@pytest.fixture
def profiles(tmp_path):
    """The tiny test profile (torch) and children of it timed in llama.cpp and onnxruntime."""
    torch_p = tmp_path / "tiny.yaml"
    torch_p.write_text(tiny_profile_yaml())
    out = {"torch": torch_p}
    for engine in ("llama.cpp", "onnxruntime"):
        p = tmp_path / f"tiny-{engine.replace('.', '')}.yaml"
        p.write_text(f"version: 1\nname: tiny-{engine.replace('.', '')}\nextends: tiny.yaml\nruntime: {{engine: {engine}}}\n")
        out[engine] = p
    return out


@pytest.mark.parametrize("profile_engine, predictor_engine, gguf, field", [
    ("torch", "llama.cpp", "q8_0", "hardware.engine"),
    ("llama.cpp", "torch", None, "hardware.engine"),
    ("llama.cpp", "llama.cpp", "q4_k_m", "hardware.gguf_type"),
])
def test_search_refuses_a_predictor_of_another_engine(tmp_path, profiles, tiny_folder, capsys, model_must_not_load,
                                                     profile_engine, predictor_engine, gguf, field):
    profile = load_profile(profiles[profile_engine])
    predictor = tmp_path / "pred.json"
    Predictor.prior("m", "tiny", profile.fingerprint, SHAPE, hw(engine=predictor_engine, gguf_type=gguf), WL).save(predictor)
    run = tmp_path / "run"
    rc = main(["search", "--profile", str(profiles[profile_engine]), "--predictor", str(predictor), "--model",
               str(tiny_folder), "--out", str(run)])
    one_line_error(capsys, rc, str(predictor), field, "calibrated in", profile.name)
    assert not run.exists()


@pytest.mark.parametrize("engine, extra", [("llama.cpp", "llamacpp"), ("onnxruntime", "onnx")])
def test_calibrate_with_a_missing_engine_fails_before_the_model_loads(tmp_path, profiles, tiny_folder, capsys,
                                                                     monkeypatch, model_must_not_load, engine, extra):
    import toolkit.engines

    real = toolkit.engines.is_available
    monkeypatch.setattr(toolkit.engines, "is_available", lambda name: False if name == engine else real(name))
    out = tmp_path / "predictor.json"
    rc = main(["calibrate", "--profile", str(profiles[engine]), "--model", str(tiny_folder), "--samples", "4",
               "--out", str(out)])
    one_line_error(capsys, rc, f"[{extra}]", "runtime.engine", str(profiles[engine]))
    assert not out.exists() and not out.with_suffix(".measurements.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in profiles.values())  # nothing else


def test_a_spec_only_prior_needs_no_engine(tmp_path, profiles, tiny_folder, monkeypatch):
    import toolkit.engines

    monkeypatch.setattr(toolkit.engines, "is_available", lambda name: name == "torch")
    out = tmp_path / "prior.json"
    assert main(["calibrate", "--profile", str(profiles["llama.cpp"]), "--model", str(tiny_folder), "--samples", "0",
                 "--out", str(out)]) == 0
    hw_json = json.loads(out.read_text())["hardware"]
    assert (hw_json["engine"], hw_json["gguf_type"]) == ("llama.cpp", "q8_0")


def test_calibrate_in_llama_cpp_end_to_end(tmp_path, profiles, tiny_folder, calib_text, capsys):
    pytest.importorskip("llama_cpp")
    out = tmp_path / "run" / "predictor.json"
    assert main(["calibrate", "--profile", str(profiles["llama.cpp"]), "--model", str(tiny_folder), "--calibration",
                 str(calib_text), "--samples", "4", "--repeats", "2", "--out", str(out), "--json"]) == 0
    pred = json.loads(out.read_text())
    assert (pred["hardware"]["engine"], pred["hardware"]["gguf_type"]) == ("llama.cpp", "q8_0")
    assert len(pred["measurements"]) == 4
    for m in pred["measurements"]:
        assert m["prefill_ms"] > 0 and m["decode_ms_per_token"] > 0 and m["peak_mem_bytes"] > 0
    assert json.loads(capsys.readouterr().out)["engine"] == "llama.cpp (q8_0)"
    assert sorted(p.name for p in out.parent.iterdir()) == ["predictor.json"]  # temporary GGUFs and journal gone
    # the same calibration is what a llama.cpp search accepts
    Predictor.load(out).check_engine(load_profile(profiles["llama.cpp"]))


def test_one_subnet_timed_in_onnxruntime(tmp_path, tiny, profiles):
    pytest.importorskip("onnxruntime")
    from types import SimpleNamespace

    from toolkit.calibrate import latency

    prof = load_profile(profiles["onnxruntime"])
    measure = latency.subnet_measure_fn(SimpleNamespace(model=tiny), None, prof, repeats=2, workdir=tmp_path / "w")
    m = measure(SubnetConfig((0, 1), (128, 128), (2, 2)))
    assert m.prefill_ms > 0 and m.decode_ms_per_token > 0 and m.peak_mem_bytes > 0
    assert set(m.spread) == {"prefill_ms", "decode_ms_per_token"}
    assert list((tmp_path / "w").iterdir()) == []  # the exported graph is removed
