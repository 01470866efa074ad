"""Console output that also lands in ``<run dir>/train.log``.

Two channels, both through Python logging (Hydra's ``smet`` job-logging config sends the root
logger to the console and to ``<run dir>/train.log``):

* :func:`echo` prints plain text (the end-of-run summary) to stdout *and* writes it to the log
  files, without the ``[time][smet][INFO]`` prefix on the console.
* :class:`ProgressLog` emits progress lines (step, validation, topology updates) through the
  ``smet.progress`` logger; with ``file_only`` (a rich/tqdm bar already shows progress on a TTY)
  the console handlers drop them and only the log file keeps them.
"""

from __future__ import annotations

import logging
import sys

PROGRESS_LOGGER = "smet.progress"
log = logging.getLogger("smet")


def _handlers() -> list[logging.Handler]:
    out: list[logging.Handler] = []
    for name in (None, "smet"):
        for h in logging.getLogger(name).handlers:
            if h not in out:
                out.append(h)
    return out


def file_handlers() -> list[logging.FileHandler]:
    return [h for h in _handlers() if isinstance(h, logging.FileHandler)]


def echo(text: str, file=None) -> None:
    """``print(text)`` plus the same lines in the log files (train.log)."""
    print(text, file=file or sys.stdout, flush=True)
    for line in text.splitlines():
        if not line.strip():
            continue
        record = log.makeRecord(log.name, logging.INFO, __file__, 0, line, None, None)
        for h in file_handlers():
            if record.levelno >= h.level:
                h.handle(record)


class _FileOnly(logging.Filter):
    """On console handlers: drop records marked ``file_only``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


def _install_console_filter() -> None:
    for h in _handlers():
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            if not any(isinstance(f, _FileOnly) for f in h.filters):
                h.addFilter(_FileOnly())


class ProgressLog:
    """Progress lines: console + train.log, or train.log only (``file_only``)."""

    def __init__(self, file_only: bool = False):
        self.file_only = bool(file_only)
        self.logger = logging.getLogger(PROGRESS_LOGGER)
        if self.file_only:
            _install_console_filter()

    def info(self, msg: str, *args) -> None:
        self.logger.info(msg, *args, extra={"file_only": self.file_only})


def stdout_is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # pragma: no cover - closed / replaced stdout
        return False


def fmt_duration(seconds: float) -> str:
    s = max(int(round(seconds)), 0)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
