"""``pack``: the results of a run phase (report, state, logs, per-run metrics/config/summary, no
checkpoints) as one tarball; ``publish``: the small files committed under docs/results/ from one."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import sys
import tarfile
from pathlib import Path

from smet.fidelity import FidelityError
from smet.fidelity.summary import summary_rows_from_state, summary_table

CURVE_METRICS = ("train/loss", "train/lr", "val/loss", "val/ppl", "sparsity/update", "sparsity/spike",
                 "sparsity/update_ratio_regrown", "sparsity/update_ratio_mature", "perf/tokens_per_s")
PACK_RUN_FILES = ("metrics.csv", "summary.json", "config.yaml", ".hydra/overrides.yaml")


def pack(out: Path, tarball: Path, report: Path | None = None) -> list[str]:
    """tar.gz of the report dir, runs.json, env.json, summary.md, logs and, per run, PACK_RUN_FILES
    (no checkpoints). Returns the member names."""
    from smet.report.runs import discover_runs

    members: list[tuple[Path, str]] = []
    for f in ("runs.json", "env.json", "summary.md", "fidelity.log"):
        if (out / f).is_file():
            members.append((out / f, f))
    report = report if report is not None else out / "report"
    if report.is_dir():
        members += [(p, f"report/{p.name}") for p in sorted(report.iterdir()) if p.is_file()]
    if (out / "logs").is_dir():
        members += [(p, f"logs/{p.name}") for p in sorted((out / "logs").iterdir()) if p.is_file()]
    for d in discover_runs(out):
        rel = d.relative_to(out).as_posix()
        for f in PACK_RUN_FILES:
            if (d / f).is_file():
                members.append((d / f, f"runs/{rel}/{f}"))
    tarball.parent.mkdir(parents=True, exist_ok=True)
    tmp = tarball.with_name(tarball.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tf:
        for path, arc in members:
            tf.add(str(path), arcname=f"fidelity/{arc}", recursive=False)
    os.replace(tmp, tarball)
    return [a for _, a in members]


def _curves_csv(runs_dir: Path) -> tuple[str, list[dict]]:
    """Per-step curves of every run (CURVE_METRICS only) as one CSV text, and per-update rows
    (plain spike, paired spike vs the static run of the same seed, update ratios)."""
    from smet.report.paired import attach_pairs
    from smet.report.runs import discover_runs, load_run_dir

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run", "step", *CURVE_METRICS])
    updates: list[dict] = []
    loaded = [(d, load_run_dir(d)) for d in discover_runs(runs_dir)]
    attach_pairs([r for _, r in loaded])
    for d, run in loaded:
        name = d.relative_to(runs_dir).as_posix()
        series = {m: dict(zip(*(a.tolist() for a in run.series(m)))) for m in CURVE_METRICS}
        steps = sorted({s for m in CURVE_METRICS for s in series[m]})
        for s in steps:
            cells = []
            for m in CURVE_METRICS:
                v = series[m].get(s)
                cells.append("" if v is None else f"{v:.6g}")
            w.writerow([name, s + 1, *cells])  # optimizer step (Lightning row index + 1)
        spikes = run.spikes_by_update()
        reg = dict(zip(*(a.tolist() for a in run.series("sparsity/update_ratio_regrown"))))
        mat = dict(zip(*(a.tolist() for a in run.series("sparsity/update_ratio_mature"))))
        paired = run.paired_spikes or {}
        for u in run.update_steps:  # the ratio is logged at the first step after the update
            updates.append({"run": name, "update_step": u, "spike": spikes.get(u), "paired_spike": paired.get(u),
                            "ratio_regrown": reg.get(u), "ratio_mature": mat.get(u)})
    return buf.getvalue(), updates


def _recompare(root: Path, tarball: Path, title: str | None) -> Path:
    """Re-run smet-compare (this checkout's) over the tarball's runs into ``root/report-new``; run
    sources are named by their path inside the tarball (``runs/<name>``), not the temporary one."""
    from smet.cli.compare import load_local, make_report
    from smet.report.runs import ReportError

    runs_dir = root / "runs"
    if not runs_dir.is_dir():
        raise FidelityError(str(tarball), "no runs/ inside, nothing to compare")
    warnings: list[str] = []
    try:
        runs = load_local([runs_dir], warnings)
    except ReportError as err:
        raise FidelityError(str(tarball), str(err)) from None
    for r in runs:
        r.source = "runs/" + Path(r.source).relative_to(runs_dir).as_posix()
    if title is None:
        old = root / "report" / "report.md"
        first = old.read_text().splitlines()[0] if old.is_file() else ""
        title = first[2:].strip() if first.startswith("# ") else "Fidelity runs"
    out = root / "report-new"
    out.mkdir()
    make_report(runs, out, title=title, group_by=None, inputs=[f"{tarball.name}: runs/"], warnings=warnings)
    return out


def publish(tarball: Path, dest: Path, *, recompare: bool = False, title: str | None = None) -> list[Path]:
    """Unpack a fidelity tarball into the small files committed under ``dest`` (docs/results/).

    ``recompare``: the report files (summary, figures, report.md) come from this checkout's
    smet-compare run over the tarball's runs (e.g. with metrics added since the runs), titled
    ``title`` (default: the packed report's title), instead of the report packed on the GPU."""
    import tempfile

    from smet.cli.compare import REPORT_FILES

    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(tarball, "r:gz") as tf:
            tf.extractall(tmp, filter="data") if sys.version_info >= (3, 12) else tf.extractall(tmp)  # noqa: S202
        root = Path(tmp) / "fidelity"
        if not root.is_dir():
            raise FidelityError(str(tarball), "not a fidelity tarball (no fidelity/ inside)")
        report = _recompare(root, tarball, title) if recompare else root / "report"
        for name in REPORT_FILES:  # figures of an earlier publish that this report lacks must not survive
            if (dest / name).is_file():
                (dest / name).unlink()
        for p in sorted(report.glob("*")):
            if p.suffix in (".png", ".csv", ".md") and p.name != "report.html":
                (dest / p.name).write_bytes(p.read_bytes())
                written.append(dest / p.name)
        for f in ("runs.json", "env.json"):
            if (root / f).is_file():
                (dest / f).write_bytes((root / f).read_bytes())
                written.append(dest / f)
        runs_dir = root / "runs"
        if runs_dir.is_dir():
            summaries = {}
            for sp in sorted(runs_dir.glob("*/summary.json")):
                s = json.loads(sp.read_text())
                summaries[sp.parent.name] = {k: v for k, v in s.items()
                                             if k not in ("run_dir", "metrics_csv", "checkpoint_dir", "wandb_dir")}
            (dest / "run_summaries.json").write_text(json.dumps(summaries, indent=1, sort_keys=True) + "\n")
            written.append(dest / "run_summaries.json")
            curves, updates = _curves_csv(runs_dir)
            with gzip.open(dest / "curves.csv.gz", "wt", compresslevel=9) as f:  # mtime in the header: fine
                f.write(curves)
            written.append(dest / "curves.csv.gz")
            with open(dest / "updates.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["run", "update_step", "spike", "paired_spike", "ratio_regrown",
                                                  "ratio_mature"])
                w.writeheader()
                for u in updates:
                    w.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v))
                                for k, v in u.items()})
            written.append(dest / "updates.csv")
            rows = summary_rows_from_state(root)
            (dest / "runs_table.md").write_text(summary_table(rows) + "\n")
            written.append(dest / "runs_table.md")
    return written
