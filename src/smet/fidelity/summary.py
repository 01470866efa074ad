"""``summary``: one row per run under OUT_DIR (status from runs.json, metrics from the run dirs) and
their compact markdown table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence


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


def summary_rows_from_state(root: Path) -> list[dict[str, Any]]:
    """summary_rows over an unpacked tarball (runs under runs/, state in runs.json)."""
    runs_dir = root / "runs"
    if (root / "runs.json").is_file():
        (runs_dir / "runs.json").write_bytes((root / "runs.json").read_bytes())
    return summary_rows(runs_dir)
