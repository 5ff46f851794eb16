"""Profile files: the search path, YAML reading, ``extends:`` resolution and the shipped profiles.

Shipped profiles are package data, ``toolkit/profiles/shipped/*.yaml``, found with :mod:`importlib.resources`
wherever the package is installed (a wheel, an editable checkout; ``profiles/`` at the top of a checkout
is a link to that folder); ``$TOOLKIT_PROFILES_DIR`` (``os.pathsep``-separated) is searched first.

**extends.** A profile may ``extends:`` another (searched in the including file's folder, then
:func:`profile_search_path`). Mappings merge key by key, anything else is replaced; the child must set
its own ``name``, and a child that overrides a figure must also give that figure's provenance (an
inherited source would otherwise vouch for a number it never stated). Cycles and unknown parents are
errors. Every error is a :class:`toolkit.errors.ConfigError` naming the file the offending value came
from and the dotted field. Duplicate keys are rejected (PyYAML silently keeps the last).

Writing is :meth:`DeviceProfile.save <toolkit.profiles.schema.DeviceProfile.save>`: a profile in memory is
always resolved, so what it writes has no ``extends:``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from toolkit import schema
from toolkit.errors import ConfigError, UserError
from toolkit.profiles.machine import describe_current_machine
from toolkit.profiles.schema import DeviceProfile
from toolkit.schema import show

PROFILES_DIR_ENV = "TOOLKIT_PROFILES_DIR"
YAML_SUFFIXES = (".yaml", ".yml")


def shipped_profiles_dir() -> Path:
    """The folder of the profiles shipped inside the package (``toolkit/profiles/shipped``)."""
    from importlib.resources import files

    # A file-system install (wheel or editable) gives a real folder; a zipped install is not supported.
    return Path(str(files("toolkit.profiles").joinpath("shipped")))


def profile_search_path() -> list[Path]:
    """Folders searched for profiles by name, in order: ``$TOOLKIT_PROFILES_DIR`` entries, then the
    profiles shipped with the package (:func:`shipped_profiles_dir`)."""
    dirs = [Path(p) for p in os.environ.get(PROFILES_DIR_ENV, "").split(os.pathsep) if p]
    dirs.append(shipped_profiles_dir())
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def list_profiles() -> dict[str, Path]:
    """Profile name (file stem) -> file, over the search path; earlier folders win."""
    found: dict[str, Path] = {}
    for d in profile_search_path():
        for p in sorted(d.iterdir()):
            if p.suffix in YAML_SUFFIXES and p.is_file():
                found.setdefault(p.stem, p)
    return found


def _looks_like_path(ref: str) -> bool:
    return ref.endswith(YAML_SUFFIXES) or "/" in ref or os.sep in ref


def find_profile(name_or_path: str | os.PathLike) -> Path:
    """The file for a profile name (searched on :func:`profile_search_path`) or an explicit path."""
    ref = str(name_or_path)
    if _looks_like_path(ref) or Path(ref).is_file():
        p = Path(ref)
        if not p.exists():
            raise UserError(f"{ref}: no such profile file")
        if not p.is_file():
            raise UserError(f"{ref}: not a file")
        return p
    for d in profile_search_path():
        for suffix in YAML_SUFFIXES:
            if (d / f"{ref}{suffix}").is_file():
                return d / f"{ref}{suffix}"
    where = ", ".join(str(d) for d in profile_search_path()) or f"nowhere (set ${PROFILES_DIR_ENV})"
    raise UserError(f"{ref}: no such profile (looked in {where}); `toolkit profile ls` lists them")


def _read_yaml(path: Path) -> dict:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{file}: no such profile file") from None
    except UnicodeDecodeError:
        raise ConfigError("profile", "not UTF-8 text", file) from None
    except OSError as exc:
        raise UserError(f"{file}: cannot read ({exc.strerror or exc})") from None
    data = schema.parse_yaml(text, file, what="profile")
    if data is None:
        raise ConfigError("profile", "empty file (expected a mapping of profile fields)", file)
    if not isinstance(data, dict):
        raise ConfigError("profile", f"expected a mapping of fields at the top level, got {show(data)}", file)
    return data


def _leaves(v: Any, path: str):
    if isinstance(v, dict) and v:
        for k, sub in v.items():
            yield from _leaves(sub, f"{path}.{k}" if path else str(k))
    else:
        yield path


def _merge(parent: dict, child: dict, origins: dict[str, str], child_file: str, prefix: str = "") -> tuple[dict, dict]:
    """Deep-merge ``child`` over ``parent`` (mappings key by key, anything else and each provenance entry
    replaced), tracking which file each leaf came from."""
    out = dict(parent)
    for k, v in child.items():
        path = f"{prefix}{k}"
        # A figure's provenance is one record: the child's replaces the parent's (never a measured+spec mix).
        if isinstance(v, dict) and isinstance(out.get(k), dict) and prefix != "provenance.":
            out[k], origins = _merge(out[k], v, origins, child_file, path + ".")
        else:
            out[k] = v
            origins = {p: f for p, f in origins.items() if not (p == path or p.startswith(path + "."))}
            origins.update({leaf: child_file for leaf in _leaves(v, path)})
    return out, origins


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _overridden_figures(raw: dict) -> list[str]:
    """Figure paths a (child) file sets itself."""
    out = []
    for sec, key in (("compute", "cores"), ("compute", "threads"), ("memory", "capacity_bytes"),
                     ("memory", "bandwidth_bytes_per_s")):
        if _get(raw, sec, key) is not None:
            out.append(f"{sec}.{key}")
    peaks = _get(raw, "compute", "peak_flops")
    if isinstance(peaks, dict):
        out += [f"compute.peak_flops.{dt}" for dt in peaks]
    return out


def _find_extends(ref: str, base_dir: Path) -> Path | None:
    if _looks_like_path(ref):
        p = Path(ref) if Path(ref).is_absolute() else base_dir / ref
        return p if p.is_file() else None
    for d in [base_dir, *profile_search_path()]:
        for suffix in YAML_SUFFIXES:
            if (d / f"{ref}{suffix}").is_file():
                return d / f"{ref}{suffix}"
    return None


def _resolve(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """The merged mapping of ``path`` and its ``extends:`` ancestors, and each leaf's file of origin."""
    file = str(path)
    raw = _read_yaml(path)
    ref = raw.pop("extends", None)
    if ref is None:
        return raw, {leaf: file for leaf in _leaves(raw, "")}
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError("extends", f"expected a profile name or file, got {show(ref)}", file)
    if "name" not in raw:
        raise ConfigError("name", "required: a profile that extends another must name itself", file)
    parent_path = _find_extends(ref.strip(), path.parent)
    if parent_path is None:
        where = ", ".join(str(d) for d in [path.parent, *profile_search_path()])
        raise ConfigError("extends", f"unknown profile {ref!r} (looked in {where})", file)
    here = path.resolve()
    seen = [p.resolve() for p in chain] + [here]
    if parent_path.resolve() in seen:
        cycle = [p.name for p in (*chain, path, parent_path)]
        raise ConfigError("extends", f"cycle: {' -> '.join(cycle)}", file)
    parent, origins = _resolve(parent_path, (*chain, path))
    prov = raw.get("provenance") if isinstance(raw.get("provenance"), dict) else {}
    for fig in _overridden_figures(raw):
        if fig not in prov:
            raise ConfigError(f"provenance.{fig}", "this file overrides an inherited figure, so it must give its provenance", file)
    return _merge(parent, raw, origins, file)


def _origin(fld: str, origins: dict[str, str], default: str) -> str:
    if fld in origins:
        return origins[fld]
    below = {f for p, f in origins.items() if p.startswith(fld + ".")}
    if len(below) == 1:
        return below.pop()
    parts = fld.split(".")
    while len(parts) > 1:
        parts.pop()
        if ".".join(parts) in origins:
            return origins[".".join(parts)]
    return default


def load_profile(name_or_path: str | os.PathLike) -> DeviceProfile:
    """Load, resolve ``extends:`` and validate a profile given by name (see :func:`profile_search_path`)
    or by path. Raises :class:`ConfigError` (file + field) or :class:`UserError` (no such file/profile)."""
    path = find_profile(name_or_path)
    merged, origins = _resolve(path)
    try:
        return DeviceProfile.from_dict(merged)
    except ConfigError as exc:
        raise exc.with_file(_origin(exc.field, origins, str(path))) from None


def profile_for_this_machine(engine: str | None = None) -> DeviceProfile:
    """The first profile on the search path (by name) that describes this machine and, if given, runs
    ``engine``; a one-line UserError when none does."""
    for name in sorted(list_profiles()):
        p = load_profile(name)
        if p.matches_current_machine() and (engine is None or p.runtime.engine == engine):
            return p
    what = f" with engine {engine}" if engine else ""
    raise UserError(f"--profile: no profile{what} describes this machine ({describe_current_machine()}); "
                    "measure one with toolkit profile, or give one")
