"""The report's PNG figures (matplotlib, Agg backend; nothing is shown on screen).

Every ``plot_*`` function returns ``None`` when it wrote the file, or a one-line reason why the
figure was skipped (no such data in these runs), which the report lists.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from smet.report.table import Group, fmt_value, mean_std

DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def colors(groups: Sequence[Group]) -> dict[int, str]:
    """One colour per group, stable across figures; dense groups in black/greys."""
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
               "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]
    greys = ["#000000", "#555555", "#888888"]
    out, ci, gi = {}, 0, 0
    for i, g in enumerate(groups):
        if g.is_dense:
            out[i] = greys[gi % len(greys)]
            gi += 1
        else:
            out[i] = palette[ci % len(palette)]
            ci += 1
    return out


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average (window points, shrinking at the ends); window <= 1: unchanged."""
    if window <= 1 or len(y) < 3:
        return y.copy()
    window = min(window, len(y))
    c = np.cumsum(np.insert(y, 0, 0.0))
    half = window // 2
    out = np.empty_like(y)
    for i in range(len(y)):
        lo, hi = max(0, i - half), min(len(y), i + half + 1)
        out[i] = (c[hi] - c[lo]) / (hi - lo)
    return out


def group_loss(g: Group) -> tuple[np.ndarray, np.ndarray]:
    """Mean training loss over the group's runs per optimizer step (steps any run logged)."""
    acc: dict[int, list[float]] = {}
    for r in g.runs:
        st, v = r.series("train/loss")
        for s, x in zip(r.opt_step(st).tolist(), v.tolist()):
            if math.isfinite(x):
                acc.setdefault(s, []).append(x)
    steps = np.array(sorted(acc), dtype=np.int64)
    return steps, np.array([np.mean(acc[s]) for s in steps.tolist()])


def _update_steps(groups: Sequence[Group]) -> list[int]:
    return sorted({u for g in groups for r in g.runs for u in r.update_steps})


def _zoom_update(groups: Sequence[Group], updates: list[int]) -> int:
    """The update with the largest loss spike (mean over each group's runs, max over groups);
    the first update when no spike was logged."""
    best, best_v = updates[0], -math.inf
    for u in updates:
        for g in groups:
            vals = [r.spikes_by_update().get(u) for r in g.runs]
            vals = [v for v in vals if v is not None]
            if vals and np.mean(vals) > best_v:
                best, best_v = u, float(np.mean(vals))
    return best


def plot_loss_curves(groups: Sequence[Group], path: Path, title: str = "") -> str | None:
    data = [(i, g, *group_loss(g)) for i, g in enumerate(groups)]
    data = [d for d in data if len(d[2])]
    if not data:
        return "no train/loss values in any run"
    plt = _plt()
    col = colors(groups)
    updates = _update_steps(groups)
    fig, axes = plt.subplots(1, 2 if updates else 1, figsize=(13.5 if updates else 8.5, 5.0), squeeze=False,
                             gridspec_kw={"width_ratios": [1.6, 1]} if updates else None)
    ax = axes[0][0]
    lo_y, hi_y = math.inf, -math.inf
    for i, g, steps, loss in data:
        for r in g.runs:  # raw, faint
            st, v = r.series("train/loss")
            ax.plot(r.opt_step(st), v, color=col[i], alpha=0.22, lw=0.8)
        w = max(3, int(round(len(loss) / 40))) if len(loss) >= 20 else 1
        sm = smooth(loss, w)
        ax.plot(steps, sm, color=col[i], lw=1.8, label=f"{g.label} (n={len(g.runs)})")
        tail = loss[int(len(loss) * 0.08):] if len(loss) > 12 else loss
        lo_y, hi_y = min(lo_y, float(np.min(loss))), max(hi_y, float(np.max(tail)))
    for u in updates:
        ax.axvline(u, color="0.45", ls=":", lw=0.8, alpha=0.6, zorder=0)
    if math.isfinite(lo_y) and hi_y > lo_y:
        pad = 0.06 * (hi_y - lo_y)
        ax.set_ylim(lo_y - pad, hi_y + pad)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("training loss" + (f" (dotted: {len(updates)} topology updates)" if updates else ""))
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, loc="upper right")
    if updates:
        zx = axes[0][1]
        u = _zoom_update(groups, updates)
        gaps = np.diff(updates)
        half = int(np.median(gaps)) if len(gaps) else max(10, u // 2)
        x0, x1 = u - half, u + half
        zlo, zhi = math.inf, -math.inf
        for i, g, _, _ in data:
            for j, r in enumerate(g.runs):
                st, v = r.series("train/loss")
                x = r.opt_step(st)
                m = (x >= x0) & (x <= x1)
                if not m.any():
                    continue
                zx.plot(x[m], v[m], color=col[i], marker="o", ms=3, lw=1.2, alpha=0.85,
                        label=g.label if j == 0 else None)
                fin = v[m][np.isfinite(v[m])]
                if len(fin):
                    zlo, zhi = min(zlo, float(fin.min())), max(zhi, float(fin.max()))
        for uu in updates:
            if x0 <= uu <= x1:
                zx.axvline(uu, color="0.3" if uu == u else "0.6", ls="--" if uu == u else ":", lw=1.0)
        if math.isfinite(zlo) and zhi > zlo:
            pad = 0.08 * (zhi - zlo)
            zx.set_ylim(zlo - pad, zhi + pad)
        zx.set_xlim(x0, x1)
        zx.set_xlabel("optimizer step")
        every = [int(np.median(np.diff(r.series("train/loss")[0]))) for g in groups for r in g.runs
                 if len(r.series("train/loss")[0]) > 1]
        every_s = f", logged every {min(every)} step{'s' if min(every) > 1 else ''}" if every else ""
        zx.set_title(f"zoom: update at step {u} (±{half}), raw loss{every_s}", fontsize=10)
        zx.grid(alpha=0.25)
    return _save(fig, path, suptitle=title)


def plot_ppl_vs_density(groups: Sequence[Group], path: Path, title: str = "") -> str | None:
    sparse = [(i, g) for i, g in enumerate(groups) if not g.is_dense and _finite(g.final_ppl()[0])
              and isinstance(g.value("density"), (int, float))]
    if not sparse:
        return "no sparse run with a final validation perplexity"
    plt = _plt()
    col = colors(groups)
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    # one line per group identity without density (method/variant + other keys)
    lines: dict[tuple, list[tuple[int, Group]]] = {}
    for i, g in sparse:
        ident = tuple((k, fmt_value(v)) for k, v in zip(g.keys, g.values) if k != "density")
        lines.setdefault(ident, []).append((i, g))
    densities = set()
    for ident, members in lines.items():
        members.sort(key=lambda t: float(t[1].value("density")))
        xs = [float(g.value("density")) for _, g in members]
        ms = [g.final_ppl() for _, g in members]
        ys = [m for m, _ in ms]
        es = [s or 0.0 for _, s in ms]
        densities.update(xs)
        lab = members[0][1].label
        lab = " ".join(p for p in lab.split(" ") if not p.startswith("d=")) or lab
        ax.errorbar(xs, ys, yerr=es, color=col[members[0][0]], marker="o", capsize=3, lw=1.6, label=lab)
    for i, g in enumerate(groups):
        if g.is_dense and _finite(g.final_ppl()[0]):
            m, s = g.final_ppl()
            ax.axhline(m, color=col[i], ls="--", lw=1.2, label=f"{g.label} (d=1)")
            if s:
                ax.axhspan(m - s, m + s, color=col[i], alpha=0.08)
    ax.set_xscale("log")
    ticks = sorted(densities)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] / 1.6, ticks[0] * 1.6)
    ax.set_xlabel("density (fraction of active weights in sparse layers)")
    ax.set_ylabel("final validation perplexity")
    ax.set_title(title or "final validation perplexity vs density")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_spike_by_method(groups: Sequence[Group], path: Path, title: str = "") -> str | None:
    bars = [(i, g, g.spikes()) for i, g in enumerate(groups) if not g.is_dense]
    bars = [b for b in bars if b[2]]
    if not bars:
        return "no loss-spike values (sparsity/spike): no sparse run reached spike_window steps after an update"
    plt = _plt()
    col = colors(groups)
    fig, ax = plt.subplots(figsize=(max(5.5, 1.1 * len(bars) + 2.5), 4.8))
    x = np.arange(len(bars))
    means = [float(np.mean(v)) for _, _, v in bars]
    stds = [mean_std(v)[1] or 0.0 for _, _, v in bars]
    ax.bar(x, means, yerr=stds, color=[col[i] for i, _, _ in bars], capsize=4, alpha=0.85)
    for xi, (_, g, v), m, sd in zip(x, bars, means, stds):
        ax.annotate(f"{m:+.3f}\nn={len(v)}", (xi, m + sd if m >= 0 else m - sd), textcoords="offset points",
                    xytext=(0, 3 if m >= 0 else -20), ha="center", fontsize=7)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([g.label for _, g, _ in bars], rotation=20 if len(bars) > 4 else 0, ha="right"
                       if len(bars) > 4 else "center", fontsize=8)
    ax.set_ylabel("loss spike (mean k steps after − k steps up to an update)")
    ax.set_title(title or "loss spike after topology updates (mean ± std over updates and seeds)", fontsize=10)
    ax.grid(axis="y", alpha=0.25)
    return _save(fig, path)


def plot_update_ratio(groups: Sequence[Group], path: Path, title: str = "") -> str | None:
    bars = [(i, g, *g.ratios()) for i, g in enumerate(groups) if not g.is_dense]
    bars = [b for b in bars if b[2] and b[3]]
    if not bars:
        return "no update-ratio values (sparsity/update_ratio_*): no sparse run took a step after an update"
    plt = _plt()
    col = colors(groups)
    fig, ax = plt.subplots(figsize=(max(5.5, 1.3 * len(bars) + 2.5), 4.8))
    x = np.arange(len(bars))
    w = 0.38
    reg = [mean_std(b[2]) for b in bars]
    mat = [mean_std(b[3]) for b in bars]
    ax.bar(x - w / 2, [m for m, _ in reg], w, yerr=[s or 0 for _, s in reg], capsize=3,
           color=[col[i] for i, _, _, _ in bars], alpha=0.9, label="regrown", edgecolor="k", lw=0.5)
    ax.bar(x + w / 2, [m for m, _ in mat], w, yerr=[s or 0 for _, s in mat], capsize=3,
           color=[col[i] for i, _, _, _ in bars], alpha=0.35, hatch="//", label="mature", edgecolor="k", lw=0.5)
    vals = [m for m, _ in reg + mat if m and m > 0]
    if vals and max(vals) / min(vals) > 30:
        ax.set_yscale("log")
    for xi, (m1, s1), (m2, s2) in zip(x, reg, mat):
        ax.annotate(f"{m1:.3g}", (xi - w / 2, m1 + (s1 or 0)), textcoords="offset points", xytext=(0, 3),
                    ha="center", fontsize=7)
        ax.annotate(f"{m2:.3g}", (xi + w / 2, m2 + (s2 or 0)), textcoords="offset points", xytext=(0, 3),
                    ha="center", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels([g.label for _, g, _, _ in bars], rotation=20 if len(bars) > 4 else 0,
                       ha="right" if len(bars) > 4 else "center", fontsize=8)
    ax.set_ylabel("mean |Δθ| / lr, first step after an update")
    ax.set_title(title or "update size of regrown vs mature weights (mean ± std over updates and seeds)",
                 fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.25)
    return _save(fig, path)


def plot_paired_spike(groups: Sequence[Group], path: Path, title: str = "") -> str | None:
    """Left: paired spike vs the static run of the same seed per group (mean ± std over seeds, one
    dot per seed). Right: the event-aligned paired difference d(u + j) - mean d over (u - k, u]
    around the updates (mean over updates and seeds), so a spike would show as a bump after 0."""
    from smet.report.paired import aligned_difference, run_mean, spike_window

    bars = []
    for i, g in enumerate(groups):
        per_run = [v for r in g.runs if (v := run_mean(r)) is not None]
        if not g.is_dense and per_run:
            bars.append((i, g, per_run))
    if not bars:
        return ("no paired spike: no sparse run has a static run of the same seed, model, density, data, LR "
                "and steps among the compared runs")
    plt = _plt()
    col = colors(groups)
    fig, (ax, cx) = plt.subplots(1, 2, figsize=(max(11.0, 1.1 * len(bars) + 7.5), 4.9),
                                 gridspec_kw={"width_ratios": [1.2, 1]})
    x = np.arange(len(bars))
    means = [float(np.mean(v)) for _, _, v in bars]
    stds = [mean_std(v)[1] or 0.0 for _, _, v in bars]
    ax.bar(x, means, yerr=stds, color=[col[i] for i, _, _ in bars], capsize=4, alpha=0.8)
    for xi, (_, g, v), m, sd in zip(x, bars, means, stds):
        ax.scatter(np.full(len(v), xi) + np.linspace(-0.12, 0.12, len(v)), v, color="k", s=10, zorder=3)
        top = max([m + sd] + v) if m >= 0 else min([m - sd] + v)
        ax.annotate(f"{m:+.4f}\nn={len(v)}", (xi, top), textcoords="offset points",
                    xytext=(0, 3 if m >= 0 else -20), ha="center", fontsize=7)
    ax.axhline(0, color="k", lw=0.8)
    ax.margins(y=0.18)
    ax.set_xticks(x)
    ax.set_xticklabels([g.label for _, g, _ in bars], rotation=20 if len(bars) > 4 else 0,
                       ha="right" if len(bars) > 4 else "center", fontsize=8)
    ks = sorted({spike_window(r) for _, g, _ in bars for r in g.runs})
    kk = ks[0] if len(ks) == 1 else None
    ax.set_ylabel("paired spike (Δ loss vs static, after − before)")
    ax.set_title(f"paired spike vs static, k = {','.join(map(str, ks))} (mean ± std over seeds; dots: seeds)",
                 fontsize=9)
    ax.grid(axis="y", alpha=0.25)
    k = kk or max(ks)
    offsets = range(-2 * k + 1, 3 * k + 1)
    drawn = False
    for i, g, _ in bars:
        acc: dict[int, list[float]] = {}
        for r in g.runs:
            for j, vals in aligned_difference(r, offsets).items():
                acc.setdefault(j, []).extend(vals)
        js = sorted(acc)
        if js:
            cx.plot(js, [float(np.mean(acc[j])) for j in js], color=col[i], lw=1.5, marker=".", ms=3,
                    label=g.label)
            drawn = True
    cx.axvline(0.5, color="0.3", ls="--", lw=1.0)
    cx.axvspan(0.5, k + 0.5, color="0.85", alpha=0.4, zorder=0)
    cx.axhline(0, color="k", lw=0.8)
    cx.set_xlabel("step j after the update u (dashed: the update; shaded: the k steps after)")
    cx.set_ylabel("d(u+j) − mean d over (u−k, u]")
    cx.set_title("loss vs static around the updates (mean over updates and seeds)", fontsize=9)
    cx.grid(alpha=0.25)
    if drawn:
        cx.legend(fontsize=7)
    return _save(fig, path, suptitle=title)


def _save(fig, path: Path, suptitle: str = "") -> None:
    """Lay out, write and close a figure (the plot functions return None on success)."""
    plt = _plt()
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return None


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


PLOTS = (
    ("loss_curves.png", "Training loss and topology updates", plot_loss_curves),
    ("ppl_vs_density.png", "Final validation perplexity vs density", plot_ppl_vs_density),
    ("spike_by_method.png", "Loss spike after topology updates", plot_spike_by_method),
    ("paired_spike_by_method.png", "Paired loss spike vs the static run of the same seed", plot_paired_spike),
    ("update_ratio.png", "Update size of regrown vs mature weights", plot_update_ratio),
)
