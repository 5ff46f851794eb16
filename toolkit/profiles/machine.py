"""The running machine: what it is (CPU model, counts, ISA flags, memory; or a CUDA device), its
fingerprint, and the one-line description that warnings and measurement records print.

**Fingerprint.** The identity of a machine, derived, never stored: for a cpu a hash of the CPU model, the
hardware thread count, the memory capacity rounded up to 2 GiB (so a 24 GiB VM reporting 23.5 GiB and a
datasheet "24 GB" agree) and the speed-relevant ISA features (avx2, avx512, amx, neon, bf16: cloud VMs with
the same model string come with and without AVX-512/bf16); for a gpu a hash of the device name and CUDA
capability. :class:`MachineInfo` computes it, and its :meth:`~MachineInfo.describe` writes the description,
for what :func:`detect` reads here and for what a profile describes (``DeviceProfile.machine``) alike.
:func:`fingerprint_current_machine` is this machine's, and tools that measure call :func:`warn_if_foreign`
before timing anything.

:func:`detect` reads the machine (psutil, /proc/cpuinfo, py-cpuinfo where /proc has no answer, torch for
CUDA) and never measures; the CPU flags decide ``features.bf16``, the one bf16 detector of the toolkit.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from toolkit.errors import UserError
from toolkit.profiles.schema import Features, device_name
from toolkit.schema import Invalid

if TYPE_CHECKING:
    from toolkit.profiles.schema import DeviceProfile

GIB = 1 << 30


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


# Native bf16 arithmetic, by the flags Linux reports: on x86 AVX512-BF16 (VDPBF16PS) or AMX-BF16
# (TDPBF16PS); on Arm the BF16 extension (BFDOT, BFMMLA; "bf16" in /proc/cpuinfo). Apple silicon has it
# from M2 on but reports no flags. With it a forward pass in bf16 autocast takes about half the float32
# time; without it torch emulates bf16 and float32 is the faster choice.
_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def _cpu_features(flags: set[str], model: str) -> Features:
    apple = model.startswith("Apple")
    return Features(
        avx2="avx2" in flags,
        avx512="avx512f" in flags,
        amx=bool({"amx_tile", "amx_bf16", "amx_int8"} & flags),
        neon=bool({"asimd", "neon"} & flags) or apple,
        bf16=bool(_BF16_FLAGS & flags) or (apple and "M1" not in model),
        fp16=bool({"avx512_fp16", "asimdhp", "fphp"} & flags) or apple,
        cuda_capability=None,
    )


def _mem_class_gib(capacity_bytes: int) -> int:
    """Capacity rounded up to 2 GiB: what the OS reports (a little under nominal) and the datasheet agree."""
    return 2 * math.ceil(capacity_bytes / (2 * GIB))


# The instruction-set features that change a CPU's speed class: the same "AMD EPYC" model string is
# served by hosts with and without AVX-512 / native bf16, and a bf16 matmul is ~10x slower emulated.
_FINGERPRINT_ISA = ("avx2", "avx512", "amx", "neon", "bf16")


@dataclass(frozen=True)
class MachineInfo:
    """A machine as :func:`detect` reads it (or as a profile describes it: ``DeviceProfile.machine``):
    everything of a profile but the measured rates."""

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
        """``cpu-<hash>`` or ``gpu-<hash>`` of the speed-relevant identity (see the module docstring)."""
        from toolkit.fileio import sha256_json

        model = " ".join(str(self.model).split())
        if self.kind == "cpu":
            ident = {"kind": "cpu", "model": model, "threads": self.threads,
                     "memory_gib": _mem_class_gib(self.capacity_bytes or 0),
                     "isa": [f for f in _FINGERPRINT_ISA if getattr(self.features, f)]}
        else:
            ident = {"kind": "gpu", "model": model, "cuda_capability": self.features.cuda_capability}
        return f"{self.kind}-{sha256_json(ident)[:16]}"

    def describe(self) -> str:
        """One line for people: CPU model, hardware threads and memory class, or GPU name and CUDA capability."""
        if self.kind == "cpu":
            return f"{self.model}, {self.threads} threads, {_mem_class_gib(self.capacity_bytes)} GiB"
        return f"{self.model} (CUDA {self.features.cuda_capability})"


def _cuda_index(device: str) -> int:
    import torch

    dev = torch.device(device)
    return dev.index if dev.index is not None else torch.cuda.current_device()


def _resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return device_name(device)
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
    """:meth:`MachineInfo.describe` of this machine's CPU (``kind='cpu'``) or of the CUDA device ``device``
    (``kind='gpu'``; ``'no CUDA device'`` without CUDA): the words beside :func:`fingerprint_current_machine`."""
    if kind == "cpu":
        return detect("cpu").describe()
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    return detect(device if device and device.startswith("cuda") else "cuda").describe()


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

