"""The one append-only journal: JSONL records, each fsynced before it counts, that survive ``kill -9``.

:class:`JournalFile` is the file: it knows lines, not what is in them. Used by ``search``
(``run/evaluations.jsonl``, one evaluation per line, read and validated by
:class:`toolkit.search.evaluations.EvaluationJournal`) and by ``calibrate`` (``predictor.measurements.jsonl``,
one measurement per line), so that a killed run resumes without redoing what it already has.

**Format.** One JSON object per line, ``\\n``-terminated, UTF-8. A journal may start with a *header*
line: the settings that make its records valid (model hash, device, workload, repeats, ...). On open,
the header is compared with the current run's; any difference is an error naming the differing fields,
never a silent deletion of earlier measurements. (The search journal has no header line: its
``run.json`` plays that part.)

**Crash safety.** :meth:`JournalFile.append` writes one line, flushes and fsyncs before returning, so a
record that was appended survives a kill. A kill *during* a write leaves a last line without its
``\\n`` (a torn line). On open, a torn last line is dropped and the file itself is truncated to the end
of the last complete line, so the next append starts on a fresh line instead of being glued onto the
fragment. A torn header (the process died while creating the journal) counts as an empty journal and
the header is rewritten. A *read-only* journal (``JournalFile(..., readonly=True)``, what ``toolkit report``
and ``toolkit export`` use) skips a torn tail without truncating it and never writes anything: beside a
live search, the "torn" last line may be the one the search is writing at that moment. Any *complete* line that is not a JSON object, or repeats a key within the
object, is corruption (a kill never produces it): a one-line error naming the file and line number.

Why hand-written: the whole contract is ~100 lines of file handling whose crash behaviour we test with
real ``kill -9``; a database (sqlite) would hide the one property we need to see, and change the format.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from toolkit.errors import ConfigError, UserError
from toolkit.fileio import atomic_write_text

__all__ = ["JournalFile", "JournalLine", "line_error"]

# Test hook (like TOOLKIT_EXPORT_TEST_SLEEP): sleep this many seconds between the two halves of every
# appended line, so a test can kill the process in the middle of a write and get a real torn line.
TEAR_HOOK = "TOOLKIT_JOURNAL_TEST_SLEEP"


def line_error(path: str | os.PathLike, line: int, field: str | None, problem: str) -> ConfigError:
    """The one-line error for a bad journal line: ``<file>: line <n>: <field>: <problem>``."""
    return ConfigError(f"line {line}: {field}" if field else f"line {line}", problem, str(path))


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


class _DuplicateKey(ValueError):
    pass


def _parse_line(path: Path, line_no: int, raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError:
        raise line_error(path, line_no, None, "not UTF-8 text (corrupt journal)") from None
    except _DuplicateKey as exc:
        raise line_error(path, line_no, str(exc.args[0]), "appears twice in one record (corrupt journal)") from None
    except json.JSONDecodeError as exc:
        raise line_error(path, line_no, None, f"invalid JSON ({exc.msg}) (corrupt journal)") from None
    except RecursionError:
        raise line_error(path, line_no, None, "JSON nested too deeply (corrupt journal)") from None
    if not isinstance(obj, dict):
        raise line_error(path, line_no, None, f"expected a JSON object, got {type(obj).__name__} (corrupt journal)")
    return obj


class JournalLine(dict):
    """One record read back from a journal, with the 1-based line number it came from."""

    line: int


class JournalFile:
    """An append-only JSONL file; see the module docstring for the format and crash behaviour.

    ``header``: the settings this run writes as the first line, or ``None`` for a journal without a
    header line. ``what`` names the file's role in error messages (e.g. ``"calibration journal"``).
    After construction, :attr:`records` holds every complete record in file order.

    ``readonly``: only read. A torn last line (or torn header) is skipped, not truncated (it may be a
    line another process is writing right now), no header is written, and :meth:`append` refuses.
    """

    def __init__(self, path: str | os.PathLike, header: Mapping[str, Any] | None = None, what: str = "journal",
                 readonly: bool = False):
        self.path = Path(path)
        self.header = dict(header) if header is not None else None
        self.what = what
        self.readonly = readonly
        self.records: list[JournalLine] = []
        self._open()

    # -- open / recover -----------------------------------------------------------------------------
    def _open(self) -> None:
        path = self.path
        if path.is_dir():
            raise UserError(f"{path}: is a directory, not a {self.what}")
        raw = path.read_bytes() if path.exists() else b""
        complete = raw[: raw.rfind(b"\n") + 1]  # everything up to the last newline; the rest is torn
        lines = complete.splitlines(keepends=True)
        first = 1
        if self.header is not None:
            if not lines:  # no journal yet, or only a torn header: start afresh
                if self.readonly:
                    return
                atomic_write_text(path, json.dumps(self.header) + "\n")
                return
            old = _parse_line(path, 1, lines[0])
            self._check_header(old)
            lines, first = lines[1:], 2
        for i, line in enumerate(lines):
            rec = JournalLine(_parse_line(path, first + i, line))
            rec.line = first + i
            self.records.append(rec)
        if len(complete) != len(raw) and not self.readonly:
            with open(path, "r+b") as fh:  # drop the torn tail: the next append starts a fresh line
                fh.truncate(len(complete))
                fh.flush()
                os.fsync(fh.fileno())

    def _check_header(self, old: Mapping[str, Any]) -> None:
        assert self.header is not None
        fields = sorted(k for k in set(old) | set(self.header) if old.get(k, _MISSING) != self.header.get(k, _MISSING))
        if fields:
            diffs = "; ".join(f"{k} was {old.get(k)!r}, now {self.header.get(k)!r}" for k in fields)
            raise UserError(f"{self.path}: line 1: header: this {self.what} was written by a run with other settings "
                            f"({diffs}); rerun with the original settings to resume, or delete the file to start afresh")

    # -- use ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[JournalLine]:
        return iter(self.records)

    def append(self, record: Mapping[str, Any]) -> JournalLine:
        """Write ``record`` as one line and fsync it; it counts once this returns."""
        return self.append_many([record])[0]

    def append_many(self, records: Sequence[Mapping[str, Any]]) -> list[JournalLine]:
        """Write ``records`` as consecutive lines with one fsync (a parallel run's finished batch); they
        count once this returns. A kill mid-write leaves whole lines before a torn one: those count."""
        if self.readonly:
            raise RuntimeError(f"{self.path}: {self.what} was opened read-only")
        if not records:
            return []
        data = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
        with open(self.path, "ab") as fh:
            pause = os.environ.get(TEAR_HOOK)
            if pause:
                half = len(data) // 2
                fh.write(data[:half])
                fh.flush()
                os.fsync(fh.fileno())
                time.sleep(float(pause))
                data = data[half:]
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        out = []
        for record in records:
            rec = JournalLine(record)
            rec.line = (1 if self.header is not None else 0) + len(self.records) + 1
            self.records.append(rec)
            out.append(rec)
        return out


_MISSING = object()
