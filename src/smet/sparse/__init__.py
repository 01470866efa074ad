"""SMET sparse core (pure PyTorch): compact sparse layers, topology updates, the SMET optimizer.

Usable in a plain PyTorch loop::

    ctrl = attach_sparsity(model, {"method": "smet", "density": 0.25}, total_steps=10_000)
    opt = build_smet_optimizer(model, {"lr": 2e-3, "regrowth_warmup_steps": 100, "lr_scaling": "inverse"}, ctrl)
    for step in range(1, 10_001):
        ctrl.before_step(step)
        loss = model.loss(x, y); loss.backward()
        opt.step(); opt.zero_grad(set_to_none=True)
        ctrl.after_step(step)          # prune/regrow when an update is due
"""

from __future__ import annotations

from typing import Any, Mapping

from smet.sparse.layer import SparseLinear
from smet.sparse.optimizer import SMETOptimizer, build_smet_optimizer
from smet.sparse.topology import SparseController, SparsityConfig, sparsify_model

__all__ = ["SparseLinear", "SMETOptimizer", "SparseController", "SparsityConfig", "attach_sparsity",
           "build_smet_optimizer", "sparsify_model"]


def attach_sparsity(model, sparsity_cfg: Mapping[str, Any] | None, total_steps: int = 1, seed: int = 0,
                    init_std: float | None = None, device=None) -> SparseController | None:
    """Turn the target linear layers of ``model`` into compact sparse layers.

    Returns the controller that runs topology updates, or ``None`` for ``method: dense``.
    ``device``: see :func:`~smet.sparse.topology.sparsify_model` (``"meta"``: build without
    allocating; ``smet.build`` uses it).
    """
    cfg = dict(sparsity_cfg or {})
    if cfg.get("method", "dense") == "dense":
        return None
    if init_std is None:
        init_std = getattr(getattr(model, "config", None), "init_std", 0.02)
    return sparsify_model(model, SparsityConfig.from_mapping(cfg), total_steps=total_steps, seed=seed,
                          init_std=init_std, device=device)
