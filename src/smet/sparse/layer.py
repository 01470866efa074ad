"""Compact sparse linear layer: only the active weights are stored.

A layer of shape (out, in) is cut into 1-D blocks of ``b`` consecutive elements of a row (b = 1 is
unstructured). ``capacity`` block slots hold the active blocks:

* ``values``  - trainable parameter, shape (capacity * b,), the active weights, slot-major;
* ``idx``     - the index of the slots, one of (``index``):

  - ``flat`` (default): int32 buffer, shape (capacity,), flat block id of each slot
    (``row * (in / b) + col // b``), slots in any order;
  - ``rows``: int16 (stored as the uint8 buffer ``cols`` of 2 x capacity bytes, since NCCL and gloo
    broadcast no int16), shape (capacity,), the column block (``col // b``) of each slot, with
    the live slots sorted by (row, column) and ``row_ptr`` (int32, out + 1) the CSR offsets: row
    ``r`` owns slots ``[row_ptr[r], row_ptr[r + 1])``. 2 bytes per slot instead of 4 (issue 16);
    topology updates re-sort the slots (:meth:`SparseLinear.set_block_ids` returns the permutation
    the optimizer state follows). Transient materialisation only; rows up to 32767 blocks.

  :meth:`SparseLinear.block_ids` gives the flat int64 block ids of the live slots either way;
* ``n_live``  - slots [0, n_live) are active; slots past it (only under a decreasing density
  schedule) hold zeros and receive zero gradient.

Materialisation (``materialize``):

* ``transient``  - nothing dense at rest. Forward scatters the active values into a dense weight in
  the compute dtype, runs the GEMM and frees it; backward rebuilds it (it is not saved) and gathers
  the dense weight gradient at the active positions, so ``values.grad`` has the compact shape.
* ``persistent`` - a dense compute-dtype copy (buffer ``dense``, not saved in state dicts) is kept
  equal to the active values: the SMET optimizer writes the new values into it after each step,
  topology updates zero the pruned positions. Forward/backward are plain GEMMs plus one gather.

Either way the dense weight gradient of a layer lives only inside that layer's backward.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from smet.sparse import kernels

INDEX_DTYPE = torch.int32
ROWS_INDEX_DTYPE = torch.int16
INDEX_KINDS = ("flat", "rows")


def element_index(idx: torch.Tensor, block_size: int) -> torch.Tensor:
    """Flat element positions (int64) of the blocks in ``idx`` (block ids), slot-major."""
    idx = idx.long()
    if block_size == 1:
        return idx
    offs = torch.arange(block_size, device=idx.device)
    return (idx.unsqueeze(1) * block_size + offs).reshape(-1)


class _TransientFn(torch.autograd.Function):
    """y = x @ W^T with W = scatter(values at idx) built in forward and again in backward."""

    @staticmethod
    def forward(ctx, x, values, bidx, layer):
        shape = (layer.out_features, layer.in_features)
        w = layer._scatter_dense(values, bidx, x.dtype)
        y = F.linear(x, w.view(shape))
        ctx.save_for_backward(x, values, bidx)
        ctx.layer = layer
        return y

    @staticmethod
    def backward(ctx, gy):
        x, values, bidx = ctx.saved_tensors
        layer = ctx.layer
        shape = (layer.out_features, layer.in_features)
        gx = gvals = None
        if ctx.needs_input_grad[0]:
            w = layer._scatter_dense(values, bidx, gy.dtype)
            gx = gy @ w.view(shape)
            del w
        if ctx.needs_input_grad[1]:
            gw = gy.reshape(-1, shape[0]).t() @ x.reshape(-1, shape[1])
            gvals = layer._gather_grad(gw, bidx, values)
            layer._maybe_record_growth(gw)
            del gw
        return gx, gvals, None, None


class _PersistentFn(torch.autograd.Function):
    """y = x @ D^T with D the persistent dense copy (or its cast to the compute dtype); the weight
    gradient is gathered at the active slots."""

    @staticmethod
    def forward(ctx, x, values, bidx, w, layer):
        y = F.linear(x, w)
        ctx.save_for_backward(x, values, bidx, w)
        ctx.layer = layer
        return y

    @staticmethod
    def backward(ctx, gy):
        x, values, bidx, w = ctx.saved_tensors
        layer = ctx.layer
        shape = (layer.out_features, layer.in_features)
        gx = gvals = None
        if ctx.needs_input_grad[0]:
            gx = gy @ w
        if ctx.needs_input_grad[1]:
            gw = gy.reshape(-1, shape[0]).t() @ x.reshape(-1, shape[1])
            gvals = layer._gather_grad(gw, bidx, values)
            layer._maybe_record_growth(gw)
            del gw
        return gx, gvals, None, None, None


class SparseLinear(nn.Module):
    """Drop-in replacement for ``nn.Linear(in, out, bias=False)`` storing only active weights."""

    def __init__(self, in_features: int, out_features: int, n_active_blocks: int, block_size: int = 1,
                 materialize: str = "transient", capacity: int | None = None, dense_dtype: torch.dtype | None = None,
                 device=None, dtype=None, *, name: str = "", final_count: int | None = None, index: str = "flat"):
        """``n_active_blocks``: live blocks now; ``capacity``: block slots (default: ``n_active_blocks``);
        ``final_count``: the live blocks the density schedule ends at (default: ``n_active_blocks``;
        ``SparseController`` interpolates between ``capacity`` and it); ``name``: the module path
        in the model (error messages, DDP mask checks); ``dense_dtype``: dtype of the persistent
        compute copy (default: the values' dtype; see :meth:`set_dense_dtype`); ``index``: ``flat``
        or ``rows`` (module docstring)."""
        super().__init__()
        if block_size < 1 or in_features % block_size:
            raise ValueError(f"block_size {block_size} does not divide the row length {in_features}")
        if materialize not in ("transient", "persistent"):
            raise ValueError(f"materialize must be 'transient' or 'persistent', got {materialize!r}")
        if index not in INDEX_KINDS:
            raise ValueError(f"index must be one of {INDEX_KINDS}, got {index!r}")
        if index == "rows" and materialize != "transient":
            raise ValueError("index='rows' needs materialize='transient' (a persistent dense copy outweighs the "
                             "2 bytes it saves per slot)")
        if index == "rows" and in_features // block_size > torch.iinfo(ROWS_INDEX_DTYPE).max:
            raise ValueError(f"index='rows' holds at most {torch.iinfo(ROWS_INDEX_DTYPE).max} blocks per row; "
                             f"this layer has {in_features // block_size}")
        self.index = index
        self.in_features, self.out_features = in_features, out_features
        self.block_size = block_size
        self.n_blocks_total = out_features * in_features // block_size
        capacity = n_active_blocks if capacity is None else capacity
        if not 0 < n_active_blocks <= capacity <= self.n_blocks_total:
            raise ValueError(f"need 0 < active ({n_active_blocks}) <= capacity ({capacity}) <= blocks ({self.n_blocks_total})")
        self.capacity = capacity
        self.n_live = n_active_blocks
        self.final_count = int(n_active_blocks if final_count is None else final_count)
        self.name = name
        self.materialize = materialize
        factory = {"device": device, "dtype": dtype}
        self.values = nn.Parameter(torch.empty(capacity * block_size, **factory))
        if index == "rows":  # int16 ids stored as bytes: NCCL and gloo broadcast no int16 (DDP syncs buffers)
            self.register_buffer("cols", torch.zeros(2 * capacity, dtype=torch.uint8, device=device))
            self.register_buffer("row_ptr", torch.zeros(out_features + 1, dtype=torch.int32, device=device))
        else:
            self.register_buffer("idx", torch.zeros(capacity, dtype=INDEX_DTYPE, device=device))
            self.register_buffer("row_ptr", None)
        self.dense: torch.Tensor | None = None
        self._dense_dtype = dense_dtype
        self.slot_perm: torch.Tensor | None = None  # rows index: the last re-sort (topology.follow_sort)
        # set by the topology controller on steps whose gradient ranks growth candidates (RigL)
        self.growth_request: int = 0
        self.growth_candidates: torch.Tensor | None = None
        self.grad_reduce_fn: Callable[[torch.Tensor], None] | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: module.refresh_dense())

    # ------------------------------------------------------------------ basics
    @property
    def idx(self) -> torch.Tensor:
        """The slots' index: the int32 ``idx`` buffer (``flat``), or the int16 view of the ``cols``
        byte buffer (``rows``: column blocks, 2 bytes per slot)."""
        bufs = self.__dict__.get("_buffers", {})
        if "idx" in bufs:
            return bufs["idx"]
        if "cols" in bufs:
            return bufs["cols"].view(ROWS_INDEX_DTYPE)
        raise AttributeError("idx")

    @property
    def index_buffer(self) -> torch.Tensor:
        """The registered tensor behind :attr:`idx` (what state dicts, DDP and memory accounting see)."""
        return self._buffers["idx"] if "idx" in self._buffers else self._buffers["cols"]

    @property
    def density(self) -> float:
        return self.n_live / self.n_blocks_total

    @property
    def final_density(self) -> float:
        """Density at the end of the density schedule (``final_count`` / blocks); sets the layer's LR scale."""
        return self.final_count / self.n_blocks_total

    @property
    def n_active(self) -> int:
        """Active weights (elements)."""
        return self.n_live * self.block_size

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, density={self.density:.4f}, "
                f"block={self.block_size}, active={self.n_active}, materialize={self.materialize}")

    def live_element_index(self) -> torch.Tensor:
        """Flat int64 element positions of the live weights (tools and tests; not the hot path)."""
        return element_index(self.block_ids(), self.block_size)

    def _live_blocks(self) -> torch.Tensor:
        """What the autograd functions get as the index: a view of ``idx`` (flat ids, or the column
        blocks of a row-sorted index), nothing allocated."""
        return self.idx[: self.n_live]

    def block_ids(self) -> torch.Tensor:
        """Flat block ids (int64, ``row * (in / b) + col // b``) of the live slots, in slot order."""
        live = self.idx[: self.n_live].long()
        if self.index == "flat":
            return live
        counts = (self.row_ptr[1:] - self.row_ptr[:-1]).long()
        rows = torch.repeat_interleave(torch.arange(self.out_features, device=live.device), counts,
                                       output_size=self.n_live)
        return rows * (self.in_features // self.block_size) + live

    @torch.no_grad()
    def set_block_ids(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Make ``ids`` (flat block ids, distinct) the live slots' blocks, ``n_live = len(ids)``; the
        values stay with their slots. ``flat``: slot i gets ``ids[i]``, returns None. ``rows``: the
        slots are sorted by block id, values included, and the permutation is returned (int64: new
        slot i holds what slot ``perm[i]`` held), for the optimizer state to follow
        (``SMETOptimizer.compact_slots(p, perm, n_live)``)."""
        n = ids.numel()
        self.idx.zero_()
        self.n_live = n
        if self.index == "flat":
            self.idx[:n] = ids.to(INDEX_DTYPE)
            return None
        ids, perm = torch.sort(ids.long())
        nb = self.in_features // self.block_size
        self.idx[:n] = (ids % nb).to(ROWS_INDEX_DTYPE)
        counts = torch.bincount(ids // nb, minlength=self.out_features)
        self.row_ptr[0] = 0
        self.row_ptr[1:] = torch.cumsum(counts, 0).to(torch.int32)
        v = self.values.detach().view(self.capacity, self.block_size)
        v[:n] = v[:n][perm]
        return perm

    def _live_values(self) -> torch.Tensor:
        return self.values[: self.n_active].view(self.n_live, self.block_size)

    @torch.no_grad()
    def init_random(self, std: float, generator: torch.Generator | None = None) -> None:
        """Pick ``n_live`` distinct blocks uniformly at random, values ~ N(0, std).

        Same distribution as a dense N(0, std) init followed by a uniform random mask (the
        reference behaviour), without allocating the dense weight.
        """
        dev = self.idx.device
        gen_dev = generator.device if generator is not None else torch.device("cpu")
        perm = torch.randperm(self.n_blocks_total, generator=generator, device=gen_dev)[: self.n_live]
        chosen = perm.sort().values.to(dev)
        self.set_block_ids(chosen)
        vals = torch.randn(self.n_live * self.block_size, generator=generator, device=gen_dev) * std
        self.values.zero_()
        self.values[: self.n_live * self.block_size] = vals.to(device=dev, dtype=self.values.dtype)
        self.refresh_dense()

    @torch.no_grad()
    def load_from_dense(self, weight: torch.Tensor, block_ids: torch.Tensor) -> None:
        """Take the given blocks' values from a dense (out, in) weight (tests, conversion)."""
        n = block_ids.numel()
        if self.index == "rows":
            block_ids = block_ids.long().sort().values
        self.set_block_ids(block_ids)
        self.values.zero_()
        self.values[: n * self.block_size] = weight.reshape(-1)[element_index(block_ids, self.block_size)].to(self.values)
        self.refresh_dense()

    @torch.no_grad()
    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        w = torch.zeros(self.n_blocks_total, self.block_size, dtype=dtype or self.values.dtype, device=self.values.device)
        w[self.block_ids()] = self._live_values().to(w.dtype)
        return w.view(self.out_features, self.in_features)

    @torch.no_grad()
    def mask(self) -> torch.Tensor:
        m = torch.zeros(self.n_blocks_total, self.block_size, dtype=torch.bool, device=self.idx.device)
        m[self.block_ids()] = True
        return m.view(self.out_features, self.in_features)

    # ---------------------------------------------------------- persistent copy
    def set_dense_dtype(self, dtype: torch.dtype | None) -> None:
        """Dtype of the persistent compute copy (None: the values' dtype); rebuilds the copy."""
        self._dense_dtype = dtype
        self.refresh_dense()

    @torch.no_grad()
    def refresh_dense(self) -> None:
        """(Re)build the persistent dense copy from the compact values (no-op when transient)."""
        if self.materialize != "persistent" or self.values.is_meta:
            self.dense = None
            return
        dtype = self._dense_dtype or self.values.dtype
        w = torch.zeros(self.n_blocks_total, self.block_size, dtype=dtype, device=self.values.device)
        w[self._live_blocks()] = self._live_values().to(dtype)
        self.dense = w.view(self.out_features, self.in_features)

    @torch.no_grad()
    def sync_dense_values(self) -> None:
        """Write the current active values into the persistent copy (after an optimizer step)."""
        if self.dense is not None:
            self.dense.view(self.n_blocks_total, self.block_size)[self._live_blocks()] = self._live_values().to(self.dense.dtype)

    @torch.no_grad()
    def zero_dense_blocks(self, blocks: torch.Tensor) -> None:
        """Re-zero pruned blocks of the persistent copy (topology updates only)."""
        if self.dense is not None:
            self.dense.view(self.n_blocks_total, self.block_size)[blocks] = 0

    def _apply(self, fn, recurse=True):  # keep the persistent copy on the module's device/dtype policy
        out = super()._apply(fn, recurse)
        if self.dense is not None:
            self.refresh_dense()
        return out

    # -------------------------------------------------------------- autograd
    def _scatter_dense(self, values: torch.Tensor, bidx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Dense (n_blocks, b) weight with the active blocks written in (int32 ids, no int64 copy)."""
        b = self.block_size
        if self.index == "rows":
            if kernels.usable(values):
                return kernels.scatter_rows(values, bidx, self._buffers["row_ptr"], self.out_features,
                                            self.in_features, b, dtype).view(self.n_blocks_total, b)
            bidx = self.block_ids()
        elif kernels.usable(values):
            return kernels.scatter_dense(values, bidx, self.n_blocks_total, b, dtype)
        w = torch.zeros(self.n_blocks_total, b, dtype=dtype, device=values.device)
        n = bidx.numel()
        w[bidx] = values[: n * b].view(n, b).to(dtype)
        return w

    def _gather_grad(self, gw: torch.Tensor, bidx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        if self.index == "rows":
            if kernels.usable(gw):
                return kernels.gather_rows(gw.view(self.out_features, self.in_features), bidx,
                                           self._buffers["row_ptr"], values.numel(), bidx.numel(), self.block_size,
                                           values.dtype)
            bidx = self.block_ids()
        elif kernels.usable(gw):
            return kernels.gather_grad(gw, bidx, values.numel(), self.block_size, values.dtype)
        g = gw.reshape(self.n_blocks_total, self.block_size).index_select(0, bidx).reshape(-1).to(values.dtype)
        if g.numel() == values.numel():
            return g
        out = torch.zeros_like(values)
        out[: g.numel()] = g
        return out

    def _maybe_record_growth(self, gw: torch.Tensor) -> None:
        """On RigL update steps: remember the ``growth_request`` inactive blocks of largest |grad|.

        ``gw`` is this layer's dense weight gradient (a temporary of the backward; ``values.grad``
        was already gathered from it). Under DDP ``grad_reduce_fn`` sums it over ranks first, in
        fp32 and in place, so every rank ranks the same (global) gradient; see
        ``smet.sparse.distributed``. At most one fp32 dense copy is alive (none for fp32 ``gw``).
        """
        if self.growth_request <= 0:
            return
        score = gw.detach().float()  # gw itself when fp32: it is not used after this call
        if self.grad_reduce_fn is not None:
            self.grad_reduce_fn(score)
        score = score.abs_()
        if self.block_size > 1:
            score = score.view(-1, self.block_size).sum(1)
        score = score.reshape(-1)
        score[self.block_ids()] = -math.inf
        self.growth_candidates = torch.topk(score, self.growth_request, sorted=False).indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bidx = self._live_blocks()  # a view of the int32 buffer: nothing allocated, nothing copied
        dev = x.device.type
        if torch.is_autocast_enabled(dev):
            x = x.to(torch.get_autocast_dtype(dev))
            with torch.autocast(dev, enabled=False):
                return self._apply_fn(x, bidx)
        return self._apply_fn(x, bidx)

    def _apply_fn(self, x: torch.Tensor, bidx: torch.Tensor) -> torch.Tensor:
        if self.materialize == "persistent":
            if self.dense is None or self.dense.device != x.device:
                self.refresh_dense()
            w = self.dense if self.dense.dtype == x.dtype else self.dense.to(x.dtype)
            return _PersistentFn.apply(x, self.values, bidx, w, self)
        return _TransientFn.apply(x, self.values, bidx, self)
