"""The reference training step of a plain PyTorch loop (pure PyTorch; no other smet import).

One optimizer step number ``step`` (1-based) of a model with (or without) compact sparse layers::

    controller.before_step(step)              # RigL: request gradient scoring on update steps
    loss = model.loss(x, y)                   # forward (under ``autocast`` when given)
    loss.backward()
    optimizer.step()
    after_optimizer_step()                    # optional hook: e.g. measure static memory, grads alive
    optimizer.zero_grad(set_to_none=True)
    info = controller.after_step(step)        # prune/regrow when an update is due

:func:`train_step` is that sequence; every plain loop of the project (tests, benchmarks, the
example in ``smet.sparse``) calls it rather than retyping it. The Lightning path runs the same
calls from its hooks (``smet.lightning.callbacks.SparsityCallback``). One micro-batch per step:
with gradient accumulation call ``before_step(step, score_growth=...)`` per micro-batch yourself.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import torch

# profiler ranges of the three phases (``phase=torch.profiler.record_function`` names them so)
PHASES = ("smet/forward", "smet/backward", "smet/optimizer")


def train_step(model: Any, controller: Any, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, step: int, *, autocast: ContextManager | None = None,
               phase: Callable[[str], ContextManager] | None = None,
               after_optimizer_step: Callable[[], None] | None = None,
               zero_grad: bool = True) -> tuple[torch.Tensor, dict[str, float] | None]:
    """Run optimizer step ``step`` on batch ``(x, y)``; returns ``(loss, info)``.

    ``model``: a module with ``loss(x, y)`` (``LlamaForCausalLM``) or any callable ``(x, y) -> loss``.
    ``controller``: the ``SparseController`` of the model, or None (dense). ``autocast``: a context
    manager entered around the forward only (e.g. ``torch.autocast("cuda", dtype=torch.bfloat16)``).
    ``phase``: ``name -> context manager`` wrapped around the forward, backward and optimizer step,
    named as :data:`PHASES` (``torch.profiler.record_function`` gives profiler ranges).
    ``after_optimizer_step``: called right after ``optimizer.step()``, before the gradients are
    dropped. ``zero_grad=False`` keeps the gradients (e.g. to measure them after the last step).
    ``loss``: the forward's loss (backward already done); ``info``: the topology update's metrics
    (``SparseController.after_step``), None when no update ran or the model is dense.
    """
    loss_fn = model.loss if hasattr(model, "loss") else model
    ranges = phase if phase is not None else (lambda name: contextlib.nullcontext())
    if controller is not None:
        controller.before_step(step)
    with ranges(PHASES[0]), (autocast if autocast is not None else contextlib.nullcontext()):
        loss = loss_fn(x, y)
    with ranges(PHASES[1]):
        loss.backward()
    with ranges(PHASES[2]):
        optimizer.step()
    if after_optimizer_step is not None:
        after_optimizer_step()
    if zero_grad:
        optimizer.zero_grad(set_to_none=True)
    info = controller.after_step(step) if controller is not None else None
    return loss, info
