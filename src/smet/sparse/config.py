"""Schema checks for the ``sparsity`` config group and the SMET optimizer keys (no Hydra import).

Each failure raises :class:`~smet.sparse.errors.ConfigError` (``smet.errors.SmetConfigError``)
naming the key, before any compute. No other smet package is imported (the core stands alone).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from smet.sparse.errors import ConfigError as SmetConfigError


def lr_scale(density: float, mode: str) -> float:
    """The density-aware LR factor s(d): 1 (``none``, or d >= 1), 1/d (``inverse``), 1/sqrt(d)
    (``inverse_sqrt``). Torch-free, so smet-compare's pairing uses the very same function."""
    if mode == "none" or density >= 1.0:
        return 1.0
    if mode == "inverse":
        return 1.0 / density
    if mode == "inverse_sqrt":
        return 1.0 / math.sqrt(density)
    raise ValueError(f"unknown lr_scaling {mode!r}")

METHODS = ("dense", "static", "set", "rigl", "smet")
#: activation checkpointing modes (``model.activation_checkpointing``; ``smet.models.llama``, ``smet.sparse.memory``)
CHECKPOINT_MODES = ("none", "block", "mlp", "attention")
#: LM-head + loss implementations (``model.loss_impl``; ``smet.models.llama`` / ``smet.models.loss``)
LOSS_IMPLS = ("exact", "chunked")
#: RMSNorm / RoPE / SwiGLU implementations (``model.pointwise``; ``smet.models.pointwise``)
POINTWISE_IMPLS = ("reference", "fused")
GROWTH = ("random", "gradient", "none")
MATERIALIZE = ("transient", "persistent")
INDEX_KINDS = ("flat", "rows")  # SparseLinear.index: int32 flat block ids | int16 column blocks sorted by row
ROWS_MAX_BLOCKS = 32767  # index=rows: int16 column blocks per row
ALLOCATION = ("uniform", "erk")
DROP_SCHEDULES = ("cosine", "linear", "constant")
DENSITY_SCHEDULES = ("constant", "gradual")
LR_SCALING = ("none", "inverse", "inverse_sqrt")
LR_SCALING_SCOPE = ("sparse", "all")
WARMUP_SHAPES = ("linear", "momentum")
LOCAL_STEP_STORAGES = ("code", "counter")  # smet.sparse.optimizer: 1-byte regrowth codes | int16/int32 counters
MOMENT_STORAGES = ("native", "8bit")  # sparse layers' Adam moments: the parameter's dtype | block-wise 8-bit
# sparsifiable modules of a LLaMA block, plus the head (names as in the HF LLaMA layout)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _choice(sp: Mapping, key: str, options, prefix: str) -> None:
    v = sp.get(key)
    if v not in options:
        raise SmetConfigError(f"{prefix}.{key}", f"unknown value {v!r}; choose one of {', '.join(options)}")


def check_block_size(block_size: Any, row_lengths: Mapping[str, Any] | None = None,
                     key: str = "sparsity.block_size", where: str = "") -> int:
    """The one block-size check: a positive integer that divides every row length.

    ``row_lengths`` maps a name (as printed, e.g. ``model.hidden_size``) to a row length; entries
    that are not integers are skipped. Raises :class:`ConfigError` naming ``key``, e.g.
    ``sparsity.block_size: 3 does not divide the row length model.hidden_size=64{where}``.
    """
    if not _is_int(block_size) or block_size < 1:
        raise SmetConfigError(key, f"must be a positive integer, got {block_size!r}")
    for name, dim in (row_lengths or {}).items():
        if _is_int(dim) and dim % block_size:
            raise SmetConfigError(key, f"{block_size} does not divide the row length {name}={dim}{where}")
    return block_size


def check_sparsity_config(sp: Mapping, opt: Mapping, model: Mapping | None = None) -> None:
    method = sp.get("method", "dense")
    if method not in METHODS:
        raise SmetConfigError("sparsity.method", f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    d = sp.get("density", 1.0)
    if not _num(d) or not 0.0 < d <= 1.0:
        raise SmetConfigError("sparsity.density", f"must be in (0, 1], got {d!r}")
    if method == "dense":
        return
    for key, opts in (("growth", GROWTH), ("materialize", MATERIALIZE), ("allocation", ALLOCATION),
                      ("drop_schedule", DROP_SCHEDULES)):
        _choice(sp, key, opts, "sparsity")
    b = check_block_size(sp.get("block_size", 1),
                         {f"model.{k}": (model or {}).get(k) for k in ("hidden_size", "intermediate_size")})
    if sp.get("index") is not None:  # absent in configs written before it existed
        _choice(sp, "index", INDEX_KINDS, "sparsity")
        if sp["index"] == "rows":
            if sp.get("materialize", "transient") != "transient":
                raise SmetConfigError("sparsity.index", "rows needs sparsity.materialize=transient (a persistent "
                                                        "dense copy outweighs the 2 bytes it saves per slot)")
            for k in ("hidden_size", "intermediate_size"):
                dim = (model or {}).get(k)
                if _is_int(dim) and dim // b > ROWS_MAX_BLOCKS:
                    raise SmetConfigError("sparsity.index", f"rows holds at most {ROWS_MAX_BLOCKS} blocks per row; "
                                                            f"model.{k}={dim} / block size {b} has {dim // b}")
    ui = sp.get("update_interval")
    if not _is_int(ui) or ui <= 0:
        raise SmetConfigError("sparsity.update_interval", f"must be a positive integer, got {ui!r}")
    for key in ("update_start", "update_stop"):
        v = sp.get(key)
        if v is not None and (not _is_int(v) or v < 0):
            raise SmetConfigError(f"sparsity.{key}", f"must be null or a non-negative integer, got {v!r}")
    start, stop = sp.get("update_start"), sp.get("update_stop")
    if _is_int(start) and _is_int(stop) and start > stop:
        raise SmetConfigError("sparsity.update_start", f"{start} is after sparsity.update_stop={stop}")
    sw = sp.get("spike_window", 10)
    if not _is_int(sw) or sw < 1:
        raise SmetConfigError("sparsity.spike_window", f"must be an integer >= 1, got {sw!r}")
    eps = sp.get("erk_power_scale", 1.0)
    if not _num(eps) or eps < 0:
        raise SmetConfigError("sparsity.erk_power_scale", f"must be a number >= 0, got {eps!r}")
    for key in ("drop_fraction", "drop_fraction_end"):
        v = sp.get(key)
        if not _num(v) or not 0.0 <= v < 1.0:
            raise SmetConfigError(f"sparsity.{key}", f"must be in [0, 1), got {v!r}")
    dbg = sp.get("debug_check_masks", False)
    if not isinstance(dbg, bool):
        raise SmetConfigError("sparsity.debug_check_masks", f"must be true or false, got {dbg!r}")
    targets = sp.get("targets")
    if not targets or isinstance(targets, str):
        raise SmetConfigError("sparsity.targets", f"must be a non-empty list of module names, got {targets!r}")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise SmetConfigError("sparsity.targets", f"unknown module name(s) {', '.join(map(str, unknown))}; choose "
                                                  f"from {', '.join(TARGETS)}")
    if model and sp.get("allocation", "uniform") == "uniform":
        h, i = model.get("hidden_size"), model.get("intermediate_size")
        if _is_int(h) and _is_int(i):
            smallest = min(h * h if t.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else h * i for t in targets
                           if t != "lm_head")  if any(t != "lm_head" for t in targets) else h * h
            if round(d * smallest / b) < 1:
                raise SmetConfigError("sparsity.density", f"{d} leaves no active weight in the smallest sparse "
                                                          f"layer ({smallest} weights, block size {b})")
    ds = sp.get("density_schedule") or {"kind": "constant"}
    _choice(ds, "kind", DENSITY_SCHEDULES, "sparsity.density_schedule")
    if ds.get("kind") == "gradual":
        init = ds.get("initial", 1.0)
        if not _num(init) or not 0.0 < init <= 1.0:
            raise SmetConfigError("sparsity.density_schedule.initial", f"must be in (0, 1], got {init!r}")
        start, end = ds.get("start") or 0, ds.get("end")
        if end is not None and (not _is_int(end) or end <= start):
            raise SmetConfigError("sparsity.density_schedule.end", f"must be an integer > start ({start}), got {end!r}")
    # optimizer keys that only matter for sparse runs
    w = opt.get("regrowth_warmup_steps", 0)
    if not _is_int(w) or w < 0:
        raise SmetConfigError("optimizer.regrowth_warmup_steps", f"must be an integer >= 0, got {w!r}")
    _choice(opt, "lr_scaling", LR_SCALING, "optimizer")
    _choice(opt, "lr_scaling_scope", LR_SCALING_SCOPE, "optimizer")
    _choice(opt, "warmup_shape", WARMUP_SHAPES, "optimizer")
    if opt.get("local_step_storage") is not None:  # absent in configs written before it existed
        _choice(opt, "local_step_storage", LOCAL_STEP_STORAGES, "optimizer")
    if opt.get("moments") is not None:
        _choice(opt, "moments", MOMENT_STORAGES, "optimizer")
    for key in ("reset_local_step", "reset_moments"):
        if not isinstance(opt.get(key), bool):
            raise SmetConfigError(f"optimizer.{key}", f"must be true or false, got {opt.get(key)!r}")
