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

from smet.errors import SmetConfigError

DDP_DEFAULTS: dict[str, Any] = {
    "process_group_backend": None,
    "find_unused_parameters": False,
    "broadcast_buffers": False,
    "gradient_as_bucket_view": True,
    "static_graph": False,
    "bucket_cap_mb": None,  # null = PyTorch's default (25)
    "timeout_s": None,  # null = Lightning's default (30 min)
}
BACKENDS = ("gloo", "nccl", "mpi", "ucc")
_BOOL_KEYS = ("find_unused_parameters", "broadcast_buffers", "gradient_as_bucket_view", "static_graph")


def _get(t: Any, key: str, default: Any = None) -> Any:
    v = t.get(key, default) if hasattr(t, "get") else default
    return default if v is None else v


def ddp_options(t: Mapping) -> dict[str, Any]:
    """``trainer.ddp`` merged over :data:`DDP_DEFAULTS`, checked; raises SmetConfigError naming the key."""
    given = _get(t, "ddp", {}) or {}
    if not hasattr(given, "items"):
        raise SmetConfigError("trainer.ddp", f"must be a mapping of DDP options, got {given!r}")
    opts = dict(DDP_DEFAULTS)
    for key, val in given.items():
        if key not in DDP_DEFAULTS:
            raise SmetConfigError(f"trainer.ddp.{key}", f"unknown DDP option; choose from {', '.join(DDP_DEFAULTS)}")
        opts[key] = DDP_DEFAULTS[key] if val is None else val
    for key in _BOOL_KEYS:
        if not isinstance(opts[key], bool):
            raise SmetConfigError(f"trainer.ddp.{key}", f"must be true or false, got {opts[key]!r}")
    backend = opts["process_group_backend"]
    if backend is not None and backend not in BACKENDS:
        raise SmetConfigError("trainer.ddp.process_group_backend", f"unknown backend {backend!r}; choose null "
                              f"(nccl on GPU, gloo on CPU) or {', '.join(BACKENDS)}")
    if backend == "nccl" and str(_get(t, "accelerator", "auto")) == "cpu":
        raise SmetConfigError("trainer.ddp.process_group_backend",
                              "nccl needs GPUs; use gloo (or null) with accelerator=cpu")
    for key in ("bucket_cap_mb", "timeout_s"):
        v = opts[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            raise SmetConfigError(f"trainer.ddp.{key}", f"must be null or a positive number, got {v!r}")
    return opts


def check_strategy_config(t: Mapping) -> None:
    """Cheap validation of ``trainer.strategy`` / ``trainer.ddp`` (no Lightning import)."""
    name = _get(t, "strategy", "auto")
    if not isinstance(name, str):
        raise SmetConfigError("trainer.strategy", f"must be a strategy name (auto, ddp, ...), got {name!r}")
    if name == "ddp":
        ddp_options(t)
    if name not in STRATEGIES and not name.startswith("deepspeed"):
        raise SmetConfigError("trainer.strategy", f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name.startswith("deepspeed") and name not in DEEPSPEED_STRATEGIES:
        raise SmetConfigError("trainer.strategy", f"unsupported DeepSpeed strategy {name!r}; choose "
                                                  f"{' or '.join(DEEPSPEED_STRATEGIES)}")


DEEPSPEED_STRATEGIES = ("deepspeed_stage_1", "deepspeed_stage_2")
STRATEGIES = ("auto", "single_device", "ddp", *DEEPSPEED_STRATEGIES)


def check_deepspeed_sparsity(strategy: str, method: str) -> None:
    """ZeRO partitions flatten parameters and step the optimizer on flat fp32 shards: the SMET
    optimizer's per-weight local steps, regrowth resets and per-layer blocks cannot survive that."""
    if str(strategy).startswith("deepspeed") and method != "dense":
        raise SmetConfigError("trainer.strategy", f"DeepSpeed ZeRO supports the dense baseline only (sparsity=dense); "
                                                  f"sparsity={method} keeps per-weight optimizer state (local steps, "
                                                  "regrowth resets) that ZeRO's flat partitions lose. Use trainer=ddp "
                                                  "for sparse runs")


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
