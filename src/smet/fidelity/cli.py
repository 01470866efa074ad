"""The fidelity study (issue 7): plan, run, summarise and publish many runs of a few experiment grids.

    smet-fidelity plan    [--experiments E1,E2,..] [OVERRIDE ...]
    smet-fidelity run     OUT_DIR [--parallel N] [--budget-s S] [--python PY]
                          [--experiments ...] [OVERRIDE ...]
    smet-fidelity summary OUT_DIR            # compact table of the runs under OUT_DIR
    smet-fidelity pack    OUT_DIR TARBALL    # report + per-run metrics/config/summary, no checkpoints
    smet-fidelity publish TARBALL DEST [--recompare [--title T]]   # the committed files (docs/results/)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from smet.cli.args import OneLineParser, die
from smet.fidelity import FidelityError
from smet.fidelity import plan as plan_mod
from smet.fidelity import runner as runner_mod
from smet.fidelity.env import environment
from smet.fidelity.plan import EXPERIMENTS, plan, prepare_data
from smet.fidelity.publish import pack, publish
from smet.fidelity.runner import run_all
from smet.fidelity.summary import summary_rows, summary_table

PROG = "smet-fidelity"
HELP = "\n".join([__doc__, plan_mod.__doc__, runner_mod.__doc__])


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=HELP)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("plan", "run"):
        s = sub.add_parser(name)
        if name == "run":
            s.add_argument("out", type=Path)
            s.add_argument("--parallel", type=int, default=8)
            s.add_argument("--budget-s", type=float, default=None, help="wall-time budget of the run phase")
            s.add_argument("--python", default=sys.executable)
        s.add_argument("--experiments", default=",".join(EXPERIMENTS))
        s.add_argument("overrides", nargs="*", metavar="OVERRIDE")
    s = sub.add_parser("prepare", help="build the tokenizer and token cache of the grid's data once")
    s.add_argument("--experiments", default=",".join(EXPERIMENTS))
    s.add_argument("overrides", nargs="*", metavar="OVERRIDE")
    s = sub.add_parser("summary")
    s.add_argument("out", type=Path)
    s.add_argument("--json", type=Path, help="also write the rows as JSON here")
    s = sub.add_parser("env")
    s.add_argument("--json", type=Path)
    s = sub.add_parser("pack")
    s.add_argument("out", type=Path)
    s.add_argument("tarball", type=Path)
    s.add_argument("--report", type=Path)
    s = sub.add_parser("publish")
    s.add_argument("tarball", type=Path)
    s.add_argument("dest", type=Path)
    s.add_argument("--recompare", action="store_true",
                   help="make the report files with this checkout's smet-compare over the tarball's runs "
                        "instead of copying the report packed with them")
    s.add_argument("--title", default=None, help="report title with --recompare (default: the packed report's)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd in ("plan", "run"):
            exps = [e.strip() for e in args.experiments.split(",") if e.strip()]
            runs = plan(exps, args.overrides)
            if args.cmd == "plan":
                for r in runs:
                    dup = f"   (also: {'; '.join(r.duplicates)})" if r.duplicates else ""
                    print(f"{r.name}\t{r.train_command()}{dup}")
                return 0
            if args.parallel < 1:
                raise FidelityError("--parallel", f"must be >= 1, got {args.parallel}")
            repo = Path(__file__).resolve().parents[3]
            print(f"{PROG}: {len(runs)} runs, {args.parallel} at a time"
                  + (f", budget {args.budget_s:.0f} s" if args.budget_s else "") + f" -> {args.out}", flush=True)
            run_all(runs, args.out, parallel=args.parallel, budget_s=args.budget_s, python=args.python, repo=repo,
                    log=lambda m: print(m, flush=True))
            bad = [r for r in runs if r.status != "ok"]
            for r in bad:
                print(f"{PROG}: {r.status}: {r.name} {r.note}".rstrip(), flush=True)
            return 0
        if args.cmd == "prepare":
            exps = [e.strip() for e in args.experiments.split(",") if e.strip()]
            for line in prepare_data(exps, args.overrides):
                print(line, flush=True)
            return 0
        if args.cmd == "summary":
            rows = summary_rows(args.out)
            print(summary_table(rows))
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1, default=str) + "\n")
            return 0
        if args.cmd == "env":
            info = environment()
            text = json.dumps(info, indent=1)
            if args.json:
                args.json.write_text(text + "\n")
            print(text)
            return 0
        if args.cmd == "pack":
            names = pack(args.out, args.tarball, args.report)
            print(f"{PROG}: {len(names)} files -> {args.tarball} ({args.tarball.stat().st_size / 2**20:.2f} MiB)")
            return 0
        if args.cmd == "publish":
            written = publish(args.tarball, args.dest, recompare=args.recompare, title=args.title)
            for w in written:
                print(f"  {w} ({w.stat().st_size / 1024:.1f} KiB)")
            return 0
    except FidelityError as e:
        return die(PROG, e)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
