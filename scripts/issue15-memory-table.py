#!/usr/bin/env python3
"""Issue 15: smet-memory's predicted peak vs the measured H200 peaks of docs/data/issue15/issue15.tar.gz.

Per smet-bench record (p130, p350, chunk): measured ``torch.cuda.max_memory_allocated``; predicted =
``predict_static`` + ``estimate_activations`` of the record's config, as smet-memory prints it (grads
counted as present), the error; then the same without the parameter gradients (the bench, like
train.py, zeroes them with set_to_none, so none exists at the loss peak) and what is left over,
set against the two things the memory model does not count: cuBLAS workspaces (64 MiB) and, on sparse
runs (the step after a topology update), two int64 copies of the regrown slot ids (16 B per regrown
block: ``SMETOptimizer._measure`` until its next step, ``SparseController._regrown_slots`` until the
next update). ``old`` is the estimate before the loss_impl-aware model (exact-path logits always).

Usage: .venv/bin/python scripts/issue15-memory-table.py [TARBALL_OR_DIR [PART ...]]
(default: docs/data/issue15/issue15.tar.gz, parts p130 p350 chunk; scripts/gpu-issue15-ckpt.sh passes its
output directory and parts.) Rows with activation checkpointing show the mode and every-k.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from smet.config import checkpointing_of  # noqa: E402
from smet.models.llama import model_shapes  # noqa: E402
from smet.sparse.memory import estimate_activations, sparse_layer_plan  # noqa: E402
from smet.sparse.schedules import DropSchedule  # noqa: E402

GIB, MIB = 2**30, 2**20
CUBLAS = 64 * MIB  # two cuBLAS workspaces of 32 MiB (forward thread, autograd's device thread), sm90


def records(src: Path, parts=("p130", "p350", "chunk")) -> list[tuple[str, dict]]:
    out = []
    if src.is_dir():
        files = {p: json.loads((src / f"{p}.json").read_text()) for p in parts if (src / f"{p}.json").exists()}
    else:
        with tarfile.open(src) as tar:
            files = {}
            for p in parts:
                try:
                    files[p] = json.load(io.TextIOWrapper(tar.extractfile(f"./{p}.json")))
                except KeyError:
                    pass
    for part, recs in files.items():
        out += [(part, r) for r in recs if r.get("peak_bytes")]
    return out


def regrown_blocks(r: dict) -> int:
    """Blocks regrown at the record's (single) topology update: round(p(step) * live) per layer."""
    c = r["config"]
    if r["method"] == "dense" or not r.get("topology_updates"):
        return 0
    shapes = model_shapes(c["model"], c["vocab"], c["seq_len"])
    scfg = dict(c["sparsity"])
    plan = sparse_layer_plan([(o, i) for _, o, i in shapes.target_linears(scfg.get("targets"))], scfg)
    total = c["warmup_steps"] + c["steps"] + 2  # smet.bench.schedule: the controller's horizon
    p = DropSchedule(scfg.get("drop_schedule", "cosine"), float(scfg.get("drop_fraction", 0.2)),
                     float(scfg.get("drop_fraction_end", 0.005)), start=0, end=total)(c["update_interval"])
    return sum(int(round(p * lay["capacity"])) for lay in plan)


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "data" / "issue15" / "issue15.tar.gz"
    parts = tuple(sys.argv[2:]) or ("p130", "p350", "chunk")
    print("| part | point | ckpt | loss | chunk | measured GiB | predicted GiB | err | old err | at peak (- grads) | "
          "err | peak moment | left over MiB | cuBLAS + regrown ids MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for part, r in records(src, parts):
        c, m = r["config"], r["config"]["model"]
        st = r["predicted_static_bytes"]
        kw = dict(sparse_materialize=r["materialize"])
        mode, every = checkpointing_of(m)
        act = estimate_activations(m, c["batch"], c["seq_len"], c["precision"], mode, c["vocab"],
                                   loss_impl=m.get("loss_impl", "exact"),
                                   loss_chunk_tokens=m.get("loss_chunk_tokens", 4096), checkpoint_every=every,
                                   pointwise=m.get("pointwise", "reference"), **kw)
        old = estimate_activations(m, c["batch"], c["seq_len"], c["precision"], mode != "none", c["vocab"],
                                   loss_impl="exact", **kw)
        meas = r["peak_bytes"]
        pred = st["total"] + act["total"]
        at_peak = pred - st["grads"]
        known = CUBLAS + 16 * regrown_blocks(r)
        impl = m.get("loss_impl", "exact")
        point = f"{m['name']} {r['method']}" + ("" if r["method"] == "dense" else f" d={r['density']:g} "
                                                                                 f"{r['materialize']}")
        ckpt = "-" if mode == "none" else mode + (f"/{every}" if every > 1 else "")
        moment = "loss" if act["loss_peak"] >= act["backward_peak"] else "backward"
        print(f"| {part} | {point} | {ckpt} | {impl} | {m.get('loss_chunk_tokens') if impl == 'chunked' else '-'} | "
              f"{meas / GIB:.2f} | {pred / GIB:.2f} | {100 * (pred / meas - 1):+.1f}% | "
              f"{100 * ((st['total'] + old['total']) / meas - 1):+.1f}% | {at_peak / GIB:.2f} | "
              f"{100 * (at_peak / meas - 1):+.2f}% | {moment} | {(meas - at_peak) / MIB:.1f} | {known / MIB:.1f} |")


if __name__ == "__main__":
    main()
