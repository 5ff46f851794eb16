import json

import numpy as np
import pytest

from toolkit.errors import ConfigError, UserError
from toolkit.predictor import (TARGETS, Hardware, Measurement, Predictor, Workload, choose_calibration_configs,
                               features)
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
        f = features(SMOL, c, HW, WL)
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
