"""GPTQ 4-bit export (toolkit.export.gptq) on a tiny random Llama, plus one SmolLM2 sub-network (slow).

gptqmodel is optional (see the module docstring of toolkit.export.gptq for the install line): the tests
that quantize skip where it does not import, and CI, which installs it, fails on any skip
(TOOLKIT_FAIL_ON_SKIP in .ci/run).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import toolkit
from toolkit.errors import ConfigError, UserError
from toolkit.export import gptq

GROUP = 32  # divides the tiny model's layer input widths (64, 256)
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _need_gptqmodel() -> None:
    if not gptq.is_gptq_available():
        pytest.skip(f"gptqmodel does not import; install it as CI does: {gptq.INSTALL_HINT}")


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().float(), b.flatten().float()]))[0, 1])


def _dequantize(st, name: str, bits: int) -> torch.Tensor:
    """Decode one layer of the standard GPTQ (v1) layout by hand: the (in, out) weight it stands for.

    qweight (in / 32*bits, out) packs ``32 / bits`` input rows per int32 word, low bits first; qzeros
    (groups, out / 32*bits) packs zero points along the output axis, stored minus one (GPTQ v1);
    scales (groups, out); g_idx (in,) maps each input row to its group.
    """
    qweight, qzeros = st.get_tensor(name + ".qweight"), st.get_tensor(name + ".qzeros")
    scales, g_idx = st.get_tensor(name + ".scales").float(), st.get_tensor(name + ".g_idx").long()
    shifts = torch.arange(32 // bits) * bits
    mask = (1 << bits) - 1
    q = ((qweight.unsqueeze(1) >> shifts.view(1, -1, 1)) & mask).reshape(-1, qweight.shape[1])  # (in, out)
    z = ((qzeros.unsqueeze(2) >> shifts.view(1, 1, -1)) & mask).reshape(qzeros.shape[0], -1) + 1  # (groups, out)
    return (q - z[g_idx]).float() * scales[g_idx]


@pytest.fixture(scope="module")
def calib_text(tmp_path_factory) -> Path:
    """Real English text (the toolkit's own sources and docs), so calibration is not random bytes."""
    root = Path(toolkit.__file__).resolve().parent
    text = "\n\n".join(p.read_text() for p in sorted(root.rglob("*.py")))
    path = tmp_path_factory.mktemp("calib") / "calibration.txt"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def tiny_model():
    from toolkit.models.tiny import llama_tiny

    return llama_tiny()


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory, tiny_model) -> Path:
    from toolkit.models.tiny import byte_tokenizer

    folder = tmp_path_factory.mktemp("tiny_hf")
    tiny_model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_gptq(tmp_path_factory, tiny_hf, calib_text) -> tuple[Path, dict]:
    _need_gptqmodel()
    out = tmp_path_factory.mktemp("tiny_gptq")
    cwd = tmp_path_factory.mktemp("cwd")
    here = os.getcwd()
    os.chdir(cwd)
    try:
        facts = gptq.export_gptq(tiny_hf, out, bits=4, group_size=GROUP, calibration_file=calib_text,
                                 num_samples=32, seq_len=128, seed=0)
    finally:
        os.chdir(here)
    assert list(cwd.iterdir()) == []  # GPTQModel's ./logs went to a temporary folder, not the user's directory
    return out, facts


def _prompt_ids(calib_text: Path, tokens: int = 256) -> torch.Tensor:
    from toolkit.models.tiny import byte_tokenizer

    text = calib_text.read_text()[50_000:60_000]  # a stretch the calibration windows may or may not cover
    return torch.tensor([byte_tokenizer()(text)["input_ids"][:tokens]])


# -- calibration (no gptqmodel needed) -------------------------------------------------------------
def test_calibration_windows_are_seeded_random_windows(calib_text):
    from toolkit.models.tiny import byte_tokenizer

    tok = byte_tokenizer()
    a = gptq.calibration_windows(tok, calib_text, 16, 64, seed=0)
    assert a == gptq.calibration_windows(tok, calib_text, 16, 64, seed=0)
    assert a != gptq.calibration_windows(tok, calib_text, 16, 64, seed=1)
    assert len(a) == 16 and all(len(w) == 64 for w in a)
    ids = tok(calib_text.read_text(), add_special_tokens=False)["input_ids"]
    starts = {next(i for i in range(len(ids)) if ids[i:i + 64] == w) for w in a[:4]}
    assert len(starts) == 4  # distinct offsets, each window a real stretch of the text


def test_calibration_reads_jsonl_text_fields(tmp_path):
    from toolkit.models.tiny import byte_tokenizer

    f = tmp_path / "c4.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"document {i} " * 20, "id": i}) for i in range(5)) + "\n")
    assert gptq.read_calibration_texts(f) == [f"document {i} " * 20 for i in range(5)]
    tok = byte_tokenizer()
    joined = "\n\n".join(f"document {i} " * 20 for i in range(5))
    windows = gptq.calibration_windows(tok, f, 4, 32, seed=0)
    assert all(tok.decode(w) in joined for w in windows)  # windows of the documents' text, not of the JSON

    f.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
    with pytest.raises(ConfigError, match=r"c4.jsonl: line 2: text"):
        gptq.read_calibration_texts(f)
    f.write_text("{not json\n")
    with pytest.raises(ConfigError, match=r"line 1"):
        gptq.read_calibration_texts(f)


def test_calibration_too_short_or_missing(tmp_path):
    from toolkit.models.tiny import byte_tokenizer

    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(UserError, match="fewer than one window of 64"):
        gptq.calibration_windows(byte_tokenizer(), short, 4, 64, seed=0)
    with pytest.raises(UserError, match="cannot read calibration text"):
        gptq.calibration_windows(byte_tokenizer(), tmp_path / "missing.txt", 4, 64, seed=0)


def test_bad_requests_fail_before_quantizing(tiny_hf, calib_text, tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"group size 48.*--group-size 64 divides"):
        gptq.export_gptq(tiny_hf, tmp_path, group_size=48, calibration_file=calib_text)
    with pytest.raises(UserError, match="--bits"):
        gptq.export_gptq(tiny_hf, tmp_path, bits=5, group_size=GROUP, calibration_file=calib_text)
    with pytest.raises(UserError, match="config.json"):
        gptq.export_gptq(tmp_path, tmp_path, group_size=GROUP, calibration_file=calib_text)
    monkeypatch.setattr(gptq, "is_gptq_available", lambda: False)
    with pytest.raises(UserError, match="needs gptqmodel.*pip install --no-deps gptqmodel==7.3.6"):
        gptq.export_gptq(tiny_hf, tmp_path, group_size=GROUP, calibration_file=calib_text)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_importing_the_module_does_not_import_gptqmodel():
    code = ("import sys, toolkit.export.gptq, toolkit.export; "
            "print(sorted(m for m in ('gptqmodel', 'torchvision', 'optimum') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


# -- quantization of the tiny model ----------------------------------------------------------------
def test_export_writes_the_standard_gptq_layout(tiny_gptq, tiny_hf):
    out, facts = tiny_gptq
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["bits"] == 4 and qc["group_size"] == GROUP
    assert qc["desc_act"] is False and qc["sym"] is True
    assert json.loads((out / "quantize_config.json").read_text())["bits"] == 4
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    with safe_open(out / "model.safetensors", "pt") as st:
        keys = set(st.keys())
        for i in range(4):
            for lin in LINEARS:
                name = f"model.layers.{i}.{lin}"
                assert {f"{name}.{t}" for t in ("qweight", "qzeros", "scales", "g_idx")} <= keys
                assert f"{name}.weight" not in keys
                assert st.get_tensor(f"{name}.qweight").dtype == torch.int32
    assert facts["bits"] == 4 and facts["group_size"] == GROUP
    assert facts["quantizer"].startswith("gptqmodel 7.")
    assert facts["calibration"] == {"file": "calibration.txt", "num_samples": 32, "seq_len": 128, "seed": 0}
    assert facts["seconds"] > 0
    assert facts["size_bytes"] == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    fp32_bytes = sum(p.stat().st_size for p in tiny_hf.glob("*.safetensors"))
    q_bytes = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    assert q_bytes < 0.35 * fp32_bytes, (q_bytes, fp32_bytes)  # measured 0.19 (bf16 embeddings, fp16 scales)


def test_packed_weights_decode_to_the_fp32_weights(tiny_gptq, tiny_model):
    """Decoding the file by hand (not with gptqmodel) gives back each weight to 4-bit precision."""
    out, _ = tiny_gptq
    ref = tiny_model.state_dict()
    errors = []
    with safe_open(out / "model.safetensors", "pt") as st:
        for i in range(4):
            for lin in LINEARS:
                name = f"model.layers.{i}.{lin}"
                w = _dequantize(st, name, bits=4)
                r = ref[f"{name}.weight"].T  # (in, out)
                errors.append(float((w - r).norm() / r.norm()))
    # 4-bit, groups of 32 on Gaussian weights: ~0.11 relative error (measured 0.10-0.13); a wrong layout,
    # wrong zero points or unquantized garbage would be ~1 or more.
    assert max(errors) < 0.2 and np.mean(errors) < 0.15, errors
    assert min(errors) > 0.02  # and the weights really are 4-bit, not stored losslessly


def test_load_gptq_logits_close_to_fp32(tiny_gptq, tiny_model, calib_text):
    out, _ = tiny_gptq
    model, tok = gptq.load_gptq(out)
    assert "gptqmodel" in type(model.model.layers[0].mlp.up_proj).__module__
    assert tok.vocab_size == 256
    ids = _prompt_ids(calib_text)
    with torch.inference_mode():
        a, b = tiny_model(ids).logits, model(ids).logits.float()
    # measured corr 0.95, mean |diff| 0.29 against mean |logit| 0.97 for this random model; an unrelated
    # random model of the same shape gives corr ~0.
    assert _corr(a, b) > 0.9
    assert float((a - b).abs().mean()) < 0.5 * float(a.abs().mean())


def test_load_without_optimum_goes_through_gptqmodel(tiny_gptq, calib_text, monkeypatch):
    """Without optimum (transformers' GPTQ quantizer) the folder loads with GPTQModel.load: same outputs."""
    out, _ = tiny_gptq
    ids = _prompt_ids(calib_text, 64)
    stock, _ = gptq.load_gptq(out)
    monkeypatch.setattr(gptq, "_has_optimum", lambda: False)
    direct, _ = gptq.load_gptq(out)
    with torch.inference_mode():
        a, b = stock(ids).logits, direct(ids).logits
    assert "gptqmodel" in type(direct.model.layers[0].mlp.up_proj).__module__  # its own kernel choice
    assert torch.allclose(a, b, atol=1e-4)  # same 4-bit weights (measured: identical logits)


def test_stock_transformers_loads_it_in_a_fresh_process(tiny_gptq, tiny_model, calib_text, tmp_path):
    """AutoModelForCausalLM.from_pretrained(folder), once gptqmodel is importable (the torchvision stub)."""
    out, _ = tiny_gptq
    ids = _prompt_ids(calib_text, 64)
    logits_file = tmp_path / "logits.json"
    code = f"""
import json, sys, torch
from toolkit.export.gptq import is_gptq_available
assert is_gptq_available()
stub_gone = 'torchvision' not in sys.modules
from transformers.utils import is_torchvision_available
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(out)!r}, dtype=torch.float32).eval()
with torch.inference_mode():
    logits = m(torch.tensor({ids.tolist()})).logits[0]
json.dump({{"cls": type(m.model.layers[0].self_attn.q_proj).__name__, "stub_gone": stub_gone,
           "torchvision": is_torchvision_available(), "logits": logits.tolist()}}, open({str(logits_file)!r}, "w"))
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    got = json.loads(logits_file.read_text())
    assert got["cls"].endswith("Linear") and got["cls"] != "Linear"  # a gptqmodel quantized linear
    assert got["stub_gone"] and got["torchvision"] is False  # the stub did not outlive the import
    with torch.inference_mode():
        ref = tiny_model(ids).logits[0]
    assert _corr(ref, torch.tensor(got["logits"])) > 0.9


def test_heterogeneous_subnet_quantizes_and_reloads(tiny_model, calib_text, tmp_path):
    """An elastic_llama folder (per-layer MLP widths and heads) goes through GPTQModel's generic path."""
    _need_gptqmodel()
    from toolkit.elastic import extract, save_subnet
    from toolkit.models.tiny import byte_tokenizer
    from toolkit.space import SubnetConfig

    cfg = SubnetConfig(layers=(0, 1, 3), mlp=(256, 128, 64), heads=(4, 2, 4))
    child = extract(tiny_model, cfg)
    save_subnet(child, tmp_path / "hf", byte_tokenizer(), cfg)
    out = tmp_path / "gptq"
    out.mkdir()
    gptq.export_gptq(tmp_path / "hf", out, bits=4, group_size=GROUP, calibration_file=calib_text,
                     num_samples=16, seq_len=128)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "elastic_llama" and config["layer_intermediate_sizes"] == [256, 128, 64]
    assert (out / "modeling_elastic_llama.py").is_file() and (out / "subnet.json").is_file()
    model, _ = gptq.load_gptq(out)
    assert model.model.layers[2].mlp.down_proj.in_features == 64
    assert type(model).__module__ == "toolkit.models.modeling_elastic_llama"  # the toolkit's class, not the folder's
    ids = _prompt_ids(calib_text, 128)
    with torch.inference_mode():
        assert _corr(child(ids).logits, model(ids).logits) > 0.85  # measured 0.93


def test_load_gptq_runs_no_code_from_the_folder(tiny_model, calib_text, tmp_path, monkeypatch):
    """A heterogeneous GPTQ folder loads with the toolkit's own class on both loading paths; an edited
    modeling file (which stock transformers would import with trust_remote_code) is refused, unrun."""
    _need_gptqmodel()
    from toolkit.elastic import extract, save_subnet
    from toolkit.models.tiny import byte_tokenizer
    from toolkit.space import SubnetConfig

    cfg = SubnetConfig(layers=(0, 2), mlp=(64, 128), heads=(2, 4))
    save_subnet(extract(tiny_model, cfg), tmp_path / "hf", byte_tokenizer(), cfg)
    out = tmp_path / "gptq"
    out.mkdir()
    gptq.export_gptq(tmp_path / "hf", out, bits=4, group_size=GROUP, calibration_file=calib_text,
                     num_samples=4, seq_len=64)
    monkeypatch.setattr(gptq, "_has_optimum", lambda: False)  # GPTQModel.load resolves the class itself
    model, _ = gptq.load_gptq(out)
    assert type(model).__module__ == "toolkit.models.modeling_elastic_llama"
    marker = tmp_path / "PWNED"
    with open(out / "modeling_elastic_llama.py", "a") as fh:
        fh.write(f"\nimport pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    monkeypatch.undo()
    with pytest.raises(UserError, match=r"gptq/modeling_elastic_llama.py: differs from the toolkit's own"):
        gptq.load_gptq(out)
    assert not marker.exists()


# -- SmolLM2 ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_uniform_subnet_perplexity(smollm2, data_dir, tmp_path):
    """A uniform SmolLM2 sub-network (MLP 1024 in all 30 layers): 4-bit perplexity stays within 2x of fp32."""
    _need_gptqmodel()
    from toolkit.elastic import extract, save_subnet
    from toolkit.evaluate import perplexity
    from toolkit.importance import load_or_compute_importance
    from toolkit.space import SubnetConfig

    calib = data_dir / "calibration" / "calibration.txt"
    wiki = data_dir / "wikitext2" / "test.txt"
    n = smollm2.model.config.num_hidden_layers
    cfg = SubnetConfig(tuple(range(n)), (1024,) * n, (smollm2.model.config.num_attention_heads,) * n)
    child = extract(smollm2.model, cfg, load_or_compute_importance(smollm2, calib)).float()
    save_subnet(child, tmp_path / "hf", smollm2.tokenizer, cfg)
    out = tmp_path / "gptq"
    out.mkdir()
    facts = gptq.export_gptq(tmp_path / "hf", out, bits=4, group_size=64, calibration_file=calib,
                             num_samples=8, seq_len=256)
    fp = perplexity(child, smollm2.tokenizer, wiki, window=512, max_tokens=2048).perplexity
    model, tok = gptq.load_gptq(out)
    q = perplexity(model, tok, wiki, window=512, max_tokens=2048).perplexity
    print(f"smollm2 mlp1024 ppl fp32 {fp:.2f} gptq4 {q:.2f} ({facts['seconds']:.0f} s, {facts['size_bytes']} B)")
    assert math.isfinite(q) and q < 2 * fp
    hf_bytes = sum(p.stat().st_size for p in (tmp_path / "hf").glob("*.safetensors"))
    assert facts["size_bytes"] < hf_bytes / 3  # fp32 -> 4-bit decoder + bf16 embeddings


def test_export_subnet_gptq_verifies_and_resumes(tiny_model, calib_text, tmp_path, capsys):
    """The export stage's gptq format end to end: quantized from a scratch HF folder (none left behind),
    its teacher-forced reference re-checked by `toolkit verify`, kept by --resume only with the same settings."""
    _need_gptqmodel()
    from toolkit.cli.main import main
    from toolkit.elastic import extract
    from toolkit.export import ExportRequest, export_subnet
    from toolkit.models.tiny import byte_tokenizer
    from toolkit.space import SubnetConfig

    cfg = SubnetConfig(layers=(0, 1), mlp=(128, 64), heads=(4, 2))
    req = dict(formats=("gptq",), out=tmp_path, threads=1, prompt_tokens=8, generate_tokens=2, repeats=1,
               gptq_group_size=GROUP, gptq_samples=4, calibration_file=calib_text)
    src = {"model": "tiny", "model_hash": "h"}
    done = export_subnet(extract(tiny_model, cfg), byte_tokenizer(), ExportRequest(**req), source=src,
                         subnet=cfg.to_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gptq"]  # the scratch HF folder is gone
    m = json.loads((done["gptq"] / "manifest.json").read_text())
    assert m["reference"]["method"] == "teacher-forced" and m["details"]["bits"] == 4
    assert main(["verify", str(done["gptq"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["folders"][0]["ok"]
    assert export_subnet(None, None, ExportRequest(**req, resume=True), source=src, subnet=cfg.to_dict()) == done
    with pytest.raises(UserError, match=r"cannot be kept \(it was quantized with other settings \(bits\)\)"):
        export_subnet(None, None, ExportRequest(**{**req, "gptq_bits": 8}, resume=True), source=src,
                      subnet=cfg.to_dict())
