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
    from toolkit.report import write_run_report
    from toolkit.search import axis_labels, load_evaluations, read_run_record, summarise, write_pareto
    from toolkit.space import SearchSpace

    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a directory (pass a search run directory)")
    record = read_run_record(run_dir)
    objectives = record["settings"]["objectives"]
    space = SearchSpace.from_dict(record["space"], str(run_dir / "run.json"))
    result = summarise(load_evaluations(run_dir), space, objectives)
    path = write_pareto(run_dir, result, objectives, record)
    write_run_report(run_dir, result.evaluations, result.front, objectives, result.parent, labels=axis_labels(objectives))
    return json.loads(path.read_text())


def print_run_front(run_dir: Path) -> None:
    """The front table of the run's pareto.json (:func:`toolkit.report.print_front`)."""
    from toolkit.report import print_front
    from toolkit.search import accuracy_measured

    pareto = json.loads((run_dir / "pareto.json").read_text())
    # the flag, or (older pareto.json files) the search's own rule
    print_front(pareto, run_dir, accuracy_measured(pareto.get("parent") or {}))


def run(args) -> int:
    from toolkit.search import require_search_extra

    require_search_extra("report")
    run_dir = Path(args.run)
    pareto = rerender(run_dir)
    if args.json:
        print(json.dumps(pareto, indent=2))
    else:
        print_run_front(run_dir)
        print(f"wrote {run_dir / 'pareto.json'}, {run_dir / 'evaluations.csv'}, {run_dir / 'pareto.png'}")
    return 0
