"""``toolkit verify DIR``: re-check an exported artifact's file hashes and its outputs against its manifest."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXAMPLES = """examples:
  toolkit verify run/export/onnx
  toolkit verify run/export          # every format folder inside
"""


def register(sub) -> None:
    p = sub.add_parser("verify", help="re-check an exported artifact (hashes + parity)", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=run)


def run(args) -> int:
    from toolkit.errors import UserError
    from toolkit.export import verify

    root = Path(args.dir)
    folders = [root] if (root / "manifest.json").exists() else sorted(p.parent for p in root.glob("*/manifest.json"))
    if not folders:
        raise UserError(f"{root}: no manifest.json here or in its sub-folders")
    for f in folders:
        print(json.dumps(verify(f, args.threads)))
    return 0
