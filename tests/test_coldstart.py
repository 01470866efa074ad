"""Cold start vs SMET (smet.report.coldstart) and the regrowth diagnostics, on exact synthetic runs and
on real train.py run directories; the survival metric of the sparse core against a hand count."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAST, REPO
from smet.cli.compare import main
from smet.report.coldstart import pairs
from smet.report.runs import load_run_dir
from test_compare import loss_run, trend


def test_offset_late_peak_and_floor_exact(tmp_path):
    """set jumps +0.3 for the 10 steps after each update (k = 10, ΔT = 20: h = 10), smet +0.1 for 3
    steps: offset = 0.3 - 0.03 = 0.27 exactly; midway windows hold no jump: floor 0."""
    runs, updates = tmp_path / "runs", (20, 40)
    base = trend(0, 80)
    bump = lambda amount, n: {s: v + (amount if any(u < s <= u + n for u in updates) else 0.0)  # noqa: E731
                              for s, v in base.items()}
    loss_run(runs / "set", "set", 0, bump(0.3, 10), updates)
    loss_run(runs / "smet", "smet", 0, bump(0.1, 3), updates)
    loss_run(runs / "smet-s1", "smet", 1, bump(0.1, 3), updates)   # other seed: no partner
    loss_run(runs / "static", "static", 0, base)
    (c,) = pairs([load_run_dir(d) for d in sorted(runs.iterdir())])
    assert Path(c.smet.source).name == "smet" and (c.k, c.h, c.interval) == (10, 10, 20)
    assert c.offsets == pytest.approx({20: 0.27, 40: 0.27}, abs=1e-9)
    assert c.peak[20] == pytest.approx((0.3, 4), abs=1e-9)  # j = 4..10: set +0.3, smet back to 0 (first: 4)
    assert c.late == pytest.approx({20: 0.0, 40: 0.0}, abs=1e-9)
    assert c.floor == pytest.approx(0.0, abs=1e-9) and c.hits == 2
    out = tmp_path / "rep"
    assert main([str(runs), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "coldstart.csv")))
    assert [(r["treated"], r["smet"], r["update"]) for r in rows] == [("set", "smet", "20"), ("set", "smet", "40")]
    md = (out / "report.md").read_text()
    assert "## Cold start vs SMET (paired)" in md and "| set | smet | 2 | +0.2700 | 2 / 2 |" in md
    assert "<h2>Cold start vs SMET (paired)</h2>" in (out / "report.html").read_text()
    assert (out / "coldstart_vs_smet.png").stat().st_size > 10_000


def test_no_partner_no_section(tmp_path):
    runs = tmp_path / "runs"
    loss_run(runs / "set", "set", 0, trend(0), (20, 40))
    out = tmp_path / "rep"
    assert main([str(runs), "--out", str(out)]) == 0
    assert not (out / "coldstart.csv").exists() and not (out / "coldstart_vs_smet.png").exists()
    assert "Cold start vs SMET" not in (out / "report.md").read_text().split("## Figures")[0]
    assert "`coldstart_vs_smet.png` not drawn" in (out / "report.md").read_text()


def test_survival_metric_counts_the_regrown_blocks_by_hand():
    """Two updates of a real controller: survival = regrown-at-update-1 blocks not pruned at update 2."""
    from smet.sparse.topology import SparsityConfig, sparsify_model

    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("q_proj", torch.nn.Linear(32, 16, bias=False))
    cfg = SparsityConfig(method="set", density=0.5, update_interval=10, drop_fraction=0.5, drop_schedule="constant",
                         targets=("q_proj",))
    ctrl = sparsify_model(model, cfg, total_steps=100, seed=0)
    layer = ctrl.layers[0]
    first = ctrl.after_step(10)
    assert first is not None and "sparsity/regrown_survival" not in first  # nothing regrown before update 1
    regrown = ctrl.regrown_slots(0)
    with torch.no_grad():  # give the regrown blocks values: half large (survive), half tiny (pruned)
        v = layer.values.view(layer.capacity, -1)
        v[: layer.n_live] = torch.randn(layer.n_live, v.shape[1]).abs() + 1.0
        big = regrown[: len(regrown) // 2]
        v[big] = 100.0
    before = layer.idx[: layer.n_live].clone()
    info = ctrl.after_step(30)
    pruned_slots = (layer.idx[: layer.n_live] != before).nonzero().squeeze(1)
    survived = (~torch.isin(regrown, pruned_slots)).sum().item()
    assert survived >= len(big)
    assert info["sparsity/regrown_survival"] == pytest.approx(survived / len(regrown))
    assert info["sparsity/regrown_score_ratio"] > 1.0
    state = ctrl.state_dict()  # the slots regrown now travel with checkpoints
    assert torch.equal(state["regrown_mask"][0], ctrl._regrown[0].cpu())
    now = ctrl.regrown_slots(0)
    assert now.numel() == info["sparsity/regrown"]
    other = torch.nn.Sequential()
    other.add_module("q_proj", torch.nn.Linear(32, 16, bias=False))
    fresh = sparsify_model(other, cfg, total_steps=100, seed=0)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.regrown_slots(0), now)
    legacy = {k: v for k, v in state.items() if k != "regrown_mask"}  # checkpoints before the bit masks
    legacy["regrown_slots"] = {0: now[torch.randperm(now.numel())]}
    fresh.load_state_dict(legacy)
    assert torch.equal(fresh.regrown_slots(0), now)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000])
def test_pack_slots_round_trips(n):
    from smet.sparse.topology import pack_slots, unpack_slots

    g = torch.Generator().manual_seed(n)
    slots = torch.randperm(n, generator=g)[: max(1, n // 3)]
    packed = pack_slots(slots, n)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-n // 8)
    mask = unpack_slots(packed, n)
    assert mask.shape == (n,) and torch.equal(mask.nonzero().squeeze(1), slots.sort().values)


@pytest.mark.slow
def test_real_runs_cold_start_and_diagnostics(session_cache, tmp_path):
    """set and smet, same seed and LR, from train.py: a pair with one offset per complete update, and
    survival, score ratios, grad-norm and max-logit ratios read from the runs' own metrics."""
    runs = tmp_path / "runs"
    env = dict(os.environ, SMET_CACHE_DIR=str(session_cache), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    for m in ("set", "smet"):
        cmd = [sys.executable, str(REPO / "train.py"), f"sparsity={m}", "optimizer.lr=2e-3", "optimizer.lr_scaling=none",
               "trainer.max_steps=40", "sparsity.update_interval=10", "++sparsity.spike_window=3",
               "trainer.val_every_n_steps=40", *FAST, "trainer.log_every_n_steps=1", f"hydra.run.dir={runs / m}"]
        res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
    (c,) = pairs([load_run_dir(runs / m) for m in ("set", "smet")])
    assert sorted(c.offsets) == [10, 20, 30] and sorted(c.midway) == [15, 25, 35] and c.h == 5
    out = tmp_path / "rep"
    assert main([str(runs), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| set |") and "/ 3" in line)
    assert "| smet | 3 |" in row
    diag = [line for line in md.split("## Regrowth diagnostics")[1].splitlines() if line.startswith("| set")][0]
    cells = [x.strip() for x in diag.strip("|").split("|")]
    assert 0.0 <= float(cells[1]) <= 1.0 and all(float(x) > 0 for x in cells[2:6])
