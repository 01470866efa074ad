"""The error the sparse core raises for bad input (no other smet import: the core stands alone).

``smet.errors.SmetConfigError`` is this class; every smet console script prints ``str(err)`` as one
line (``<prog>: error: <key>: <message>``) and exits with code 2.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad configuration value or input path, detected before any compute; ``key`` names it."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")
