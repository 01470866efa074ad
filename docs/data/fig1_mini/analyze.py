#!/usr/bin/env python
"""fig1_mini cold-start statistic (issue 14, pre-registered in docs/fig1_mini.md), from run directories.

For a treated run T (set or smet W=0) and smet S at the same LR and seed, per topology update u:
    jump_R(u) = mean(train loss of R over steps (u, u+50]) - mean(over (u-10, u])
    offset(u) = jump_T(u) - jump_S(u)                          (> 0: T's update cost more loss)
noise floor: the same offset taken midway between updates (m = u + 50), as the SD over those m.

    python docs/data/fig1_mini/analyze.py RUNS_DIR [RUNS_DIR ...]
(each RUNS_DIR holds <name>/metrics.csv; names as smet-fidelity gives them: smet_lr0.004-s0, ...)
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

UPDATES = range(100, 1500, 100)


def train_loss(path: Path) -> dict[int, float]:
    out = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                out[int(row["step"]) + 1] = float(row["train/loss"])  # Lightning's step column is 0-based
    return out


def jump(loss: dict[int, float], u: int) -> float | None:
    post = [loss[s] for s in range(u + 1, u + 51) if s in loss]
    pre = [loss[s] for s in range(u - 9, u + 1) if s in loss]
    if len(post) < 50 or len(pre) < 10:
        return None
    return statistics.fmean(post) - statistics.fmean(pre)


def offsets(t: dict, s: dict, points) -> list[tuple[int, float]]:
    out = []
    for u in points:
        a, b = jump(t, u), jump(s, u)
        if a is not None and b is not None:
            out.append((u, a - b))
    return out


def main(dirs: list[str]) -> int:
    runs = {}
    for d in dirs:
        for m in Path(d).glob("*/metrics.csv"):
            runs[m.parent.name] = train_loss(m)
    print("| treated vs smet | LR | updates | mean offset (nats) | updates with offset >= 0.01 and >= 3 x floor | noise floor SD (midway) |")
    print("|---|---|---:|---:|---:|---:|")
    for treated in ("set", "smet_no_warmup"):
        for lr in ("0.001", "0.002", "0.004", "0.008"):
            t, s = runs.get(f"{treated}_lr{lr}-s0"), runs.get(f"smet_lr{lr}-s0")
            if t is None or s is None:
                continue
            up = offsets(t, s, UPDATES)
            mid = offsets(t, s, [u + 50 for u in UPDATES])
            floor = statistics.pstdev([o for _, o in mid]) if len(mid) > 1 else float("nan")
            hits = sum(1 for _, o in up if o >= 0.01 and o >= 3 * floor)
            print(f"| {treated} | {lr} | {len(up)} | {statistics.fmean(o for _, o in up):+.4f} | {hits} / {len(up)} | "
                  f"{floor:.4f} |")
            print("|  per update | | | " + " ".join(f"{u}:{o:+.3f}" for u, o in up) + " | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
