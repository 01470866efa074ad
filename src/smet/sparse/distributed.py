"""Data-parallel (DDP) support for compact sparse layers (pure ``torch.distributed``).

Under DDP every rank holds a full replica. The compact ``values`` of a sparse layer are ordinary
fixed-shape parameters, so DDP's own gradient buckets reduce them like any other parameter; nothing
here touches them. What needs care is the *topology*: every rank must pick the same blocks at every
update, or the replicas silently drift apart (DDP would still average gradients slot by slot, but
slot i would mean a different weight on each rank). Masks are identical by construction:

* initialisation and random growth (SET / SMET) draw from generators seeded with
  (seed, "init" | "grow", update count, layer index): no rank-local randomness;
* pruning ranks the active blocks by sum |w| of the values right after the optimizer step; DDP
  averages the gradients before the step (an all-reduce gives the same bits on every rank) and the
  optimizer state is a deterministic function of those, so the values are bit-identical;
* gradient growth (RigL) scores inactive positions with the dense gradient computed inside each
  layer's backward. Those are LOCAL gradients under DDP, so on RigL update steps the controller
  installs :func:`grad_all_reduce_fn` as each layer's ``grad_reduce_fn``: the dense gradient is
  summed over ranks (in fp32) right there, one layer at a time, before its top-k is taken. The sum
  ranks positions exactly like the mean (the gradient a single process would see at the global
  batch). Every rank runs the same backward graph in the same order, so these collectives are
  issued in the same order on every rank, interleaved identically with DDP's asynchronous bucket
  all-reduces on the same process group: no deadlock (tested with gloo, ``tests/test_ddp.py``).
  With gradient accumulation only the final micro-batch of an update step scores (the one DDP
  synchronises; non-final micro-batches run under ``no_sync`` and issue no collective at all), so
  RigL ranks positions by the dense gradient of the last micro-batch of the global batch.

``sparsity.debug_check_masks`` adds a cheap guard: after each topology update (and at the start of
training) every rank all-gathers one int64 checksum per layer of (live count, ``idx``, ``values``)
and all ranks raise :class:`MaskMismatchError`, naming the first layer that differs. Under FSDP2
the values are sharded (one copy of each slot exists) and only the replicated index is compared.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.distributed as dist

_P = 2_147_483_647  # 2^31 - 1: checksum modulus (every intermediate fits in int64)
_CHUNK = 1 << 22  # elements hashed at a time (bounds the transient int64 tensors to 32 MiB)

# counts the dense-gradient all-reduces issued for growth scoring (tests and the DDP trace read it)
growth_reduce_calls = 0


class MaskMismatchError(RuntimeError):
    """Ranks disagree on a sparse layer's topology or values (``sparsity.debug_check_masks``)."""


def world_info(group=None) -> tuple[int, int]:
    """(world size, rank) of ``group`` (the default group) when torch.distributed is initialised,
    else (1, 0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group), dist.get_rank(group)
    return 1, 0


def grad_all_reduce_fn(group=None) -> Callable[[torch.Tensor], None] | None:
    """In-place SUM all-reduce over ``group`` for a layer's ``grad_reduce_fn``; ``None`` when not
    distributed (a single process needs no reduction)."""
    if world_info(group)[0] <= 1:
        return None

    def reduce_(t: torch.Tensor) -> None:
        global growth_reduce_calls
        growth_reduce_calls += 1
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)

    return reduce_


# ------------------------------------------------------------------------------------ checksums
def _int_bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of ``t`` as a signed integer tensor of the same element size (flat)."""
    t = t.detach().reshape(-1)
    if not t.is_floating_point():
        return t
    by_size = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}
    return t.contiguous().view(by_size[t.element_size()])


def tensor_checksum(t: torch.Tensor) -> torch.Tensor:
    """Position-sensitive int64 checksum of the exact bits of ``t`` (a 0-d tensor on its device).

    Equal tensors give equal checksums on every rank and device; a changed element or a swapped
    pair changes it with overwhelming probability. Cost: a few elementwise int64 ops, in chunks.
    """
    bits = _int_bits(t)
    total = torch.zeros((), dtype=torch.int64, device=bits.device)
    for start in range(0, bits.numel(), _CHUNK):
        x = bits[start:start + _CHUNK].long() % _P
        pos = torch.arange(start, start + x.numel(), device=bits.device, dtype=torch.int64) % _P
        h = (x * 1_000_003 + pos * 7_919 + 12_345) % _P
        h = (h * h + pos) % _P  # non-linear mix: < 2^62, no overflow
        total = (total + h.sum()) % _P
    return total


def layer_checksums(layers: Sequence) -> torch.Tensor:
    """(n_layers, 3) int64 on the layers' device: live count, checksum of ``idx`` (all slots, so
    the slot order counts: optimizer state is per slot; a ``rows`` index adds its row offsets),
    checksum of ``values`` (exact bits). Values sharded by FSDP2 (a DTensor) exist once, each slice
    on one rank, so they cannot drift apart: their field is 0 and the replicated index is what is
    compared."""
    from smet.sparse import shard

    rows = []
    for layer in layers:
        dev = layer.idx.device
        mask = tensor_checksum(layer.idx)
        row_ptr = getattr(layer, "row_ptr", None)
        if row_ptr is not None:
            mask = mask * 1000003 + tensor_checksum(row_ptr).to(dev)
        rows.append(torch.stack([torch.tensor(int(layer.n_live), dtype=torch.int64, device=dev),
                                 mask, _values_checksum(layer.values, shard).to(dev)]))
    return torch.stack(rows)


def _values_checksum(values: torch.Tensor, shard) -> torch.Tensor:
    if shard.is_sharded(values):
        return torch.zeros((), dtype=torch.int64, device=shard.local(values).device)
    return tensor_checksum(values)


_FIELDS = ("live count", "mask (idx)", "values")


def check_masks_identical(named_layers: Sequence[tuple[str, object]], when: str = "", group=None) -> None:
    """All-gather :func:`layer_checksums` and raise :class:`MaskMismatchError` on every rank if any
    rank differs from rank 0 (one collective; a no-op outside a multi-process group)."""
    world, _ = world_info(group)
    if world <= 1 or not named_layers:
        return
    local = layer_checksums([layer for _, layer in named_layers])
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local, group=group)
    table = torch.stack(gathered).cpu()  # (world, n_layers, 3): the same table on every rank
    for li, (name, _) in enumerate(named_layers):
        for fi, field in enumerate(_FIELDS):
            col = table[:, li, fi]
            bad = [r for r in range(world) if col[r] != col[0]]
            if bad:
                vals = ", ".join(f"rank {r}: {int(col[r])}" for r in [0, *bad])
                raise MaskMismatchError(
                    f"sparse layer {name!r}: {field} differs across DDP ranks{' ' + when if when else ''} "
                    f"(checksums {vals}). Ranks must pick identical topologies; see smet.sparse.distributed.")
