"""SMET sparse core (pure PyTorch): compact sparse layers, topology updates, the SMET optimizer.

Usable in a plain PyTorch loop::

    ctrl = attach_sparsity(model, {"method": "smet", "density": 0.25}, total_steps=10_000)
    opt = build_smet_optimizer(model, {"lr": 2e-3, "regrowth_warmup_steps": 100, "lr_scaling": "inverse"}, ctrl)
    for step in range(1, 10_001):
        loss, info = train_step(model, ctrl, opt, x, y, step)   # info: topology update metrics or None

``train_step`` (``smet.sparse.step``) is the reference step: ``ctrl.before_step(step)``, forward,
backward, ``opt.step()``, ``opt.zero_grad(set_to_none=True)``, ``ctrl.after_step(step)`` (prune/regrow
when an update is due). ``smet.build.build_training`` builds model + controller + optimizer from a
run config.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from smet.sparse.layer import SparseLinear
    from smet.sparse.optimizer import SMETOptimizer, build_smet_optimizer
    from smet.sparse.step import train_step
    from smet.sparse.topology import SlotStateObserver, SparseController, SparsityConfig, sparsify_model

__all__ = ["SparseLinear", "SMETOptimizer", "SlotStateObserver", "SparseController", "SparsityConfig",
           "attach_sparsity", "build_smet_optimizer", "sparsify_model", "train_step"]

# loaded on first use, so that the torch-free parts (smet.sparse.config, smet.sparse.errors) import fast
_LAZY = {"SparseLinear": "layer", "SMETOptimizer": "optimizer", "build_smet_optimizer": "optimizer",
         "SparseController": "topology", "SparsityConfig": "topology", "sparsify_model": "topology",
         "SlotStateObserver": "topology", "train_step": "step"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"smet.sparse.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def attach_sparsity(model, sparsity_cfg: Mapping[str, Any] | None, total_steps: int = 1, seed: int = 0,
                    init_std: float | None = None, device=None) -> SparseController | None:
    """Turn the target linear layers of ``model`` into compact sparse layers.

    Returns the controller that runs topology updates, or ``None`` for ``method: dense``.
    ``device``: see :func:`~smet.sparse.topology.sparsify_model` (``"meta"``: build without
    allocating; ``smet.build`` uses it).
    """
    from smet.sparse.topology import SparsityConfig, sparsify_model

    cfg = dict(sparsity_cfg or {})
    if cfg.get("method", "dense") == "dense":
        return None
    if init_std is None:
        init_std = getattr(getattr(model, "config", None), "init_std", 0.02)
    return sparsify_model(model, SparsityConfig.from_mapping(cfg), total_steps=total_steps, seed=seed,
                          init_std=init_std, device=device)
