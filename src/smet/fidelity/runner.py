"""``run`` starts ``python train.py <point> hydra.run.dir=OUT_DIR/<name>`` processes, ``--parallel`` at
a time (one GPU shared), logs each to ``OUT_DIR/logs/<name>.log`` and records every run's fate in
``OUT_DIR/runs.json``. ``--budget-s`` bounds the whole phase: a run is not started when the runs
that finished so far say it cannot end before the budget (or, before any has finished, once the
budget is over), and runs still alive at the budget are stopped (SIGTERM, then SIGKILL) and kept
as *incomplete* (smet-compare reads their metrics.csv). Skipped and stopped runs are listed.
"""

from __future__ import annotations


import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from smet.fidelity.plan import PlannedRun


def summary_status(run_dir: Path) -> str | None:
    """``status`` of a run's summary.json (ok | interrupted | nonfinite | failed), None without one."""
    try:
        return str(json.loads((run_dir / "summary.json").read_text()).get("status", "ok"))
    except (OSError, ValueError):
        return None


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
            done = summary_status(out / r.name)
            r.status = "ok" if rc == 0 and done == "ok" else ("stopped" if done == "interrupted" else "failed")
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
                done = summary_status(out / r.name)
                if done == "ok":  # training and its summary were done: teardown
                    r.status = "ok"
                    r.note = f"finished (summary.json written); stopped during teardown at the {budget_s:.0f} s budget"
                    finished_walls.append(r.wall_s)
                else:  # no summary yet, or the interrupt handler's (status: interrupted, steps short)
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
