"""Checkpoint writes through Lightning: atomic (the file checks live in :mod:`smet.checkpoints`).

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
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io.torch_plugin import TorchCheckpointIO

from smet.atomic import atomic_write
from smet.checkpoints import candidates, checkpoint_problem, newest_intact, read_hparams  # noqa: F401 (re-export)

log = logging.getLogger("smet")


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        try:
            atomic_write(path, lambda f: torch.save(checkpoint, f))
        except (OSError, RuntimeError) as e:  # torch.save wraps a failed write in a RuntimeError
            import errno

            from smet.errors import SmetRunError

            text = str(e)
            try:
                st = os.statvfs(Path(path).parent)
                free = st.f_bavail * st.f_frsize
            except OSError:
                free = None
            full = getattr(e, "errno", None) == errno.ENOSPC or "No space left" in text or \
                (free is not None and free < 256 * 2**20)
            if not full and not isinstance(e, OSError):
                raise
            older = [p for p in candidates(Path(path).parent.parent) if p != Path(path)]
            kept = f"the previous checkpoint {older[0]} is intact" if older else "no earlier checkpoint exists"
            why = (f"no space left on the device: {free / 2**20:.1f} MiB free" if full and free is not None else
                   "no space left on the device" if full else (e.strerror or text.splitlines()[0]))
            raise SmetRunError("checkpoint", f"writing {path} failed ({why}); nothing was replaced, {kept}; free "
                                             f"space and resume with ckpt_path={Path(path).parent.parent}") from None


