"""Atomic file writes, hashing and the user cache directory.

Every file the toolkit writes goes through here: write to a temporary sibling, fsync, rename. A killed
process leaves either the old file or the new one, never half of one.

Modes: ``tempfile.mkstemp`` / ``mkdtemp`` create 0600 files and 0700 folders (private on purpose: they
are meant to be temporary). Renamed into place they would keep that, so an artifact written under the
usual umask 022 would be unreadable by anyone else. The temporaries are therefore given the modes a plain
``open``/``mkdir`` would have created (0666 / 0777 minus the process umask) before the rename; a folder
also gets that for what libraries wrote inside it through their own ``mkstemp``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from toolkit.errors import UserError


def cache_dir() -> Path:
    """The user cache directory (``$TOOLKIT_CACHE_DIR`` or ``~/.cache/llm-nas-toolkit``)."""
    root = os.environ.get("TOOLKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llm-nas-toolkit"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the kernel tells (``/proc/self/status``, Linux
    4.7+); elsewhere set-and-restored under a lock (``os.umask`` has no read-only form)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0666 minus the umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode ``mkdir`` would give a new folder: 0777 minus the umask."""
    return 0o777 & ~current_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp's 0600 is for the temporary, not for the file it becomes
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _plain_modes(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes a plain ``mkdir``/``open`` would have: mkdtemp's
    0700 and the 0600 of files that libraries write through ``mkstemp`` (transformers' safetensors) are
    meant for temporaries, not for the artifact they become. Executable files stay executable."""
    fmode, dmode = file_mode(), dir_mode()
    os.chmod(folder, dmode)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            p = os.path.join(root, d)
            if not os.path.islink(p):
                os.chmod(p, dmode)
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                os.chmod(p, dmode if os.stat(p).st_mode & 0o111 else fmode)


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Delete what a process killed while writing ``path`` atomically left beside it: temporaries
    ``.{name}.*.tmp`` (files or folders) and a ``.{name}.old`` folder left by a finished overwrite. A
    ``.{name}.old`` with nothing at ``path`` is the previous version, moved aside by an overwrite killed
    between its two renames: it is put back, not deleted. Returns what was removed. Not for a path
    another live process is writing."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    restore_interrupted_overwrite(path)
    for stale in [*path.parent.glob(f".{path.name}.*.tmp"), path.with_name(f".{path.name}.old")]:
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        elif stale.exists() or stale.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        else:
            continue
        removed.append(stale)
    return removed


def restore_interrupted_overwrite(path: str | os.PathLike) -> bool:
    """Put back the previous ``path`` if an overwrite stopped after moving it aside (``.{name}.old``)
    and before moving the new one in. Returns whether it did."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if os.path.lexists(path) or not old.is_dir() or old.is_symlink():
        return False
    os.replace(old, path)
    return True


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that is renamed to ``path`` only if the block succeeds.

    An exception (or a kill) inside the block leaves no directory at ``path``; what a kill left is
    removed by the next call for the same path (:func:`remove_stale`).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _plain_modes(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        restore_interrupted_overwrite(path)  # failed between the renames: the old version stays
        raise


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


def sha256_file_cached(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered in the cache by (absolute path, size, mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    key = hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = cache_dir() / "sha256" / key
    if memo.exists():
        return memo.read_text().strip()
    digest = sha256_file(path)
    atomic_write_text(memo, digest)
    return digest


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def expand_user(name: str | os.PathLike) -> Path:
    """``Path(name).expanduser()``, with a name such as ``~nobody/x.jsonl`` (no such user) a one-line error."""
    try:
        return Path(name).expanduser()
    except RuntimeError:
        raise UserError(f"{name}: cannot expand '~' (no such user's home folder)") from None


# ----------------------------------------------------------------------------------------------------
# The benchmark data directory (tasks, calibration text): read through this setting, never committed.

DATA_DIR_ENV = "TOOLKIT_DATA_DIR"


def data_dir(explicit: str | None = None) -> Path:
    """The benchmark data directory: --data-dir, $TOOLKIT_DATA_DIR, or a ``shared/data`` beside the project."""
    candidates = [explicit, os.environ.get(DATA_DIR_ENV)]
    if not any(candidates):
        here = Path(__file__).resolve()  # toolkit/fileio.py in a checkout: <root>/toolkit, its parent beside shared/
        candidates += [str(p / "shared" / "data") for p in (Path.cwd().parent, here.parents[2])]
        candidates.append(str(Path.cwd() / "data"))
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    if explicit or os.environ.get(DATA_DIR_ENV):
        raise UserError(f"{explicit or os.environ.get(DATA_DIR_ENV)}: data directory not found")
    raise UserError(f"no data directory: pass --data-dir or set ${DATA_DIR_ENV} (e.g. ../shared/data)")


def optional_data_dir(explicit: str | None = None) -> Path | None:
    """:func:`data_dir` where one is needed only to look files up in (a relative task path): None when no
    default is found; an explicit --data-dir or $TOOLKIT_DATA_DIR that does not exist is still an error."""
    try:
        return data_dir(explicit)
    except UserError:
        if explicit or os.environ.get(DATA_DIR_ENV):
            raise
        return None


def default_calibration_file(explicit: str | None, data: str | None = None) -> Path:
    if explicit:
        return Path(explicit)
    return data_dir(data) / "calibration" / "calibration.txt"
