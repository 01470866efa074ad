"""``smet-bench``: one process runs dense and smet with the same loop and writes sane JSON records."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

REQUIRED = ("method", "density", "tokens_per_s", "tokens_per_s_amortised", "static_bytes", "sparse_static_bytes",
            "bytes_per_active_weight", "active_weights", "peak_bytes", "step_time_s", "update_step_time_s", "config")
PARTS = ("weights", "grads", "optimizer", "metadata", "total")


def _cli(name: str) -> list[str]:
    exe = shutil.which(name, path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", f"smet.cli.{name.split('-', 1)[1]}"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tmp.json"
    cmd = _cli("smet-bench") + ["--device", "cpu", "--model", "tiny", "--steps", "4", "--warmup-steps", "1",
                                "--method", "dense", "smet", "--density", "0.5", "--batch", "2", "--seq-len", "32",
                                "--vocab", "512", "--update-interval", "2", "--threads", "1", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(out.read_text()), r.stdout


def test_bench_records(bench_run):
    records, stdout = bench_run
    assert [(r["method"], r["density"]) for r in records] == [("dense", 1.0), ("smet", 0.5)]
    for r in records:
        for k in REQUIRED:
            assert k in r, k
        for k in PARTS:
            assert isinstance(r["static_bytes"][k], int) and isinstance(r["sparse_static_bytes"][k], int)
        assert r["tokens_per_s"] > 0 and r["tokens_per_s_amortised"] > 0 and r["step_time_s"] > 0
        assert r["peak_bytes"] is None  # CPU
        assert r["config"]["data"].startswith("synthetic")
        assert r["static_bytes"]["total"] >= r["sparse_static_bytes"]["total"] > 0
    dense, smet = records
    # sparse layers: compact weights + grads + optimizer states are smaller than the dense ones at d = 0.5
    core = lambda r: sum(r["sparse_static_bytes"][k] for k in ("weights", "grads", "optimizer"))  # noqa: E731
    assert core(smet) < core(dense)
    assert smet["active_weights"] * 2 == dense["active_weights"]
    assert smet["bytes_per_active_weight"] == 22.0  # fp32, transient, b = 1 (smet-method.md section 5)
    assert 16.0 <= dense["bytes_per_active_weight"] < 16.01
    assert smet["sparse_static_bytes"]["metadata"] == smet["active_weights"] * 6
    # topology updates happened (interval 2) and were timed separately
    assert smet["n_update_steps"] >= 1 and smet["update_step_time_s"] > 0
    assert dense["update_step_time_s"] is None
    assert smet["config"]["sparsity"]["method"] == "smet" and smet["config"]["optimizer"]["reset_local_step"] is True
    assert "| dense |" in stdout and "smet/dense tokens/s at d=0.5" in stdout and "SYNTHETIC" in stdout


def test_bench_bad_density_exit_2(tmp_path):
    r = subprocess.run(_cli("smet-bench") + ["--density", "0", "--out", str(tmp_path / "x.json")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--density" in r.stderr
    assert not (tmp_path / "x.json").exists()


def test_bench_profile_phases(tmp_path):
    from smet.cli.bench import main

    out, prof = tmp_path / "b.json", tmp_path / "prof"
    rc = main(["--device", "cpu", "--model", "tiny", "--steps", "2", "--warmup-steps", "1", "--batch", "2",
               "--seq-len", "32", "--method", "dense", "smet", "--density", "0.5", "--profile", str(prof),
               "--out", str(out)])
    assert rc == 0
    records = json.loads(out.read_text())
    for rec in records:
        phases = rec["profile"]["phases_per_step"]
        assert {"forward", "backward", "optimizer"} <= set(phases)
        assert all(v["host_ms"] > 0 for v in phases.values())
    assert sorted(p.name for p in prof.iterdir()) == ["dense.txt", "smet_d_0.5_transient.txt"]
    assert "aten::" in (prof / "dense.txt").read_text()
