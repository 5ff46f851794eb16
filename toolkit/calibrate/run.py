"""The calibration driver: measure the chosen sub-networks (here or on Ray workers), journal each
measurement, fit the predictor.

Where each measurement was taken is recorded with it (:func:`machine_record`); a calibration sent to a
node the profile does not describe is refused or warned about (:func:`foreign_node_error`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from toolkit.calibrate.predictor import Measurement, Predictor
from toolkit.errors import ConfigError, UserError
from toolkit.space import SubnetConfig

CALIBRATION_JOURNAL_VERSION = 1


def calibration_header(prior: Predictor, repeats: int | None = None,
                       runtime: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a calibration journal's measurements depend on: a resume with any of it changed is refused."""
    hw = prior.hardware
    return {"journal": "calibration", "version": CALIBRATION_JOURNAL_VERSION, "model_hash": prior.model_hash,
            "profile_fingerprint": prior.profile_fingerprint, "workload": dataclasses.asdict(prior.workload),
            "dtype": hw.dtype, "repeats": repeats,
            "runtime": {**dict(runtime or {}), "engine": hw.engine, "gguf_type": hw.gguf_type}}


def calibrate(prior: Predictor, configs: Sequence[SubnetConfig], measure_fn=None, journal_path: str | Path | None = None,
              progress=None, *, repeats: int | None = None, runtime: Mapping[str, Any] | None = None,
              executor=None, check=None) -> Predictor:
    """Measure ``configs`` with ``measure_fn(cfg) -> Measurement`` (in this process) or on ``executor``
    (:mod:`toolkit.search.executors`: e.g. Ray workers on the target device, each built by a
    :class:`CalibrationWorker`), and fit ``prior``'s coefficients.

    Measurements are appended to ``journal_path`` (a :class:`toolkit.search.journal.JournalFile`: JSONL, each line
    fsynced, a line torn by a kill dropped on resume) as they are taken, so a killed calibration
    resumes without re-timing what it already has. The journal's header records what the measurements
    depend on (model hash, profile fingerprint, workload, dtype, ``repeats``, ``runtime``: the device,
    threads, and the engine and GGUF type from ``prior.hardware``); a journal written with other settings
    is a one-line error naming the differing fields (never silently discarded). ``check(measurement)``
    sees every new measurement before it is journaled (where it was measured: a mismatch with the
    profile raises there). A measurement that raises stops the calibration (a UserError as itself,
    anything else as a RuntimeError naming the config).
    """
    from toolkit.search.executors import LocalExecutor
    from toolkit.search.journal import JournalFile, line_error

    if (measure_fn is None) == (executor is None):
        raise TypeError("calibrate needs exactly one of measure_fn and executor")
    done: dict[str, Measurement] = {}
    journal = None
    if journal_path is not None:
        journal = JournalFile(journal_path, calibration_header(prior, repeats, runtime), what="calibration journal")
        lines: dict[str, int] = {}
        for rec in journal:
            try:
                m = Measurement.from_dict(rec, str(journal.path), "", prior.shape)
            except ConfigError as exc:
                raise line_error(journal.path, rec.line, exc.field, exc.problem) from None
            key = m.config.key()
            if key in lines:
                raise line_error(journal.path, rec.line, "config", f"measured twice (first on line {lines[key]}; corrupt journal)")
            done[key], lines[key] = m, rec.line
    todo = list({c.key(): c for c in configs if c.key() not in done}.values())
    if progress is not None:
        for i, cfg in enumerate(c for c in configs if c.key() in done):
            progress(i + 1, done[cfg.key()])
    executor = executor if executor is not None else LocalExecutor(fn=measure_fn)
    for j, out in executor.imap_unordered(todo):
        if not out.ok:
            if out.exception is not None:
                raise out.exception
            if out.status == "user_error":
                raise UserError(out.error)
            raise RuntimeError(f"measuring {todo[j].to_json()}: {out.error}")
        m = out.value
        if check is not None:
            check(m)
        if journal is not None:
            journal.append(m.to_dict())
        done[todo[j].key()] = m
        if progress is not None:
            progress(sum(c.key() in done for c in configs), m)
    return prior.fit([done[c.key()] for c in configs])


def machine_record(kind: str = "cpu", device: str | None = None, node_id: str = "local") -> dict[str, str]:
    """Where a measurement is taken: this machine's fingerprint (what a profile of it would have), a
    description, the host name and the Ray node id (``"local"``: in the calibrating process)."""
    import socket

    from toolkit.profiles import describe_current_machine, fingerprint_current_machine

    return {"fingerprint": fingerprint_current_machine(kind, device), "machine": describe_current_machine(kind, device),
            "host": socket.gethostname(), "node_id": node_id}


def recording_where(measure, where: dict[str, str]):
    """``measure`` whose every :class:`~toolkit.calibrate.predictor.Measurement` carries ``measured_on=where``."""

    def measure_here(cfg):
        return dataclasses.replace(measure(cfg), measured_on=dict(where))

    return measure_here


def foreign_node_error(profile, where: dict[str, str], resource: str | None) -> str:
    """The one line of a calibration sent to a node the profile does not describe."""
    via = f"--ray-resource {resource}: " if resource else ""
    return (f"{via}node {where['host']} (Ray node {where['node_id'][:12]}) is {where['machine']}, fingerprint "
            f"{where['fingerprint']}; the profile '{profile.name}' describes {profile.describe_machine()} (fingerprint "
            f"{profile.fingerprint}): profile that device (`toolkit profile --out FILE` on it) or send the work to one it describes")


@dataclass(frozen=True)
class CalibrationWorker:
    """Factory of a calibration measure function in a Ray worker (:mod:`toolkit.search.executors`): loads the
    parent on that node (checked against the driver's hash) and times sub-networks there, in the profile's
    engine. ``strict``: the node must be the machine the profile describes (its fingerprint), checked
    before anything is timed; every measurement records the node either way (``measured_on``)."""

    model: str
    model_hash: str
    dtype: str
    device: str
    importance: object
    profile: object  # toolkit.profiles.DeviceProfile
    repeats: int
    strict: bool = False
    resource: str | None = None
    worker_gpus: float = 0.0

    def __call__(self):
        import ray

        from toolkit.calibrate.latency import subnet_measure_fn  # imports torch: on the worker only
        from toolkit.search.executors import cuda_device_for_worker, load_model_on_worker

        device = cuda_device_for_worker(self.device, self.worker_gpus)
        where = machine_record(self.profile.kind, device, ray.get_runtime_context().get_node_id())
        if self.strict and where["fingerprint"] != self.profile.fingerprint:
            raise UserError(foreign_node_error(self.profile, where, self.resource))
        loaded = load_model_on_worker(self.model, self.model_hash, self.dtype, self.device, self.worker_gpus)
        return recording_where(subnet_measure_fn(loaded, self.importance, self.profile, self.repeats), where)
