"""SIGTERM / SIGINT / SIGUSR1 end a run with a resumable checkpoint, never silently.

``timeout``, ``kill``, ``docker stop`` and SLURM (at the time limit or on ``scancel``) send SIGTERM;
Ctrl-C sends SIGINT. Lightning's own SIGTERM handling ends ``fit`` as if it had finished. Here the
handler only records the signal; at the end of the current optimizer step (after its topology
update, so the state is consistent) :class:`GracefulInterrupt` writes
``checkpoints/interrupted-step<N>.ckpt`` atomically and stops the trainer; ``train.py`` then writes
``summary.json`` with ``status: interrupted``, prints the resume command and exits with
128 + the signal number (143 for SIGTERM, 130 for SIGINT). A second signal while the checkpoint is
being written is acknowledged and ignored, so it cannot tear the file.

Under SLURM with Lightning's auto-requeue, SIGUSR1 stays Lightning's (it saves an hpc checkpoint
and requeues the job): only SIGTERM and SIGINT are taken over there.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from lightning.pytorch.callbacks import Callback

log = logging.getLogger("smet")


def _signals() -> list[signal.Signals]:
    sigs = [signal.SIGTERM, signal.SIGINT]
    if hasattr(signal, "SIGUSR1") and not os.environ.get("SLURM_JOB_ID"):
        sigs.append(signal.SIGUSR1)
    return sigs


class GracefulInterrupt(Callback):
    def __init__(self, checkpoint_dir: str | os.PathLike):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.signum: int | None = None
        self.checkpoint: Path | None = None
        self.saving = False
        self._previous: dict[int, object] = {}

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handler(self, signum, frame) -> None:
        if self.saving:
            print(f"smet: {signal.Signals(signum).name} received again: still writing the checkpoint, "
                  "one moment", file=sys.stderr, flush=True)
            return
        if self.signum is None:
            print(f"smet: {signal.Signals(signum).name} received: stopping after this step and writing a "
                  "checkpoint", file=sys.stderr, flush=True)
        self.signum = signum

    def on_train_start(self, trainer, pl_module) -> None:
        for sig in _signals():
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass

    def _restore(self) -> None:
        for sig, old in self._previous.items():
            try:
                signal.signal(sig, old)  # type: ignore[arg-type]
            except (ValueError, TypeError):
                pass
        self._previous.clear()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.checkpoint is not None:
            return
        accum = max(1, int(trainer.accumulate_grad_batches))
        if (batch_idx + 1) % accum:
            return  # mid-accumulation: finish the optimizer step first
        if trainer.world_size > 1:  # any rank signalled -> every rank saves and stops (one small all-reduce)
            if not trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False):
                return
            self.signum = self.signum or signal.SIGTERM
        elif self.signum is None:
            return
        self.saving = True
        try:
            path = self.checkpoint_dir / f"interrupted-step{trainer.global_step:07d}.ckpt"
            trainer.save_checkpoint(str(path))  # atomic (AtomicCheckpointIO)
            self.checkpoint = path
            log.info("%s: checkpoint of step %d written to %s", self.signal_name, trainer.global_step, path)
        finally:
            self.saving = False
        trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()
