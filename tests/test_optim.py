"""Global LR schedule and dense optimizer construction."""

from __future__ import annotations

import math

import pytest
import torch

from smet.errors import SmetConfigError
from smet.optim import build_optimizer, lr_lambda


def test_cosine_with_linear_warmup_to_min_ratio():
    f = lr_lambda({"schedule": "cosine", "warmup_fraction": 0.05, "min_lr_ratio": 0.1}, 1000)
    assert f(0) == pytest.approx(1 / 50) and f(49) == pytest.approx(1.0)  # 5 % linear warm-up
    assert f(50) == pytest.approx(1.0)
    assert f(525) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(1000) == pytest.approx(0.1) and f(5000) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) - 1e-12 for s in range(50, 1000))


def test_other_schedules_and_explicit_warmup_steps():
    lin = lr_lambda({"schedule": "linear", "warmup_steps": 10, "min_lr_ratio": 0.0}, 110)
    assert lin(9) == pytest.approx(1.0) and lin(60) == pytest.approx(0.5) and lin(110) == pytest.approx(0.0)
    const = lr_lambda({"schedule": "constant", "warmup_fraction": 0.0}, 100)
    assert const(0) == const(99) == 1.0
    with pytest.raises(SmetConfigError, match="optimizer.schedule"):
        lr_lambda({"schedule": "exp"}, 10)


def test_dense_adamw_groups_no_decay_for_norms():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, {"lr": 1e-3, "weight_decay": 0.1})
    assert isinstance(opt, torch.optim.AdamW)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decay == {id(model[0].weight)}
