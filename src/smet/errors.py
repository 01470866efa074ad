"""Errors raised for bad user input. Each message names the offending config key or path."""


class SmetConfigError(ValueError):
    """Bad configuration value or input path, detected before any compute.

    The CLI prints ``str(err)`` as a single line and exits with a non-zero code.
    """

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


class SmetRunError(RuntimeError):
    """A failure that can only appear while a run executes (disk full while writing a checkpoint, ...).

    ``train.py`` prints ``smet: error: <key or path>: <what happened and what is still intact>`` as one
    line and exits with code 1 (no traceback)."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")
