"""Checkpoint files, with no Lightning import (validation, export and eval use these).

Integrity: a torn or corrupt file is detected before any compute by checking the CRC of every
member of its zip container. Content: a file that is an intact torch zip but not a checkpoint of
smet's train.py (a saved tensor, a plain dict, a pickle that ``weights_only`` loading refuses, one
without the run config) is named as such, also before any compute. Resume selection: the newest
intact checkpoint of a run directory, skipping broken ones with a warning.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch


DCP_META = "meta.pt"  # Lightning's ModelParallelStrategy: the non-tensor part of a distributed checkpoint


def is_distributed(path: str | os.PathLike) -> bool:
    """A distributed checkpoint directory (``trainer=fsdp``): ``torch.distributed.checkpoint`` shard files, their
    ``.metadata`` and Lightning's ``meta.pt`` (the rest of the checkpoint: step, hyper-parameters, callbacks,
    SMET's controller state); ``meta.pt`` is written last."""
    p = Path(path)
    return p.is_dir() and (p / DCP_META).is_file()


def _readable(path: str | os.PathLike) -> Path:
    """The torch file holding a checkpoint's metadata: the file itself, or a distributed checkpoint's meta.pt."""
    p = Path(path)
    return p / DCP_META if is_distributed(p) else p


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """None when ``path`` is an intact torch checkpoint, else a short description of what is wrong."""
    p = Path(path)
    if p.is_dir() and not is_distributed(p):  # a DeepSpeed checkpoint directory: DeepSpeed validates its shards
        return None if (p / "latest").is_file() else "directory without a DeepSpeed 'latest' or a distributed " \
                                                    "checkpoint's meta.pt"
    if p.is_dir():
        if not (p / ".metadata").is_file():
            return "distributed checkpoint without its .metadata (torn write)"
        p = p / DCP_META
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
    usable = [p for p in found if p.is_file() or (p / "latest").is_file() or is_distributed(p)]  # dirs: DeepSpeed, DCP
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
    ck = torch.load(_readable(path), map_location="cpu", weights_only=True, mmap=True)
    return dict(ck.get("hyper_parameters") or {})


def read_step(path: str | os.PathLike) -> int | None:
    """The optimizer step a checkpoint was written at (its ``global_step``), None for a DeepSpeed
    directory or a file without one. Memory-mapped: tensors are not read."""
    p = Path(path)
    if p.is_dir() and not is_distributed(p):
        return None
    ck = torch.load(_readable(p), map_location="cpu", weights_only=True, mmap=True)
    step = ck.get("global_step") if isinstance(ck, dict) else None
    return int(step) if isinstance(step, int) else None


def content_problem(path: str | os.PathLike) -> str | None:
    """None when ``path`` holds a checkpoint written by smet's train.py (a Lightning checkpoint with
    the run config in its hyper-parameters), else what it is instead. Memory-mapped: tensors are
    not read. Call after :func:`checkpoint_problem` found the file intact."""
    p = Path(path)
    if p.is_dir() and not is_distributed(p):
        return None  # DeepSpeed directory: its own loader checks it
    dist_dir = p.is_dir()
    p = _readable(p)
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        return f"torch.load(weights_only=True) refuses it ({first[:120]}); smet loads only plain tensors and containers"
    except (RuntimeError, ValueError, EOFError, OSError) as e:
        return f"cannot be read as a torch checkpoint ({str(e).strip().splitlines()[0][:120] if str(e).strip() else e})"
    if not isinstance(ck, dict):
        return f"holds a {type(ck).__name__}, not a training checkpoint"
    if "state_dict" not in ck and not dist_dir:  # a distributed checkpoint keeps its tensors in the shard files
        return "not a Lightning training checkpoint (no state_dict)"
    hp = ck.get("hyper_parameters")
    if not isinstance(hp, dict) or not isinstance(hp.get("cfg"), dict):
        return "has no smet run config (hyper_parameters.cfg): not written by smet's train.py"
    return None


def clean_stale_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Remove temporary files of checkpoint writers that were killed mid-write (``.<name>.*.tmp-<pid>``
    of :func:`smet.atomic.atomic_write`) whose process no longer runs. Returns what was removed."""
    import re

    removed = []
    root = Path(run_dir)
    for p in [*root.glob("checkpoints/.*.tmp-*"), *root.glob(".*.tmp-*")]:
        m = re.search(r"\.tmp-(\d+)$", p.name)
        if not m:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            try:
                if p.is_dir():  # a distributed checkpoint directory (smet.lightning.strategy)
                    import shutil

                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed
