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
grads         ``.grad`` tensors that exist (predictions assume they do: right after backward)
optimizer     every tensor in ``optimizer.state`` except ``local_step`` (m, v, AdamW's 0-dim
              fp32 ``step`` of dense parameters; the SMET optimizer's sparse ``step`` is a
              python int and costs nothing)
metadata      sparse layers' ``idx`` (int32, one per block slot) + the optimizer's per-slot
              ``local_step`` (int16 / int32)
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
``16-mixed``; 2 for ``bf16-true``). The index costs 4 B per block slot, the local step 2 B
(int16: default betas and W <= 17,329) or 4 B (int32) per block slot and only exists when the
optimizer tracks local steps (``reset_local_step`` or ``regrowth_warmup_steps > 0``). The method
semantics (which optimizer options a method sets) come from the composed configs
(``conf/sparsity/*.yaml``); this module defines no method table.

=============================  ======  =====  ===  ===  =======  ==========  ==============
configuration                  values  grads  m    v    index    local step  total (b = 1)
=============================  ======  =====  ===  ===  =======  ==========  ==============
dense AdamW, fp32 states       4       4      4    4    -        -           16 per weight
dense AdamW, pure bf16         2       2      2    2    -        -           8 per weight
smet, fp32 states              4       4      4    4    4/b      2/b         22
smet, pure bf16 (bf16-true)    2       2      2    2    4/b      2/b         14
static / set / rigl, fp32      4       4      4    4    4/b      0           20
static / set / rigl, bf16      2       2      2    2    4/b      0           12
=============================  ======  =====  ===  ===  =======  ==========  ==============

``materialize="persistent"`` adds a dense compute copy: +2 B (bf16 precisions) or +4 B per
DENSE position of every sparse layer, i.e. +2/d or +4/d per active weight at density d. In the
default ``transient`` mode a dense weight exists only inside one layer's forward/backward (see
:func:`estimate_activations`, ``transient_workspace``). Break-even against dense AdamW at b = 1
(smet): d = 16/22 = 0.73 with fp32 states, 8/14 = 0.57 in pure bf16; at b = 4 the metadata
drops to 1.5 B (smet, 17.5 B and 9.5 B per active weight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from smet.sparse.layer import SparseLinear
from smet.sparse.optimizer import option_defaults, saturation_step
from smet.sparse.topology import DEFAULT_TARGETS, SparsityConfig, layer_plan

CATEGORIES = ("weights", "grads", "optimizer", "metadata", "compute_copy", "buffers")
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


def local_step_bytes(optimizer_cfg: Mapping[str, Any]) -> int:
    """Bytes per block slot of the SMET optimizer's local step (0 when it tracks none)."""
    o = option_defaults() | {k: v for k, v in dict(optimizer_cfg).items() if v is not None}
    w = int(o["regrowth_warmup_steps"])
    if not (bool(o["reset_local_step"]) or w > 0):
        return 0
    b1, b2 = (float(x) for x in o["betas"])
    cap = max(saturation_step(b1, b2), w)
    return 2 if cap <= torch.iinfo(torch.int16).max else 4


# ----------------------------------------------------------------------------- measuring
class _Counter:
    """Adds storage sizes into categories, each storage once."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, int, int]] = set()
        self.out = {k: 0 for k in CATEGORIES}

    def add(self, cat: str, t: torch.Tensor | None) -> None:
        if t is None or not isinstance(t, torch.Tensor) or t.is_meta:
            return
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
                   targets: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
    """Static memory of a live model + optimizer in bytes: ``{"all": {...}, "sparse": {...}}``.

    ``sparse`` is the :class:`~smet.sparse.topology.SparseController` (found from the model's
    ``SparseLinear`` modules when omitted). For a dense model the ``"sparse"`` breakdown covers the
    target linears (``targets``, default the 7 projections). See the module docstring for the
    categories. Measure right after ``optimizer.step()`` and before ``zero_grad`` to include grads.
    """
    layers = _sparse_layers(model, sparse)
    if layers:
        sparse_params = [layer.values for layer in layers]
    else:
        sparse_params = [m.weight for m in _target_linears(model, targets)]
    sparse_ids = {id(p) for p in sparse_params}
    state = optimizer.state if optimizer is not None else {}

    def states(p) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        st = state.get(p, {}) if optimizer is not None else {}
        opt_t, meta_t = [], []
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                (meta_t if k == "local_step" else opt_t).append(v)
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

    idx_bufs = [layer.idx for layer in layers]
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


def predict_static(shapes: ModelShapes, sparsity_cfg: Mapping[str, Any] | None,
                   optimizer_cfg: Mapping[str, Any] | None, precision: str) -> dict[str, dict[str, int]]:
    """What :func:`measure_static` will report after a training step (grads present), from the
    model's shapes and the configs alone. Same dict shape; exact for every method, block size,
    allocation and both materialisation modes. The optimizer is AdamW for ``method: dense`` and the
    SMET optimizer otherwise; dense parameters carry a 0-dim fp32 ``step`` each.
    """
    scfg = dict(sparsity_cfg or {"method": "dense"})
    ocfg = dict(optimizer_cfg or {})
    p = param_bytes(precision)
    found = _targets(shapes, scfg)
    target_names = {n for n, _, _ in found}
    is_dense = scfg.get("method", "dense") == "dense"

    allb = {k: 0 for k in CATEGORIES}
    sp = {k: 0 for k in CATEGORIES}
    for name, shape in shapes.params:  # dense params (all of them for the dense baseline)
        if not is_dense and name in target_names:
            continue
        n = _numel(shape)
        dst = (allb, sp) if name in target_names else (allb,)
        for d in dst:
            d["weights"] += n * p
            d["grads"] += n * p
            d["optimizer"] += 2 * n * p + 4  # exp_avg, exp_avg_sq, 0-dim fp32 step
    for _, shape, floating, size in shapes.buffers:
        allb["buffers"] += _numel(shape) * (p if floating else size)
    if not is_dense:
        plan = sparse_layer_plan([(o, i) for _, o, i in found], scfg)
        ls = local_step_bytes(ocfg)
        cc = compute_copy_bytes(precision) if scfg.get("materialize", "transient") == "persistent" else 0
        for lay in plan:
            cap, b = lay["capacity"], lay["block_size"]
            vals = cap * b
            for d in (allb, sp):
                d["weights"] += vals * p
                d["grads"] += vals * p
                d["optimizer"] += 2 * vals * p
                d["metadata"] += cap * 4 + cap * ls
                d["compute_copy"] += lay["out"] * lay["in"] * cc
    for d in (allb, sp):
        d["total"] = sum(d[k] for k in CATEGORIES)
    return {"all": allb, "sparse": sp}


def active_weight_count(shapes: ModelShapes, sparsity_cfg: Mapping[str, Any] | None) -> int:
    """Active weights in the sparse layers (all weights of the target linears for a dense model)."""
    scfg = dict(sparsity_cfg or {"method": "dense"})
    found = _targets(shapes, scfg)
    if scfg.get("method", "dense") == "dense":
        return sum(o * i for _, o, i in found)
    return sum(lay["capacity"] * lay["block_size"] for lay in sparse_layer_plan([(o, i) for _, o, i in found], scfg))


# ----------------------------------------------------------------------------- formula
def bytes_per_active_weight(sparsity_cfg: Mapping[str, Any] | None, optimizer_cfg: Mapping[str, Any] | None,
                            precision: str = "32") -> dict[str, float]:
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
    if scfg.get("method", "dense") == "dense":
        out = {"values": p, "grads": p, "exp_avg": p, "exp_avg_sq": p, "index": 0.0, "local_step": 0.0}
        out["total"] = float(sum(out.values()))
        out["persistent_per_dense_position"] = 0.0
        return out
    b = int(scfg.get("block_size", 1))
    out = {"values": p, "grads": p, "exp_avg": p, "exp_avg_sq": p, "index": 4 / b,
           "local_step": local_step_bytes(ocfg) / b}
    out["total"] = float(sum(out.values()))
    pers = float(compute_copy_bytes(precision)) if scfg.get("materialize", "transient") == "persistent" else 0.0
    out["persistent_per_dense_position"] = pers
    density = float(scfg.get("density", 1.0))
    out["persistent_per_active"] = pers / density
    out["total_with_persistent"] = out["total"] + pers / density
    return out


# ----------------------------------------------------------------------------- activations
def estimate_activations(dims: Mapping[str, int], batch: int, seq_len: int, precision: str,
                         checkpointing: bool, vocab: int, *, sparse_materialize: str | None = None) -> dict[str, int]:
    """ESTIMATE (not a measurement) of the activation memory at the peak of one training step, bytes.

    ``dims``: the decoder's ``hidden_size``, ``intermediate_size``, ``num_heads``, ``num_layers``
    (a LLaMA model config has them as keys).

    Per token, with ``s`` = activation bytes (2 under ``bf16-true``, 4 under ``32``), hidden
    ``h``, intermediate ``i``, heads ``a``, layers ``L``, vocabulary ``V``:

    * per decoder layer (tensors autograd saves for backward), ``32`` / ``bf16-true``::

          8h + 8 + s * (8h + 4i) + 4a

      ``8h + 8``: each of the 2 RMSNorms keeps its fp32 input (4h) and rsqrt (4);
      ``s * 8h``: per norm the normalised input and the output (2 x 2h), q / k after RoPE and v
      (3h), the attention output (h, shared with the o_proj input); ``s * 4i``: gate, up,
      silu(gate), product; ``4a``: attention log-sum-exp (fp32). Attention scores are NOT stored
      (flash / memory-efficient SDPA, also PyTorch's CPU flash kernel);
    * ``bf16-mixed`` / ``16-mixed`` (fp32 residual stream, 2-byte autocast activations)::

          16h + 8 + 2 * (9h + 4i) + 4a

      the norms keep fp32 normalised inputs (+8h), and every projection saves its own 2-byte cast
      of its input (q, k, v and gate, up each make one: 5h) besides q / k / v / attention output
      (4h) and the 4 MLP tensors (4i);
    * with activation checkpointing: each layer keeps only its input (``s * h``; 4h under
      ``*-mixed``), plus one layer's full set while it is recomputed in backward;
    * outside the layers: ``16 + 4 + 4h + 2sh`` (token ids and targets, the final norm;
      ``20 + 10h`` under ``*-mixed``);
    * logits: ``12 V`` - the fp32 log-softmax cross-entropy saves, plus the two fp32 gradient
      buffers alive at the start of backward (the loss is computed in fp32 whatever the precision);
    * ``transient_workspace`` (sparse models, ``sparse_materialize`` given): one dense
      ``out x in`` tensor of the largest sparse layer in the compute dtype - the scattered weight
      (transient forward / backward) or the dense weight gradient that backward gathers from; the
      layer frees one before it makes the next. Dense models: 0;
    * sparse layers save their int32 block index for backward as a view of the layer's buffer
      (no copy), so the index adds nothing here;
    * ``autocast_copies`` (``*-mixed`` precisions): the 2-byte casts autocast keeps of the dense
      ``nn.Linear`` weights during the step (sparse layers cast their own values, transiently).

    The per-layer and outside terms match the saved tensors of this model exactly on CPU (checked
    with ``torch.autograd.graph.saved_tensors_hooks``). Not counted: allocator fragmentation,
    CUDA context / cuBLAS workspaces, communication buffers, short-lived intermediates inside a
    layer's backward. Use it as a planning figure, not a guarantee.
    """
    param_bytes(precision)
    mixed = str(precision).endswith("-mixed")
    s = 2 if (mixed or str(precision).startswith("bf16")) else 4
    h, i, a, L = (int(dims[k]) for k in ("hidden_size", "intermediate_size", "num_heads", "num_layers"))
    V = int(vocab)
    tokens = int(batch) * int(seq_len)
    if mixed:
        per_layer = 16 * h + 8 + 2 * (9 * h + 4 * i) + 4 * a
        layer_input, outside = 4 * h, 20 + 10 * h
    else:
        per_layer = 8 * h + 8 + s * (8 * h + 4 * i) + 4 * a
        layer_input, outside = s * h, 20 + 4 * h + 2 * s * h
    if checkpointing:
        layers = tokens * (L * layer_input + per_layer)
    else:
        layers = tokens * L * per_layer
    out = {"layers": layers, "outside_layers": tokens * outside, "logits": tokens * 12 * V}
    sparse = sparse_materialize in ("transient", "persistent")
    out["transient_workspace"] = max(h * h, h * i) * s if sparse else 0
    autocast = 0
    if mixed:
        dense_linear = V * h  # lm_head
        if sparse_materialize is None:
            dense_linear += L * (4 * h * h + 3 * h * i)
        autocast = 2 * dense_linear
    out["autocast_copies"] = autocast
    out["total"] = sum(out.values())
    out["per_token_per_layer"] = per_layer
    return out
