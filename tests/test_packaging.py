"""Packaging: the wheel carries the shipped profiles as package data (found with importlib.resources, not
through sys.prefix), py.typed and the elastic modeling file; the checkout's profiles/ is the same folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from toolkit.profiles import list_profiles, shipped_profiles_dir

REPO = Path(__file__).resolve().parents[1]


def test_shipped_profiles_are_package_data_and_the_checkout_folder_is_the_same():
    here = shipped_profiles_dir()
    assert here.parent == Path(__import__("toolkit").__file__).parent / "profiles"  # inside the package
    names = sorted(p.stem for p in here.glob("*.yaml"))
    assert "cloud-vm-2core-x86" in names and "h100-sxm" in names
    assert {k: v for k, v in list_profiles().items() if v.parent == here}.keys() == set(names)
    if (REPO / "profiles").exists():  # a checkout: users find them in profiles/ too
        assert sorted(p.stem for p in (REPO / "profiles").glob("*.yaml")) == names
    assert (Path(__import__("toolkit").__file__).parent / "py.typed").is_file()


@pytest.mark.slow
def test_wheel_ships_profiles_and_an_install_of_it_finds_them(tmp_path):
    """Build the wheel (no deps, no build isolation) from a copy of the sources, unpack it as an install
    would, and run `toolkit profile ls` from it with the checkout out of the way."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "toolkit", src / "toolkit", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "dist").glob("llm_nas_toolkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in shipped_profiles_dir().glob("*.yaml"))
    assert sorted(n.split("/")[-1] for n in names if n.startswith("toolkit/profiles/shipped/")) == shipped
    assert "toolkit/py.typed" in names and "toolkit/models/modeling_elastic_llama.py" in names
    assert not [n for n in names if ".data/" in n]  # no data-files under <prefix>/share any more

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {k: v for k, v in os.environ.items() if k != "TOOLKIT_PROFILES_DIR"}
    env["PYTHONPATH"] = str(site)  # ahead of the editable checkout
    code = ("import toolkit, sys; from toolkit.cli.main import main; print(toolkit.__file__); "
            "sys.exit(main(['profile', 'ls']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first, rest = proc.stdout.split("\n", 1)
    assert first.startswith(str(site))
    for p in shipped:
        assert p[: -len(".yaml")] in rest
    assert f"searched: {site / 'toolkit' / 'profiles' / 'shipped'}" in rest
