"""Shared fixtures: tiny random Llama models (fast) and the real SmolLM2 (slow marker)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.manual_seed(0)
# One thread: on these shared 2-core machines torch's default of 2 made some tests 100x slower (a user-file
# eval test took 71.5 s with 2 threads, 0.41 s with 1). Tests that need more threads set them explicitly.
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOOLKIT_PROGRESS", "0")

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path | None:
    for c in (os.environ.get("TOOLKIT_DATA_DIR"), REPO.parent / "shared" / "data"):
        if c and Path(c).is_dir():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = _data_dir()
    if d is None:
        pytest.fail("benchmark data not found: set TOOLKIT_DATA_DIR (e.g. ../shared/data)")
    return d


@pytest.fixture
def tiny():
    from toolkit.models.tiny import llama_tiny

    return llama_tiny()


@pytest.fixture
def tiny_ids():
    return torch.randint(3, 256, (2, 24), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def tiny_importance(tiny, tiny_ids):
    from toolkit.importance import compute_importance

    return compute_importance(tiny, [tiny_ids])


@pytest.fixture(scope="session")
def smollm2():
    from toolkit.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A saved tiny parent (HF folder with a byte tokenizer), loadable by toolkit.load_model."""
    from toolkit.models.tiny import byte_tokenizer, llama_tiny

    folder = tmp_path_factory.mktemp("tiny_parent")
    llama_tiny().save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def pytest_sessionfinish(session, exitstatus):
    """With ``TOOLKIT_FAIL_ON_SKIP=1`` (set by ``.ci/run``) a skipped test fails the run.

    Tests of optional backends skip (``pytest.importorskip``) where the backend is not installed, so a
    developer can run the suite without every extra; CI installs all of them, so a skip there means an
    install step is broken and the backend's tests silently stopped running.
    """
    if os.environ.get("TOOLKIT_FAIL_ON_SKIP") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        for rep in skipped:
            reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
            print(f"\nci: skipped but CI installs everything: {rep.nodeid}: {reason}")
        session.exitstatus = 1


@pytest.fixture
def model_must_not_load(monkeypatch):
    """Fail the test if a model is loaded: for inputs that must be refused before any weights are read."""
    import toolkit.models

    def load_model(*args, **kwargs):
        pytest.fail("the model was loaded before the input was checked")

    monkeypatch.setattr(toolkit.models, "load_model", load_model)


@pytest.fixture
def training_text(tmp_path):
    """``write(num_docs)`` -> (training JSONL, calibration text) of seeded word-salad documents in ``tmp_path``:
    what ``toolkit finetune`` reads, for the tiny model."""
    import json

    import numpy as np

    def write(num_docs: int = 12):
        rng = np.random.default_rng(0)
        words = ["alpha", "beta", "gamma", "delta", "model", "search", "layer", "token"]
        docs = [" ".join(rng.choice(words, 60)) for _ in range(num_docs)]
        data = tmp_path / "train.jsonl"
        data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        calib = tmp_path / "calib.txt"
        calib.write_text("\n\n".join(docs) * 3)
        return data, calib

    return write


@pytest.fixture
def calib_text(tmp_path):
    """Calibration text for importance on the tiny model (the CLI's --calibration)."""
    path = tmp_path / "calib.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    return path
