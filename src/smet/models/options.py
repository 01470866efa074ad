"""Model options that need no torch: the activation-checkpointing and loss settings of ``model.*``.

``smet.models.llama`` reads them; ``smet.config`` validates with them (and re-exports them); the names
themselves live once in the core (``smet.sparse.config``), whose memory model takes them too.
"""

from __future__ import annotations

from typing import Mapping

from smet.errors import SmetConfigError
from smet.sparse.config import CHECKPOINT_MODES, LOSS_IMPLS, POINTWISE_IMPLS  # noqa: F401  (re-exported)


def checkpointing_of(model: Mapping) -> tuple[str, int]:
    """The activation checkpointing a model config asks for: ``(mode, every)``.

    ``model.activation_checkpointing``: ``none`` | ``block`` (a whole decoder block) | ``mlp`` (the
    post-attention norm + MLP) | ``attention`` (the input norm + attention), or null: taken from the
    older ``model.gradient_checkpointing`` (true = ``block``, false = ``none``). ``checkpoint_every``
    k: blocks 0, k, 2k, ... are checkpointed. ``gradient_checkpointing: true`` with a mode other than
    ``block`` is refused (:class:`SmetConfigError` naming ``model.activation_checkpointing``).
    """
    gc = model.get("gradient_checkpointing", False)
    if gc is not None and not isinstance(gc, bool):
        raise SmetConfigError("model.gradient_checkpointing", f"must be true or false, got {gc!r}")
    mode = model.get("activation_checkpointing")
    if mode is not None and mode not in CHECKPOINT_MODES:
        raise SmetConfigError("model.activation_checkpointing",
                              f"unknown value {mode!r}; choose one of {', '.join(CHECKPOINT_MODES)} (or null: "
                              "model.gradient_checkpointing decides)")
    every = model.get("checkpoint_every", 1)
    every = 1 if every is None else every
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise SmetConfigError("model.checkpoint_every", f"must be an integer >= 1 (checkpoint blocks 0, k, 2k, "
                                                        f"...), got {every!r}")
    if mode is None:
        return ("block" if gc else "none"), every
    if gc and mode != "block":
        raise SmetConfigError("model.activation_checkpointing",
                              f"{mode!r} contradicts model.gradient_checkpointing=true (the older alias of "
                              f"activation_checkpointing=block); set model.gradient_checkpointing=false")
    return mode, every
