"""lm-eval's ``doc_to_text`` / ``doc_to_choice`` / ``doc_to_target`` on one row, as
``lm_eval/api/task.py`` ``ConfigurableTask`` applies them: a string that names a column is that column,
anything else a Jinja template rendered in an immutable sandbox (``StrictUndefined``, trailing newlines
kept, a ``regex_replace`` filter); a rendered index or literal list is read as lm-eval reads it."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from toolkit.errors import ConfigError


def _regex_replace(string: str, pattern: str, repl: str, count: int = 0) -> str:
    return re.sub(pattern, repl, string, count=count)


@lru_cache(maxsize=1)
def _jinja():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters["regex_replace"] = _regex_replace
    return env


@lru_cache(maxsize=256)
def _compiled(template: str):
    return _jinja().from_string(template)


def render(template: str, doc: dict, key: str, where: str) -> str:
    from jinja2 import TemplateError

    try:
        return _compiled(template).render(**doc)
    except TemplateError as exc:
        raise ConfigError(key, f"template failed on this row ({type(exc).__name__}: {exc})", where) from None
    except Exception as exc:  # anything a template does wrong on one row (re.error, ZeroDivisionError, ...)
        raise ConfigError(key, f"template failed on this row ({type(exc).__name__}: {exc})", where) from None


def _column(doc: dict, column: str, key: str, where: str) -> Any:
    """A doc_to_* that names a column of the evaluated split, on a row (a few-shot row from another split
    or fewshot_config.samples) that may not have it."""
    if column not in doc:
        raise ConfigError(key, f"names the column {column!r}, which this row does not have", where)
    return doc[column]


def _is_index(s: str) -> bool:
    """lm-eval reads a rendered ``"2"`` as the index 2 (``str.isdigit``); only ASCII digits are an index here
    ("²" is a digit to ``isdigit`` and a SyntaxError to ``literal_eval``)."""
    return s.isascii() and s.isdigit()


@dataclass(frozen=True)
class Docs:
    """lm-eval's doc_to_* for one task: ``features`` are the evaluated split's columns."""

    features: frozenset
    has_choice: bool

    def text(self, doc: dict, t: Any, where: str) -> Any:
        if isinstance(t, int):
            return t
        if t in self.features:
            return _column(doc, t, "doc_to_text", where)
        s = render(t, doc, "doc_to_text", where)
        return int(s) if _is_index(s) and self.has_choice else s

    def target(self, doc: dict, t: Any, where: str) -> Any:
        if isinstance(t, (int, list)):
            return t
        if t in self.features:
            return _column(doc, t, "doc_to_target", where)
        s = render(t, doc, "doc_to_target", where)
        if _is_index(s) and self.has_choice:
            return int(s)
        if len(s) >= 2 and s[0] == "[" and s[-1] == "]":
            try:
                return ast.literal_eval(s)
            except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
                return s
        return s

    def choice(self, doc: dict, t: Any, where: str) -> list:
        if isinstance(t, list):
            out = t
        elif isinstance(t, dict):
            out = list(t.values())
        elif t in self.features:
            out = _column(doc, t, "doc_to_choice", where)
        else:
            s = render(t, doc, "doc_to_choice", where)
            try:
                out = ast.literal_eval(s)
            except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
                raise ConfigError("doc_to_choice", f"rendered {s[:60]!r}, not a list literal", where) from None
        if not isinstance(out, list) or len(out) < 2 or not all(isinstance(c, str) and c for c in out):
            raise ConfigError("doc_to_choice", f"expected a list of at least 2 non-empty strings, got {str(out)[:80]}", where)
        return out


def gold_choices(target: Any, choices: list[str], where: str) -> tuple[int, ...] | int:
    """lm-eval's gold: an index, a choice's text, or a list of indices (several true choices)."""
    if isinstance(target, list):
        if not target or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(choices) for i in target):
            raise ConfigError("doc_to_target", f"{target!r}: expected indices of the {len(choices)} choices", where)
        if len(set(target)) != len(target):
            raise ConfigError("doc_to_target", f"{target!r}: a choice is listed twice (mc2 would count it twice)", where)
        return tuple(target)
    if isinstance(target, bool):
        raise ConfigError("doc_to_target", f"{target!r}: expected a choice index or text", where)
    if isinstance(target, int):
        if not 0 <= target < len(choices):
            raise ConfigError("doc_to_target", f"{target} is out of range for {len(choices)} choices", where)
        return target
    if isinstance(target, str) and target in choices:
        return choices.index(target)
    raise ConfigError("doc_to_target", f"{str(target)[:60]!r} is neither a choice index nor one of the choices", where)
