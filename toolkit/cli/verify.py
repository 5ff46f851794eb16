"""``toolkit verify DIR``: re-check an exported artifact's file hashes and its outputs against its manifest.

No code from the folder runs unless ``--trust-remote-code`` is given (see :mod:`toolkit.export.hf`).
People get one line per folder as it passes. ``--json`` prints one JSON object once every folder has
passed, ``{"dir": DIR, "ok": true, "folders": [...]}``, one result per folder (a list of one when DIR
is one format's folder), so a script parses one shape for both. The first folder that fails ends the
command: one line on stderr, exit 2, and with --json nothing on stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXAMPLES = """examples:
  toolkit verify run/export/onnx
  toolkit verify run/export          # every format folder inside, one line each
  toolkit verify some/hf-folder --trust-remote-code   # run a modeling file that is not the toolkit's own
  toolkit verify run/export --json   # one JSON object for all of them (one folder: a list of one):
      {"dir": "run/export", "ok": true, "folders": [{"folder": "run/export/hf", "format": "hf", "files": ...,
       "method": "teacher-forced", "positions": ..., "max_abs_logit_diff": ..., "near_ties": ...,
       "trust_remote_code": false, "ok": true}, ...]}   (a gguf folder's also has gguf_type and runtime)

A folder that fails ends the command: one line on stderr, exit 2 (with --json nothing on stdout).
"""


def register(sub) -> None:
    from toolkit.cli.common import positive_int

    p = sub.add_parser("verify", help="re-check an exported artifact (hashes + teacher-forced parity)", epilog=EXAMPLES,
                       description="Re-check what toolkit export wrote: every file's hash, and the artifact's outputs\n"
                       "against its manifest's reference. Prints one line per folder that passes; with --json, one\n"
                       "JSON object that holds the list of the folders' results (a list of one for one folder).",
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
    results = []
    for f in folders:
        r = verify(f, args.threads, trust_remote_code=args.trust_remote_code)  # a failure is a UserError: exit 2
        results.append(r)
        if not args.json:
            print(_line(r), flush=True)  # as each passes: a slow folder does not hide the ones done
    if args.json:
        print(json.dumps({"dir": str(root), "ok": all(r["ok"] for r in results), "folders": results}, indent=2))
    return 0


def _line(r: dict) -> str:
    """One folder's result for people: ``ok  onnx  run/export/onnx  (12 files hashed; teacher-forced ...)``."""
    kind = r["format"] + (f" {r['gguf_type']}" if r.get("gguf_type") else "")
    runtime = f" in {r['runtime']}" if r.get("runtime") else ""
    how = [f"{r['files']} files hashed",
           f"{r['method']}{runtime} over {r['positions']} positions: max |logit diff| {r['max_abs_logit_diff']:.2e}"]
    if r.get("near_ties"):
        how.append(f"{r['near_ties']} near ties")
    if r.get("trust_remote_code"):
        how.append("its own code ran (--trust-remote-code)")
    return f"{'ok' if r['ok'] else 'FAILED'}  {kind}  {r['folder']}  ({'; '.join(how)})"
