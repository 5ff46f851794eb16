"""`import toolkit` (and building the CLI parser) stays cheap: no pymoo, onnx, gptqmodel, no CUDA init."""

import json
import subprocess
import sys

HEAVY = ["pymoo", "onnx", "onnxruntime", "onnxscript", "gptqmodel", "matplotlib", "lm_eval", "llama_cpp", "ray"]

CODE = """
import json, sys
import toolkit
import toolkit.cli.main as m
m.build_parser()
import toolkit.space, toolkit.elastic, toolkit.importance, toolkit.models
cuda = False
if "torch" in sys.modules:
    import torch
    cuda = torch.cuda.is_initialized()
print(json.dumps({"mods": sorted(k for k in sys.modules), "cuda": cuda}))
"""


def test_import_toolkit_is_lean():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    loaded = {m.split(".")[0] for m in data["mods"]}
    assert not (loaded & set(HEAVY)), loaded & set(HEAVY)
    assert data["cuda"] is False


def test_cli_parser_does_not_import_torch():
    """`toolkit --help` answers without loading torch (every subcommand imports its heavy parts when run)."""
    code = "import sys, toolkit.cli.main as m; m.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
