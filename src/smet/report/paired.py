"""The paired loss-spike metric: a sparse run's loss after each topology update, relative to its
``static`` twin (same seed, model, density and data: the same batches, the same density, no updates).

The plain spike (``sparsity/spike``: mean train loss of the k steps after an update minus the k
steps up to it) is dominated by the downward loss trend and by batch-to-batch noise, so it is
negative for every method. Runs of one seed see the identical batch sequence, so subtracting the
static run's loss step by step removes both. For a sparse run R and its static partner S::

    d(t)            = loss_R(t) - loss_S(t)                      (optimizer steps t logged by both)
    paired spike(u) = mean d over (u, u + k]  -  mean d over (u - k, u]

for every topology update u of R (made after optimizer step u, so step u + 1 is the first loss
with the new topology; the same windows as ``sparsity/spike``), k = R's ``sparsity.spike_window``
(default 10). An update counts only when both windows are fully inside what both runs logged
(u + k <= last common step) and each holds at least one common step. > 0: the update cost loss
relative to not updating at all.

A partner is a run with ``sparsity.method = static`` whose :func:`pair_key` equals R's: the
:data:`PAIR_KEYS` values (seed, the whole ``model`` and ``data`` sections except paths / workers, the
density, ``trainer.max_steps``, ``trainer.precision`` and the LR schedule's shape) and the EFFECTIVE peak LR of every
parameter group (:func:`effective_lrs`: ``optimizer.lr`` x the density scale s(d) of
``optimizer.lr_scaling`` where ``optimizer.lr_scaling_scope`` applies it, separately for the sparse
layers and for the dense parameters). So a SMET run at ``optimizer.lr`` = 1e-3 with 1/d scaling of
every parameter at d = 0.25 pairs with the static run at 4e-3, not with the static run at 1e-3.
With several candidates the first in input order wins.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from smet.report.runs import Run, flatten
from smet.sparse.config import lr_scale

DEFAULT_SPIKE_WINDOW = 10
PAIR_KEYS = ("seed", "model", "data", "sparsity.density", "trainer.max_steps", "trainer.precision",
             "optimizer.schedule", "optimizer.warmup_fraction", "optimizer.warmup_steps", "optimizer.min_lr_ratio")
DATA_IGNORED = ("cache_dir", "num_workers", "path")
# what smet.sparse.optimizer.option_defaults / conf/optimizer/adamw.yaml give a config that leaves a key out
DEFAULT_LR_SCALING, DEFAULT_LR_SCALING_SCOPE = "none", "all"


def _lr_value(x: float) -> float:
    return float(f"{x:.10g}")  # 1e-3 / 0.25 and 4e-3 compare equal


def effective_lrs(run: Run) -> tuple:
    """(sparse layers' peak LR, dense parameters' peak LR) as the SMET optimizer builds its groups
    (:func:`smet.sparse.optimizer.build_smet_optimizer`): scope ``all`` scales every parameter by
    s(d) of ``sparsity.density``; scope ``sparse`` scales each sparse layer by s of its own density
    and leaves the dense parameters at ``optimizer.lr``. With a non-uniform allocation (erk) and scope
    ``sparse`` the per-layer scales differ: the sparse entry is then (lr, lr_scaling, allocation).
    Values that cannot be read are returned as they are (they still have to be equal)."""
    lr = run.cfg("optimizer.lr")
    mode = run.cfg("optimizer.lr_scaling") or DEFAULT_LR_SCALING
    scope = run.cfg("optimizer.lr_scaling_scope") or DEFAULT_LR_SCALING_SCOPE
    density = run.cfg("sparsity.density")
    try:
        lr, density = float(lr), float(density) if run.method != "dense" else 1.0
        s = lr_scale(density, str(mode))
    except (TypeError, ValueError):
        return ("unreadable", lr, mode, scope, density)
    if scope == "all":
        return _lr_value(lr * s), _lr_value(lr * s)
    allocation = run.cfg("sparsity.allocation") or "uniform"
    if allocation != "uniform" and s != 1.0:
        return (_lr_value(lr), str(mode), str(allocation)), _lr_value(lr)
    return _lr_value(lr * s), _lr_value(lr)


def _hashable(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((str(k), _hashable(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def pair_key(run: Run) -> tuple:
    """What a run and its static partner must share (see the module docstring)."""
    out = []
    for k in PAIR_KEYS:
        v = run.cfg(k)
        if k == "data" and isinstance(v, dict):
            v = {kk: vv for kk, vv in flatten(v).items() if kk.split(".")[0] not in DATA_IGNORED}
        elif k == "sparsity.density" and v is not None:
            try:
                v = float(v)
            except (TypeError, ValueError):
                pass
        out.append(_hashable(v))
    out.append(effective_lrs(run))
    return tuple(out)


def spike_window(run: Run) -> int:
    k = run.cfg("sparsity.spike_window", DEFAULT_SPIKE_WINDOW)
    try:
        return max(int(k), 1)
    except (TypeError, ValueError):
        return DEFAULT_SPIKE_WINDOW


def loss_by_step(run: Run) -> dict[int, float]:
    """Finite train losses keyed by optimizer step."""
    st, v = run.series("train/loss")
    return {int(s): float(x) for s, x in zip(run.opt_step(st).tolist(), v.tolist()) if math.isfinite(x)}


def paired_difference(run: Run, static: Run) -> dict[int, float]:
    """d(t) = loss_R(t) - loss_S(t) on the optimizer steps both runs logged."""
    a, b = loss_by_step(run), loss_by_step(static)
    return {s: a[s] - b[s] for s in sorted(a.keys() & b.keys())}


def paired_spikes(run: Run, static: Run, k: int | None = None) -> dict[int, float]:
    """Paired spike per topology update of ``run`` (keyed by the update's optimizer step)."""
    k = spike_window(run) if k is None else max(int(k), 1)
    d = paired_difference(run, static)
    if not d:
        return {}
    last = max(d)
    out: dict[int, float] = {}
    for u in run.update_steps:
        if u + k > last:
            continue
        before = [d[s] for s in range(u - k + 1, u + 1) if s in d]
        after = [d[s] for s in range(u + 1, u + k + 1) if s in d]
        if before and after:
            out[u] = float(np.mean(after) - np.mean(before))
    return out


def attach_pairs(runs: Sequence[Run]) -> int:
    """Find each sparse run's static partner and store ``run.paired_with`` / ``run.paired_spikes``
    (None when there is none, or for dense and static runs). Returns the number of runs paired."""
    statics: dict[tuple, Run] = {}
    for r in runs:
        if r.method == "static":
            statics.setdefault(pair_key(r), r)
    n = 0
    for r in runs:
        r.paired_with, r.paired_spikes = None, None
        if r.is_dense or r.method == "static":
            continue
        s = statics.get(pair_key(r))
        if s is None:
            continue
        r.paired_with = s
        r.paired_spikes = paired_spikes(r, s)
        n += 1
    return n


def run_mean(run: Run) -> float | None:
    """Mean paired spike over a run's updates (None: no partner, or no complete window)."""
    vals = list((run.paired_spikes or {}).values())
    return float(np.mean(vals)) if vals else None


def aligned_difference(run: Run, offsets: range) -> dict[int, list[float]]:
    """d(u + j) minus the mean of d over (u - k, u], per offset j, one value per update u
    (the event-aligned paired curve drawn next to the bars)."""
    if run.paired_with is None:
        return {}
    k = spike_window(run)
    d = paired_difference(run, run.paired_with)
    out: dict[int, list[float]] = {}
    for u in (run.paired_spikes or {}):
        before = [d[s] for s in range(u - k + 1, u + 1) if s in d]
        if not before:
            continue
        base = float(np.mean(before))
        for j in offsets:
            if (u + j) in d:
                out.setdefault(j, []).append(d[u + j] - base)
    return out
