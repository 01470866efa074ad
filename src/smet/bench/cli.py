"""``smet-bench``: command line (Hydra overrides and grids + the harness's own flags) and main."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

from smet.bench.overrides import alias_overrides, describe
from smet.cli.args import OneLineParser, check_output_file, die
from smet.errors import SmetConfigError

PROG = "smet-bench"
EPILOG = """\
overrides (KEY=VALUE, any number; commas sweep, exactly as `python train.py -m`; conf/bench.yaml):
  model=130m                      model preset (conf/model)
  sparsity=dense,smet,smet_no_reset
                                  methods and ablations (conf/sparsity; default grid: dense,smet)
  sparsity.density=0.5,0.25 sparsity.materialize=transient,persistent sparsity.block_size=4 ...
  trainer.precision=32,bf16-mixed,bf16-true   model.gradient_checkpointing=false,true
  trainer.compile=false,true      data.batch_size=8 data.seq_len=256 data.tokenizer.vocab_size=4096
  optimizer.lr=1e-3 optimizer.regrowth_warmup_steps=10 ...
Dense runs once per model / data shape / precision / compile (its sparsity.* keys do not matter);
each sparse run is compared with that dense run.

examples:
  smet-bench model=tiny sparsity=dense,smet sparsity.density=0.5,0.25 \\
      sparsity.materialize=transient,persistent --steps 30 --out bench.json
  smet-bench model=130m sparsity=dense,smet,smet_momentum_warmup trainer.precision=bf16-true \\
      data.batch_size=128 --device cuda --out a.json --md a.md
  smet-bench --from-json a.json --amortize-interval 100

old options (still accepted, each is the override shown):
  --model M -> model=M   --method A B -> sparsity=A,B   --density D.. -> sparsity.density=D,..
  --materialize M.. -> sparsity.materialize=..   --block-size B -> sparsity.block_size=B
  --allocation A -> sparsity.allocation=A   --update-interval N -> sparsity.update_interval=N
  --precision P.. -> trainer.precision=..   --activation-checkpointing off on -> model.gradient_checkpointing=false,true
  --compile off on -> trainer.compile=false,true   --batch B -> data.batch_size=B   --seq-len T -> data.seq_len=T
  --vocab V -> data.tokenizer.vocab_size=V   --lr LR -> optimizer.lr=LR   --seed S -> seed=S
"""
def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Benchmark N training steps of every point of a Hydra grid over conf/bench.yaml in one process, "
                    "with the same loop for dense and sparse, on synthetic random tokens. Reports tokens/s (median "
                    "steady step), the time of topology-update steps, amortised tokens/s, MFU (dense and active "
                    "parameter counts), measured static memory (weights / grads / optimizer / metadata) next to "
                    "the memory model's prediction and, on CUDA, peak allocated / reserved memory. A run that "
                    "runs out of memory is recorded as OOM. Writes JSON (--out) and prints a Markdown table.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides and sweeps (see below)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device (default: cpu)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per run, over all rounds (default: 20)")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps at the start of every round (default: 3)")
    p.add_argument("--interleave", choices=("step", "round"), default=None,
                   help="step: all runs alive, steps taken in turn (fairest on a noisy CPU; default on cpu); "
                        "round: timed steps split into --rounds rounds, one model alive at a time (default on cuda)")
    p.add_argument("--rounds", type=int, default=3, help="rounds for --interleave round (default: 3)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak FLOP/s (in TFLOP/s) that MFU is relative to (default: the device's dense bf16 "
                        "tensor-core peak from smet.perf, e.g. 989 for an H200 / H100 (datasheet, no sparsity); "
                        "none on CPU, so no MFU there unless given)")
    p.add_argument("--dense-last", action="store_true",
                   help="run each dense run after its sparse ones (e.g. a dense attempt expected to OOM: the sparse "
                        "runs then cannot be affected by anything it leaves behind)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="start no new run (or round) after this many seconds; runs left without a measured step "
                        "are recorded as skipped (default: no limit)")
    p.add_argument("--memory-cap", type=float, default=None, metavar="GIB",
                   help="cap the memory this process may allocate on the GPU at GIB GiB "
                        "(torch.cuda.set_per_process_memory_fraction), as on a smaller card: a run that needs more "
                        "is recorded as OOM and the next one goes on (cuda only)")
    p.add_argument("--amortize-interval", type=int, default=None, metavar="N",
                   help="spread the measured extra cost of an update step over N steps for the amortised tok/s "
                        "(default: sparsity.update_interval). Update steps are timed every sparsity.update_interval "
                        "steps so that short runs see several; N gives the training's real frequency (e.g. 100)")
    p.add_argument("--from-json", type=Path, default=None, metavar="FILE",
                   help="run nothing: re-print (and with --md re-write) the tables of records saved by --out, "
                        "re-amortised with --amortize-interval when given")
    p.add_argument("--out", type=Path, default=None, help="write the JSON records here")
    p.add_argument("--md", type=Path, default=None, help="also write the Markdown table (and ratio lines) here")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out / --md file")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="also profile 2 steps per run with torch.profiler: DIR/<run>.txt (top ops by device and "
                        "host time) and the per-phase times / kernel counts in the JSON records")
    old = p.add_argument_group("old options (aliases of the overrides above; see the end of this help)")
    old.add_argument("--seed", type=int, default=None, help="seed of model init, masks and data (seed=; default 0)")
    old.add_argument("--model", default=None, help=argparse.SUPPRESS)
    old.add_argument("--method", nargs="+", default=None, help=argparse.SUPPRESS)
    old.add_argument("--density", nargs="+", type=float, default=None, help=argparse.SUPPRESS)
    old.add_argument("--materialize", nargs="+", default=None, choices=("transient", "persistent"),
                     help=argparse.SUPPRESS)
    old.add_argument("--block-size", type=int, default=None, help=argparse.SUPPRESS)
    old.add_argument("--allocation", default=None, choices=("uniform", "erk"), help=argparse.SUPPRESS)
    old.add_argument("--update-interval", type=int, default=None, help=argparse.SUPPRESS)
    old.add_argument("--precision", nargs="+", default=None, help=argparse.SUPPRESS)
    old.add_argument("--activation-checkpointing", nargs="+", default=None, choices=("off", "on"),
                     help=argparse.SUPPRESS)
    old.add_argument("--compile", nargs="+", default=None, choices=("off", "on"), help=argparse.SUPPRESS)
    old.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    old.add_argument("--seq-len", type=int, default=None, help=argparse.SUPPRESS)
    old.add_argument("--vocab", type=int, default=None, help=argparse.SUPPRESS)
    old.add_argument("--lr", type=float, default=None, help=argparse.SUPPRESS)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """argparse, with the KEY=VALUE overrides taken out first (they may stand anywhere, also after an
    option of several values), then the old options translated (:func:`alias_overrides`)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    one_value = {s for a in parser._actions if a.nargs is None for s in a.option_strings}
    overrides, rest, prev = [], [], None
    for tok in argv:
        if prev in one_value:
            rest.append(tok)
        elif not tok.startswith("-") and ("=" in tok or tok.startswith("~")):
            overrides.append(tok)
        else:
            rest.append(tok)
        prev = tok if prev not in one_value else None
    args = parser.parse_args(rest)
    for tok in args.overrides:  # a bare word left over: not an override
        parser.fail(f"{tok}: not an override; give KEY=VALUE (e.g. model={tok}) or an option")
    try:
        args.overrides, args.alias_of = alias_overrides(args, overrides)
    except SmetConfigError as err:
        parser.fail(str(err))
    return args


def check_harness(args: argparse.Namespace) -> None:
    """The harness flags (before composing anything)."""
    for opt, v in (("--steps", args.steps), ("--rounds", args.rounds)):
        if v < 1:
            raise SmetConfigError(opt, f"must be a positive integer, got {v}")
    if args.warmup_steps < 0:
        raise SmetConfigError("--warmup-steps", f"must be >= 0, got {args.warmup_steps}")
    if args.threads is not None and args.threads < 1:
        raise SmetConfigError("--threads", f"must be a positive integer, got {args.threads}")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        raise SmetConfigError("--peak-tflops", f"must be positive, got {args.peak_tflops:g}")
    if args.time_budget is not None and not args.time_budget > 0:
        raise SmetConfigError("--time-budget", f"must be positive, got {args.time_budget:g}")
    for opt, path in (("--out", args.out), ("--md", args.md)):
        check_output_file(opt, path, args.force)


def plan_runs(args: argparse.Namespace) -> list:
    """The runs of parsed arguments; raises :class:`SmetConfigError` as one line (:func:`describe`)."""
    from smet.bench.grid import plan
    from smet.errors import SmetInputError

    check_harness(args)
    try:
        return plan(args.overrides, dense_last=args.dense_last)
    except SmetConfigError as err:
        raise SmetInputError(describe(err, args.alias_of)) from None


def prepare(argv: Sequence[str]) -> tuple[argparse.Namespace, list]:
    """``(args, runs)`` of a command line (tests, scripts): :func:`parse_args` + :func:`plan_runs`."""
    args = parse_args(argv)
    return args, plan_runs(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.amortize_interval is not None and args.amortize_interval < 1:
        return die(PROG, f"--amortize-interval: must be a positive integer, got {args.amortize_interval}")
    if args.from_json is not None:  # runs nothing: overrides and run options are not read
        from smet.bench.render import from_json

        return from_json(args.from_json, args.md, args.amortize_interval)
    try:
        runs = plan_runs(args)
        import torch

        if args.device == "cuda" and not torch.cuda.is_available():
            raise SmetConfigError("--device", "cuda requested but torch.cuda.is_available() is False")
        if args.memory_cap is not None:
            if args.device != "cuda":
                raise SmetConfigError("--memory-cap", "caps GPU memory: needs --device cuda")
            total = torch.cuda.get_device_properties(0).total_memory
            if not 0 < args.memory_cap * 2**30 <= total:
                raise SmetConfigError("--memory-cap", f"must be in (0, {total / 2**30:.1f}] GiB (this GPU), "
                                                      f"got {args.memory_cap}")
    except SmetConfigError as err:
        return die(PROG, err)
    return execute(args, runs)


def execute(args: argparse.Namespace, runs: list) -> int:
    """Run the benchmark, write --out / --md, print the table and the ratio lines."""
    import torch

    from smet.atomic import atomic_write
    from smet.bench.render import document, live_header, markdown, ratios
    from smet.bench.schedule import run_bench

    models = ", ".join(dict.fromkeys(str(r.model.get("name")) for r in runs))
    print(f"[smet-bench] model {models}, {args.device}, {shape_summary_of(runs)}, SYNTHETIC random tokens; "
          f"{args.steps} timed steps in {args.rounds} interleaved rounds (+{args.warmup_steps} warm-up per round), "
          f"update interval {', '.join(dict.fromkeys(str(r.update_interval) for r in runs if not r.is_dense)) or '-'}"
          f"; {len(runs)} runs: {', '.join(r.label for r in runs)}", file=sys.stderr, flush=True)
    cap = None
    if args.memory_cap is not None:
        cap = int(args.memory_cap * 2**30)
        torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.get_device_properties(0).total_memory, 0)
        print(f"[smet-bench] memory cap {args.memory_cap:g} GiB ({cap} bytes) for this process", file=sys.stderr,
              flush=True)
    load0, t0 = os.getloadavg(), time.perf_counter()
    records = run_bench(runs, args)
    wall, load1 = time.perf_counter() - t0, os.getloadavg()
    dev_name = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or platform.machine()
    for r, run in zip(records, runs):
        r["config"].update({"loadavg_1m_start_end": [load0[0], load1[0]], "device_name": dev_name,
                            "model_preset": run.model.get("name"), "bench_wall_s": round(wall, 1),
                            "memory_cap_bytes": cap})
    header = live_header(records, args, device_name=dev_name, threads=torch.get_num_threads(),
                         load=(load0[0], load1[0]), wall=wall)
    if args.out is not None:
        import json

        text = json.dumps(records, indent=2, default=str)
        atomic_write(args.out, lambda f: f.write(text.encode()))
    if args.md is not None:
        md = document(header, records)
        atomic_write(args.md, lambda f: f.write(md.encode()))
    print("\n" + header + "\n")
    print(markdown(records))
    print()
    for line in ratios(records):
        print(line)
    if args.out is not None:
        print(f"\nwrote {args.out}" + (f" and {args.md}" if args.md is not None else ""))
    return 0


def shape_summary_of(runs: list) -> str:
    def join(f):
        return ", ".join(dict.fromkeys(str(f(r)) for r in runs))

    return (f"precision {join(lambda r: r.precision)}, batch {join(lambda r: r.batch)} x seq "
            f"{join(lambda r: r.seq_len)}, vocab {join(lambda r: r.vocab)}")


if __name__ == "__main__":
    sys.exit(main())
