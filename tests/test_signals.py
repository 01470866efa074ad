"""SIGTERM / SIGINT mid-run: a resumable checkpoint of the current step, summary.json with status
interrupted, the resume command, exit 128 + signal; the resumed run continues bit-exactly; a second
signal during the save does not corrupt it (reliability v2, class 3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from smet.checkpoints import checkpoint_problem
from test_resume import SMET, losses, sparse_state

SLOW = ("trainer.max_steps=24",)


def _start(tmp_path, session_cache, out, *extra):
    cmd = [sys.executable, str(REPO / "train.py"), f"hydra.run.dir={out}", *SMET, *extra]
    env = dict(os.environ, SMET_CACHE_DIR=str(session_cache), PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(proc, out, step: int, timeout=240):
    deadline = time.time() + timeout
    while max(losses(out), default=-1) < step if (out / "metrics.csv").exists() else True:
        assert proc.poll() is None, "run ended before the signal"
        assert time.time() < deadline
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_checkpoint_summary_exit_143_and_bit_exact_resume(run_train, session_cache, tmp_path):
    ref = run_train(*SMET, out=tmp_path / "ref")
    ref_losses = losses(ref.out_dir)

    out = tmp_path / "victim"
    proc = _start(tmp_path, session_cache, out, "trainer.checkpoint_every_n_steps=100")
    _wait_for_step(proc, out, 9)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    ck = out / "checkpoints" / f"interrupted-step{summary['steps']:07d}.ckpt"
    assert summary["checkpoint"] == str(ck) and checkpoint_problem(ck) is None
    assert f"resume: python train.py" in stderr and f"ckpt_path={out}" in stderr
    assert 9 <= summary["steps"] < 24

    resumed = run_train(*SMET, f"ckpt_path={out}", out=out)  # into its own directory, as printed
    new = losses(resumed.out_dir)
    assert max(new) == 23 and new == ref_losses  # every step, the interrupted and the resumed part, to the bit
    assert json.loads((out / "summary.json").read_text()).get("status", "ok") != "interrupted"
    a, b = sparse_state(ref.out_dir / "checkpoints" / "last.ckpt"), sparse_state(out / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigint_twice_still_writes_an_intact_checkpoint(session_cache, tmp_path):
    out = tmp_path / "int"
    proc = _start(tmp_path, session_cache, out, "trainer.max_steps=400", "trainer.val_every_n_steps=400")
    _wait_for_step(proc, out, 3)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # during the step or the save: acknowledged, ignored
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT"
    assert checkpoint_problem(summary["checkpoint"]) is None
    assert "Traceback" not in stderr
