"""The runtimes a sub-network can be deployed in and timed in: one registry of typed entries.

A device profile names its engine (``runtime.engine``); calibration times each sub-network in it, the
predictor's features follow it, and the search's speed objective is that engine's speed. Each engine's
Python package is optional: :func:`require` checks it is importable *before* any work starts and raises a
one-line :class:`~toolkit.errors.UserError` naming the extra to install. Nothing here imports an engine.

* ``torch``: PyTorch eager (always installed).
* ``onnxruntime``: the ONNX export (:mod:`toolkit.export.onnx`) in onnxruntime's CPU provider.
* ``llama.cpp``: a GGUF export (:mod:`toolkit.export.gguf`) in llama.cpp through llama-cpp-python
  (:mod:`toolkit.engines.llamacpp`), which builds from source (cmake + a C++ compiler; minutes).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass

from toolkit.errors import UserError


@dataclass(frozen=True)
class Engine:
    name: str  # as written in a profile's runtime.engine
    module: str  # the Python module that must be importable
    distribution: str  # the pip distribution whose version is recorded
    extra: str | None  # this package's extra that installs it (None: a core dependency)
    export_format: str | None  # the export format the engine runs (None: the PyTorch model itself)


ENGINES: dict[str, Engine] = {e.name: e for e in (
    Engine("torch", "torch", "torch", None, None),
    Engine("onnxruntime", "onnxruntime", "onnxruntime", "onnx", "onnx"),
    Engine("llama.cpp", "llama_cpp", "llama-cpp-python", "llamacpp", "gguf"),
)}


def get(name: str) -> Engine:
    if name not in ENGINES:
        raise UserError(f"engine: unknown engine {name!r}; choose from {', '.join(ENGINES)}")
    return ENGINES[name]


def is_available(name: str) -> bool:
    """Whether the engine's module can be imported (found on the path; not imported)."""
    return importlib.util.find_spec(get(name).module) is not None


def version(name: str) -> str | None:
    """The installed version of the engine's distribution, or None when it is not installed."""
    if not is_available(name):
        return None
    try:
        return importlib.metadata.version(get(name).distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def installed() -> dict[str, str]:
    """engine name -> installed version, for every engine this machine can run."""
    return {n: v for n in ENGINES if (v := version(n)) is not None}


def require(name: str, what: str | None = None) -> Engine:
    """The engine, or a one-line UserError naming the extra that installs it."""
    e = get(name)
    if not is_available(name):
        hint = f"pip install 'llm-nas-toolkit[{e.extra}]'" if e.extra else f"pip install {e.distribution}"
        build = " (builds llama.cpp from source: cmake and a C++ compiler, several minutes)" if name == "llama.cpp" else ""
        raise UserError(f"{what or 'engine'}: {name} needs {e.distribution}, which is not installed; {hint}{build}")
    return e
