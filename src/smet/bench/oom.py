"""Out-of-memory handling of smet-bench: a run that runs out of memory is recorded, freed, and the
benchmark goes on (a dense LLaMA-13B AdamW attempt OOMs on one GPU; its sparse runs do not)."""

from __future__ import annotations

import gc
import re
from typing import Any

_TRIED = re.compile(r"Tried to allocate ([0-9.]+) ?(B|bytes|KiB|MiB|GiB|TiB)")
_CPU_BYTES = re.compile(r"you tried to allocate (\d+) bytes")
_UNITS = {"B": 1, "bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def is_oom(err: BaseException) -> bool:
    """``torch.OutOfMemoryError`` (CUDA) or the CPU allocator's "can't allocate memory" RuntimeError."""
    import torch

    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)


def oom_info(err: BaseException, phase: str) -> dict[str, Any]:
    """What is recorded for an OOM: the error's first line, the bytes the failed allocation asked for
    (parsed from the message when it says), the phase (build / warm-up / step N / ...)."""
    msg = str(err).strip()
    first = msg.splitlines()[0] if msg else type(err).__name__
    req = None
    m = _TRIED.search(msg)
    if m:
        req = int(float(m.group(1)) * _UNITS[m.group(2)])
    else:
        m = _CPU_BYTES.search(msg)
        if m:
            req = int(m.group(1))
    return {"oom": True, "oom_error": first[:500], "oom_bytes_requested": req, "oom_phase": phase}


def free_memory(device=None) -> None:
    """gc + empty the CUDA cache (after dropping the references to a failed run)."""
    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def guarded(phase: str, fn, *a, **kw) -> tuple[Any, dict | None]:
    """``(fn(*a, **kw), None)``, or ``(None, oom_info)`` when it runs out of memory. The traceback
    (which holds the frames and thus the failed step's tensors) is dropped before memory is freed;
    the caller must drop its own references to the run and call :func:`free_memory` again."""
    try:
        return fn(*a, **kw), None
    except RuntimeError as err:
        if not is_oom(err):
            raise
        info = oom_info(err, phase)
    free_memory()
    return None, info
