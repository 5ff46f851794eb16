"""Loading an HF artifact folder (the ``hf`` export, and the model inside a ``gptq`` one) with the
toolkit's own code, never with code that came inside the folder.

A heterogeneous sub-network is an ``elastic_llama`` folder: it ships ``modeling_elastic_llama.py`` (a
verbatim copy of :mod:`toolkit.models.modeling_elastic_llama`, so that stock transformers can load it with
``trust_remote_code=True``) and its ``config.json`` has an ``auto_map`` pointing there. Loading it that
way would import whatever that file says now, and the manifest's hashes do not help: whoever edits the
file can re-hash it in the manifest too. So the toolkit never does unless the user asks
(``trust_remote_code=True``, ``toolkit verify --trust-remote-code``). Instead:

* the shipped modeling file must be byte-for-byte the toolkit's own copy (anything else is refused with
  a one-line error naming the file): what the folder claims to run is then what the toolkit runs;
* the model is built with the toolkit's own :class:`~toolkit.models.modeling_elastic_llama.ElasticLlamaForCausalLM`
  (``config.json`` is read as data by its config class; ``auto_map`` is never followed);
* a plain ``llama`` folder loads with transformers' ``LlamaForCausalLM``; other model types are refused;
* tokenizers load with ``trust_remote_code=False``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from toolkit.errors import ConfigError, UserError

ELASTIC_MODELING_FILE = "modeling_elastic_llama.py"
MODEL_TYPES = ("llama", "elastic_llama")
TRUST_HINT = "pass --trust-remote-code to run the folder's own code anyway"


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of an artifact folder, as a validated JSON object."""
    from toolkit.schema import parse_json, read_text_file

    path = Path(folder) / "config.json"
    if not path.is_file():
        raise UserError(f"{folder}: no config.json (not an HF model folder)")
    cfg = parse_json(read_text_file(path), str(path))
    if not isinstance(cfg, dict):
        raise ConfigError("<root>", f"expected a JSON object, got {type(cfg).__name__}", str(path))
    if not isinstance(cfg.get("model_type"), str):
        raise ConfigError("model_type", "missing or not a string", str(path))
    return cfg


def toolkit_modeling_file() -> Path:
    from toolkit.models import modeling_elastic_llama

    return Path(modeling_elastic_llama.__file__)


def check_modeling_file(folder: Path) -> None:
    """Refuse an elastic folder whose shipped modeling file is not byte-for-byte the toolkit's own."""
    shipped = Path(folder) / ELASTIC_MODELING_FILE
    if shipped.is_file() and shipped.read_bytes() != toolkit_modeling_file().read_bytes():
        raise UserError(f"{shipped}: differs from the toolkit's own {ELASTIC_MODELING_FILE} (it would run code "
                        f"that is not the toolkit's); refused, {TRUST_HINT}")


def check_loadable(folder: Path, trust_remote_code: bool = False) -> dict[str, Any]:
    """Read ``config.json`` and check the folder can be loaded without its own code; returns the config."""
    cfg = read_config(folder)
    if trust_remote_code:
        return cfg
    if cfg["model_type"] not in MODEL_TYPES:
        raise ConfigError("model_type", f"{cfg['model_type']!r} is not a model type the toolkit loads with its own "
                          f"code ({', '.join(MODEL_TYPES)}); {TRUST_HINT}", str(Path(folder) / "config.json"))
    if cfg["model_type"] == "elastic_llama":
        check_modeling_file(folder)
    return cfg


def model_class(cfg: dict[str, Any], trust_remote_code: bool = False, folder: Path | None = None):
    """The ``from_pretrained`` that loads a folder with this config (see the module docstring).

    With ``trust_remote_code`` and an ``auto_map`` entry, the folder's own class is imported explicitly:
    transformers' Auto classes would prefer the toolkit's registered one (:func:`register_elastic_llama`).
    """
    if trust_remote_code:
        ref = (cfg.get("auto_map") or {}).get("AutoModelForCausalLM") if isinstance(cfg.get("auto_map"), dict) else None
        if ref and folder is not None:
            from transformers.dynamic_module_utils import get_class_from_dynamic_module

            return get_class_from_dynamic_module(ref, str(folder), local_files_only=True).from_pretrained
        from transformers import AutoModelForCausalLM

        return functools.partial(AutoModelForCausalLM.from_pretrained, trust_remote_code=True)
    if cfg["model_type"] == "elastic_llama":
        from toolkit.models.modeling_elastic_llama import ElasticLlamaForCausalLM

        return ElasticLlamaForCausalLM.from_pretrained
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained


@functools.cache
def register_elastic_llama() -> None:
    """Map ``elastic_llama`` to the toolkit's classes in transformers' Auto registries, for third-party
    loaders (GPTQModel) that resolve a folder's class through ``AutoConfig``/``AutoModelForCausalLM``:
    they then build the toolkit's class without ``trust_remote_code``. Registers only this one model
    type, with the toolkit's own code; nothing else changes.

    The registration is process-wide, so it is made only where GPTQModel needs it: by
    :mod:`toolkit.export.gptq` just before it hands a folder to GPTQModel or to transformers' GPTQ loading
    (``export_gptq``, ``load_gptq``). Loading an ``hf`` folder (:func:`load_hf` builds the class itself),
    an ``onnx`` folder or a tokenizer (:func:`load_tokenizer`) never registers anything."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from toolkit.models.modeling_elastic_llama import ElasticLlamaConfig, ElasticLlamaForCausalLM

    AutoConfig.register("elastic_llama", ElasticLlamaConfig, exist_ok=True)
    AutoModelForCausalLM.register(ElasticLlamaConfig, ElasticLlamaForCausalLM, exist_ok=True)


def load_failure(exc: BaseException) -> str:
    """An exception from a third-party loader, short enough for a one-line error."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def load_tokenizer(folder: Path, trust_remote_code: bool = False):
    """A folder's tokenizer, without its code unless ``trust_remote_code``. Registers nothing in transformers'
    Auto classes (an ``elastic_llama`` config.json that AutoConfig does not know is read as a plain config)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    # Reading an unregistered elastic_llama config.json as a plain one makes transformers warn that the
    # model types differ; only the tokenizer files are used here, so that warning is noise for the user.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as exc:  # the folder is user input
        raise UserError(f"{folder}: cannot load the tokenizer{'' if trust_remote_code else ' without running the folder code'} "
                        f"({load_failure(exc)})") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def load_hf(folder: Path, trust_remote_code: bool = False, dtype: str = "float32"):
    """An exported HF folder as ``(model, tokenizer)``, loaded with the toolkit's own code (module docstring)."""
    import torch

    folder = Path(folder)
    cfg = check_loadable(folder, trust_remote_code)
    load = model_class(cfg, trust_remote_code, folder)
    try:
        model = load(folder, dtype=getattr(torch, dtype), local_files_only=True)
    except Exception as exc:  # the folder is user input: a config that does not match its weights, say
        raise UserError(f"{folder}: cannot load the model ({load_failure(exc)})") from None
    return model.eval(), load_tokenizer(folder, trust_remote_code)
