"""``toolkit info MODEL``: architecture, parameter count, search-space size, where it was loaded from."""

from __future__ import annotations

import argparse
import json

from toolkit.cli.common import add_data_dir_arg
from toolkit.fileio import default_calibration_file

EXAMPLES = """examples:
  toolkit info smollm2-135m
  toolkit info ./my-llama-folder --json
"""


def register(sub) -> None:
    p = sub.add_parser("info", help="describe a model and its search space", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="smollm2-135m", help="HF folder, .gguf file, or 'smollm2-135m'")
    p.add_argument("--calibration", default=None, help="calibration text for importance (default: <data-dir>/calibration/calibration.txt)")
    p.add_argument("--no-importance", action="store_true", help="skip importance (layer order falls back to position)")
    add_data_dir_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from toolkit.elastic import parent_shape, model_space
    from toolkit.importance import load_or_compute_importance
    from toolkit.models import load_model

    loaded = load_model(args.model)
    imp = None
    if not args.no_importance:
        imp = load_or_compute_importance(loaded, default_calibration_file(args.calibration, args.data_dir))
    shape = parent_shape(loaded.model)
    space = model_space(loaded, imp)
    full = shape.full_config()
    info = {
        "model": args.model,
        "loaded_from": str(loaded.folder),
        "source_kind": loaded.source.kind,
        "source_path": str(loaded.source.path),
        "model_hash": loaded.model_hash,
        "architecture": (loaded.config.architectures or [type(loaded.model).__name__])[0],
        "layers": shape.num_layers,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "heads": f"{shape.num_heads} query / {shape.num_kv_heads} kv (GQA group {shape.group_size})",
        "parameters": shape.num_params(full),
        "non_embedding_parameters": shape.num_params(full, include_embeddings=False),
        "search_space": {
            "depth": [space.depth_choices[0], space.depth_choices[-1]],
            "mlp_widths": [space.mlp_choices[0], space.mlp_choices[-1], len(space.mlp_choices)],
            "head_choices": list(space.head_choices),
            "size": f"{float(space.size()):.3e}",
            "layer_order": list(space.layer_order),
        },
        "load_seconds": round(loaded.load_seconds, 3),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    from toolkit.progress import stdout_console
    from rich.table import Table

    t = Table(title=f"toolkit info {args.model}", show_header=False)
    for k, v in info.items():
        t.add_row(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v))
    stdout_console().print(t)
    return 0
