"""No secret value lands in any file a run or sweep writes, Hydra's own files included
(reliability v2, class 1)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import FAST, REPO
from smet.redact import redact_text, redact_tree

SECRETS = {"env": "wb-env-0123456789abcdef", "api": "KEY-cli-987654321", "pw": "hunter2-pass"}


def test_redact_rules():
    assert redact_text("+db_password=hunter2,seed=1") == "+db_password=***,seed=1"
    assert redact_text("+logger.wandb.api_key=abc") == "+logger.wandb.api_key=***"
    assert redact_text("optimizer.lr=1e-3,tokenizer.name=t5-base") == "optimizer.lr=1e-3,tokenizer.name=t5-base"
    assert redact_tree({"a": {"api_key": "x", "n": 1}, "l": ["my_token=abc", "k=v"]}) == \
        {"a": {"api_key": "***", "n": 1}, "l": ["my_token=***", "k=v"]}


@pytest.mark.slow
def test_no_secret_in_any_file_of_a_wandb_sweep(tmp_path, session_cache):
    sweep = tmp_path / "sweep"
    env = dict(os.environ, SMET_CACHE_DIR=str(session_cache), WANDB_API_KEY=SECRETS["env"], WANDB_MODE="offline")
    cmd = [sys.executable, str(REPO / "train.py"), "-m", *FAST, "trainer.max_steps=1", "trainer.val_every_n_steps=1",
           "logger=wandb", f"+logger.wandb.api_key={SECRETS['api']}", f"+db_password={SECRETS['pw']}", "seed=1,2",
           f"hydra.sweep.dir={sweep}"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    files = [p for p in sweep.rglob("*") if p.is_file()]
    assert any(p.name == "multirun.yaml" for p in files) and len([p for p in files if p.name == "overrides.yaml"]) == 2
    for p in files:
        data = p.read_bytes()
        for name, value in SECRETS.items():
            assert value.encode() not in data, f"{name} secret in {p.relative_to(sweep)}"
    assert "+db_password=***" in (sweep / "0" / ".hydra" / "overrides.yaml").read_text()
    for name, value in SECRETS.items():
        assert value not in r.stdout + r.stderr, f"{name} secret printed"
