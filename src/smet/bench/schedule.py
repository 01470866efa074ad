"""The interleaved scheduler of smet-bench: every run's warm-up, timed and measured steps.

``--interleave step`` (default on CPU): all runs are alive at once and take their steps in turn
(A B C A B C ..., order rotated every step), so a load change on a shared machine hits all of them
alike; per-step paired ratios are reported too. ``round`` (default on CUDA): the timed steps are split
into ``--rounds`` rounds interleaved across runs, one model alive at a time; CUDA peak memory is read
in every round (one model alive, so it is that run's own peak, topology-update steps included). In
step mode CUDA peaks come from an extra pass with one model alive. A run that runs out of memory
(build, any step, the measured step) is recorded as OOM, its model freed, and the others go on.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from smet.bench.grid import BenchRun
from smet.bench.harness import Run, batches, timed_step
from smet.bench.oom import free_memory, guarded


def new_result() -> dict[str, Any]:
    return {"times": {}, "update_times": [], "after_update_times": [], "update_drop": [], "round_medians": [], "static": None, "peak": None,
            "peak_reserved": None,
            "loss": None, "active": None, "oom": None, "skipped": False, "build_time_s": None,
            "n_flop_params": None, "optimizer_steps": 0, "topology_updates": 0}


def dt_ms(out: dict) -> str:
    t = list(out["times"].values())
    return f"{statistics.median(t) * 1e3:.1f} ms" if t else "-"


def _finish(run: Run, data, out: dict) -> None:
    """The measured step: static memory read after optimizer.step(), before zero_grad."""
    _, _, stat = timed_step(run, data, measure=True)
    out["static"] = stat
    out["loss"] = run.last_loss
    out["active"] = run.ctrl.active_weights() if run.ctrl is not None else None
    out["optimizer_steps"] += run.step
    out["topology_updates"] += run.ctrl.update_count if run.ctrl is not None else 0


def _built(run: Run, out: dict) -> None:
    out["n_flop_params"] = (run.n_flop_params_dense, run.n_flop_params_active)
    if out["build_time_s"] is None:
        out["build_time_s"] = run.build_time_s


def _read_peak(device, out: dict) -> None:
    import torch

    out["peak"] = max(out["peak"] or 0, torch.cuda.max_memory_allocated(device))
    out["peak_reserved"] = max(out["peak_reserved"] or 0, torch.cuda.max_memory_reserved(device))


def _reset_peak(device) -> None:
    import torch

    free_memory()
    torch.cuda.reset_peak_memory_stats(device)


def run_bench(runs: list[BenchRun], args, log=sys.stderr, run_cls=None) -> list[dict[str, Any]]:
    """Run every benchmark run (:func:`smet.bench.grid.plan`); one record per run
    (:func:`smet.bench.records.record`). ``args``: the harness options of ``smet-bench`` (device,
    steps, warmup_steps, interleave, rounds, threads, time_budget, profile, peak_tflops,
    amortize_interval). ``run_cls``: the class that builds and steps one run (default :class:`Run`)."""
    import torch

    from smet.bench.profile import profile_run
    from smet.bench.records import device_peak_flops, paired, record

    run_cls = run_cls or Run
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t_start = time.perf_counter()
    budget = getattr(args, "time_budget", None)

    def over_budget() -> bool:
        return budget is not None and time.perf_counter() - t_start > budget

    data = batches(runs, device)
    res = [new_result() for _ in runs]
    mode = args.interleave or ("round" if device.type == "cuda" else "step")

    def fail(ci: int, info: dict) -> None:
        res[ci]["oom"] = info
        if device.type == "cuda" and mode == "round":  # high-water marks up to the failure (one model alive)
            _read_peak(device, res[ci])
        print(f"[smet-bench] OOM {runs[ci].label} ({info['oom_phase']}): {info['oom_error']}", file=log, flush=True)

    if mode == "step":
        _step_mode(runs, args, res, data, device, run_cls, fail, log)
    else:
        _round_mode(runs, args, res, data, device, run_cls, fail, over_budget, log)
    for out in res:
        if not out["oom"] and out["static"] is None:
            out["skipped"] = True
    profiles: list = [None] * len(runs)
    if args.profile is not None:
        for ci, spec in enumerate(runs):
            if res[ci]["oom"] or res[ci]["skipped"] or over_budget():
                continue
            free_memory()
            run = run_cls(spec, args, args.warmup_steps + 8)
            profiles[ci] = profile_run(run, data, args.profile, spec.label)
            print(f"[smet-bench] profile {spec.label}: {profiles[ci]}", file=log, flush=True)
            del run
    peak_flops = args.peak_tflops * 1e12 if getattr(args, "peak_tflops", None) else device_peak_flops(device)
    records = [record(spec, o, args, peak_flops, runs) for spec, o in zip(runs, res)]
    for rec, prof in zip(records, profiles):
        if prof is not None:
            rec["profile"] = prof
    paired(records, res, runs)
    return records


def _step_mode(runs, args, res, data, device, run_cls, fail, log) -> None:
    total_steps = args.warmup_steps + args.steps + 2
    alive: list = []
    for ci, spec in enumerate(runs):
        run, info = guarded("build", run_cls, spec, args, total_steps)
        if info:
            fail(ci, info)
        else:
            _built(run, res[ci])
        alive.append(run)
        del run
    free_memory()
    n = len(alive)
    after = [False] * n  # the run's previous step was a topology update
    for i in range(args.warmup_steps + args.steps):
        k = i % n
        for ci in list(range(k, n)) + list(range(k)):
            if alive[ci] is None:
                continue
            phase = "warm-up" if i < args.warmup_steps else f"step {i + 1}"
            out, info = guarded(phase, timed_step, alive[ci], data)
            if info:
                alive[ci] = None
                free_memory()
                fail(ci, info)
                continue
            dt, update, _ = out
            was_after, after[ci] = after[ci], update
            if i < args.warmup_steps:
                continue
            if update:
                res[ci]["update_times"].append(dt)
                res[ci]["update_drop"].append(alive[ci].last_update_drop)
            elif was_after:
                res[ci]["after_update_times"].append(dt)
            else:
                res[ci]["times"][i] = dt
        if (i + 1) % 10 == 0 or i + 1 == args.warmup_steps + args.steps:
            print(f"[smet-bench] step {i + 1}/{args.warmup_steps + args.steps}: " + ", ".join(
                f"{spec.label} {dt_ms(res[ci])}" for ci, spec in enumerate(runs)), file=log, flush=True)
    for ci in range(n):
        if alive[ci] is not None:
            _, info = guarded("measured step", _finish, alive[ci], data, res[ci])
            if info:
                alive[ci] = None
                free_memory()
                fail(ci, info)
    del alive
    free_memory()
    if device.type != "cuda":
        return
    for ci, spec in enumerate(runs):  # one model alive: clean peak per run
        if res[ci]["oom"] or res[ci]["static"] is None:
            continue
        _reset_peak(device)

        def peak_pass():
            run = run_cls(spec, args, args.warmup_steps + 4)
            for _ in range(max(args.warmup_steps, 1) + 1):
                timed_step(run, data)

        _, info = guarded("peak pass", peak_pass)
        if info:
            fail(ci, info)
        else:
            _read_peak(device, res[ci])
        free_memory()


def _round_mode(runs, args, res, data, device, run_cls, fail, over_budget, log) -> None:
    rounds = max(1, min(args.rounds, args.steps))
    per_round = [args.steps // rounds + (1 if r < args.steps % rounds else 0) for r in range(rounds)]
    total_steps = args.warmup_steps + max(per_round) + 2  # topology updates stay inside [start, stop)
    for r in range(rounds):
        k = r % len(runs)
        for ci in list(range(k, len(runs))) + list(range(k)):
            spec, out = runs[ci], res[ci]
            if out["oom"]:
                continue
            if over_budget():
                out["skipped"] = True
                continue
            if device.type == "cuda":
                _reset_peak(device)
            run, info = guarded("build", run_cls, spec, args, total_steps)
            if info:
                fail(ci, info)
                continue
            _built(run, out)
            t_round = []
            after = False  # the previous step was a topology update
            for i in range(args.warmup_steps + per_round[r]):
                phase = "warm-up" if i < args.warmup_steps else f"step {i + 1}"
                step_out, info = guarded(phase, timed_step, run, data)
                if info:
                    break
                dt, update, _ = step_out
                was_after, after = after, update
                if i < args.warmup_steps:
                    continue
                if update:
                    out["update_times"].append(dt)
                    out["update_drop"].append(run.last_update_drop)
                elif was_after:
                    out["after_update_times"].append(dt)
                else:
                    out["times"][(r, i)] = dt
                    t_round.append(dt)
            if not info and r == rounds - 1:
                _, info = guarded("measured step", _finish, run, data, out)
            if info:
                del run
                free_memory()
                fail(ci, info)
                continue
            if r < rounds - 1:
                out["optimizer_steps"] += run.step
                out["topology_updates"] += run.ctrl.update_count if run.ctrl is not None else 0
            if t_round:
                out["round_medians"].append(statistics.median(t_round))
            if device.type == "cuda":
                _read_peak(device, out)
            print(f"[smet-bench] round {r + 1}/{rounds} {spec.label}: {dt_ms(out)}"
                  + (f", build {run.build_time_s:.1f} s" if r == 0 else "")
                  + (f", loss {run.last_loss:.3f}" if r == rounds - 1 else ""), file=log, flush=True)
            del run
            free_memory()
