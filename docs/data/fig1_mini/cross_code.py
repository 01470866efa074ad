#!/usr/bin/env python
"""What the code change between fig1_mini calls C and D moves on its own (issue 14, call D).

Calls C and D ran the same seed-1 runs (set, smet, smet W = 0 at LR 4e-3, same config, same batches) with the
code of two commits; D's has fused rotary / norm kernels (`model.pointwise: fused`) among other changes. The
same run in both calls differs only by the code, so: val ppl at step 1250 (C stopped before 1500), and the
cold-start offset statistic of D's run against C's run of the same arm (mean over updates and its midway floor),
which is the floor of any pairing across the two code versions (call D's seed-0 rigl / momentum-damping arms
against call A's seed-0 smet).

    python docs/data/fig1_mini/cross_code.py /tmp/f1/call_c /tmp/f1/call_d
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from smet.report.coldstart import cold_start
from smet.report.runs import discover_runs, load_run_dir

sys.path.insert(0, str(Path(__file__).parent))
from figures import ppl_at  # noqa: E402


def runs(d: str) -> dict[str, object]:
    return {Path(rd).name: load_run_dir(rd) for rd in discover_runs(Path(d))}


def main(argv: list[str]) -> int:
    c, d = runs(argv[0]), runs(argv[1])
    print("| run (seed 1, LR 4e-3) | call C steps | ppl@1250 C | ppl@1250 D | D - C | offset D vs C (mean, 14 updates) "
          "| floor SD | max abs offset |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in ("set_lr0.004-s1", "smet_lr0.004-s1", "smet_no_warmup_lr0.004-s1"):
        rc, rd = c[name], d[name]
        pc, pd = ppl_at(rc, 1250), ppl_at(rd, 1250)
        cs = cold_start(rd, rc)
        offs = list(cs.offsets.values())
        print(f"| {name} | {rc.steps} | {pc:.2f} | {pd:.2f} | {pd - pc:+.2f} | {np.mean(offs):+.4f} ({len(offs)}) | "
              f"{cs.floor:.4f} | {np.max(np.abs(offs)):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
