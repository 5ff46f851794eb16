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
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def rerender(run_dir: Path) -> dict:
    from toolkit.search import load_evaluations, render_run
    from toolkit.space import SearchSpace

    run_json = run_dir / "run.json"
    if not run_json.exists():
        raise UserError(f"{run_dir}: no run.json (not a search run directory)")
    record = json.loads(run_json.read_text())
    objectives = record["settings"]["objectives"]
    space = SearchSpace.from_dict(record["space"], str(run_json))
    render_run(run_dir, load_evaluations(run_dir), space, objectives, record)
    return json.loads((run_dir / "pareto.json").read_text())


def print_front(run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

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
    if pm:
        Console().print(f"parent: accuracy {pm.get('accuracy', 0):.3f}, predicted {pm.get('decode_tokens_per_s', 0):.1f} tok/s")


def run(args) -> int:
    run_dir = Path(args.run)
    pareto = rerender(run_dir)
    if args.json:
        print(json.dumps(pareto, indent=2))
    else:
        print_front(run_dir)
        print(f"wrote {run_dir / 'pareto.json'}, {run_dir / 'evaluations.csv'}, {run_dir / 'pareto.png'}")
    return 0
