"""What every smet console script shares: one-line errors and exit code 2 for bad input.

* :class:`OneLineParser` - argparse whose errors are ``<prog>: error: --opt: <what>`` (one line,
  no usage block) with exit code 2;
* :func:`die` / :func:`run_main` - a :class:`~smet.errors.SmetConfigError` (any of smet's input
  errors) printed as ``<prog>: error: <key>: <what>``, exit code 2;
* :func:`check_output_file` - an output file checked before any compute.

Light on purpose (argparse and smet.errors only): ``--help`` and bad arguments stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from smet.errors import SmetConfigError

__all__ = ["OneLineParser", "check_output_file", "die", "run_main"]


class OneLineParser(argparse.ArgumentParser):
    """``<prog>: error: <arg>: <what>`` on stderr and exit 2 (no usage block).

    argparse's ``argument --max-new-tokens/-n: ...`` becomes ``--max-new-tokens: ...`` (the longest
    long name, like a :class:`~smet.errors.SmetConfigError` key). ``usage_on_error=True`` keeps
    argparse's own form instead (the usage line, then ``<prog>: error: argument --x: ...``), as
    smet-compare and smet-export have always printed it.
    """

    def __init__(self, *args, usage_on_error: bool = False, **kwargs):
        self.usage_on_error = usage_on_error
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse API
        if self.usage_on_error:
            self.print_usage(sys.stderr)
        elif message.startswith("argument "):
            message = message[len("argument "):]
            arg, sep, rest = message.partition(": ")
            names = arg.split("/")  # '--max-new-tokens/-n' -> '--max-new-tokens'
            message = f"{max(names, key=lambda n: (n.startswith('--'), len(n)))}{sep}{rest}"
        self.fail(message)

    def fail(self, message: str):
        """One line ``<prog>: error: <message>`` and exit 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def die(prog: str, message: object) -> int:
    """Print ``<prog>: error: <message>`` (one line, stderr); returns the exit code 2."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return 2


def run_main(prog: str, fn: Callable[[], int | None]) -> int:
    """``fn()``'s exit code (None: 0); a :class:`~smet.errors.SmetConfigError` (GridError, SubmitError,
    ExportError, ReportError, ... are ones) becomes ``<prog>: error: <msg>`` and exit code 2."""
    try:
        code = fn()
    except SmetConfigError as err:
        return die(prog, err)
    return 0 if code is None else code


def check_output_file(opt: str, path: Path | None, force: bool) -> None:
    """Before any compute: the file can be written, and an existing one is kept unless --force.

    Raises :class:`~smet.errors.SmetConfigError` naming ``opt``."""
    import tempfile

    if path is None:
        return
    if path.is_dir():
        raise SmetConfigError(opt, f"{path} is a directory; give a file name")
    if path.exists() and not force:
        raise SmetConfigError(opt, f"{path} exists; pass --force to overwrite it or choose another file")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".smet-probe-", dir=parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise SmetConfigError(opt, f"cannot write into {parent} ({e.strerror or e})") from None
