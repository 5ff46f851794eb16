"""Plots and tables of search results (matplotlib, imported lazily, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence


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
    x_name, y_name = objectives[1], objectives[0]  # speed/size on x, accuracy on y
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
