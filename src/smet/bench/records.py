"""smet-bench's record maths: one JSON record per run from its measured step times and memory.

tokens/s from the median steady step; the amortised tokens/s spreads the median extra time of a
topology-update step over the update interval (a mean over all timed steps would be dominated by load
spikes); MFU as ``smet.perf`` (6 * N * amortised tokens/s / peak, N without the input embedding);
the static memory measured on the live tensors next to ``smet.sparse.memory.predict_static`` (equal
to the byte); the paired per-step speed ratio against the run's dense reference.
"""

from __future__ import annotations

import math
import platform
import statistics
from typing import Any

from smet.bench.grid import BenchRun

STATIC_KEYS = ("weights", "grads", "optimizer", "metadata", "compute_copy", "buffers", "total")
STATIC_TOLERANCE = 0.05  # the target: measured static state within 5 % of the memory model


def amortised(tokens: float, step_t: float, upd_t: float | None, every: int, after_t: float | None = None) -> float:
    """tokens / (median steady step + the median extra time of an update step and of the step right
    after it (``after_t``: the optimizer's regrown vs mature measurement, per layer) spread over
    ``every`` steps)."""
    extra = (max(upd_t - step_t, 0.0) if upd_t else 0.0) + (max(after_t - step_t, 0.0) if after_t else 0.0)
    return tokens / (step_t + extra / every)


def mfus(tokens_per_s: float | None, n_dense: int | None, n_active: int | None,
         peak_flops: float | None) -> dict[str, float | None]:
    """MFU (smet.perf) on the dense and on the active parameter count: 6 * N * tokens/s / peak."""
    from smet.perf import mfu

    return {"mfu_dense": mfu(tokens_per_s, 6.0 * n_dense if n_dense else None, peak_flops),
            "mfu_active": mfu(tokens_per_s, 6.0 * n_active if n_active else None, peak_flops)}


def reamortize(records: list[dict], every: int) -> list[dict]:
    """The records with amortised tok/s and MFU recomputed for an update every ``every`` steps (from the
    measured median steady and update step times; nothing else changes)."""
    out = []
    for r in records:
        r = dict(r)
        if r.get("tokens_per_s") and r.get("step_time_s"):
            tokens = r["tokens_per_s"] * r["step_time_s"]
            r["tokens_per_s_amortised"] = amortised(tokens, r["step_time_s"], r.get("update_step_time_s"), every,
                                                    r.get("after_update_step_time_s"))
            r["amortize_interval"] = every
            r.update(mfus(r["tokens_per_s_amortised"], r.get("flop_params_dense"), r.get("flop_params_active"),
                          r.get("peak_flops")))
        out.append(r)
    return out


def device_peak_flops(device) -> float | None:
    from smet.perf import peak_flops_for

    return peak_flops_for(device)


def paired(records: list[dict], res: list[dict], runs: list[BenchRun]) -> None:
    """Median over steps of (dense step time / this step time) for steps timed at the same index,
    against the run's dense reference."""
    for ci, rec in enumerate(records):
        rec["paired_speed_ratio_vs_dense"] = None
        di = runs[ci].ref
        if di is None or ci == di:
            continue
        d, t = res[di]["times"], res[ci]["times"]
        common = sorted(set(d) & set(t))
        if common:
            rec["paired_speed_ratio_vs_dense"] = statistics.median(d[j] / t[j] for j in common)


def record(run: BenchRun, o: dict, args, peak_flops: float | None = None, runs: list[BenchRun] | None = None
           ) -> dict[str, Any]:
    """The JSON record of one run (``o``: what :func:`smet.bench.schedule.run_bench` measured)."""
    import torch

    from smet.models.llama import meta_model, model_shapes
    from smet.sparse.memory import active_weight_count, predict_static

    shapes = model_shapes(run.model, run.vocab, run.seq_len)
    # the prediction smet-memory prints for this configuration (same function)
    # at most this many optimizer steps per run (timed + warm-up of each round + the update step)
    rounds = max(1, int(getattr(args, "rounds", 1)))
    total = int(getattr(args, "steps", 0)) + rounds * (int(getattr(args, "warmup_steps", 0)) + 2)
    pred = predict_static(shapes, run.sparsity, run.optimizer, run.precision, total_steps=total)
    times, upd = list(o["times"].values()), o["update_times"]
    ok = o["static"] is not None and not o["oom"]
    step_t = statistics.median(times) if times and ok else float("nan")
    upd_t = statistics.median(upd) if upd and ok else None
    after = o.get("after_update_times") or []
    after_t = statistics.median(after) if after and ok else None
    tps = run.tokens / step_t if times and ok else None
    every = getattr(args, "amortize_interval", None) or run.update_interval
    amort = amortised(run.tokens, step_t, upd_t, every, after_t) if tps else None
    active = active_weight_count(shapes, run.sparsity) if run.is_dense or not ok else o["active"]
    if o["n_flop_params"] is not None:
        n_dense, n_active = o["n_flop_params"]
    else:
        n_dense = meta_model(run.model, run.vocab, run.seq_len).config.num_params(include_embedding=False)
        n_active = None
    static = o["static"]
    rel_err = (static["all"]["total"] - pred["all"]["total"]) / pred["all"]["total"] if static else None
    interleave = args.interleave or ("round" if args.device == "cuda" else "step")
    rec = {
        "method": run.method, "density": run.density, "materialize": run.materialize,
        "precision": run.precision, "activation_checkpointing": run.ac, "compile": run.compile,
        "label": run.label, "name": run.name, "variant": run.variant, "swept": dict(run.swept),
        "dense_reference": runs[run.ref].label if runs is not None and run.ref is not None else None,
        "block_size": run.block_size,
        "oom": bool(o["oom"]), "skipped": bool(o["skipped"]) and not o["oom"],
        "tokens_per_s": tps,
        "tokens_per_s_amortised": amort,
        "amortize_interval": every,
        "step_time_s": step_t,
        "update_step_time_s": upd_t,
        # the step right after an update (it measures regrown vs mature update sizes per layer): timed
        # apart from the steady steps, its extra time amortised with the update's
        "after_update_step_time_s": after_t,
        # drop fraction of the timed topology updates (the cost of an update grows with it: pass
        # sparsity.update_stop=<a run's length> to time the early-run value ~0.2 in a short benchmark)
        "update_drop_fraction": sorted(set(o.get("update_drop") or [])) or None,
        "n_timed_steps": len(times), "n_update_steps": len(upd), "n_after_update_steps": len(after),
        "optimizer_steps": o["optimizer_steps"], "topology_updates": o["topology_updates"],
        "round_median_step_time_s": o["round_medians"],
        "build_time_s": o["build_time_s"],
        # MFU (smet.perf): dense: every weight of the model counted; active: only the active weights
        # of sparse layers
        "flop_params_dense": n_dense, "flop_params_active": n_active,
        "peak_flops": peak_flops,
        **mfus(amort, n_dense, n_active, peak_flops),
        "static_bytes": {k: static["all"][k] for k in STATIC_KEYS} if static else None,
        "sparse_static_bytes": {k: static["sparse"][k] for k in STATIC_KEYS} if static else None,
        "predicted_static_bytes": {k: pred["all"][k] for k in STATIC_KEYS},
        "predicted_sparse_static_bytes": {k: pred["sparse"][k] for k in STATIC_KEYS},
        "static_rel_error": rel_err,
        "static_within_tolerance": None if rel_err is None else abs(rel_err) <= STATIC_TOLERANCE,
        "active_weights": active,
        "bytes_per_active_weight": (static["sparse"]["total"] if static else pred["sparse"]["total"]) / active,
        "peak_bytes": o["peak"],
        "peak_reserved_bytes": o["peak_reserved"],
        "final_loss": o["loss"],
        "loss_finite": None if o["loss"] is None else math.isfinite(o["loss"]),
        "config": {
            "overrides": list(run.overrides),
            "model": dict(run.model), "sparsity": dict(run.sparsity), "optimizer": dict(run.optimizer),
            "precision": run.precision, "activation_checkpointing": run.ac, "compile": run.compile,
            "device": args.device, "batch": run.batch, "seq_len": run.seq_len, "vocab": run.vocab,
            "steps": args.steps, "warmup_steps": args.warmup_steps, "rounds": args.rounds,
            "update_interval": run.update_interval, "interleave": interleave, "seed": run.seed,
            "threads": torch.get_num_threads(), "init": "meta device, materialised on the target device (smet.build)",
            "data": "synthetic uniform random tokens", "torch": torch.__version__, "python": platform.python_version(),
        },
    }
    if o["oom"]:
        rec.update(o["oom"])
    return rec
