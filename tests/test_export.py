"""HF and ONNX export of a tiny heterogeneous sub-network: parity, verify, tampering, kill -9 mid-export."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from toolkit.cli.main import main
from toolkit.space import SubnetConfig

CFG = SubnetConfig((0, 1, 3), (64, 256, 128), (2, 4, 2))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from toolkit.elastic import extract
    from toolkit.export import ExportRequest, export_subnet
    from toolkit.models.tiny import byte_tokenizer, llama_tiny

    out = tmp_path_factory.mktemp("export")
    child = extract(llama_tiny(), CFG)
    req = ExportRequest(formats=("hf", "onnx"), out=out, threads=1, prompt_tokens=16, generate_tokens=4, repeats=2)
    done = export_subnet(child, byte_tokenizer(), req, source={"model": "tiny", "model_hash": "h"}, subnet=CFG.to_dict(),
                         predicted={"decode_tokens_per_s": 123.0})
    return out, done


def test_hf_and_onnx_artifacts_with_manifests(exported):
    out, done = exported
    assert set(done) == {"hf", "onnx"}
    hf = json.loads((out / "hf" / "manifest.json").read_text())
    onnx = json.loads((out / "onnx" / "manifest.json").read_text())
    assert hf["parity"]["greedy_equal"] and hf["parity"]["max_abs_logit_diff"] <= 1e-4
    assert hf["details"]["heterogeneous"] and "modeling_elastic_llama.py" in hf["files"]
    assert onnx["parity"]["max_abs_logit_diff"] <= 1e-3 and onnx["parity"]["greedy_equal"]
    assert onnx["parity"]["greedy_tokens"] == 32 and onnx["details"]["kv_heads"] == [1, 2, 1]
    assert onnx["throughput"]["measured_decode_tokens_per_s"] > 0
    assert onnx["throughput"]["predicted_decode_tokens_per_s"] == 123.0
    for m in (hf, onnx):
        assert m["subnet"] == CFG.to_dict() and m["source"]["model_hash"] == "h"
        assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in m["files"].values())


def test_verify_passes_then_fails_on_a_tampered_file(exported, tmp_path, capsys):
    import shutil

    out, _ = exported
    assert main(["verify", str(out)]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert {l["format"] for l in lines} == {"hf", "onnx"} and all(l["ok"] for l in lines)
    copy = tmp_path / "onnx"
    shutil.copytree(out / "onnx", copy)
    with open(copy / "tokenizer.json", "a") as fh:
        fh.write(" ")
    assert main(["verify", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tokenizer.json" in err[0] and "sha256" in err[0]


def test_stock_transformers_reloads_the_hf_folder_in_a_fresh_process(exported):
    out, _ = exported
    code = ("import json,sys,torch; from transformers import AutoModelForCausalLM, AutoTokenizer;"
            f"d={str(out / 'hf')!r}; m=AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True).eval();"
            "t=AutoTokenizer.from_pretrained(d, trust_remote_code=True); ref=json.load(open(d+'/manifest.json'))['reference'];"
            "ids=torch.tensor([ref['input_ids']]); o=m.generate(ids, max_new_tokens=len(ref['greedy_ids']), do_sample=False, pad_token_id=t.eos_token_id);"
            "print(o[0, ids.shape[1]:].tolist()==ref['greedy_ids'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.stdout.strip().splitlines()[-1] == "True", r.stderr[-2000:]


KILL = r"""
import sys
from toolkit.elastic import extract
from toolkit.export import ExportRequest, export_subnet
from toolkit.models.tiny import byte_tokenizer, llama_tiny
from toolkit.space import SubnetConfig
cfg = SubnetConfig((0, 1), (64, 64), (2, 2))
export_subnet(extract(llama_tiny(), cfg), byte_tokenizer(), ExportRequest(formats=("hf",), out=__import__("pathlib").Path(sys.argv[1]), threads=1, prompt_tokens=8, generate_tokens=2, repeats=1),
              source={"model": "tiny", "model_hash": "h"}, subnet=cfg.to_dict())
"""


def test_kill_during_export_leaves_no_artifact(tmp_path):
    out = tmp_path / "out"
    script = tmp_path / "kill.py"
    script.write_text(KILL)
    p = subprocess.Popen([sys.executable, str(script), str(out)], env={**os.environ, "TOOLKIT_EXPORT_TEST_SLEEP": "60"})
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".hf.*.tmp")):  # the export is inside its temp folder
        time.sleep(0.05)
    assert list(out.glob(".hf.*.tmp")), "export never started"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out / "hf").exists()
    # the next export sweeps the stale temp folder and succeeds
    subprocess.run([sys.executable, str(script), str(out)], check=True)
    assert (out / "hf" / "manifest.json").exists() and not list(out.glob(".hf.*.tmp"))


def test_unknown_format_and_missing_run_are_one_line_errors(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "pareto.json" in capsys.readouterr().err
    cfg = tmp_path / "c.json"
    cfg.write_text(CFG.to_json())
    assert main(["export", "--config", str(cfg), "--format", "tflite", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("--model" in err[0] or "tflite" in err[0])
