"""``toolkit verify DIR``: re-check an exported artifact's file hashes and its outputs against its manifest.

No code from the folder runs unless ``--trust-remote-code`` is given (see :mod:`toolkit.export.hf`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXAMPLES = """examples:
  toolkit verify run/export/onnx
  toolkit verify run/export          # every format folder inside
  toolkit verify some/hf-folder --trust-remote-code   # run a modeling file that is not the toolkit's own
"""


def register(sub) -> None:
    from toolkit.cli.common import positive_int

    p = sub.add_parser("verify", help="re-check an exported artifact (hashes + teacher-forced parity)", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="what toolkit export wrote: one format's folder (with manifest.json), or the --out folder (every format in it)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for the check (default: the engine's)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let transformers import the artifact's own modeling/tokenizer code (off: the toolkit "
                        "loads it with its own classes and refuses a modeling file that is not its own)")
    p.set_defaults(func=run)


def run(args) -> int:
    from toolkit.errors import UserError
    from toolkit.export.verify import verify

    root = Path(args.dir)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder")
    folders = [root] if (root / "manifest.json").exists() else sorted(p.parent for p in root.glob("*/manifest.json"))
    if not folders:
        raise UserError(f"{root}: no manifest.json here or in its sub-folders")
    for f in folders:
        print(json.dumps(verify(f, args.threads, trust_remote_code=args.trust_remote_code)))
    return 0
