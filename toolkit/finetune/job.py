"""The whole fine-tuning job (what ``toolkit finetune`` runs): load, sort, train resumably, save.

**Device and precision.** Training runs on the parent's device (``finetune(device=...)``, the CLI's
``--device``, default: the ``--profile``'s ``runtime.device``, else cpu) under ``torch.autocast`` of that
device type. ``precision="bf16"`` autocasts to bfloat16; :func:`toolkit.finetune.losses.auto_precision`
picks it where the device profile (or, without one, :func:`toolkit.profiles.detect` of this machine: the
same detector a profile's ``features.bf16`` is written by) says the hardware has native bf16
(AVX512-BF16 / AMX CPUs, sm_80+ GPUs). The importance ordering is computed on the CPU before the model
moves.

**Stopping and resuming.** ``max_minutes`` (wall clock), ``max_cpu_minutes`` (training CPU, all sessions)
and SIGTERM stop the run cleanly: the step (or layer job) in flight finishes, a checkpoint is written,
and ``--resume`` continues from it. A ``local`` / ``local+global`` run first does the blockwise local
phase (:mod:`toolkit.finetune.local_distillation`), resumable per layer through ``OUT/local_cache``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from toolkit.corpus import read_texts
from toolkit.errors import ConfigError, UserError
from toolkit.fileio import atomic_write_json
from toolkit.finetune.config import FinetuneConfig
from toolkit.finetune.data import batch_indices, token_windows
from toolkit.finetune.trainer import SupernetTrainer, save_supernet

log = logging.getLogger(__name__)  # progress notes on stderr (the CLI's -v/-q set the level)


def finetune(model: str, data_file: str | Path, out: str | Path, config: FinetuneConfig, calibration_file: str | Path,
             resume: bool = False, overwrite: bool = False,
             max_minutes: float | None = None, command: str | None = None, device: str = "cpu",
             max_cpu_minutes: float | None = None, workers: int = 1, executor=None) -> Path | None:
    """Load, sort, train (resumably) on ``device`` and save the super-network. Returns the output folder, or
    None when the local phase was stopped between layers (nothing saved yet; ``--resume`` continues).

    ``max_cpu_minutes`` is a budget of training CPU time for the whole run (all sessions, all threads;
    monitor evaluations excluded): the unit in which methods are compared fairly, since wall time depends on
    whatever else the machine runs.
    ``max_minutes`` (wall clock, this session) and SIGTERM stop training early but cleanly: the step in
    flight finishes, a checkpoint is written and the super-network is saved; ``--resume`` continues.
    Progress notes go to the ``toolkit.finetune.job`` logger at INFO.
    """
    import copy

    from toolkit.importance import load_or_compute_importance
    from toolkit.models import load_model
    from toolkit.progress import enabled as bar_enabled
    from toolkit.progress import progress_bar

    out = Path(out)
    ckpt = out / "checkpoint"
    local = config.method != "global"
    if resume and not (ckpt / "state.json").is_file() and not (local and (out / "local_cache").is_dir()):
        raise UserError(f"{ckpt}: no checkpoint to resume from")
    if not resume and out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out}: exists and is not empty (pass --resume to continue it, or --overwrite)")
    texts = read_texts(data_file, "training text")
    if config.val_docs >= len(texts):
        raise ConfigError("val_docs", f"{config.val_docs} held-out documents leave none of the {len(texts)} to train on")
    loaded = load_model(model)
    if (Path(loaded.folder) / "finetune.json").is_file():
        raise UserError(f"{model}: is already a fine-tuned super-network; fine-tune the original model")
    if local:
        from toolkit.finetune.local_distillation import check_local_supported

        check_local_supported(loaded.model.config)
    if overwrite and not resume:  # nothing of an earlier run may leak into this one (a later --resume included)
        for sub in ("local_cache", "checkpoint"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in ("local.json", "finetune.json"):
            (out / name).unlink(missing_ok=True)
    importance = load_or_compute_importance(loaded, calibration_file)  # on the CPU, where it was loaded
    loaded.model.to(device)
    teacher = copy.deepcopy(loaded.model) if config.teacher == "original" and config.method != "local" else None
    train_texts = texts[: len(texts) - config.val_docs]
    val_texts = texts[len(texts) - config.val_docs:]
    windows = token_windows(loaded.tokenizer, train_texts, config.seq_len)
    val = token_windows(loaded.tokenizer, val_texts, config.seq_len)[: config.val_windows] if config.val_docs else None
    trainer = SupernetTrainer(loaded.model, loaded.tokenizer, importance, windows, config, teacher=teacher, val_windows=val)
    local_record = _read_local_record(out) if resume and local else None
    if resume and (ckpt / "state.json").is_file():
        # Always: it checks that the checkpoint was trained with these settings (--method included). A local
        # run's checkpoint is written at the end of its local phase, so its weights are the locally trained ones.
        trainer.load_checkpoint(ckpt)
    elif local_record is not None:
        raise UserError(f"{out / 'local.json'}: the local phase is recorded but {ckpt} is missing; "
                        "start afresh with --overwrite")
    if local_record is not None:
        trainer.cpu_offset_s = local_record["cpu_seconds"]
    sessions = _previous_sessions(out) if resume else []
    info = {"model": str(model), "model_hash": loaded.model_hash, "data": str(data_file), "train_windows": int(windows.shape[0]),
            "train_tokens_per_step": config.seq_len * config.batch_size * config.grad_accum,
            "held_out_docs": config.val_docs, "device": str(device), "command": command, "method": config.method}
    first_step = trainer.step
    log.info(f"{config.method}: training {len(trainer.trainable)} tensors ({sum(p.numel() for p in trainer.trainable):,} parameters) on "
        f"{windows.shape[0]} windows of {config.seq_len} tokens; space: mlp {trainer.space.mlp_choices[0]}.."
        f"{trainer.space.mlp_choices[-1]}, heads {list(trainer.space.head_choices)}, depth "
        f"{trainer.space.depth_choices[0]}..{trainer.space.depth_choices[-1]}")
    if trainer.step == 0 and not trainer.evals:
        log.info(f"step 0 held-out perplexity: {json.dumps(trainer.evaluate(phase='sliced')['val_ppl'] if val is not None else {})}")
    stop: dict[str, str | None] = {"why": None}
    start = time.monotonic()
    with _sigterm_stops(stop):
        if local and local_record is None:
            local_record = _local_phase(trainer, out, config, info, stop, start, max_minutes, workers, progress_bar,
                                        max_cpu_minutes, executor=executor)
            if local_record is None:  # stopped between layers: the trained layers are kept, --resume continues
                return None
        if local_record is not None:
            info["local"] = {k: v for k, v in local_record.items() if k != "layers"}
        if config.method != "local":  # global, or the global sandwich after the local phase
            _train_loop(trainer, config, ckpt, info, stop, start, max_minutes, bar_enabled, progress_bar,
                        max_cpu_minutes=max_cpu_minutes)
    info = dict(info, stopped_early=stop["why"], sessions=sessions + [
        {"command": command, "steps_from": first_step, "steps_to": trainer.step, "stopped_early": stop["why"]}])
    save_supernet(trainer, out, info)
    if local:
        shutil.rmtree(out / "local_cache", ignore_errors=True)  # GBs of activations; local.json keeps the record
    return out


@contextlib.contextmanager
def _sigterm_stops(stop: dict[str, str | None]) -> Iterator[None]:
    """Inside the block, SIGTERM sets ``stop["why"]`` instead of killing the process: the training loops
    finish the step (or layer job) in flight, checkpoint and return. The previous handler is put back."""

    def on_term(signum, frame):
        stop["why"] = "SIGTERM"

    old_handler = signal.signal(signal.SIGTERM, on_term) if hasattr(signal, "SIGTERM") else None
    try:
        yield
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)


def _read_local_record(out: Path) -> dict[str, Any] | None:
    path = out / "local.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the local phase record ({exc}); start afresh with --overwrite") from None
    cpu = record.get("cpu_seconds") if isinstance(record, dict) else None
    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or cpu < 0:
        raise ConfigError("cpu_seconds", "missing or not a non-negative number; start afresh with --overwrite", str(path))
    return record


def _local_phase(trainer: SupernetTrainer, out: Path, config: FinetuneConfig, info, stop, start, max_minutes,
                 workers: int, progress_bar, max_cpu_minutes: float | None = None, executor=None) -> dict[str, Any] | None:
    """Blockwise local distillation of the sorted parent (toolkit.finetune.local_distillation), resumable per layer.

    Returns the phase's record (also written to ``out/local.json`` after a checkpoint of the result), or
    None when stopped between layers.
    """
    from toolkit.finetune import local_distillation as ld

    cache = out / "local_cache"
    parent = trainer.parent
    n = min(config.local_windows, trainer.windows.shape[0])
    idx = batch_indices(trainer.windows.shape[0], config.seed, 0, n)  # the first epoch's order: n distinct windows
    blocks = hashlib.sha256()  # the sorted parent's blocks: a different --calibration sorts them differently
    for name, t in parent.state_dict().items():
        if name.startswith("model.layers."):
            blocks.update(name.encode())
            blocks.update(t.detach().float().cpu().numpy().tobytes())
    key = {"model_hash": info["model_hash"], "blocks": blocks.hexdigest(),
           "windows": hashlib.sha256(trainer.windows[torch.from_numpy(idx)].numpy().tobytes()).hexdigest(),
           "val": None if trainer.val_windows is None else hashlib.sha256(trainer.val_windows.numpy().tobytes()).hexdigest()}
    was = parent.training
    parent.eval()
    with progress_bar() as bar:
        total = n + (0 if trainer.val_windows is None else trainer.val_windows.shape[0])
        t = bar.add_task("cache activations", total=total, info="")
        manifest = ld.cache_activations(parent, trainer.windows[torch.from_numpy(idx)], trainer.val_windows, cache, key,
                                        on_batch=lambda k: bar.advance(t, k))
        bar.update(t, completed=total)
    ld.prepare_layers(parent, cache)
    if executor is not None and executor.parallel:  # Ray workers: their own count and threads
        workers, threads = executor.workers, executor.worker_threads
    else:
        threads = max(1, torch.get_num_threads() // max(1, workers)) if workers > 1 else None
    specs = [dict(s, cache_key=manifest["key"]) for s in ld.layer_specs(parent, trainer.space, cache, config, threads=threads)]
    spent = {"cpu": manifest["cpu_seconds"]}

    def should_stop() -> bool:
        if max_minutes is not None and time.monotonic() - start > max_minutes * 60:
            stop["why"] = f"time budget of {max_minutes} min"
        if max_cpu_minutes is not None and spent["cpu"] >= max_cpu_minutes * 60:
            stop["why"] = f"CPU budget of {max_cpu_minutes} min (spent in the local phase)"
        return stop["why"] is not None

    with progress_bar() as bar:
        t = bar.add_task("local distillation", total=len(specs), info="")

        def done(rec):
            spent["cpu"] += rec["cpu_seconds"]
            e = rec["reconstruction_error"]
            small = max(e["trained"], key=e["trained"].get)  # the worst (narrowest) width
            bar.advance(t)
            bar.update(t, info=f"layer {rec['layer']}: {small} {e['sliced'][small]:.3f} -> {e['trained'][small]:.3f}")

        records = ld.run_jobs(specs, workers=workers, on_done=done, should_stop=should_stop, executor=executor)
    if len(records) < len(specs):
        log.info(f"local distillation stopped after {len(records)} of {len(specs)} layers ({stop['why']}); --resume continues")
        parent.train(was)
        return None
    ls_cpu = manifest["cpu_seconds"] + sum(r["ls_cpu_seconds"] for r in records)
    cpu = manifest["cpu_seconds"] + sum(r["cpu_seconds"] for r in records)
    if config.ls_init:
        ld.load_layers(parent, cache, "ls")
        ev = trainer.evaluate(phase="least_squares", cpu_seconds=ls_cpu)
        if ev:
            log.info(f"after least squares, held-out perplexity: {json.dumps(ev['val_ppl'])}")
    ld.load_layers(parent, cache, "trained")
    trainer.cpu_offset_s = cpu
    ev = trainer.evaluate(phase="local")
    if ev:
        log.info(f"after local distillation, held-out perplexity: {json.dumps(ev['val_ppl'])}")
    parent.train(was)
    tokens = max(r["tokens"] for r in records)
    record = {"version": 1, "layers_trained": len(records), "cache_windows": n, "cache_cpu_seconds": manifest["cpu_seconds"],
              "least_squares_cpu_seconds": round(ls_cpu, 3), "cpu_seconds": round(cpu, 3),
              "tokens_per_layer": tokens, "tokens_per_cpu_hour": round(tokens / cpu * 3600, 1) if cpu > 0 else None,
              "workers": workers, "executor": executor.describe() if executor is not None else {"executor": "local"},
              "layers": records}
    trainer.save_checkpoint(out / "checkpoint", {"info": info})
    atomic_write_json(out / "local.json", record)
    return record


def _previous_sessions(out: Path) -> list[dict[str, Any]]:
    """The invocations that trained ``out`` so far (from its ``finetune.json``), so that a resumed run
    records its whole history, not only its last command. A session killed before saving leaves a gap
    in the steps (the next one starts from the last checkpoint)."""
    path = Path(out) / "finetune.json"
    if not path.is_file():
        return []
    try:
        prev = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if isinstance(prev.get("sessions"), list):
        return list(prev["sessions"])
    return [{"command": prev.get("command"), "steps_from": None, "steps_to": prev.get("steps_done"),
             "stopped_early": prev.get("stopped_early")}]


def _train_loop(trainer, config, ckpt, info, stop, start, max_minutes, bar_enabled, progress_bar,
                max_cpu_minutes: float | None = None) -> None:
    with progress_bar() as bar:
        task = bar.add_task("finetune", total=config.steps, completed=trainer.step, info="")
        while trainer.step < config.steps:
            if max_minutes is not None and time.monotonic() - start > max_minutes * 60:
                stop["why"] = f"time budget of {max_minutes} min"
            if max_cpu_minutes is not None and trainer.train_cpu_seconds() >= max_cpu_minutes * 60:
                stop["why"] = f"CPU budget of {max_cpu_minutes} min"
            if stop["why"]:
                log.info(f"stopping at step {trainer.step}: {stop['why']}")
                if not trainer.evals or trainer.evals[-1]["step"] != trainer.step:
                    trainer.evaluate()
                trainer.save_checkpoint(ckpt, {"info": info})
                break
            rec = trainer.train_step()
            text = " ".join(f"{k}={v:.3f}" for k, v in rec["loss"].items())
            bar.update(task, completed=trainer.step, info=text)
            if not bar_enabled():
                log.info(f"step {trainer.step}/{config.steps} {rec['seconds']:.1f}s lr={rec['lr']:.2e} {text}")
            last = trainer.step == config.steps
            if trainer.step % config.eval_every == 0 or last:
                ev = trainer.evaluate()
                if ev:
                    log.info(f"step {trainer.step} held-out perplexity: {json.dumps(ev['val_ppl'])}")
            if trainer.step % config.checkpoint_every == 0 or last:
                trainer.save_checkpoint(ckpt, {"info": info})
