"""The run structure every report is built from, and the two ways to get one.

A :class:`Run` holds the resolved config (nested dict), the metrics as one de-duplicated,
step-sorted series per metric, the end-of-run summary (``None`` when the run never wrote one) and
where it came from. Steps are kept in the logger's coordinates (``step`` column of metrics.csv,
Lightning's 0-based batch index; W&B: ``trainer/global_step``); :meth:`Run.opt_step` converts them
to optimizer steps (batch index + 1), so a topology update at optimizer step ``s`` (logged at row
``s - 1``) sits at ``s`` and the last row of a 400-step run at 400.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from smet.errors import SmetConfigError

MIB = float(2**20)
SPARSE_OPT_KEYS = ("regrowth_warmup_steps", "lr_scaling", "lr_scaling_scope", "reset_local_step", "reset_moments",
                   "warmup_shape")
SKIP_DIRS = {"checkpoints", "wandb", ".hydra", "__pycache__", ".git", "lightning_logs"}
# a run without summary.json whose metrics.csv / train.log changed less than this long ago is still
# running (CSVLogger flushes every 100 steps, validation every val_every_n_steps); older: crashed
RUNNING_WITHIN_S = 900.0
STATUSES = ("finished", "running", "interrupted", "crashed")


class ReportError(SmetConfigError):
    """Bad input (path, option, W&B access): printed as one line, exit code 2. ``key`` (= ``where``)
    names the path or option."""

    def __init__(self, where: str, message: str):
        self.where = where
        super().__init__(where, message)


Series = tuple[np.ndarray, np.ndarray]  # (steps int64, values float64), sorted by step, unique steps


@dataclass
class Run:
    name: str
    source: str                      # run directory, or W&B path / URL
    config: dict[str, Any]
    metrics: dict[str, Series] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    complete: bool = True            # wrote its end-of-run summary
    overrides: list[str] | None = None   # .hydra/overrides.yaml
    kind: str = "dir"                # dir | wandb
    last_write: float | None = None  # newest mtime of metrics.csv / train.log (run directories)
    state: str | None = None         # W&B run state (finished, running, crashed, failed, killed)
    duplicates_dropped: int = 0      # repeated (step, metric) cells dropped (resumed runs)
    # set by smet.report.paired.attach_pairs: the static run of the same seed/model/density/data and
    # the paired spike per update (None: no partner, or a dense/static run)
    paired_with: "Run | None" = field(default=None, repr=False, compare=False)
    paired_spikes: dict[int, float] | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ config facts
    def cfg(self, dotted: str, default: Any = None) -> Any:
        return cfg_get(self.config, dotted, default)

    @property
    def method(self) -> str:
        m = self.cfg("sparsity.method") or (self.summary or {}).get("method") or "dense"
        return str(m)

    @property
    def is_dense(self) -> bool:
        return self.method == "dense"

    @property
    def seed(self) -> Any:
        return self.cfg("seed")

    def status(self, now: float | None = None, running_within: float = RUNNING_WITHIN_S) -> str:
        """``finished`` (summary.json written; its ``status`` field wins when present), ``running``
        (no summary, metrics written within ``running_within`` s; W&B state running), ``interrupted``
        (summary.json ``status: interrupted``: stopped by a signal, resumable) or ``crashed``
        (no summary and stale metrics: died, killed or interrupted; W&B crashed/failed/killed)."""
        st = (self.summary or {}).get("status") if self.summary is not None else None
        if isinstance(st, str) and st.strip():
            st = st.strip().lower()
            if st in ("finished", "complete", "completed", "ok", "done"):
                return "finished"
            return st if st in ("running", "interrupted", "nonfinite", "failed") else "crashed"
        if self.kind == "wandb" and self.state:
            st = self.state.lower()
            if st == "running":
                return "running"
            if st != "finished":
                return "crashed"
        if self.complete:
            return "finished"
        if self.last_write is not None:
            age = (time.time() if now is None else now) - self.last_write
            return "running" if age <= running_within else "crashed"
        return "crashed"

    @property
    def tokens_per_step(self) -> int | None:
        """Training tokens per optimizer step: sequences per step (data.global_batch_size, else
        data.batch_size x trainer.accumulate_grad_batches x trainer.devices x trainer.num_nodes)
        x data.seq_len; None when the config lacks them."""
        def num(key: str, default: Any = None) -> int | None:
            v = self.cfg(key, default)
            return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else None

        seq = num("data.seq_len")
        seqs = num("data.global_batch_size")
        if seqs is None:
            bs = num("data.batch_size")
            if bs is None:
                return None
            world = (num("trainer.devices", 1) or 1) * (num("trainer.num_nodes", 1) or 1)
            if self.cfg("trainer.devices") not in (None,) and num("trainer.devices") is None:
                dv = (self.summary or {}).get("devices")   # "auto" / a list: what the run used
                world = int(dv) if isinstance(dv, int) and dv > 0 else 1
            seqs = bs * (num("trainer.accumulate_grad_batches", 1) or 1) * world
        return seqs * seq if seq else None

    def command(self) -> str | None:
        if self.overrides is None:
            return None
        import shlex

        return "python train.py " + " ".join(shlex.quote(str(o)) for o in self.overrides)

    # ------------------------------------------------------------------ metrics
    def series(self, metric: str) -> Series:
        s = self.metrics.get(metric)
        if s is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        return s

    @staticmethod
    def opt_step(row_steps: np.ndarray) -> np.ndarray:
        return row_steps + 1

    @property
    def steps(self) -> int | None:
        """Optimizer steps done: summary ``steps``, else the last logged row + 1."""
        s = (self.summary or {}).get("steps") if self.complete else None
        if isinstance(s, (int, float)) and not isinstance(s, bool):
            return int(s)
        last = [int(st[-1]) for st, _ in self.metrics.values() if len(st)]
        return max(last) + 1 if last else None

    def _summary_num(self, key: str) -> float | None:
        v = (self.summary or {}).get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        return float(v)

    @property
    def final_val_ppl(self) -> float | None:
        """The summary's ``val_ppl`` (complete runs), else the last logged ``val/ppl``."""
        v = self._summary_num("val_ppl") if self.complete else None
        if v is not None:
            return v
        st, vals = self.series("val/ppl")
        if len(vals):
            return float(vals[-1])
        vl = self.series("val/loss")[1]
        return float(math.exp(vl[-1])) if len(vl) and vl[-1] < 700 else None

    @property
    def best_val_ppl(self) -> float | None:
        vals = [float(v) for v in self.series("val/ppl")[1] if math.isfinite(v)]
        f = self.final_val_ppl
        if f is not None and math.isfinite(f):
            vals.append(f)
        return min(vals) if vals else None

    @property
    def tokens_per_s(self) -> float | None:
        v = self._summary_num("tokens_per_s")
        if v is not None:
            return v
        vals = [x for x in self.series("perf/tokens_per_s")[1] if math.isfinite(x)]
        return float(np.mean(vals)) if vals else None

    def static_mib(self, part: str = "all") -> float | None:
        sb = (self.summary or {}).get("static_bytes")
        total = None
        if isinstance(sb, Mapping) and isinstance(sb.get(part), Mapping):
            total = sb[part].get("total")
        if total is None and self.summary:
            for sep in (".", "/"):
                total = self.summary.get(f"static_bytes{sep}{part}{sep}total", total)
        return float(total) / MIB if isinstance(total, (int, float)) and not isinstance(total, bool) else None

    @property
    def update_steps(self) -> list[int]:
        """Optimizer steps of the topology updates."""
        st, _ = self.series("sparsity/update")
        return [int(s) for s in self.opt_step(st)]

    @property
    def spikes(self) -> list[float]:
        vals = [float(v) for v in self.series("sparsity/spike")[1] if math.isfinite(v)]
        if not vals and (v := self._summary_num("spike_mean")) is not None:
            vals = [v]
        return vals

    def spikes_by_update(self) -> dict[int, float]:
        """Spike value keyed by the optimizer step of the update it follows."""
        ust, _ = self.series("sparsity/update")
        sst, svals = self.series("sparsity/spike")
        out: dict[int, float] = {}
        for s, v in zip(sst, svals):
            before = ust[ust <= s]
            if len(before) and math.isfinite(v):
                out[int(before[-1]) + 1] = float(v)
        return out

    @property
    def update_ratios(self) -> tuple[list[float], list[float]]:
        """Mean |dθ|/lr of regrown and of mature weights on the first step after each update."""
        reg = [float(v) for v in self.series("sparsity/update_ratio_regrown")[1] if math.isfinite(v)]
        mat = [float(v) for v in self.series("sparsity/update_ratio_mature")[1] if math.isfinite(v)]
        if not reg and (v := self._summary_num("update_ratio_regrown")) is not None:
            reg = [v]
        if not mat and (v := self._summary_num("update_ratio_mature")) is not None:
            mat = [v]
        return reg, mat


# ----------------------------------------------------------------------------- config helpers
def cfg_get(cfg: Mapping | None, dotted: str, default: Any = None) -> Any:
    cur: Any = cfg
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return default
        cur = cur[part]
    return cur


def flatten(cfg: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "a/c": 2, "d": {...}}`` -> nested dict (keys with '.' or '/' are split)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = str(key).replace("/", ".").split(".")
        cur = out
        for p in parts[:-1]:
            nxt = cur.get(p)
            if not isinstance(nxt, dict):
                nxt = cur[p] = {}
            cur = nxt
        if isinstance(value, Mapping):
            existing = cur.get(parts[-1])
            merged = unflatten(value)
            if isinstance(existing, dict):
                existing.update(merged)
            else:
                cur[parts[-1]] = merged
        else:
            cur[parts[-1]] = value
    return out


# ----------------------------------------------------------------------------- metrics
def _num(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    if isinstance(x, (int, float, np.integer, np.floating)):
        return float(x)
    if isinstance(x, str):
        s = x.strip()
        if not s:
            return None
        try:
            return float(s)
        except ValueError:
            return None
    return None


class _SeriesBuilder:
    """Collects (step, metric, value) cells; the LAST occurrence of a (step, metric) wins."""

    def __init__(self) -> None:
        self.cells: dict[str, dict[int, float]] = {}
        self.duplicates = 0

    def add(self, step: int, metric: str, value: float) -> None:
        d = self.cells.setdefault(metric, {})
        if step in d:
            self.duplicates += 1
        d[step] = value

    def build(self) -> dict[str, Series]:
        out: dict[str, Series] = {}
        for metric, d in self.cells.items():
            steps = np.array(sorted(d), dtype=np.int64)
            out[metric] = (steps, np.array([d[s] for s in steps.tolist()], dtype=np.float64))
        return out


IGNORED_METRICS = {"epoch", "step", "trainer/global_step", "_step", "_runtime", "_timestamp"}


def parse_metrics_csv(path: Path) -> tuple[dict[str, Series], int]:
    """metrics.csv (Lightning CSVLogger) -> ({metric: (steps, values)}, duplicates dropped).

    Empty cells are absent values; a header line repeated further down (appending logger) starts
    a new header; rows repeating a (step, metric) after a resume keep the last occurrence.
    """
    b = _SeriesBuilder()
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header: list[str] | None = None
        for row in reader:
            if not row:
                continue
            if "step" in row and all(_num(c) is None for c in row):
                header = row
                continue
            if header is None:
                continue
            rec = dict(zip(header, row))
            step = _num(rec.get("step"))
            if step is None or not math.isfinite(step):
                continue
            for k, v in rec.items():
                if k in IGNORED_METRICS:
                    continue
                x = _num(v)
                if x is not None:
                    b.add(int(step), k, x)
    return b.build(), b.duplicates


def metrics_from_rows(rows: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Series], int]:
    """History rows (dicts, e.g. from W&B) -> series. The step is ``trainer/global_step`` (what
    Lightning's WandbLogger logs), else ``step``, else W&B's own ``_step``."""
    b = _SeriesBuilder()
    for row in rows:
        step = None
        for key in ("trainer/global_step", "step", "_step"):
            step = _num(row.get(key))
            if step is not None and math.isfinite(step):
                break
            step = None
        if step is None:
            continue
        for k, v in row.items():
            if k in IGNORED_METRICS or k.startswith("_"):
                continue
            x = _num(v)
            if x is not None:
                b.add(int(step), k, x)
    return b.build(), b.duplicates


# ----------------------------------------------------------------------------- run directories
def is_run_dir(d: Path) -> bool:
    return (d / "config.yaml").is_file() and (d / "metrics.csv").is_file()


def discover_runs(path: Path) -> list[Path]:
    """``path`` itself when it is a run directory, else every run directory below it (sorted)."""
    if is_run_dir(path):
        return [path]
    found: list[Path] = []
    for root, dirs, files in os.walk(path):
        if "config.yaml" in files and "metrics.csv" in files:
            found.append(Path(root))
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
    return sorted(found, key=_natural_key)


def _natural_key(p: Path) -> list:
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


def load_run_dir(d: Path) -> Run:
    import yaml

    d = Path(d)
    try:
        config = yaml.safe_load((d / "config.yaml").read_text()) or {}
    except yaml.YAMLError as err:
        raise ReportError(str(d / "config.yaml"), f"unreadable YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise ReportError(str(d / "config.yaml"), "is not a mapping")
    metrics, dups = parse_metrics_csv(d / "metrics.csv")
    summary = None
    sp = d / "summary.json"
    if sp.is_file():
        try:
            summary = json.loads(sp.read_text())
            if not isinstance(summary, dict):
                summary = None
        except (json.JSONDecodeError, UnicodeDecodeError):
            summary = None
    overrides = None
    op = d / ".hydra" / "overrides.yaml"
    if op.is_file():
        try:
            ov = yaml.safe_load(op.read_text())
            overrides = [str(o) for o in ov] if isinstance(ov, list) else None
        except yaml.YAMLError:
            overrides = None
    name = str(config.get("run_name") or d.name)
    mtimes = [f.stat().st_mtime for f in (d / "metrics.csv", d / "train.log") if f.is_file()]
    st = summary.get("status") if summary else None
    complete = summary is not None and (not isinstance(st, str) or st.strip().lower() in (
        "finished", "complete", "completed", "ok", "done"))
    return Run(name=name, source=str(d), config=config, metrics=metrics, summary=summary,
               complete=complete, overrides=overrides, kind="dir", duplicates_dropped=dups,
               last_write=max(mtimes) if mtimes else None)


# ----------------------------------------------------------------------------- W&B
SUMMARY_KEYS = ("steps", "val_loss", "val_ppl", "unigram_ppl", "tokens_per_s", "wall_s", "params", "method",
                "density", "spike_mean", "update_ratio_regrown", "update_ratio_mature", "static_bytes")


def _unwrap_wandb_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """W&B stores top-level config entries as ``{"value": v, "desc": ...}`` in raw exports; the
    public API usually unwraps them already. Accept both, and flattened ``a.b`` / ``a/b`` keys."""
    plain: dict[str, Any] = {}
    for k, v in cfg.items():
        if str(k).startswith("_wandb"):
            continue
        if isinstance(v, Mapping) and "value" in v and set(v) <= {"value", "desc"}:
            v = v["value"]
        plain[str(k)] = v
    return unflatten(plain)


def run_from_wandb(config: Mapping[str, Any], history: Iterable[Mapping[str, Any]], summary: Mapping[str, Any] | None,
                   *, name: str | None = None, source: str | None = None, state: str | None = None) -> Run:
    """Convert a W&B run's (config, history rows, summary) into a :class:`Run`.

    ``config``: the run config (nested, or flattened with '.'/'/' separators; ``{"value": ...}``
    wrappers accepted). ``history``: rows as ``run.scan_history()`` yields them; the step is
    ``trainer/global_step`` (Lightning's WandbLogger), falling back to ``step`` / ``_step``.
    ``summary``: ``run.summary`` as a dict. train.py puts its numeric end-of-run figures there
    (``val_ppl``, ``steps``, ``tokens_per_s``, ...); a run without ``val_ppl`` there, or whose
    ``state`` is not ``finished``, is marked incomplete.
    """
    cfg = _unwrap_wandb_config(config or {})
    metrics, dups = metrics_from_rows(history or [])
    summ_in = dict(summary or {})
    summ: dict[str, Any] = {}
    for k in SUMMARY_KEYS:
        if k in summ_in and summ_in[k] is not None:
            summ[k] = summ_in[k]
    for k, v in summ_in.items():  # flattened static bytes
        if str(k).startswith("static_bytes") and k not in summ:
            summ[k] = v
    if "static_bytes" in summ and not isinstance(summ["static_bytes"], Mapping):
        summ.pop("static_bytes")
    complete = "val_ppl" in summ and (state is None or state == "finished")
    run_name = name or str(cfg.get("run_name") or "wandb-run")
    return Run(name=run_name, source=source or run_name, config=cfg, metrics=metrics,
               summary=summ or None, complete=complete, overrides=None, kind="wandb", duplicates_dropped=dups,
               state=state)
