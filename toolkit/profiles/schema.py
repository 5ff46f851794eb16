"""The device profile record: :class:`DeviceProfile` and its sections, each checking itself on construction.

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

YAML 1.1 reads ``1e11`` (no dot, unsigned exponent) as a string; numeric fields therefore accept numeric
strings, and the toolkit writes ``1.0e+11``.

:mod:`toolkit.profiles.files` reads and resolves the files; the fingerprint and the one-line machine
description come from :class:`toolkit.profiles.machine.MachineInfo`, the same routine that describes the
running machine, so a profile and this machine are compared one way.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Union

import yaml

from toolkit import schema
from toolkit.engines import ENGINES as _ENGINE_REGISTRY
from toolkit.errors import ConfigError
from toolkit.schema import Invalid, Record, checked, show

if TYPE_CHECKING:
    from toolkit.profiles.machine import MachineInfo

SCHEMA_VERSION = 1
KINDS = ("cpu", "gpu")
DTYPES = ("float32", "bfloat16", "float16")
ENGINES = tuple(_ENGINE_REGISTRY)  # torch, onnxruntime, llama.cpp (toolkit.engines: the one registry)
DEFAULT_GGUF_TYPE = "q8_0"


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


def device_name(v: Any) -> str:
    """``runtime.device`` (and ``--device``): cpu, cuda or cuda:N."""
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


@dataclass(frozen=True)
class Runtime(Record):
    _SECTION: ClassVar[str] = "runtime"
    device: str = checked(device_name)
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
    def machine(self) -> MachineInfo:
        """The machine this profile describes, as :func:`toolkit.profiles.machine.detect` reports one."""
        from toolkit.profiles.machine import MachineInfo

        return MachineInfo(kind=self.kind, device=self.runtime.device, vendor=self.identity.vendor,
                           model=self.identity.model, arch=self.identity.arch, cores=self.compute.cores,
                           threads=self.compute.threads, capacity_bytes=self.memory.capacity_bytes,
                           features=self.features)

    @property
    def fingerprint(self) -> str:
        """Identity of the machine this profile describes (:attr:`MachineInfo.fingerprint`)."""
        return self.machine.fingerprint

    def describe_machine(self) -> str:
        """One line naming the machine this profile describes (:meth:`MachineInfo.describe`)."""
        return self.machine.describe()

    def matches_current_machine(self) -> bool:
        """True when this profile describes the machine (and, for gpu, the CUDA device) we run on."""
        from toolkit.profiles.machine import fingerprint_current_machine

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
                raise ConfigError(k, schema.MISSING)
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
        """Write this profile (resolved: no ``extends:``) to ``path`` as YAML, atomically; returns the path."""
        from toolkit.fileio import atomic_write_text

        path = Path(path)
        atomic_write_text(path, self.to_yaml())
        return path
