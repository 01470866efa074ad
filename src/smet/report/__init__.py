"""Comparison reports over finished (or partial) training runs: the engine behind ``smet-compare``.

* :mod:`smet.report.runs`   - the in-memory :class:`Run` (config + de-duplicated metrics + summary),
  loaded from run directories or converted from a W&B run (:func:`run_from_wandb`).
* :mod:`smet.report.table`  - grouping of runs (same config except seed) and the summary table.
* :mod:`smet.report.plots`  - the PNG figures (matplotlib, Agg backend).
* :mod:`smet.report.render` - ``report.md`` / ``report.html``.
* :mod:`smet.report.wandb_source` - reading runs through ``wandb.Api()`` (online only, fails fast offline).

Nothing here imports torch or Lightning: a report over tens of runs takes seconds.
"""

from smet.report.runs import Run, ReportError, discover_runs, load_run_dir, parse_metrics_csv, run_from_wandb

__all__ = ["Run", "ReportError", "discover_runs", "load_run_dir", "parse_metrics_csv", "run_from_wandb"]
