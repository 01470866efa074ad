"""``smet-compare``: one comparison report over many training runs (local directories and/or W&B).

Reads each run's ``config.yaml``, ``metrics.csv`` (repeated steps after a resume: the last row
wins) and ``summary.json`` (optional: running, interrupted and crashed runs are reported from their
metrics), groups runs with the same config except the seed, and writes into ``--out``:
``summary.csv``, ``summary.md``, ``runs.csv``, the PNG figures, ``report.md`` and a
self-contained ``report.html``. Offline and fast: no torch import, seconds for tens of runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from smet.cli.args import OneLineParser, die

REPORT_FILES = ("summary.csv", "summary.md", "runs.csv", "report.md", "report.html", "loss_curves.png",
                "curves_vs_tokens.png", "spike_by_method.png", "paired_spike_by_method.png", "update_ratio.png", "coldstart_vs_smet.png", "coldstart.csv")
REPORT_GLOBS = ("ppl_vs_*.png",)  # one per swept key


def _fill(text: str) -> str:
    import textwrap

    return textwrap.fill(text, width=100)


def build_parser() -> argparse.ArgumentParser:
    from smet.report.table import DEFAULT_GROUP_BY, KEYS

    p = OneLineParser(
        usage_on_error=True,
        prog="smet-compare",
        description=_fill("Compare training runs: a summary table (one row per group of runs with the same config "
                    "except the seed: final/best validation perplexity mean ± std over seeds, tokens/s, static "
                    "memory, loss spike after topology updates (plain, and paired with the static run of the same seed), regrown vs mature update size), figures (training "
                    "loss with the topology updates and a zoom on one, perplexity vs density, spike per method, "
                    "update ratio) and a report (report.md + self-contained report.html). Fully offline unless "
                    "--wandb is given."),
        epilog=_fill("PATH is a run directory (holds config.yaml and metrics.csv, as written by train.py) or any "
                     "directory above run directories (searched recursively), e.g. outputs/ or multirun/DATE/TIME. "
                     "Status: finished (summary.json), running (no summary, metrics.csv written in the last 15 "
                     "min) or crashed (no summary, stale metrics); unfinished runs are included from their "
                     "metrics.csv; rows repeated after a resume count once (the last one); identical runs (same "
                     "config and seed, other directory / run name) count once.") + "\n\n" +
               _fill("group-by keys (comma separated): " + ", ".join(KEYS) + ", or any dotted config key (e.g. "
                     "optimizer.lr,sparsity.drop_fraction). Default (auto): " + ",".join(DEFAULT_GROUP_BY) +
                     " plus every other config key that still differs between runs of a group, so a group is "
                     "'the same config except the seed'.") + "\n\n"
               "outputs in --out: summary.csv, summary.md, runs.csv, loss_curves.png, curves_vs_tokens.png\n"
               "(train loss and val ppl over tokens, minus the --baseline group), ppl_vs_KEY.png (final val ppl,\n"
               "loss spike and update ratio vs each swept key: W, lr, lr_scaling, density, method, ...),\n"
               "spike_by_method.png, paired_spike_by_method.png (sparse runs with a static run of the same\n"
               "seed, model, density, data, LR and steps), update_ratio.png (each skipped, with a note, when\n"
               "no run has the data),\n"
               "report.md, report.html (self-contained).\n\n"
               "examples:\n"
               "  smet-compare multirun/2025-01-31/12-00-00 --out reports/method_compare\n"
               "  smet-compare outputs/ multirun/ --out reports/all --title 'All runs' --force\n"
               "  smet-compare multirun/ --out reports/by_method --group-by method,density\n"
               "  WANDB_MODE=online smet-compare --wandb my-team/smet --wandb-group method_compare --out reports/wb\n"
               "  smet-compare --wandb my-team/smet --wandb-filter sparsity.method=smet --wandb-filter tag=W=100 "
               "--out r",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                   help="run directories or directories containing run directories")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="report directory (created; an existing non-empty one is refused unless --force)")
    p.add_argument("--force", action="store_true",
                   help="write into an existing non-empty --out, replacing the report files there")
    p.add_argument("--title", default="SMET run comparison", help="report title (default: %(default)r)")
    p.add_argument("--group-by", default=None, metavar="KEYS",
                   help="comma-separated keys that define a group (default: auto, see below)")
    p.add_argument("--baseline", default=None, metavar="RUN",
                   help="the curves' difference-to-baseline panel subtracts this group: a group label as in the "
                        "table/legend (e.g. 'smet W=0'), or a run name / directory (default: the first dense "
                        "group, else the first group)")
    w = p.add_argument_group("Weights & Biases (online only)")
    w.add_argument("--wandb", metavar="ENTITY/PROJECT",
                   help="also read runs from this W&B project via wandb.Api() (config, history, summary); fails "
                        "within seconds when offline (WANDB_MODE=offline, no API key, or no network)")
    w.add_argument("--wandb-group", metavar="G", help="only W&B runs of this group (e.g. the experiment name)")
    w.add_argument("--wandb-filter", action="append", default=[], metavar="FILTER",
                   help="KEY=VALUE matched against tag / state / name / group or a dotted config key "
                        "(e.g. sparsity.method=smet, tag=density=0.25); or a JSON object passed to W&B as a "
                        "server-side filter; repeatable (all must match)")
    return p


def _check_out(out: Path, force: bool) -> None:
    """Refuse a file, or a non-empty directory without --force (before any reading)."""
    from smet.report.runs import ReportError

    if out.exists() and not out.is_dir():
        raise ReportError(str(out), "exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ReportError(str(out), "exists and is not empty; refusing to overwrite a report "
                                    "(pass --force, or choose another --out)")


def _prepare_out(out: Path) -> None:
    if out.is_dir():
        stale = [out / name for name in REPORT_FILES] + [f for g in REPORT_GLOBS for f in out.glob(g)]
        for f in stale:  # stale figures of an earlier report must not survive
            if f.is_file():
                f.unlink()
    out.mkdir(parents=True, exist_ok=True)


def load_local(paths: Sequence[Path], warnings: list[str]) -> list:
    from smet.report.runs import ReportError, discover_runs, load_run_dir

    runs, seen = [], set()
    for p in paths:
        if not p.exists():
            raise ReportError(str(p), "no such file or directory")
        if not p.is_dir():
            raise ReportError(str(p), "not a directory (give a run directory or a directory containing runs)")
        dirs = discover_runs(p)
        if not dirs:
            raise ReportError(str(p), "no runs found (no directory below it holds both config.yaml and metrics.csv)")
        for d in dirs:
            key = d.resolve()
            if key in seen:
                continue
            seen.add(key)
            try:
                runs.append(load_run_dir(d))
            except (ReportError, OSError, UnicodeDecodeError) as err:
                warnings.append(f"skipped `{d}`: {err}")
    return runs


def find_baseline(groups: Sequence, spec: str | None) -> int | None:
    """Index of the baseline group: ``spec`` matches a group label, or a run's name, directory
    (or its last part) or W&B path; default: the first dense group, else the first group."""
    from smet.report.runs import ReportError

    if not groups:
        return None
    if spec is None:
        return next((i for i, g in enumerate(groups) if g.is_dense), 0)
    s = spec.strip()
    for i, g in enumerate(groups):
        if g.label == s:
            return i
    for i, g in enumerate(groups):
        for r in list(g.runs) + [d for d, _ in g.duplicates]:
            src = r.source.rstrip("/")
            if s in (r.name, src, Path(src).name) or (Path(s).exists() and Path(s).resolve() == Path(src).resolve()):
                return i
    raise ReportError("--baseline", f"{spec!r} is neither a group ({', '.join(repr(g.label) for g in groups)}) "
                                    "nor a run name / directory of the compared runs")


def make_report(runs: list, out: Path, *, title: str, group_by: Sequence[str] | None, inputs: Sequence[str],
                warnings: Sequence[str] = (), baseline: str | None = None) -> dict:
    """Write the whole report for ``runs`` into ``out`` (exists); returns what was written."""
    from smet.report import plots, render, table

    groups = table.group_runs(runs, group_by)
    base = find_baseline(groups, baseline)
    table.write_summary_csv(groups, out / "summary.csv")
    table.write_runs_csv(groups, out / "runs.csv")
    from smet.report import coldstart

    all_runs = [r for g in groups for r in g.runs]
    cold = coldstart.pairs(all_runs)
    coldstart.write_csv(all_runs, out / "coldstart.csv", cold)
    md_table = table.markdown_table(groups)
    (out / "summary.md").write_text(f"# {title}\n\n{md_table}\n")
    images, skipped = [], {}
    for fname, caption, fn in plots.figures(groups, base):
        why = fn(out / fname)
        if why is None:
            images.append((fname, caption))
        else:
            skipped[fname] = why
    axes = plots.sweep_axes(groups)
    info = {"baseline": groups[base].label if base is not None and len(groups) > 1 else None,
            "axes": axes, "varying": table.varying_keys([r for g in groups for r in g.runs])}
    if len(axes) > plots.MAX_AXES:
        info["axes_dropped"] = [a for a, _ in axes[plots.MAX_AXES:]]
    kw = dict(title=title, groups=groups, images=images, skipped=skipped, inputs=inputs, warnings=warnings,
              info=info, sections=coldstart.markdown(all_runs, cold))
    render.write_markdown(out / "report.md", **kw)
    render.write_html(out / "report.html", **kw)
    return {"groups": groups, "images": images, "skipped": skipped, "table": md_table, "baseline": base}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from smet.errors import SmetConfigError
    from smet.report.runs import ReportError

    t0 = time.perf_counter()
    try:
        if not args.paths and not args.wandb:
            raise ReportError("PATH", "give at least one run directory (or --wandb ENTITY/PROJECT)")
        if (args.wandb_group or args.wandb_filter) and not args.wandb:
            raise ReportError("--wandb-group/--wandb-filter", "need --wandb ENTITY/PROJECT")
        group_by = None
        if args.group_by and args.group_by.strip().lower() != "auto":
            group_by = [k for k in args.group_by.split(",") if k.strip()]
            if not group_by:
                raise ReportError("--group-by", f"no keys in {args.group_by!r}")
        _check_out(args.out, args.force)
        warnings: list[str] = []
        runs = load_local(args.paths, warnings)
        inputs = [str(p) for p in args.paths]
        if args.wandb:
            from smet.report.wandb_source import fetch_runs

            runs += fetch_runs(args.wandb, group=args.wandb_group, filters=args.wandb_filter)
            inputs.append(f"wandb:{args.wandb}" + (f" (group {args.wandb_group})" if args.wandb_group else ""))
        if not runs:
            raise ReportError(", ".join(inputs) or "PATH", "no readable runs")
        _prepare_out(args.out)
        res = make_report(runs, args.out, title=args.title, group_by=group_by, inputs=inputs, warnings=warnings,
                          baseline=args.baseline)
    except SmetConfigError as err:  # ReportError is one
        return die("smet-compare", err)
    for w in warnings:
        print(f"smet-compare: warning: {w}", file=sys.stderr)
    groups = res["groups"]
    sts = [r.status() for g in groups for r in g.runs]
    n_dup = sum(len(g.duplicates) for g in groups)
    st_note = ", ".join(f"{sts.count(s)} {s}" for s in ("running", "interrupted", "crashed") if sts.count(s))
    if n_dup:
        st_note += (", " if st_note else "") + f"{n_dup} duplicate{'s' if n_dup > 1 else ''} not counted"
    print(res["table"])
    print()
    for name, why in res["skipped"].items():
        print(f"  skipped {name}: {why}")
    out = args.out
    print(f"smet-compare: {sum(len(g.runs) for g in groups)} run(s)"
          + (f" ({st_note})" if st_note else "")
          + f" in {len(groups)} group(s) -> {out / 'report.md'} and {out / 'report.html'}"
          f" (+ summary.csv, runs.csv, {len(res['images'])} PNG) in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
