"""SMET under DeepSpeed ZeRO stage 1 and 2: the SMET optimizer stepping ZeRO's flat fp32 partitions.

DeepSpeed's ``DeepSpeedZeroOptimizer`` (ZeRO-1 and ZeRO-2) flattens each param group of the client
optimizer into one buffer, gives every rank an equal slice of it (padded at the end) and replaces the
group's parameters with an fp32 master copy of that slice; the client optimizer then steps the slices.
With one sparse layer per param group (``build_smet_optimizer(..., per_layer_groups=True)``) a rank's
slice of a sparse group is a contiguous range of that layer's compact values, so the SMET update maps
onto it exactly: :func:`bind` tells the optimizer which range each partition holds
(``SMETOptimizer.bind_partitions``), and the per-slot state (moments, local steps) is kept for that
range only. The model's bf16 / fp32 values are all-gathered by ZeRO after every step, so the
controller scores identical magnitudes and writes identical masks on every rank; it zeroes regrown
slots in the model's values, and the optimizer copies them into its master partition.

Works with what keeps slots in place (constant density, flat index, transient materialisation, native
moments); the rest is refused by ``smet.config.check_sharded_sparsity`` before any compute. Usable in
a plain PyTorch loop (``deepspeed.initialize`` then :func:`bind`) and from Lightning
(``LMModule.on_fit_start``).
"""

from __future__ import annotations

import torch

ZERO_OPTIMIZER = "DeepSpeedZeroOptimizer"


def smet_optimizer_of(optimizer):
    """The ``SMETOptimizer`` inside ``optimizer`` (a DeepSpeed wrapper, a Lightning one, or itself), or None."""
    from smet.sparse.optimizer import SMETOptimizer

    seen = 0
    while optimizer is not None and seen < 4:
        if isinstance(optimizer, SMETOptimizer):
            return optimizer
        optimizer = getattr(optimizer, "optimizer", None)
        seen += 1
    return None


def bind(zero_optimizer, smet_optimizer) -> int:
    """Bind each sparse group's partition of ``zero_optimizer`` (a ``DeepSpeedZeroOptimizer`` wrapping
    ``smet_optimizer``) to its layer; returns the number of layers bound. Raises ``ValueError`` naming
    what does not fit (another DeepSpeed optimizer wrapper, a group of several sparse layers, CPU offload)."""
    import torch.distributed as dist

    name = type(zero_optimizer).__name__
    if name != ZERO_OPTIMIZER:
        raise ValueError(f"trainer.strategy: SMET runs under DeepSpeed's {ZERO_OPTIMIZER} (ZeRO stage 1 or 2 with "
                         f"gradients accumulated in the model's dtype), got {name}")
    if getattr(zero_optimizer, "cpu_offload", False):
        raise ValueError("trainer.strategy: ZeRO with CPU offload is not supported for sparse runs")
    bindings = []
    for i, group in enumerate(smet_optimizer.param_groups):
        if not group.get("sparse"):
            continue
        model_params = zero_optimizer.bit16_groups[i]
        if len(model_params) != 1:
            raise ValueError(f"param group {i} holds {len(model_params)} sparse layers; ZeRO needs one layer per "
                             "group (build_smet_optimizer(..., per_layer_groups=True))")
        part = zero_optimizer.single_partition_of_fp32_groups[i]
        if len(group["params"]) != 1 or group["params"][0] is not part:
            raise ValueError(f"param group {i}: ZeRO did not replace it with its fp32 partition")
        rank = dist.get_rank(group=zero_optimizer.real_dp_process_group[i])
        size = int(zero_optimizer.partition_size[i])
        if part.numel() != size:
            raise ValueError(f"param group {i}: partition of {part.numel()} elements, ZeRO says {size}")
        bindings.append((model_params[0], part, rank * size))
    smet_optimizer.bind_partitions(bindings)
    return len(bindings)


def gather_state(smet_optimizer, model_param: torch.Tensor, key: str) -> torch.Tensor | None:
    """The whole of one per-element (``exp_avg``, ``exp_avg_sq``) or per-slot (``local_step``: decoded)
    state of a bound layer, gathered from every rank's partition and cut to the layer's size (tests and
    diagnostics; a collective: every rank must call it)."""
    import torch.distributed as dist

    part = smet_optimizer._param(model_param)
    st = smet_optimizer.state.get(part)
    if not st:
        return None
    x = smet_optimizer.local_steps(model_param) if key == "local_step" else st[key]
    n = model_param.numel() if key != "local_step" else model_param.numel() // smet_optimizer._group_of(part)["block_size"]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        x = torch.cat(parts)
    return x[:n]


def measure_static(model, zero_optimizer, sparse=None) -> dict[str, dict[str, int]]:
    """What this rank of a ZeRO-1/2 run holds, in bytes, in :func:`smet.sparse.memory.measure_static`'s
    categories: the model's parameters (views of ZeRO's flat buffers: each buffer counted whole, padding
    included) and the fp32 master partitions as ``weights``, their optimizer state, the index and local steps
    as ``metadata``, and as ``grads`` the elements of the reduced gradient partitions ZeRO holds for the step
    (``averaged_gradients``). Call it after ``engine.backward`` and before ``engine.step`` to count those;
    compare with ``predict_static(..., engine="zero", shards=world, rank=rank)``."""
    from smet.sparse.memory import CATEGORIES
    from smet.sparse.memory import measure_static as measure

    inner = zero_optimizer.optimizer
    sparse_groups = {i for i, g in enumerate(inner.param_groups) if g.get("sparse")}
    partitions = [p for i in sparse_groups for p in inner.param_groups[i]["params"]]
    out = measure(model, inner, sparse, also_sparse=partitions)
    grads = getattr(zero_optimizer, "averaged_gradients", None) or {}
    for key, groups in (("all", None), ("sparse", sparse_groups)):
        # the elements of the views, not their storages: the views can share a larger buffer of DeepSpeed's
        # reduction (on gloo, a flattened communication bucket), which lives only as long as they do
        out[key]["grads"] += sum(t.numel() * t.element_size() for i, ts in grads.items()
                                 if groups is None or i in groups for t in ts or [])
        out[key]["total"] = sum(out[key][k] for k in CATEGORIES)
    return out
