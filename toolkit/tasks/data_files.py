"""The data files a task definition points at (JSON array or JSONL, CSV, Parquet), read as
``datasets.load_dataset(builder)`` would give their rows, with one-line errors naming the file and line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from toolkit.errors import ConfigError, UserError


def _csv_value(v: str, kind: type) -> Any:
    return None if v == "" else kind(v)


def read_rows(path: Path, builder: str) -> list[tuple[int, dict]]:
    """(line or row number, row) of one data file, as ``datasets.load_dataset(builder)`` would give them."""
    try:
        if builder == "parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise UserError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
            import pyarrow

            try:
                return [(i + 1, r) for i, r in enumerate(pq.read_table(path).to_pylist())]
            except pyarrow.ArrowException as exc:
                raise UserError(f"{path}: not a readable Parquet file ({' '.join(str(exc).split())[:120]})") from None
        # utf-8-sig: a byte-order mark is not part of the first CSV header or JSON row
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise UserError(f"{path}: cannot read data file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason})") from None
    rows: list[tuple[int, dict]] = []
    if builder == "csv":
        # newline="": a quoted field may span lines (csv's own rule), and no other line break splits a row
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            raw = [(reader.line_num, r) for r in reader]
        except csv.Error as exc:
            raise ConfigError("<csv>", f"not readable CSV ({exc})", f"{path}:{reader.line_num}") from None
        cols = reader.fieldnames or []
        kinds = {}
        for c in cols:  # pandas' inference, as datasets' csv builder: a column of ints is int, of numbers float
            vals = [r[c] for _, r in raw if r[c] not in ("", None)]
            kind: type = str
            for k in (int, float):
                try:
                    [k(v) for v in vals]
                    kind = k
                    break
                except ValueError:
                    continue
            kinds[c] = kind if vals else str
        return [(n, {c: _csv_value(r[c] or "", kinds[c]) for c in cols}) for n, r in raw]
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError("<json>", f"invalid JSON ({exc.msg})", f"{path}:{exc.lineno}") from None
        for i, obj in enumerate(data):
            if not isinstance(obj, dict):
                raise ConfigError(f"[{i}]", f"expected a JSON object per row, got {type(obj).__name__}", str(path))
            rows.append((i + 1, obj))
    else:
        # JSON Lines are split at "\n" only: U+2028 or U+0085 inside a string value is text, not a line break
        for n, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError("<json>", f"invalid JSON ({exc.msg} at column {exc.colno})", f"{path}:{n}") from None
            if not isinstance(obj, dict):
                raise ConfigError("<row>", f"expected a JSON object, got {type(obj).__name__}", f"{path}:{n}")
            rows.append((n, obj))
    return rows
