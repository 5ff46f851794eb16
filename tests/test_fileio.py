"""Atomic folders: a kill at any point leaves the old version or the new one, never neither."""

import os

import pytest

from toolkit.fileio import atomic_directory, remove_stale


def _artifact(folder, text):
    folder.mkdir(parents=True)
    (folder / "weights").write_text(text)


def test_overwrite_killed_between_its_two_renames_keeps_the_previous_version(tmp_path):
    """The state a kill leaves after ``path -> .path.old`` and before ``tmp -> path``."""
    path = tmp_path / "hf"
    _artifact(tmp_path / ".hf.old", "previous")
    _artifact(tmp_path / ".hf.abc123.tmp", "unfinished")
    removed = remove_stale(path)
    assert (path / "weights").read_text() == "previous"
    assert removed == [tmp_path / ".hf.abc123.tmp"] and sorted(os.listdir(tmp_path)) == ["hf"]


def test_finished_overwrite_leaves_only_the_new_version(tmp_path):
    path = tmp_path / "hf"
    _artifact(path, "v1")
    with atomic_directory(path, overwrite=True) as tmp:
        (tmp / "weights").write_text("v2")
    assert (path / "weights").read_text() == "v2" and os.listdir(tmp_path) == ["hf"]
    # a stale .old beside a present folder is leftover, not the only copy: swept
    _artifact(tmp_path / ".hf.old", "v1")
    remove_stale(path)
    assert os.listdir(tmp_path) == ["hf"] and (path / "weights").read_text() == "v2"


def test_failure_between_the_renames_puts_the_old_version_back(tmp_path, monkeypatch):
    path = tmp_path / "hf"
    _artifact(path, "v1")
    real = os.replace
    calls = []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the second rename (tmp -> path) fails
            raise OSError("disk gone")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        with atomic_directory(path, overwrite=True) as tmp:
            (tmp / "weights").write_text("v2")
    monkeypatch.setattr(os, "replace", real)
    assert (path / "weights").read_text() == "v1" and os.listdir(tmp_path) == ["hf"]
