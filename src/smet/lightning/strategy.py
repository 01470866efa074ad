"""The Lightning strategy of a run: ``trainer.strategy`` plus, for ``ddp``, the ``trainer.ddp`` options.

``strategy: fsdp`` becomes Lightning's ``ModelParallelStrategy`` with FSDP2 over all devices
(:func:`fsdp_strategy`, ``conf/trainer/fsdp.yaml``). ``strategy: ddp`` becomes a ``DDPStrategy`` with the defaults below (``conf/trainer/ddp.yaml``
documents them; ``trainer.ddp.<key>=...`` overrides one). Any other value (``auto``, ``deepspeed``,
``ddp_spawn`` ...) is handed to Lightning unchanged.

Why these defaults, for compact sparse layers:

* ``find_unused_parameters: false`` - every parameter, the compact ``values`` included, gets a
  gradient every step, so DDP needs no extra graph traversal;
* ``broadcast_buffers: false`` - the sparse masks (``idx`` buffers) are identical on every rank by
  construction (``smet.sparse.distributed``); broadcasting them would send 4/b bytes per active
  weight before every forward and would hide a rank that diverged (``sparsity.debug_check_masks``
  checks instead). The only other buffers (RoPE tables) are constants. Passed to DDP as
  ``forward_sync_buffers`` where PyTorch has it (>= 2.13);
* ``gradient_as_bucket_view: true`` - gradients are views into DDP's communication buckets: no
  second copy of the gradients (4 B per active weight in fp32);
* ``process_group_backend: null`` - Lightning's choice: NCCL on GPU, gloo on CPU.
"""

from __future__ import annotations

import inspect
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping

# the checks live in smet.config (config validation needs no Lightning); re-exported here
from smet.config import (BACKENDS, DDP_DEFAULTS, DEEPSPEED_STRATEGIES, STRATEGIES, _BOOL_KEYS,  # noqa: F401
                         check_sharded_sparsity, check_strategy_config, ddp_options, fsdp_options, world_size)
from smet.config import get as _get


def build_strategy(t: Mapping):
    """What ``L.Trainer(strategy=...)`` gets for the ``trainer`` config ``t``."""
    check_strategy_config(t)
    name = _get(t, "strategy", "auto")
    if name == "fsdp":
        return fsdp_strategy(t)
    if name != "ddp":
        return name
    from lightning.pytorch.strategies import DDPStrategy
    from torch.nn.parallel import DistributedDataParallel

    opts = ddp_options(t)
    kwargs: dict[str, Any] = {k: opts[k] for k in _BOOL_KEYS}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        # torch >= 2.13 renamed it (and deprecated the old name); buffers are still synced once at
        # init, which only confirms the identical seeded masks
        kwargs["forward_sync_buffers"] = kwargs.pop("broadcast_buffers")
    if opts["bucket_cap_mb"] is not None:
        kwargs["bucket_cap_mb"] = opts["bucket_cap_mb"]
    if opts["timeout_s"] is not None:
        kwargs["timeout"] = timedelta(seconds=float(opts["timeout_s"]))
    return DDPStrategy(process_group_backend=opts["process_group_backend"], **kwargs)


def fsdp_strategy(t: Mapping):
    """FSDP2 (``fully_shard``) through Lightning's ``ModelParallelStrategy``: every device one data-parallel
    shard (no tensor parallelism); ``LMModule.configure_model`` shards each decoder block and the root.
    Checkpoints are distributed (a directory per checkpoint: one file per rank plus ``meta.pt``), written
    and read through ``torch.distributed.checkpoint``, which reshards on load."""
    backend = fsdp_options(t)["process_group_backend"]
    if backend is None and str(_get(t, "accelerator", "auto")) == "cpu":
        backend = "gloo"
    return _fsdp_strategy_class()(data_parallel_size=world_size({"trainer": t}), tensor_parallel_size=1,
                                  save_distributed_checkpoint=True, process_group_backend=backend)


def _fsdp_strategy_class():
    from lightning.pytorch.strategies import ModelParallelStrategy

    class FSDP2Strategy(ModelParallelStrategy):
        """``ModelParallelStrategy`` whose distributed checkpoints are replaced atomically: each is written
        into ``.<name>.tmp-<pid>`` beside its final path and renamed over it once every rank's shard and
        ``meta.pt`` are complete, so a process killed mid-write never leaves a ``last.ckpt`` directory that
        mixes two steps (the stale temporary directory is removed at the next start,
        ``smet.checkpoints.clean_stale_temp_files``)."""

        def save_checkpoint(self, checkpoint, filepath, storage_options=None) -> None:
            import shutil

            path = Path(self.broadcast(str(filepath)))
            pid = self.broadcast(os.getpid())
            tmp = path.with_name(f".{path.name}.tmp-{pid}")
            if self.is_global_zero and tmp.exists():
                shutil.rmtree(tmp)
            self.barrier()
            super().save_checkpoint(checkpoint, tmp, storage_options)
            self.barrier()
            if self.is_global_zero:
                old = path.with_name(f".{path.name}.old.tmp-{pid}")
                if path.is_dir():
                    path.rename(old)
                elif path.exists():
                    path.unlink()
                tmp.rename(path)
                if old.exists():
                    shutil.rmtree(old)
            self.barrier()

    return FSDP2Strategy
