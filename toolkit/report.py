"""Plots and tables of search results: a run's ``evaluations.csv`` and ``pareto.png``, and the front table.

Everything here reads what it is given (evaluations, the front, ``pareto.json``'s contents) and imports no
stage: the search writes its journal and ``pareto.json``, and whoever shows a run (``toolkit search`` at
its end, ``toolkit report``) passes them in. matplotlib is imported lazily (Agg backend), rich too.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from toolkit.fileio import atomic_write_text


def write_run_report(run_dir: str | Path, evals: Sequence, front: Sequence, objectives: Sequence[str], parent=None,
                     labels: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    """A search run's report files beside its journal: ``evaluations.csv`` and ``pareto.png``.

    ``evals``: the run's evaluations by index (``toolkit.search.Evaluation``: index, key, config, metrics,
    feasible, violation, error); ``front`` and ``parent`` as the search found them; ``labels`` as for
    :func:`plot_pareto`."""
    run_dir = Path(run_dir)
    csv_path = write_evaluations_csv(run_dir / "evaluations.csv", evals, front)
    png = plot_pareto(run_dir / "pareto.png", evals, front, objectives, parent, labels=labels)
    return csv_path, png


def write_evaluations_csv(path: str | Path, evals: Sequence, front: Sequence) -> Path:
    """One row per evaluation (its config summarised, every metric any evaluation has, whether it is on the
    front), written atomically."""
    buf = io.StringIO()
    metric_keys = sorted({k for e in evals for k in e.metrics})
    w = csv.writer(buf)
    w.writerow(["index", "key", "feasible", "violation", "error", "depth", "mean_mlp", "mean_heads", *metric_keys, "on_front"])
    front_keys = {e.key for e in front}
    for e in evals:
        w.writerow([e.index, e.key, e.feasible, e.violation, e.error or "", e.config.depth,
                    float(np.mean(e.config.mlp)), float(np.mean(e.config.heads)),
                    *[e.metrics.get(k, "") for k in metric_keys], e.key in front_keys])
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def plot_pareto(path: str | Path, evals: Sequence, front: Sequence, objectives: Sequence[str], parent=None,
                baselines: dict[str, Sequence] | None = None, title: str | None = None,
                labels: Mapping[str, str] | None = None) -> Path:
    """Scatter of all evaluations, the front as a step line, the parent as a star; PNG written atomically.

    ``labels`` names each objective's axis (``toolkit.search.axis_labels``: the label and its direction);
    by default the objective's own name. The plot reads what it is given and imports no stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = dict(labels or {})
    y_name = "accuracy"  # accuracy on y, the first other objective (speed, size) on x
    x_name = next(o for o in objectives if o != y_name)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    feas = [e for e in evals if e.feasible]
    # An infeasible candidate's accuracy is usually not measured: only those with both values are drawn.
    infeas = [e for e in evals if not e.feasible and x_name in e.metrics and y_name in e.metrics]
    ax.scatter([e.metrics[x_name] for e in feas], [e.metrics[y_name] for e in feas], s=14, c="#9bb7d4",
               label=f"evaluated ({len(feas)})")
    if infeas:
        ax.scatter([e.metrics[x_name] for e in infeas], [e.metrics[y_name] for e in infeas], s=14, marker="x",
                   c="#d99", label=f"infeasible ({len(infeas)})")
    for name, points in (baselines or {}).items():
        ax.plot([p[0] for p in points], [p[1] for p in points], "o--", ms=4, label=name)
    if front:
        fx = [e.metrics[x_name] for e in front]
        fy = [e.metrics[y_name] for e in front]
        order = sorted(range(len(fx)), key=lambda i: fx[i])
        ax.plot([fx[i] for i in order], [fy[i] for i in order], "o-", c="#c0392b", ms=5, label=f"Pareto front ({len(front)})")
    if parent is not None and x_name in parent.metrics and y_name in parent.metrics:
        ax.scatter([parent.metrics[x_name]], [parent.metrics[y_name]], marker="*", s=220, c="gold",
                   edgecolors="k", zorder=5, label="parent")
    ax.set_xlabel(labels.get(x_name, x_name))
    ax.set_ylabel(labels.get(y_name, y_name))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Search: accuracy vs. speed")
    fig.tight_layout()
    return save_png(fig, path)


def save_png(fig, path: str | Path, dpi: int | None = None) -> Path:
    """Write a matplotlib figure as PNG atomically (temp + rename) and close it."""
    import io

    import matplotlib.pyplot as plt

    from toolkit.fileio import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def accuracy_source(pareto: Mapping[str, Any]) -> str:
    """One line saying which examples a run's accuracies are on (``pareto.json``'s task, split, limit)."""
    split = pareto.get("split", "all")  # pareto.json files from before the split: all examples
    part = {"search": "the search part", "all": "all examples"}.get(split, f"the {split} part")
    subset = f"a seeded subset of {pareto['limit']} from " if pareto.get("limit") else ""
    if split == "all":
        why = ("this run graded every example, the report part included, so none is held out from it: search "
               "with --split search for numbers free of its selection")
    else:
        why = "the search selected on them, so the front's are optimistic: measure it with `toolkit eval --split report`"
    return f"accuracies: {pareto['task']}, {subset}{part}; {why}"


def print_front(pareto: Mapping[str, Any], run_dir: str | Path, parent_accuracy_measured: bool) -> None:
    """The front of ``pareto.json`` (its contents, ``pareto``) as a table on the console, then which examples
    its accuracies are on and the parent's line. ``parent_accuracy_measured``: whether the parent's
    ``metrics.accuracy`` is a result (the search's rule, :func:`toolkit.search.accuracy_measured`)."""
    from rich.table import Table

    from toolkit.progress import stdout_console

    out = stdout_console()
    parent = pareto.get("parent") or {}
    pm = parent.get("metrics", {})
    t = Table(title=f"Pareto front of {run_dir} ({pareto['evaluations']} evaluations, HV {pareto['hypervolume']:.4f})")
    for col in ("#", "depth", "MLP", "heads", "params", "accuracy", "tok/s (pred.)", "speedup"):
        t.add_column(col, justify="right")
    for i, f in enumerate(pareto["front"]):
        m, c = f["metrics"], f["config"]
        speed = m.get("decode_tokens_per_s")
        t.add_row(str(i), str(len(c["layers"])), f"{sum(c['mlp']) / len(c['mlp']):.0f}", f"{sum(c['heads']) / len(c['heads']):.1f}",
                  f"{m.get('params', 0) / 1e6:.1f}M", f"{m['accuracy']:.3f}±{m.get('accuracy_stderr', 0):.2f}",
                  f"{speed:.1f}" if speed else "-",
                  f"{speed / pm['decode_tokens_per_s']:.2f}x" if speed and pm.get("decode_tokens_per_s") else "-")
    out.print(t)
    if pareto.get("task"):
        out.print(accuracy_source(pareto))
    if pm:
        acc = f"accuracy {pm['accuracy']:.3f}" if parent_accuracy_measured else "accuracy not measured"
        over = "" if parent.get("feasible", True) else " (over the constraints: not a candidate)"
        out.print(f"parent: {acc}, predicted {pm.get('decode_tokens_per_s', 0):.1f} tok/s{over}")
    if pareto.get("feasible_count") == 0:
        out.print(f"no feasible sub-network among the {pareto['evaluations']} evaluated: the front is empty")
