"""Errors raised for bad user input. Each message names the offending config key or path."""


class SmetConfigError(ValueError):
    """Bad configuration value or input path, detected before any compute.

    The CLI prints ``str(err)`` as a single line and exits with a non-zero code.
    """

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")
