"""``smet-bench``: training throughput and static memory of dense AdamW vs compact sparse methods.

All combinations of ``--method`` x ``--density`` x ``--materialize`` run in ONE process with the
SAME training loop (forward, loss, backward, optimizer.step, zero_grad(set_to_none=True), and the
topology controller's before_step / after_step for sparse runs) on SYNTHETIC random tokens.
To keep ratios fair on a noisy shared machine the combinations are interleaved: by default (CPU)
all of them are alive and take their steps in turn, rotating the order every step; with
``--interleave round`` (default on CUDA) the timed steps are split into ``--rounds`` rounds
interleaved across combinations, one model alive at a time. Step times are medians; the
median of per-step paired ratios against dense is reported as well. Static memory is measured
with ``smet.sparse.memory.measure_static`` right after an optimizer step (grads present).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
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
        description="Benchmark N training steps of a model preset for every --method x --density (x --materialize) "
                    "combination in one process, with the same loop for dense and sparse, on synthetic random "
                    "tokens. Reports tokens/s (median steady step), the time of topology-update steps, amortised "
                    "tokens/s, measured static memory (weights / grads / optimizer / metadata) and, on CUDA, peak "
                    "memory. Writes JSON (--out) and prints a Markdown table.",
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
    p.add_argument("--precision", default="32", choices=PRECISIONS,
                   help="32: fp32; bf16-mixed: fp32 params + bf16 autocast; bf16-true: model cast to bf16 (default: 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, constant (default: 1e-3)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="seed of model init, masks and data (default: 0)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON records here")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="also profile 2 steps per combination with torch.profiler: DIR/<combination>.txt (top ops "
                        "by device and host time) and the per-phase times / kernel counts in the JSON records")
    return p


# ----------------------------------------------------------------------------- combinations
def combinations(args) -> list[dict[str, Any]]:
    combos = []
    if "dense" in args.method:
        combos.append({"method": "dense", "density": 1.0, "materialize": None})
    for method in args.method:
        if method == "dense":
            continue
        for d in args.density:
            for mat in args.materialize:
                combos.append({"method": method, "density": float(d), "materialize": mat})
    return combos


def _label(c: dict) -> str:
    if c["method"] == "dense":
        return "dense"
    return f"{c['method']} d={c['density']:g} {c['materialize']}"


class Run:
    """One combination: model, optimizer and topology controller, built from the seed."""

    def __init__(self, combo: dict, args, model_cfg: dict, total_steps: int):
        import torch

        from smet.models.llama import build_model
        from smet.optim import build_optimizer
        from smet.sparse import attach_sparsity, build_smet_optimizer
        from smet.sparse.memory import method_configs

        self.combo = combo
        self.device = torch.device(args.device)
        scfg, ocfg = method_configs(combo["method"], combo["density"], block_size=args.block_size,
                                    materialize=combo["materialize"] or "transient", allocation=args.allocation,
                                    update_interval=args.update_interval, lr=args.lr)
        self.sparsity_cfg, self.optimizer_cfg = scfg, ocfg
        torch.manual_seed(args.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(model_cfg)
        self.ctrl = attach_sparsity(model, scfg, total_steps=total_steps, seed=args.seed)
        if args.precision == "bf16-true":
            model.to(device=self.device, dtype=torch.bfloat16)
        else:
            model.to(self.device)
        if self.ctrl is not None:
            # the compute copy follows the compute dtype, as in the Lightning module
            self.ctrl.set_dense_dtype(torch.bfloat16 if args.precision.startswith("bf16") else torch.float32)
        model.train()
        self.model = model
        if self.ctrl is None:
            self.opt = build_optimizer(model, ocfg)
        else:
            self.opt = build_smet_optimizer(model, ocfg, self.ctrl)
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if args.precision == "bf16-mixed"
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
    return {"times": {}, "update_times": [], "round_medians": [], "static": None, "peak": None, "cfg": None,
            "loss": None, "active": None}


def _finish(run: Run, data, out: dict) -> None:
    """The measured step: static memory read after optimizer.step(), before zero_grad."""
    _, _, stat = _timed_step(run, data, measure=True)
    out["static"] = stat
    out["loss"] = run.last_loss
    out["active"] = run.ctrl.active_weights() if run.ctrl is not None else None
    out["cfg"] = (run.sparsity_cfg, run.optimizer_cfg)


def run_bench(args, model_cfg: dict, log=sys.stderr) -> list[dict[str, Any]]:
    """Run every combination; returns one record per combination.

    ``--interleave step`` (default on CPU): all combinations are alive at once and take their
    steps in turn (A B C A B C ..., order rotated every step), so a load change on a shared
    machine hits all of them alike; per-step paired ratios are reported too. ``round`` (default
    on CUDA): timed steps split into ``--rounds`` rounds interleaved across combinations, one
    model alive at a time. CUDA peak memory always comes from a pass with one model alive.
    """
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    combos = combinations(args)
    data = _batches(args, device)
    res = [_new_result() for _ in combos]
    mode = args.interleave or ("round" if device.type == "cuda" else "step")
    if mode == "step":
        total_steps = args.warmup_steps + args.steps + 2
        runs = [Run(c, args, model_cfg, total_steps) for c in combos]
        n = len(runs)
        for i in range(args.warmup_steps + args.steps):
            k = i % n
            for ci in list(range(k, n)) + list(range(k)):
                dt, update, _ = _timed_step(runs[ci], data)
                if i < args.warmup_steps:
                    continue
                if update:
                    res[ci]["update_times"].append(dt)
                else:
                    res[ci]["times"][i] = dt
            if (i + 1) % 10 == 0 or i + 1 == args.warmup_steps + args.steps:
                print(f"[smet-bench] step {i + 1}/{args.warmup_steps + args.steps}: " + ", ".join(
                    f"{_label(c)} {dt_ms(res[ci])}" for ci, c in enumerate(combos)), file=log, flush=True)
        for ci, run in enumerate(runs):
            _finish(run, data, res[ci])
        del runs
        gc.collect()
    else:
        rounds = max(1, min(args.rounds, args.steps))
        per_round = [args.steps // rounds + (1 if r < args.steps % rounds else 0) for r in range(rounds)]
        total_steps = args.warmup_steps + max(per_round) + 2  # topology updates stay inside [start, stop)
        for r in range(rounds):
            k = r % len(combos)
            for ci in list(range(k, len(combos))) + list(range(k)):
                combo, out = combos[ci], res[ci]
                run = Run(combo, args, model_cfg, total_steps)
                t_round = []
                for i in range(args.warmup_steps + per_round[r]):
                    dt, update, _ = _timed_step(run, data)
                    if i < args.warmup_steps:
                        continue
                    if update:
                        out["update_times"].append(dt)
                    else:
                        out["times"][(r, i)] = dt
                        t_round.append(dt)
                if t_round:
                    out["round_medians"].append(statistics.median(t_round))
                if r == rounds - 1:
                    _finish(run, data, out)
                print(f"[smet-bench] round {r + 1}/{rounds} {_label(combo)}: {dt_ms(out)}", file=log, flush=True)
                del run
                gc.collect()
    if device.type == "cuda":
        for ci, combo in enumerate(combos):  # one model alive: clean peak per combination
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            run = Run(combo, args, model_cfg, args.warmup_steps + 4)
            for _ in range(max(args.warmup_steps, 1) + 1):
                _timed_step(run, data)
            res[ci]["peak"] = torch.cuda.max_memory_allocated(device)
            del run
    profiles = [None] * len(combos)
    if args.profile is not None:
        for ci, combo in enumerate(combos):
            gc.collect()
            run = Run(combo, args, model_cfg, args.warmup_steps + 8)
            profiles[ci] = profile_run(run, data, args.profile, _label(combo))
            print(f"[smet-bench] profile {_label(combo)}: {profiles[ci]}", file=log, flush=True)
            del run
    tokens = args.batch * args.seq_len
    records = [_record(c, o, args, model_cfg, tokens) for c, o in zip(combos, res)]
    for rec, prof in zip(records, profiles):
        if prof is not None:
            rec["profile"] = prof
    _paired(records, res, combos)
    return records


def dt_ms(out: dict) -> str:
    t = list(out["times"].values())
    return f"{statistics.median(t) * 1e3:.1f} ms" if t else "-"


def _paired(records: list[dict], res: list[dict], combos: list[dict]) -> None:
    """Median over steps of (dense step time / this step time) for steps timed at the same index."""
    di = next((i for i, c in enumerate(combos) if c["method"] == "dense"), None)
    for ci, rec in enumerate(records):
        rec["paired_speed_ratio_vs_dense"] = None
        if di is None or ci == di:
            continue
        d, t = res[di]["times"], res[ci]["times"]
        common = sorted(set(d) & set(t))
        if common:
            rec["paired_speed_ratio_vs_dense"] = statistics.median(d[j] / t[j] for j in common)


def _record(combo: dict, o: dict, args, model_cfg: dict, tokens: int) -> dict[str, Any]:
    import torch

    from smet.sparse.memory import active_weight_count

    times, upd = list(o["times"].values()), o["update_times"]
    step_t = statistics.median(times) if times else float("nan")
    upd_t = statistics.median(upd) if upd else None
    static = o["static"]
    sp = static["sparse"]
    if combo["method"] == "dense":
        active = active_weight_count(model_cfg, {"method": "dense"}, args.vocab, args.seq_len)
    else:
        active = o["active"]
    scfg, ocfg = o["cfg"]
    return {
        "method": combo["method"], "density": combo["density"], "materialize": combo["materialize"],
        "block_size": None if combo["method"] == "dense" else args.block_size,
        "tokens_per_s": tokens / step_t if times else None,
        # robust amortisation: median steady step + the median extra cost of an update step spread over
        # the update interval (a mean over all timed steps would be dominated by load spikes)
        "tokens_per_s_amortised": (tokens / (step_t + (max(upd_t - step_t, 0.0) / args.update_interval if upd_t else 0.0))
                                   if times else None),
        "step_time_s": step_t,
        "update_step_time_s": upd_t,
        "n_timed_steps": len(times), "n_update_steps": len(upd),
        "round_median_step_time_s": o["round_medians"],
        "static_bytes": {k: static["all"][k] for k in STATIC_KEYS},
        "sparse_static_bytes": {k: sp[k] for k in STATIC_KEYS},
        "active_weights": active,
        "bytes_per_active_weight": sp["total"] / active,
        "peak_bytes": o["peak"],
        "final_loss": o["loss"],
        "config": {
            "model": model_cfg, "sparsity": scfg,
            "optimizer": {k: (list(v) if isinstance(v, tuple) else v) for k, v in ocfg.items()},
            "precision": args.precision, "device": args.device, "batch": args.batch, "seq_len": args.seq_len,
            "vocab": args.vocab, "steps": args.steps, "warmup_steps": args.warmup_steps, "rounds": args.rounds,
            "update_interval": args.update_interval, "interleave": args.interleave or ("round" if args.device == "cuda" else "step"), "seed": args.seed, "threads": torch.get_num_threads(),
            "data": "synthetic uniform random tokens", "torch": torch.__version__, "python": platform.python_version(),
        },
    }


def _mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def markdown(records: list[dict], args) -> str:
    head = ("| method | density | materialize | tokens/s | step ms | update step ms | amortised tok/s | "
            "sparse-layer static MiB | B / active weight | static total MiB | peak MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        lines.append("| {m} | {d:g} | {mat} | {tps:.0f} | {st:.1f} | {ut} | {am:.0f} | {ss} | {bpw:.2f} | {tot} | {pk} |".format(
            m=r["method"], d=r["density"], mat=r["materialize"] or "-", tps=r["tokens_per_s"] or float("nan"),
            st=r["step_time_s"] * 1e3, ut="-" if r["update_step_time_s"] is None else f"{r['update_step_time_s'] * 1e3:.1f}",
            am=r["tokens_per_s_amortised"] or float("nan"), ss=_mib(r["sparse_static_bytes"]["total"]),
            bpw=r["bytes_per_active_weight"], tot=_mib(r["static_bytes"]["total"]), pk=_mib(r["peak_bytes"])))
    return "\n".join(lines)


def ratios(records: list[dict]) -> list[str]:
    dense = next((r for r in records if r["method"] == "dense"), None)
    if dense is None or not dense["tokens_per_s"]:
        return []
    out = []
    for r in records:
        if r["method"] == "dense" or not r["tokens_per_s"]:
            continue
        paired = r.get("paired_speed_ratio_vs_dense")
        out.append(f"{r['method']}/dense tokens/s at d={r['density']:g} ({r['materialize']}): "
                   f"{r['tokens_per_s'] / dense['tokens_per_s']:.3f}x "
                   f"(amortised {r['tokens_per_s_amortised'] / dense['tokens_per_s_amortised']:.3f}x"
                   + (f", median paired per-step {paired:.3f}x" if paired else "") + ")")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    print(f"[smet-bench] model {args.model}, {args.device}, precision {args.precision}, batch {args.batch} x seq "
          f"{args.seq_len}, vocab {args.vocab}, SYNTHETIC random tokens; {args.steps} timed steps in {args.rounds} "
          f"interleaved rounds (+{args.warmup_steps} warm-up per round), update interval {args.update_interval}",
          file=sys.stderr, flush=True)
    load0 = os.getloadavg()
    records = run_bench(args, model_cfg)
    load1 = os.getloadavg()
    for r in records:
        r["config"]["loadavg_1m_start_end"] = [load0[0], load1[0]]
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(records, indent=2, default=str))
    print(f"\nsmet-bench: model {args.model} on {args.device} ({torch.get_num_threads()} threads; 1-min load average "
          f"{load0[0]:.2f} -> {load1[0]:.2f}), precision "
          f"{args.precision}, batch {args.batch} x seq {args.seq_len}, vocab {args.vocab}. Data: SYNTHETIC random tokens. "
          f"tokens/s from the median steady step; update step = a step with a topology update (every "
          f"{args.update_interval}); amortised = tokens / (median step + median update-step extra / "
          f"{args.update_interval}).\n")
    print(markdown(records, args))
    print()
    for line in ratios(records):
        print(line)
    if args.out is not None:
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
