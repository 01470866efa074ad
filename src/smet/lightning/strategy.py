"""The Lightning strategy of a run: ``trainer.strategy`` plus, for ``ddp``, the ``trainer.ddp`` options.

``strategy: ddp`` becomes a ``DDPStrategy`` with the defaults below (``conf/trainer/ddp.yaml``
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
from datetime import timedelta
from typing import Any, Mapping

# the checks live in smet.config (config validation needs no Lightning); re-exported here
from smet.config import (BACKENDS, DDP_DEFAULTS, DEEPSPEED_STRATEGIES, STRATEGIES, _BOOL_KEYS,  # noqa: F401
                         check_deepspeed_sparsity, check_strategy_config, ddp_options)
from smet.config import get as _get


def build_strategy(t: Mapping):
    """What ``L.Trainer(strategy=...)`` gets for the ``trainer`` config ``t``."""
    check_strategy_config(t)
    name = _get(t, "strategy", "auto")
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
