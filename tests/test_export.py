"""HF and ONNX export of a tiny heterogeneous sub-network: parity, verify, tampering, kill -9 mid-export."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    assert main(["verify", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # one document for the two folders
    lines = doc["folders"]
    assert {l["format"] for l in lines} == {"hf", "onnx"} and all(l["ok"] for l in lines) and doc["ok"]
    assert doc["dir"] == str(out) and [l["folder"] for l in lines] == [str(out / "hf"), str(out / "onnx")]
    assert main(["verify", str(out)]) == 0  # for people: one line per folder
    shown = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in shown] == [["ok", "hf", str(out / "hf")], ["ok", "onnx", str(out / "onnx")]]
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
            "ids=torch.tensor([ref['prompt_ids']]); o=m.generate(ids, max_new_tokens=len(ref['continuation_ids']), do_sample=False, pad_token_id=t.eos_token_id);"
            "print(o[0, ids.shape[1]:].tolist()==ref['continuation_ids'])")
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


# -- teacher-forced parity (issue 15 item 0) -------------------------------------------------------
def _reference(margins, logits_top1=5.0, k=3):
    """A Reference over a 1-token prompt whose position t has top-1 id t % 4, with the given margins."""
    from toolkit.export.parity import Reference

    T = len(margins)
    ids = tuple(tuple((t + j) % 4 for j in range(k)) for t in range(T))
    vals = tuple(tuple([logits_top1, logits_top1 - m] + [logits_top1 - m - 1.0] * (k - 2)) for t, m in enumerate(margins))
    return Reference(prompt="x", prompt_ids=(7,), continuation_ids=tuple(range(T - 1)), topk_ids=ids, topk_logits=vals)


def _logits_from(ref, vocab=8, noise=None):
    import numpy as np

    out = np.full((len(ref.sequence), vocab), -10.0)
    for t, (ids, vals) in enumerate(zip(ref.topk_ids, ref.topk_logits)):
        out[t, list(ids)] = vals
    return out if noise is None else out + noise


def test_parity_forgives_a_flip_at_a_near_tie_but_not_a_clear_one():
    import numpy as np

    from toolkit.export.parity import compare

    ref = _reference([2.0, 1e-5, 2.0, 2.0])
    flip = _logits_from(ref)
    flip[1, ref.topk_ids[1][1]] += 3e-5  # runner-up overtakes by 2e-5: a near-tie, within tolerance
    res = compare(ref, flip)
    assert res.ok and res.near_ties == 1 and not res.greedy_mismatches and res.max_abs_logit_diff == pytest.approx(3e-5)
    clear = _logits_from(ref)
    clear[2, 5] = 10.0  # an id outside the top-k wins by a mile at a clear-margin position
    res = compare(ref, clear)
    assert not res.ok and res.greedy_mismatches == (2,) and res.max_abs_logit_diff == 0.0
    res = compare(ref, _logits_from(ref, noise=np.full((4, 8), 2e-3)))
    assert not res.ok and res.max_abs_logit_diff == pytest.approx(2e-3) and not res.greedy_mismatches



def _full_reference(margins, vocab=32):
    """A Reference with the real TOP_K over a ``vocab``-token vocabulary; position t keeps ids t..t+k-1."""
    from toolkit.export.parity import TOP_K, Reference

    T = len(margins)
    ids = tuple(tuple((t + j) % vocab for j in range(TOP_K)) for t in range(T))
    vals = tuple(tuple([5.0, 5.0 - m] + [2.5 - 0.1 * j for j in range(TOP_K - 2)]) for m in margins)
    return Reference(prompt="x", prompt_ids=(7,), continuation_ids=tuple(range(T - 1)), topk_ids=ids, topk_logits=vals)


def _fake_runtime(ref, vocab=32, low=-10.0):
    """What a faithful artifact returns: the reference's logits at its top-k ids, lower ones elsewhere."""
    import numpy as np

    out = np.full((len(ref.sequence), vocab), low)
    for t, (ids, vals) in enumerate(zip(ref.topk_ids, ref.topk_logits)):
        out[t, list(ids)] = vals
    return out


def test_parity_bounds_the_logits_outside_the_reference_top_k_at_every_position():
    from toolkit.export.parity import ParityError, check, compare

    ref = _full_reference([2.0, 1e-5, 2.0])  # position 1 is a near-tie
    outside = 30  # in no position's top-8
    assert all(outside not in row for row in ref.topk_ids)
    assert compare(ref, _fake_runtime(ref)).ok
    # a token the reference did not keep wins the near-tie (within the tolerance of the top-1, so no logit
    # the reference kept is off): the margin rule forgives any argmax there, the top-k rule does not
    logits = _fake_runtime(ref)
    logits[1, outside] = ref.topk_logits[1][0] + 5e-4
    res = compare(ref, logits)
    assert not res.ok and res.off_topk == (1,) and not res.greedy_mismatches and res.max_abs_logit_diff == 0.0
    with pytest.raises(ParityError, match=r"^what: parity: .*top-k .* 1 position\(s\) \(first: 1\)$"):
        check(ref, logits, "what")
    # far above the top-1 at the near-tie
    logits[1, outside] = 50.0
    assert compare(ref, logits).off_topk == (1,)
    # not the argmax, but far above PyTorch's 8th logit (which bounds every id it did not keep), at a clear margin
    logits = _fake_runtime(ref)
    logits[2, outside] = ref.topk_logits[2][0] - 0.5
    res = compare(ref, logits)
    assert not res.ok and res.off_topk == (2,) and not res.greedy_mismatches
    # up to the tolerance above the 8th logit is still a faithful artifact
    logits[2, outside] = ref.topk_logits[2][-1] + 5e-4
    assert compare(ref, logits).ok


def test_verify_fails_an_artifact_with_a_wrong_logit_outside_the_top_k(exported, tmp_path, capsys, monkeypatch):
    import numpy as np

    from toolkit.export.manifest import Manifest
    from toolkit.export.onnx import OrtCausalLM

    out, _ = exported
    copy = _copy(out / "onnx", tmp_path / "onnx")
    ref = Manifest.read(copy).parity_reference(copy)
    vals = np.asarray(ref.topk_logits)
    t = int(np.argmax(vals[:, 0] - vals[:, -1]))  # the position whose 8th logit is furthest below its top-1
    assert vals[t, 0] - vals[t, -1] > 0.1
    real = OrtCausalLM.teacher_forced_logits

    def one_wrong_logit(self, sequence, prompt_len):
        logits = real(self, sequence, prompt_len)
        row = logits[t]
        outside = next(i for i in np.argsort(row) if i not in ref.topk_ids[t])
        row[outside] = row.max() - 0.05  # not the winner, but far above anything PyTorch gave it
        return logits

    monkeypatch.setattr(OrtCausalLM, "teacher_forced_logits", one_wrong_logit)
    assert main(["verify", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "parity" in err[0] and str(copy) in err[0] and f"(first: {t})" in err[0]

def test_reference_is_teacher_forced_and_small(exported):
    from toolkit.export.manifest import Manifest
    from toolkit.export.parity import CONTINUATION_TOKENS, TOP_K

    out, _ = exported
    for fmt in ("hf", "onnx"):
        m = Manifest.read(out / fmt)
        ref = m.parity_reference(out / fmt)
        assert 0 < len(ref.continuation_ids) <= CONTINUATION_TOKENS and len(ref.topk_ids) == len(ref.sequence)
        assert all(len(r) == TOP_K for r in ref.topk_ids)
        assert m.parity["method"] == "teacher-forced" and m.parity["positions"] > len(ref.sequence)  # 3 prompts
        assert (out / fmt / "manifest.json").stat().st_size < 40_000
    # hf and onnx are checked against the same PyTorch reference
    assert Manifest.read(out / "hf").reference == Manifest.read(out / "onnx").reference


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _rehash(folder, name):
    """Update the manifest's record of ``name`` as someone who tampered with it would."""
    from toolkit.fileio import sha256_file

    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    m["files"][name] = {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
    path.write_text(json.dumps(m))


def test_verify_parity_failure_is_one_line_and_small_noise_passes(exported, tmp_path, capsys, monkeypatch):
    import numpy as np

    from toolkit.export.onnx import OrtCausalLM

    out, _ = exported
    copy = _copy(out / "onnx", tmp_path / "onnx")
    forward = OrtCausalLM.forward
    rng = np.random.default_rng(0)
    noise = {"scale": 3e-4}

    def noisy(self, ids, past):
        logits, present = forward(self, ids, past)
        return logits + rng.uniform(-noise["scale"], noise["scale"], logits.shape).astype(logits.dtype), present

    monkeypatch.setattr(OrtCausalLM, "forward", noisy)
    assert main(["verify", str(copy), "--json"]) == 0  # runtime noise well under the tolerance
    assert json.loads(capsys.readouterr().out)["folders"][0]["ok"]
    noise["scale"] = 2e-2
    assert main(["verify", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "parity" in err[0] and str(copy) in err[0]


def test_export_parity_failure_is_a_one_line_error_and_leaves_nothing(tmp_path, monkeypatch):
    import torch

    import toolkit.export.hf as hf
    from toolkit.elastic import extract
    from toolkit.export import ExportRequest, export_subnet
    from toolkit.export.parity import ParityError
    from toolkit.models.tiny import byte_tokenizer, llama_tiny

    load = hf.load_hf

    def off_by_a_bit(folder, **kw):
        model, tok = load(folder, **kw)
        with torch.no_grad():
            model.model.norm.weight.mul_(1.01)  # the reloaded model is not the exported one
        return model, tok

    monkeypatch.setattr(hf, "load_hf", off_by_a_bit)
    cfg = SubnetConfig((0, 1), (64, 64), (2, 2))
    req = ExportRequest(formats=("hf",), out=tmp_path, threads=1, prompt_tokens=8, generate_tokens=2, repeats=1)
    with pytest.raises(ParityError, match=r"hf export: parity: .*max \|logit diff\|"):
        export_subnet(extract(llama_tiny(), cfg), byte_tokenizer(), req, source={"model": "tiny", "model_hash": "h"},
                      subnet=cfg.to_dict())
    assert list(tmp_path.iterdir()) == []


# -- no code from the artifact runs (item 1) -------------------------------------------------------
MARKER_CODE = "\nimport pathlib as _p\n_p.Path({marker!r}).write_text('the artifact ran its own code')\n"


def _tampered_hf_copy(exported, tmp_path, marker):
    """A copy of the hf export whose modeling file writes ``marker`` when imported, re-hashed in the manifest."""
    out, _ = exported
    copy = _copy(out / "hf", tmp_path / f"hf_{marker.name}")
    with open(copy / "modeling_elastic_llama.py", "a") as fh:
        fh.write(MARKER_CODE.format(marker=str(marker)))
    _rehash(copy, "modeling_elastic_llama.py")  # the hashes now "protect" the edited file
    return copy


def test_verify_refuses_a_tampered_modeling_file_and_runs_none_of_it(exported, tmp_path, capsys):
    out, _ = exported
    marker = tmp_path / "PWNED"
    copy = _tampered_hf_copy(exported, tmp_path, marker)
    assert main(["verify", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "modeling_elastic_llama.py" in err[0] and "--trust-remote-code" in err[0]
    assert not marker.exists()
    # the untampered folder verifies with the toolkit's own class, no remote code
    assert main(["verify", str(out / "hf"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["folders"][0]["trust_remote_code"] is False


def test_verify_trust_remote_code_runs_the_folders_code_when_asked(exported, tmp_path, capsys):
    marker = tmp_path / "RAN"
    copy = _tampered_hf_copy(exported, tmp_path, marker)
    assert main(["verify", str(copy), "--trust-remote-code", "--json"]) == 0
    assert marker.exists() and json.loads(capsys.readouterr().out)["folders"][0]["trust_remote_code"] is True


def test_hf_loader_refuses_unknown_model_types_without_trust(tmp_path):
    from toolkit.errors import UserError
    from toolkit.export.hf import load_hf

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {"AutoModelForCausalLM": "x.Y"}}))
    with pytest.raises(UserError, match=r"config.json: model_type: 'evil'.*--trust-remote-code"):
        load_hf(tmp_path)


# -- files: modes, stale temporaries, --resume (item 11) -------------------------------------------
@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, file_mode, dir_mode):
    import stat
    import tempfile

    from toolkit.fileio import atomic_directory, atomic_write_json

    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        with atomic_directory(tmp_path / "art") as tmp:
            (tmp / "plain.txt").write_text("x")
            fd, lib = tempfile.mkstemp(dir=tmp)  # how libraries (transformers' safetensors) write: 0600
            os.close(fd)
            (tmp / "sub").mkdir()
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "a.json") == file_mode
    assert mode(tmp_path / "art") == dir_mode and mode(tmp_path / "art" / "sub") == dir_mode
    assert mode(tmp_path / "art" / "plain.txt") == file_mode
    assert mode(tmp_path / "art" / Path(lib).name) == file_mode


def test_reading_the_umask_leaves_it_alone():
    from toolkit.fileio import current_umask

    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027 and current_umask() == 0o027
    finally:
        os.umask(old)


def _stale(out):
    """What exports killed at different moments leave behind."""
    (out / ".onnx.k1ll3d.tmp").mkdir(parents=True)
    (out / ".onnx.k1ll3d.tmp" / "model.onnx").write_bytes(b"half")
    (out / ".gptq-source.abc.tmp" / "hf").mkdir(parents=True)
    (out / ".hf.old").mkdir()
    (out / ".manifest.json.x.tmp").write_text("{")  # not ours: another name


def test_resume_keeps_a_verified_format_and_sweeps_stale_temporaries(exported, tmp_path, monkeypatch):
    import toolkit.export.hf as hf
    import toolkit.export.onnx as onnx
    from toolkit.errors import UserError
    from toolkit.export import ExportRequest, export_subnet

    out, _ = exported
    copy = _copy(out, tmp_path / "out")
    _stale(copy)
    before = {f: (copy / f / "manifest.json").read_bytes() for f in ("hf", "onnx")}

    def no(*a, **k):
        raise AssertionError("a kept format was exported again")

    monkeypatch.setattr(onnx, "export_onnx", no)
    monkeypatch.setattr(hf, "load_hf", no)
    src = {"model": "tiny", "model_hash": "h"}
    req = ExportRequest(formats=("hf", "onnx"), out=copy, threads=1, resume=True)
    done = export_subnet(None, None, req, source=src, subnet=CFG.to_dict())
    assert done == {"hf": copy / "hf", "onnx": copy / "onnx"}
    assert {f: (copy / f / "manifest.json").read_bytes() for f in ("hf", "onnx")} == before
    assert sorted(p.name for p in copy.iterdir()) == [".manifest.json.x.tmp", "hf", "onnx"]
    # a folder that no longer verifies, or holds another sub-network, is not kept (nor silently replaced)
    with open(copy / "onnx" / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(UserError, match=r"onnx: exists and cannot be kept \(.*model.onnx: sha256 mismatch.*--overwrite"):
        export_subnet(None, None, req, source=src, subnet=CFG.to_dict())
    other = SubnetConfig((0, 1), (64, 64), (2, 2))
    with pytest.raises(UserError, match=r"hf: exists and cannot be kept \(it holds another sub-network\)"):
        export_subnet(None, None, ExportRequest(formats=("hf",), out=copy, resume=True), source=src,
                      subnet=other.to_dict())
    with pytest.raises(UserError, match=r"another model"):
        export_subnet(None, None, ExportRequest(formats=("hf",), out=copy, resume=True),
                      source={"model_hash": "other"}, subnet=CFG.to_dict())


@pytest.fixture
def calib(tmp_path):
    import toolkit

    f = tmp_path / "calibration.txt"
    f.write_text("\n\n".join(p.read_text() for p in sorted(Path(toolkit.__file__).parent.glob("*.py"))[:6]))
    return f


def test_cli_export_then_resume_keeps_the_verified_folder(tiny_folder, calib, tmp_path, capsys):
    cfg = tmp_path / "subnet.json"
    cfg.write_text(CFG.to_json())
    out = tmp_path / "out"
    args = ["export", "--config", str(cfg), "--model", str(tiny_folder), "--format", "hf", "--out", str(out),
            "--calibration", str(calib), "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["hf"]["kept"] is False
    manifest = (out / "hf" / "manifest.json").read_bytes()
    assert main(args) == 2  # exists: neither --resume nor --overwrite
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0]
    (out / ".hf.x.tmp").mkdir()  # a killed export's leftovers
    assert main([*args, "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["hf"]["kept"] is True
    assert (out / "hf" / "manifest.json").read_bytes() == manifest and not (out / ".hf.x.tmp").exists()
    assert main([*args[:-1], "--resume"]) == 0  # without --json: a table for people
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if str(out / "hf") in line)
    assert "hf" in row and "yes" in row and not table.lstrip().startswith("{")



@pytest.mark.parametrize("subnet,field", [
    (SubnetConfig((0, 1), (64, 64), (2, 8)), "heads[1]"),  # the tiny parent has 4 heads per layer
    (SubnetConfig((0, 1), (512, 64), (2, 2)), "mlp[0]"),  # and MLP width 256
])
def test_export_config_that_does_not_fit_the_parent_is_refused_before_loading(tiny_folder, tmp_path, capsys,
                                                                              subnet, field, model_must_not_load):

    bad = tmp_path / "bad.json"
    bad.write_text(subnet.to_json())
    rc = main(["export", "--config", str(bad), "--model", str(tiny_folder), "--format", "hf",
               "--out", str(tmp_path / "out"), "--calibration", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {bad}: {field}: "), err
    assert not (tmp_path / "out").exists()


def test_loading_hf_and_onnx_folders_registers_nothing_in_transformers(exported, tiny_folder):
    """Only the GPTQ paths register elastic_llama in the Auto classes; plain llama, elastic hf and onnx
    folders (and their tokenizers) load without it, in a fresh process where nothing registered it."""
    out, _ = exported
    code = ("import sys; from pathlib import Path; from transformers import CONFIG_MAPPING;"
            "from toolkit.export.hf import load_hf, load_tokenizer;"
            "assert 'elastic_llama' not in CONFIG_MAPPING;"
            "[load_tokenizer(Path(d)) for d in sys.argv[1:]]; load_hf(Path(sys.argv[2]));"
            "print('registered' if 'elastic_llama' in CONFIG_MAPPING else 'clean')")
    r = subprocess.run([sys.executable, "-c", code, str(tiny_folder), str(out / "hf"), str(out / "onnx")],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.stdout.strip().splitlines()[-1:] == ["clean"], r.stderr[-2000:]

# -- bad input before any model loads (items 4, 5, 7, 8) -------------------------------------------
def _front_entry(acc, tps, cfg=CFG):
    return {"index": 0, "key": "k", "config": cfg.to_dict(), "metrics": {"accuracy": acc, "decode_tokens_per_s": tps},
            "feasible": True}


def _pareto(tmp_path, edit=None, text=None):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    full = SubnetConfig((0, 1, 2, 3), (256,) * 4, (4,) * 4)
    pareto = {"version": 1, "model": "tiny", "model_hash": "h", "profile": None, "task": "arc_easy",
              "parent": {**_front_entry(0.6, 10.0, full), "accuracy_measured": True},
              "front": [_front_entry(0.58, 20.0), _front_entry(0.40, 40.0)]}
    if edit:
        pareto = edit(pareto) or pareto
    if isinstance(text, bytes):
        (run / "pareto.json").write_bytes(text)
    else:
        (run / "pareto.json").write_text(text if text is not None else json.dumps(pareto))
    return run


@pytest.fixture
def no_model_load(monkeypatch):
    """Make loading a model a recognisable one-line error: a case that reaches it got past the checks."""
    import toolkit.models
    from toolkit.errors import UserError

    def load_model(*a, **k):
        raise UserError("REACHED load_model")

    monkeypatch.setattr(toolkit.models, "load_model", load_model)


def _one_line_error(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, (rc, err)
    return err[0]


def _unmeasured_parent(p):
    p["parent"].pop("accuracy_measured")
    p["parent"]["metrics"]["accuracy"] = 0.0  # how an infeasible parent was journaled
    p["parent"]["feasible"] = False


@pytest.mark.parametrize("pick,edit,text,expect", [
    ("fastest-within:abc", None, None, "--pick: fastest-within:abc"),
    ("fastest-within:-0.1", None, None, "--pick"),
    ("-1", None, None, "--pick: '-1'"),
    ("2", None, None, "--pick: 2 is out of range"),
    ("0", lambda p: [p], None, "pareto.json: <root>: expected a JSON object"),
    ("0", lambda p: p["front"][1].pop("config") and None, None, "pareto.json: front[1].config: missing"),
    ("0", lambda p: p["front"][0]["config"].update(heads="x") or None, None, "pareto.json: front[0].config.heads"),
    ("0", lambda p: p["front"][0]["metrics"].update(accuracy="high") or None, None, "front[0].metrics.accuracy"),
    ("0", lambda p: p.update(front={"a": 1}) or None, None, "pareto.json: front: missing or not a list"),
    ("0", None, '{"version": 1, "front": [', "pareto.json: line 1: invalid JSON"),
    ("0", None, b"\x00\xff\xfe", "pareto.json: <file>: not a UTF-8 text file"),
    ("fastest-within:0.05", _unmeasured_parent, None, "parent's accuracy was never measured"),
    ("fastest-within:0.05", lambda p: p["parent"].update(accuracy_measured=False) or None, None, "never measured"),
    ("fastest-within:0.05", lambda p: p["parent"].update(accuracy_measured="yes") or None, None,
     "parent.accuracy_measured"),
    ("fastest-within:0.05", lambda p: p.update(parent=None) or None, None, "no record of the parent"),
    ("fastest-within:0.05", None, None, "REACHED load_model"),  # a measured parent: the pick goes through
    ("fastest-within:0.001", None, None, "no front member within 0.001"),
])
def test_export_refuses_bad_picks_and_run_files_before_loading(tmp_path, capsys, no_model_load, pick, edit, text,
                                                                 expect):
    run = _pareto(tmp_path, edit, text)
    err = _one_line_error(capsys, ["export", str(run), "--pick", pick, "--format", "hf", "--out", str(tmp_path / "x"),
                                   "--calibration", str(run / "pareto.json")])
    assert expect in err
    assert not (tmp_path / "x").exists()


def test_fastest_within_picks_the_fastest_member_near_a_measured_parent(tmp_path):
    from toolkit.export.pareto import ParetoFront, parse_pick

    front = ParetoFront.read(_pareto(tmp_path))
    assert front.pick(parse_pick("fastest-within:0.05")).metrics["decode_tokens_per_s"] == 20.0
    assert front.pick(parse_pick("fastest-within:0.3")).metrics["decode_tokens_per_s"] == 40.0
    assert front.pick(parse_pick("1")).metrics["accuracy"] == 0.40


@pytest.mark.parametrize("argv,expect", [
    (["--format", "foo"], "--format: unknown format 'foo'"),
    (["--format", "hf,hf"], "--format"),
    (["--format", ""], "--format"),
    (["--bits", "5"], "--bits"),
    (["--group-size", "0"], "--group-size"),
])
def test_export_argument_errors_come_before_the_model_loads(tmp_path, capsys, no_model_load, argv, expect):
    run = _pareto(tmp_path)
    args = ["export", str(run), "--out", str(tmp_path / "x"), "--calibration", str(tmp_path / "run" / "pareto.json")]
    err = _one_line_error(capsys, [*args, "--format", "hf", *argv])
    assert expect in err and "REACHED" not in err


def _manifest_case(tmp_path, exported, edit):
    out, _ = exported
    copy = _copy(out / "hf", tmp_path / "art")
    m = json.loads((copy / "manifest.json").read_text())
    new = edit(m)
    (copy / "manifest.json").write_text(json.dumps(m if new is None else new))
    return copy


@pytest.mark.parametrize("edit,expect", [
    (lambda m: [m], "manifest.json: <root>: expected a JSON object"),
    (lambda m: m.update(files=["model.safetensors"]) or None, "manifest.json: files: expected an object"),
    (lambda m: m["files"]["config.json"].update(sha256=7) or None, "files['config.json'].sha256"),
    (lambda m: m["files"].update({"../../etc/passwd": m["files"]["config.json"]}) or None,
     "files['../../etc/passwd']: not a relative path"),
    (lambda m: m.update(format=3) or None, "manifest.json: format: unknown format 3"),
    (lambda m: m.update(source="tiny") or None, "manifest.json: source"),
    (lambda m: m["reference"].update(prompt_ids="abc") or None, "reference.prompt_ids"),
    (lambda m: m["reference"].update(topk_logits=[[1.0, 2.0]]) or None, "reference.topk_ids"),
    (lambda m: m["reference"].update(version=1) or None, "reference.version"),
    (lambda m: m.update(version=1) or None, "manifest.json: version: unsupported manifest version 1"),
])
def test_verify_refuses_malformed_manifests_in_one_line(tmp_path, capsys, exported, edit, expect):
    copy = _manifest_case(tmp_path, exported, edit)
    assert expect in _one_line_error(capsys, ["verify", str(copy)])


def test_verify_a_consistently_edited_artifact_is_one_line(exported, tmp_path, capsys):
    """Edits that keep the hashes consistent (or touch only the manifest) still end in one line, not a traceback."""
    out, _ = exported
    hf = _copy(out / "hf", tmp_path / "hf")
    cfg = json.loads((hf / "config.json").read_text())
    cfg["num_hidden_layers"] = 5  # the per-layer widths list 3 layers
    (hf / "config.json").write_text(json.dumps(cfg))
    _rehash(hf, "config.json")
    assert "cannot load the model" in _one_line_error(capsys, ["verify", str(hf)])
    onnx = _copy(out / "onnx", tmp_path / "onnx")
    m = json.loads((onnx / "manifest.json").read_text())
    m["details"]["kv_heads"] = [2, 2, 2]  # not the graph's cache layout
    (onnx / "manifest.json").write_text(json.dumps(m))
    assert "cache layout" in _one_line_error(capsys, ["verify", str(onnx)])


# -- the caller's model is not changed (item 10) ---------------------------------------------------
def test_export_onnx_leaves_the_callers_model_as_it_was(tmp_path, monkeypatch):
    pytest.importorskip("onnxscript")
    import torch

    from toolkit.export.onnx import export_onnx
    from toolkit.models.tiny import llama_tiny

    seen = {}

    def fake_export(wrapper, args, path, **kw):  # the real one takes seconds; what it was given is the point
        p = next(wrapper.lm.parameters())
        seen.update(dtype=p.dtype, training=wrapper.lm.training, attn=wrapper.lm.config._attn_implementation)

    monkeypatch.setattr(torch.onnx, "export", fake_export)
    model = llama_tiny().to(torch.bfloat16).train()
    model.config._attn_implementation = "sdpa"
    export_onnx(model, tmp_path)
    assert seen == {"dtype": torch.float32, "training": False, "attn": "eager"}
    assert next(model.parameters()).dtype == torch.bfloat16 and model.training
    assert model.config._attn_implementation == "sdpa"
    fp32 = llama_tiny().train()
    fp32.config._attn_implementation = "sdpa"
    export_onnx(fp32, tmp_path)  # already fp32 on the CPU: exported as is (no copy), modes restored
    assert seen["dtype"] == torch.float32 and fp32.training and fp32.config._attn_implementation == "sdpa"
