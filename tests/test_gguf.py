"""GGUF export for llama.cpp: parity with PyTorch (uniform -> llama, heterogeneous -> deci), quantization by
llama.cpp, verify, tampering, kill mid-export, and the one-line error when llama-cpp-python is missing."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from toolkit.cli.main import main
from toolkit.space import SubnetConfig

UNIFORM = SubnetConfig((0, 2, 3), (128, 128, 128), (2, 2, 2))  # layer 1 dropped, every kept layer alike
HETERO = SubnetConfig((0, 1, 3), (64, 256, 128), (2, 4, 2))  # layer 2 dropped, widths and head groups differ


@pytest.mark.parametrize("cfg,arch", [(UNIFORM, "llama"), (HETERO, "deci")])
def test_f32_gguf_computes_pytorchs_logits_and_greedy_tokens(tmp_path, cfg, arch):
    pytest.importorskip("llama_cpp")
    from toolkit.elastic import extract
    from toolkit.engines.llamacpp import LlamaCpp
    from toolkit.export.gguf import write_gguf
    from toolkit.export.parity import make_reference, torch_logits
    from toolkit.models.tiny import byte_tokenizer, llama_tiny

    tok = byte_tokenizer()
    child = extract(llama_tiny(), cfg)
    facts = write_gguf(child, tmp_path / "m.gguf", gguf_type="f32", tokenizer=tok)
    assert facts["architecture"] == arch and facts["block_count"] == 3
    assert [s["ff"] for s in facts["layers"]] == list(cfg.mlp) and [s["heads"] for s in facts["layers"]] == list(cfg.heads)
    ref = make_reference(child, tok, "The capital of France is")
    with LlamaCpp(tmp_path / "m.gguf", threads=1, n_ctx=128, kv_f32=True) as lm:
        diff = np.abs(lm.logits(ref.sequence) - torch_logits(child, ref.sequence)).max()
        greedy = lm.greedy(list(ref.prompt_ids), 32)
    assert diff <= 1e-3, diff
    assert greedy == list(ref.continuation_ids)


def test_pre_tokenizer_names_follow_the_tokenizer_json():
    from toolkit.export.gguf import _pre_tokenizer_name

    bl = {"type": "ByteLevel", "use_regex": True}
    assert _pre_tokenizer_name(bl) == "gpt-2"
    assert _pre_tokenizer_name({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, bl]}) == "smollm"
    assert _pre_tokenizer_name({"type": "ByteLevel", "use_regex": False}) == "default"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    from toolkit.elastic import extract
    from toolkit.export import ExportRequest, export_subnet
    from toolkit.models.tiny import byte_tokenizer, llama_tiny

    root = tmp_path_factory.mktemp("gguf")
    text = root / "ppl.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    from toolkit.tasks import get_task, load_task

    items = root / "items.jsonl"
    rng = np.random.default_rng(0)
    words = "the sky is blue red green yes no so which color".split()
    items.write_text("".join(json.dumps({"id": f"q{i}", "context": "Q: " + " ".join(rng.choice(words, 6)) + "?\nA:",
                                         "choices": [" " + " ".join(rng.choice(words, 2)) for _ in range(3)],
                                         "label": i % 3}) + "\n" for i in range(12)))
    task = load_task(get_task(str(items)))
    child = extract(llama_tiny(), HETERO)
    out = {}
    for t in ("f16", "q8_0"):
        req = ExportRequest(formats=("gguf",), out=root / t, threads=1, prompt_tokens=16, generate_tokens=4, repeats=2,
                            gguf_type=t, perplexity_file=text, perplexity_tokens=600, task_data=task, task_limit=None)
        out[t] = export_subnet(child, byte_tokenizer(), req, source={"model": "tiny", "model_hash": "h"},
                               subnet=HETERO.to_dict(), predicted={"decode_tokens_per_s": 50.0})["gguf"]
    return out


def test_gguf_artifacts_carry_parity_size_and_speed(exported):
    f16 = json.loads((exported["f16"] / "manifest.json").read_text())
    q8 = json.loads((exported["q8_0"] / "manifest.json").read_text())
    assert f16["format"] == q8["format"] == "gguf" and set(f16["files"]) == {"model.gguf"}
    assert f16["details"]["architecture"] == "deci" and f16["details"]["gguf_type"] == "f16"
    assert f16["parity"]["ok"] and f16["parity"]["max_abs_logit_diff"] <= 2e-2 and f16["parity"]["prompts"] == 3
    assert "rounded to f16" in f16["parity"]["reference_from"]
    assert q8["details"]["quantized_by"].startswith("llama.cpp")
    assert q8["details"]["bytes"] < 0.7 * f16["details"]["bytes"]  # q8_0: ~8.5 bits per weight vs 16
    before, after = q8["accuracy"]["before"]["perplexity"], q8["accuracy"]["after"]["perplexity"]
    assert before["tokens"] == after["tokens"] > 500 and after["value"] > 0
    assert abs(np.log(after["value"] / before["value"])) < 0.1  # q8_0 barely moves the perplexity
    tb, ta = q8["accuracy"]["before"]["task"], q8["accuracy"]["after"]["task"]
    assert tb["n"] == ta["n"] == 12 and abs(ta["acc"] - tb["acc"]) <= 2 / 12  # scored in llama.cpp, same items
    for m in (f16, q8):
        assert m["throughput"]["measured_decode_tokens_per_s"] > 0 and m["throughput"]["measured_prefill_ms"] > 0
        assert m["throughput"]["predicted_decode_tokens_per_s"] == 50.0
        assert m["subnet"] == HETERO.to_dict()


def test_verify_reruns_the_gguf_in_llamacpp_and_names_a_tampered_file(exported, tmp_path, capsys):
    import shutil

    for t in ("f16", "q8_0"):
        assert main(["verify", str(exported[t]), "--json"]) == 0
        [line] = json.loads(capsys.readouterr().out)["folders"]
        assert line["ok"] and line["runtime"] == "llama.cpp" and line["gguf_type"] == t
    copy = tmp_path / "gguf"
    shutil.copytree(exported["q8_0"], copy)
    with open(copy / "model.gguf", "r+b") as fh:
        fh.seek(-16, os.SEEK_END)
        fh.write(b"\x00" * 16)
    assert main(["verify", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.gguf" in err[0] and "sha256" in err[0]


KILL = r"""
import sys, pathlib
from toolkit.elastic import extract
from toolkit.export import ExportRequest, export_subnet
from toolkit.models.tiny import byte_tokenizer, llama_tiny
from toolkit.space import SubnetConfig
cfg = SubnetConfig((0, 1), (64, 128), (2, 4))
export_subnet(extract(llama_tiny(), cfg), byte_tokenizer(), ExportRequest(formats=("gguf",), out=pathlib.Path(sys.argv[1]),
              threads=1, prompt_tokens=8, generate_tokens=2, repeats=1, gguf_type="q8_0"),
              source={"model": "tiny", "model_hash": "h"}, subnet=cfg.to_dict())
"""


def test_kill_during_gguf_export_leaves_no_artifact(tmp_path):
    """Killed between writing the f32 file and quantizing it: no artifact, and the next export succeeds."""
    pytest.importorskip("llama_cpp")
    out = tmp_path / "out"
    script = tmp_path / "kill.py"
    script.write_text(KILL)
    p = subprocess.Popen([sys.executable, str(script), str(out)], env={**os.environ, "TOOLKIT_GGUF_TEST_SLEEP": "60"})
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.rglob("*.f32.tmp")):
        time.sleep(0.05)
    assert list(out.rglob("*.f32.tmp")), "the GGUF write never started"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out / "gguf").exists() and not list(out.rglob("*.gguf"))
    subprocess.run([sys.executable, str(script), str(out)], check=True)
    assert (out / "gguf" / "manifest.json").exists() and not list(out.glob(".gguf.*.tmp"))
    assert [p.name for p in (out / "gguf").iterdir()] and not list((out / "gguf").glob("*.tmp"))


def test_gguf_export_without_llama_cpp_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    import toolkit.engines as engines

    cfg = tmp_path / "subnet.json"
    cfg.write_text(HETERO.to_json())
    monkeypatch.setattr(engines, "is_available", lambda name: name != "llama.cpp")
    monkeypatch.setattr("toolkit.models.load_model", lambda *a, **k: pytest.fail("the model must not load"))
    out = tmp_path / "out"
    assert main(["export", "--config", str(cfg), "--model", "smollm2-135m", "--format", "gguf", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "llm-nas-toolkit[llamacpp]" in err[0]
    assert not out.exists()


def test_unknown_gguf_type_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "subnet.json"
    cfg.write_text(HETERO.to_json())
    monkeypatch.setattr("toolkit.models.load_model", lambda *a, **k: pytest.fail("the model must not load"))
    assert main(["export", "--config", str(cfg), "--model", "smollm2-135m", "--format", "gguf", "--gguf-type", "q9",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--gguf-type" in err[0] and "q4_k_m" in err[0]


@pytest.mark.slow
def test_smollm2_f32_gguf_matches_pytorch_with_the_source_tokenizer(tmp_path):
    pytest.importorskip("llama_cpp")
    from toolkit.engines.llamacpp import LlamaCpp
    from toolkit.export.gguf import source_gguf_of, write_gguf
    from toolkit.export.parity import compare, make_reference
    from toolkit.models import load_model

    loaded = load_model("smollm2-135m")
    facts = write_gguf(loaded.model, tmp_path / "m.gguf", gguf_type="f32", source_gguf=source_gguf_of(loaded))
    assert facts["tokenizer"]["pre"] == "smollm" and facts["architecture"] == "llama"
    ref = make_reference(loaded.model, loaded.tokenizer, "The capital of France is")
    probe = "In 2024, 3.14159 x 1000 = 3141.59; it's   done!"
    with LlamaCpp(tmp_path / "m.gguf", threads=2, n_ctx=128, kv_f32=True) as lm:
        res = compare(ref, lm.logits(ref.sequence))
        ids = list(lm.llm.tokenize(probe.encode(), add_bos=False, special=False))
    assert res.ok and res.max_abs_logit_diff <= 1e-3
    assert ids == loaded.tokenizer(probe, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("digits", [False, True])
def test_bpe_tokenizers_export_and_encode_as_hugging_face_does(tmp_path, digits):
    """GPT-2's pre-tokenizer ('gpt-2') and SmolLM2's (digits, then GPT-2: 'smollm') both load in llama.cpp,
    and the export's probe check (llama.cpp's encoding of test strings == Hugging Face's) passes."""
    pytest.importorskip("llama_cpp")
    from toolkit.elastic import extract
    from toolkit.export import ExportRequest, export_subnet
    from toolkit.models.tiny import bpe_tokenizer, llama_tiny

    tok = bpe_tokenizer(digits=digits)
    child = extract(llama_tiny(vocab_size=len(tok)), UNIFORM)
    req = ExportRequest(formats=("gguf",), out=tmp_path, threads=1, prompt_tokens=8, generate_tokens=2, repeats=1,
                        gguf_type="f32")
    done = export_subnet(child, tok, req, source={"model": "tiny", "model_hash": "h"}, subnet=UNIFORM.to_dict())
    m = json.loads((done["gguf"] / "manifest.json").read_text())
    assert m["details"]["tokenizer"]["pre"] == ("smollm" if digits else "gpt-2")
    assert m["parity"]["tokenizer_equal"] and m["parity"]["max_abs_logit_diff"] <= 1e-3
