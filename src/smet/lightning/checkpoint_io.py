"""Checkpoint files: atomic writes, integrity checks, resume selection with fallback.

A checkpoint is written to ``<name>.tmp-<pid>`` next to its final path, flushed to disk and then
renamed over the final name, so a process killed mid-write (``kill -9``, pre-emption) never leaves a
torn ``last.ckpt``: readers see the previous complete file or the new one. A checkpoint that is
still torn or corrupt (copied badly, disk full ...) is detected before any compute by checking the
CRC of every member of its zip container, and refused with a clear error; when resuming from a run
directory (or ``ckpt_path=auto``) the newest intact checkpoint is used instead, with a warning.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io.torch_plugin import TorchCheckpointIO

from smet.atomic import atomic_write

log = logging.getLogger("smet")


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        atomic_write(path, lambda f: torch.save(checkpoint, f))


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """None when ``path`` is an intact torch checkpoint, else a short description of what is wrong."""
    p = Path(path)
    if p.is_dir():  # a DeepSpeed checkpoint directory: DeepSpeed validates its own shards
        return None if (p / "latest").is_file() else "directory without a DeepSpeed 'latest' file"
    try:
        if p.stat().st_size == 0:
            return "empty file"
        with zipfile.ZipFile(p) as z:
            bad = z.testzip()
            if bad is not None:
                return f"corrupt member {bad}"
            if not any(n.endswith("data.pkl") for n in z.namelist()):
                return "not a torch checkpoint (no data.pkl)"
    except zipfile.BadZipFile:
        return "truncated or not a zip-format torch checkpoint"
    except OSError as e:
        return e.strerror or str(e)
    return None


def candidates(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints of a run directory, newest first: last.ckpt, step checkpoints, Lightning hpc ones."""
    root = Path(run_dir)
    found = [*root.glob("checkpoints/*.ckpt"), *root.glob("hpc_ckpt_*.ckpt")]
    usable = [p for p in found if p.is_file() or (p / "latest").is_file()]  # DeepSpeed: a directory
    return sorted(usable, key=lambda p: p.stat().st_mtime, reverse=True)


def newest_intact(run_dir: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(newest intact checkpoint of the run dir or None, [(skipped path, problem), ...])."""
    skipped: list[tuple[Path, str]] = []
    for p in candidates(run_dir):
        problem = checkpoint_problem(p)
        if problem is None:
            return p, skipped
        skipped.append((p, problem))
    return None, skipped


def read_hparams(path: str | os.PathLike) -> dict:
    """The run config stored in a checkpoint (memory-mapped; tensors are not read)."""
    ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return dict(ck.get("hyper_parameters") or {})
