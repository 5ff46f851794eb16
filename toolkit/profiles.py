"""Device profiles: what the search optimises *for*. Schema, load/validate/save, ``extends:``, detection,
microbenchmarks, and the fingerprint that says "this profile is not the machine I am running on".

A profile is a YAML file (read with ``yaml.safe_load``, written with ``yaml.safe_dump``; schema version 1)::

    version: 1
    name: cloud-vm-2core-x86        # letters, digits, . _ - (shipped profiles: the file's stem)
    description: free text           # optional
    extends: other-profile           # optional, input only: a name or a path relative to this file
    identity:
      kind: cpu                      # cpu | gpu (a CUDA device)
      vendor: AMD
      model: AMD EPYC                # as /proc/cpuinfo (or py-cpuinfo) / torch.cuda.get_device_name reports it
      arch: x86_64                   # x86_64 | aarch64 | ...
    compute:
      cores: 2                       # physical CPU cores; for a GPU its streaming multiprocessors
      threads: 2                     # hardware threads (required for cpu, null for gpu)
      peak_flops: {float32: 5.2e+10, bfloat16: 1.1e+11}   # FLOP/s per dtype (float32 | bfloat16 | float16)
    memory:
      capacity_bytes: 25275637760    # RAM (cpu) or device memory (gpu)
      usable_bytes: 18956728320      # the budget a deployed model may use (<= capacity)
      bandwidth_bytes_per_s: 1.2e+10
    features:                        # all required; CPU ISA flags are false on gpu profiles
      avx2: true
      avx512: true
      amx: false
      neon: false
      bf16: true                     # native bf16 arithmetic (avx512_bf16 / amx_bf16 / Arm BF16 / sm_80+)
      fp16: false                    # native fp16 arithmetic (avx512_fp16 / Arm FP16 / any CUDA GPU)
      cuda_capability: null          # "major.minor", required for gpu
    runtime:                         # how the toolkit runs models when measuring for this device
      device: cpu                    # cpu | cuda | cuda:N (matches identity.kind)
      dtype: float32                 # must have a compute.peak_flops entry (the prefill roofline's peak)
      threads: 2                     # the engine's threads (torch intra-op, onnxruntime intra-op, llama.cpp
                                     # n_threads); null: the engine's default
      engine: torch                  # optional: torch | onnxruntime | llama.cpp (default torch), what
                                     # calibration times sub-networks in (onnxruntime, llama.cpp: cpu, float32)
      gguf_type: q8_0                # llama.cpp only (default q8_0): the GGUF type the weights are quantized to
                                     # (a name from toolkit.engines.llamacpp.GGUF_TYPES); absent for other engines
    workload:                        # optional; the deployment workload (defaults shown)
      prompt_tokens: 128
      generate_tokens: 32
      batch_size: 1                  # also the batch the runtime runs
    engines: {torch: 2.13.0+cpu, llama.cpp: 0.3.36}   # optional: engines installed when the profile was
                                     # measured (an observation, not a figure; `toolkit profile` writes it)
    provenance:                      # one entry per figure, no more, no less
      compute.peak_flops.float32:
        measured: {date: '2026-11-24T03:00:00+00:00', repeats: 15, spread: 0.03, method: '...', cpu_share: 0.98}
      memory.bandwidth_bytes_per_s:
        spec: "datasheet name and where the number is in it"

The **figures** that need provenance are ``compute.cores``, ``compute.threads`` (when set), every
``compute.peak_flops.<dtype>``, ``memory.capacity_bytes`` and ``memory.bandwidth_bytes_per_s``. A figure is
either ``measured`` (date, repeats, relative spread, method, and optionally ``cpu_share``: the CPU time the
measuring process got over what it asked for, well under 1 on a busy machine; counts read from the OS are
measured with one exact repeat) or ``spec`` (a datasheet figure, with its source named; derived figures say how).
``usable_bytes``, ``runtime`` and ``workload`` are settings, not figures; ``engines`` is an observation
(engine -> installed version, :func:`toolkit.engines.installed`), checked for known engine names only.

**Engine.** ``runtime.engine`` is where the profile's speeds are meant: calibration exports each
sub-network to the engine's format and times it there, and the predictor's bytes per weight follow the
engine (``gguf_type`` for llama.cpp). onnxruntime and llama.cpp run on the CPU in float32 arithmetic
here (onnxruntime's CPU provider, llama-cpp-python's CPU build), and llama.cpp one sequence at a time
(``workload.batch_size`` 1). The engine is a setting of the toolkit, not of the machine: it does not
enter the fingerprint.

**extends.** A profile may ``extends:`` another (searched in the including file's folder, then
:func:`profile_search_path`). Mappings merge key by key, anything else is replaced; the child must set
its own ``name``, and a child that overrides a figure must also give that figure's provenance (an
inherited source would otherwise vouch for a number it never stated). Cycles and unknown parents are
errors. Every error is a :class:`toolkit.errors.ConfigError` naming the file the offending value came
from and the dotted field.

YAML 1.1 reads ``1e11`` (no dot, unsigned exponent) as a string; numeric fields therefore accept numeric
strings, and the toolkit writes ``1.0e+11``. Duplicate keys are rejected (PyYAML silently keeps the last).

**Fingerprint.** ``profile.fingerprint`` is derived, never stored: for a cpu profile a hash of the CPU
model, the hardware thread count, the memory capacity rounded up to 2 GiB (so a 24 GiB VM reporting
23.5 GiB and a datasheet "24 GB" agree) and the speed-relevant ISA features (avx2, avx512, amx, neon,
bf16: cloud VMs with the same model string come with and without AVX-512/bf16); for a gpu profile a hash of the device name and CUDA capability.
:func:`fingerprint_current_machine` computes the same from the running machine, and tools that measure
call :func:`warn_if_foreign` before timing anything.

**Measuring.** :func:`detect` reads the machine (psutil, /proc/cpuinfo, py-cpuinfo where /proc has no
answer, torch for CUDA); :func:`profile_machine` adds matmul FLOP/s (float32, plus bfloat16/float16
where the hardware has them) and copy bandwidth, all timed by :func:`toolkit.measure.time_callable`.

Shipped profiles are package data, ``toolkit/profiles_data/*.yaml``, found with :mod:`importlib.resources`
wherever the package is installed (a wheel, an editable checkout; ``profiles/`` at the top of a checkout
is a link to that folder); ``$TOOLKIT_PROFILES_DIR`` (``os.pathsep``-separated) is searched first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import math
import os
import platform
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Union

import yaml

from toolkit.engines import ENGINES as _ENGINE_REGISTRY
from toolkit import schema
from toolkit.errors import ConfigError, UserError
from toolkit.schema import Invalid, Record, checked, show

__all__ = [
    "SCHEMA_VERSION", "DTYPES", "KINDS", "ENGINES", "DEFAULT_GGUF_TYPE", "PROFILES_DIR_ENV",
    "Identity", "Compute", "Memory", "Features", "Runtime", "Workload", "Measured", "Spec", "DeviceProfile",
    "ForeignProfileWarning", "MachineInfo",
    "shipped_profiles_dir", "profile_search_path", "list_profiles", "find_profile", "load_profile", "save_profile",
    "fingerprint_current_machine", "describe_current_machine", "warn_if_foreign",
    "check_device", "detect", "measure_matmul_flops", "measure_copy_bandwidth", "profile_machine",
]

SCHEMA_VERSION = 1
KINDS = ("cpu", "gpu")
DTYPES = ("float32", "bfloat16", "float16")
ENGINES = tuple(_ENGINE_REGISTRY)  # torch, onnxruntime, llama.cpp (toolkit.engines: the one registry)
PROFILES_DIR_ENV = "TOOLKIT_PROFILES_DIR"
YAML_SUFFIXES = (".yaml", ".yml")
# Default memory budget as a fraction of capacity: the OS and other processes share a CPU machine's RAM
# (and an integrated GPU's); a discrete GPU's memory is the model's but for the CUDA context.
USABLE_FRACTION = {"cpu": 0.75, "gpu": 0.90}
GIB = 1 << 30


# ----------------------------------------------------------------------------------------------------
# Field checks: each returns the normalised value or raises Invalid. Shared by the constructors (profiles
# built in Python validate themselves) and the YAML loader (which just hands the raw values over).


def _cuda_capability(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, float):  # an unquoted 8.9 in YAML
        v = repr(v)
    if not isinstance(v, str) or not re.fullmatch(r"\d+\.\d+", v):
        raise Invalid(f"expected \"major.minor\" (e.g. \"8.9\") or null, got {show(v)}")
    return v


def _device(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", v):
        raise Invalid(f"expected cpu, cuda or cuda:N, got {show(v)}")
    return v


def _peak_flops(v: Any) -> dict[str, float]:
    if not isinstance(v, dict):
        raise Invalid(f"expected a mapping dtype -> FLOP/s, got {show(v)}")
    if not v:
        raise Invalid(f"needs at least one dtype ({', '.join(DTYPES)})")
    out = {}
    for k in v:
        if k not in DTYPES:
            raise Invalid(f"unknown dtype (known: {', '.join(DTYPES)})", subfield=str(k))
    for k in DTYPES:  # canonical order: the saved file does not depend on the input's order
        if k in v:
            try:
                out[k] = schema.positive(v[k])
            except Invalid as bad:
                raise Invalid(bad.problem, subfield=k) from None
    return out


@dataclass(frozen=True)
class Identity(Record):
    _SECTION: ClassVar[str] = "identity"
    kind: str = checked(schema.choice(*KINDS))
    vendor: str = checked(schema.text)
    model: str = checked(schema.text)
    arch: str = checked(schema.text)


@dataclass(frozen=True)
class Compute(Record):
    _SECTION: ClassVar[str] = "compute"
    cores: int = checked(schema.count)
    threads: int | None = checked(schema.optional(schema.count))
    peak_flops: dict = checked(_peak_flops)


@dataclass(frozen=True)
class Memory(Record):
    _SECTION: ClassVar[str] = "memory"
    capacity_bytes: int = checked(schema.positive_bytes)
    usable_bytes: int = checked(schema.positive_bytes)
    bandwidth_bytes_per_s: float = checked(schema.positive)


@dataclass(frozen=True)
class Features(Record):
    _SECTION: ClassVar[str] = "features"
    avx2: bool = checked(schema.flag)
    avx512: bool = checked(schema.flag)
    amx: bool = checked(schema.flag)
    neon: bool = checked(schema.flag)
    bf16: bool = checked(schema.flag)
    fp16: bool = checked(schema.flag)
    cuda_capability: str | None = checked(_cuda_capability, None)


def _gguf_type(v: Any) -> str:
    from toolkit.engines.llamacpp import GGUF_TYPES  # numpy and ctypes only; llama_cpp is not imported

    if not isinstance(v, str) or v.lower() not in GGUF_TYPES:
        raise Invalid(f"expected a llama.cpp GGUF type ({', '.join(GGUF_TYPES)}), got {show(v)}")
    return v.lower()


def _engines_record(v: Any) -> dict[str, str]:
    if not isinstance(v, dict):
        raise Invalid(f"expected a mapping engine -> installed version, got {show(v)}")
    out = {}
    for k, ver in v.items():
        if k not in ENGINES:
            raise Invalid(f"unknown engine (known: {', '.join(ENGINES)})", subfield=str(k))
        if isinstance(ver, (int, float)) and not isinstance(ver, bool):  # an unquoted 1.32 in YAML
            ver = repr(ver)
        if not isinstance(ver, str) or not ver.strip():
            raise Invalid(f"expected the installed version as a string, got {show(ver)}", subfield=str(k))
        out[k] = ver.strip()
    return {k: out[k] for k in ENGINES if k in out}  # canonical order


DEFAULT_GGUF_TYPE = "q8_0"


@dataclass(frozen=True)
class Runtime(Record):
    _SECTION: ClassVar[str] = "runtime"
    device: str = checked(_device)
    dtype: str = checked(schema.choice(*DTYPES))
    threads: int | None = checked(schema.optional(schema.count), None)
    engine: str = checked(schema.choice(*ENGINES), "torch")
    gguf_type: str | None = checked(schema.optional(_gguf_type), None)

    def __post_init__(self):
        super().__post_init__()
        if self.engine == "llama.cpp":
            if self.gguf_type is None:
                object.__setattr__(self, "gguf_type", DEFAULT_GGUF_TYPE)
        elif self.gguf_type is not None:
            raise ConfigError("runtime.gguf_type", f"only meaningful with runtime.engine llama.cpp (this one is "
                              f"{self.engine}); remove it, or set it to null over an inherited one")
        if self.engine != "torch":
            if self.device != "cpu":
                raise ConfigError("runtime.engine", f"{self.engine} runs on the cpu here, got runtime.device "
                                  f"{self.device!r}; use engine torch for a CUDA device")
            if self.dtype != "float32":
                what = "its weights' type is runtime.gguf_type" if self.engine == "llama.cpp" else "the ONNX export is fp32"
                raise ConfigError("runtime.dtype", f"{self.engine} computes in float32 ({what}), got {self.dtype}")

    def to_dict(self) -> dict:
        d = super().to_dict()
        if d["gguf_type"] is None:
            del d["gguf_type"]
        return d


@dataclass(frozen=True)
class Workload(Record):
    """The deployment workload: ``batch_size`` sequences of ``prompt_tokens``, then ``generate_tokens`` each."""

    _SECTION: ClassVar[str] = "workload"
    prompt_tokens: int = checked(schema.count, 128)
    generate_tokens: int = checked(schema.count, 32)
    batch_size: int = checked(schema.count, 1)


@dataclass(frozen=True)
class Measured(Record):
    """A figure measured on the machine: median of ``repeats`` samples with relative ``spread``."""

    date: str = checked(schema.date)
    repeats: int = checked(schema.count)
    spread: float = checked(schema.nonnegative)
    method: str = checked(schema.text)
    # CPU time the measuring process got / (wall time x threads asked for); None when not applicable.
    cpu_share: float | None = checked(schema.optional(schema.nonnegative), None)

    def to_dict(self) -> dict:
        d = super().to_dict()
        if d["cpu_share"] is None:
            del d["cpu_share"]
        return d


@dataclass(frozen=True)
class Spec(Record):
    """A datasheet figure; ``source`` names the document (and, for a derived figure, the derivation)."""

    source: str = checked(schema.text)


Provenance = Union[Measured, Spec]
_PROVENANCE_KINDS = {"measured": Measured, "spec": Spec}


def _provenance_from(v: Any, path: str) -> Provenance:
    if not isinstance(v, dict) or len(v) != 1 or next(iter(v)) not in _PROVENANCE_KINDS:
        raise ConfigError(path, f"expected {{measured: {{date, repeats, spread, method}}}} or {{spec: source}}, got {show(v)}")
    (kind, body), = v.items()
    if kind == "spec":
        if not isinstance(body, str):
            raise ConfigError(f"{path}.spec", f"expected the datasheet source as a string, got {show(body)}")
        try:
            return Spec(body)
        except ConfigError as exc:
            raise ConfigError(f"{path}.spec", exc.problem) from None
    try:
        return Measured.from_mapping(body, f"{path}.measured")
    except ConfigError as exc:
        if exc.field.startswith(path):
            raise
        raise ConfigError(f"{path}.measured.{exc.field}", exc.problem) from None


def _provenance_to(p: Provenance) -> dict:
    return {"spec": p.source} if isinstance(p, Spec) else {"measured": p.to_dict()}


def _mem_class_gib(capacity_bytes: int) -> int:
    """Capacity rounded up to 2 GiB: what the OS reports (a little under nominal) and the datasheet agree."""
    return 2 * math.ceil(capacity_bytes / (2 * GIB))


# The instruction-set features that change a CPU's speed class: the same "AMD EPYC" model string is
# served by hosts with and without AVX-512 / native bf16, and a bf16 matmul is ~10x slower emulated.
_FINGERPRINT_ISA = ("avx2", "avx512", "amx", "neon", "bf16")


def _fingerprint(kind: str, model: str, threads: int | None, capacity_bytes: int | None, features: "Features") -> str:
    from toolkit.fileio import sha256_json

    model = " ".join(str(model).split())
    if kind == "cpu":
        ident = {"kind": "cpu", "model": model, "threads": threads, "memory_gib": _mem_class_gib(capacity_bytes or 0),
                 "isa": [f for f in _FINGERPRINT_ISA if getattr(features, f)]}
    else:
        ident = {"kind": "gpu", "model": model, "cuda_capability": features.cuda_capability}
    return f"{kind}-{sha256_json(ident)[:16]}"


_SECTIONS = {"identity": Identity, "compute": Compute, "memory": Memory, "features": Features,
             "runtime": Runtime, "workload": Workload}
_TOP = ("version", "name", "description", *_SECTIONS, "engines", "provenance")


@dataclass(frozen=True)
class DeviceProfile:
    """A validated device profile (see the module docstring for the schema)."""

    name: str
    identity: Identity
    compute: Compute
    memory: Memory
    features: Features
    runtime: Runtime
    provenance: Mapping[str, Provenance]
    workload: Workload = field(default_factory=Workload)
    description: str = ""
    engines: Mapping[str, str] = field(default_factory=dict)  # observed: engine -> installed version
    version: int = SCHEMA_VERSION

    def __post_init__(self):
        if isinstance(self.version, bool) or self.version != SCHEMA_VERSION:
            raise ConfigError("version", f"unsupported schema version {self.version!r} (this toolkit reads {SCHEMA_VERSION})")
        for fname, check in (("name", schema.name), ("description", schema.free_text), ("engines", _engines_record)):
            try:
                object.__setattr__(self, fname, check(getattr(self, fname)))
            except Invalid as bad:
                raise ConfigError(f"{fname}.{bad.subfield}" if bad.subfield else fname, bad.problem) from None
        for sec, cls in _SECTIONS.items():
            if not isinstance(getattr(self, sec), cls):
                raise ConfigError(sec, f"expected a {cls.__name__}, got {show(getattr(self, sec))}")
        kind, c, m, feat, rt = self.identity.kind, self.compute, self.memory, self.features, self.runtime
        if kind == "cpu":
            if c.threads is None:
                raise ConfigError("compute.threads", "required for a cpu profile (hardware threads)")
            if c.threads < c.cores:
                raise ConfigError("compute.threads", f"{c.threads} is fewer than compute.cores {c.cores}")
            if feat.cuda_capability is not None:
                raise ConfigError("features.cuda_capability", "must be null for a cpu profile")
            if rt.device != "cpu":
                raise ConfigError("runtime.device", f"a cpu profile runs on 'cpu', got {rt.device!r}")
            if rt.threads is not None and rt.threads > c.threads:
                raise ConfigError("runtime.threads", f"{rt.threads} exceeds the {c.threads} hardware threads (compute.threads)")
        else:
            if feat.cuda_capability is None:
                raise ConfigError("features.cuda_capability", "required for a gpu profile")
            if not rt.device.startswith("cuda"):
                raise ConfigError("runtime.device", f"a gpu profile runs on 'cuda' or 'cuda:N', got {rt.device!r}")
        if m.usable_bytes > m.capacity_bytes:
            raise ConfigError("memory.usable_bytes", f"{m.usable_bytes} exceeds memory.capacity_bytes {m.capacity_bytes}")
        if rt.dtype not in c.peak_flops:
            raise ConfigError("runtime.dtype", f"{rt.dtype} has no compute.peak_flops entry (have: {', '.join(c.peak_flops)})")
        if rt.engine == "llama.cpp" and self.workload.batch_size != 1:
            raise ConfigError("workload.batch_size", f"runtime.engine llama.cpp runs one sequence (llama-cpp-python), "
                              f"got batch_size {self.workload.batch_size}")
        if not isinstance(self.provenance, Mapping):
            raise ConfigError("provenance", f"expected a mapping figure -> provenance, got {show(self.provenance)}")
        figures = self.figure_paths()
        for key, p in self.provenance.items():
            if key not in figures:
                raise ConfigError(f"provenance.{key}", f"not a figure of this profile (figures: {', '.join(figures)})")
            if not isinstance(p, (Measured, Spec)):
                raise ConfigError(f"provenance.{key}", f"expected Measured or Spec, got {show(p)}")
        for key in figures:
            if key not in self.provenance:
                raise ConfigError(f"provenance.{key}", "missing: every figure says whether it was measured or comes from a datasheet")
        # Canonical order (figure order), detached from the caller's dict.
        object.__setattr__(self, "provenance", {k: self.provenance[k] for k in figures})

    # -- derived ---------------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self.identity.kind

    def figure_paths(self) -> tuple[str, ...]:
        """The dotted paths of every figure that must carry provenance, in canonical order."""
        paths = ["compute.cores"]
        if self.compute.threads is not None:
            paths.append("compute.threads")
        paths += [f"compute.peak_flops.{dt}" for dt in self.compute.peak_flops]
        paths += ["memory.capacity_bytes", "memory.bandwidth_bytes_per_s"]
        return tuple(paths)

    @property
    def fingerprint(self) -> str:
        """Identity of the machine this profile describes (see the module docstring)."""
        return _fingerprint(self.kind, self.identity.model, self.compute.threads, self.memory.capacity_bytes,
                            self.features)

    def describe_machine(self) -> str:
        if self.kind == "cpu":
            return (f"{self.identity.model}, {self.compute.threads} threads, "
                    f"{_mem_class_gib(self.memory.capacity_bytes)} GiB")
        return f"{self.identity.model} (CUDA {self.features.cuda_capability})"

    def matches_current_machine(self) -> bool:
        """True when this profile describes the machine (and, for gpu, the CUDA device) we run on."""
        return fingerprint_current_machine(self.kind, self.runtime.device) == self.fingerprint

    @property
    def source_kind(self) -> str:
        """'measured', 'spec' or 'measured+spec', from the figures' provenance."""
        kinds = {"measured" if isinstance(p, Measured) else "spec" for p in self.provenance.values()}
        return "+".join(k for k in ("measured", "spec") if k in kinds)

    # -- (de)serialisation -----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"version": self.version, "name": self.name}
        if self.description:
            d["description"] = self.description
        for sec in _SECTIONS:
            d[sec] = getattr(self, sec).to_dict()
        if self.engines:
            d["engines"] = dict(self.engines)
        d["provenance"] = {k: _provenance_to(p) for k, p in self.provenance.items()}
        return d

    @classmethod
    def from_dict(cls, d: Any, file: str | os.PathLike | None = None) -> "DeviceProfile":
        """Validate a resolved mapping (no ``extends:``; :func:`load_profile` resolves those)."""
        file = str(file) if file is not None else None
        try:
            return cls._from_dict(d)
        except ConfigError as exc:
            raise exc.with_file(file) from None

    @classmethod
    def _from_dict(cls, d: Any) -> "DeviceProfile":
        if not isinstance(d, dict):
            raise ConfigError("profile", f"expected a mapping of fields at the top level, got {show(d)}")
        for k in d:
            if k == "extends":
                raise ConfigError("extends", "unresolved here: load the file with load_profile()")
            if k not in _TOP:
                raise ConfigError(str(k), f"unknown field (known: {', '.join(_TOP)})")
        for k in ("version", "name", "identity", "compute", "memory", "features", "runtime", "provenance"):
            if k not in d:
                raise ConfigError(k, "required field is missing")
        sections = {sec: cls_.from_mapping(d[sec], sec) for sec, cls_ in _SECTIONS.items() if sec in d}
        prov = d["provenance"]
        if not isinstance(prov, dict):
            raise ConfigError("provenance", f"expected a mapping figure -> provenance, got {show(prov)}")
        provenance = {str(k): _provenance_from(v, f"provenance.{k}") for k, v in prov.items()}
        return cls(version=d["version"], name=d["name"], description=d.get("description", ""),
                   engines={} if d.get("engines") is None else d["engines"], provenance=provenance, **sections)

    def to_yaml(self) -> str:
        header = (f"# Device profile '{self.name}' (toolkit.profiles schema {self.version}).\n"
                  f"# fingerprint: {self.fingerprint} ({self.describe_machine()}); derived, not read back.\n")
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False, width=10_000,
                                       allow_unicode=True)

    def save(self, path: str | os.PathLike) -> Path:
        from toolkit.fileio import atomic_write_text

        path = Path(path)
        atomic_write_text(path, self.to_yaml())
        return path


# ----------------------------------------------------------------------------------------------------
# Files: search path, YAML reading, extends resolution.


def shipped_profiles_dir() -> Path:
    """The folder of the profiles shipped inside the package (``toolkit/profiles_data``)."""
    from importlib.resources import files

    # A file-system install (wheel or editable) gives a real folder; a zipped install is not supported.
    return Path(str(files("toolkit").joinpath("profiles_data")))


def profile_search_path() -> list[Path]:
    """Folders searched for profiles by name, in order: ``$TOOLKIT_PROFILES_DIR`` entries, then the
    profiles shipped with the package (:func:`shipped_profiles_dir`)."""
    dirs = [Path(p) for p in os.environ.get(PROFILES_DIR_ENV, "").split(os.pathsep) if p]
    dirs.append(shipped_profiles_dir())
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def list_profiles() -> dict[str, Path]:
    """Profile name (file stem) -> file, over the search path; earlier folders win."""
    found: dict[str, Path] = {}
    for d in profile_search_path():
        for p in sorted(d.iterdir()):
            if p.suffix in YAML_SUFFIXES and p.is_file():
                found.setdefault(p.stem, p)
    return found


def _looks_like_path(ref: str) -> bool:
    return ref.endswith(YAML_SUFFIXES) or "/" in ref or os.sep in ref


def find_profile(name_or_path: str | os.PathLike) -> Path:
    """The file for a profile name (searched on :func:`profile_search_path`) or an explicit path."""
    ref = str(name_or_path)
    if _looks_like_path(ref) or Path(ref).is_file():
        p = Path(ref)
        if not p.exists():
            raise UserError(f"{ref}: no such profile file")
        if not p.is_file():
            raise UserError(f"{ref}: not a file")
        return p
    for d in profile_search_path():
        for suffix in YAML_SUFFIXES:
            if (d / f"{ref}{suffix}").is_file():
                return d / f"{ref}{suffix}"
    where = ", ".join(str(d) for d in profile_search_path()) or f"nowhere (set ${PROFILES_DIR_ENV})"
    raise UserError(f"{ref}: no such profile (looked in {where}); `toolkit profile ls` lists them")


def _read_yaml(path: Path) -> dict:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{file}: no such profile file") from None
    except UnicodeDecodeError:
        raise ConfigError("profile", "not UTF-8 text", file) from None
    except OSError as exc:
        raise UserError(f"{file}: cannot read ({exc.strerror or exc})") from None
    data = schema.parse_yaml(text, file, what="profile")
    if data is None:
        raise ConfigError("profile", "empty file (expected a mapping of profile fields)", file)
    if not isinstance(data, dict):
        raise ConfigError("profile", f"expected a mapping of fields at the top level, got {show(data)}", file)
    return data


def _leaves(v: Any, path: str):
    if isinstance(v, dict) and v:
        for k, sub in v.items():
            yield from _leaves(sub, f"{path}.{k}" if path else str(k))
    else:
        yield path


def _merge(parent: dict, child: dict, origins: dict[str, str], child_file: str, prefix: str = "") -> tuple[dict, dict]:
    """Deep-merge ``child`` over ``parent`` (mappings key by key, anything else and each provenance entry
    replaced), tracking which file each leaf came from."""
    out = dict(parent)
    for k, v in child.items():
        path = f"{prefix}{k}"
        # A figure's provenance is one record: the child's replaces the parent's (never a measured+spec mix).
        if isinstance(v, dict) and isinstance(out.get(k), dict) and prefix != "provenance.":
            out[k], origins = _merge(out[k], v, origins, child_file, path + ".")
        else:
            out[k] = v
            origins = {p: f for p, f in origins.items() if not (p == path or p.startswith(path + "."))}
            origins.update({leaf: child_file for leaf in _leaves(v, path)})
    return out, origins


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _overridden_figures(raw: dict) -> list[str]:
    """Figure paths a (child) file sets itself."""
    out = []
    for sec, key in (("compute", "cores"), ("compute", "threads"), ("memory", "capacity_bytes"),
                     ("memory", "bandwidth_bytes_per_s")):
        if _get(raw, sec, key) is not None:
            out.append(f"{sec}.{key}")
    peaks = _get(raw, "compute", "peak_flops")
    if isinstance(peaks, dict):
        out += [f"compute.peak_flops.{dt}" for dt in peaks]
    return out


def _find_extends(ref: str, base_dir: Path) -> Path | None:
    if _looks_like_path(ref):
        p = Path(ref) if Path(ref).is_absolute() else base_dir / ref
        return p if p.is_file() else None
    for d in [base_dir, *profile_search_path()]:
        for suffix in YAML_SUFFIXES:
            if (d / f"{ref}{suffix}").is_file():
                return d / f"{ref}{suffix}"
    return None


def _resolve(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """The merged mapping of ``path`` and its ``extends:`` ancestors, and each leaf's file of origin."""
    file = str(path)
    raw = _read_yaml(path)
    ref = raw.pop("extends", None)
    if ref is None:
        return raw, {leaf: file for leaf in _leaves(raw, "")}
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError("extends", f"expected a profile name or file, got {show(ref)}", file)
    if "name" not in raw:
        raise ConfigError("name", "required: a profile that extends another must name itself", file)
    parent_path = _find_extends(ref.strip(), path.parent)
    if parent_path is None:
        where = ", ".join(str(d) for d in [path.parent, *profile_search_path()])
        raise ConfigError("extends", f"unknown profile {ref!r} (looked in {where})", file)
    here = path.resolve()
    seen = [p.resolve() for p in chain] + [here]
    if parent_path.resolve() in seen:
        cycle = [p.name for p in (*chain, path, parent_path)]
        raise ConfigError("extends", f"cycle: {' -> '.join(cycle)}", file)
    parent, origins = _resolve(parent_path, (*chain, path))
    prov = raw.get("provenance") if isinstance(raw.get("provenance"), dict) else {}
    for fig in _overridden_figures(raw):
        if fig not in prov:
            raise ConfigError(f"provenance.{fig}", "this file overrides an inherited figure, so it must give its provenance", file)
    return _merge(parent, raw, origins, file)


def _origin(fld: str, origins: dict[str, str], default: str) -> str:
    if fld in origins:
        return origins[fld]
    below = {f for p, f in origins.items() if p.startswith(fld + ".")}
    if len(below) == 1:
        return below.pop()
    parts = fld.split(".")
    while len(parts) > 1:
        parts.pop()
        if ".".join(parts) in origins:
            return origins[".".join(parts)]
    return default


def load_profile(name_or_path: str | os.PathLike) -> DeviceProfile:
    """Load, resolve ``extends:`` and validate a profile given by name (see :func:`profile_search_path`)
    or by path. Raises :class:`ConfigError` (file + field) or :class:`UserError` (no such file/profile)."""
    path = find_profile(name_or_path)
    merged, origins = _resolve(path)
    try:
        return DeviceProfile._from_dict(merged)
    except ConfigError as exc:
        raise exc.with_file(_origin(exc.field, origins, str(path))) from None




def profile_for_this_machine(engine: str | None = None) -> DeviceProfile:
    """The first profile on the search path (by name) that describes this machine and, if given, runs
    ``engine``; a one-line UserError when none does."""
    for name in sorted(list_profiles()):
        p = load_profile(name)
        if p.matches_current_machine() and (engine is None or p.runtime.engine == engine):
            return p
    what = f" with engine {engine}" if engine else ""
    raise UserError(f"--profile: no profile{what} describes this machine ({describe_current_machine()}); "
                    "measure one with toolkit profile, or give one")

def save_profile(profile: DeviceProfile, path: str | os.PathLike) -> Path:
    """Write ``profile`` (resolved: no ``extends:``) as YAML, atomically."""
    return profile.save(path)


# ----------------------------------------------------------------------------------------------------
# The running machine: detection and fingerprint.


@functools.lru_cache(maxsize=1)
def _proc_cpuinfo() -> dict[str, str]:
    """First occurrence of each key in /proc/cpuinfo (Linux), {} elsewhere."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if ":" in line:
                    k, v = line.split(":", 1)
                    out.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return out


@functools.lru_cache(maxsize=1)
def _py_cpuinfo() -> dict:
    """py-cpuinfo's answer (the optional ``profile`` extra), {} when it is not installed or fails."""
    try:
        import cpuinfo  # type: ignore
    except ImportError:
        return {}
    try:
        return cpuinfo.get_cpu_info() or {}
    except Exception:  # pragma: no cover - py-cpuinfo probes many platform tools
        return {}


_ARM_IMPLEMENTERS = {"0x41": "Arm", "0x61": "Apple", "0x51": "Qualcomm", "0x4e": "NVIDIA", "0x48": "HiSilicon"}


def _cpu_model() -> str:
    info = _proc_cpuinfo()
    model = info.get("model name") or info.get("Model") or info.get("Hardware")
    if not model:
        model = _py_cpuinfo().get("brand_raw") or platform.processor() or platform.machine() or "unknown CPU"
    return " ".join(model.split())


def _cpu_vendor() -> str:
    info = _proc_cpuinfo()
    vendor = info.get("vendor_id")
    if vendor:
        return {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}.get(vendor, vendor)
    if info.get("CPU implementer"):
        return _ARM_IMPLEMENTERS.get(info["CPU implementer"].lower(), info["CPU implementer"])
    vendor = _py_cpuinfo().get("vendor_id_raw") or ""
    if vendor:
        return {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}.get(vendor, vendor)
    return "Apple" if _cpu_model().startswith("Apple") else "unknown"


def _cpu_flags() -> set[str]:
    info = _proc_cpuinfo()
    flags = info.get("flags") or info.get("Features")
    if flags:
        return set(flags.split())
    return set(_py_cpuinfo().get("flags") or [])


def _cpu_counts() -> tuple[int, int]:
    """(physical cores, hardware threads) this process may use (CPU affinity respected on Linux)."""
    import psutil

    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        logical = min(logical, len(os.sched_getaffinity(0)))
    physical = psutil.cpu_count(logical=False) or logical
    return min(physical, logical), logical


def _cpu_features(flags: set[str], model: str) -> "Features":
    apple = model.startswith("Apple")
    return Features(
        avx2="avx2" in flags,
        avx512="avx512f" in flags,
        amx=bool({"amx_tile", "amx_bf16", "amx_int8"} & flags),
        neon=bool({"asimd", "neon"} & flags) or apple,
        bf16=bool({"avx512_bf16", "amx_bf16", "bf16", "avx_vnni_bf16"} & flags) or (apple and "M1" not in model),
        fp16=bool({"avx512_fp16", "asimdhp", "fphp"} & flags) or apple,
        cuda_capability=None,
    )


@dataclass(frozen=True)
class MachineInfo:
    """What :func:`detect` found: everything of a profile but the measured rates."""

    kind: str
    device: str
    vendor: str
    model: str
    arch: str
    cores: int
    threads: int | None
    capacity_bytes: int
    features: Features

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self.kind, self.model, self.threads, self.capacity_bytes, self.features)


def _cuda_index(device: str) -> int:
    import torch

    dev = torch.device(device)
    return dev.index if dev.index is not None else torch.cuda.current_device()


def _resolve_device(device: str) -> str:
    if device == "auto":
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency
            return "cpu"
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return _device(device)
    except Invalid as bad:
        raise UserError(f"--device: {bad.problem}") from None


def check_device(device: str) -> str:
    """``device`` (cpu | cuda | cuda:N | auto) checked for form and for being present on this machine;
    a one-line :class:`UserError` otherwise. Returns the resolved name."""
    device = _resolve_device(device)
    if device == "cpu":
        return device
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    index = torch.device(device).index
    if index is not None and index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def detect(device: str = "auto") -> MachineInfo:
    """Describe the machine (``device='cpu'``) or one CUDA device (``'cuda'``, ``'cuda:N'``); ``'auto'``
    picks CUDA when available. Reads, never measures."""
    import psutil

    device = _resolve_device(device)
    if device == "cpu":
        model = _cpu_model()
        cores, threads = _cpu_counts()
        return MachineInfo(kind="cpu", device="cpu", vendor=_cpu_vendor(), model=model, arch=platform.machine(),
                           cores=cores, threads=threads, capacity_bytes=int(psutil.virtual_memory().total),
                           features=_cpu_features(_cpu_flags(), model))
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    idx = _cuda_index(device)
    props = torch.cuda.get_device_properties(idx)
    cc = f"{props.major}.{props.minor}"
    hip = bool(getattr(torch.version, "hip", None))
    feats = Features(avx2=False, avx512=False, amx=False, neon=False, bf16=props.major >= 8, fp16=True, cuda_capability=cc)
    return MachineInfo(kind="gpu", device=f"cuda:{idx}" if device != "cuda" else "cuda", vendor="AMD" if hip else "NVIDIA",
                       model=" ".join(props.name.split()), arch=f"sm_{props.major}{props.minor}",
                       cores=int(props.multi_processor_count), threads=None, capacity_bytes=int(props.total_memory),
                       features=feats)


def fingerprint_current_machine(kind: str = "cpu", device: str | None = None) -> str:
    """The fingerprint a profile of this machine would have: of its CPU (``kind='cpu'``) or of the CUDA
    device ``device`` (``kind='gpu'``; ``'gpu-unavailable'`` without CUDA). Cheap: reads, never measures."""
    if kind == "cpu":
        return detect("cpu").fingerprint
    if kind != "gpu":
        raise ValueError(f"kind must be cpu or gpu, got {kind!r}")
    import torch

    if not torch.cuda.is_available():
        return "gpu-unavailable"
    return detect(device if device and device.startswith("cuda") else "cuda").fingerprint


def describe_current_machine(kind: str = "cpu", device: str | None = None) -> str:
    if kind == "cpu":
        m = detect("cpu")
        return f"{m.model}, {m.threads} threads, {_mem_class_gib(m.capacity_bytes)} GiB"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    m = detect(device if device and device.startswith("cuda") else "cuda")
    return f"{m.model} (CUDA {m.features.cuda_capability})"


class ForeignProfileWarning(UserWarning):
    """Timing on a machine that the device profile does not describe."""


def warn_if_foreign(profile: DeviceProfile) -> bool:
    """Warn (on stderr, and through :mod:`warnings` as :class:`ForeignProfileWarning`) when ``profile``
    does not describe the machine we run on. Returns True when it warned. Call before measuring."""
    if profile.matches_current_machine():
        return False
    here = describe_current_machine(profile.kind, profile.runtime.device)
    msg = (f"profile '{profile.name}' describes {profile.describe_machine()} (fingerprint {profile.fingerprint}), "
           f"not this machine ({here}, fingerprint {fingerprint_current_machine(profile.kind, profile.runtime.device)}): "
           "timings measured here will not describe that device; profile this one with `toolkit profile --out FILE`")
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[bold yellow]warning:[/] {escape(msg)}")
    # The stderr line above is the visible form. The warnings-module form is for programs (pytest.warns,
    # warnings.simplefilter("error", ForeignProfileWarning)); by default it is not printed a second time.
    # The filter is appended, so any filter a program or user set before it wins.
    warnings.filterwarnings("ignore", category=ForeignProfileWarning, append=True)
    warnings.warn(msg, ForeignProfileWarning, stacklevel=2)
    return True


# ----------------------------------------------------------------------------------------------------
# Microbenchmarks (through the one timing primitive) and the measured profile.


@contextlib.contextmanager
def _true_fp32(device):
    """On CUDA, switch TF32 off for float32 matmuls (PyTorch's default) so the figure is true FP32."""
    import torch

    if torch.device(device).type != "cuda":
        yield
        return
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def _matmul_bench(device: str, dtype: str, n: int) -> tuple[Callable[[], object], float]:
    """An ``(n, n) @ (n, n)`` matmul into a preallocated output, and its FLOP per call (``2 n^3``)."""
    import torch

    dev, dt = torch.device(device), getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dev, dt)
    b = torch.randn(n, n, generator=gen).to(dev, dt)
    out = torch.empty(n, n, device=dev, dtype=dt)
    return (lambda: torch.matmul(a, b, out=out)), 2.0 * n**3


def _copy_bench(device: str, nbytes: int) -> tuple[Callable[[], object], float]:
    """A copy of a ``nbytes`` buffer into another, and its bytes moved per call (read + write, the STREAM
    convention; write-allocate traffic is not counted)."""
    import torch

    n = max(1, nbytes // 4)
    src = torch.ones(n, dtype=torch.float32, device=torch.device(device))
    dst = torch.empty_like(src)
    return (lambda: dst.copy_(src)), 2.0 * n * 4


def measure_matmul_flops(device: str = "cpu", dtype: str = "float32", n: int = 2048, *, repeats: int = 15,
                         warmup: int = 1, min_time_s: float = 0.0, max_time_s: float | None = None):
    """(FLOP/s at the median, Timing) of an ``(n, n) @ (n, n)`` matmul; true FP32 on CUDA (no TF32)."""
    import torch

    from toolkit.measure import sync_for, time_callable

    fn, flop = _matmul_bench(device, dtype, n)
    with _true_fp32(device), torch.inference_mode():
        t = time_callable(fn, warmup=warmup, repeats=repeats, min_time_s=min_time_s, sync=sync_for(device),
                          max_time_s=max_time_s)
    return t.rate(flop), t


def measure_copy_bandwidth(device: str = "cpu", nbytes: int = 512 << 20, *, repeats: int = 15, warmup: int = 1,
                           min_time_s: float = 0.0, max_time_s: float | None = None):
    """(bytes/s at the median, Timing) of copying a ``nbytes`` buffer (read + write counted). Buffers should
    be far larger than the last-level cache."""
    import torch

    from toolkit.measure import sync_for, time_callable

    fn, moved = _copy_bench(device, nbytes)
    with torch.inference_mode():
        t = time_callable(fn, warmup=warmup, repeats=repeats, min_time_s=min_time_s, sync=sync_for(device),
                          max_time_s=max_time_s)
    return t.rate(moved), t


@dataclass(frozen=True)
class _Plan:
    matmul_n: int
    copy_bytes: int
    rounds: int
    repeats: int  # per round
    warmup: int
    min_time_s: float
    max_time_s: float  # per figure and round


def _plan(kind: str, capacity_bytes: int, quick: bool) -> _Plan:
    """Sizes and repeats. CPU: a 2048^2 matmul (17 GFLOP) is long enough per call to need no batching;
    GPU: 8192^2, batched to >= 20-50 ms per sample. Copy buffers are well past any cache and <= 1/16 of
    memory. ``quick`` keeps the sizes (both modes measure the same thing) and takes one round instead of
    three: a full run's 15 samples per figure are spread over the whole run."""
    rounds = 1 if quick else 3
    if kind == "cpu":
        return _Plan(matmul_n=2048, copy_bytes=min(512 << 20, capacity_bytes // 16), rounds=rounds, repeats=5,
                     warmup=1, min_time_s=0.0, max_time_s=1.5 if quick else 4.0)
    return _Plan(matmul_n=8192, copy_bytes=min(1 << 30, capacity_bytes // 16), rounds=rounds, repeats=5,
                 warmup=2, min_time_s=0.02 if quick else 0.05, max_time_s=1.5 if quick else 4.0)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _process_cpu_s() -> float:
    """CPU seconds used by every thread of this process. ``time.process_time`` reads
    CLOCK_PROCESS_CPUTIME_ID (nanosecond resolution); ``os.times`` counts 10 ms clock ticks, which
    rounds a short --quick measurement's CPU time to zero."""
    return time.process_time()


def profile_machine(name: str = "local", device: str = "auto", quick: bool = False,
                    on_step: Callable[[str], None] | None = None, description: str | None = None) -> DeviceProfile:
    """Detect this machine (or CUDA device) and measure its FLOP/s and bandwidth into a DeviceProfile.

    Runs with the profile's runtime threads (all physical cores on a CPU). The figures are measured in
    interleaved rounds (matmul per dtype, copy, matmul per dtype, copy, ...), each round through
    :func:`toolkit.measure.time_callable`, and each figure is the median of all its samples: a load spike
    from another process hits every figure a little rather than one figure a lot. On a CPU, the share of
    the requested CPU time the process actually got is recorded (``cpu_share``; well under 1 means the
    machine was busy and the figures understate it). ``on_step(label)`` is called before each chunk.
    The engines installed here are recorded in ``engines`` (found, not imported)."""
    import torch

    from toolkit import __version__
    from toolkit.engines import installed
    from toolkit.measure import Timing, sync_for, time_callable, torch_threads

    info = detect(device)
    plan = _plan(info.kind, info.capacity_bytes, quick)
    step = on_step or (lambda label: None)
    if info.kind == "cpu":
        dtypes = ["float32"] + (["bfloat16"] if info.features.bf16 else [])
        threads = info.cores
        runtime = Runtime(device="cpu", dtype="float32", threads=threads)
    else:
        dtypes = ["float32"] + (["bfloat16"] if info.features.bf16 else []) + ["float16"]
        threads = None
        runtime = Runtime(device=info.device, dtype="bfloat16" if info.features.bf16 else "float16", threads=None)
    where = f"{info.device}" + (f", {threads} threads" if threads else "")
    tool = f"toolkit {__version__}, torch {torch.__version__}"
    sync = sync_for(info.device)

    benches: dict[str, tuple[str, Callable[[], object], float, str]] = {}
    for dt in dtypes:
        fn, work = _matmul_bench(info.device, dt, plan.matmul_n)
        benches[f"compute.peak_flops.{dt}"] = (f"matmul {dt}", fn, work, f"torch.matmul {plan.matmul_n}x{plan.matmul_n} {dt}")
    fn, work = _copy_bench(info.device, plan.copy_bytes)
    benches["memory.bandwidth_bytes_per_s"] = ("copy", fn, work, f"Tensor.copy_ of {plan.copy_bytes >> 20} MiB, read + write bytes")

    samples: dict[str, list[float]] = {k: [] for k in benches}
    number: dict[str, int] = {}
    cpu_s = {k: 0.0 for k in benches}
    wall_s = {k: 0.0 for k in benches}
    with torch_threads(threads), _true_fp32(info.device), torch.inference_mode():
        for r in range(plan.rounds):
            for key, (label, fn, _, _) in benches.items():
                step(f"{label}, round {r + 1}/{plan.rounds}")
                c0, w0 = _process_cpu_s(), time.perf_counter()
                t = time_callable(fn, warmup=plan.warmup if r == 0 else 0, repeats=plan.repeats,
                                  min_time_s=plan.min_time_s, sync=sync, max_time_s=plan.max_time_s)
                cpu_s[key] += _process_cpu_s() - c0
                wall_s[key] += time.perf_counter() - w0
                samples[key] += t.samples_s
                number[key] = t.number
    date = _now()
    prov: dict[str, Provenance] = {}
    rates: dict[str, float] = {}
    for key, (_, _, work, method) in benches.items():
        t = Timing.from_samples(samples[key], number=number[key])
        rates[key] = float(f"{t.rate(work):.4g}")
        share = round(cpu_s[key] / (wall_s[key] * threads), 3) if threads else None
        prov[key] = Measured(date=date, repeats=t.repeats, spread=round(t.spread, 4), cpu_share=share,
                             method=f"median of {method} on {where}, {plan.rounds} interleaved rounds ({tool})")

    read = Measured(date=date, repeats=1, spread=0.0, method="read")
    if info.kind == "cpu":
        prov["compute.cores"] = dataclasses.replace(read, method="psutil.cpu_count(logical=False), within the CPU affinity")
        prov["compute.threads"] = dataclasses.replace(read, method="psutil.cpu_count(logical=True), within the CPU affinity")
        prov["memory.capacity_bytes"] = dataclasses.replace(read, method="psutil.virtual_memory().total")
    else:
        prov["compute.cores"] = dataclasses.replace(read, method="torch.cuda.get_device_properties().multi_processor_count")
        prov["memory.capacity_bytes"] = dataclasses.replace(read, method="torch.cuda.get_device_properties().total_memory")
    return DeviceProfile(
        name=name,
        description=description if description is not None else
        f"Measured by `toolkit profile{' --quick' if quick else ''}` on {info.model} ({info.device}).",
        identity=Identity(kind=info.kind, vendor=info.vendor, model=info.model, arch=info.arch),
        compute=Compute(cores=info.cores, threads=info.threads,
                        peak_flops={dt: rates[f"compute.peak_flops.{dt}"] for dt in dtypes}),
        memory=Memory(capacity_bytes=info.capacity_bytes,
                      usable_bytes=int(info.capacity_bytes * USABLE_FRACTION[info.kind]),
                      bandwidth_bytes_per_s=rates["memory.bandwidth_bytes_per_s"]),
        features=info.features,
        runtime=runtime,
        workload=Workload(),
        engines=installed(),
        provenance=prov,
    )
