"""Shared by the summary steps of scripts/gpu-issue15*.sh: the smet-bench part records of one run directory."""

from __future__ import annotations

import json
from pathlib import Path


def gib(b) -> str:
    return "-" if not b else f"{b / 2**30:.2f}"


def load_parts(out: Path, names) -> dict[str, list]:
    """{part: smet-bench records} for the parts whose JSON exists under ``out`` (skipped parts have none)."""
    return {p: json.loads((out / f"{p}.json").read_text()) for p in names if (out / f"{p}.json").exists()}
