"""Memory accounting for dense and compact-sparse training (pure PyTorch, no Lightning/Hydra).

Three tools that agree with each other to the byte:

* :func:`measure_static` - the static memory of a LIVE model + optimizer, read from the tensors
  themselves (each storage counted once);
* :func:`predict_static` - the same breakdown computed from shapes and configs alone: the caller
  describes the model by its parameter and buffer shapes (:class:`ModelShapes`, e.g.
  ``ModelShapes.of(module)`` of a model built on ``torch.device("meta")``; ``smet.models.llama.
  model_shapes`` does that for a model config) and the per-layer active counts come from the very
  function ``sparsify_model`` uses (``layer_plan``), so nothing of the model size is ever allocated
  (LLaMA-13B is predicted in about a second). This module imports no model code;
* :func:`bytes_per_active_weight` - the closed-form per-weight model below.

Both breakdowns are ``{"all": {...}, "sparse": {...}}`` with the categories

============  ===============================================================================
weights       parameters (sparse layers: the compact ``values``)
grads         ``.grad`` tensors that exist (predictions assume they do: right after backward;
              none with ``optimizer.fused_backward``, which frees each inside backward)
optimizer     every tensor in ``optimizer.state`` except ``local_step`` (m, v, AdamW's 0-dim
              fp32 ``step`` of dense parameters; the SMET optimizer's sparse ``step`` is a
              python int and costs nothing)
metadata      sparse layers' ``idx`` (int32 per block slot; ``sparsity.index: rows``: int16 per slot +
              the int32 ``row_ptr``, out + 1 per layer) + the optimizer's local steps
              (``regrow_code``, 1 byte per slot, and ``regrow_birth``, 256 x int32 per layer; or
              ``local_step`` counters, int16 / int32 per slot)
compute_copy  persistent dense copies of sparse layers (``materialize="persistent"``)
buffers       other model buffers (the RoPE ``cos``/``sin`` tables)
total         sum of the above
============  ===============================================================================

``"sparse"`` restricts everything to the sparse layers (their values, grads, states, idx,
local_step and dense copy). For a dense model it covers the same target linears (the layers a
sparse method would replace), so the two are directly comparable.

Bytes per active weight (sparse layers, block size ``b``, capacity == active count)
------------------------------------------------------------------------------------

``p`` = parameter / optimizer-state bytes (4 for ``32``, ``32-true``, ``bf16-mixed``,
``16-mixed``; 2 for ``bf16-true``). The index costs 4 B per block slot. The local step exists only
when the optimizer tracks it (``reset_local_step`` or ``regrowth_warmup_steps > 0``) and costs 1 B
per block slot as a regrowth code (``optimizer.local_step_storage: code``, the default, while at
most 255 updates are in flight: update interval >= 68 at b2 = 0.999, or a run of <= 255 updates;
see :func:`local_step_layout`) plus a 1 KiB table per sparse layer, else 2 B (int16 counter:
default betas and W <= 17,329) or 4 B (int32). The method semantics (which optimizer options a
method sets) come from the composed configs (``conf/sparsity/*.yaml``); this module defines no
method table.

=============================  ======  =====  ===  ===  =======  ==========  ==============
configuration                  values  grads  m    v    index    local step  total (b = 1)
=============================  ======  =====  ===  ===  =======  ==========  ==============
dense AdamW, fp32 states       4       4      4    4    -        -           16 per weight
dense AdamW, pure bf16         2       2      2    2    -        -           8 per weight
smet, fp32 states              4       4      4    4    4/b      1/b         21
smet, pure bf16 (bf16-true)    2       2      2    2    4/b      1/b         13
smet, int16 counters, fp32     4       4      4    4    4/b      2/b         22
smet, int16 counters, bf16     2       2      2    2    4/b      2/b         14
static / set / rigl, fp32      4       4      4    4    4/b      0           20
static / set / rigl, bf16      2       2      2    2    4/b      0           12
smet, bf16, index rows, fused  2       0      2    2    2/b      1/b         9
=============================  ======  =====  ===  ===  =======  ==========  ==============

``sparsity.index: rows`` makes the index 2 B per block slot (int16 column blocks) plus an int32
offset per row of each layer (``4 (out + 1)`` bytes, counted exactly, negligible per weight).

``optimizer.fused_backward`` removes the grads column (0); ``optimizer.moments: 8bit`` makes m and
v 1 + 4/256 B each for the sparse layers (smet, pure bf16, both: 9.03 B at b = 1).

``materialize="persistent"`` adds a dense compute copy: +2 B (bf16 precisions) or +4 B per
DENSE position of every sparse layer, i.e. +2/d or +4/d per active weight at density d. In the
default ``transient`` mode a dense weight exists only inside one layer's forward/backward (see
:func:`estimate_activations`, ``transient_workspace``). Break-even against dense AdamW at b = 1
(smet, codes): d = 16/21 = 0.76 with fp32 states, 8/13 = 0.62 in pure bf16; at b = 4 the
metadata drops to 1.25 B (smet, 17.25 B and 9.25 B per active weight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from smet.sparse.config import CHECKPOINT_MODES, LOSS_IMPLS, POINTWISE_IMPLS  # noqa: F401  (also smet.sparse.memory.*)
from smet.sparse import shard
from smet.sparse.layer import SparseLinear
from smet.sparse.optimizer import N_CODES, option_defaults, saturation_step
from smet.sparse.quant import QBLOCK, n_scales
from smet.sparse.topology import DEFAULT_TARGETS, SparsityConfig, layer_plan

CATEGORIES = ("weights", "grads", "optimizer", "metadata", "compute_copy", "buffers")
METADATA_STATES = ("local_step", "regrow_code", "regrow_birth")  # optimizer state counted as metadata
PRECISION_BYTES = {"32": 4, "32-true": 4, "bf16-mixed": 4, "16-mixed": 4, "bf16-true": 2}


# ----------------------------------------------------------------------------- sizes
def param_bytes(precision: str) -> int:
    """Bytes of one parameter / optimizer-state element under a Lightning precision string."""
    try:
        return PRECISION_BYTES[str(precision)]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_BYTES)}") from None


def compute_copy_bytes(precision: str) -> int:
    """Bytes per dense position of a persistent compute copy (bf16 under bf16 precisions)."""
    param_bytes(precision)
    return 2 if str(precision).startswith("bf16") else 4


CODE_TABLE_BYTES = N_CODES * 4  # the int32 birth step of each of the 256 regrowth codes, per sparse parameter


def local_step_layout(optimizer_cfg: Mapping[str, Any], sparsity_cfg: Mapping[str, Any] | None = None,
                      total_steps: int | None = None) -> tuple[str, int, int]:
    """How the SMET optimizer stores local steps: ``(storage, bytes per block slot, bytes per sparse
    parameter)`` with storage ``none`` (it tracks none), ``code`` (1 byte + the 1 KiB birth table),
    ``int16`` or ``int32`` (counters).

    ``local_step_storage: code`` stays codes while at most 255 updates are in flight: at most
    ``(cap - 1) // update_interval + 1`` of them (a code frees once its slots saturate at ``cap``),
    and never more than the run's ``total_steps // update_interval`` updates (when given). Past
    that the optimizer switches to counters; this returns the storage the run ends with.
    """
    o = option_defaults() | {k: v for k, v in dict(optimizer_cfg).items() if v is not None}
    w = int(o["regrowth_warmup_steps"])
    if not (bool(o["reset_local_step"]) or w > 0):
        return "none", 0, 0
    b1, b2 = (float(x) for x in o["betas"])
    cap = max(saturation_step(b1, b2), w)
    counter = ("int16", 2, 0) if cap <= torch.iinfo(torch.int16).max else ("int32", 4, 0)
    if str(o.get("local_step_storage", "code")) != "code":
        return counter
    interval = max(1, int((sparsity_cfg or {}).get("update_interval") or 100))
    in_flight = (cap - 1) // interval + 1 if counter[0] == "int16" else None
    if total_steps is not None:
        in_flight = min(in_flight or total_steps, total_steps // interval)
    return ("code", 1, CODE_TABLE_BYTES) if in_flight is not None and in_flight < N_CODES else counter


def local_step_bytes(optimizer_cfg: Mapping[str, Any], sparsity_cfg: Mapping[str, Any] | None = None,
                     total_steps: int | None = None) -> int:
    """Bytes per block slot of the SMET optimizer's local step (0 when it tracks none); see
    :func:`local_step_layout`."""
    return local_step_layout(optimizer_cfg, sparsity_cfg, total_steps)[1]


# ----------------------------------------------------------------------------- measuring
class _Counter:
    """Adds storage sizes into categories, each storage once."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, int, int]] = set()
        self.out = {k: 0 for k in CATEGORIES}

    def add(self, cat: str, t: torch.Tensor | None) -> None:
        if t is None or not isinstance(t, torch.Tensor) or t.is_meta:
            return
        t = shard.local(t)  # FSDP2: this rank's slice (the bytes this process holds)
        st = t.untyped_storage()
        key = (str(t.device), st.data_ptr(), st.nbytes())
        if st.nbytes() == 0 or key in self.seen:
            return
        self.seen.add(key)
        self.out[cat] += st.nbytes()

    def result(self) -> dict[str, int]:
        d = dict(self.out)
        d["total"] = sum(d[k] for k in CATEGORIES)
        return d


def _target_linears(model: nn.Module, targets: Iterable[str] | None) -> list[nn.Module]:
    names = set(targets or DEFAULT_TARGETS)
    return [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in names]


def _sparse_layers(model: nn.Module, sparse) -> list:
    if sparse is not None:
        return list(sparse.layers)
    return [m for m in model.modules() if isinstance(m, SparseLinear)]


def measure_static(model: nn.Module, optimizer: torch.optim.Optimizer | None, sparse=None,
                   targets: Iterable[str] | None = None,
                   also_sparse: Iterable[torch.Tensor] = ()) -> dict[str, dict[str, int]]:
    """Static memory of a live model + optimizer in bytes: ``{"all": {...}, "sparse": {...}}``.

    ``sparse`` is the :class:`~smet.sparse.topology.SparseController` (found from the model's
    ``SparseLinear`` modules when omitted). For a dense model the ``"sparse"`` breakdown covers the
    target linears (``targets``, default the 7 projections). See the module docstring for the
    categories. Measure right after ``optimizer.step()`` and before ``zero_grad`` to include grads.
    ``also_sparse``: optimizer parameters that stand for sparse layers (an engine's partitions of them,
    ``smet.zero``), counted in the ``"sparse"`` breakdown with their state.
    """
    layers = _sparse_layers(model, sparse)
    if layers:
        sparse_params = [layer.values for layer in layers]
    else:
        sparse_params = [m.weight for m in _target_linears(model, targets)]
    sparse_ids = {id(p) for p in sparse_params} | {id(p) for p in also_sparse}
    state = optimizer.state if optimizer is not None else {}

    def states(p) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        st = state.get(p, {}) if optimizer is not None else {}
        opt_t, meta_t = [], []
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                (meta_t if k in METADATA_STATES else opt_t).append(v)
        return opt_t, meta_t

    def count(params: list, buffers: list, idx_bufs: list, copies: list) -> dict[str, int]:
        c = _Counter()
        for p in params:
            c.add("weights", p)
        for p in params:
            c.add("grads", p.grad)
        meta_states = []
        for p in params:
            opt_t, meta_t = states(p)
            for t in opt_t:
                c.add("optimizer", t)
            meta_states += meta_t
        for t in idx_bufs + meta_states:
            c.add("metadata", t)
        for t in copies:
            c.add("compute_copy", t)
        for t in buffers:
            c.add("buffers", t)
        return c.result()

    idx_bufs = [layer.index_buffer for layer in layers] + [
        layer.row_ptr for layer in layers if getattr(layer, "row_ptr", None) is not None]
    idx_ids = {id(t) for t in idx_bufs}
    copies = [layer.dense for layer in layers if getattr(layer, "dense", None) is not None]
    all_params = list(model.parameters())
    # parameters the optimizer holds but the model does not (unusual) still count as weights
    if optimizer is not None:
        ids = {id(p) for p in all_params}
        all_params += [p for g in optimizer.param_groups for p in g["params"] if id(p) not in ids]
    other_buffers = [b for b in model.buffers() if id(b) not in idx_ids]
    return {
        "all": count(all_params, other_buffers, idx_bufs, copies),
        "sparse": count([p for p in all_params if id(p) in sparse_ids], [], idx_bufs, copies),
    }


# ----------------------------------------------------------------------------- predicting
@dataclass(frozen=True)
class ModelShapes:
    """A model described by shapes only: every distinct parameter ``(name, shape)`` and every buffer
    ``(name, shape, is_floating_point, element_size)``. Target linears are the 2-D parameters named
    ``<...>.<target>.weight`` (the modules ``sparsify_model`` replaces)."""

    params: tuple[tuple[str, tuple[int, ...]], ...]
    buffers: tuple[tuple[str, tuple[int, ...], bool, int], ...] = ()

    @classmethod
    def of(cls, module: nn.Module) -> "ModelShapes":
        """The shapes of any module (build it on ``torch.device("meta")``: nothing is allocated)."""
        return cls(params=tuple((n, tuple(p.shape)) for n, p in module.named_parameters()),
                   buffers=tuple((n, tuple(b.shape), b.is_floating_point(), b.element_size())
                                 for n, b in module.named_buffers()))

    def target_linears(self, targets: Iterable[str] | None = None) -> list[tuple[str, int, int]]:
        """``(parameter name, out, in)`` of the target linears, in module order."""
        names = set(targets or DEFAULT_TARGETS)
        out = []
        for n, shape in self.params:
            parts = n.rsplit(".", 2)
            if len(shape) == 2 and len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in names:
                out.append((n, int(shape[0]), int(shape[1])))
        return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def sparse_layer_plan(shapes: list[tuple[int, int]], sparsity_cfg: Mapping[str, Any]) -> list[dict[str, int]]:
    """Per target layer (out, in): block size, blocks, capacity and final active blocks, computed
    by the very function ``sparsify_model`` uses."""
    return layer_plan(shapes, SparsityConfig.from_mapping(sparsity_cfg))


def _targets(shapes: ModelShapes, scfg: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    targets = scfg.get("targets") or DEFAULT_TARGETS
    found = shapes.target_linears(targets)
    if not found:
        raise ValueError(f"no nn.Linear module matches sparsity.targets={sorted(set(targets))}")
    return found


def _fsdp_slice(shape: tuple[int, ...], shards: int, rank: int) -> tuple[int, int]:
    """FSDP2's ``Shard(0)`` of a parameter on ``shards`` ranks: ``(padded, local)`` elements of ``rank``'s slice.
    Dim 0 is cut in chunks of ``ceil(dim0 / shards)`` rows; every rank's storage is one whole chunk (padded),
    its local tensor the rows it really holds (the last ranks may hold fewer, or none)."""
    n = _numel(shape)
    if shards <= 1:
        return n, n
    d0 = int(shape[0])
    rest = n // d0 if d0 else 0
    chunk = -(-d0 // shards)
    rows = max(0, min(chunk, d0 - rank * chunk))
    return chunk * rest, rows * rest


def _zero_partition(numel: int, shards: int) -> tuple[int, int]:
    """DeepSpeed ZeRO-1/2's flat buffer of one param group of ``numel`` elements on ``shards`` ranks:
    ``(flat, partition)`` elements. The group is flattened into one buffer padded to a multiple of
    ``2 * shards`` (``nccl_start_alignment_factor`` 2 x the data-parallel size; no padding between parameters,
    ``parameter_alignment`` off), which every rank holds whole in the model's dtype; each rank owns an equal
    ``partition`` of it (an fp32 master copy, its moments, its reduced gradient), padding included."""
    align = 2 * shards
    flat = -(-numel // align) * align
    return flat, flat // shards


def zero_model_bytes(precision: str) -> int:
    """Bytes of one element of the model's parameters and gradients under DeepSpeed: its ``bf16`` / ``fp16``
    modes cast the model to 16 bits (``*-mixed`` and ``*-true`` alike); the fp32 master copy is ZeRO's."""
    param_bytes(precision)
    return 2 if str(precision).startswith(("bf16", "16")) else 4


def _predict_zero(shapes: ModelShapes, scfg: dict, ocfg: dict, precision: str, total_steps: int | None,
                  shards: int) -> dict[str, dict[str, int]]:
    """:func:`predict_static` for one rank of DeepSpeed ZeRO-1 / ZeRO-2 (``trainer=deepspeed``): see there. Every
    rank holds the same bytes (equal partitions, the padding in the last rank's)."""
    if ocfg.get("fused_backward"):
        raise ValueError("optimizer.fused_backward is not possible under DeepSpeed")
    for key, value, ok in (("sparsity.materialize", scfg.get("materialize", "transient"), "transient"),
                           ("sparsity.index", scfg.get("index") or "flat", "flat"),
                           ("optimizer.moments", ocfg.get("moments") or "native", "native")):
        if scfg.get("method", "dense") != "dense" and str(value) != ok:
            raise ValueError(f"{key}={value} does not run under DeepSpeed (smet.config.check_sharded_sparsity)")
    mb = zero_model_bytes(precision)
    found = _targets(shapes, scfg)
    target_names = {n for n, _, _ in found}
    is_dense = scfg.get("method", "dense") == "dense"
    allb = {k: 0 for k in CATEGORIES}
    sp = {k: 0 for k in CATEGORIES}

    def group(numel: int, dst: tuple[dict, ...]) -> int:
        flat, part = _zero_partition(numel, shards)
        for d in dst:
            d["weights"] += flat * mb + part * 4  # the model's flat buffer (whole) + this rank's fp32 master
            d["grads"] += part * mb  # the reduced gradient of this rank's partition (padding too), at the step
        return part

    decay = [(n, s) for n, s in shapes.params if len(s) >= 2 and (is_dense or n not in target_names)]
    no_decay = [(n, s) for n, s in shapes.params if len(s) < 2]
    for params in (decay, no_decay):  # dense param groups (build_optimizer / build_smet_optimizer)
        if params:
            part = group(sum(_numel(s) for _, s in params), (allb,))
            allb["optimizer"] += 2 * part * 4 + 4  # fp32 exp_avg, exp_avg_sq, 0-dim step of the partition
    if is_dense:  # the target linears' share of the decay group (no padding counted)
        for n, s in decay:
            if n in target_names:
                k = _numel(s)
                sp["weights"] += k * mb + k * 4 // shards
                sp["grads"] += k * mb // shards
                sp["optimizer"] += 2 * k * 4 // shards
    for _, shape, floating, size in shapes.buffers:
        allb["buffers"] += _numel(shape) * (param_bytes(precision) if floating else size)
    if not is_dense:
        plan = sparse_layer_plan([(o, i) for _, o, i in found], scfg)
        _, ls, ls_table = local_step_layout(ocfg, scfg, total_steps)
        for lay in plan:  # one param group per sparse layer (per_layer_groups=True)
            cap, b = lay["capacity"], lay["block_size"]
            part = group(cap * b, (allb, sp))
            for d in (allb, sp):
                d["optimizer"] += 2 * part * 4  # fp32 m and v of the partition's elements
                d["metadata"] += cap * 4 + (part // b) * ls + ls_table  # the index whole; local steps of its slots
    for d in (allb, sp):
        d["total"] = sum(d[k] for k in CATEGORIES)
    return {"all": allb, "sparse": sp}


ENGINES = ("none", "fsdp", "zero")


def predict_static(shapes: ModelShapes, sparsity_cfg: Mapping[str, Any] | None,
                   optimizer_cfg: Mapping[str, Any] | None, precision: str,
                   total_steps: int | None = None, shards: int = 1, rank: int = 0,
                   engine: str | None = None) -> dict[str, dict[str, int]]:
    """What :func:`measure_static` will report after a training step (grads present), from the
    model's shapes and the configs alone. Same dict shape; exact for every method, block size,
    allocation and both materialisation modes. The optimizer is AdamW for ``method: dense`` and the
    SMET optimizer otherwise; dense parameters carry a 0-dim fp32 ``step`` each. ``total_steps``
    (the run's length, when known) decides the local-step storage of short runs
    (:func:`local_step_layout`).

    ``shards`` > 1: rank ``rank`` of an FSDP2 run (``trainer=fsdp``) on that many ranks. Every parameter,
    compact values included, is a ``Shard(0)`` slice (:func:`_fsdp_slice`: padded storage for weights and
    gradients, the local rows for m, v and local steps); the index, the 0-dim steps and the buffers stay
    replicated. Measured == predicted (``all``) on 2 gloo ranks in a plain loop (tests/test_fsdp.py); the
    ``sparse`` gradient bytes can differ by the padding FSDP2 puts in a unit's shared gradient buffer, which
    is counted to whichever parameter is seen first. Under train.py each rank also still holds the root
    unit's parameters (embedding, final norm, head) whole after the step: docs/sharding.md.

    ``engine``: ``"fsdp"`` (the default when ``shards`` > 1), ``"none"`` (one process or DDP: ``shards`` 1) or
    ``"zero"``: rank ``rank`` of DeepSpeed ZeRO-1 / ZeRO-2 (``trainer=deepspeed``; the same for both stages, and
    at ``shards`` 1 too, where ZeRO still keeps its flat buffers and fp32 master copy). Each param group (dense
    decay / no decay, one per sparse layer) is one flat buffer padded to ``2 * shards`` elements
    (:func:`_zero_partition`): ``weights`` = every group's buffer whole in the model's dtype
    (:func:`zero_model_bytes`) + this rank's fp32 master partition; ``optimizer`` = fp32 m and v of the
    partition (+ a 0-dim step per dense group); ``metadata`` = the index whole + local steps of the
    partition's slots; ``grads`` = the reduced gradient of the partition in the model's dtype (its padding
    included), what ZeRO holds at the step (it frees it after). Not counted: ZeRO-1 also holds the whole gradients
    during backward until they are reduced, ZeRO-2 its reduce buckets (``reduce_bucket_size`` elements each);
    both are transient. Measured == predicted on 2 gloo ranks, fp32 and bf16, both stages
    (tests/test_zero_memory.py).
    """
    if shards < 1 or not 0 <= rank < shards:
        raise ValueError(f"shards={shards}, rank={rank}: need shards >= 1 and 0 <= rank < shards")
    engine = engine or ("fsdp" if shards > 1 else "none")
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: choose one of {', '.join(ENGINES)}")
    if engine == "none" and shards > 1:
        raise ValueError(f"engine='none' holds everything on each rank: shards must be 1, got {shards}")
    scfg = dict(sparsity_cfg or {"method": "dense"})
    ocfg = dict(optimizer_cfg or {})
    if engine == "zero":
        return _predict_zero(shapes, scfg, ocfg, precision, total_steps, shards)
    p = param_bytes(precision)
    found = _targets(shapes, scfg)
    target_names = {n for n, _, _ in found}
    is_dense = scfg.get("method", "dense") == "dense"
    g = 0 if ocfg.get("fused_backward") else p  # fused backward: every gradient is freed inside backward

    allb = {k: 0 for k in CATEGORIES}
    sp = {k: 0 for k in CATEGORIES}
    for name, shape in shapes.params:  # dense params (all of them for the dense baseline)
        if not is_dense and name in target_names:
            continue
        n, local = _fsdp_slice(shape, shards, rank)
        dst = (allb, sp) if name in target_names else (allb,)
        for d in dst:
            d["weights"] += n * p
            d["grads"] += n * g
            d["optimizer"] += 2 * local * p + 4  # exp_avg, exp_avg_sq, 0-dim fp32 step
    for _, shape, floating, size in shapes.buffers:
        allb["buffers"] += _numel(shape) * (p if floating else size)
    if not is_dense:
        plan = sparse_layer_plan([(o, i) for _, o, i in found], scfg)
        _, ls, ls_table = local_step_layout(ocfg, scfg, total_steps)
        cc = compute_copy_bytes(precision) if scfg.get("materialize", "transient") == "persistent" else 0
        eight = str(ocfg.get("moments") or "native") == "8bit"
        rows = str(scfg.get("index") or "flat") == "rows"
        for lay in plan:
            cap, b = lay["capacity"], lay["block_size"]
            vals, local = _fsdp_slice((cap * b,), shards, rank)
            for d in (allb, sp):
                d["weights"] += vals * p
                d["grads"] += vals * g
                # m and v: the parameter's dtype, or a byte each + an fp32 scale per QBLOCK values
                d["optimizer"] += 2 * (local + 4 * n_scales(local)) if eight else 2 * local * p
                # index (replicated): int32 flat ids, or int16 column blocks + int32 row offsets (out + 1);
                # local steps: this rank's slots
                d["metadata"] += (cap * 2 + 4 * (lay["out"] + 1) if rows else cap * 4) + (local // b) * ls + ls_table
                d["compute_copy"] += lay["out"] * lay["in"] * cc
    for d in (allb, sp):
        d["total"] = sum(d[k] for k in CATEGORIES)
    return {"all": allb, "sparse": sp}


def estimate_update_memory(shapes: ModelShapes, sparsity_cfg: Mapping[str, Any] | None) -> dict[str, int]:
    """ESTIMATE of what topology updates add to the memory of training, bytes (all 0 for dense and
    for a static mask under a constant density):

    * ``regrown_masks``: the bit masks of the slots regrown at the last update
      (``SparseController._regrown``, shared with the optimizer's next-step measurement):
      ``ceil(capacity / 8)`` per layer, alive from the first update on;
    * ``layer_update``: the largest one-layer update workspace (layers update one at a time, after
      the optimizer step, with gradients and activations freed): the live ids as int64 (8 B per live
      block), the fp32 prune scores (4), top-k outputs (12 per pruned and per grown block), the fp32
      random growth score over every block of the layer (4 per block), and the uint8 scratch of
      :func:`~smet.sparse.topology.pack_slots` (1 per slot); with ``index: rows`` also the decode and
      re-sort of the slots (48 per slot + 8 per slot element);
    * ``measure_step``: at the step after an update, inside the optimizer step of the largest layer,
      its fp32 values before the step and their change (2 x 4 B per slot element) plus the bool mask.

    Not counted: the allocator's rounding and whatever top-k keeps internally."""
    scfg = dict(sparsity_cfg or {"method": "dense"})
    zero = {"regrown_masks": 0, "layer_update": 0, "measure_step": 0}
    if scfg.get("method", "dense") == "dense":
        return zero
    cfg = SparsityConfig.from_mapping(scfg)
    constant = str((cfg.density_schedule or {}).get("kind", "constant")) == "constant"
    if cfg.growth == "none" and constant:
        return zero
    plan = layer_plan([(o, i) for _, o, i in _targets(shapes, scfg)], cfg)
    rows = str(scfg.get("index") or "flat") == "rows"
    p0 = max(float(cfg.drop_fraction), float(cfg.drop_fraction_end))
    masks = layer = measure = 0
    for lp in plan:
        cap, blocks, b = lp["capacity"], lp["blocks"], lp["block_size"]
        n_drop = int(round(p0 * cap)) + (cap - lp["final"])
        masks += -(-cap // 8)
        work = 12 * cap + 12 * n_drop + (4 * blocks + 12 * n_drop) + cap + -(-cap // 8)
        if rows:  # decode (8), a copy of the ids (8), the sort's ids + permutation (16), its inverse (8),
            work += 40 * cap + 8 * cap * b  # the row ids (8); a permuted copy of values / one state (<= 8 per element)
        layer = max(layer, work)
        measure = max(measure, 8 * cap * b + cap)
    return {"regrown_masks": masks, "layer_update": layer, "measure_step": measure}


def active_weight_count(shapes: ModelShapes, sparsity_cfg: Mapping[str, Any] | None) -> int:
    """Active weights in the sparse layers (all weights of the target linears for a dense model)."""
    scfg = dict(sparsity_cfg or {"method": "dense"})
    found = _targets(shapes, scfg)
    if scfg.get("method", "dense") == "dense":
        return sum(o * i for _, o, i in found)
    return sum(lay["capacity"] * lay["block_size"] for lay in sparse_layer_plan([(o, i) for _, o, i in found], scfg))


# ----------------------------------------------------------------------------- formula
def bytes_per_active_weight(sparsity_cfg: Mapping[str, Any] | None, optimizer_cfg: Mapping[str, Any] | None,
                            precision: str = "32", total_steps: int | None = None) -> dict[str, float]:
    """Static bytes per active weight of a sparse layer (per weight for ``method: dense``), from the
    composed ``sparsity`` and ``optimizer`` configs (block size, materialisation, density; the local
    step exists when ``optimizer.reset_local_step`` or ``regrowth_warmup_steps > 0``).

    Returns ``{values, grads, exp_avg, exp_avg_sq, index, local_step, total}`` plus
    ``persistent_per_dense_position`` (the persistent compute copy, per DENSE position: 0 when
    transient), ``persistent_per_active`` (= that / density) and ``total_with_persistent``. See the
    module docstring for the table.
    """
    scfg = dict(sparsity_cfg or {"method": "dense"})
    ocfg = dict(optimizer_cfg or {})
    p = param_bytes(precision)
    g = 0 if ocfg.get("fused_backward") else p
    if scfg.get("method", "dense") == "dense":
        out = {"values": p, "grads": g, "exp_avg": p, "exp_avg_sq": p, "index": 0.0, "local_step": 0.0}
        out["total"] = float(sum(out.values()))
        out["persistent_per_dense_position"] = 0.0
        return out
    b = int(scfg.get("block_size", 1))
    mom = 1 + 4 / QBLOCK if str(ocfg.get("moments") or "native") == "8bit" else p
    index = 2 if str(scfg.get("index") or "flat") == "rows" else 4  # row offsets: 4 B per row, not per weight
    out = {"values": p, "grads": g, "exp_avg": mom, "exp_avg_sq": mom, "index": index / b,
           "local_step": local_step_bytes(ocfg, scfg, total_steps) / b}
    out["total"] = float(sum(out.values()))
    pers = float(compute_copy_bytes(precision)) if scfg.get("materialize", "transient") == "persistent" else 0.0
    out["persistent_per_dense_position"] = pers
    density = float(scfg.get("density", 1.0))
    out["persistent_per_active"] = pers / density
    out["total_with_persistent"] = out["total"] + pers / density
    return out


# ----------------------------------------------------------------------------- activations


def _checkpoint_mode(checkpointing: bool | str | None) -> str:
    if checkpointing is None or checkpointing is False:
        return "none"
    if checkpointing is True:
        return "block"
    if str(checkpointing) not in CHECKPOINT_MODES:
        raise ValueError(f"unknown activation checkpointing {checkpointing!r}; choose one of "
                         f"{', '.join(CHECKPOINT_MODES)} (or a bool: True = block)")
    return str(checkpointing)


def sub_block_activations(dims: Mapping[str, int], precision: str, pointwise: str = "reference") -> dict[str, int]:
    """Bytes per token of one decoder block, split as activation checkpointing sees it.

    ``attention`` / ``mlp``: what the sub-block (input norm + attention / post-attention norm + MLP)
    saves for backward; ``input``: a sub-block's input, the residual stream (what a checkpoint keeps
    instead); ``alias``: the part of a sub-block's set that IS its input (the norm's fp32 input is
    the residual tensor itself under ``32`` / ``*-mixed``, a copy under ``bf16-true``), so a
    recomputed sub-block adds ``set - alias``; ``mlp_backward`` / ``attention_backward``: the
    gradients alive together inside the sub-block's backward beyond its saved set - SwiGLU: the
    gradients of the product, of silu(gate) and of up (3 x ``s i``) once the product itself is freed
    (net ``2 s i``), or later the gradients of the norm output from up and gate (``2 s h``) with
    gate's (``s i``) once gate, up, silu(gate) and the product are freed (net ``2 s h - 3 s i``,
    larger only when ``i`` is well below ``h``); attention: the attention output's gradient and dq,
    dk, dv (``4 s h``); both plus the residual-stream gradient (``s h``; 4h under ``*-mixed``). Checked on CPU with a
    live-storage tracker (``tests/test_memory.py``). See :func:`estimate_activations`.

    ``pointwise="fused"`` (``model.pointwise``, ``smet.models.pointwise``): each RMSNorm keeps its input
    (the residual stream itself) and the fp32 ``rstd`` instead of an fp32 copy and the normalised input
    (4h less per norm), and SwiGLU keeps gate and up but not ``silu(gate)`` (``s i`` less)."""
    param_bytes(precision)
    if pointwise not in POINTWISE_IMPLS:
        raise ValueError(f"unknown pointwise {pointwise!r}; choose one of {', '.join(POINTWISE_IMPLS)}")
    fused = pointwise == "fused"
    mixed = str(precision).endswith("-mixed")
    s = 2 if (mixed or str(precision).startswith("bf16")) else 4
    h, i, a = (int(dims[k]) for k in ("hidden_size", "intermediate_size", "num_heads"))
    if mixed:  # fp32 norms (input + normalised, 8h, + rsqrt) and one 2-byte cast per projection input
        attn = 8 * h + 4 + 2 * (3 * h + 4 * h) + 4 * a
        mlp = 8 * h + 4 + 2 * (2 * h + 4 * i)
        x = 4 * h
    else:  # norm: fp32 input (4h) + rsqrt (4) + normalised input and output (2 s h)
        attn = 4 * h + 4 + s * (2 * h + 4 * h) + 4 * a
        mlp = 4 * h + 4 + s * (2 * h + 4 * i)
        x = s * h
    alias = x if x == 4 * h else 0
    if fused:  # norms: input (= x, the residual tensor) + rstd, no fp32 copy / normalised input; no silu(gate)
        attn -= 4 * h
        mlp -= 4 * h + s * i
        alias = x
    # SwiGLU's backward: the product's gradient and gate's / up's (3 s i; the fused op keeps gate and up
    # until it returns, and under *-mixed the norm's fp32 output, 4h, is still alive)
    mlp_bwd = (3 * s * i + (4 * h if mixed else 0)) if fused else 2 * s * i
    return {"attention": attn, "mlp": mlp, "input": x, "alias": alias,
            "mlp_backward": max(mlp_bwd, 2 * s * h - 3 * s * i) + x, "attention_backward": 4 * s * h + x}


def loss_activations(hidden_size: int, vocab: int, tokens: int, precision: str, loss_impl: str = "exact",
                     loss_chunk_tokens: int = 4096) -> dict[str, int]:
    """Bytes of the LM head + loss at its peak (``loss_impl`` ``exact`` or ``chunked``, ``tokens`` rows).

    ``exact``: ``12 V`` per token - the fp32 log-softmax cross-entropy saves, plus the two fp32 N x V
    gradient buffers alive in its backward (log-softmax's grad input and output).

    ``chunked`` (``smet.models.loss``; ``c = min(loss_chunk_tokens, N)`` rows a chunk, ``l`` = bytes of
    the compute dtype, 2 under bf16 precisions / autocast, 4 under ``32``): the gradients are computed
    in the forward, so its peak is inside the forward's chunk loop, where exist

    * the hidden-state gradient ``N x H`` (compute dtype) and the fp32 head-weight gradient accumulator
      ``V x H`` (``grad_h``, ``grad_w``: ``l N H + 4 V H``);
    * one chunk's logits (``l V c``), the fp32 copy ``log_softmax(dtype=float32)`` casts them to
      (``4 V c``, not under ``32``) and its fp32 output (``4 V c``);
    * the previous chunk's gradient ``softmax - onehot`` in the compute dtype (``l V c``: the loop
      variable ``g`` still holds it while the next chunk's logits are made; absent with one chunk);
    * under ``*-mixed`` also the head weight's and the chunk's rows' casts to the compute dtype
      (``l V H + l c H``; autocast is off inside, so the head has no autocast copy).

    That is ``12 V c`` under bf16 and under fp32 alike (the measured slope on an H200, 130m
    bf16-true: 12.0 V bytes per chunk row). The other moment of a chunk - its gradient ``l V c``
    plus the ``V x H`` product ``g^T h`` (compute dtype) before it is added to the accumulator - is
    taken when larger (very small chunks), as is the moment of its hidden-state gradient ``g @ w``
    and its masked copy (``l V c + 2 l c H``, small vocabularies). The loss backward holds
    ``grad_h`` and ``grad_w`` with their scaled copies (``2 l N H + (8 + p) V H``, p = 0 for fp32
    parameters); the larger of the two phases is the figure. Returns ``{"loss": bytes,
    "chunk_rows": c (0: exact), "phase": "forward" | "backward"}``.
    """
    impl = str(loss_impl)
    if impl not in LOSS_IMPLS:
        raise ValueError(f"unknown loss_impl {loss_impl!r}; choose one of {', '.join(LOSS_IMPLS)}")
    p = param_bytes(precision)
    mixed = str(precision).endswith("-mixed")
    lb = 2 if (mixed or str(precision).startswith("bf16")) else 4  # compute dtype of the head matmul
    hb = 4 if mixed else lb  # hidden states (fp32 residual stream under *-mixed)
    V, H, N = int(vocab), int(hidden_size), int(tokens)
    if impl == "exact":
        return {"loss": 12 * V * N, "chunk_rows": 0, "phase": "backward"}
    if int(loss_chunk_tokens) < 1:
        raise ValueError(f"loss_chunk_tokens must be positive, got {loss_chunk_tokens}")
    c = min(int(loss_chunk_tokens), N)
    cast = 4 if lb != 4 else 0
    prev = lb if N > c else 0
    chunk = max(V * c * (prev + lb + cast + 4),  # logits, their fp32 copy, log-softmax, previous g
                V * c * lb + 2 * lb * c * H,  # g, the chunk's hidden gradient g @ w and its masked copy
                V * (lb * c + lb * H) + lb * c * H)  # g, g^T (h * mask) before it joins the accumulator
    if hb != lb:  # *-mixed: the chunk's rows cast to the compute dtype
        chunk += lb * c * H
    # + the head weight cast to the compute dtype for the whole loop (*-mixed: fp32 parameters)
    forward = lb * N * H + 4 * V * H + (lb * V * H if p != lb else 0) + chunk
    backward = N * H * (2 * lb + (hb if hb != lb else 0)) + V * H * (8 + (p if p != 4 else 0))
    if forward >= backward:
        return {"loss": forward, "chunk_rows": c, "phase": "forward"}
    return {"loss": backward, "chunk_rows": c, "phase": "backward"}


def estimate_activations(dims: Mapping[str, int], batch: int, seq_len: int, precision: str,
                         checkpointing: bool | str, vocab: int, *, sparse_materialize: str | None = None,
                         checkpoint_every: int = 1, loss_impl: str = "exact",
                         loss_chunk_tokens: int = 4096, pointwise: str = "reference") -> dict[str, int]:
    """ESTIMATE (not a measurement) of the activation memory at the peak of one training step, bytes.

    ``dims``: the decoder's ``hidden_size``, ``intermediate_size``, ``num_heads``, ``num_layers``
    (a LLaMA model config has them as keys). ``checkpointing``: ``"none"``, ``"block"``, ``"mlp"``,
    ``"attention"`` (``model.activation_checkpointing``; a bool: ``True`` = ``"block"``), applied to
    blocks ``0, k, 2k, ...`` (``checkpoint_every`` = k). ``loss_impl`` / ``loss_chunk_tokens``: the
    model's ``model.loss_impl`` / ``model.loss_chunk_tokens`` (see :func:`loss_activations`).
    ``pointwise``: ``model.pointwise`` (``fused``: 4h less per RMSNorm and ``s i`` less per MLP, see
    :func:`sub_block_activations`; the final norm's backward adds ``2 s h`` instead of ``24 h``). The
    formulas below are the ``reference`` ones.

    Per token, with ``s`` = activation bytes (2 under ``bf16-true``, 4 under ``32``), hidden
    ``h``, intermediate ``i``, heads ``a``, layers ``L``, vocabulary ``V``:

    * per decoder layer (tensors autograd saves for backward), ``32`` / ``bf16-true``::

          8h + 8 + s * (8h + 4i) + 4a  =  attention sub-block  4h + 4 + s * 6h + 4a
                                        + MLP sub-block        4h + 4 + s * (2h + 4i)

      ``8h + 8``: each of the 2 RMSNorms keeps its fp32 input (4h) and rsqrt (4);
      ``s * 8h``: per norm the normalised input and the output (2 x 2h), q / k after RoPE and v
      (3h), the attention output (h, shared with the o_proj input); ``s * 4i``: gate, up,
      silu(gate), product; ``4a``: attention log-sum-exp (fp32). Attention scores are NOT stored
      (flash / memory-efficient SDPA, also PyTorch's CPU flash kernel);
    * ``bf16-mixed`` / ``16-mixed`` (fp32 residual stream, 2-byte autocast activations)::

          16h + 8 + 2 * (9h + 4i) + 4a  =  attention 22h + 4 + 4a  +  MLP 12h + 4 + 8i

      the norms keep fp32 normalised inputs (+8h), and every projection saves its own 2-byte cast
      of its input (q, k, v and gate, up each make one: 5h) besides q / k / v / attention output
      (4h) and the 4 MLP tensors (4i);
    * ``layers``: activation checkpointing (``torch.utils.checkpoint``, non-reentrant) keeps, per
      checkpointed block, its input instead of the checkpointed part's set (``s h``; ``4h`` under
      ``*-mixed``): ``block``: the input only; ``attention``: input + the MLP sub-block's set;
      ``mlp``: the attention sub-block's set + the MLP's input. Other blocks keep everything;
    * ``outside_layers``: ``16 + 4 + 4h + 2sh`` (token ids and targets, the final norm;
      ``20 + 10h`` under ``*-mixed``, ``20 + 12h`` with the chunked loss: its fp32 input);
    * ``logits``: the LM head + loss at its peak, :func:`loss_activations` - ``12 V`` per token
      for ``exact``; for ``chunked`` one chunk's ``~12 V`` per chunk row plus ``grad_h`` (N x H)
      and the fp32 ``V x H`` head-weight gradient accumulator;
    * ``recompute``: in backward the last checkpointed block ``j`` rebuilds its checkpointed part's
      set (less what is its kept input, :func:`sub_block_activations`), while the gradients of
      its backward (``backward_transient``: SwiGLU ``2 s i + s h``, attention ``4 s h + s h``)
      exist and blocks after ``j`` are already freed;
    * ``transient_workspace`` (sparse models, ``sparse_materialize`` given): one dense
      ``out x in`` tensor of the largest sparse layer in the compute dtype - the scattered weight
      (transient forward / backward) or the dense weight gradient that backward gathers from; the
      layer frees one before it makes the next. Dense models: 0;
    * sparse layers save their int32 block index for backward as a view of the layer's buffer
      (no copy), so the index adds nothing here;
    * ``autocast_copies`` (``*-mixed`` precisions): the 2-byte casts autocast keeps of the dense
      ``nn.Linear`` weights during the step (sparse layers cast their own values, transiently).

    ``total`` is the peak, not the sum of the parts: the larger of two moments,

    * ``loss_peak`` = ``layers + outside_layers + logits`` (end of forward / start of backward:
      every block's saved tensors, the loss's buffers; no block recomputed, no sparse layer busy);
    * ``backward_peak`` = the saved tensors of blocks ``0..j`` + ``recompute`` +
      ``backward_transient`` + ``transient_workspace``, in the backward of block ``j`` (the last
      checkpointed block; the last block without checkpointing): the larger of its MLP stage and
      its attention stage (where the MLP's set is gone); or, if larger, every block's saved tensors
      + ``24 h`` in the final RMSNorm's backward (its fp32 input and 5 fp32 ``N x h`` temporaries),

    plus ``autocast_copies``. Parameter gradients are static memory (``predict_static`` counts them
    as present); with ``optimizer.zero_grad(set_to_none=True)`` they do not exist yet at
    ``loss_peak``.

    The per-layer and outside terms match the saved tensors of this model exactly on CPU (checked
    with ``torch.autograd.graph.saved_tensors_hooks``), and ``total`` the live-tensor peak of a CPU
    step for every mode (``tests/test_memory.py``). Not counted: allocator fragmentation, CUDA
    context, cuBLAS workspaces (on an H200 a constant 64 MiB of the measured peak), kernel
    workspaces (e.g. flash attention's fp32 dq accumulator in backward), communication buffers.
    Other moments of a block's backward (the gate / up projections' input gradients, a norm's
    backward inside a block) are below these unless ``intermediate_size`` is well below
    ``hidden_size``. Use it as a planning figure, not a guarantee.
    """
    mode = _checkpoint_mode(checkpointing)
    every = int(checkpoint_every)
    if every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    mixed = str(precision).endswith("-mixed")
    s = 2 if (mixed or str(precision).startswith("bf16")) else 4
    sub = sub_block_activations(dims, precision, pointwise)
    fused = pointwise == "fused"
    h, i, L = (int(dims[k]) for k in ("hidden_size", "intermediate_size", "num_layers"))
    V = int(vocab)
    tokens = int(batch) * int(seq_len)
    A, M, x, alias = sub["attention"], sub["mlp"], sub["input"], sub["alias"]
    per_layer = A + M
    kept = {"none": per_layer, "block": x, "attention": x + M, "mlp": A + x}[mode]
    n_ckpt = 0 if mode == "none" else -(-L // every)  # blocks 0, k, 2k, ...
    last = L - 1 if mode == "none" else every * ((L - 1) // every)  # block j whose backward is the peak
    before = n_ckpt * kept + (last + 1 - n_ckpt) * per_layer  # saved by blocks 0..j
    # block j's backward: (recomputed set, gradients) in its MLP stage and in its attention stage
    rec_mlp = {"block": per_layer - alias, "mlp": M - alias}.get(mode, 0)
    rec_attn = {"block": A - alias, "attention": A - alias}.get(mode, 0)
    mlp_in_layers = M if mode in ("none", "attention") else 0  # freed before the attention stage
    mlp_stage = rec_mlp + sub["mlp_backward"]
    attn_stage = rec_attn + sub["attention_backward"] - mlp_in_layers
    outside = 20 + 10 * h if mixed else 20 + 4 * h + 2 * s * h
    if fused:  # the final norm keeps its input (the residual tensor) + rstd: no fp32 copy / normalised input
        outside -= 4 * h
    chunked = str(loss_impl) == "chunked"
    if mixed and chunked:  # the fp32 final-norm output is alive, not the head's 2-byte cast of it
        outside += 2 * h
    loss = loss_activations(h, V, tokens, precision, loss_impl, loss_chunk_tokens)
    out = {"layers": tokens * ((L - n_ckpt) * per_layer + n_ckpt * kept),
           "outside_layers": tokens * outside, "logits": loss["loss"],
           "recompute": tokens * (rec_mlp if mlp_stage >= attn_stage else rec_attn),
           "backward_transient": tokens * (sub["mlp_backward"] if mlp_stage >= attn_stage
                                           else sub["attention_backward"] - mlp_in_layers)}
    sparse = sparse_materialize in ("transient", "persistent")
    out["transient_workspace"] = max(h * h, h * i) * s if sparse else 0
    autocast = 0
    if mixed:
        dense_linear = 0 if chunked else V * h  # lm_head (the chunked loss casts it itself)
        if sparse_materialize is None:
            dense_linear += L * (4 * h * h + 3 * h * i)
        autocast = 2 * dense_linear
    out["autocast_copies"] = autocast
    out["loss_peak"] = out["layers"] + out["outside_layers"] + out["logits"]
    out["backward_peak"] = max(tokens * (before + max(mlp_stage, attn_stage)) + out["transient_workspace"],
                               out["layers"] + tokens * (2 * s * h if fused else 24 * h))  # final norm bwd
    out["total"] = autocast + max(out["loss_peak"], out["backward_peak"])
    out["per_token_per_layer"] = per_layer
    out["per_token_per_checkpointed_layer"] = kept if n_ckpt else per_layer
    out["checkpointed_layers"] = n_ckpt
    out["loss_chunk_rows"] = loss["chunk_rows"]
    return out
