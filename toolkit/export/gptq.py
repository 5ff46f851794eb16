"""GPTQ 4-bit export with GPTQModel, written in the standard GPTQ layout, and loading it back.

:func:`export_gptq` quantizes an exported HF folder (fp32/fp16 Llama) with GPTQModel on the CPU and writes
what GPTQ checkpoints on the Hub look like: ``config.json`` with ``quantization_config`` (``quant_method:
"gptq"``, ``bits``, ``group_size``, ``desc_act: false``, ``sym: true``), ``quantize_config.json``,
``model.safetensors`` with ``qweight``/``qzeros``/``scales``/``g_idx`` for every decoder linear layer
(embeddings, norms and the tied LM head stay bfloat16), the tokenizer files, and GPTQModel's per-layer
``quant_log.csv``. Calibration: ``num_samples`` windows of ``seq_len`` tokens at seeded random offsets of
the calibration text (a ``.txt`` file, or ``.jsonl`` with a ``"text"`` field per line). :func:`load_gptq`
loads such a folder with the folder's class (``from_pretrained``, transformers' GPTQ quantizer through
optimum to GPTQModel's CPU kernel), or with ``GPTQModel.load`` where optimum is not installed.

Uniform sub-networks are plain Llama folders; heterogeneous ones are ``elastic_llama`` folders, which
GPTQModel quantizes layer by layer at each layer's own shape. The quantized folder keeps
``modeling_elastic_llama.py`` for stock transformers users (``trust_remote_code=True``); the toolkit itself
never runs it: both functions check it is byte-for-byte the toolkit's own and build the toolkit's class
(:mod:`toolkit.export.hf`), unless the caller passes ``trust_remote_code=True``.

**Pins.** ``gptqmodel==7.3.6`` is the last release that does not pull a CUDA torch; it is installed with
``--no-deps`` (its declared dependencies would replace the CPU torch) plus the few packages it imports
(:data:`INSTALL_HINT`), and ``optimum==2.3.0`` for stock transformers loading. On this stack gptqmodel
needs these workarounds, applied only while this module calls it:

* ``import gptqmodel`` imports ``torchvision.transforms`` unconditionally (its InternVL definition), and no
  torchvision wheel works with the pinned CPU torch: while gptqmodel is imported, and only then, a minimal
  stub sits in ``sys.modules`` (transformers' ``is_torchvision_available()`` is cached as ``False`` first).
  So call :func:`is_gptq_available` before stock ``from_pretrained`` of a GPTQ folder (``load_gptq`` does).
* ``GPTQMODEL_CPU_WORKERS`` defaults to ``max(2, cpu_count // 2)``: its thread pool needs at least 2.
* ``GPTQMODEL_DISABLE_PACK_EXT`` defaults to ``1``: the pure-PyTorch packing path instead of a C++
  extension compiled with ninja on first use (which needs a compiler).
* Its console output (banner, per-module lines, progress bars) is held back, and shown if the call fails.

**Limits.** Every decoder linear layer's input width must be a multiple of ``group_size`` (and of the
int32 packing factor): GPTQModel would write a partial last group, but the CPU kernel
(``aten._weight_int4pack_mm_for_cpu``) rejects it at inference, so it is refused up front with a size that
fits (SmolLM2's hidden size 576 rules out 128; 64 divides every SmolLM2 sub-network). Quantization runs
on the CPU in bfloat16 and takes minutes (each calibration window passes every layer about five times;
benchmarks/README.md has the timings). Importing this module imports neither gptqmodel nor torch.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from toolkit.errors import UserError

GPTQMODEL_VERSION = "7.3.6"
INSTALL_HINT = (f"pip install --no-deps gptqmodel=={GPTQMODEL_VERSION} device-smi==0.5.7 logbar==0.4.15 pypcre==0.6.4 "
                "tokenicer==0.0.14 defuser==0.0.28 threadpoolctl==3.8.0 && pip install optimum==2.3.0")
SUPPORTED_BITS = (2, 3, 4, 8)
_TORCHVISION_STUB = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


# -- import --------------------------------------------------------------------------------------
def _insert_torchvision_stub() -> list[str]:
    """Put a minimal ``torchvision`` into ``sys.modules`` if no working one imports; return what was added."""
    import enum
    import importlib
    import importlib.util
    import types

    try:
        if importlib.util.find_spec("torchvision") is not None:
            importlib.import_module("torchvision.transforms")
            return []  # a working torchvision: use it
    except Exception:  # a torchvision built for another torch fails at import
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]

    class InterpolationMode(enum.Enum):  # the one name gptqmodel's InternVL definition reads at import
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    mods = {name: types.ModuleType(name, "stub inserted by toolkit.export.gptq while importing gptqmodel")
            for name in _TORCHVISION_STUB}
    mods["torchvision.transforms.functional"].InterpolationMode = InterpolationMode
    mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]
    mods["torchvision"].transforms = mods["torchvision.transforms"]
    sys.modules.update(mods)
    return list(mods)


@functools.cache
def _gptqmodel():
    """Import gptqmodel once (with the workarounds in the module docstring); raises ImportError."""
    import importlib.util

    if importlib.util.find_spec("gptqmodel") is None:
        raise ImportError("gptqmodel is not installed")
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, (os.cpu_count() or 1) // 2)))
    os.environ.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")
    from transformers.utils import import_utils

    import_utils.is_torchvision_available()  # cache the honest answer before the stub goes in
    added = _insert_torchvision_stub()
    try:
        with _quiet():
            import gptqmodel
    finally:
        for name in added:
            sys.modules.pop(name, None)
    return gptqmodel


@functools.cache
def is_gptq_available() -> bool:
    """True if gptqmodel imports here (with the torchvision workaround). Imports it: takes a few seconds."""
    try:
        _gptqmodel()
    except Exception:
        return False
    return True


def require_gptq() -> None:
    if not is_gptq_available():
        raise UserError(f"--format gptq needs gptqmodel {GPTQMODEL_VERSION} (it does not import here); install it "
                        f"without touching torch: {INSTALL_HINT}")


def gptqmodel_version() -> str:
    return str(getattr(_gptqmodel(), "__version__", "unknown"))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hold back GPTQModel's console output: its start-up banner (and the ``git`` error its banner code
    prints outside a git checkout), one INFO line per module, live progress bars, a config dump on save.

    stdout and stderr go to a temporary file for the duration, at the file-descriptor level too (the
    ``git`` subprocess and logging handlers write there); if the block raises, the file's tail is written
    to the real stderr so the reason is not lost. Everything is restored afterwards.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink, open(sink.fileno(), "w", closefd=False, buffering=1) as text:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield
        except BaseException:
            text.flush()
            sink.seek(0)
            tail = sink.read()[-8000:].decode("utf-8", "replace")
            raise
        else:
            tail = None
        finally:
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)
            if tail:
                sys.stderr.write(f"--- gptqmodel output (tail) ---\n{tail}\n")


@contextlib.contextmanager
def _logs_in_temp_dir():
    """GPTQModel writes a per-layer log file into ``./logs`` of the current directory (a module constant,
    ``gptqmodel.looper.loop_processor._PROJECT_LOG_DIR``); point it at a temporary folder instead so an
    export leaves nothing behind in the user's working directory."""
    from gptqmodel.looper import loop_processor

    saved = loop_processor._PROJECT_LOG_DIR
    with tempfile.TemporaryDirectory(prefix="gptqmodel-logs-") as tmp:
        loop_processor._PROJECT_LOG_DIR = Path(tmp)
        try:
            yield
        finally:
            loop_processor._PROJECT_LOG_DIR = saved


# -- calibration ---------------------------------------------------------------------------------
def read_calibration_texts(file: Path) -> list[str]:
    """The documents of a calibration file (see :func:`toolkit.corpus.read_texts`)."""
    from toolkit.corpus import read_texts

    return read_texts(file, "calibration text")


def calibration_windows(tokenizer, file: Path, num_samples: int, seq_len: int, seed: int) -> list[list[int]]:
    """``num_samples`` token windows of length ``seq_len`` at seeded random offsets of the calibration text."""
    import numpy as np

    text = "\n\n".join(read_calibration_texts(file))
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if len(ids) < seq_len:
        raise UserError(f"{file}: calibration text has {len(ids)} tokens, fewer than one window of {seq_len}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids) - seq_len + 1, size=num_samples)
    return [ids[int(s):int(s) + seq_len] for s in starts]


# -- export --------------------------------------------------------------------------------------
def _read_config(hf_folder: Path) -> dict[str, Any]:
    path = hf_folder / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read the model config ({exc})") from None


def _linear_in_features(hf_folder: Path) -> dict[str, int]:
    """``in_features`` of every decoder linear layer, read from the safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    files = sorted(hf_folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{hf_folder}: no *.safetensors weights (GPTQ export quantizes a saved HF folder)")
    ins = {}
    for f in files:
        with safe_open(f, "pt") as st:
            for key in st.keys():
                if key.startswith("model.layers.") and key.endswith("_proj.weight"):
                    ins[key.removesuffix(".weight")] = st.get_slice(key).get_shape()[1]
    return ins


def _check_shapes(hf_folder: Path, bits: int, group_size: int) -> None:
    """Every linear layer's in_features must pack into int32 words and split into whole groups.

    GPTQModel itself writes a partial last group, but the CPU kernel that runs it
    (``torch.ops.aten._weight_int4pack_mm_for_cpu``) rejects it at inference ("expect K to be divisible by
    qGroupSize"), so such a folder would be written and then fail to run: refuse it up front.
    """
    ins = _linear_in_features(hf_folder)
    widths = sorted(set(ins.values()))
    pack = 32 // bits if bits in (2, 4, 8) else 1
    unpackable = [n for n in widths if n % pack]
    if unpackable:
        name = next(k for k, n in ins.items() if n == unpackable[0])
        raise UserError(f"{hf_folder}: {name} has {unpackable[0]} input features, not a multiple of {pack} "
                        f"({bits}-bit values packed {pack} to an int32 word)")
    bad = [n for n in widths if group_size != -1 and n % group_size]
    if not bad:
        return
    fits = [g for g in (256, 128, 64, 32, 16) if all(n % g == 0 for n in widths)]
    hint = f"; --group-size {fits[0]} divides all of them" if fits else "; -1 (one group per column) always fits"
    name = next(k for k, n in ins.items() if n == bad[0])
    raise UserError(f"{hf_folder}: {name} has {bad[0]} input features, not a multiple of group size {group_size} "
                    f"(layer input widths: {', '.join(map(str, widths))}){hint}")


def export_gptq(hf_folder: Path, out_dir: Path, *, bits: int = 4, group_size: int = 64,
                calibration_file: Path, num_samples: int = 32, seq_len: int = 512, seed: int = 0) -> dict:
    """Quantize the (already exported, fp32/fp16) HF folder ``hf_folder`` with GPTQModel and write the standard
    GPTQ layout into ``out_dir`` (which the caller created empty; write into it, the caller renames it atomically).

    Returns the manifest details: bits, group_size, quantizer (``"gptqmodel x.y.z"``), calibration
    {file, num_samples, seq_len, seed}, seconds, size_bytes of out_dir (plus desc_act, sym, dtype, device).
    """
    import torch

    hf_folder, out_dir = Path(hf_folder), Path(out_dir)
    if bits not in SUPPORTED_BITS:
        raise UserError(f"--bits: {bits} is not supported; choose from {', '.join(map(str, SUPPORTED_BITS))}")
    if group_size != -1 and group_size < 1:
        raise UserError(f"--group-size: must be positive or -1, got {group_size}")
    if num_samples < 1 or seq_len < 2:
        raise UserError(f"gptq calibration: need num_samples >= 1 and seq_len >= 2, got {num_samples} and {seq_len}")
    from toolkit.export.hf import check_loadable, register_elastic_llama

    config = _read_config(hf_folder)
    if config.get("model_type") not in ("llama", "elastic_llama"):
        raise UserError(f"{hf_folder}: GPTQ export supports Llama folders, not model_type {config.get('model_type')!r}")
    check_loadable(hf_folder)  # an elastic folder's modeling file must be the toolkit's own: none of it runs
    _check_shapes(hf_folder, bits, group_size)
    require_gptq()
    register_elastic_llama()  # GPTQModel.load resolves the folder's class through transformers' Auto classes
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(hf_folder, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"{hf_folder}: GPTQ export needs the tokenizer files in the folder ({exc})") from None
    windows = calibration_windows(tokenizer, calibration_file, num_samples, seq_len, seed)
    calibration = [{"input_ids": w, "attention_mask": [1] * len(w)} for w in windows]

    gptqmodel = _gptqmodel()
    qcfg = gptqmodel.QuantizeConfig(bits=bits, group_size=group_size, desc_act=False, sym=True,
                                    offload_to_disk=False)
    with _quiet(), _logs_in_temp_dir():
        # bfloat16: GPTQModel's own CPU choice (fp16 and fp32 matmuls are slower on the CPU; see
        # benchmarks/README.md); the Hessians are accumulated in float32 regardless.
        model = gptqmodel.GPTQModel.load(str(hf_folder), qcfg, device="cpu", dtype=torch.bfloat16,
                                         trust_remote_code=False)
        model.quantize(calibration, batch_size=1)
        model.save(str(out_dir))
    if not (out_dir / "config.json").is_file() or not any(out_dir.glob("*.safetensors")):
        raise RuntimeError(f"gptq export: GPTQModel wrote no config/safetensors into {out_dir}")
    if (hf_folder / "subnet.json").is_file():
        shutil.copy2(hf_folder / "subnet.json", out_dir / "subnet.json")
    seconds = time.perf_counter() - t0
    size_bytes = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    return {"bits": bits, "group_size": group_size, "desc_act": False, "sym": True, "dtype": "bfloat16",
            "device": "cpu", "quantizer": f"gptqmodel {gptqmodel_version()}",
            "calibration": {"file": Path(calibration_file).name, "num_samples": num_samples, "seq_len": seq_len,
                            "seed": seed},
            "seconds": seconds, "size_bytes": size_bytes}


# -- load ----------------------------------------------------------------------------------------
def _has_optimum() -> bool:
    """transformers' GPTQ quantizer (the stock loading path) needs optimum."""
    import importlib.util

    return importlib.util.find_spec("optimum") is not None


def load_gptq(folder: Path, device: str = "cpu", dtype: str = "float32", trust_remote_code: bool = False):
    """Load a GPTQ folder for inference and return ``(model, tokenizer)``.

    ``from_pretrained(folder)`` of the folder's class with GPTQModel as the kernel backend (transformers'
    GPTQ quantizer needs ``optimum``); without optimum, ``GPTQModel.load(folder).model``. The class is the
    toolkit's own (``LlamaForCausalLM``, or the toolkit's ``ElasticLlamaForCausalLM`` after checking that
    the shipped modeling file is byte-for-byte the toolkit's copy: :mod:`toolkit.export.hf`); the folder's
    own code runs only with ``trust_remote_code=True``. gptqmodel is imported first
    (:func:`is_gptq_available`), which is what lets ``from_pretrained`` find its kernels here. ``dtype`` is
    the compute dtype (default float32: the 4-bit weights dequantize into it, so perplexity differences
    against an fp32 model are the quantization's alone).
    """
    import torch

    from toolkit.export.hf import check_loadable, load_failure, load_tokenizer, model_class, register_elastic_llama

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: not a GPTQ folder (no config.json)")
    config = check_loadable(folder, trust_remote_code)
    qc = config.get("quantization_config") or {}
    if not isinstance(qc, dict) or qc.get("quant_method") != "gptq":
        raise UserError(f"{folder}: config.json has no quantization_config with quant_method 'gptq'")
    require_gptq()
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise UserError(f"gptq load: unknown dtype {dtype!r} (float32, bfloat16, float16)")
    register_elastic_llama()  # GPTQModel.load (and transformers' GPTQ quantizer) look the class up in the Auto classes

    failure = None
    with _quiet():  # caught inside, so that _quiet does not dump GPTQModel's output tail for a bad folder
        try:
            if _has_optimum():
                model = model_class(config, trust_remote_code, folder)(folder, dtype=torch_dtype, device_map=device)
            else:
                model = _gptqmodel().GPTQModel.load(str(folder), device=device, dtype=torch_dtype,
                                                    trust_remote_code=trust_remote_code).model
        except Exception as exc:  # the folder is user input (e.g. a quantization_config that does not fit its weights)
            failure = exc
    if failure is not None:
        raise UserError(f"{folder}: cannot load the GPTQ model ({load_failure(failure)})")
    return model.eval(), load_tokenizer(folder, trust_remote_code)
