"""Reading plain training / calibration text: one reader for every stage that consumes raw documents.

A file is either ``.jsonl`` (one JSON object per line with a string ``"text"`` field) or plain text, whose
documents are separated by blank lines. Fine-tuning packs the documents; GPTQ calibration joins them and
samples windows; both read them here so a malformed line gives the same one-line error everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.errors import ConfigError, UserError


def read_texts(path: str | Path, what: str = "text") -> list[str]:
    """The documents of ``path``; ``what`` names the file's role in errors ("training text", ...)."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UserError(f"{path}: cannot read {what} ({reason})") from None
    if path.suffix == ".jsonl":
        texts = []
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"line {i}", f"not valid JSON ({exc.msg})", str(path)) from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ConfigError(f"line {i}: text", 'each line must be a JSON object with a string "text" field',
                                  str(path))
            texts.append(row["text"])
    else:
        texts = [t for t in raw.split("\n\n") if t.strip()]
    if not texts:
        raise UserError(f"{path}: no {what} in the file")
    return texts
