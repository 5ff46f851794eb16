"""The Ray executor: jobs on a pool of Ray actors, each built once by a factory (see the package doc).

**Faults.** A worker that dies while it holds a job (a killed process, a lost node) is replaced and its
job is re-queued on another worker; :attr:`RayExecutor.retries` counts these. A job that kills its worker
``max_retries + 1`` times is given up with an error outcome rather than retried forever. A job that
*raises* is not retried: the exception is its (deterministic) result.

Ray is the optional ``[ray]`` extra: this module imports it only inside functions, and imports nothing
heavy itself (stub workers start in milliseconds). Also here: how a worker elsewhere names and loads the
driver's model (:func:`model_reference`, :func:`load_model_on_worker`, :func:`cuda_device_for_worker`).
"""

from __future__ import annotations

import collections
import os
import socket
import sys
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

from toolkit.errors import ConfigError, UserError
from toolkit.search.executors.base import ExecutorSpec, Factory, Outcome, parse_address, run_job

RAY_EXTRA = "ray"
RAY_INSTALL_HINT = "pip install 'llm-nas-toolkit[ray]' (or: pip install ray==2.60.0)"

def require_ray(flag: str = "--executor ray"):
    """The ray module, or a one-line UserError naming the extra that brings it."""
    try:
        import ray
    except ImportError:
        raise UserError(f"{flag}: Ray is not installed; it is the [{RAY_EXTRA}] extra: {RAY_INSTALL_HINT}") from None
    return ray


def connect(spec: ExecutorSpec, num_cpus: int | None = None) -> bool:
    """Connect this process to the cluster ``spec`` names; True when this call started a private local
    cluster (which the caller then shuts down). Already connected (a test, a notebook): nothing to do.

    An unreachable HOST:PORT is found by a plain TCP probe first (Ray itself would retry for a minute and
    print pages of logs): one line naming the address."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    import logging

    quiet = dict(logging_level=logging.ERROR, log_to_driver=True, include_dashboard=False)
    address = spec.address or os.environ.get("RAY_ADDRESS") or None  # Ray's own variable names a cluster too
    if address is None:
        cpus = max(os.cpu_count() or 1, spec.workers * spec.worker_threads) if num_cpus is None else num_cpus
        ray.init(num_cpus=cpus, _system_config=PRIVATE_CLUSTER_CONFIG, **quiet)
        return True
    flag = "--ray-address" if spec.address else "$RAY_ADDRESS"
    try:
        hostport = parse_address(address)
    except ConfigError as exc:
        raise UserError(f"{flag}: {exc.problem}") from None
    if hostport is not None:
        try:
            socket.create_connection(hostport, timeout=5).close()
        except OSError as exc:
            raise UserError(f"{flag} {address}: cannot reach a Ray cluster there "
                            f"({exc.strerror or exc}); start one with `ray start --head` on that machine") from None
    try:
        ray.init(address=address, **{k: v for k, v in quiet.items() if k != "include_dashboard"})
    except ConnectionError as exc:
        if hostport is None:
            raise UserError(f"{flag} auto: no running Ray cluster found on this machine; start one with "
                            "`ray start --head`, or leave --ray-address out to start a private one") from None
        raise UserError(f"{flag} {address}: no Ray cluster answers there ({' '.join(str(exc).split())[:200]})") from None
    except (RuntimeError, ValueError) as exc:  # e.g. a cluster of another Ray or Python version
        raise UserError(f"{flag} {address}: cannot join that Ray cluster ({' '.join(str(exc).split())[:300]})") from None
    return False


# A private cluster (no --ray-address) runs beside the workers on the same cores: no idle worker processes
# started ahead (they poll, and each pool starts its own actors anyway) and no metrics export: both take
# CPU time from the workers on a machine with few cores.
PRIVATE_CLUSTER_CONFIG = {"enable_worker_prestart": False, "prestart_worker_first_driver": False,
                          "enable_metrics_collection": False, "metrics_report_interval_ms": 60000}


class _RayWorker:
    """The actor: builds its function once from the factory (errors kept, reported by :meth:`ready`)."""

    def __init__(self, factory: Factory, threads: int | None):
        import ray

        if threads:
            os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        self.info = {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
                     "host": socket.gethostname()}
        self.start_error: str | None = None
        self.start_user_error = False
        try:
            _set_torch_threads(threads)  # before the factory's work (if torch is loaded already) and after it
            self.fn = factory()
            _set_torch_threads(threads)
        except UserError as exc:
            self.start_error, self.start_user_error = str(exc), True
        except Exception as exc:
            self.start_error = f"{type(exc).__name__}: {exc}"

    def ready(self) -> dict[str, Any]:
        return {**self.info, "error": self.start_error, "user_error": self.start_user_error}

    def run(self, item: Any) -> Outcome:
        if self.start_error is not None:  # never handed a job once ready() said so; a guard all the same
            return Outcome("user_error" if self.start_user_error else "error", error=self.start_error, worker=self.info)
        return run_job(self.fn, item, self.info)


def _set_torch_threads(threads: int | None) -> None:
    """Torch's intra-op threads, when torch is loaded (a stub worker never imports it)."""
    if threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


class WorkerStartError(UserError):
    """A worker could not build its function (its model or data is missing on its node, say)."""


class RayExecutor:
    """Jobs on a pool of Ray actors, each built once by ``factory`` (see the module doc).

    ``num_cpus`` overrides the CPUs each actor reserves (default ``spec.worker_threads``; 0 for workers
    that only wait, as the scaling benchmark's stub does). Not Ray's ``ActorPool``: it re-raises a dead
    actor's error instead of re-queueing the job, and cannot replace the actor.
    """

    parallel = True

    def __init__(self, factory: Factory | None, spec: ExecutorSpec, *, num_cpus: float | None = None):
        if spec.kind != "ray":
            raise ValueError("RayExecutor needs an ExecutorSpec of kind 'ray'")
        self.factory, self.spec = factory, spec
        self.num_cpus = spec.worker_threads if num_cpus is None else num_cpus
        self.retries = 0
        self.replaced = 0
        self._owns_cluster = False
        self._connected = False
        self._starting: dict[Any, Any] = {}
        self._actors: list[Any] = []
        self._info: dict[Any, dict[str, Any]] = {}  # actor -> its ready() answer
        self._started = False
        self.startup_seconds = 0.0

    # -- the pool ---------------------------------------------------------------------------------
    def _options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.spec.worker_gpus,
                                "max_restarts": 0, "max_task_retries": 0}
        if self.spec.resource:
            opts["resources"] = {self.spec.resource: 1}
        return opts

    def _check_capacity(self, ray) -> None:
        """Refuse a pool the cluster can never hold (Ray would wait forever for it), one line: in total,
        then node by node (a worker's CPUs, GPUs and resource must all be on one node)."""
        self._check_total(ray)
        need = {"CPU": self.num_cpus, "GPU": self.spec.worker_gpus}
        if self.spec.resource:
            need[self.spec.resource] = 1
        need = {k: v for k, v in need.items() if v > 0}
        fits = 0
        for node in ray.nodes():
            if not node.get("Alive", True):
                continue
            have = node.get("Resources", {})
            fits += int(min((have.get(k, 0) + 1e-9) // v for k, v in need.items())) if need else self.spec.workers
        if fits < self.spec.workers:
            what = ", ".join(f"{v:g} {k}" for k, v in need.items())
            raise UserError(f"--workers {self.spec.workers}: each worker needs {what} on one node; the cluster's nodes "
                            f"hold {fits} such worker(s)")

    def _check_total(self, ray) -> None:
        total = ray.cluster_resources()
        need = {"CPU": self.num_cpus * self.spec.workers, "GPU": self.spec.worker_gpus * self.spec.workers}
        if self.spec.resource:
            need[self.spec.resource] = self.spec.workers
        flags = {"CPU": "--workers x --worker-threads", "GPU": "--workers x --worker-gpus"}
        for name, amount in need.items():
            if amount > 0 and total.get(name, 0) + 1e-9 < amount:
                have = total.get(name, 0)
                if name == self.spec.resource:
                    nodes = "no node advertises it" if not have else f"the cluster has {have:g}"
                    raise UserError(f"--ray-resource {name}: {self.spec.workers} worker(s) need {amount:g}, {nodes} "
                                    f"(on the target: ray start --address HEAD:6379 --resources '{{\"{name}\": 1}}')")
                raise UserError(f"{flags.get(name, name)}: the pool needs {amount:g} {name}, the cluster has {have:g}")

    def _spawn(self, ray):
        actor = ray.remote(_RayWorker).options(**self._options()).remote(self.factory, self.spec.worker_threads)
        return actor, actor.ready.remote()

    def _accept(self, actor, info: Mapping[str, Any]) -> None:
        if info["error"]:
            self.close()
            msg = f"worker on {info['host']} (node {info['node_id'][:12]}) failed to start: {info['error']}"
            raise WorkerStartError(msg)
        self._info[actor] = dict(info)

    def connect(self) -> "RayExecutor":
        """Join (or start) the cluster and check it can hold the pool: the one-line errors (Ray missing,
        an unreachable address, a resource no node has) come from here, before any work."""
        ray = require_ray()
        if not self._connected:
            self._owns_cluster = connect(self.spec)
            self._connected = True
        self._check_capacity(ray)
        return self

    def start(self) -> "RayExecutor":
        """Start the workers (each calls the factory once) and wait until all are ready."""
        if self._started:
            return self
        if self.factory is None:
            raise TypeError("RayExecutor.start: no factory")
        ray = require_ray()
        t0 = time.perf_counter()
        self.connect()
        spawned = [self._spawn(ray) for _ in range(self.spec.workers)]
        self._actors = [a for a, _ in spawned]
        from ray.exceptions import RayActorError

        try:
            infos = ray.get([r for _, r in spawned])
        except RayActorError as exc:  # died while starting (not installed on that node, killed for memory, ...)
            self.close()
            raise WorkerStartError(f"a Ray worker died while starting ({type(exc).__name__}: "
                                   f"{' '.join(str(exc).split())[:300]})") from None
        for actor, info in zip(self._actors, infos):
            self._accept(actor, info)
        self._started = True
        self.startup_seconds = time.perf_counter() - t0
        return self

    def workers(self) -> list[dict[str, Any]]:
        """Every live worker: pid, node_id, host."""
        return [dict(self._info[a]) for a in self._actors if a in self._info]

    def imap_unordered(self, items: Sequence[Any], should_stop: Callable[[], bool] | None = None
                       ) -> Iterator[tuple[int, Outcome]]:
        """Yield ``(index, Outcome)`` for every item as workers finish them (each exactly once; a job whose
        worker died is re-queued, see the module doc). ``should_stop``: asked before each job is handed
        out; once true, jobs in flight finish and the rest are not started."""
        ray = require_ray()
        from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError

        lost_errors = (RayActorError, WorkerCrashedError, NodeDiedError)  # RayActorError: ActorDied/Unavailable too
        self.start()
        items = list(items)
        queue = collections.deque(range(len(items)))
        attempts: collections.Counter = collections.Counter()
        starting = self._starting  # ready() ref -> replacement actor (kept across calls until it answers)
        idle = [a for a in self._actors if a in self._info and a not in starting.values()]
        running: dict[Any, tuple[int, Any]] = {}  # object ref -> (item index, actor)
        stopped = False
        while queue or running:
            while queue and idle and not stopped:
                if should_stop is not None and should_stop():
                    stopped = True
                    break
                actor = idle.pop(0)
                i = queue.popleft()
                running[actor.run.remote(items[i])] = (i, actor)
            if stopped and not running:
                return
            if not running and not starting:
                raise RuntimeError("executor: no live worker left")  # pragma: no cover - replacements keep the pool full
            ready, _ = ray.wait([*running, *starting], num_returns=1)
            ref = ready[0]
            if ref in starting:
                actor = starting.pop(ref)
                try:
                    info = ray.get(ref)
                except lost_errors:  # the replacement died while starting: try another (up to a cap)
                    self._replace(ray, actor, starting)
                    continue
                self._accept(actor, info)
                idle.append(actor)
                continue
            i, actor = running.pop(ref)
            try:
                out = ray.get(ref)
            except lost_errors as exc:
                self.retries += 1
                attempts[i] += 1
                self._replace(ray, actor, starting)
                if attempts[i] > self.spec.max_retries:
                    yield i, Outcome("error", error=f"WorkerLost: its worker died {attempts[i]} times while evaluating it "
                                                    f"(last: {type(exc).__name__})")
                else:
                    queue.appendleft(i)
                continue
            idle.append(actor)
            yield i, out

    def _replace(self, ray, dead, starting: dict) -> None:
        if self.replaced >= self.spec.workers * (self.spec.max_retries + 1):
            self.close()
            raise WorkerStartError(f"Ray workers keep dying: {self.replaced} replaced already; see the Ray logs "
                                   "(/tmp/ray/session_latest/logs) for why")
        if dead in self._actors:
            self._actors.remove(dead)
        self._info.pop(dead, None)
        try:
            ray.kill(dead)
        except Exception:  # already gone
            pass
        actor, ref = self._spawn(ray)
        self._actors.append(actor)
        starting[ref] = actor
        self.replaced += 1

    def close(self) -> None:
        """Kill the workers; shut the cluster down if :meth:`connect` started it."""
        if not self._actors and not self._owns_cluster:
            self._connected = False
            return
        import ray  # imported already: there are actors, or connect() started a cluster

        for a in self._actors:
            try:
                ray.kill(a)
            except Exception:
                pass
        self._actors, self._info, self._started, self._starting = [], {}, False, {}
        if self._owns_cluster:
            ray.shutdown()
            self._owns_cluster = False
        self._connected = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def model_reference(model: str) -> str:
    """``--model`` as a worker elsewhere must name it: the embedded default's name, or an absolute path
    (a Ray worker's current folder is not the driver's)."""
    from pathlib import Path

    return str(Path(model).resolve()) if Path(model).exists() else model


def load_model_on_worker(model: str, model_hash: str, dtype: str, device: str, worker_gpus: float = 0.0):
    """The driver's model, loaded in a worker (on the device Ray gave it) and checked to be the same
    model by hash: a one-line UserError naming the host otherwise."""
    from toolkit.models import load_model

    loaded = load_model(model, dtype=dtype, device=cuda_device_for_worker(device, worker_gpus))
    if loaded.model_hash != model_hash:
        raise UserError(f"{model}: on worker host {socket.gethostname()} this is another model "
                        f"(hash {loaded.model_hash[:12]}) than on the driver ({model_hash[:12]})")
    return loaded


def cuda_device_for_worker(device: str, worker_gpus: float) -> str:
    """The device a Ray worker should use for ``device``: Ray shows a worker that reserved GPUs only its
    own (``CUDA_VISIBLE_DEVICES``), so ``cuda:N`` of the driver is ``cuda`` (its first visible) there."""
    if worker_gpus > 0 and device.startswith("cuda"):
        return "cuda"
    return device
