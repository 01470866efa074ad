#!/usr/bin/env python
"""Fork-test figure and table of docs/results.md, from smet-fork output directories (fork.csv + summary.json).

    tar xzf docs/data/fork/fork-results.tar.gz -C /tmp/fork; tar xzf docs/data/fork/fork-results-at1000.tar.gz -C /tmp/fork
    python docs/data/fork/figure.py /tmp/fork/fork docs/data/fork/fork_test.png
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ORDER = ["naive", "reset_only", "warmup_only", "smet", "momentum_damping", "frozen"]


def main(root: str, png: str) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dirs = sorted((d for d in Path(root).iterdir() if (d / "fork.csv").is_file()),
                  key=lambda d: (int(d.name.split("_at")[1]), float(d.name[2:].split("_")[0])))
    cols = min(3, len(dirs))
    rows = (len(dirs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), sharey=True, squeeze=False)
    axes = axes.ravel()
    print("| LR | fork at | treatment | regrown first step |Δθ|/lr | mean Δ (s, s+10] | (s, s+50] | (s, s+300] | max Δ (step) | Δ at s+300 |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for ax, d in zip(axes, dirs):
        lr, at = d.name[2:].split("_at")
        loss = defaultdict(dict)
        for r in csv.DictReader(open(d / "fork.csv")):
            loss[r["treatment"]][int(r["step"])] = float(r["loss"])
        ctrl = loss["control"]
        for t in ORDER:
            if t not in loss:
                continue
            st = sorted(loss[t])
            diff = np.array([loss[t][s] - ctrl[s] for s in st])
            sm = np.convolve(diff, np.ones(5) / 5, mode="valid")
            ax.plot(st[4:], sm, lw=1.0, label=t, color=f"C{ORDER.index(t)}")  # one colour per treatment
        ax.axhline(0, color="k", lw=0.7)
        ax.set_title(f"LR {float(lr):g}, one update at step {at}", fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.25)
        summ = {r["treatment"]: r for r in json.load(open(d / "summary.json"))["results"]}
        for t in ORDER:
            r = summ.get(t)
            if r is None:
                continue
            fs = r.get("first_step_update_over_lr") or {}
            print(f"| {float(lr):g} | {at} | {t} | {fs.get('regrown', float('nan')):.4f} | {r['mean_diff_10']:+.4f} | "
                  f"{r['mean_diff_50']:+.4f} | {r['mean_diff_all']:+.4f} | {r['max_diff']:+.4f} ({r['max_diff_step']}) | "
                  f"{r['final_diff']:+.4f} |")
    for ax in axes[::cols]:
        ax.set_ylabel("loss − control (5-step mean, nats)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Fork test, LLaMA-60M d = 0.25 (fig1_mini): one identical update, then each treatment; "
                 "control = no update, same batches", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"figure -> {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
