"""Building a (sparse) LLaMA for training without ever allocating the dense sparse-layer weights.

:func:`build_training_model` builds ``LlamaForCausalLM`` on the ``meta`` device (shapes only),
replaces the target linears by compact ``SparseLinear`` layers still on meta, then
:func:`materialize` allocates everything directly on the target device:

1. ``model.to_empty(device)``: uninitialised storage for the compact ``values`` / ``idx`` and the
   remaining dense parameters (embedding, norms, LM head; every linear for a dense model);
2. the RoPE tables are rebuilt on the device;
3. each compact layer draws its mask and values (``smet.sparse.topology.init_sparse_layers``):
   CPU generators on CPU (the same bits as the classic CPU build), a CUDA generator seeded the
   same way on CUDA (``randperm`` of up to 70.8 M block ids per LLaMA-13B layer runs on the GPU).
   The initial masks therefore depend on the device they are initialised on;
4. the dense parameters get the model's own init (``LlamaForCausalLM.reset_parameters``: N(0,
   init_std) for the embedding and linears, ones for the norms) from the global RNG of that device.

Peak memory of a LLaMA-13B d = 0.25 build is the compact state itself (values + int32 ids) plus the
dense embedding/head; a dense model built this way is allocated on the device directly (a dense 13B
attempt OOMs on the GPU, not in host RAM). Note: the dense parameters' bits (embedding, norms, head;
all of a dense model) differ from the classic build (``build_model`` on CPU, then
``attach_sparsity``), where every module's constructor and then ``reset_parameters`` draw from the
global RNG, the replaced linears included; the distributions are the same.

:func:`build_training` is the one builder of a run: model + sparse controller + optimizer (+ LR
schedule) from a composed run config, the classic build or the meta build above; ``LMModule``, the
benchmark harness and the tests use it (or its pieces).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Mapping

import torch
from torch import nn


def build_meta(model_cfg: Mapping[str, Any], sparsity_cfg: Mapping[str, Any] | None, *, total_steps: int,
               seed: int = 0, vocab_size: int | None = None, max_seq_len: int | None = None):
    """(model, controller) with every tensor on ``meta``; the controller is None for a dense model."""
    from smet.models.llama import build_model
    from smet.sparse import attach_sparsity

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            model = build_model(model_cfg, vocab_size=vocab_size, max_seq_len=max_seq_len)
    ctrl = attach_sparsity(model, sparsity_cfg or {"method": "dense"}, total_steps=total_steps, seed=seed,
                           device="meta")
    return model, ctrl


@torch.no_grad()
def materialize(model: nn.Module, ctrl, device: torch.device | str) -> nn.Module:
    """Allocate a meta-built model on ``device`` and initialise it (see the module docstring).

    Tensors keep their meta dtype (fp32 as built); the default dtype is forced to fp32 while drawing
    so that a surrounding ``torch.set_default_dtype`` (Lightning's bf16-true init context) changes
    no bit of the init.
    """
    from smet.models.llama import RotaryEmbedding
    from smet.sparse.topology import init_sparse_layers

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        model.to_empty(device=device)
        for m in model.modules():
            if isinstance(m, RotaryEmbedding):
                m._build(int(m.cos.shape[0]), device)
        if ctrl is not None:
            init_sparse_layers(ctrl)
            for layer in ctrl.layers:
                layer.refresh_dense()
        model.reset_parameters()
    finally:
        torch.set_default_dtype(old)
    return model


def build_training_model(model_cfg: Mapping[str, Any], sparsity_cfg: Mapping[str, Any] | None, *, total_steps: int,
                         device: torch.device | str, seed: int = 0, vocab_size: int | None = None,
                         max_seq_len: int | None = None):
    """(model, controller) built on meta and materialised on ``device``; nothing dense is ever
    allocated for the sparse layers. Seed the global RNG (``torch.manual_seed``) first for a
    reproducible init of the dense parameters."""
    model, ctrl = build_meta(model_cfg, sparsity_cfg, total_steps=total_steps, seed=seed, vocab_size=vocab_size,
                             max_seq_len=max_seq_len)
    materialize(model, ctrl, device)
    return model, ctrl


def compute_dtype(precision: str) -> torch.dtype:
    """The compute dtype of a Lightning precision string (``32`` | ``bf16-mixed`` | ``bf16-true``):
    the dtype of the persistent dense copies of the compact layers."""
    return torch.bfloat16 if str(precision).startswith("bf16") else torch.float32


@dataclass
class Training:
    """A model ready to train (:func:`build_training`): its pieces and what to build next.

    ``controller``: the ``SparseController`` (None for a dense model). ``optimizer``: None until
    :meth:`build_optimizer` (``build_training`` calls it when given a device). ``optimizer_cfg`` /
    ``total_steps`` / ``precision``: from the run config.
    """

    model: nn.Module
    controller: Any | None
    optimizer: torch.optim.Optimizer | None
    optimizer_cfg: Mapping[str, Any]
    total_steps: int
    precision: str = "32"

    @property
    def lr_lambda(self) -> Callable[[int], float]:
        """Multiplier of the peak LR at (0-based) step: ``smet.optim.lr_lambda`` of the config."""
        from smet.optim import lr_lambda

        return lr_lambda(self.optimizer_cfg, self.total_steps)

    def scheduler(self, optimizer: torch.optim.Optimizer | None = None) -> torch.optim.lr_scheduler.LambdaLR:
        """The global LR schedule (``LambdaLR``, stepped once per optimizer step) of ``optimizer``
        (default: :attr:`optimizer`)."""
        opt = optimizer if optimizer is not None else self.optimizer
        if opt is None:
            raise ValueError("no optimizer yet: call build_optimizer() first")
        return torch.optim.lr_scheduler.LambdaLR(opt, self.lr_lambda)

    def build_optimizer(self, *, per_layer_groups: bool = False) -> torch.optim.Optimizer:
        """Build the optimizer (``smet.optim.build_optimizer``: AdamW for a dense model, the SMET
        optimizer attached to the controller otherwise) for the model where it is now; sets
        :attr:`optimizer`. Build it once the model sits on its training device (fused kernels)."""
        from smet.optim import build_optimizer

        self.optimizer = build_optimizer(self.model, self.optimizer_cfg, sparse=self.controller,
                                         per_layer_groups=per_layer_groups)
        return self.optimizer

    def materialize(self, device: torch.device | str) -> None:
        """Allocate and initialise a meta-built model (``build_training(..., defer=True)``) on ``device``."""
        materialize(self.model, self.controller, device)

    def autocast(self, device_type: str) -> ContextManager:
        """bf16 autocast for ``bf16-mixed``, else a no-op context (for :meth:`step` / plain loops)."""
        if self.precision == "bf16-mixed":
            return torch.autocast(device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(self, x: torch.Tensor, y: torch.Tensor, step: int, **kw):
        """One optimizer step: ``smet.sparse.train_step`` with this model, controller and optimizer."""
        from smet.sparse.step import train_step

        return train_step(self.model, self.controller, self.optimizer, x, y, step, **kw)


def fully_shard_llama(model: nn.Module, mesh=None, controller=None) -> nn.Module:
    """FSDP2 (``torch.distributed.fsdp.fully_shard``) over ``mesh`` (None: every rank of the default group):
    each decoder block is one unit, the root (embedding, final norm, head) another; ``loss`` is registered as a
    forward method (the chunked loss reads the head's weight without calling the head). Compact sparse layers
    shard unchanged (their ``values`` along the slots, the index replicated; docs/sharding.md). Checks that no
    block of a compact layer is split between two ranks' slices (``ValueError`` naming the layer)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    from smet.sparse import shard

    for block in model.model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    register_fsdp_forward_method(model, "loss")
    if controller is not None:
        for name, layer in controller.named_layers:
            try:
                shard.slot_range(layer.values, layer.block_size)
            except ValueError as e:
                raise ValueError(f"sparse layer {name!r}: {e}") from None
    return model


def build_training(cfg: Mapping[str, Any], device: torch.device | str | None, *, vocab_size: int | None = None,
                   defer: bool = False) -> Training:
    """Model + controller (+ optimizer) from a composed run config (a mapping with ``model``,
    ``sparsity``, ``optimizer``, ``trainer.precision`` / ``trainer.max_steps``, ``data.seq_len`` and
    ``seed``; a missing ``sparsity`` means dense).

    ``defer=False`` - the classic build: ``build_model`` on CPU, then ``attach_sparsity`` (every
    draw from the global RNG; seed it first, e.g. ``torch.manual_seed``/Lightning's
    ``seed_everything``), bit-identical to earlier versions. ``defer=True`` - built on the meta
    device (:func:`build_meta`) and, given a ``device``, materialised there (:func:`materialize`).

    The persistent dense copies follow the compute dtype of ``trainer.precision``
    (:func:`compute_dtype`), as in ``LMModule``. ``device=None`` leaves placement, precision
    conversion and the optimizer to the caller (Lightning: the strategy moves the model, the
    precision plugin converts it, ``configure_optimizers`` calls :meth:`Training.build_optimizer`;
    a deferred model is materialised with :meth:`Training.materialize`). Given a ``device``, the model
    is moved there (classic build), cast to bf16 for ``bf16-true``, and the optimizer is built.
    """
    scfg = cfg.get("sparsity") or {"method": "dense"}
    trainer = cfg["trainer"]
    total, seed = int(trainer["max_steps"]), int(cfg.get("seed", 0))
    precision = str(trainer.get("precision", "32"))
    max_seq_len = cfg["data"]["seq_len"]
    if defer:
        model, ctrl = build_meta(cfg["model"], scfg, total_steps=total, seed=seed, vocab_size=vocab_size,
                                 max_seq_len=max_seq_len)
        if device is not None:
            materialize(model, ctrl, device)
    else:
        from smet.models.llama import build_model
        from smet.sparse import attach_sparsity

        model = build_model(cfg["model"], vocab_size=vocab_size, max_seq_len=max_seq_len)
        ctrl = attach_sparsity(model, scfg, total_steps=total, seed=seed)
    if ctrl is not None:
        ctrl.set_dense_dtype(compute_dtype(precision))
    training = Training(model=model, controller=ctrl, optimizer=None, optimizer_cfg=cfg.get("optimizer") or {},
                        total_steps=total, precision=precision)
    if device is not None:
        if not defer:
            model.to(device)
        if precision == "bf16-true":
            model.to(dtype=torch.bfloat16)
        training.build_optimizer()
    return training
