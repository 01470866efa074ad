"""Sparsifying a model and updating its topology (prune by magnitude, regrow random or by gradient).

``SparseController`` owns the compact layers of one model. The training loop calls
``before_step(s)`` before the forward/backward of the optimizer step that will be number ``s``
(1-based) and ``after_step(s)`` right after that optimizer step. At update steps (every
``update_interval`` steps inside [update_start, update_stop)) each layer, one at a time:

1. prunes the ``n_drop = round(p(s) * k)`` active blocks of smallest sum |w| (plus any extra blocks a
   decreasing density schedule removes),
2. regrows as many at positions that were inactive before this update (so positions pruned in this
   round are never regrown in it): uniformly at random (SET, seeded identically on every rank) or
   the largest |dense gradient| of step ``s`` (RigL; scored inside that layer's backward, so no set of
   dense gradients is ever alive at once),
3. writes them into the freed slots with value 0 and tells the optimizer to reset their state.

One layer's update is a sequence of named steps (``SparseController._update_layer``):
:func:`select_prune` -> :func:`select_grow` -> :func:`rewrite_slots` -> :func:`notify_optimizer`
-> zero the pruned blocks of the persistent dense copy. The optimizer is told about rewritten
slots through the small :class:`SlotStateObserver` interface (``SparseController.attach_optimizer``;
``smet.sparse.optimizer.SMETOptimizer`` implements it).

Counts per layer are constant under a constant density; tensor shapes never change.

Under DDP every rank runs the same controller and picks the same topology by construction (seeded
randomness, bit-identical values after the averaged step, RigL scores from the dense gradient summed
over ranks): see ``smet.sparse.distributed``; ``debug_check_masks`` verifies it after each update.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, runtime_checkable

import torch
from torch import nn

from smet.sparse import distributed as sdist
from smet.sparse import shard
from smet.sparse.layer import SparseLinear
from smet.sparse.schedules import DensitySchedule, DropSchedule, active_blocks, erk_densities

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class SparsityConfig:
    method: str = "smet"
    density: float = 0.5
    block_size: int = 1
    materialize: str = "transient"
    index: str = "flat"  # flat: int32 block id per slot | rows: int16 column block, slots sorted by row
    allocation: str = "uniform"
    erk_power_scale: float = 1.0
    targets: tuple = DEFAULT_TARGETS
    growth: str = "random"  # random | gradient | none (static mask)
    update_interval: int = 100
    update_start: int | None = None  # default: update_interval
    update_stop: int | None = None  # default: total steps (exclusive)
    drop_fraction: float = 0.2
    drop_fraction_end: float = 0.005
    drop_schedule: str = "cosine"
    density_schedule: dict = field(default_factory=lambda: {"kind": "constant"})
    spike_window: int = 10
    debug_check_masks: bool = False  # DDP: all-gather per-layer checksums after each update, raise on mismatch

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> "SparsityConfig":
        names = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in dict(d).items() if k in names}
        if "targets" in kw:
            kw["targets"] = tuple(kw["targets"])
        if kw.get("density_schedule") is None:
            kw.pop("density_schedule", None)
        else:
            kw["density_schedule"] = dict(kw["density_schedule"])
        return cls(**kw)


def _seed_for(*parts: Any) -> int:
    h = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


@runtime_checkable
class SlotStateObserver(Protocol):
    """What the controller tells the optimizer when a topology update rewrites a layer's slots.

    ``p`` is the layer's ``values`` parameter; slot ``i`` holds elements ``[i * b, (i + 1) * b)``.
    ``smet.sparse.optimizer.SMETOptimizer`` implements it; attach one with
    :meth:`SparseController.attach_optimizer`.
    """

    def reset_slots(self, p: torch.nn.Parameter, slots: torch.Tensor) -> None:
        """Constant count: blocks were regrown in place into ``slots`` (int64): reset their state."""

    def compact_slots(self, p: torch.nn.Parameter, keep_slots: torch.Tensor, n_live: int) -> None:
        """Density change: survivors ``keep_slots`` moved to the front in order; the slots after them up
        to ``n_live`` are newly grown (zero state), the rest are free (zero)."""

    def measure_next_step(self, p: torch.nn.Parameter, regrown_slots: torch.Tensor) -> None:
        """Record update magnitudes of the regrown vs the mature slots at the next optimizer step.
        ``regrown_slots``: the slot ids (int64), or a :func:`pack_slots` bit mask (uint8) over the
        layer's slots, which the controller passes (1 bit per slot instead of 8 bytes per regrown one)."""


class SparseController:
    """Topology updates of the compact layers of one model (see the module docstring).

    ``layers``: (module path, layer) in model order; ``init_std``: std of the initial values
    (:func:`init_sparse_layers`); ``non_sparse_params``: parameters outside the compact layers and
    the embedding (for :meth:`active_params_excluding_embedding`; :func:`sparsify_model` counts them).
    """

    def __init__(self, layers: list[tuple[str, SparseLinear]], cfg: SparsityConfig, total_steps: int, seed: int = 0,
                 *, init_std: float = 0.02, non_sparse_params: int | None = None):
        self.named_layers = layers
        self.layers = [layer for _, layer in layers]
        self.cfg = cfg
        self.seed = int(seed)
        self.total_steps = int(total_steps)
        self.init_std = float(init_std)
        self.non_sparse_params = None if non_sparse_params is None else int(non_sparse_params)
        self._optimizer: SlotStateObserver | None = None
        self.update_count = 0
        self.interval = int(cfg.update_interval)
        self.start = int(cfg.update_start if cfg.update_start is not None else cfg.update_interval)
        self.stop = int(cfg.update_stop if cfg.update_stop is not None else total_steps)
        self.drop = DropSchedule(cfg.drop_schedule, float(cfg.drop_fraction), float(cfg.drop_fraction_end),
                                 start=0, end=self.stop)
        ds = dict(cfg.density_schedule or {"kind": "constant"})
        self.density_schedule = DensitySchedule(
            kind=ds.get("kind", "constant"), final=float(cfg.density), initial=float(ds.get("initial", 1.0)),
            start=int(ds.get("start") or 0), end=int(ds.get("end") or self.stop), power=float(ds.get("power", 3.0)))
        self._pending_growth = False
        # slots regrown at the last update, per layer, as a pack_slots bit mask over the layer's
        # capacity (1 bit per slot: int64 ids cost 16 B per regrown block with the optimizer's copy,
        # 5 GiB at 7B); survival at the next update: survival_metrics
        self._regrown: dict[int, torch.Tensor] = {}
        self._survival: list[tuple[torch.Tensor, ...]] = []

    # ------------------------------------------------------------------ wiring
    def attach_optimizer(self, optimizer: SlotStateObserver | None) -> None:
        """The optimizer whose per-slot state follows topology updates (None: detach).
        ``build_smet_optimizer`` attaches the optimizer it builds."""
        if optimizer is not None and not isinstance(optimizer, SlotStateObserver):
            raise TypeError(f"{type(optimizer).__name__} does not implement SlotStateObserver "
                            "(reset_slots, compact_slots, measure_next_step)")
        self._optimizer = optimizer

    @property
    def optimizer(self) -> SlotStateObserver | None:
        """The attached optimizer (:meth:`attach_optimizer`), or None."""
        return self._optimizer

    # ----------------------------------------------------------------- queries
    @property
    def target_density(self) -> float:
        return float(self.cfg.density)

    def active_weights(self) -> int:
        return sum(layer.n_active for layer in self.layers)

    def dense_weights(self) -> int:
        return sum(layer.in_features * layer.out_features for layer in self.layers)

    def density(self) -> float:
        return self.active_weights() / max(self.dense_weights(), 1)

    def is_update_step(self, step: int) -> bool:
        if self.cfg.growth == "none" and self.density_schedule.kind == "constant":
            return False
        return self.start <= step < self.stop and step % self.interval == 0

    def _target_count(self, layer: SparseLinear, step: int) -> int:
        if self.density_schedule.kind == "constant":
            return layer.n_live
        d_max = self.density_schedule.max_density
        d_final = self.density_schedule.final
        d_now = self.density_schedule(step)
        final_count = layer.final_count
        if d_max == d_final:
            return final_count
        frac = (d_now - d_final) / (d_max - d_final)
        return max(1, min(layer.capacity, int(round(final_count + (layer.capacity - final_count) * frac))))

    def _counts(self, layer: SparseLinear, step: int) -> tuple[int, int, int]:
        """(n_prune, n_grow, new_live) for one layer at update step ``step``."""
        k_old = layer.n_live
        k_new = self._target_count(layer, step)
        n_drop = 0 if self.cfg.growth == "none" else int(round(self.drop(step) * min(k_old, k_new)))
        n_drop = min(n_drop, layer.n_blocks_total - max(k_old, k_new))  # room to regrow
        return n_drop + max(k_old - k_new, 0), n_drop + max(k_new - k_old, 0), k_new

    def active_params_excluding_embedding(self) -> int:
        if self.non_sparse_params is None:
            raise ValueError("this controller was built without non_sparse_params (sparsify_model counts them)")
        return self.non_sparse_params + self.active_weights()

    # -------------------------------------------------------------- training
    def before_step(self, step: int, score_growth: bool = True) -> None:
        """Called before forward/backward of optimizer step ``step`` (RigL scoring requests).

        With gradient accumulation call it before every micro-batch, ``score_growth`` True only for
        the last one: RigL then scores the dense gradient of that micro-batch, and under DDP the
        cross-rank reduction of it (``smet.sparse.distributed``) happens in the one backward that
        DDP synchronises anyway, never inside ``no_sync``.
        """
        want = self.cfg.growth == "gradient" and self.is_update_step(step)
        score = want and score_growth
        reduce_fn = sdist.grad_all_reduce_fn() if score else None
        for layer in self.layers:
            layer.growth_request = self._counts(layer, step)[1] if score else 0
            layer.grad_reduce_fn = reduce_fn
            if want:
                layer.growth_candidates = None
        self._pending_growth = want

    @torch.no_grad()
    def after_step(self, step: int) -> dict[str, float] | None:
        """Called right after optimizer step ``step``; runs a topology update when one is due."""
        if self._pending_growth:
            for layer in self.layers:
                layer.growth_request = 0
                layer.grad_reduce_fn = None
            self._pending_growth = False
        if not self.is_update_step(step):
            return None
        return self.update_now(step)

    @torch.no_grad()
    def update_now(self, step: int) -> dict[str, float]:
        """Run the topology update of step ``step`` now, whether or not the schedule has one due
        (:meth:`after_step` calls it on update steps; the fork test, ``smet.fidelity.fork``, calls
        it at a fork point). Growth seeds follow :attr:`update_count`, which it increments; RigL
        candidates exist only when :meth:`before_step` requested them for this step (else growth
        falls back to random). Returns the update's metrics."""
        total_grown = 0
        p = self.drop(step)
        self._survival = []
        for li, layer in enumerate(self.layers):
            total_grown += self._update_layer(li, layer, step)
        self.update_count += 1
        if self.cfg.debug_check_masks:
            self.check_ranks(f"after topology update {self.update_count} (step {step})")
        return {
            "sparsity/update": float(self.update_count),
            "sparsity/regrown": float(total_grown),
            "sparsity/drop_fraction": float(p),
            "sparsity/density": self.density(),
            **survival_metrics(self._survival),
        }

    def _update_layer(self, li: int, layer: SparseLinear, step: int) -> int:
        """One layer's topology update at ``step`` (layer ``li`` of the model); returns the blocks grown."""
        n_prune, n_grow, k_new = self._counts(layer, step)
        if n_prune == 0 and n_grow == 0:
            return 0
        live_blocks = layer.block_ids()
        score = block_scores(layer) if n_prune else None
        pruned = select_prune(layer, n_prune, score)
        prev = self._regrown.pop(li, None)
        if prev is not None and n_prune:
            self._survival.append(regrown_survival(score, prev, pruned))
        candidates = layer.growth_candidates if self.cfg.growth == "gradient" else None
        new_blocks = select_grow(layer, live_blocks, n_grow, candidates=candidates,
                                 seed=_seed_for(self.seed, "grow", self.update_count, li))
        layer.growth_candidates = None
        pruned_blocks = live_blocks[pruned] if n_prune else None
        slots, keep_slots = rewrite_slots(layer, pruned, new_blocks, k_new, live_blocks)
        del live_blocks, new_blocks, score
        notify_optimizer(self._optimizer, layer, slots, keep_slots, measure=False)
        slots = follow_sort(self._optimizer, layer, slots)  # rows index: state and slots follow the re-sort
        regrown = pack_slots(slots, layer.capacity) if n_grow else None
        if keep_slots is None and n_grow:  # constant count: a regrown block keeps its slot until pruned
            self._regrown[li] = regrown
        if regrown is not None and self._optimizer is not None:  # one mask, shared with the controller
            self._optimizer.measure_next_step(layer.values, regrown)
        if pruned_blocks is not None:  # the persistent dense copy: pruned positions back to 0
            layer.zero_dense_blocks(pruned_blocks)
        return int(n_grow)

    def check_ranks(self, when: str = "") -> None:
        """Raise ``MaskMismatchError`` (on every rank) naming the first layer whose live count, mask
        or values differ across the ranks of the default process group; no-op in one process."""
        sdist.check_masks_identical(self.named_layers, when)

    # ----------------------------------------------------------- persistence
    def regrown_slots(self, li: int) -> torch.Tensor | None:
        """Slots (int64, ascending) of layer ``li`` regrown at the last update (None: none recorded)."""
        packed = self._regrown.get(li)
        if packed is None:
            return None
        return unpack_slots(packed, self.layers[li].capacity).nonzero().squeeze(1)

    def state_dict(self) -> dict:
        return {"update_count": self.update_count, "n_live": [layer.n_live for layer in self.layers],
                "regrown_mask": {int(li): t.cpu() for li, t in self._regrown.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        self.update_count = int(state["update_count"])
        self._regrown = {}
        for li, t in (state.get("regrown_mask") or {}).items():
            self._regrown[int(li)] = t.to(self.layers[int(li)].idx.device)
        for li, t in (state.get("regrown_slots") or {}).items():  # checkpoints before the bit masks: slot ids
            layer = self.layers[int(li)]
            self._regrown[int(li)] = pack_slots(t.to(layer.idx.device).long(), layer.capacity)
        for layer, n in zip(self.layers, state["n_live"]):
            layer.n_live = int(n)
            layer.refresh_dense()

    def set_dense_dtype(self, dtype: torch.dtype | None) -> None:
        """Dtype of every layer's persistent compute copy (:meth:`SparseLinear.set_dense_dtype`)."""
        for layer in self.layers:
            layer.set_dense_dtype(dtype)


# ------------------------------------------------------------- update steps
def _slot_values(layer: SparseLinear) -> torch.Tensor:
    """The layer's values as (capacity, block_size), a view without autograd history (under FSDP2: a
    gathered copy of the sharded values, for reading; :func:`rewrite_slots` writes the local slice)."""
    return shard.full(layer.values.detach()).view(layer.capacity, layer.block_size)


def block_scores(layer: SparseLinear) -> torch.Tensor:
    """sum |w| of every live block (fp32), slot order: what pruning ranks."""
    return _slot_values(layer)[: layer.n_live].float().abs().sum(1)


def select_prune(layer: SparseLinear, n_prune: int, score: torch.Tensor | None = None) -> torch.Tensor:
    """Slots (int64, unordered) of the ``n_prune`` live blocks of smallest sum |w| (fp32 scores;
    ``score``: :func:`block_scores` of the layer when the caller has them already)."""
    if not n_prune:
        return torch.empty(0, dtype=torch.long, device=layer.values.device)
    score = block_scores(layer) if score is None else score
    return torch.topk(score, n_prune, largest=False, sorted=False).indices


def select_grow(layer: SparseLinear, live_blocks: torch.Tensor, n_grow: int, *, seed: int,
                candidates: torch.Tensor | None = None) -> torch.Tensor:
    """Block ids (int64, unordered) of ``n_grow`` blocks to grow, all inactive before this update
    (``live_blocks``, the blocks live before it, pruned ones included, are never picked).

    ``candidates``: RigL's largest-|gradient| inactive blocks, scored in the backward
    (``SparseLinear.growth_candidates``); used when there are exactly ``n_grow`` of them. Otherwise
    uniformly at random: a generator on the layer's device seeded ``seed`` (the same on every rank).
    """
    dev = layer.idx.device
    if not n_grow:
        return live_blocks.new_empty(0)
    if candidates is None or candidates.numel() != n_grow:
        r = torch.rand(layer.n_blocks_total, generator=_generator(dev, seed), device=dev)
        r[live_blocks] = -1.0
        candidates = torch.topk(r, n_grow, sorted=False).indices
    return candidates.to(dev)


@torch.no_grad()
def rewrite_slots(layer: SparseLinear, pruned: torch.Tensor, new_blocks: torch.Tensor,
                  n_live: int, live_blocks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Write ``new_blocks`` (value 0) into the layer in place of the ``pruned`` slots.

    A ``rows`` index (``SparseLinear.index``) then re-sorts the slots, values included
    (``SparseLinear.set_block_ids``) and leaves the permutation in ``layer.slot_perm``; the slots
    returned refer to the order BEFORE that sort (what the optimizer state still has: see
    :func:`follow_sort`). ``live_blocks``: the layer's ``block_ids()`` when the caller has them.

    Constant count (``n_live`` == the layer's): the new blocks take over the pruned slots in place;
    returns ``(pruned, None)``. Density change: survivors move to the front in order, the new blocks
    follow, the free tail is zeroed and ``layer.n_live`` becomes ``n_live``; returns (the slots of the
    new blocks, the survivors' old slots).
    """
    k_old = layer.n_live
    rows = layer.index == "rows"
    if shard.is_sharded(layer.values):  # FSDP2: constant count, flat index; zero the regrown slots of this slice
        if rows or n_live != k_old:
            raise NotImplementedError("sharded compact values: density changes and the rows index move slots "
                                      "between ranks (not supported yet; docs/sharding.md)")
        layer.idx[pruned] = new_blocks.to(layer.idx.dtype)
        first, count = shard.slot_range(layer.values, layer.block_size)
        shard.local(layer.values.detach()).view(-1, layer.block_size)[shard.local_slots(pruned, first, count)] = 0
        return pruned, None
    vals = _slot_values(layer)
    if rows:  # work on the decoded flat ids; set_block_ids re-sorts them at the end
        ids = layer.block_ids() if live_blocks is None else live_blocks.clone()
    if n_live == k_old:
        if rows:
            ids[pruned] = new_blocks
            vals[pruned] = 0
            layer.slot_perm = layer.set_block_ids(ids)
            return pruned, None
        layer.idx[pruned] = new_blocks.to(layer.idx.dtype)
        vals[pruned] = 0
        return pruned, None
    keep = torch.ones(k_old, dtype=torch.bool, device=layer.idx.device)
    keep[pruned] = False
    keep_slots = keep.nonzero().squeeze(1)
    n_keep = keep_slots.numel()
    new_vals = vals[keep_slots].clone()
    vals.zero_()
    vals[:n_keep] = new_vals
    if rows:
        layer.slot_perm = layer.set_block_ids(torch.cat([ids[keep_slots], new_blocks.long()]))
        return torch.arange(n_keep, n_live, device=layer.idx.device), keep_slots
    new_idx = torch.cat([layer.idx[keep_slots], new_blocks.to(layer.idx.dtype)])
    layer.idx.zero_()
    layer.idx[:n_live] = new_idx
    layer.n_live = n_live
    return torch.arange(n_keep, n_live, device=layer.idx.device), keep_slots


_BIT_WEIGHTS: dict[torch.device, torch.Tensor] = {}


def _bits(device: torch.device) -> torch.Tensor:
    w = _BIT_WEIGHTS.get(device)
    if w is None:
        w = _BIT_WEIGHTS[device] = torch.tensor([1 << k for k in range(8)], dtype=torch.uint8, device=device)
    return w


def pack_slots(slots: torch.Tensor, n: int) -> torch.Tensor:
    """A bit mask (uint8, ``ceil(n / 8)`` bytes; bit ``k`` of byte ``j`` = slot ``8 j + k``) of the slot
    ids ``slots`` among ``n`` slots: how the controller keeps the slots regrown at an update."""
    m = torch.zeros(-(-n // 8) * 8, dtype=torch.uint8, device=slots.device)
    m[slots] = 1
    return (m.view(-1, 8) * _bits(slots.device)).sum(1, dtype=torch.uint8)


def unpack_slots(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The bool mask (``n``,) of a :func:`pack_slots` bit mask."""
    return packed.unsqueeze(1).bitwise_and(_bits(packed.device)).ne(0).view(-1)[:n]


def regrown_survival(score: torch.Tensor, prev: torch.Tensor, pruned: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """At an update that prunes ``pruned`` (slots) by ``score`` (:func:`block_scores`), how the blocks
    regrown into ``prev`` at the previous update fared: (blocks in prev, of them not pruned now, median
    sum|w| of prev / prune threshold, median sum|w| of the other live blocks / threshold) as 0-d tensors
    on the layer's device (no sync). The threshold is the largest score among the pruned blocks.
    ``prev``: slot ids (int64) or a :func:`pack_slots` bit mask (uint8) over at least the live slots."""
    n = score.numel()
    thr = score[pruned].max().clamp_min(torch.finfo(torch.float32).tiny)
    if prev.dtype == torch.uint8:
        is_prev = unpack_slots(prev, n)
    else:
        is_prev = torch.zeros(n, dtype=torch.bool, device=score.device)
        is_prev[prev] = True
    kept = is_prev.clone()
    kept[pruned] = False
    mature = score[~is_prev]
    mature_ratio = mature.median() / thr if mature.numel() else torch.full_like(thr, float("nan"))
    return (is_prev.sum(), kept.sum(), score[is_prev].median() / thr, mature_ratio)


def survival_metrics(per_layer: list[tuple[torch.Tensor, ...]]) -> dict[str, float]:
    """``sparsity/regrown_survival``: fraction of the blocks regrown at the previous update that this
    update did not prune (all layers pooled); ``sparsity/regrown_score_ratio`` / ``_mature_score_ratio``:
    mean over layers of the median block score sum|w| of those regrown blocks / of the other live
    blocks, over the layer's prune threshold (< 1: below the threshold). Empty at the first update."""
    if not per_layer:
        return {}
    n, kept, r_regrown, r_mature = (torch.stack([x[i].float() for x in per_layer]) for i in range(4))
    vals = torch.stack([kept.sum() / n.sum().clamp_min(1), r_regrown.mean(), r_mature.mean()]).tolist()
    return dict(zip(("sparsity/regrown_survival", "sparsity/regrown_score_ratio",
                     "sparsity/mature_score_ratio"), vals))


def follow_sort(optimizer: SlotStateObserver | None, layer: SparseLinear, slots: torch.Tensor) -> torch.Tensor:
    """After :func:`rewrite_slots` re-sorted a ``rows`` layer (``layer.slot_perm``): permute the
    optimizer's slot state the same way (``compact_slots(p, perm, n_live)``) and return where
    ``slots`` (pre-sort slot numbers) are now."""
    perm = layer.slot_perm
    layer.slot_perm = None
    if perm is None:
        return slots
    if optimizer is not None:
        optimizer.compact_slots(layer.values, perm, layer.n_live)
    where = torch.empty_like(perm)
    where[perm] = torch.arange(perm.numel(), device=perm.device)
    return where[slots]


def notify_optimizer(optimizer: SlotStateObserver | None, layer: SparseLinear, slots: torch.Tensor,
                     keep_slots: torch.Tensor | None, *, measure: bool) -> None:
    """Tell the optimizer what :func:`rewrite_slots` did: ``reset_slots`` (in place) or
    ``compact_slots`` (density change), then ``measure_next_step`` of the new slots if ``measure``."""
    if optimizer is None:
        return
    if keep_slots is None:
        optimizer.reset_slots(layer.values, slots)
    else:
        optimizer.compact_slots(layer.values, keep_slots, layer.n_live)
    if measure:
        optimizer.measure_next_step(layer.values, slots)


def layer_plan(shapes: list[tuple[int, int]], cfg: SparsityConfig) -> list[dict[str, int]]:
    """Per target layer (out, in): block size, blocks, capacity (largest count of the density
    schedule: the slot count) and final active blocks. ``sparsify_model`` and the memory model
    both use this, so predictions match the built layers exactly."""
    b = int(cfg.block_size)
    for _, i in shapes:
        if b < 1 or i % b:
            raise ValueError(f"block_size {b} does not divide the row length {i}")
    if cfg.allocation == "uniform":
        dens = [float(cfg.density)] * len(shapes)
    elif cfg.allocation == "erk":
        dens = erk_densities(shapes, float(cfg.density), float(cfg.erk_power_scale))
    else:
        raise ValueError(f"unknown allocation {cfg.allocation!r}")
    ds = dict(cfg.density_schedule or {"kind": "constant"})
    d_max = (float(cfg.density) if ds.get("kind", "constant") == "constant"
             else max(float(ds.get("initial", 1.0)), float(cfg.density)))
    plan = []
    for (o, i), d in zip(shapes, dens):
        n_blocks = o * i // b
        final = active_blocks(n_blocks, d)
        cap = active_blocks(n_blocks, min(1.0, d * d_max / float(cfg.density))) if d_max > cfg.density else final
        plan.append({"out": o, "in": i, "block_size": b, "blocks": n_blocks, "capacity": cap, "final": final})
    return plan


def init_generator_device(device: torch.device | str) -> torch.device:
    """Device of the generator that draws a layer's initial mask and values: the layer's own device
    for CUDA (a 13B layer's ``randperm`` of 70.8 M block ids runs on the GPU), the CPU otherwise."""
    device = torch.device(device)
    return device if device.type == "cuda" else torch.device("cpu")


@torch.no_grad()
def init_sparse_layers(ctrl: SparseController) -> None:
    """Initialise every (allocated, non-meta) compact layer of ``ctrl``: random mask + N(0, std)
    values, layer ``li`` from a generator seeded ``_seed_for(seed, "init", li)`` on
    :func:`init_generator_device` of the layer. On CPU this gives exactly the bits
    ``sparsify_model`` has always produced; on CUDA the draws come from a CUDA generator seeded the
    same way, so the initial masks depend on the device the layers are initialised on (CPU vs CUDA;
    the same on every GPU of one kind, hence on every DDP rank)."""
    std = ctrl.init_std
    for li, layer in enumerate(ctrl.layers):
        dev = layer.idx.device
        if dev.type == "meta":
            raise ValueError(f"sparse layer {layer.name!r} is still on the meta device: allocate it first "
                             "(smet.build.materialize)")
        layer.init_random(std, _generator(init_generator_device(dev), _seed_for(ctrl.seed, "init", li)))


def sparsify_model(model: nn.Module, cfg: SparsityConfig, total_steps: int, seed: int = 0,
                   init_std: float = 0.02, device: torch.device | str | None = None) -> SparseController:
    """Replace the target ``nn.Linear`` modules of ``model`` by compact ``SparseLinear`` layers.

    Initialisation: each layer keeps ``round(d_l * blocks)`` blocks chosen uniformly at random
    (exact count, not Bernoulli) with values drawn N(0, init_std) - the same distribution as the
    reference's dense init followed by a random mask, without ever allocating the dense weight.

    ``device``: None (default) - the compact tensors go on the replaced layer's device (CPU for a
    meta layer) and are initialised from seeded CPU generators, whatever that device (the
    historical behaviour, bit for bit). ``"meta"`` - the compact layers are created on the meta
    device and left uninitialised: allocate them with ``to_empty`` and call
    :func:`init_sparse_layers` (``smet.build.materialize`` does both), so a model built on meta is
    never allocated dense.
    """
    targets = set(cfg.targets)
    found: list[tuple[str, nn.Linear]] = [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets
    ]
    if not found:
        raise ValueError(f"no nn.Linear module matches sparsity.targets={sorted(targets)}")
    plan = layer_plan([(m.out_features, m.in_features) for _, m in found], cfg)
    layers: list[tuple[str, SparseLinear]] = []
    for li, ((name, lin), lp) in enumerate(zip(found, plan)):
        cap, final = lp["capacity"], lp["final"]
        if device is not None:
            dev = torch.device(device)
        else:
            dev = lin.weight.device if not lin.weight.is_meta else torch.device("cpu")
        sl = SparseLinear(lin.in_features, lin.out_features, n_active_blocks=cap, block_size=cfg.block_size,
                          materialize=cfg.materialize, capacity=cap, device=dev, dtype=lin.weight.dtype,
                          name=name, final_count=final, index=cfg.index)
        if device is None:
            gen = _generator(torch.device("cpu"), _seed_for(seed, "init", li))
            sl.init_random(init_std, gen)
        elif dev.type != "meta":
            sl.init_random(init_std, _generator(init_generator_device(dev), _seed_for(seed, "init", li)))
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, sl)
        layers.append((name, sl))
    sparse_ids = {id(layer.values) for _, layer in layers}
    emb = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
    emb_ids = {id(w) for w in emb}
    non_sparse = sum(p.numel() for p in model.parameters() if id(p) not in sparse_ids and id(p) not in emb_ids)
    return SparseController(layers, cfg, total_steps=total_steps, seed=seed, init_std=init_std,
                            non_sparse_params=non_sparse)
