"""The 2-byte row-sorted index (``sparsity.index: rows``, issue 16): int16 column blocks per slot,
slots sorted by row with int32 row offsets. It must compute exactly what the int32 flat index does:
same forward / backward bits, same topology updates and optimizer state (slots re-sorted, state
permuted with them), and 2 bytes per slot less in the memory model and in the live tensors."""

from __future__ import annotations

import copy

import pytest
import torch

from smet.build import build_training
from smet.compose import compose
from smet.errors import SmetConfigError
from smet.models.llama import model_shapes
from smet.sparse.config import check_sparsity_config
from smet.sparse.layer import SparseLinear
from smet.sparse.memory import bytes_per_active_weight, measure_static, predict_static

MODEL = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, max_seq_len=32)
SEQ = 32


@pytest.mark.parametrize("block", [1, 4])
def test_rows_layer_computes_what_the_flat_layer_does(block):
    layers = {}
    for index in ("flat", "rows"):
        layer = SparseLinear(32, 24, 50, block_size=block, capacity=60, index=index)
        layer.init_random(0.02, torch.Generator().manual_seed(1))
        layers[index] = layer
    flat, rows = layers["flat"], layers["rows"]
    assert rows.idx.dtype == torch.int16 and rows.row_ptr.dtype == torch.int32 and rows.row_ptr.numel() == 25
    assert torch.equal(flat.block_ids(), rows.block_ids()) and torch.equal(flat.values, rows.values)
    assert int(rows.row_ptr[-1]) == rows.n_live and bool((rows.row_ptr[1:] >= rows.row_ptr[:-1]).all())
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(2))
    out = {}
    for index, layer in layers.items():
        xi = x.clone().requires_grad_()
        y = layer(xi)
        (y * torch.arange(24.0)).sum().backward()
        out[index] = (y.detach(), xi.grad, layer.values.grad)
    for a, b in zip(out["flat"], out["rows"]):
        assert torch.equal(a, b)
    assert torch.equal(flat.to_dense(), rows.to_dense()) and torch.equal(flat.mask(), rows.mask())
    # set_block_ids sorts the slots (values with them) and returns the permutation: describe the layer
    # with its slots shuffled (slot i holds block ids[i] and its values), then let it sort them back
    order = torch.randperm(rows.n_live, generator=torch.Generator().manual_seed(3))
    dense = rows.to_dense().clone()
    ids = rows.block_ids()[order]
    with torch.no_grad():
        rows.values.view(-1, block)[: rows.n_live] = rows.values.view(-1, block)[: rows.n_live][order].clone()
    perm = rows.set_block_ids(ids)
    assert torch.equal(ids[perm], rows.block_ids()) and torch.equal(rows.block_ids(), ids.sort().values)
    assert torch.equal(rows.to_dense(), dense)
    sd = rows.state_dict()
    assert set(sd) == {"values", "cols", "row_ptr"} and sd["cols"].dtype == torch.uint8 and sd["cols"].numel() == 120
    assert set(flat.state_dict()) == {"values", "idx"}


def test_rows_refuses_persistent_and_long_rows():
    with pytest.raises(ValueError, match="transient"):
        SparseLinear(32, 24, 50, materialize="persistent", index="rows")
    with pytest.raises(ValueError, match="32767"):
        SparseLinear(32768, 1, 10, index="rows")
    with pytest.raises(SmetConfigError, match="sparsity.index"):
        check_sparsity_config({"method": "smet", "density": 0.5, "materialize": "persistent", "index": "rows",
                               "update_interval": 10, "drop_fraction": 0.2, "drop_fraction_end": 0.0,
                               "targets": ["q_proj"], "growth": "random", "allocation": "uniform",
                               "drop_schedule": "cosine"}, {"reset_local_step": True, "reset_moments": True})


def _run(index: str, overrides: list[str], steps: int = 9):
    from omegaconf import OmegaConf

    cfg = compose(["sparsity=smet", "sparsity.density=0.3", f"++sparsity.index={index}",
                   "sparsity.update_interval=2", "sparsity.drop_fraction=0.3", *overrides])
    scfg = OmegaConf.to_container(cfg.sparsity, resolve=True)
    ocfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    torch.manual_seed(0)
    run = build_training({"model": MODEL, "sparsity": scfg, "optimizer": ocfg, "seed": 0, "data": {"seq_len": SEQ},
                          "trainer": {"max_steps": 100, "precision": "32"}}, "cpu")
    x = torch.randint(0, 256, (steps, 2, SEQ + 1), generator=torch.Generator().manual_seed(1))
    losses = []
    for step in range(1, steps + 1):
        loss, _ = run.step(x[step - 1, :, :-1], x[step - 1, :, 1:], step, autocast=run.autocast("cpu"),
                           zero_grad=step < steps)
        losses.append(float(loss.detach()))
    return run, losses, scfg, ocfg


@pytest.mark.parametrize("overrides", [
    [],                                                                  # constant density, random growth
    ["sparsity/density_schedule=gradual", "sparsity.density_schedule.initial=0.6",
     "sparsity.density_schedule.end=6"],                                 # density changes: compaction + sort
    ["sparsity.growth=gradient", "sparsity.block_size=4"],               # RigL scores, blocks of 4
])
def test_training_with_topology_updates_is_the_same_with_either_index(overrides):
    flat, lf, _, _ = _run("flat", overrides)
    rows, lr_, scfg, ocfg = _run("rows", overrides)
    assert lf == lr_
    assert flat.controller.update_count == rows.controller.update_count >= 4
    for a, b in zip(flat.controller.layers, rows.controller.layers):
        assert a.index == "flat" and b.index == "rows" and a.n_live == b.n_live
        assert torch.equal(a.to_dense(), b.to_dense())
        assert torch.equal(a.block_ids().sort().values, b.block_ids())  # same blocks, rows sorted
        # the optimizer state followed the slots: the same per-block moments and local steps
        order_a, order_b = torch.argsort(a.block_ids()), torch.argsort(b.block_ids())
        sa, sb = flat.optimizer.state[a.values], rows.optimizer.state[b.values]
        bs = a.block_size
        for key in ("exp_avg", "exp_avg_sq"):
            ma = sa[key].view(-1, bs)[: a.n_live][order_a]
            mb = sb[key].view(-1, bs)[: b.n_live][order_b]
            assert torch.equal(ma, mb), key
        la, lb = flat.optimizer.local_steps(a.values), rows.optimizer.local_steps(b.values)
        assert torch.equal(la[: a.n_live][order_a], lb[: b.n_live][order_b])
    # the live tensors: 2 bytes per slot less, plus the row offsets; equal to the memory model
    mf = measure_static(flat.model, flat.optimizer, flat.controller)
    mr = measure_static(rows.model, rows.optimizer, rows.controller)
    slots = sum(layer.capacity for layer in rows.controller.layers)
    offsets = sum(4 * (layer.out_features + 1) for layer in rows.controller.layers)
    assert mf["sparse"]["metadata"] - mr["sparse"]["metadata"] == 2 * slots - offsets
    assert mr == predict_static(model_shapes(MODEL), scfg, ocfg, "32", total_steps=100)


def test_bytes_per_active_weight_rows_index():
    cfg = compose(["sparsity=smet", "++sparsity.index=rows", "optimizer.fused_backward=true",
                   "trainer.on_nonfinite=stop"])
    from omegaconf import OmegaConf

    scfg, ocfg = (OmegaConf.to_container(cfg[k], resolve=True) for k in ("sparsity", "optimizer"))
    b = bytes_per_active_weight(scfg, ocfg, "bf16-true")
    assert b["index"] == 2 and b["grads"] == 0 and b["local_step"] == 1
    assert b["total"] == 9.0  # values 2 + m 2 + v 2 + index 2 + 1-byte code: issue 16's floor
    flat = bytes_per_active_weight(dict(scfg, index="flat"), ocfg, "bf16-true")
    assert flat["total"] - b["total"] == 2


def test_rows_checkpoint_round_trip():
    run, _, scfg, ocfg = _run("rows", [], steps=5)
    sd = copy.deepcopy(run.model.state_dict())
    ctrl_sd = run.controller.state_dict()
    other, _, _, _ = _run("rows", [], steps=1)
    other.model.load_state_dict(sd)
    other.controller.load_state_dict(ctrl_sd)
    for a, b in zip(run.controller.layers, other.controller.layers):
        assert torch.equal(a.block_ids(), b.block_ids()) and torch.equal(a.to_dense(), b.to_dense())
