"""End of a Hydra multirun: one table of its points and the command to compare them.

Configured in ``conf/train.yaml`` (``hydra.callbacks.sweep_summary``). Reads every job directory of
the sweep (``<sweep dir>/<n>/.hydra/overrides.yaml`` + ``summary.json``)::

    Sweep multirun/2025-01-01/12-00-00: 2 jobs, 2 ok
      job  W   run                       steps  val ppl  status
      0    10  tiny-smet-d0.25-W10-s1234    30   401.23  ok
      1    20  tiny-smet-d0.25-W20-s1234     -        -  failed
    next: smet-compare multirun/2025-01-01/12-00-00 --out multirun/2025-01-01/12-00-00/report

Status: ``ok`` (summary.json with a result), its ``status`` field (``failed``, ``interrupted``), or
``missing`` (the job started but wrote no summary.json). The table is also written to
``<sweep dir>/sweep_summary.txt``; when a job did not finish the multirun exits with code 1.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from smet.run_naming import ALIASES, _key, sweep_keys, swept_values


def _job_dirs(sweep_dir: Path) -> list[Path]:
    dirs = [p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")]
    dirs = [d for d in dirs if d != sweep_dir]

    def order(d: Path):
        rel = d.relative_to(sweep_dir).as_posix()
        return (0, int(rel), rel) if rel.isdigit() else (1, 0, rel)

    return sorted(set(dirs), key=order)


def collect(sweep_dir: Path, sweep_overrides: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """(swept keys, one row per job: job, values, run_name, steps, val_ppl, status)."""
    jobs = _job_dirs(sweep_dir)
    per_job = {d: [str(x) for x in OmegaConf.load(d / ".hydra" / "overrides.yaml")] for d in jobs}
    keys = sweep_keys(sweep_overrides)
    if not keys and len(jobs) > 1:  # no sweep definition found: the keys whose values differ
        seen: dict[str, set] = {}
        for ovs in per_job.values():
            for o in ovs:
                k, _, v = o.partition("=")
                seen.setdefault(_key(k), set()).add(v)
        keys = [k for k, vs in seen.items() if len(vs) > 1]
    rows = []
    for d in jobs:
        values = dict(swept_values(keys, per_job[d]))
        s: dict = {}
        sp = d / "summary.json"
        if sp.is_file():
            try:
                s = json.loads(sp.read_text())
            except ValueError:
                s = {"status": "failed"}
        status = s.get("status") or ("ok" if s else "missing")
        rows.append({"job": d.relative_to(sweep_dir).as_posix(), "values": values, "run_name": s.get("run_name"),
                     "steps": s.get("steps"), "val_ppl": s.get("val_ppl"), "status": status,
                     "error": s.get("error")})
    return keys, rows


def render(sweep_dir: Path, keys: list[str], rows: list[dict]) -> str:
    def ppl(v) -> str:
        return f"{v:.2f}" if isinstance(v, (int, float)) and math.isfinite(v) else ("-" if v is None else str(v))

    head = ["job"] + [ALIASES.get(k) or k for k in keys] + ["run", "steps", "val ppl", "status"]
    body = [[r["job"]] + [r["values"].get(k, "-") for k in keys]
            + [r["run_name"] or "-", "-" if r["steps"] is None else str(r["steps"]), ppl(r["val_ppl"]), r["status"]]
            for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    right = {len(head) - 3, len(head) - 2}  # steps, val ppl

    def line(cells) -> str:
        return "  " + "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                                for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    n_ok = sum(r["status"] == "ok" for r in rows)
    out = [f"Sweep {sweep_dir}: {len(rows)} jobs, {n_ok} ok", line(head), *map(line, body)]
    for r in rows:
        if r["status"] != "ok" and r.get("error"):
            out.append(f"  job {r['job']}: {str(r['error']).splitlines()[-1][:300]}")
    sd = shlex.quote(str(sweep_dir))
    out.append(f"next: smet-compare {sd} --out {shlex.quote(str(sweep_dir / 'report'))}")
    return "\n".join(out)


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            sources = [str(x) for x in (OmegaConf.select(config, "hydra.overrides.task") or [])]
            params = OmegaConf.select(config, "hydra.sweeper.params") or {}
            sources += [f"{k}={v}" for k, v in params.items()]
            keys, rows = collect(sweep_dir, sources)
            text = render(sweep_dir, keys, rows)
        except Exception as err:  # never hide the sweep's own result behind a report error
            print(f"smet: could not summarise the sweep: {err}", file=sys.stderr, flush=True)
            return
        print("\n" + text, flush=True)
        try:
            (sweep_dir / "sweep_summary.txt").write_text(text + "\n")
        except OSError:
            pass
        bad = [r for r in rows if r["status"] != "ok"]
        if bad:
            print(f"smet: error: {len(bad)} of {len(rows)} sweep jobs did not finish "
                  f"({', '.join(r['job'] + ' ' + r['status'] for r in bad)})", file=sys.stderr, flush=True)
            sys.exit(1)
