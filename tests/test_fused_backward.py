"""``optimizer.fused_backward``: each parameter's update runs inside backward as soon as its
gradient is complete, and the gradient is freed. Same updates as the ordinary step, bit for bit;
no gradient outlives backward (the memory model predicts grads = 0); combinations that need the
whole step's gradients are refused with one line naming the key."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import FAST, REPO
from smet.build import build_training
from smet.compose import compose
from smet.models.llama import model_shapes
from smet.sparse.memory import measure_static, predict_static
from smet.sparse.optimizer import SMETOptimizer


def _cfg(method: str, fused: bool, **extra) -> dict:
    ov = ["model=tiny", f"sparsity={method}", "data.seq_len=16", "trainer.max_steps=12",
          f"optimizer.fused_backward={str(fused).lower()}", "trainer.on_nonfinite=stop"]
    if method != "dense":
        ov += ["sparsity.density=0.3", "sparsity.update_interval=3", "optimizer.regrowth_warmup_steps=2"]
    ov += [f"{k}={v}" for k, v in extra.items()]
    cfg = compose(ov)
    return {k: (dict(v) if hasattr(v, "keys") else v) for k, v in cfg.items()}


def _train(cfg: dict, steps: int = 12):
    torch.manual_seed(0)
    run = build_training(cfg, "cpu", vocab_size=97)
    gen = torch.Generator().manual_seed(3)
    losses, grads_left = [], []
    sched = run.scheduler()
    for step in range(1, steps + 1):
        x = torch.randint(0, 97, (2, 17), generator=gen)
        loss, _ = run.step(x[:, :-1], x[:, 1:], step, zero_grad=step < steps,
                           after_optimizer_step=lambda: grads_left.append(
                               sum(p.grad is not None for p in run.model.parameters())))
        sched.step()
        losses.append(float(loss))
    return run, losses, grads_left


@pytest.mark.parametrize("method", ["smet", "dense", "rigl"])
@pytest.mark.parametrize("materialize", ["transient", "persistent"])
def test_fused_backward_gives_the_same_updates(method, materialize):
    if method == "dense" and materialize == "persistent":
        pytest.skip("dense has no materialisation")
    extra = {} if method == "dense" else {"sparsity.materialize": materialize}
    ref, ref_losses, ref_left = _train(_cfg(method, False, **extra))
    fused, losses, left = _train(_cfg(method, True, **extra))
    assert isinstance(fused.optimizer, SMETOptimizer) and fused.optimizer.fused_backward
    assert losses == ref_losses  # bit for bit, over 4 topology updates (sparse)
    for a, b in zip(ref.model.state_dict().values(), fused.model.state_dict().values()):
        assert torch.equal(a, b)
    assert all(n > 0 for n in ref_left) and left == [0] * len(left)  # no gradient is left after backward
    if method != "dense":
        for la, lb in zip(ref.controller.layers, fused.controller.layers):
            assert torch.equal(la.idx, lb.idx)
        # the regrown-vs-mature update sizes are still measured (collected inside backward)
        assert ref.optimizer.last_update_stats == fused.optimizer.last_update_stats


def test_memory_model_predicts_no_gradients():
    cfg = _cfg("smet", True)
    run, _, _ = _train(cfg, steps=4)
    measured = measure_static(run.model, run.optimizer, run.controller)
    shapes = model_shapes({**cfg["model"], "vocab_size": 97, "max_seq_len": 16})
    predicted = predict_static(shapes, cfg["sparsity"], cfg["optimizer"], "32", total_steps=12)
    assert measured == predicted and measured["all"]["grads"] == 0
    unfused = predict_static(shapes, cfg["sparsity"], dict(cfg["optimizer"], fused_backward=False), "32", total_steps=12)
    assert unfused["all"]["grads"] == measured["all"]["weights"]
    assert unfused["all"]["total"] - predicted["all"]["total"] == measured["all"]["weights"]


def test_grad_norm_is_summed_inside_backward():
    cfg = _cfg("smet", True)
    run, _, _ = _train(cfg, steps=1)
    run.optimizer.track_grad_norm = True
    ref, _, _ = _train(_cfg("smet", False), steps=1)
    x = torch.randint(0, 97, (2, 17), generator=torch.Generator().manual_seed(9))
    run.step(x[:, :-1], x[:, 1:], 2)
    ref.optimizer.zero_grad(set_to_none=True)  # _train kept the last step's gradients
    ref.step(x[:, :-1], x[:, 1:], 2, zero_grad=False)
    expected = torch.stack(torch._foreach_norm([p.grad for p in ref.model.parameters()])).norm()
    got = run.optimizer.pop_grad_norm()
    assert got is not None and float(got) == pytest.approx(float(expected), rel=1e-5)
    assert run.optimizer.pop_grad_norm() is None


@pytest.mark.parametrize("override,needle", [
    ("trainer.accumulate_grad_batches=2", "gradient accumulation"),
    ("trainer.gradient_clip_val=1.0", "gradient_clip_val"),
    ("trainer.devices=2", "multi-device"),
    ("trainer.on_nonfinite=skip", "trainer.on_nonfinite=stop"),
])
def test_train_refuses_what_fused_backward_cannot_honour(override, needle, tmp_path):
    cmd = [sys.executable, str(REPO / "train.py"), *FAST, "sparsity=smet", "optimizer.fused_backward=true",
           "trainer.on_nonfinite=stop", override, f"hydra.run.dir={tmp_path / 'run'}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert "optimizer.fused_backward" in lines[-1] and needle in lines[-1], res.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_train_py_fused_backward_matches_the_ordinary_step(run_train, tmp_path):
    common = (*FAST, "sparsity=smet", "sparsity.update_interval=5", "trainer.max_steps=12",
              "trainer.val_every_n_steps=12", "trainer.on_nonfinite=stop", "trainer.cpu_threads=1")
    a = run_train(*common, out=tmp_path / "a")
    b = run_train(*common, "optimizer.fused_backward=true", out=tmp_path / "b")
    sa = json.loads((a.out_dir / "summary.json").read_text())
    sb = json.loads((b.out_dir / "summary.json").read_text())
    assert sa["steps"] == sb["steps"] == 12 and sa["val_loss"] == sb["val_loss"]

    def col(run, key):
        import csv

        with open(run.out_dir / "metrics.csv") as f:
            return [(r["step"], r[key]) for r in csv.DictReader(f) if r.get(key)]

    assert col(a, "train/loss") == col(b, "train/loss")
    ga, gb = col(a, "train/grad_norm"), col(b, "train/grad_norm")
    assert len(ga) == len(gb) > 0
    assert all(abs(float(x) - float(y)) <= 1e-4 * float(x) for (_, x), (_, y) in zip(ga, gb))
