"""Compact values sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``): local slices and slot offsets.

Under FSDP2 a ``SparseLinear``'s ``values`` parameter is a ``Shard(0)`` DTensor between forward/backward passes:
each rank holds a contiguous slice of the slots (the index buffers stay replicated). The SMET optimizer updates
the local slice and keeps its per-slot state for that slice only; the controller scores the gathered values and
writes regrowth into the local slice. This module is what both need: the local tensor, where the slice starts
(in slots) and how many slots it holds. Plain tensors are their own "slice" at offset 0, so the single-process
and DDP paths go through the same calls unchanged. Scope: see docs/sharding.md (constant density, flat index,
transient mode, slot-aligned shards).
"""

from __future__ import annotations

import torch


def is_sharded(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor"


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (sharing its storage: in-place updates reach the DTensor), else ``t``."""
    return t.to_local() if is_sharded(t) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (an all-gather for a DTensor), else ``t``."""
    return t.full_tensor() if is_sharded(t) else t


def slot_range(p: torch.Tensor, block_size: int) -> tuple[int, int]:
    """(first slot, number of slots) of ``p``'s local slice; ``(0, all)`` for a plain tensor. Raises
    ``ValueError`` when the slice does not start and end on a block boundary (a block split over two ranks)."""
    if not is_sharded(p):
        return 0, p.numel() // block_size
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    n, off = int(shape[0]), int(offset[0])
    if off % block_size or n % block_size:
        raise ValueError(f"sharded compact values: the local slice [{off}, {off + n}) splits blocks of "
                         f"{block_size} elements (choose a capacity x block_size divisible by the shard count "
                         f"x block_size)")
    return off // block_size, n // block_size


def local_slots(slots: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """The global slot ids ``slots`` that fall in ``[first, first + count)``, as local ids."""
    keep = (slots >= first) & (slots < first + count)
    return slots[keep] - first


def as_sharded_like(t: torch.Tensor, p: torch.Tensor, global_len: int) -> torch.Tensor:
    """``t``, a rank-local slice of per-slot (or per-element) state of the sharded parameter ``p``, as a
    ``Shard(0)`` DTensor of global length ``global_len`` on ``p``'s mesh: what ``torch.distributed.checkpoint``
    needs to save every rank's slice and to reshard it on load (a plain tensor would be taken as replicated and
    saved once). The local slices follow ``torch.chunk``'s split exactly when :func:`slot_range` holds."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(t, p.device_mesh, p.placements, run_check=False, shape=torch.Size([global_len]),
                              stride=(1,))
