"""The executor seam: what a job gives (:class:`Outcome`), how every executor runs one (:func:`run_job`),
and where jobs run as the CLI flags say it (:class:`ExecutorSpec`, :func:`add_executor_args`,
:func:`spec_from_args`). Imports nothing heavy."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from toolkit.errors import ConfigError, UserError

# A worker's function: item -> value. A factory builds one in the worker's process.
WorkerFn = Callable[[Any], Any]
Factory = Callable[[], WorkerFn]


@dataclass(frozen=True)
class Outcome:
    """What one job gave: ``status`` ok (``value``), error (``error``: ``"TypeName: message"``, as the
    serial run records a failed evaluation) or user_error (``error``: the UserError's one line)."""

    status: str
    value: Any = None
    error: str | None = None
    seconds: float = 0.0
    worker: Mapping[str, Any] = field(default_factory=dict)  # where it ran: pid, node id, host
    # The exception itself, when the job ran in this process (a caller may re-raise it as it was);
    # never sent between processes (a ConfigError, for one, does not survive pickling).
    exception: BaseException | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def run_job(fn: WorkerFn, item: Any, worker: Mapping[str, Any] | None = None, keep_exception: bool = False) -> Outcome:
    """Call ``fn(item)`` the way every executor does (in the worker): exceptions become outcomes."""
    t0 = time.perf_counter()
    try:
        value = fn(item)
    except UserError as exc:
        return Outcome("user_error", error=str(exc), seconds=time.perf_counter() - t0, worker=dict(worker or {}),
                       exception=exc if keep_exception else None)
    except Exception as exc:  # one bad job is its own result, never the worker's end
        return Outcome("error", error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0,
                       worker=dict(worker or {}), exception=exc if keep_exception else None)
    return Outcome("ok", value, seconds=time.perf_counter() - t0, worker=dict(worker or {}))


@dataclass(frozen=True)
class ExecutorSpec:
    """Where jobs run, as the CLI flags say it (``--executor --ray-address --workers --worker-gpus
    --worker-threads``; calibrate adds ``--ray-resource``). Checked on construction; a bad field is a
    :class:`ConfigError` naming it (the CLI names the flag)."""

    kind: str = "local"  # local | ray
    address: str | None = None  # None: start a private local cluster; "auto" or HOST:PORT: join one
    workers: int = 1
    worker_threads: int = 1  # torch threads per worker (and the CPUs each worker reserves)
    worker_gpus: float = 0.0  # GPUs each worker reserves (Ray sets CUDA_VISIBLE_DEVICES for it)
    resource: str | None = None  # a custom resource every worker needs (a target device's label)
    max_retries: int = 3  # re-queues of one job whose worker died, before it is given up

    def __post_init__(self) -> None:
        if self.kind not in ("local", "ray"):
            raise ConfigError("executor", f"unknown executor {self.kind!r} (local or ray)")
        for name in ("workers", "worker_threads", "max_retries"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "max_retries" else 1):
                raise ConfigError(name, f"expected a positive integer, got {v!r}")
        if isinstance(self.worker_gpus, bool) or not isinstance(self.worker_gpus, (int, float)) or not self.worker_gpus >= 0:
            raise ConfigError("worker_gpus", f"expected a non-negative number, got {self.worker_gpus!r}")
        if self.kind == "local":
            for name, default in (("address", None), ("resource", None), ("worker_gpus", 0.0)):
                if getattr(self, name) != default:
                    raise ConfigError(name, "needs the ray executor (--executor ray)")
            if self.workers != 1:
                raise ConfigError("workers", "the local executor runs one worker, in this process; use --executor ray")
        if self.address is not None:
            parse_address(self.address)
        if self.resource is not None and (not isinstance(self.resource, str) or not self.resource.strip()):
            raise ConfigError("resource", f"expected a resource name, got {self.resource!r}")

    @property
    def parallel(self) -> bool:
        return self.kind == "ray"

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"executor": self.kind}
        if self.kind == "ray":
            d.update(address=self.address or "local", workers=self.workers, worker_threads=self.worker_threads,
                     worker_gpus=self.worker_gpus)
            if self.resource:
                d["resource"] = self.resource
        return d


def parse_address(address: str) -> tuple[str, int] | None:
    """``auto`` -> None; ``HOST:PORT`` -> (host, port); anything else a ConfigError on ``address``."""
    if address == "auto":
        return None
    text = address.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("address", f"{address!r} is not auto or HOST:PORT")
    return host.strip("[]"), int(port)


def flag_error(exc: ConfigError, flags: Mapping[str, str] | None = None) -> UserError:
    """An :class:`ExecutorSpec` error as the CLI flag the user typed."""
    names = {"executor": "--executor", "address": "--ray-address", "workers": "--workers",
             "worker_threads": "--worker-threads", "worker_gpus": "--worker-gpus", "resource": "--ray-resource",
             **(flags or {})}
    return UserError(f"{names.get(exc.field, exc.field)}: {exc.problem}")


def add_executor_args(parser, *, resource: bool = False, default_threads_help: str = "1", workers: bool = True) -> None:
    """The executor flags (one definition for every subcommand that fans out; ``workers=False`` where the
    subcommand already has its own ``--workers``)."""
    g = parser.add_argument_group("executor (where the jobs run)")
    g.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: in this process (default); ray: on a pool of Ray workers (the [ray] extra)")
    g.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                   help="join a running Ray cluster (auto: the one started on this machine with `ray start`); "
                        "default: start a private one on this machine")
    if workers:
        g.add_argument("--workers", type=int, default=1, help="Ray workers (each loads the model once)")
    g.add_argument("--worker-threads", type=int, default=None,
                   help=f"torch threads (and CPUs reserved) per Ray worker (default {default_threads_help})")
    g.add_argument("--worker-gpus", type=float, default=0.0, help="GPUs reserved per Ray worker (default 0)")
    if resource:
        g.add_argument("--ray-resource", default=None, metavar="NAME",
                       help="send every job to nodes that advertise this Ray custom resource (a target device: "
                            "ray start --address HEAD:6379 --resources '{\"NAME\": 1}'); the measuring node "
                            "must match the profile's fingerprint")


def spec_from_args(args, default_threads: int = 1) -> ExecutorSpec:
    """The :class:`ExecutorSpec` of the executor flags (a bad flag: one-line UserError naming it)."""
    threads = args.worker_threads if args.worker_threads is not None else default_threads
    try:
        return ExecutorSpec(kind=args.executor, address=args.ray_address, workers=args.workers, worker_threads=threads,
                            worker_gpus=args.worker_gpus, resource=getattr(args, "ray_resource", None))
    except ConfigError as exc:
        raise flag_error(exc) from None
