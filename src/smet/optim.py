"""Optimizer construction and the global learning-rate schedule (pure PyTorch)."""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
from torch import nn

from smet.errors import SmetConfigError


def warmup_steps(ocfg: Mapping, total_steps: int) -> int:
    if ocfg.get("warmup_steps") is not None:
        return int(ocfg["warmup_steps"])
    return int(round(float(ocfg.get("warmup_fraction", 0.0)) * total_steps))


def lr_lambda(ocfg: Mapping, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak LR at optimizer step ``step`` (0-based, as LambdaLR counts).

    ``cosine``: linear warm-up over ``warmup_steps`` (or ``warmup_fraction`` x total), then cosine
    decay to ``min_lr_ratio`` x peak at ``total_steps`` (the paper: 5 % warm-up, 0.1).
    ``constant``: warm-up then flat. ``linear``: warm-up then linear decay to ``min_lr_ratio``.
    """
    kind = ocfg.get("schedule", "cosine")
    if kind not in ("cosine", "linear", "constant"):
        raise SmetConfigError("optimizer.schedule", f"unknown schedule {kind!r} (cosine | linear | constant)")
    warm = warmup_steps(ocfg, total_steps)
    floor = float(ocfg.get("min_lr_ratio", 0.1))
    total = max(int(total_steps), 1)

    def f(step: int) -> float:
        if warm > 0 and step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        progress = min(max((step - warm) / max(total - warm, 1), 0.0), 1.0)
        if kind == "linear":
            return floor + (1.0 - floor) * (1.0 - progress)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices, never norms/biases (the usual AdamW split)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, ocfg: Mapping, sparse=None, *, per_layer_groups: bool = False) -> torch.optim.Optimizer:
    """AdamW for a dense model; the SMET optimizer when the model has compact sparse layers
    (``per_layer_groups``: one param group per sparse layer, for DeepSpeed ZeRO: ``smet.zero``)."""
    name = ocfg.get("name", "adamw")
    if name != "adamw":
        raise SmetConfigError("optimizer.name", f"unknown optimizer {name!r} (adamw)")
    lr = float(ocfg["lr"])
    betas = tuple(float(b) for b in ocfg.get("betas", (0.9, 0.999)))
    eps = float(ocfg.get("eps", 1e-8))
    wd = float(ocfg.get("weight_decay", 0.0))
    if sparse is not None:
        from smet.sparse.optimizer import build_smet_optimizer

        return build_smet_optimizer(model, ocfg, sparse, per_layer_groups=per_layer_groups)
    on_cuda = any(p.is_cuda for p in model.parameters())
    if ocfg.get("fused_backward"):
        # the same AdamW (PyTorch's functional one) run parameter by parameter inside backward
        from smet.sparse.optimizer import SMETOptimizer

        return SMETOptimizer(param_groups(model, wd), lr=lr, betas=betas, eps=eps, weight_decay=wd,
                             fused_backward=True, fused=on_cuda or None)
    return torch.optim.AdamW(param_groups(model, wd), lr=lr, betas=betas, eps=eps, fused=on_cuda or None)
