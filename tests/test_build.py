"""The one run builder (``smet.build.build_training``), the reference step (``smet.sparse.train_step``)
and the explicit wiring of the sparse core (constructor arguments, ``attach_optimizer``)."""

from __future__ import annotations

import warnings

import pytest
import torch

from smet.build import Training, build_training, build_training_model
from smet.models.llama import build_model
from smet.sparse import SMETOptimizer, SlotStateObserver, SparseLinear, attach_sparsity, build_smet_optimizer, train_step
from smet.sparse.step import PHASES

MODEL = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4,
         "max_seq_len": 16}
OPT = {"name": "adamw", "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "schedule": "cosine",
       "warmup_fraction": 0.1, "min_lr_ratio": 0.1, "regrowth_warmup_steps": 2, "lr_scaling": "inverse",
       "lr_scaling_scope": "sparse", "reset_local_step": True, "reset_moments": True, "warmup_shape": "linear"}
SPARSE = {"method": "smet", "density": 0.4, "update_interval": 2, "drop_fraction": 0.3, "materialize": "persistent"}


def run_cfg(sparsity=SPARSE, precision="32", steps=20, seed=3):
    return {"model": dict(MODEL), "sparsity": dict(sparsity), "optimizer": dict(OPT), "seed": seed,
            "trainer": {"max_steps": steps, "precision": precision}, "data": {"seq_len": 16}}


def batch(s: int) -> torch.Tensor:
    return torch.randint(0, 128, (4, 17), generator=torch.Generator().manual_seed(s))


def test_classic_build_is_the_hand_built_model_bit_for_bit():
    torch.manual_seed(0)
    t = build_training(run_cfg(), "cpu")
    torch.manual_seed(0)
    model = build_model(MODEL)
    ctrl = attach_sparsity(model, SPARSE, total_steps=20, seed=3)
    ctrl.set_dense_dtype(torch.float32)
    opt = build_smet_optimizer(model, OPT, ctrl)
    assert isinstance(t, Training) and isinstance(t.optimizer, SMETOptimizer) and t.controller.optimizer is t.optimizer
    for (n1, p1), (n2, p2) in zip(t.model.state_dict().items(), model.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert [g["lr"] for g in t.optimizer.param_groups] == [g["lr"] for g in opt.param_groups]
    for s in range(1, 7):  # the same losses and topology, step for step (updates at 2, 4, 6)
        x = batch(s)
        la, ia = t.step(x[:, :-1], x[:, 1:], s)
        lb, ib = train_step(model, ctrl, opt, x[:, :-1], x[:, 1:], s)
        assert torch.equal(la, lb) and ia == ib and (ia is not None) == (s % 2 == 0)
    for a, b in zip(t.controller.layers, ctrl.layers):
        assert torch.equal(a.idx, b.idx) and torch.equal(a.values, b.values) and torch.equal(a.dense, b.dense)


def test_deferred_build_on_a_device_is_the_meta_build():
    t = build_training(run_cfg(), "cpu", defer=True)
    _, ctrl = build_training_model(MODEL, SPARSE, total_steps=20, device="cpu", seed=3)
    for a, b in zip(t.controller.layers, ctrl.layers):
        assert torch.equal(a.idx, b.idx) and torch.equal(a.values, b.values)
    assert t.optimizer is not None
    # without a device: on meta, no optimizer until the caller materialises and asks for it
    m = build_training(run_cfg(), None, defer=True)
    assert all(p.is_meta for p in m.model.parameters()) and m.optimizer is None
    m.materialize("cpu")
    assert m.build_optimizer() is m.optimizer and m.controller.optimizer is m.optimizer


def test_dense_build_precision_and_schedule():
    t = build_training(run_cfg({"method": "dense"}, precision="bf16-true"), "cpu")
    assert t.controller is None and type(t.optimizer) is torch.optim.AdamW
    assert all(p.dtype == torch.bfloat16 for p in t.model.parameters())
    loss, info = t.step(batch(1)[:, :-1], batch(1)[:, 1:], 1)
    assert info is None and torch.isfinite(loss)
    sched = t.scheduler()
    assert sched.get_last_lr()[0] == pytest.approx(OPT["lr"] * t.lr_lambda(0))
    # the compute copy follows the precision; parameters stay fp32 for bf16-mixed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = build_training(run_cfg(precision="bf16-mixed"), None)
    assert m.optimizer is None and all(layer.dense.dtype == torch.bfloat16 for layer in m.controller.layers)
    assert all(p.dtype == torch.float32 for p in m.model.parameters())
    assert isinstance(m.autocast("cpu"), torch.autocast)


def test_train_step_phases_hook_and_order():
    torch.manual_seed(0)
    t = build_training(run_cfg(), "cpu")
    events = []

    class Phase:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            events.append(("enter", self.name))

        def __exit__(self, *exc):
            events.append(("exit", self.name))

    def hook():
        grads = [p.grad for p in t.model.parameters()]
        events.append(("after_optimizer_step", all(g is not None for g in grads)))

    x = batch(0)
    loss, info = t.step(x[:, :-1], x[:, 1:], 2, phase=Phase, after_optimizer_step=hook)
    assert events == [("enter", PHASES[0]), ("exit", PHASES[0]), ("enter", PHASES[1]), ("exit", PHASES[1]),
                      ("enter", PHASES[2]), ("exit", PHASES[2]), ("after_optimizer_step", True)]
    assert info is not None and info["sparsity/update"] == 1.0  # step 2: a topology update ran
    assert all(p.grad is None for p in t.model.parameters())  # zero_grad(set_to_none=True)
    loss, _ = t.step(x[:, :-1], x[:, 1:], 3, zero_grad=False, phase=torch.profiler.record_function)
    assert all(p.grad is not None for p in t.model.parameters())
    # any callable (x, y) -> loss
    opt = torch.optim.SGD(t.model.parameters(), lr=0.0)
    loss, info = train_step(lambda a, b: t.model.loss(a, b), None, opt, x[:, :-1], x[:, 1:], 1)
    assert info is None and loss.ndim == 0


def test_explicit_wiring_of_layers_controller_and_optimizer():
    layer = SparseLinear(8, 4, n_active_blocks=6, capacity=10, name="q_proj", final_count=3)
    assert layer.name == "q_proj" and layer.final_count == 3 and layer.final_density == 3 / 32
    plain = SparseLinear(8, 4, n_active_blocks=6)
    assert plain.name == "" and plain.final_count == 6
    model = build_model(MODEL)
    ctrl = attach_sparsity(model, {"method": "set", "density": 0.25, "density_schedule":
                                   {"kind": "gradual", "initial": 0.5, "start": 0, "end": 10}}, total_steps=20)
    names = [n for n, _ in ctrl.named_layers]
    for name, sl in ctrl.named_layers:
        assert sl.name == name and sl.final_count < sl.capacity == sl.n_live
        assert sl.final_density == sl.final_count / sl.n_blocks_total
    assert names and ctrl.init_std == model.config.init_std
    emb = model.model.embed_tokens.weight.numel()
    dense = sum(p.numel() for p in model.parameters()) - emb - sum(sl.values.numel() for sl in ctrl.layers)
    assert ctrl.non_sparse_params == dense
    assert ctrl.active_params_excluding_embedding() == dense + ctrl.active_weights()
    assert ctrl.optimizer is None
    with pytest.raises(TypeError, match="SlotStateObserver"):
        ctrl.attach_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    opt = build_smet_optimizer(model, OPT, ctrl)
    assert isinstance(opt, SlotStateObserver) and ctrl.optimizer is opt
    ctrl.attach_optimizer(None)
    assert ctrl.optimizer is None
    with pytest.raises(AttributeError):
        ctrl.optimizer = opt  # wiring goes through attach_optimizer
    sl = SparseLinear(8, 4, n_active_blocks=6, materialize="persistent")
    sl.set_dense_dtype(torch.bfloat16)
    assert sl.dense.dtype == torch.bfloat16
