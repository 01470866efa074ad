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
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

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
