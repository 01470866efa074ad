"""The cold-start statistic against SMET, and what happens to regrown weights (issue 14).

**Cold start vs SMET.** A treated run T (``set``, ``rigl`` or an ablation of SMET: any sparse method
with topology updates other than the full ``smet``) and the ``smet`` run S of the same
:func:`smet.report.paired.pair_key` (seed: the same batches; model, data, density, steps, LR
schedule and the effective LR of every parameter group) and the same update interval ΔT. Per
topology update u (made after optimizer step u), with k = ``sparsity.spike_window`` (10) and
h = ΔT // 2 (50 for ΔT = 100)::

    base_R(u)   = mean loss_R over (u - k, u]
    jump_R(u)   = mean loss_R over (u, u + h]  -  base_R(u)
    offset(u)   = jump_T(u) - jump_S(u)                    (> 0: T's update cost more loss than SMET's)
    late(u)     = (loss_T(u+ΔT-1) - base_T(u)) - (loss_S(u+ΔT-1) - base_S(u))
    peak(u)     = max over j in [1, ΔT) of the same single-step difference at u + j

The **noise floor** is the SD of the same offset taken midway between updates (m = u + h, whose
windows (m - k, m] and (m, m + h] hold no update), over all m of the pair. An update *counts* when
offset(u) >= 0.01 nats and >= 3 x the floor (the pre-registered criterion, docs/fig1_mini.md).
Updates count only when every window is fully logged by both runs.

**Regrowth diagnostics** per run, from what training logs (``smet.sparse.topology.survival_metrics``,
``LMModule``): survival of the blocks regrown at an update through the next one, their median
sum|w| over the prune threshold (and the other live blocks'), and the grad-norm and max-logit
ratio around updates: mean over (u, u + k] / mean over (u - k, u], averaged over updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from smet.report.paired import loss_by_step, pair_key, spike_window
from smet.report.runs import Run

MIN_OFFSET = 0.01  # nats
FLOOR_FACTOR = 3.0


def update_interval(run: Run) -> int | None:
    try:
        return int(run.cfg("sparsity.update_interval"))
    except (TypeError, ValueError):
        return None


def is_smet(run: Run) -> bool:
    return run.method == "smet" and not run.cfg("sparsity.variant")


def is_treated(run: Run) -> bool:
    return not run.is_dense and run.method != "static" and not is_smet(run) and bool(run.update_steps)


def label(run: Run) -> str:
    v = run.cfg("sparsity.variant")
    return run.method + (f"_{v}" if v else "")


def _mean(loss: dict[int, float], lo: int, hi: int) -> float | None:
    """Mean over steps (lo, hi]; None unless every step is there."""
    vals = [loss.get(s) for s in range(lo + 1, hi + 1)]
    return None if any(v is None for v in vals) or not vals else float(np.mean(vals))


def jump(loss: dict[int, float], u: int, k: int, h: int) -> float | None:
    pre, post = _mean(loss, u - k, u), _mean(loss, u, u + h)
    return None if pre is None or post is None else post - pre


@dataclass
class ColdStart:
    """The statistic of one (treated, smet) pair."""

    treated: Run
    smet: Run
    k: int
    h: int
    interval: int
    offsets: dict[int, float] = field(default_factory=dict)
    late: dict[int, float] = field(default_factory=dict)
    peak: dict[int, tuple[float, int]] = field(default_factory=dict)
    midway: dict[int, float] = field(default_factory=dict)

    @property
    def floor(self) -> float | None:
        v = list(self.midway.values())
        return float(np.std(v)) if len(v) > 1 else None

    @property
    def hits(self) -> int:
        f = self.floor
        return sum(1 for o in self.offsets.values() if o >= MIN_OFFSET and (f is None or o >= FLOOR_FACTOR * f))

    @property
    def mean_offset(self) -> float | None:
        return float(np.mean(list(self.offsets.values()))) if self.offsets else None


def cold_start(treated: Run, smet: Run) -> ColdStart:
    k, dt = spike_window(treated), update_interval(treated) or 100
    h = max(dt // 2, 1)
    a, b = loss_by_step(treated), loss_by_step(smet)
    cs = ColdStart(treated, smet, k, h, dt)
    for u in treated.update_steps:
        ja, jb = jump(a, u, k, h), jump(b, u, k, h)
        if ja is None or jb is None:
            continue
        cs.offsets[u] = ja - jb
        base_a, base_b = _mean(a, u - k, u), _mean(b, u - k, u)
        steps = [j for j in range(1, dt) if u + j in a and u + j in b]
        diffs = [(a[u + j] - base_a) - (b[u + j] - base_b) for j in steps]
        if diffs:
            i = int(np.argmax(diffs))
            cs.peak[u] = (float(diffs[i]), steps[i])
        if u + dt - 1 in a and u + dt - 1 in b:
            cs.late[u] = (a[u + dt - 1] - base_a) - (b[u + dt - 1] - base_b)
        m = u + h
        jm_a, jm_b = jump(a, m, k, h), jump(b, m, k, h)
        if jm_a is not None and jm_b is not None:
            cs.midway[m] = jm_a - jm_b
    return cs


def pairs(runs: Sequence[Run]) -> list[ColdStart]:
    """Every treated run with a smet partner (first in input order), as :class:`ColdStart`."""
    smets: dict[tuple, Run] = {}
    for r in runs:
        if is_smet(r) and r.update_steps:
            smets.setdefault((pair_key(r), update_interval(r)), r)
    out = []
    for r in runs:
        if is_treated(r):
            s = smets.get((pair_key(r), update_interval(r)))
            if s is not None:
                out.append(cold_start(r, s))
    return out


# ------------------------------------------------------------------ regrowth diagnostics
def _series_mean(run: Run, metric: str) -> float | None:
    _, v = run.series(metric)
    v = [x for x in np.asarray(v, dtype=float).tolist() if math.isfinite(x)]
    return float(np.mean(v)) if v else None


def _ratio_around_updates(run: Run, metric: str) -> float | None:
    st, v = run.series(metric)
    vals = {int(s): float(x) for s, x in zip(run.opt_step(st).tolist(), np.asarray(v, dtype=float).tolist())
            if math.isfinite(x)}
    if not vals:
        return None
    k = spike_window(run)
    ratios = []
    for u in run.update_steps:
        pre, post = _mean(vals, u - k, u), _mean(vals, u, u + k)
        if pre and post is not None:
            ratios.append(post / pre)
    return float(np.mean(ratios)) if ratios else None


def diagnostics(run: Run) -> dict[str, float | None]:
    return {"regrown_survival": _series_mean(run, "sparsity/regrown_survival"),
            "regrown_score_ratio": _series_mean(run, "sparsity/regrown_score_ratio"),
            "mature_score_ratio": _series_mean(run, "sparsity/mature_score_ratio"),
            "grad_norm_ratio": _ratio_around_updates(run, "train/grad_norm"),
            "max_logit_ratio": _ratio_around_updates(run, "train/max_logit")}


# --------------------------------------------------------------------------- output
def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None or not math.isfinite(v) else format(v, fmt)


def _name(r: Run) -> str:
    """The run's directory name (smet-fidelity and multirun names tell LR and seed apart), else its name."""
    from pathlib import Path

    src = str(r.source or "")
    return Path(src).name if src and "://" not in src else (r.name or src)


def markdown(runs: Sequence[Run], cs: Sequence[ColdStart] | None = None) -> str:
    """The report sections (empty string when there is nothing to show); ``cs``: :func:`pairs` of
    ``runs`` when the caller has them."""
    out: list[str] = []
    cs = pairs(runs) if cs is None else cs
    if cs:
        out += ["## Cold start vs SMET (paired)", "",
                "offset(u) = jump of the treated run minus jump of the smet run of the same seed, LR and data "
                "(jump = mean loss over (u, u+ΔT/2] minus mean over (u-k, u]); floor = SD of the same offset "
                f"midway between updates; counted: offset >= {MIN_OFFSET} and >= {FLOOR_FACTOR:g} x floor "
                "(`smet.report.coldstart`).", "",
                "| treated | smet partner | updates | mean offset | counted | floor SD | mean late (u+ΔT-1) | "
                "mean peak | per update |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for c in cs:
            late = float(np.mean(list(c.late.values()))) if c.late else None
            peak = float(np.mean([p for p, _ in c.peak.values()])) if c.peak else None
            per = " ".join(f"{u}:{o:+.3f}" for u, o in c.offsets.items())
            out.append(f"| {_name(c.treated)} | {_name(c.smet)} | {len(c.offsets)} | {_f(c.mean_offset, '+.4f')} | "
                       f"{c.hits} / {len(c.offsets)} | {_f(c.floor, '.4f')} | {_f(late, '+.4f')} | {_f(peak, '+.4f')} "
                       f"| {per} |")
        out.append("")
    diag = [(r, diagnostics(r)) for r in runs if not r.is_dense and r.update_steps]
    diag = [(r, d) for r, d in diag if any(v is not None for v in d.values())]
    if diag:
        out += ["## Regrowth diagnostics", "",
                "survival: fraction of the blocks regrown at an update that the next update did not prune; score "
                "ratios: median block sum|w| over the prune threshold (regrown at the previous update / other live "
                "blocks); grad-norm and max-logit ratio: mean over (u, u+k] / mean over (u-k, u].", "",
                "| run | survival | regrown score / threshold | mature score / threshold | grad-norm ratio | "
                "max-logit ratio |", "|---|---:|---:|---:|---:|---:|"]
        for r, d in diag:
            out.append(f"| {_name(r)} | {_f(d['regrown_survival'], '.3f')} | {_f(d['regrown_score_ratio'], '.3f')} | "
                       f"{_f(d['mature_score_ratio'], '.2f')} | {_f(d['grad_norm_ratio'], '.3f')} | "
                       f"{_f(d['max_logit_ratio'], '.3f')} |")
        out.append("")
    return "\n".join(out)


def write_csv(runs: Sequence[Run], path, cs: Sequence[ColdStart] | None = None) -> int:
    """coldstart.csv: one row per (pair, update); returns the rows written (no file when 0)."""
    import csv

    rows = []
    for c in (pairs(runs) if cs is None else cs):
        for u, o in c.offsets.items():
            p = c.peak.get(u)
            rows.append({"treated": _name(c.treated), "smet": _name(c.smet), "update": u, "offset": o,
                         "late": c.late.get(u, ""), "peak": p[0] if p else "", "peak_step": (u + p[1]) if p else "",
                         "floor_sd": c.floor if c.floor is not None else "", "k": c.k, "h": c.h})
    if rows:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return len(rows)


def plot(groups, path) -> str | None:
    """Offset per update for every (treated, smet) pair, with the ±3 x floor band."""
    from smet.report.plots import _plt, _save

    runs = [r for g in groups for r in g.runs]
    cs = pairs(runs)
    if not cs:
        return ("no cold-start pair: no set / rigl / SMET-ablation run has a smet run of the same seed, LR, data, "
                "density, steps and update interval among the compared runs")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.6))
    for i, c in enumerate(cs):
        us = list(c.offsets)
        line, = ax.plot(us, [c.offsets[u] for u in us], marker="o", ms=3,
                        label=f"{_name(c.treated)} − {_name(c.smet)} (counted {c.hits}/{len(us)})")
        if c.floor is not None:
            ax.fill_between(us, -FLOOR_FACTOR * c.floor, FLOOR_FACTOR * c.floor, color=line.get_color(), alpha=0.08)
    ax.axhline(0, color="k", lw=0.8)
    ax.axhline(MIN_OFFSET, color="k", lw=0.6, ls=":")
    ax.set_xlabel("topology update u (optimizer step)")
    ax.set_ylabel("offset(u): jump_treated − jump_smet (nats)")
    ax.set_title("Cold start vs SMET: paired jump after each update (bands: ±3 x midway noise floor)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.25)
    return _save(fig, path)
