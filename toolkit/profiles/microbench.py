"""Measuring this machine into a :class:`~toolkit.profiles.schema.DeviceProfile`: :func:`profile_machine`.

:func:`toolkit.profiles.machine.detect` reads what the machine is; this module adds matmul FLOP/s (float32,
plus bfloat16 where ``features.bf16`` says it is native and float16 on a GPU) and copy bandwidth, every
figure timed by :func:`toolkit.measure.time_callable` and recorded with its provenance (``measured``:
date, repeats, spread, method and the CPU share the process got).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import time
from dataclasses import dataclass
from typing import Callable

from toolkit.profiles.machine import detect
from toolkit.profiles.schema import (Compute, DeviceProfile, Identity, Measured, Memory, Provenance, Runtime,
                                     Workload)

# Default memory budget as a fraction of capacity: the OS and other processes share a CPU machine's RAM
# (and an integrated GPU's); a discrete GPU's memory is the model's but for the CUDA context.
USABLE_FRACTION = {"cpu": 0.75, "gpu": 0.90}


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
