"""``toolkit report RUN``: re-render a search run's front, CSV and plot from its journal."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from toolkit.errors import UserError

EXAMPLES = """examples:
  toolkit report run/search            # table of the front + re-rendered pareto.png
  toolkit report run/search --json     # pareto.json to stdout
"""


def register(sub) -> None:
    p = sub.add_parser("report", help="re-render a search run (front table, CSV, pareto.png)", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="search run directory")
    p.set_defaults(func=run)


def rerender(run_dir: Path) -> dict:
    """Rebuild pareto.json, evaluations.csv and pareto.png from run.json + the journal (whatever
    pareto.json held before, even a broken one, is replaced). A broken run.json or journal line is a
    one-line error naming the file, and nothing is rewritten."""
    from toolkit.search import load_evaluations, read_run_record, render_run
    from toolkit.space import SearchSpace

    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a directory (pass a search run directory)")
    record = read_run_record(run_dir)
    objectives = record["settings"]["objectives"]
    space = SearchSpace.from_dict(record["space"], str(run_dir / "run.json"))
    evals = load_evaluations(run_dir)
    render_run(run_dir, evals, space, objectives, record)
    return json.loads((run_dir / "pareto.json").read_text())


def accuracy_source(pareto: dict) -> str:
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


def print_front(run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from toolkit.search import accuracy_measured

    pareto = json.loads((run_dir / "pareto.json").read_text())
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
    Console().print(t)
    if pareto.get("task"):
        Console().print(accuracy_source(pareto))
    if pm:
        measured = accuracy_measured(parent)  # the flag, or (older pareto.json files) the search's own rule
        acc = f"accuracy {pm['accuracy']:.3f}" if measured else "accuracy not measured"
        over = "" if parent.get("feasible", True) else " (over the constraints: not a candidate)"
        Console().print(f"parent: {acc}, predicted {pm.get('decode_tokens_per_s', 0):.1f} tok/s{over}")
    if pareto.get("feasible_count") == 0:
        Console().print(f"no feasible sub-network among the {pareto['evaluations']} evaluated: the front is empty")


def run(args) -> int:
    run_dir = Path(args.run)
    pareto = rerender(run_dir)
    if args.json:
        print(json.dumps(pareto, indent=2))
    else:
        print_front(run_dir)
        print(f"wrote {run_dir / 'pareto.json'}, {run_dir / 'evaluations.csv'}, {run_dir / 'pareto.png'}")
    return 0
