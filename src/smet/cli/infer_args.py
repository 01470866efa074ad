"""Argument handling shared by ``smet-eval`` and ``smet-generate``: one-line errors, exit code 2,
checked before anything heavy (torch, the checkpoint) is loaded."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from smet.cli.args import OneLineParser, die  # noqa: F401 (the shared ones; re-exported for eval/generate)


def int_at_least(lo: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    return parse


def float_at_least(lo: float):
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {s!r}") from None
        if not v >= lo or v != v or v == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number >= {lo}, got {s}")
        return v
    return parse


def device_arg(s: str) -> str:
    s = s.strip().lower()
    if s in ("auto", "cpu", "cuda") or (s.startswith("cuda:") and s[5:].isdigit()):
        return s
    raise argparse.ArgumentTypeError(f"unknown device {s!r}; choose cpu, cuda, cuda:N or auto")


def check_src(parser: OneLineParser, src: str) -> None:
    """A missing path fails here, before torch is imported (the rest is checked by the loader)."""
    p = Path(os.path.expanduser(src))
    if not p.exists():
        parser.fail(f"{p}: no such checkpoint file or run directory")
    if p.is_file() and p.stat().st_size == 0:
        parser.fail(f"{p}: cannot read checkpoint (empty file)")
