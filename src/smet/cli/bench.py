"""``smet-bench``: training throughput and static memory of dense AdamW vs compact sparse methods.

All combinations of ``--precision`` x ``--activation-checkpointing`` x ``--compile`` x (dense, then
``--method`` x ``--density`` x ``--materialize``) run in ONE process with the SAME training loop
(forward, loss, backward, optimizer.step, zero_grad(set_to_none=True), and the topology
controller's before_step / after_step for sparse runs) on SYNTHETIC random tokens. Each sparse
combination is compared with the dense one of the same precision / checkpointing / compile.
To keep ratios fair on a noisy shared machine the combinations are interleaved: by default (CPU)
all of them are alive and take their steps in turn, rotating the order every step; with
``--interleave round`` (default on CUDA) the timed steps are split into ``--rounds`` rounds
interleaved across combinations, one model alive at a time. Step times are medians; the
median of per-step paired ratios against dense is reported as well. Static memory is measured
with ``smet.sparse.memory.measure_static`` right after an optimizer step (grads present) and set
next to the prediction of ``smet.sparse.memory.predict_static`` (what ``smet-memory`` prints).

Models are built on the meta device and materialised on the target device (``smet.build``): the
dense weights of sparse layers are never allocated, so a LLaMA-13B at d = 0.25 fits one H200. A
combination that runs out of memory (at build or any step) is recorded as OOM and the benchmark
goes on with the next one. MFU follows ``smet.perf`` (6 * N * tokens/s, N without the input
embedding; ``mfu_dense`` with every weight counted, ``mfu_active`` with the active ones only).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

from smet.cli.memory import (CliError, _Parser, check_block_size, check_density, load_model_preset)

METHODS = ("dense", "static", "set", "rigl", "smet")
PRECISIONS = ("32", "bf16-mixed", "bf16-true")
STATIC_KEYS = ("weights", "grads", "optimizer", "metadata", "compute_copy", "buffers", "total")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="smet-bench",
        description="Benchmark N training steps of a model preset for every --precision x --activation-checkpointing "
                    "x --compile x (dense, --method x --density x --materialize) combination in one process, with "
                    "the same loop for dense and sparse, on synthetic random tokens. Reports tokens/s (median "
                    "steady step), the time of topology-update steps, amortised tokens/s, MFU (dense and active "
                    "parameter counts), measured static memory (weights / grads / optimizer / metadata) next to "
                    "the memory model's prediction and, on CUDA, peak allocated / reserved memory. A combination "
                    "that runs out of memory is recorded as OOM. Writes JSON (--out) and prints a Markdown table.",
        epilog="example:\n  smet-bench --device cpu --model tiny --method dense smet --density 0.5 0.25 "
               "--materialize transient persistent --steps 30 --out bench.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device (default: cpu)")
    p.add_argument("--model", default="tiny", help="model preset from conf/model (default: tiny)")
    p.add_argument("--method", nargs="+", default=["dense", "smet"], choices=METHODS,
                   help="methods to run (default: dense smet); dense runs once regardless of density")
    p.add_argument("--density", nargs="+", type=float, default=[0.5], metavar="D",
                   help="densities of the sparse methods, each in (0, 1] (default: 0.5)")
    p.add_argument("--materialize", nargs="+", default=["transient"], choices=("transient", "persistent"),
                   help="materialisation mode(s) of the sparse layers (default: transient)")
    p.add_argument("--block-size", type=int, default=1, help="sparsity block size (default: 1)")
    p.add_argument("--allocation", default="uniform", choices=("uniform", "erk"), help="(default: uniform)")
    p.add_argument("--update-interval", type=int, default=10,
                   help="topology update interval in steps (default: 10, so short runs include updates)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per combination, over all rounds (default: 20)")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps at the start of every round (default: 3)")
    p.add_argument("--interleave", choices=("step", "round"), default=None,
                   help="step: all combinations alive, steps taken in turn (fairest on a noisy CPU; default on cpu); "
                        "round: timed steps split into --rounds rounds, one model alive at a time (default on cuda)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds for --interleave round (default: 3)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default: 8)")
    p.add_argument("--seq-len", type=int, default=256, help="sequence length (default: 256)")
    p.add_argument("--vocab", type=int, default=4096, help="vocabulary size (default: 4096)")
    p.add_argument("--precision", nargs="+", default=["32"], choices=PRECISIONS,
                   help="one or more of 32: fp32; bf16-mixed: fp32 params and states + bf16 autocast; bf16-true: "
                        "model and states in bf16 (default: 32)")
    p.add_argument("--activation-checkpointing", nargs="+", default=None, choices=("off", "on"),
                   help="per-block activation checkpointing (the model's gradient_checkpointing), one or both "
                        "(default: the preset's own setting)")
    p.add_argument("--compile", nargs="+", default=["off"], choices=("off", "on"),
                   help="torch.compile the model (dense and sparse alike), one or both; compilation happens in "
                        "the warm-up steps (default: off)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak FLOP/s (in TFLOP/s) that MFU is relative to (default: the device's dense bf16 "
                        "tensor-core peak from smet.perf, e.g. 989 for an H200 / H100 (datasheet, no sparsity); "
                        "none on CPU, so no MFU there unless given)")
    p.add_argument("--dense-last", action="store_true",
                   help="run each group's dense combination after the sparse ones (e.g. a dense attempt expected to "
                        "OOM: the sparse runs then cannot be affected by anything it leaves behind)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="start no new combination (or round) after this many seconds; combinations left without a "
                        "measured step are recorded as skipped (default: no limit)")
    p.add_argument("--amortize-interval", type=int, default=None, metavar="N",
                   help="spread the measured extra cost of an update step over N steps for the amortised tok/s "
                        "(default: --update-interval). Update steps are timed every --update-interval steps so "
                        "that short runs see several; N gives the training's real frequency (e.g. 100)")
    p.add_argument("--from-json", type=Path, default=None, metavar="FILE",
                   help="run nothing: re-print (and with --md re-write) the tables of records saved by --out, "
                        "re-amortised with --amortize-interval when given")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, constant (default: 1e-3)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="seed of model init, masks and data (default: 0)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON records here")
    p.add_argument("--md", type=Path, default=None, help="also write the Markdown table (and ratio lines) here")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out / --md file")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="also profile 2 steps per combination with torch.profiler: DIR/<combination>.txt (top ops "
                        "by device and host time) and the per-phase times / kernel counts in the JSON records")
    return p


# ----------------------------------------------------------------------------- combinations
def _ac_values(args, model_cfg: dict) -> list[bool]:
    if args.activation_checkpointing is None:
        return [bool(model_cfg.get("gradient_checkpointing", False))]
    return [v == "on" for v in dict.fromkeys(args.activation_checkpointing)]


def combinations(args, model_cfg: dict | None = None) -> list[dict[str, Any]]:
    """precision x activation checkpointing x compile x (dense, method x density x materialize).

    Each (precision, checkpointing, compile) group starts with its dense run (when ``dense`` is a
    method; ends with it under ``--dense-last``), the reference the group's sparse runs are compared
    with."""
    precisions = list(dict.fromkeys(args.precision if isinstance(args.precision, list) else [args.precision]))
    acs = _ac_values(args, model_cfg or {})
    compiles = [v == "on" for v in dict.fromkeys(getattr(args, "compile", None) or ["off"])]
    combos = []
    for prec in precisions:
        for ac in acs:
            for comp in compiles:
                axes = {"precision": prec, "ac": ac, "compile": comp}
                group = []
                for method in args.method:
                    if method == "dense":
                        continue
                    for d in args.density:
                        for mat in args.materialize:
                            group.append({"method": method, "density": float(d), "materialize": mat, **axes})
                if "dense" in args.method:
                    dense = {"method": "dense", "density": 1.0, "materialize": None, **axes}
                    group = group + [dense] if getattr(args, "dense_last", False) else [dense] + group
                combos += group
    varying = {k for k in ("precision", "ac", "compile") if len({c[k] for c in combos}) > 1}
    for c in combos:
        c["varying"] = varying
    return combos


def _group(c: dict) -> tuple:
    return (c["precision"], c["ac"], c["compile"])


def _label(c: dict) -> str:
    base = "dense" if c["method"] == "dense" else f"{c['method']} d={c['density']:g} {c['materialize']}"
    varying = c.get("varying") or ()
    if "precision" in varying:
        base += f" {c['precision']}"
    if "ac" in varying:
        base += f" ac={'on' if c['ac'] else 'off'}"
    if "compile" in varying:
        base += f" compile={'on' if c['compile'] else 'off'}"
    return base


class Run:
    """One combination: model, optimizer and topology controller, built from the seed on the meta
    device and materialised on the target device (``smet.build``: the dense weights of sparse
    layers are never allocated)."""

    def __init__(self, combo: dict, args, model_cfg: dict, total_steps: int):
        import torch

        from smet.build import build_training_model
        from smet.optim import build_optimizer
        from smet.sparse import build_smet_optimizer
        from smet.sparse.memory import method_configs

        self.combo = combo
        self.device = torch.device(args.device)
        precision = combo.get("precision", "32")
        scfg, ocfg = method_configs(combo["method"], combo["density"], block_size=args.block_size,
                                    materialize=combo["materialize"] or "transient", allocation=args.allocation,
                                    update_interval=args.update_interval, lr=args.lr)
        self.sparsity_cfg, self.optimizer_cfg = scfg, ocfg
        cfg = dict(model_cfg)
        cfg["gradient_checkpointing"] = bool(combo.get("ac", cfg.get("gradient_checkpointing", False)))
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        model, self.ctrl = build_training_model(cfg, scfg, total_steps=total_steps, device=self.device,
                                                seed=args.seed)
        if precision == "bf16-true":
            model.to(dtype=torch.bfloat16)
        if self.ctrl is not None:
            # the compute copy follows the compute dtype, as in the Lightning module
            self.ctrl.set_dense_dtype(torch.bfloat16 if precision.startswith("bf16") else torch.float32)
        model.train()
        self.model = model
        if self.ctrl is None:
            self.opt = build_optimizer(model, ocfg)
        else:
            self.opt = build_smet_optimizer(model, ocfg, self.ctrl)
        _sync(self.device)
        self.build_time_s = time.perf_counter() - t0
        # MFU parameter counts (smet.perf convention: input embedding excluded)
        self.n_flop_params_dense = model.config.num_params(include_embedding=False)
        self.n_flop_params_active = (self.ctrl.active_params_excluding_embedding() if self.ctrl is not None
                                     else self.n_flop_params_dense)
        if combo.get("compile"):
            torch._dynamo.reset()  # a fresh graph per model: no recompile limit across combinations
            model.compile()
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if precision == "bf16-mixed"
                         else contextlib.nullcontext())
        self.step = 0
        self.last_loss = float("nan")

    def train_step(self, x, y, measure: bool = False) -> tuple[bool, dict | None]:
        """One optimizer step. Returns (was a topology update step, static breakdown if measured)."""
        self.step += 1
        s, ctrl = self.step, self.ctrl
        update = ctrl is not None and ctrl.is_update_step(s)
        if ctrl is not None:
            ctrl.before_step(s)
        with _phase("smet/forward"), self.autocast:
            loss = self.model.loss(x, y)
        with _phase("smet/backward"):
            loss.backward()
        with _phase("smet/optimizer"):
            self.opt.step()
        stat = None
        if measure:
            from smet.sparse.memory import measure_static

            stat = measure_static(self.model, self.opt, ctrl)
        self.opt.zero_grad(set_to_none=True)
        if ctrl is not None:
            ctrl.after_step(s)
        if measure:
            self.last_loss = float(loss.detach())
        return update, stat


# ----------------------------------------------------------------------------- out of memory
_TRIED = re.compile(r"Tried to allocate ([0-9.]+) ?(B|bytes|KiB|MiB|GiB|TiB)")
_CPU_BYTES = re.compile(r"you tried to allocate (\d+) bytes")
_UNITS = {"B": 1, "bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def is_oom(err: BaseException) -> bool:
    """``torch.OutOfMemoryError`` (CUDA) or the CPU allocator's "can't allocate memory" RuntimeError."""
    import torch

    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)


def oom_info(err: BaseException, phase: str) -> dict[str, Any]:
    """What is recorded for an OOM: the error's first line, the bytes the failed allocation asked for
    (parsed from the message when it says), the phase (build / warm-up / step N / ...)."""
    msg = str(err).strip()
    first = msg.splitlines()[0] if msg else type(err).__name__
    req = None
    m = _TRIED.search(msg)
    if m:
        req = int(float(m.group(1)) * _UNITS[m.group(2)])
    else:
        m = _CPU_BYTES.search(msg)
        if m:
            req = int(m.group(1))
    return {"oom": True, "oom_error": first[:500], "oom_bytes_requested": req, "oom_phase": phase}


def free_memory(device=None) -> None:
    """gc + empty the CUDA cache (after dropping the references to a failed run)."""
    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def guarded(phase: str, fn, *a, **kw) -> tuple[Any, dict | None]:
    """``(fn(*a, **kw), None)``, or ``(None, oom_info)`` when it runs out of memory. The traceback
    (which holds the frames and thus the failed step's tensors) is dropped before memory is freed;
    the caller must drop its own references to the run and call :func:`free_memory` again."""
    try:
        return fn(*a, **kw), None
    except RuntimeError as err:
        if not is_oom(err):
            raise
        info = oom_info(err, phase)
    free_memory()
    return None, info


def _phase(name: str):
    """A profiler range (free when no profiler is running)."""
    import torch

    return torch.profiler.record_function(name)


def profile_run(run: "Run", data, out_dir: Path, label: str) -> dict[str, Any]:
    """Profile 2 steady steps: per-phase wall/device time, kernel launches, top ops -> a text table."""
    import torch

    acts = [torch.profiler.ProfilerActivity.CPU]
    if run.device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    for _ in range(2):
        _timed_step(run, data)
    _sync(run.device)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(2):
            _timed_step(run, data)
        _sync(run.device)
    events = prof.key_averages()
    phases: dict[str, dict[str, float]] = {}
    for e in events:
        if e.key.startswith("smet/"):
            phases[e.key[5:]] = {"host_ms": e.cpu_time_total / 1000 / 2,
                                 "device_ms": getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0)) / 1000 / 2}
    kernels = sum(e.count for e in events if getattr(e, "device_type", None) is not None
                  and str(e.device_type).endswith("CUDA") and e.key and not e.key.startswith("smet/")) / 2
    sort_key = "self_cuda_time_total" if run.device.type == "cuda" else "self_cpu_time_total"
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in label)
    (out_dir / f"{safe}.txt").write_text(events.table(sort_by=sort_key, row_limit=40))
    return {"phases_per_step": phases, "device_ops_per_step": kernels}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(args, device):
    import torch

    gen = torch.Generator().manual_seed(args.seed)
    return torch.randint(0, args.vocab, (4, args.batch, args.seq_len + 1), generator=gen).to(device)


def _timed_step(run: Run, data, measure: bool = False) -> tuple[float, bool, dict | None]:
    b = data[run.step % data.shape[0]]
    _sync(run.device)
    t0 = time.perf_counter()
    update, stat = run.train_step(b[:, :-1], b[:, 1:], measure=measure)
    _sync(run.device)
    return time.perf_counter() - t0, update, stat


def _new_result() -> dict[str, Any]:
    return {"times": {}, "update_times": [], "round_medians": [], "static": None, "peak": None, "peak_reserved": None,
            "cfg": None, "loss": None, "active": None, "oom": None, "skipped": False, "build_time_s": None,
            "n_flop_params": None, "optimizer_steps": 0, "topology_updates": 0}


def _finish(run: Run, data, out: dict) -> None:
    """The measured step: static memory read after optimizer.step(), before zero_grad."""
    _, _, stat = _timed_step(run, data, measure=True)
    out["static"] = stat
    out["loss"] = run.last_loss
    out["active"] = run.ctrl.active_weights() if run.ctrl is not None else None
    out["optimizer_steps"] += run.step
    out["topology_updates"] += run.ctrl.update_count if run.ctrl is not None else 0


def _built(run: Run, out: dict) -> None:
    out["cfg"] = (run.sparsity_cfg, run.optimizer_cfg)
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


def run_bench(args, model_cfg: dict, log=sys.stderr, run_cls=None) -> list[dict[str, Any]]:
    """Run every combination; returns one record per combination.

    ``--interleave step`` (default on CPU): all combinations are alive at once and take their
    steps in turn (A B C A B C ..., order rotated every step), so a load change on a shared
    machine hits all of them alike; per-step paired ratios are reported too. ``round`` (default
    on CUDA): timed steps split into ``--rounds`` rounds interleaved across combinations, one
    model alive at a time; CUDA peak memory is read in every round (one model alive, so it is that
    combination's own peak, topology-update steps included). In step mode CUDA peaks come from an
    extra pass with one model alive. A combination that runs out of memory (build, any step, the
    measured step) is recorded as OOM, its model freed, and the others go on. ``run_cls``: the
    class that builds and steps one combination (default :class:`Run`).
    """
    import torch

    run_cls = run_cls or Run
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t_start = time.perf_counter()
    budget = getattr(args, "time_budget", None)

    def over_budget() -> bool:
        return budget is not None and time.perf_counter() - t_start > budget

    combos = combinations(args, model_cfg)
    data = _batches(args, device)
    res = [_new_result() for _ in combos]
    mode = args.interleave or ("round" if device.type == "cuda" else "step")

    def fail(ci: int, info: dict) -> None:
        res[ci]["oom"] = info
        if device.type == "cuda" and mode == "round":  # high-water marks up to the failure (one model alive)
            _read_peak(device, res[ci])
        print(f"[smet-bench] OOM {_label(combos[ci])} ({info['oom_phase']}): {info['oom_error']}", file=log, flush=True)

    if mode == "step":
        total_steps = args.warmup_steps + args.steps + 2
        runs: list = []
        for ci, c in enumerate(combos):
            run, info = guarded("build", run_cls, c, args, model_cfg, total_steps)
            if info:
                fail(ci, info)
            else:
                _built(run, res[ci])
            runs.append(run)
            del run
        free_memory()
        n = len(runs)
        for i in range(args.warmup_steps + args.steps):
            k = i % n
            for ci in list(range(k, n)) + list(range(k)):
                if runs[ci] is None:
                    continue
                phase = "warm-up" if i < args.warmup_steps else f"step {i + 1}"
                out, info = guarded(phase, _timed_step, runs[ci], data)
                if info:
                    runs[ci] = None
                    free_memory()
                    fail(ci, info)
                    continue
                dt, update, _ = out
                if i < args.warmup_steps:
                    continue
                if update:
                    res[ci]["update_times"].append(dt)
                else:
                    res[ci]["times"][i] = dt
            if (i + 1) % 10 == 0 or i + 1 == args.warmup_steps + args.steps:
                print(f"[smet-bench] step {i + 1}/{args.warmup_steps + args.steps}: " + ", ".join(
                    f"{_label(c)} {dt_ms(res[ci])}" for ci, c in enumerate(combos)), file=log, flush=True)
        for ci in range(n):
            if runs[ci] is not None:
                _, info = guarded("measured step", _finish, runs[ci], data, res[ci])
                if info:
                    runs[ci] = None
                    free_memory()
                    fail(ci, info)
        del runs
        free_memory()
        if device.type == "cuda":
            for ci, combo in enumerate(combos):  # one model alive: clean peak per combination
                if res[ci]["oom"] or res[ci]["static"] is None:
                    continue
                _reset_peak(device)

                def peak_pass():
                    run = run_cls(combo, args, model_cfg, args.warmup_steps + 4)
                    for _ in range(max(args.warmup_steps, 1) + 1):
                        _timed_step(run, data)

                _, info = guarded("peak pass", peak_pass)
                if info:
                    fail(ci, info)
                else:
                    _read_peak(device, res[ci])
                free_memory()
    else:
        rounds = max(1, min(args.rounds, args.steps))
        per_round = [args.steps // rounds + (1 if r < args.steps % rounds else 0) for r in range(rounds)]
        total_steps = args.warmup_steps + max(per_round) + 2  # topology updates stay inside [start, stop)
        for r in range(rounds):
            k = r % len(combos)
            for ci in list(range(k, len(combos))) + list(range(k)):
                combo, out = combos[ci], res[ci]
                if out["oom"]:
                    continue
                if over_budget():
                    out["skipped"] = True
                    continue
                if device.type == "cuda":
                    _reset_peak(device)
                run, info = guarded("build", run_cls, combo, args, model_cfg, total_steps)
                if info:
                    fail(ci, info)
                    continue
                _built(run, out)
                t_round = []
                for i in range(args.warmup_steps + per_round[r]):
                    phase = "warm-up" if i < args.warmup_steps else f"step {i + 1}"
                    step_out, info = guarded(phase, _timed_step, run, data)
                    if info:
                        break
                    dt, update, _ = step_out
                    if i < args.warmup_steps:
                        continue
                    if update:
                        out["update_times"].append(dt)
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
                print(f"[smet-bench] round {r + 1}/{rounds} {_label(combo)}: {dt_ms(out)}"
                      + (f", build {run.build_time_s:.1f} s" if r == 0 else "")
                      + (f", loss {run.last_loss:.3f}" if r == rounds - 1 else ""), file=log, flush=True)
                del run
                free_memory()
    for out in res:
        if not out["oom"] and out["static"] is None:
            out["skipped"] = True
    profiles = [None] * len(combos)
    if args.profile is not None:
        for ci, combo in enumerate(combos):
            if res[ci]["oom"] or res[ci]["skipped"] or over_budget():
                continue
            free_memory()
            run = run_cls(combo, args, model_cfg, args.warmup_steps + 8)
            profiles[ci] = profile_run(run, data, args.profile, _label(combo))
            print(f"[smet-bench] profile {_label(combo)}: {profiles[ci]}", file=log, flush=True)
            del run
    peak_flops = (args.peak_tflops * 1e12 if getattr(args, "peak_tflops", None)
                  else _device_peak_flops(device))
    tokens = args.batch * args.seq_len
    records = [_record(c, o, args, model_cfg, tokens, peak_flops) for c, o in zip(combos, res)]
    for rec, prof in zip(records, profiles):
        if prof is not None:
            rec["profile"] = prof
    _paired(records, res, combos)
    return records


def _device_peak_flops(device) -> float | None:
    from smet.perf import peak_flops_for

    return peak_flops_for(device)


def dt_ms(out: dict) -> str:
    t = list(out["times"].values())
    return f"{statistics.median(t) * 1e3:.1f} ms" if t else "-"


def _dense_of(combos: list[dict]) -> dict[tuple, int]:
    return {_group(c): i for i, c in enumerate(combos) if c["method"] == "dense"}


def _paired(records: list[dict], res: list[dict], combos: list[dict]) -> None:
    """Median over steps of (dense step time / this step time) for steps timed at the same index,
    against the dense run of the same precision / checkpointing / compile group."""
    dense = _dense_of(combos)
    for ci, rec in enumerate(records):
        rec["paired_speed_ratio_vs_dense"] = None
        di = dense.get(_group(combos[ci]))
        if di is None or ci == di:
            continue
        d, t = res[di]["times"], res[ci]["times"]
        common = sorted(set(d) & set(t))
        if common:
            rec["paired_speed_ratio_vs_dense"] = statistics.median(d[j] / t[j] for j in common)


STATIC_TOLERANCE = 0.05  # the issue's target: measured static state within 5 % of the memory model


def _record(combo: dict, o: dict, args, model_cfg: dict, tokens: int, peak_flops: float | None = None) -> dict[str, Any]:
    import torch

    from smet.sparse.memory import active_weight_count, method_configs, predict_static

    precision = combo["precision"]
    scfg, ocfg = o["cfg"] or method_configs(combo["method"], combo["density"], block_size=args.block_size,
                                            materialize=combo["materialize"] or "transient",
                                            allocation=args.allocation, update_interval=args.update_interval,
                                            lr=args.lr)
    # the prediction smet-memory prints for this configuration (same function)
    pred = predict_static(model_cfg, scfg, ocfg, precision, args.vocab, args.seq_len)
    times, upd = list(o["times"].values()), o["update_times"]
    ok = o["static"] is not None and not o["oom"]
    step_t = statistics.median(times) if times and ok else float("nan")
    upd_t = statistics.median(upd) if upd and ok else None
    tps = tokens / step_t if times and ok else None
    every = getattr(args, "amortize_interval", None) or args.update_interval
    amort = _amortised(tokens, step_t, upd_t, every) if tps else None
    if combo["method"] == "dense" or not ok:
        active = active_weight_count(model_cfg, scfg, args.vocab, args.seq_len)
    else:
        active = o["active"]
    if o["n_flop_params"] is not None:
        n_dense, n_active = o["n_flop_params"]
    else:
        from smet.sparse.memory import meta_model

        n_dense = meta_model(model_cfg, args.vocab, args.seq_len).config.num_params(include_embedding=False)
        n_active = None
    static = o["static"]
    measured_total = static["all"]["total"] if static else None
    rel_err = (measured_total - pred["all"]["total"]) / pred["all"]["total"] if static else None
    rec = {
        "method": combo["method"], "density": combo["density"], "materialize": combo["materialize"],
        "precision": precision, "activation_checkpointing": bool(combo["ac"]), "compile": bool(combo["compile"]),
        "label": _label(combo),
        "block_size": None if combo["method"] == "dense" else args.block_size,
        "oom": bool(o["oom"]), "skipped": bool(o["skipped"]) and not o["oom"],
        "tokens_per_s": tps,
        # robust amortisation: median steady step + the median extra cost of an update step spread over
        # the update interval (a mean over all timed steps would be dominated by load spikes)
        "tokens_per_s_amortised": amort,
        "amortize_interval": every,
        "step_time_s": step_t,
        "update_step_time_s": upd_t,
        "n_timed_steps": len(times), "n_update_steps": len(upd),
        "optimizer_steps": o["optimizer_steps"], "topology_updates": o["topology_updates"],
        "round_median_step_time_s": o["round_medians"],
        "build_time_s": o["build_time_s"],
        # MFU (smet.perf): 6 * N * amortised tokens/s / peak, N without the input embedding;
        # dense: every weight of the model counted; active: only the active weights of sparse layers
        "flop_params_dense": n_dense, "flop_params_active": n_active,
        "peak_flops": peak_flops,
        **_mfus(amort, n_dense, n_active, peak_flops),
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
            "model": {**model_cfg, "gradient_checkpointing": bool(combo["ac"])}, "sparsity": scfg,
            "optimizer": {k: (list(v) if isinstance(v, tuple) else v) for k, v in ocfg.items()},
            "precision": precision, "activation_checkpointing": bool(combo["ac"]), "compile": bool(combo["compile"]),
            "device": args.device, "batch": args.batch, "seq_len": args.seq_len,
            "vocab": args.vocab, "steps": args.steps, "warmup_steps": args.warmup_steps, "rounds": args.rounds,
            "update_interval": args.update_interval,
            "interleave": args.interleave or ("round" if args.device == "cuda" else "step"), "seed": args.seed,
            "threads": torch.get_num_threads(), "init": "meta device, materialised on the target device (smet.build)",
            "data": "synthetic uniform random tokens", "torch": torch.__version__, "python": platform.python_version(),
        },
    }
    if o["oom"]:
        rec.update(o["oom"])
    return rec


def _amortised(tokens: float, step_t: float, upd_t: float | None, every: int) -> float:
    """tokens / (median steady step + the median extra time of an update step spread over ``every`` steps)."""
    return tokens / (step_t + (max(upd_t - step_t, 0.0) / every if upd_t else 0.0))


def _mfus(tokens_per_s: float | None, n_dense: int | None, n_active: int | None,
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
            r["tokens_per_s_amortised"] = _amortised(tokens, r["step_time_s"], r.get("update_step_time_s"), every)
            r["amortize_interval"] = every
            r.update(_mfus(r["tokens_per_s_amortised"], r.get("flop_params_dense"), r.get("flop_params_active"),
                           r.get("peak_flops")))
        out.append(r)
    return out


def _mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def markdown(records: list[dict], args=None) -> str:
    head = ("| method | density | materialize | precision | act. ckpt | compile | tokens/s | step ms | update step ms | "
            "amortised tok/s | MFU dense % | MFU active % | sparse-layer static MiB | B / active weight | "
            "static total MiB | predicted static MiB | static vs model % | peak alloc MiB | peak reserved MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    notes = []
    for r in records:
        axes = (f"| {r['method']} | {r['density']:g} | {r['materialize'] or '-'} | {r['precision']} | "
                f"{'on' if r['activation_checkpointing'] else 'off'} | {'on' if r['compile'] else 'off'} |")
        pred = _mib(r["predicted_static_bytes"]["total"])
        if r["oom"]:
            req = r.get("oom_bytes_requested")
            lines.append(axes + f" OOM | - | - | - | - | - | - | - | - | {pred} | - | {_mib(r['peak_bytes'])} | "
                                f"{_mib(r['peak_reserved_bytes'])} |")
            notes.append(f"OOM {r['label']} ({r['oom_phase']}"
                         + (f", tried to allocate {req / 2**30:.2f} GiB" if req else "") + f"): {r['oom_error']}")
            continue
        if r["skipped"]:
            lines.append(axes + f" skipped | - | - | - | - | - | - | - | - | {pred} | - | - | - |")
            continue
        err = r["static_rel_error"]
        flag = "" if r["static_within_tolerance"] else " (> 5 %!)"
        lines.append(axes + " {tps:,.0f} | {st:.1f} | {ut} | {am:,.0f} | {mfd} | {mfa} | {ss} | {bpw:.2f} | {tot} | {pred} | "
                            "{err}{flag} | {pk} | {pr} |".format(
            tps=r["tokens_per_s"] or float("nan"), st=r["step_time_s"] * 1e3,
            ut="-" if r["update_step_time_s"] is None else f"{r['update_step_time_s'] * 1e3:.1f}",
            am=r["tokens_per_s_amortised"] or float("nan"), mfd=_pct(r["mfu_dense"]), mfa=_pct(r["mfu_active"]),
            ss=_mib(r["sparse_static_bytes"]["total"]), bpw=r["bytes_per_active_weight"],
            tot=_mib(r["static_bytes"]["total"]), pred=pred, err=f"{100 * err:+.2f}", flag=flag,
            pk=_mib(r["peak_bytes"]), pr=_mib(r["peak_reserved_bytes"])))
    return "\n".join(lines + ([""] + notes if notes else []))


def ratios(records: list[dict]) -> list[str]:
    """Per sparse combination: speed, static-memory and peak ratios against the dense run of its group."""
    dense = {(r["precision"], r["activation_checkpointing"], r["compile"]): r for r in records if r["method"] == "dense"}
    out = []
    for r in records:
        d = dense.get((r["precision"], r["activation_checkpointing"], r["compile"]))
        if r["method"] == "dense" or d is None or r["oom"] or r["skipped"]:
            continue
        extra = r["label"][len(f"{r['method']} d={r['density']:g} "):]  # "transient[ bf16-true ac=on ...]"
        tag = f"d={r['density']:g} ({extra})"
        if d["oom"]:
            out.append(f"{r['method']}/dense at {tag}: dense OOM ({d['oom_phase']}); {r['method']} trained "
                       f"{r['optimizer_steps']} steps, {r['topology_updates']} topology updates, loss {r['final_loss']:.3f}")
            continue
        if d["skipped"] or not d["tokens_per_s"] or not r["tokens_per_s"]:
            continue
        paired = r.get("paired_speed_ratio_vs_dense")
        line = (f"{r['method']}/dense tokens/s at {tag}: "
                f"{r['tokens_per_s'] / d['tokens_per_s']:.3f}x "
                f"(amortised {r['tokens_per_s_amortised'] / d['tokens_per_s_amortised']:.3f}x"
                + (f", median paired per-step {paired:.3f}x" if paired else "") + ")"
                + f"; static {r['static_bytes']['total'] / d['static_bytes']['total']:.3f}x")
        if r["peak_bytes"] and d["peak_bytes"]:
            line += f"; peak {r['peak_bytes'] / d['peak_bytes']:.3f}x"
        out.append(line)
    return out


def _from_json(args) -> int:
    try:
        records = json.loads(args.from_json.read_text())
        if not isinstance(records, list) or not all(isinstance(r, dict) and "method" in r for r in records):
            raise ValueError("not a list of smet-bench records")
    except (OSError, ValueError) as err:
        print(f"smet-bench: error: --from-json {args.from_json}: {err}", file=sys.stderr)
        return 2
    if args.amortize_interval is not None:
        records = reamortize(records, args.amortize_interval)
    cfg = records[0].get("config", {})
    every = records[0].get("amortize_interval") or cfg.get("update_interval")
    header = (f"smet-bench records from {args.from_json}: model {cfg.get('model_preset')} on {cfg.get('device_name')} "
              f"(torch {cfg.get('torch')}), batch {cfg.get('batch')} x seq {cfg.get('seq_len')}; update steps timed "
              f"every {cfg.get('update_interval')} steps, amortised over an update every {every} steps.")
    table, lines = markdown(records), ratios(records)
    if args.md is not None:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(header + "\n\n" + table + "\n\n" + "\n".join(f"* {x}" for x in lines) + "\n")
    print(header + "\n\n" + table + "\n")
    for line in lines:
        print(line)
    return 0


def check_output_file(opt: str, path: Path | None, force: bool) -> None:
    """Before any compute: the file can be written, and an existing one is kept unless --force."""
    import tempfile

    if path is None:
        return
    if path.is_dir():
        raise CliError(opt, f"{path} is a directory; give a file name")
    if path.exists() and not force:
        raise CliError(opt, f"{path} exists; pass --force to overwrite it or choose another file")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".smet-probe-", dir=parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise CliError(opt, f"cannot write into {parent} ({e.strerror or e})") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.amortize_interval is not None and args.amortize_interval < 1:
        print(f"smet-bench: error: --amortize-interval must be a positive integer, got {args.amortize_interval}",
              file=sys.stderr)
        return 2
    if args.from_json is not None:
        return _from_json(args)
    try:
        for d in args.density:
            check_density(d)
        for opt, v in (("--steps", args.steps), ("--batch", args.batch), ("--seq-len", args.seq_len),
                       ("--vocab", args.vocab), ("--update-interval", args.update_interval), ("--rounds", args.rounds)):
            if v < 1:
                raise CliError(opt, f"must be a positive integer, got {v}")
        if args.warmup_steps < 0:
            raise CliError("--warmup-steps", f"must be >= 0, got {args.warmup_steps}")
        if args.threads is not None and args.threads < 1:
            raise CliError("--threads", f"must be a positive integer, got {args.threads}")
        if args.peak_tflops is not None and not args.peak_tflops > 0:
            raise CliError("--peak-tflops", f"must be positive, got {args.peak_tflops:g}")
        if args.time_budget is not None and not args.time_budget > 0:
            raise CliError("--time-budget", f"must be positive, got {args.time_budget:g}")
        for opt, path in (("--out", args.out), ("--md", args.md)):
            check_output_file(opt, path, args.force)
        model_cfg = load_model_preset(args.model)
        check_block_size(model_cfg, args.block_size)
        model_cfg["vocab_size"] = args.vocab
        model_cfg["max_seq_len"] = args.seq_len
        import torch

        if args.device == "cuda" and not torch.cuda.is_available():
            raise CliError("--device", "cuda requested but torch.cuda.is_available() is False")
    except CliError as err:
        print(f"smet-bench: error: {err}", file=sys.stderr)
        return 2
    prec = ", ".join(args.precision)
    print(f"[smet-bench] model {args.model}, {args.device}, precision {prec}, batch {args.batch} x seq "
          f"{args.seq_len}, vocab {args.vocab}, SYNTHETIC random tokens; {args.steps} timed steps in {args.rounds} "
          f"interleaved rounds (+{args.warmup_steps} warm-up per round), update interval {args.update_interval}",
          file=sys.stderr, flush=True)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    records = run_bench(args, model_cfg)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()
    dev_name = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or platform.machine()
    for r in records:
        r["config"]["loadavg_1m_start_end"] = [load0[0], load1[0]]
        r["config"]["device_name"] = dev_name
        r["config"]["model_preset"] = args.model
        r["config"]["bench_wall_s"] = round(wall, 1)
    peak = next((r["peak_flops"] for r in records if r["peak_flops"]), None)
    header = (f"smet-bench: model {args.model} on {args.device} ({dev_name}; {torch.get_num_threads()} threads; 1-min "
              f"load average {load0[0]:.2f} -> {load1[0]:.2f}; {wall:.0f} s), precision {prec}, batch {args.batch} "
              f"x seq {args.seq_len}, vocab {args.vocab}. Data: SYNTHETIC random tokens. "
              f"tokens/s from the median steady step; update step = a step with a topology update (every "
              f"{args.update_interval}); amortised = tokens / (median step + median update-step extra / "
              f"{args.amortize_interval or args.update_interval}). MFU = 6 x N x amortised tokens/s / "
              + (f"{peak / 1e12:g} TFLOP/s" if peak else "(no peak: MFU not computed)")
              + " (dense bf16 peak), N without the input embedding: 'dense' counts every weight, 'active' only "
              "the active weights of the sparse layers. Static = weights + grads + optimizer + metadata (+ compute "
              "copy, buffers) from the live tensors after an optimizer step; predicted = smet.sparse.memory."
              "predict_static (smet-memory); peak = torch.cuda.max_memory_allocated / _reserved.")
    table = markdown(records, args)
    lines = ratios(records)
    from smet.atomic import atomic_write

    if args.out is not None:
        text = json.dumps(records, indent=2, default=str)
        atomic_write(args.out, lambda f: f.write(text.encode()))
    if args.md is not None:
        md = header + "\n\n" + table + "\n\n" + "\n".join(f"* {x}" for x in lines) + "\n"
        atomic_write(args.md, lambda f: f.write(md.encode()))
    print("\n" + header + "\n")
    print(table)
    print()
    for line in lines:
        print(line)
    if args.out is not None:
        print(f"\nwrote {args.out}" + (f" and {args.md}" if args.md is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
