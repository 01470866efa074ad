"""Errors raised for bad user input. Each message names the offending config key or path."""

from __future__ import annotations

import re

from smet.sparse.errors import ConfigError

#: Bad configuration value or input path, detected before any compute (the sparse core's
#: :class:`~smet.sparse.errors.ConfigError`): ``SmetConfigError(key, message)``, ``str(err)`` is
#: ``"<key>: <message>"``. Every console script prints it as one line and exits with code 2.
SmetConfigError = ConfigError

_KEY = re.compile(r"([^\s:]+): ")


class SmetInputError(SmetConfigError):
    """A :class:`SmetConfigError` that may also be raised with one ready-made line.

    ``Err(key, message)``: ``str(err) == f"{key}: {message}"``. ``Err(line)``: ``str(err) == line``
    and ``key`` is ``key=`` when given, else the leading ``<word>: `` of the line (an option, config
    key or path), else ``""``.
    """

    def __init__(self, key_or_line: str, message: str | None = None, *, key: str | None = None):
        if message is not None:
            super().__init__(key_or_line, message)
            return
        m = _KEY.match(key_or_line)
        self.key = key if key is not None else (m.group(1) if m else "")
        ValueError.__init__(self, key_or_line)


class SmetRunError(RuntimeError):
    """A failure that can only appear while a run executes (disk full while writing a checkpoint, ...).

    ``train.py`` prints ``smet: error: <key or path>: <what happened and what is still intact>`` as one
    line and exits with code 1 (no traceback)."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


__all__ = ["ConfigError", "SmetConfigError", "SmetInputError", "SmetRunError"]
