"""Executors: where independent jobs run, in this process (``local``) or on a Ray cluster (``ray``).

One seam for the toolkit's three fan-outs: the search's candidate evaluations, calibration's timing jobs
on a target device, and local distillation's per-layer jobs. The data flow:

* a **factory** (a picklable callable, built on the driver) is called *once per worker*, in the worker's
  process, and returns the worker's function: that is where a worker loads its model and task data, so
  a worker serves many jobs without reloading anything;
* ``executor.imap_unordered(items)`` hands every item to some worker's function and yields
  ``(index, Outcome)`` exactly once per item, in completion order;
* an :class:`Outcome` carries the value, or the error as the serial run would record it
  (``"TypeName: message"``), or a :class:`~toolkit.errors.UserError`'s message (bad input, the same for
  every job: the caller stops), plus where the job ran.

The driver alone writes files (journals): workers return values and never touch the run's files.

Submodules: :mod:`.base` (Outcome, run_job, ExecutorSpec and the executor CLI flags), :mod:`.local`
(LocalExecutor, in this process), :mod:`.ray` (RayExecutor, the ``[ray]`` extra, imported only when used;
a worker's model loading).
"""

from toolkit.search.executors.base import (ExecutorSpec, Factory, Outcome, WorkerFn, add_executor_args, flag_error,
                                           parse_address, run_job, spec_from_args)
from toolkit.search.executors.local import LocalExecutor
from toolkit.search.executors.ray import (PRIVATE_CLUSTER_CONFIG, RAY_EXTRA, RAY_INSTALL_HINT, RayExecutor,
                                          WorkerStartError, connect, cuda_device_for_worker, load_model_on_worker,
                                          model_reference, require_ray)

__all__ = ["ExecutorSpec", "Factory", "LocalExecutor", "Outcome", "PRIVATE_CLUSTER_CONFIG", "RAY_EXTRA",
           "RAY_INSTALL_HINT", "RayExecutor", "WorkerFn", "WorkerStartError", "add_executor_args", "connect",
           "cuda_device_for_worker", "flag_error", "load_model_on_worker", "model_reference", "parse_address",
           "require_ray", "run_job", "spec_from_args"]
