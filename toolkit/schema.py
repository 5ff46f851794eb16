"""The one way files a user hands the toolkit are validated: field checks, typed records, and readers.

Every file a user can give (a device profile, a sub-network or search-space JSON, a predictor, a
fine-tuning config, a Pareto front, a task file) is checked through the helpers here, so that a bad
value is always one line, ``FILE: dotted.field: problem``, raised as :class:`toolkit.errors.ConfigError`.

* A *check* is a function ``value -> normalised value`` that raises :class:`Invalid` (a problem, and
  optionally the sub-field it lies in). The common ones are below: :func:`number`, :func:`positive`,
  :func:`count`, :func:`text`, :func:`flag`, :func:`choice`, :func:`name`, :func:`date`, ...
* A :class:`Record` is a frozen dataclass whose fields carry their check (``x: int = checked(count)``);
  it validates itself in ``__post_init__`` (so one built in Python is checked too) and reads a mapping
  with :meth:`Record.from_mapping`, refusing unknown and missing fields with their dotted path.
* :func:`read_text_file`, :func:`parse_json` and :func:`parse_yaml` read a file with one-line errors; a
  key repeated within one mapping is an error in both formats (the parsers would keep the last one).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import re
from dataclasses import field
from typing import Any, Callable, ClassVar

import yaml

from toolkit.errors import ConfigError

__all__ = ["Invalid", "MISSING", "show", "number", "real", "index", "mapping_of", "fields", "positive", "positive_bytes", "nonnegative", "count", "integer",
           "integers", "optional", "text", "string", "strings", "free_text", "flag", "choice", "name", "date", "get", "check_value",
           "checked", "Record", "read_text_file", "parse_json", "parse_yaml", "check_duplicate_keys"]

MISSING = "missing required field"  # the one wording for an absent required field


class Invalid(ValueError):
    def __init__(self, problem: str, subfield: str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.subfield = subfield


def subpath(path: str, subfield: str | None) -> str:
    """``path`` extended by a sub-field: ``mlp`` + ``[2]`` -> ``mlp[2]``, ``gpu`` + ``name`` -> ``gpu.name``."""
    if not subfield:
        return path
    return f"{path}{subfield}" if subfield.startswith("[") else f"{path}.{subfield}"


def show(v: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}
    if v is None:
        return "null"
    text = repr(v)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{kind.get(type(v), type(v).__name__)} {text}"


def number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise Invalid(f"expected a number, got {show(v)}")
    if isinstance(v, str):
        try:
            v = float(v.replace("_", ""))
        except ValueError:
            raise Invalid(f"expected a number, got {show(v)}") from None
    if not math.isfinite(v):
        raise Invalid(f"must be finite, got {v}")
    return v


def real(v: Any) -> float:
    """A number written as a number (JSON the toolkit wrote: a string or a boolean there means an edit by
    hand), finite, as a float."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Invalid(f"expected a number, got {v!r}")
    if not math.isfinite(v):
        raise Invalid(f"must be finite, got {v}")
    return float(v)


def index(v: Any) -> int:
    """A non-negative integer (a position, a count that may be 0)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise Invalid(f"expected a non-negative integer, got {show(v)}")
    if v < 0:
        raise Invalid(f"must be >= 0, got {v}")
    return v


def mapping_of(check: Callable[[Any], Any], what: str = "values") -> Callable[[Any], dict]:
    """A mapping whose every value passes ``check``; a bad value is named by its key."""

    def checked_mapping(v: Any) -> dict:
        if not isinstance(v, dict):
            raise Invalid(f"expected an object of {what}, got {type(v).__name__}")
        out = {}
        for k, x in v.items():
            try:
                out[str(k)] = check(x)
            except Invalid as bad:
                raise Invalid(bad.problem, subpath(str(k), bad.subfield)) from None
        return out

    return checked_mapping


def positive(v: Any) -> float:
    x = float(number(v))
    if x <= 0:
        raise Invalid(f"must be > 0, got {x:g}")
    return x


def positive_bytes(v: Any) -> int:
    x = number(v)
    if float(x) != math.floor(float(x)):
        raise Invalid(f"must be a whole number of bytes, got {x!r}")
    if x <= 0:
        raise Invalid(f"must be > 0, got {x:g}")
    return int(x)


def nonnegative(v: Any) -> float:
    x = float(number(v))
    if x < 0:
        raise Invalid(f"must be >= 0, got {x:g}")
    return x


def count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise Invalid(f"expected a positive integer, got {show(v)}")
    if v < 1:
        raise Invalid(f"must be >= 1, got {v}")
    return v


def integer(v: Any) -> int:
    """Any integer (numpy's too), not a boolean."""
    if isinstance(v, bool) or not isinstance(v, (int, _np_integer())):
        raise Invalid(f"expected an integer, got {v!r}")
    return int(v)


def integers(v: Any) -> tuple[int, ...]:
    """A list of integers, as a tuple; the bad entry is named by its index."""
    if not isinstance(v, (list, tuple)):
        raise Invalid(f"expected a list of integers, got {type(v).__name__}")
    out = []
    for i, x in enumerate(v):
        try:
            out.append(integer(x))
        except Invalid as bad:
            raise Invalid(bad.problem, f"[{i}]") from None
    return tuple(out)


def _np_integer() -> type:
    import numpy as np  # numpy is a core dependency; imported here so schema stays cheap to import

    return np.integer


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def opt(v: Any) -> Any:
        return None if v is None else check(v)

    return opt


def text(v: Any) -> str:
    if not isinstance(v, str):
        raise Invalid(f"expected a string, got {show(v)}")
    v = " ".join(v.split())
    if not v:
        raise Invalid("must not be empty")
    return v


def string(allow_empty: bool = True) -> Callable[[Any], str]:
    """A string kept exactly as written (task text: whitespace matters)."""

    def check(v: Any) -> str:
        if not isinstance(v, str):
            raise Invalid(f"expected a string, got {type(v).__name__}")
        if not allow_empty and not v:
            raise Invalid("must not be empty")
        return v

    return check


def strings(v: Any) -> list[str]:
    """A non-empty list of non-empty strings, kept exactly as written."""
    if not isinstance(v, list):
        raise Invalid(f"expected a list of strings, got {type(v).__name__}")
    if not v:
        raise Invalid("must not be empty")
    for i, s in enumerate(v):
        if not isinstance(s, str):
            raise Invalid(f"expected a string, got {type(s).__name__}", f"[{i}]")
        if not s:
            raise Invalid("must not be an empty string", f"[{i}]")
    return v


def free_text(v: Any) -> str:
    if v is None:
        return ""
    if not isinstance(v, str):
        raise Invalid(f"expected a string, got {show(v)}")
    return v.strip()


def flag(v: Any) -> bool:
    if not isinstance(v, bool):
        raise Invalid(f"expected true or false, got {show(v)}")
    return v


def choice(*options: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in options:
            raise Invalid(f"expected one of {', '.join(options)}, got {show(v)}")
        return v

    return check


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def name(v: Any) -> str:
    if not isinstance(v, str) or not _NAME.match(v):
        raise Invalid(f"expected 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit), got {show(v)}")
    return v


def date(v: Any) -> str:
    if isinstance(v, (_dt.date, _dt.datetime)):  # YAML reads unquoted ISO dates as date objects
        return v.isoformat()
    if not isinstance(v, str):
        raise Invalid(f"expected an ISO 8601 date, got {show(v)}")
    try:
        _dt.datetime.fromisoformat(v)
    except ValueError:
        raise Invalid(f"expected an ISO 8601 date (e.g. 2026-11-24T03:00:00+00:00), got {show(v)}") from None
    return v


def get(obj: Any, key: str, check: Callable[[Any], Any], where: str | None = None,
        default: Any = dataclasses.MISSING) -> Any:
    """``check(obj[key])``, or ``default`` when the key is absent (required when there is no default); a
    failed check is one :class:`ConfigError` naming ``key`` (and the bad sub-field) in ``where``."""
    if key not in obj:
        if default is dataclasses.MISSING:
            raise ConfigError(key, MISSING, where)
        return default
    return check_value(obj[key], check, key, where)


def check_value(value: Any, check: Callable[[Any], Any], path: str, where: str | None = None) -> Any:
    """``check(value)``; a failed check is one :class:`ConfigError` naming ``path`` (and the bad sub-field)."""
    try:
        return check(value)
    except Invalid as bad:
        raise ConfigError(subpath(path, bad.subfield), bad.problem, where) from None


def fields(obj: Any, path: str, allowed, required=(), file: str | None = None) -> dict:
    """``obj`` as a mapping with only ``allowed`` keys and every ``required`` one; else one ConfigError
    naming ``path.key`` (``path`` "": the file's top level)."""
    where = path or "<root>"
    if not isinstance(obj, dict):
        raise ConfigError(where, f"expected an object, got {type(obj).__name__}", file)
    for k in obj:
        if k not in allowed:
            raise ConfigError(f"{path}.{k}" if path else k, "unknown field", file)
    for k in required:
        if k not in obj:
            raise ConfigError(f"{path}.{k}" if path else k, MISSING, file)
    return obj


def checked(fn: Callable[[Any], Any], default: Any = dataclasses.MISSING, **kw) -> Any:
    if default is dataclasses.MISSING and "default_factory" not in kw:
        return field(metadata={"check": fn})
    return field(default=default, metadata={"check": fn}, **kw)


class Record:
    """A frozen section of a profile: each field's ``metadata['check']`` validates and normalises it."""

    _SECTION: ClassVar[str] = ""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            if check is None:
                continue
            path = f"{self._SECTION}.{f.name}" if self._SECTION else f.name
            object.__setattr__(self, f.name, check_value(getattr(self, f.name), check, path))

    @classmethod
    def from_mapping(cls, d: Any, path: str):
        if not isinstance(d, dict):
            raise ConfigError(path, f"expected a mapping, got {show(d)}")
        names = [f.name for f in dataclasses.fields(cls)]
        for k in d:
            if k not in names:
                raise ConfigError(f"{path}.{k}", f"unknown field (known: {', '.join(names)})")
        for f in dataclasses.fields(cls):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required and f.name not in d:
                raise ConfigError(f"{path}.{f.name}", MISSING)
        return cls(**d)

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = dict(v) if isinstance(v, dict) else v
        return out


def read_text_file(path: str | os.PathLike, expected: str = "JSON") -> str:
    """The UTF-8 text of a file the user named; a one-line :class:`ConfigError` if it cannot be read
    or is not text (a binary file passed as a config)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read ({exc.strerror})", str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError("<file>", f"not a UTF-8 text file (byte {exc.start}: {exc.reason}); expected {expected}",
                          str(path)) from None


def parse_json(text: str, file: str | None = None) -> Any:
    """``json.loads`` with one-line errors; a key repeated within one object is an error, not last-wins."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise ConfigError(k, "appears twice in one object", file)
            out[k] = v
        return out

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"line {exc.lineno}", f"invalid JSON ({exc.msg})", file) from None
    except RecursionError:
        raise ConfigError("<root>", "JSON nested too deeply", file) from None


def check_duplicate_keys(text: str, file: str | None) -> None:
    """PyYAML keeps the last of two equal keys; a duplicated key is an error instead.

    Walks the node graph from ``yaml.compose`` (SafeLoader: composes nodes, constructs no objects). A
    merge key (``<<: *anchor``) is not a duplicate: keys it brings in may be overridden, as YAML says."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    stack = [(root, "")]
    done: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in done:  # an alias: the anchored node was walked already
            continue
        done.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in node.value:
                if k.tag == "tag:yaml.org,2002:merge":
                    continue
                key = str(k.value)
                full = f"{path}.{key}" if path else key
                if key in seen:
                    raise ConfigError(full, f"duplicate key (line {k.start_mark.line + 1})", file)
                seen.add(key)
                stack.append((v, full))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((v, path) for v in node.value)


def parse_yaml(text: str, file: str | None = None, what: str = "file") -> Any:
    """``yaml.safe_load`` (no tags that construct objects) with one-line errors and duplicate keys refused."""
    try:
        check_duplicate_keys(text, file)
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else what
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(where, f"not valid YAML ({problem})", file) from None
    except RecursionError:
        raise ConfigError(what, "YAML nested too deeply", file) from None
