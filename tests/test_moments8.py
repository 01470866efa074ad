"""Block-wise 8-bit Adam moments for the compact states (``optimizer.moments=8bit``): the code
book, zeroing by slot, a training run that follows native-state training, memory measured ==
predicted, and states that convert between the two storages."""

from __future__ import annotations

import copy

import pytest
import torch

from smet.build import build_training
from smet.compose import compose
from smet.models.llama import model_shapes
from smet.sparse import quant
from smet.sparse.layer import SparseLinear
from smet.sparse.memory import bytes_per_active_weight, measure_static, predict_static
from smet.sparse.optimizer import SMETOptimizer


def test_code_book_round_trip_error():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(1000, generator=g) * torch.logspace(-6, -2, 1000)  # moments span orders of magnitude
    v = m.square() * 3
    for x, signed in ((m, True), (v, False)):
        codes, scales = quant.empty_state(x.numel(), signed, "cpu")
        quant.quantize_(x, codes, scales)
        assert codes.dtype == (torch.int8 if signed else torch.uint8) and scales.numel() == 4
        y = quant.dequantize(codes, scales)
        blockmax = scales.repeat_interleave(quant.QBLOCK)[: x.numel()]
        # error <= half a code step of the power map at |x|: |d|x|/dk| / 2
        levels, power = (quant.M_LEVELS, 2) if signed else (quant.V_LEVELS, 4)
        k = (x.abs() / blockmax).pow(1 / power) * levels
        bound = blockmax * power * ((k + 0.5) / levels).pow(power - 1) / levels / 2 + 1e-12
        assert bool(((y - x).abs() <= bound * 1.0001).all())
        assert bool((torch.sign(y) == torch.sign(torch.where(y == 0, 0 * x, x))).all())
        assert float((y - x).abs().max()) <= float(scales.max()) * 0.02
    # code 0 is exactly zero; all-zero blocks stay zero
    codes, scales = quant.empty_state(300, True, "cpu")
    quant.quantize_(torch.zeros(300), codes, scales)
    assert bool((quant.dequantize(codes, scales) == 0).all())


def _cfg(moments: str) -> dict:
    cfg = compose(["model=tiny", "sparsity=smet", "sparsity.density=0.3", "sparsity.update_interval=10",
                   "data.seq_len=16", "trainer.max_steps=60", f"optimizer.moments={moments}"])
    return {k: (dict(v) if hasattr(v, "keys") else v) for k, v in cfg.items()}


def _train(cfg: dict, steps: int):
    torch.manual_seed(0)
    run = build_training(cfg, "cpu", vocab_size=97)
    gen = torch.Generator().manual_seed(3)
    sched = run.scheduler()
    losses = []
    # a fixed set of 4 batches, so the losses fall far enough to compare the two storages
    data = [torch.randint(0, 97, (4, 17), generator=gen) for _ in range(4)]
    for step in range(1, steps + 1):
        x = data[step % 4]
        loss, _ = run.step(x[:, :-1], x[:, 1:], step, zero_grad=step < steps)
        sched.step()
        losses.append(float(loss))
    return run, losses


def test_8bit_training_follows_native_and_memory_is_predicted():
    native, ln = _train(_cfg("native"), 60)
    eight, l8 = _train(_cfg("8bit"), 60)
    assert ln[-1] < ln[0] - 1.0 and l8[-1] < l8[0] - 1.0  # both learn
    assert abs(sum(l8[-10:]) - sum(ln[-10:])) / 10 < 0.1  # within 0.1 nats over the last 10 steps
    st = next(iter(eight.optimizer.state[layer.values] for layer in eight.controller.layers))
    assert st["exp_avg"].dtype == torch.int8 and st["exp_avg_sq"].dtype == torch.uint8
    cfg = _cfg("8bit")
    shapes = model_shapes({**cfg["model"], "vocab_size": 97, "max_seq_len": 16})
    measured = measure_static(eight.model, eight.optimizer, eight.controller)
    assert measured == predict_static(shapes, cfg["sparsity"], cfg["optimizer"], "32", total_steps=60)
    assert bytes_per_active_weight(cfg["sparsity"], cfg["optimizer"], "32")["exp_avg"] == 1 + 4 / 256


@pytest.mark.parametrize("src,dst", [("8bit", "native"), ("native", "8bit"), ("8bit", "8bit")])
def test_moment_states_convert(src, dst):
    def layer_opt(moments):
        layer = SparseLinear(32, 16, n_active_blocks=300)
        layer.init_random(0.1, torch.Generator().manual_seed(0))
        opt = SMETOptimizer([{"params": [layer.values], "sparse": True, "block_size": 1}], lr=1e-2,
                            regrowth_warmup_steps=3, moments=moments)
        opt.register_layer(layer)
        return layer, opt

    a_layer, a = layer_opt(src)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        a_layer.values.grad = torch.randn(300, generator=g)
        a.step()
    a.reset_slots(a_layer.values, torch.tensor([1, 2, 3]))
    b_layer, b = layer_opt(dst)
    b_layer.load_state_dict(a_layer.state_dict())
    b.load_state_dict(copy.deepcopy(a.state_dict()))

    def moments(opt, p):
        st = opt.state[p]
        if "exp_avg_scale" in st:
            return quant.dequantize(st["exp_avg"], st["exp_avg_scale"]), quant.dequantize(st["exp_avg_sq"], st["exp_avg_sq_scale"])
        return st["exp_avg"].float(), st["exp_avg_sq"].float()

    (ma, va), (mb, vb) = moments(a, a_layer.values), moments(b, b_layer.values)
    assert bool((mb[1:4] == 0).all() and (vb[1:4] == 0).all())  # the reset slots
    if src == dst:
        assert torch.equal(ma, mb) and torch.equal(va, vb)
        assert b.state[b_layer.values]["exp_avg_scale"].dtype == torch.float32
    else:
        torch.testing.assert_close(mb, ma, rtol=0.02, atol=float(ma.abs().max()) * 0.02)
        torch.testing.assert_close(vb, va, rtol=0.02, atol=float(va.abs().max()) * 0.02)
