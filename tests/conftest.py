"""Shared test setup: offline Hugging Face and W&B, one tokenizer/token cache per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """A cache dir shared by the end-to-end tests (tokenizer trained once per session)."""
    return tmp_path_factory.mktemp("smet_cache")


@pytest.fixture
def run_train(session_cache, tmp_path):
    """Run `python train.py <overrides>` in a subprocess, the way a user does; returns the result."""
    import subprocess

    def _run(*overrides: str, out: Path | None = None, timeout: int = 300, check: bool = True, env=None,
             script: Path | None = None):
        out = out or tmp_path / "run"
        cmd = [sys.executable, str(script or REPO / "train.py"), f"hydra.run.dir={out}", *overrides]
        e = dict(os.environ, SMET_CACHE_DIR=str(session_cache), PYTHONUNBUFFERED="1")
        e.update(env or {})
        res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout, env=e)
        res.out_dir = out
        if check and res.returncode != 0:
            raise AssertionError(f"train.py failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}")
        return res

    return _run


# small-and-fast overrides for end-to-end runs on 2 CPU cores
FAST = ("data.seq_len=64", "data.batch_size=8", "data.tokenizer.vocab_size=512", "data.max_val_sequences=16",
        "trainer.progress_bar=none", "trainer.model_summary=false", "trainer.log_every_n_steps=2")


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA: skipped (with the reason shown) on CPU-only machines."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
