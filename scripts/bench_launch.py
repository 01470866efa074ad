#!/usr/bin/env python
"""Host time per launch of the transient layer's scatter / gather kernels (issue 15), on CUDA.

    python scripts/bench_launch.py [--n 2000] [--shape 768x768] [--density 0.5]

For one compact bf16 layer (flat and rows index) it times N back-to-back calls of each kernel wrapper with no
synchronisation in between (the layer is small, so the GPU keeps up and the wall time per call is the host's),
once through Triton's own launch (``kernels.set_direct_launch(False)``) and once through the direct launcher,
plus ``torch.zeros`` of the dense shape (the memset the flat scatter still needs) for scale. Prints a Markdown
table of microseconds per call. A benchmark, not a test: the figures are the machine's.
"""

from __future__ import annotations

import argparse
import time

import torch

from smet.sparse import kernels
from smet.sparse.layer import SparseLinear


def per_call_us(fn, n: int) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t = time.perf_counter() - t0
    torch.cuda.synchronize()
    return t / n * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--shape", default="768x768", help="OUTxIN of the layer")
    p.add_argument("--density", type=float, default=0.5)
    a = p.parse_args()
    if not torch.cuda.is_available() or not kernels.available():
        print("bench_launch: error: needs CUDA and Triton")
        return 2
    out_f, in_f = (int(x) for x in a.shape.split("x"))
    n_live = int(out_f * in_f * a.density)
    print(f"layer {out_f}x{in_f}, d = {a.density}, bf16, {a.n} calls each; triton {kernels.triton.__version__}, "
          f"torch {torch.__version__}\n")
    print("| call | index | Triton launch us | direct us |")
    print("|---|---|---:|---:|")
    z = per_call_us(lambda: torch.zeros(out_f, in_f, dtype=torch.bfloat16, device="cuda"), a.n)
    print(f"| torch.zeros (memset) | - | {z:.1f} | - |")
    for index in ("flat", "rows"):
        torch.manual_seed(0)
        layer = SparseLinear(in_f, out_f, n_active_blocks=n_live, index=index, dtype=torch.bfloat16).cuda()
        layer.init_random(0.02)
        bidx = layer._live_blocks()
        gw = torch.randn(out_f, in_f, device="cuda", dtype=torch.bfloat16)
        calls = {"scatter (weight)": lambda: layer._scatter_dense(layer.values, bidx, torch.bfloat16),
                 "gather (gradient)": lambda: layer._gather_grad(gw, bidx, layer.values)}
        for name, fn in calls.items():
            t = {}
            for direct in (False, True):
                prev = kernels.set_direct_launch(direct)
                t[direct] = per_call_us(fn, a.n)
                kernels.set_direct_launch(prev)
            print(f"| {name} | {index} | {t[False]:.1f} | {t[True]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
