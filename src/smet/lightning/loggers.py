"""A CSV logger that appends to an existing metrics.csv instead of deleting it.

Lightning's CSVLogger removes a ``metrics.csv`` it finds in its directory. A run resumed into its
own directory (``ckpt_path=auto`` after a SLURM requeue) must keep the rows of the earlier attempt:
nothing already written is lost. Rows of steps that are replayed after the resume appear twice;
readers keep the last row per step (``smet-compare`` does).
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(k for k in header if k)


class AppendingCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
