"""Model loading refuses bad model folders and files before transformers runs: each case through the real
CLI (`toolkit info`) is exit 2 with exactly one stderr line naming the file, and no traceback. Also: no
pickle is ever unpickled, importing the package sets no environment variable, and the predicted weight
count is the built model's."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.cli.main import main
from toolkit.errors import UserError


class _Trap:
    """Unpickling this creates ``marker``: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _copy(tiny_folder: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    return folder


def _config(folder: Path, **edits) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    for k, v in edits.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (folder / "config.json").write_text(json.dumps(cfg))


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _tiny_gguf(path: Path) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_tensor("token_embd.weight", np.ones((16, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _only_type(f: Path):
    (f / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))


def _pickle_only(f: Path):
    (f / "model.safetensors").unlink()
    (f / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(f / "UNPICKLED")))


def _shard_index(f: Path):
    (f / "model.safetensors").rename(f / "model-00001-of-00002.safetensors")
    (f / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors", "lm_head.weight": "model-00002-of-00002.safetensors"}}))


def _bad_header_length(f: Path):
    p = f / "model.safetensors"
    p.write_bytes((10**12).to_bytes(8, "little") + p.read_bytes()[8:])


def _header_not_json(f: Path):
    p = f / "model.safetensors"
    data = p.read_bytes()
    n = int.from_bytes(data[:8], "little")
    p.write_bytes(data[:8] + b"\xff" * n + data[8 + n:])


# (case id, how to break a copy of the tiny folder (or None for a GGUF case), what the file in the error is,
#  text the one line must contain)
FOLDER_CASES = [
    ("config-only-model-type", _only_type, "config.json", "hidden_size: required field is missing"),
    ("config-is-a-list", lambda f: (f / "config.json").write_text("[1, 2]"), "config.json", "config: expected a JSON object"),
    ("config-binary", lambda f: (f / "config.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00"), "config.json", "not a text file"),
    ("config-bad-json", lambda f: (f / "config.json").write_text('{"model_type": "llama",'), "config.json", "not valid JSON"),
    ("architectures-not-a-list", lambda f: _config(f, architectures="LlamaForCausalLM"), "config.json",
     "architectures: expected a list"),
    ("hidden-negative", lambda f: _config(f, hidden_size=-64), "config.json", "hidden_size: must be a positive integer"),
    ("layers-a-string", lambda f: _config(f, num_hidden_layers="4"), "config.json", "num_hidden_layers: must be a positive integer"),
    ("vocab-bool", lambda f: _config(f, vocab_size=True), "config.json", "vocab_size: must be a positive integer"),
    ("kv-heads-not-dividing", lambda f: _config(f, num_key_value_heads=3), "config.json", "num_key_value_heads: 3 does not divide"),
    ("heads-not-dividing-hidden", lambda f: _config(f, head_dim=None, num_attention_heads=3, num_key_value_heads=1),
     "config.json", "num_attention_heads: 3 does not divide hidden_size"),
    ("no-weights", lambda f: (f / "model.safetensors").unlink(), "", "no weights"),
    ("pickled-weights-only", _pickle_only, "", "only pickled weights (pytorch_model.bin)"),
    ("missing-shard", _shard_index, "model.safetensors.index.json", "weight_map: names the shard"),
    ("truncated-safetensors", lambda f: _truncate(f / "model.safetensors", 600_000), "model.safetensors", "truncated safetensors"),
    ("safetensors-shorter-than-8-bytes", lambda f: _truncate(f / "model.safetensors", 5), "model.safetensors", "not a safetensors file"),
    ("safetensors-header-too-long", _bad_header_length, "model.safetensors", "malformed safetensors header"),
    ("safetensors-header-not-json", _header_not_json, "model.safetensors", "malformed safetensors header"),
]


def _one_line_error(argv, capsys, file: Path, text: str) -> str:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(file) in lines[0] and text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("case_id,breaks,file,text", FOLDER_CASES, ids=[c[0] for c in FOLDER_CASES])
def test_bad_model_folder_is_one_line(case_id, breaks, file, text, tiny_folder, tmp_path, capsys, monkeypatch):
    import torch

    def no_unpickling(*a, **kw):
        raise AssertionError("torch.load was called on a user file")

    monkeypatch.setattr(torch, "load", no_unpickling)
    folder = _copy(tiny_folder, tmp_path)
    breaks(folder)
    _one_line_error(["info", str(folder), "--no-importance", "--json"], capsys, folder / file, text)
    assert not (folder / "UNPICKLED").exists()  # no pickle was ever loaded
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []  # nothing half-written


def test_weights_over_available_memory_are_refused_before_building(tiny_folder, tmp_path, capsys, monkeypatch):
    import psutil

    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=1 << 20))  # 1 MiB free
    _one_line_error(["info", str(tiny_folder), "--no-importance"], capsys, tiny_folder / "config.json",
                    "more than the 0.0 GiB of memory available")


def test_bad_gguf_magic_and_truncated_gguf(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + bytes(60))
    _one_line_error(["info", str(bad), "--no-importance"], capsys, bad, "not a GGUF file")
    good = _tiny_gguf(tmp_path / "good.gguf")
    size = good.stat().st_size
    for keep in (40, size - 16):  # cut in the metadata, cut in the tensor data
        cut = tmp_path / f"cut{keep}.gguf"
        cut.write_bytes(good.read_bytes()[:keep])
        _one_line_error(["info", str(cut), "--no-importance"], capsys, cut, "malformed or truncated GGUF file")


def test_valid_tiny_gguf_passes_the_check(tmp_path):
    from toolkit.models.loading import check_gguf

    check_gguf(_tiny_gguf(tmp_path / "ok.gguf"))  # no error: the check does not over-refuse


def test_peek_tokenizer_reads_a_gguf_through_the_public_cache_folder(tiny_folder, tmp_path, monkeypatch):
    """Where a GGUF's dequantized folder is cached is public (gguf_cache_folder): loading writes it and
    evaluate.peek_tokenizer reads it, with no private import across modules."""
    from toolkit.evaluate import peek_tokenizer
    from toolkit.models import loading

    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    assert not hasattr(loading, "_gguf_cache_folder")  # no private alias left behind
    gguf = _tiny_gguf(tmp_path / "ok.gguf")
    folder = loading.gguf_cache_folder(gguf)
    assert folder.parent == tmp_path / "cache" / "models" and folder == loading.gguf_cache_folder(gguf)
    assert peek_tokenizer(gguf) is None  # never dequantized: checked after loading
    shutil.copytree(tiny_folder, folder)  # as if dequantized once
    tokenizer, max_length, config = peek_tokenizer(gguf)
    assert tokenizer is not None and config["model_type"] == json.loads((tiny_folder / "config.json").read_text())["model_type"]


def test_safetensors_are_loaded_and_a_pickle_beside_them_never_is(tiny_folder, tmp_path):
    from toolkit.models import load_model

    folder = _copy(tiny_folder, tmp_path)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(folder / "UNPICKLED")))
    loaded = load_model(folder)
    assert loaded.config.hidden_size == 64
    assert not (folder / "UNPICKLED").exists()
    # The weights hash covers the safetensors only, so the stray pickle does not change the identity.
    assert loaded.model_hash == load_model(tiny_folder).model_hash


def test_predicted_parameters_match_the_built_model(tiny_folder, tmp_path):
    from toolkit.elastic import extract, save_subnet
    from toolkit.models.loading import check_shape
    from toolkit.models.tiny import llama_tiny
    from toolkit.space import SubnetConfig

    cfg = json.loads((tiny_folder / "config.json").read_text())
    parent = llama_tiny()
    assert check_shape(cfg, "config.json") == sum(p.numel() for p in parent.parameters())
    child = extract(parent, SubnetConfig((0, 2, 3), (64, 256, 128), (2, 4, 2)))
    folder = save_subnet(child, tmp_path / "elastic")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "elastic_llama"
    assert check_shape(cfg, "config.json") == sum(p.numel() for p in child.parameters())
    with pytest.raises(UserError, match=r"layer_num_attention_heads\[1\]: 3 is not a multiple"):
        check_shape({**cfg, "layer_num_attention_heads": [2, 3, 2]}, "config.json")


def test_importing_the_package_sets_no_environment_variable():
    """HF_HUB_OFFLINE is not set behind the back of a program that imports the toolkit (every load passes
    local_files_only=True instead)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    code = "import os, toolkit, toolkit.models, toolkit.models.loading; print(os.environ.get('HF_HUB_OFFLINE'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "None"
