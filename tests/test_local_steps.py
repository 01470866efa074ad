"""Local steps stored as 1-byte regrowth codes (the default) against int16 counters: the same
updates bit for bit, codes recycled once their slots saturate, a switch to counters when more than
255 updates are in flight, and optimizer states that convert exactly between the two storages."""

from __future__ import annotations

import copy

import pytest
import torch

from smet.sparse.layer import SparseLinear
from smet.sparse.optimizer import SMETOptimizer, saturation_step


def _layer_opt(storage: str, betas=(0.9, 0.999), W: int = 3, seed: int = 0, slots: int = 40):
    layer = SparseLinear(32, 16, n_active_blocks=slots)
    layer.init_random(0.1, torch.Generator().manual_seed(seed))
    opt = SMETOptimizer([{"params": [layer.values], "sparse": True, "block_size": 1}], lr=1e-2, betas=betas,
                        regrowth_warmup_steps=W, local_step_storage=storage)
    opt.register_layer(layer)
    return layer, opt


def _drive(layer, opt, steps: int, every: int, gen_seed: int = 1):
    """``steps`` optimizer steps on random gradients; every ``every`` steps 5 random slots regrow."""
    g = torch.Generator().manual_seed(gen_seed)
    for t in range(1, steps + 1):
        layer.values.grad = torch.randn(layer.values.shape, generator=g)
        opt.step()
        if t % every == 0:
            slots = torch.randperm(layer.n_live, generator=g)[:5]
            with torch.no_grad():
                layer.values[slots] = 0
            opt.reset_slots(layer.values, slots)
        yield t


@pytest.mark.parametrize("betas,W,every,widened", [
    ((0.9, 0.999), 3, 7, 0),   # the defaults: 42 updates, none saturated
    ((0.5, 0.9), 4, 1, 0),     # cap 166: 300 updates, codes recycled (at most 166 in flight)
    ((0.9, 0.99), 0, 1, 1),    # cap 1726: 300 updates in flight > 255 codes: switch to counters
])
def test_codes_give_the_counters_updates_bit_for_bit(betas, W, every, widened):
    a, b = _layer_opt("code", betas, W), _layer_opt("counter", betas, W)
    assert a[1].step_cap == max(saturation_step(*betas), W)
    for _ in zip(_drive(*a, 300, every), _drive(*b, 300, every)):
        assert torch.equal(a[0].values, b[0].values)
        assert torch.equal(a[1].local_steps(a[0].values), b[1].local_steps(b[0].values))
    assert a[1].wide_local_steps == widened
    st = a[1].state[a[0].values]
    if widened:
        assert "regrow_code" not in st and st["local_step"].dtype == torch.int16
    else:
        assert st["regrow_code"].dtype == torch.uint8 and "local_step" not in st
        assert int((a[1].local_steps(a[0].values) < a[1].step_cap).sum()) > 0  # some slots still young


@pytest.mark.parametrize("src,dst", [("code", "counter"), ("counter", "code"), ("code", "code")])
def test_state_converts_between_storages_exactly(src, dst):
    a = _layer_opt(src)
    for _ in _drive(*a, 40, 4):
        pass
    sd = copy.deepcopy(a[1].state_dict())
    b = _layer_opt(dst, seed=5)
    b[0].load_state_dict(a[0].state_dict())
    b[1].load_state_dict(sd)
    assert torch.equal(a[1].local_steps(a[0].values), b[1].local_steps(b[0].values))
    st = b[1].state[b[0].values]
    assert (st["regrow_code"].dtype == torch.uint8) if dst == "code" else (st["local_step"].dtype == torch.int16)
    for _ in zip(_drive(*a, 20, 3, gen_seed=2), _drive(*b, 20, 3, gen_seed=2)):
        assert torch.equal(a[0].values, b[0].values)


def test_counters_of_more_than_255_regrowth_steps_stay_counters():
    layer, opt = _layer_opt("counter", slots=300)
    for _ in _drive(layer, opt, 1, 10):
        pass
    st = opt.state[layer.values]
    st["step"] = 20_000
    st["local_step"].copy_(torch.arange(300, dtype=torch.int16))  # 299 distinct regrowth steps (0 = now)
    sd = copy.deepcopy(opt.state_dict())
    layer2, opt2 = _layer_opt("code", slots=300)
    layer2.load_state_dict(layer.state_dict())
    opt2.load_state_dict(sd)
    assert opt2.wide_local_steps == 1 and "regrow_code" not in opt2.state[layer2.values]
    assert torch.equal(opt2.local_steps(layer2.values), torch.arange(300, dtype=torch.int32))
