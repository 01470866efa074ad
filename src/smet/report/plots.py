"""The report's PNG figures (matplotlib, Agg backend; nothing is shown on screen).

Every ``plot_*`` function returns ``None`` when it wrote the file, or a one-line reason why the
figure was skipped (no such data in these runs), which the report lists.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from smet.report.table import ALIASES, KEYS, Group, _hashable, _method_implied, fmt_value, key_title, mean_std

DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
         "#17becf"]
LINESTYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
DENSE_GREYS = ["#000000", "#555555", "#999999"]


def styles(groups: Sequence[Group]) -> dict[int, dict]:
    """One (colour, line style, marker) per group, stable across figures: sparse groups take the
    tab10 colours, then the next line style after each 10 (40 distinct curves before a repeat);
    dense groups are black/grey with their own line styles."""
    out, ci, gi = {}, 0, 0
    for i, g in enumerate(groups):
        if g.is_dense:
            out[i] = {"color": DENSE_GREYS[gi % 3], "ls": LINESTYLES[(gi // 3 + 1) % 4 if gi >= 3 else 0],
                      "marker": "o"}
            gi += 1
        else:
            out[i] = {"color": TAB10[ci % 10], "ls": LINESTYLES[(ci // 10) % 4], "marker": MARKERS[ci % 8]}
            ci += 1
    return out


def colors(groups: Sequence[Group]) -> dict[int, str]:
    """One colour per group (see :func:`styles`)."""
    return {i: st["color"] for i, st in styles(groups).items()}


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
    sty = styles(groups)
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
        ax.plot(steps, sm, color=col[i], ls=sty[i]["ls"], lw=1.8, label=f"{g.label} (n={len(g.runs)})")
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
    ax.legend(fontsize=8, loc="upper right", ncol=2 if len(data) > 8 else 1)
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
                zx.plot(x[m], v[m], color=col[i], ls=sty[i]["ls"], marker=sty[i]["marker"], ms=3, lw=1.2, alpha=0.85,
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
            cx.plot(js, [float(np.mean(acc[j])) for j in js], color=col[i], ls=styles(groups)[i]["ls"], lw=1.5,
                    marker=".", ms=3,
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


# ----------------------------------------------------------------------------- the swept axes
AXIS_PRIORITY = ("method", "W", "lr", "lr_scaling", "density", "update_interval", "max_steps", "model")
MAX_AXES = 4


def axis_title(key: str) -> str:
    """'W (optimizer.regrowth_warmup_steps)', 'lr (optimizer.lr)', 'data.batch_size'."""
    if key == "method":
        return "method (sparsity.method)"
    paths = [p for p, a in ALIASES.items() if a == key and "." in p]
    return f"{key_title(key)} ({paths[0]})" if key in KEYS and paths else key_title(key)


def _on_axis(g: Group, key: str) -> bool:
    """Whether a group has a value on the axis (dense groups have none on sparse-only settings)."""
    if key == "method":
        return True
    return g.value(key) is not None and not (g.is_dense and (key == "density" or _method_implied(key)))


def sweep_axes(groups: Sequence[Group]) -> list[tuple[str, list[str]]]:
    """The group keys the compared runs sweep, as (axis, keys that change with it) pairs: a key whose
    value differs between the sparse groups (all groups when fewer than two are sparse; the method
    dense vs sparse only when nothing else varies); keys that split the groups the same way (SMET vs
    SET brings its W, LR scaling, ...) form one axis, named by the first of AXIS_PRIORITY (method, W,
    lr, lr_scaling, density, ...) among them."""
    if not groups:
        return []
    keys = [k for k in groups[0].keys if k != "seed"]
    sparse = [g for g in groups if not g.is_dense]
    sigs: dict[str, tuple] = {}

    def signature(k: str, pool: Sequence[Group]) -> tuple | None:
        vals = [_hashable(g.value(k)) for g in pool if _on_axis(g, k)]
        if len(set(vals)) < 2:
            return None
        seen: dict = {}
        return (len(pool),) + tuple(seen.setdefault(_hashable(g.value(k)), len(seen)) for g in pool)

    pool = sparse if len(sparse) >= 2 else list(groups)
    for k in keys:
        if (sg := signature(k, pool)) is not None:
            sigs[k] = sg
    if not sigs and (sg := signature("method", list(groups))) is not None:
        sigs["method"] = sg  # dense vs one sparse method, nothing else swept
    clusters: dict[tuple, list[str]] = {}
    for k, sg in sigs.items():
        clusters.setdefault(sg, []).append(k)
    rank = lambda k: (AXIS_PRIORITY.index(k) if k in AXIS_PRIORITY else len(AXIS_PRIORITY), keys.index(k))  # noqa: E731
    out = [(min(ks, key=rank), ks) for ks in clusters.values()]
    return sorted(out, key=lambda t: rank(t[0]))


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numeric_axis(ax, xs: list[float]) -> None:
    xs = sorted(set(xs))
    pos = [x for x in xs if x > 0]
    if pos and len(pos) == len(xs) and max(pos) / min(pos) >= 8:
        ax.set_xscale("log")
    elif pos and len(pos) == len(xs) - 1 and min(xs) == 0 and len(pos) > 1 and max(pos) / min(pos) >= 8:
        ax.set_xscale("symlog", linthresh=min(pos))
    ax.set_xticks(xs)
    ax.set_xticklabels([fmt_value(x) for x in xs], fontsize=8)
    ax.minorticks_off()
    if len(xs) == 1:
        ax.set_xlim(xs[0] - 1, xs[0] + 1)


def plot_vs_axis(groups: Sequence[Group], path: Path, axis: str, with_keys: Sequence[str] = (),
                 title: str = "") -> str | None:
    """Final validation perplexity, loss spike and update ratio (regrown vs mature) vs one swept key;
    one line per combination of the other swept keys; groups without a value on the axis (dense
    runs on sparse-only settings) as dashed reference lines in the perplexity panel."""
    with_keys = set(with_keys) | {axis}
    on = [(i, g) for i, g in enumerate(groups) if _on_axis(g, axis)]
    refs = [(i, g) for i, g in enumerate(groups) if not _on_axis(g, axis) and _finite(g.final_ppl()[0])]
    if len({_hashable(g.value(axis)) for _, g in on}) < 2:
        return f"{axis} does not vary between the compared groups"
    if not any(_finite(g.final_ppl()[0]) for _, g in on):
        return "no run with a final validation perplexity"
    numeric = all(_is_num(g.value(axis)) for _, g in on)
    cats: list = []
    for _, g in on:
        if _hashable(g.value(axis)) not in cats:
            cats.append(_hashable(g.value(axis)))

    def xpos(g: Group) -> float:
        return float(g.value(axis)) if numeric else float(cats.index(_hashable(g.value(axis))))

    def ident(g: Group) -> tuple:
        out = []
        for k, v in zip(g.keys, g.values):
            if k in with_keys or k == "seed":
                continue
            if (axis == "method" or g.is_dense) and (k == "density" or _method_implied(k)):
                continue
            if axis == "method" and k == "method":
                continue
            out.append((k, fmt_value(v)))
        return tuple(out)

    lines: dict[tuple, list[tuple[int, Group]]] = {}
    for i, g in on:
        lines.setdefault(ident(g), []).append((i, g))
    idents = list(lines)
    vary = [j for j in range(max((len(t) for t in idents), default=0))
            if len({t[j] if j < len(t) else None for t in idents}) > 1]
    short = {"density": "d", "lr_scaling": "lr×", "update_interval": "ΔT", "max_steps": "steps"}

    def line_label(t: tuple, members) -> str:
        parts = [(f"{v}" if k == "method" else f"{short.get(k, k.split('.')[-1])}={v}") for j, (k, v) in
                 enumerate(t) if j in vary]
        if parts:
            return " ".join(parts)
        methods = sorted({g.method for _, g in members}, key=str)
        return "/".join(methods) if axis != "method" else "runs"

    plt = _plt()
    sty = styles(groups)
    fig, axes = plt.subplots(1, 3, figsize=(16.0, 4.9))
    pax, sax, rax = axes
    n_lines = len(lines)
    drawn = {"spike": False, "ratio": False}
    for li, (t, members) in enumerate(lines.items()):
        members.sort(key=lambda m: xpos(m[1]))
        st = sty[members[0][0]]
        off = 0.0 if numeric else (li - (n_lines - 1) / 2) * 0.08
        lab = line_label(t, members)
        pts = [(xpos(g) + off, *g.final_ppl()) for _, g in members if _finite(g.final_ppl()[0])]
        if pts:
            pax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] or 0.0 for p in pts], color=st["color"],
                         ls=st["ls"] if numeric else "none", marker=st["marker"], capsize=3, lw=1.6, label=lab)
        sp = [(xpos(g) + off, *mean_std(g.spikes())) for _, g in members if g.spikes()]
        if sp:
            sax.errorbar([p[0] for p in sp], [p[1] for p in sp], yerr=[p[2] or 0.0 for p in sp], color=st["color"],
                         ls=st["ls"] if numeric else "none", marker=st["marker"], capsize=3, lw=1.6, label=lab)
            drawn["spike"] = True
        rr = [(xpos(g) + off, mean_std(g.ratios()[0])[0], mean_std(g.ratios()[1])[0]) for _, g in members
              if g.ratios()[0] and g.ratios()[1]]
        if rr:
            rax.plot([p[0] for p in rr], [p[1] for p in rr], color=st["color"], ls=st["ls"] if numeric else "none",
                     marker=st["marker"], lw=1.6, label=f"{lab}: regrown")
            rax.plot([p[0] for p in rr], [p[2] for p in rr], color=st["color"], ls=":" if numeric else "none",
                     marker=st["marker"], mfc="white", lw=1.2, label=f"{lab}: mature")
            drawn["ratio"] = True
    for i, g in refs:
        m, s = g.final_ppl()
        pax.axhline(m, color=sty[i]["color"], ls="--", lw=1.1, label=f"{g.label} (no {key_title(axis)})")
        if s:
            pax.axhspan(m - s, m + s, color=sty[i]["color"], alpha=0.08)
    xs = [xpos(g) for _, g in on]
    for a in axes:
        if numeric:
            _numeric_axis(a, xs)
        else:
            a.set_xticks(range(len(cats)))
            a.set_xticklabels([fmt_value(c) for c in cats], fontsize=8, rotation=20 if len(cats) > 5 else 0)
            a.set_xlim(-0.6, len(cats) - 0.4)
        a.set_xlabel(axis_title(axis) + (f"; with it: {', '.join(k for k in sorted(with_keys) if k != axis)}"
                                          if len(with_keys) > 1 else ""), fontsize=8)
        a.grid(alpha=0.25)
    pax.set_ylabel("final validation perplexity")
    pax.set_title("final val ppl (mean ± std over seeds)", fontsize=10)
    pax.legend(fontsize=7)
    sax.axhline(0, color="k", lw=0.8)
    sax.set_ylabel("loss spike after updates")
    sax.set_title("loss spike (mean ± std over updates, seeds)", fontsize=10)
    if drawn["spike"]:
        sax.legend(fontsize=7)
    else:
        sax.text(0.5, 0.5, "no sparsity/spike values", ha="center", va="center", transform=sax.transAxes)
    rax.set_ylabel("mean |Δθ| / lr, first step after an update")
    rax.set_title("update ratio: regrown (filled) vs mature (open)", fontsize=10)
    if drawn["ratio"]:
        vals = [v for ln in rax.get_lines() for v in ln.get_ydata() if v > 0]
        if vals and max(vals) / min(vals) > 30:
            rax.set_yscale("log")
        rax.legend(fontsize=6)
    else:
        rax.text(0.5, 0.5, "no update-ratio values", ha="center", va="center", transform=rax.transAxes)
    return _save(fig, path, suptitle=title or f"vs {axis_title(axis)}")


# ----------------------------------------------------------------------------- curves over tokens
def tokens_per_step(g: Group) -> int | None:
    vals = {r.tokens_per_step for r in g.runs}
    return vals.pop() if len(vals) == 1 else None


def group_curve(g: Group, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``metric`` over the group's runs per optimizer step (steps any run logged)."""
    acc: dict[int, list[float]] = {}
    for r in g.runs:
        st, v = r.series(metric)
        for s, x in zip(r.opt_step(st).tolist(), v.tolist()):
            if math.isfinite(x):
                acc.setdefault(s, []).append(x)
    steps = np.array(sorted(acc), dtype=np.int64)
    return steps, np.array([np.mean(acc[s]) for s in steps.tolist()])


def _diff(x: np.ndarray, y: np.ndarray, bx: np.ndarray, by: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """y - baseline, the baseline interpolated linearly at x, where x lies inside the baseline's range."""
    if len(bx) < 1 or len(x) < 1:
        return x[:0], y[:0]
    m = (x >= bx.min()) & (x <= bx.max())
    return x[m], y[m] - np.interp(x[m], bx, by)


def plot_curves_vs_tokens(groups: Sequence[Group], path: Path, baseline: int | None = 0,
                          title: str = "") -> str | None:
    """Top: training loss (smoothed) and validation perplexity over training tokens, one curve per
    group (mean over seeds). Bottom (two or more groups): the difference to the baseline group
    where the curves overlap, so small gaps between near-identical curves stay visible."""
    val = [(i, g, *group_curve(g, "val/ppl")) for i, g in enumerate(groups)]
    val = [v for v in val if len(v[2])]
    tps = [tokens_per_step(g) for g in groups]
    use_tokens = all(t is not None for t in tps)
    xl = "training tokens (step × batch × seq × accum × devices)" if use_tokens else "optimizer step"

    def x_of(i: int, steps: np.ndarray) -> np.ndarray:
        return steps.astype(np.float64) * (tps[i] if use_tokens else 1)

    loss = []
    for i, g in enumerate(groups):
        st, v = group_curve(g, "train/loss")
        if len(st):
            w = max(3, int(round(len(v) / 40))) if len(v) >= 20 else 1
            loss.append((i, g, st, smooth(v, w)))
    if not val and not loss:
        return "no train/loss or val/ppl values in any run"
    with_diff = len(groups) > 1 and baseline is not None
    plt = _plt()
    sty = styles(groups)
    fig, axes = plt.subplots(2 if with_diff else 1, 2, figsize=(14.0, 9.0 if with_diff else 4.8), squeeze=False)
    lax, vax = axes[0]
    for i, g, st, v in loss:
        lax.plot(x_of(i, st), v, color=sty[i]["color"], ls=sty[i]["ls"], lw=1.6, label=g.label)
    for i, g, st, v in val:
        vax.plot(x_of(i, st), v, color=sty[i]["color"], ls=sty[i]["ls"], marker=sty[i]["marker"], ms=4, lw=1.6,
                 label=f"{g.label} (n={len(g.runs)})")
    lax.set_title("training loss (smoothed, mean over seeds)", fontsize=10)
    vax.set_title("validation perplexity (mean over seeds)", fontsize=10)
    lax.set_ylabel("training loss")
    vax.set_ylabel("validation perplexity")
    fin = [float(x) for _, _, _, v in val for x in v if x > 0]
    if fin and max(fin) / min(fin) > 20:
        vax.set_yscale("log")
    if val:
        vax.legend(fontsize=7, ncol=2 if len(val) > 8 else 1)
    else:
        vax.text(0.5, 0.5, "no val/ppl values", ha="center", va="center", transform=vax.transAxes)
    if loss and not val:
        lax.legend(fontsize=7, ncol=2 if len(loss) > 8 else 1)
    if with_diff:
        b = groups[baseline]
        dl, dv = axes[1]
        bl = next(((st, v) for i, _, st, v in loss if i == baseline), None)
        bv = next(((st, v) for i, _, st, v in val if i == baseline), None)
        n_l = n_v = 0
        for i, g, st, v in loss:
            if i != baseline and bl is not None:
                x, d = _diff(x_of(i, st), v, x_of(baseline, bl[0]), bl[1])
                if len(x):
                    dl.plot(x, d, color=sty[i]["color"], ls=sty[i]["ls"], lw=1.5, label=g.label)
                    n_l += 1
        for i, g, st, v in val:
            if i != baseline and bv is not None:
                x, d = _diff(x_of(i, st), v, x_of(baseline, bv[0]), bv[1])
                if len(x):
                    dv.plot(x, d, color=sty[i]["color"], ls=sty[i]["ls"], marker=sty[i]["marker"], ms=4, lw=1.5,
                            label=g.label)
                    n_v += 1
        for a, n, what in ((dl, n_l, "training loss"), (dv, n_v, "val ppl")):
            a.axhline(0, color=sty[baseline]["color"], ls="--", lw=1.0)
            a.set_title(f"{what} − baseline ({b.label}), where both were logged", fontsize=10)
            a.set_ylabel(f"Δ {what} vs {b.label}")
            a.set_xlabel(xl)
            a.grid(alpha=0.25)
            if n:
                a.legend(fontsize=7, ncol=2 if n > 8 else 1)
            else:
                a.text(0.5, 0.5, "no overlap with the baseline", ha="center", va="center", transform=a.transAxes)
    for a in axes[0]:
        a.set_xlabel(xl)
        a.grid(alpha=0.25)
    return _save(fig, path, suptitle=title)


def figures(groups: Sequence[Group], baseline: int | None = 0) -> list[tuple[str, str, object]]:
    """Every figure of a report: (file name, caption, fn(path) -> None | why skipped), in order."""
    out: list[tuple[str, str, object]] = [
        ("loss_curves.png", "Training loss and topology updates", lambda p: plot_loss_curves(groups, p)),
        ("curves_vs_tokens.png", "Training loss and validation perplexity over tokens, and the difference to the "
                                 "baseline" + (f" ({groups[baseline].label})" if groups and baseline is not None
                                                else ""),
         lambda p: plot_curves_vs_tokens(groups, p, baseline))]
    axes = sweep_axes(groups)
    for axis, ks in axes[:MAX_AXES]:
        fname = "ppl_vs_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in axis) + ".png"
        with_ = [k for k in ks if k != axis]
        cap = (f"Final validation perplexity, loss spike and update ratio vs {axis_title(axis)}"
               + (f" (changes with it: {', '.join(with_)})" if with_ else ""))
        out.append((fname, cap, lambda p, a=axis, w=ks: plot_vs_axis(groups, p, a, w)))
    if not axes:
        out.append(("ppl_vs_*.png", "Final validation perplexity vs the swept key",
                    lambda p: "no config key varies between the compared groups (one configuration, or seeds only)"))
    for fname, caption, fn in PLOTS[1:]:
        out.append((fname, caption, lambda p, f=fn: f(groups, p)))
    return out


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
    ("spike_by_method.png", "Loss spike after topology updates", plot_spike_by_method),
    ("paired_spike_by_method.png", "Paired loss spike vs the static run of the same seed", plot_paired_spike),
    ("update_ratio.png", "Update size of regrown vs mature weights", plot_update_ratio),
    ("coldstart_vs_smet.png", "Cold start vs SMET: paired jump after each update",
     lambda groups, path: _coldstart_plot(groups, path)),
)


def _coldstart_plot(groups, path):
    from smet.report.coldstart import plot

    return plot(groups, path)
