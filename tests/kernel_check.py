"""Fused-kernel path vs the PyTorch reference path, run as a script (used by tests/test_kernels.py).

``python tests/kernel_check.py DEVICE`` prints one JSON object: per case, the largest differences
between the two paths. On CPU it must run with ``TRITON_INTERPRET=1`` (set before Triton is
imported), so the very same kernels execute in Triton's interpreter; on CUDA they are compiled.
``kernels.set_enabled`` selects the path per call (``SMET_TRITON`` is read once, at import).
"""

from __future__ import annotations

import json
import sys

import torch

from smet.sparse import kernels
from smet.sparse.layer import SparseLinear
from smet.sparse.optimizer import SMETOptimizer


def _path(fused: bool) -> None:
    kernels.set_enabled(fused)


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def _maxrel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float(((a - b).abs() / b.abs().clamp_min(1e-30)).max()) if a.numel() else 0.0


def case_scatter_gather(device: str, block: int, n_live: int, vdtype: torch.dtype, cdtype: torch.dtype,
                        index: str = "flat") -> dict:
    g = torch.Generator().manual_seed(block * 7 + n_live)
    layer = SparseLinear(64, 48, n_active_blocks=n_live, block_size=block, capacity=n_live + 5, dtype=vdtype,
                         index=index)
    layer.n_live = n_live
    ids = torch.randperm(layer.n_blocks_total, generator=g)[:n_live]
    if n_live > 40:  # some rows empty, some full: the row loops' edge cases
        ids = torch.cat([torch.arange(layer.n_blocks_total // 48), ids[ids >= 2 * layer.n_blocks_total // 48]])
        ids = ids[:n_live]
    layer.set_block_ids(ids)
    layer.values.data.copy_(torch.randn(layer.values.numel(), generator=g).to(vdtype))
    layer = layer.to(device)
    bidx = layer.idx[:n_live]
    gw = torch.randn(48, 64, generator=g).to(device=device, dtype=cdtype)
    out = {}
    for fused in (True, False):
        _path(fused)
        out[fused] = (layer._scatter_dense(layer.values, bidx, cdtype), layer._gather_grad(gw, bidx, layer.values))
    _path(True)
    return {"scatter": _maxdiff(out[True][0], out[False][0]), "gather": _maxdiff(out[True][1], out[False][1]),
            "dtypes_match": out[True][0].dtype == out[False][0].dtype and out[True][1].dtype == out[False][1].dtype,
            "free_slots_zero": bool((out[True][1][n_live * block:] == 0).all())}


def case_rows_zero_fill(device: str, block: int, dtype: torch.dtype, in_features: int, last_empty: bool) -> dict:
    """The one-launch row scatter writes its own zeros: into a NaN-filled ``out`` and into a fresh
    ``torch.empty`` taken right after a NaN-filled tensor of the same size was freed (on CUDA the caching
    allocator hands that very block back), every position outside the index must be exactly 0 and every
    indexed one the value. Rows: 0 empty, 1 full, the rest random with empty ones among them, and the last
    one empty or not; ``in_features`` > ROWS_BLOCK runs the zero loop over several chunks."""
    out_f, nb = 13, in_features // block
    g = torch.Generator().manual_seed(block * 31 + in_features + last_empty)
    keep = torch.rand(out_f, nb, generator=g) < 0.3
    keep[0] = False
    keep[1] = True
    keep[4:6] = False
    keep[-1] = False if last_empty else keep[-1] | (torch.arange(nb) == nb - 1)
    ids = keep.reshape(-1).nonzero().squeeze(1)
    n = ids.numel()
    layer = SparseLinear(in_features, out_f, n_active_blocks=n, block_size=block, capacity=n + 3, index="rows")
    layer.set_block_ids(ids)
    # nonzero values, exact in bf16 (the interpreter truncates fp32 -> bf16: no rounding to compare)
    vals = (torch.rand(layer.values.numel(), generator=g) + 0.5).to(torch.bfloat16).float()
    layer.values.data.copy_(vals)
    layer = layer.to(device)
    ref = layer.to_dense(dtype)  # zeros with the live values (PyTorch)
    live = layer.mask()
    args = (layer.values, layer.idx[:n], layer.row_ptr, out_f, in_features, block, dtype)
    nan = torch.full((out_f, in_features), float("nan"), dtype=dtype, device=device)
    into = kernels.scatter_rows(*args, out=nan)
    poison = torch.full((out_f, in_features), float("nan"), dtype=dtype, device=device)
    del poison
    fresh = kernels.scatter_rows(*args)
    res = {"n_empty_rows": int((~keep).all(1).sum()) >= 3, "into_is_out": into.data_ptr() == nan.data_ptr()}
    for name, w in (("into_nan", into), ("fresh", fresh)):
        res[f"{name}_zeros_exact"] = bool((w[~live] == 0).all())
        res[f"{name}_values_exact"] = bool((w[live] == ref[live]).all())
        res[f"{name}_equal_reference"] = bool(torch.equal(w, ref))
    return res


def case_direct_launch(device: str, block: int, index: str, dtype: torch.dtype) -> dict:
    """The direct launcher (``kernels._Direct``, from a key's second launch on) against Triton's own launch:
    scatter and gather of one layer, bit for bit, over three calls each (the first one compiles and keys the
    kernel, the later ones take the direct path); a second layer whose values start 2 elements into their
    storage (not 16-byte aligned: another key) must not reuse the first one's kernel."""
    g = torch.Generator().manual_seed(block * 13 + len(index))
    n = 40
    layer = SparseLinear(64, 48, n_active_blocks=n, block_size=block, capacity=n + 5, dtype=torch.float32,
                         index=index)
    layer.n_live = n
    layer.set_block_ids(torch.randperm(layer.n_blocks_total, generator=g)[:n])
    layer.values.data.copy_(torch.randn(layer.values.numel(), generator=g))
    layer = layer.to(device)
    bidx = layer.idx[:n]
    gw = torch.randn(48, 64, generator=g).to(device=device, dtype=dtype)
    odd = torch.randn(layer.values.numel() + 2, generator=g).to(device)[2:]  # misaligned storage
    res = {}
    outs = {}
    for direct in (False, True):
        prev = kernels.set_direct_launch(direct)
        try:
            outs[direct] = [(layer._scatter_dense(vals, bidx, dtype), layer._gather_grad(gw, bidx, vals))
                            for vals in (layer.values, layer.values, layer.values, odd, odd)]
        finally:
            kernels.set_direct_launch(prev)
    for i, ((s0, g0), (s1, g1)) in enumerate(zip(outs[False], outs[True])):
        res[f"call{i}_scatter_equal"] = bool(torch.equal(s0, s1))
        res[f"call{i}_gather_equal"] = bool(torch.equal(g0, g1))
    return res


def _opt_run(device: str, fused: bool, *, block: int, dtype: torch.dtype, materialize: str, steps: int,
             multi: bool = True, **opt_kw) -> dict:
    """Two compact layers trained ``steps`` steps on fixed random gradients with a regrowth at step 3."""
    _path(fused)
    torch.manual_seed(0)
    layers = []
    for i, (o, n) in enumerate(((32, 40), (24, 64))):
        layer = SparseLinear(64, o, n_active_blocks=n, block_size=block, capacity=n + 4, materialize=materialize,
                             dtype=dtype)
        layer.n_live = n
        gen = torch.Generator().manual_seed(10 + i)
        layer.idx[:n] = torch.randperm(layer.n_blocks_total, generator=gen)[:n].int()
        layer.values.data.copy_(torch.randn(layer.values.numel(), generator=gen).to(dtype) * 0.02)
        layer.values.data[n * block:] = 0
        layer = layer.to(device)
        layer.refresh_dense()
        layers.append(layer)
    groups = [{"params": [ly.values for ly in layers], "sparse": True, "block_size": block}]
    opt = SMETOptimizer(groups, lr=1e-2, **opt_kw)
    opt.multi_tensor = multi  # fused path: both layers in one launch, or one launch each
    for ly in layers:
        opt.register_layer(ly)
    gen = torch.Generator().manual_seed(99)
    grads = [[torch.randn(ly.values.numel(), generator=gen).to(dtype) for ly in layers] for _ in range(steps)]
    first_regrown = None
    for s in range(steps):
        for ly, g in zip(layers, grads[s]):
            g = g.clone()
            g[ly.n_live * block:] = 0
            ly.values.grad = g.to(device)
        before = layers[0].values.detach().clone()
        opt.step()
        if s == 3:  # first step after the regrowth below
            first_regrown = ((layers[0].values.detach() - before).view(-1, block)[:3].float().cpu(),
                             grads[s][0].view(-1, block)[:3].float())
        if s == 2:  # regrow slots 0..2 of layer 0 (values zeroed, state reset), like a topology update
            with torch.no_grad():
                layers[0].values.view(-1, block)[:3] = 0
            opt.reset_slots(layers[0].values, torch.arange(3, device=device))
    res = {"values": [ly.values.detach().float().cpu() for ly in layers]}
    for key in ("exp_avg", "exp_avg_sq"):
        res[key] = [opt.state[ly.values][key].float().cpu() for ly in layers if key in opt.state[ly.values]]
    # decoded from either storage (1-byte codes or counters)
    res["local_step"] = [opt.local_steps(ly.values).float().cpu() for ly in layers
                         if opt.local_steps(ly.values) is not None]
    res["dense"] = [ly.dense.float().cpu() for ly in layers if ly.dense is not None]
    res["first_regrown"] = first_regrown
    _path(True)
    return res


def case_optimizer(device: str, block: int, dtype: torch.dtype, materialize: str, steps: int = 8, **opt_kw) -> dict:
    a = _opt_run(device, True, block=block, dtype=dtype, materialize=materialize, steps=steps, **opt_kw)
    r = _opt_run(device, False, block=block, dtype=dtype, materialize=materialize, steps=steps, **opt_kw)
    out = {}
    for key in ("values", "exp_avg", "exp_avg_sq", "local_step", "dense"):
        if r[key]:
            out[key] = max(_maxdiff(x, y) for x, y in zip(a[key], r[key]))
            out[key + "_scale"] = max(float(y.abs().max()) for y in r[key])
    du, g = a["first_regrown"]
    out["first_regrown_over_lr"] = float((du / 1e-2).abs().mean())
    out["first_regrown_sign_ok"] = bool(((du * g) <= 0).all())
    return out


def case_multi_vs_single(device: str, block: int, dtype: torch.dtype, materialize: str, steps: int = 8,
                         **opt_kw) -> dict:
    """The fused path with both layers in one launch vs one launch per layer: the same bits."""
    calls = []
    many = kernels.smet_adam_update_many
    kernels.smet_adam_update_many = lambda items, *a, **k: (calls.append(len(items)), many(items, *a, **k))
    try:
        a = _opt_run(device, True, block=block, dtype=dtype, materialize=materialize, steps=steps, multi=True, **opt_kw)
    finally:
        kernels.smet_adam_update_many = many
    r = _opt_run(device, True, block=block, dtype=dtype, materialize=materialize, steps=steps, multi=False, **opt_kw)
    out = {key: all(torch.equal(x, y) for x, y in zip(a[key], r[key])) and len(a[key]) == len(r[key])
           for key in ("values", "exp_avg", "exp_avg_sq", "local_step", "dense")}
    out["every_step_one_launch_of_both_layers"] = calls == [2] * steps
    return out


def main() -> None:
    device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    if not kernels.available():
        print(json.dumps({"error": "triton not importable"}))
        return
    res = {}
    for b in (1, 4):
        res[f"sg_b{b}_f32_cast_bf16"] = case_scatter_gather(device, b, 50, torch.float32, torch.bfloat16)
        res[f"sg_b{b}_bf16_copy"] = case_scatter_gather(device, b, 33, torch.bfloat16, torch.bfloat16)
        res[f"sg_rows_b{b}_f32_cast_bf16"] = case_scatter_gather(device, b, 50, torch.float32, torch.bfloat16, "rows")
        res[f"sg_rows_b{b}_bf16_copy"] = case_scatter_gather(device, b, 33, torch.bfloat16, torch.bfloat16, "rows")
        for dt, dn in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
            for in_f, last_empty in ((64, True), (300, False)):
                res[f"zf_rows_b{b}_{dn}_in{in_f}"] = case_rows_zero_fill(device, b, dt, in_f, last_empty)
        for index in ("flat", "rows"):
            res[f"dl_{index}_b{b}_bf16"] = case_direct_launch(device, b, index, torch.bfloat16)
    cfgs = {
        "smet_linear_w4": dict(regrowth_warmup_steps=4),
        "smet_momentum_w4": dict(regrowth_warmup_steps=4, warmup_shape="momentum"),
        "smet_w0": dict(regrowth_warmup_steps=0),
        "no_reset": dict(regrowth_warmup_steps=4, reset_local_step=False),
        "naive": dict(regrowth_warmup_steps=0, reset_local_step=False, reset_moments=False),
        "wd": dict(regrowth_warmup_steps=4, weight_decay=0.1),
        "counter_linear_w4": dict(regrowth_warmup_steps=4, local_step_storage="counter"),
        "counter_no_reset": dict(regrowth_warmup_steps=4, reset_local_step=False, local_step_storage="counter"),
    }
    for name, kw in cfgs.items():
        res[f"opt_{name}_b1_f32"] = case_optimizer(device, 1, torch.float32, "transient", **kw)
    res["opt_smet_b4_f32_persistent"] = case_optimizer(device, 4, torch.float32, "persistent", regrowth_warmup_steps=4)
    res["opt_counter_b4_f32_persistent"] = case_optimizer(device, 4, torch.float32, "persistent",
                                                          regrowth_warmup_steps=4, local_step_storage="counter")
    res["opt_smet_b1_bf16_persistent"] = case_optimizer(device, 1, torch.bfloat16, "persistent",
                                                        regrowth_warmup_steps=4, weight_decay=0.1)
    for name, (b, dt, mat, kw) in {
            "b1_f32_codes": (1, torch.float32, "transient", dict(regrowth_warmup_steps=4)),
            "b4_bf16_persistent_wd": (4, torch.bfloat16, "persistent", dict(regrowth_warmup_steps=4, weight_decay=0.1)),
            "b4_f32_counter": (4, torch.float32, "transient", dict(regrowth_warmup_steps=4, local_step_storage="counter")),
            "b1_f32_counter_momentum": (1, torch.float32, "persistent",
                                        dict(regrowth_warmup_steps=4, local_step_storage="counter",
                                             warmup_shape="momentum")),
            "b1_f32_no_reset": (1, torch.float32, "transient", dict(regrowth_warmup_steps=4, reset_local_step=False)),
    }.items():
        res[f"multi_{name}"] = case_multi_vs_single(device, b, dt, mat, **kw)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
