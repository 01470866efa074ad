"""The SMET optimizer: AdamW for dense parameters, per-weight-local Adam for compact sparse weights.

One ``torch.optim.Optimizer`` for the whole model. Dense parameters (embedding, head, norms) get
ordinary AdamW (PyTorch's own functional AdamW, fused on CUDA). For the active weights of each
compact sparse layer (smet-method.md section 3), per block slot i::

    t_i <- t_i + 1                                 (local step; saturating, see below)
    m_i <- b1 m_i + (1 - b1) g_i ;  v_i <- b2 v_i + (1 - b2) g_i^2
    m^_i = m_i / (1 - b1^t_i)    ;  v^_i = v_i / (1 - b2^t_i)
    eta_i = alpha(t) * s(d_layer) * w_i
    theta_i <- theta_i - eta_i * (m^_i / (sqrt(v^_i) + eps) + lambda * theta_i)

* ``reset_local_step``: a regrown slot restarts at t = 0 (first update uses t = 1: magnitude
  eta * |g| / (|g| + eps), i.e. eta * sign(g)). Off: bias corrections use the global step, so a
  regrown weight gets the naive DST cold start ((1 - b1) / sqrt(1 - b2) = 3.162 for the defaults).
* ``reset_moments``: m = v = 0 for a regrown slot (off: it inherits the pruned slot's moments).
* ``regrowth_warmup_steps`` (W) with ``warmup_shape``: ``linear`` - w_i = min(1, t_i / W) for
  regrown slots, 1 for slots active since initialisation; ``momentum`` - the reference code's
  first-moment damping m_i <- m_i * min(1, t_i / W) each step instead (w_i = 1).
* density-aware LR scaling s(d) is folded into each param group's ``lr`` at construction
  (``lr_scale`` records it), so the global LR schedule multiplies it like any other group.

Local steps saturate at the first step where both bias corrections round to 1.0 in fp32 (and past
W), so saturation changes no bit of the update (b2 = 0.999: 17,329). Two storages, bit-identical
updates (``local_step_storage``):

* ``code`` (default): ONE byte per block slot, the number of the topology update that regrew it. A
  per-parameter table of 256 int32 birth steps (``regrow_birth``; 1 KiB) decodes it:
  t_i = min(T - birth[code_i], cap) with T the parameter's step, and code 0 (birth 0) means "alive
  since initialisation or saturated": t = min(T, cap), the convention of counters below. A code
  whose slots have all saturated (T - birth >= cap) is freed (its slots rewritten to 0) when a new
  one is needed, so 255 codes cover ``cap / update interval`` updates in flight (b2 = 0.999:
  update intervals >= 68 steps). When no code is free the parameter switches to counters, exact
  either way (``wide_local_steps`` counts the switches).
* ``counter``: a saturating int16 counter per block slot when the cap fits (else int32).
"""

from __future__ import annotations

import math
import os
from typing import Iterable

import torch
from torch.optim.adamw import adamw as _functional_adamw

from smet.sparse import kernels, quant, shard
from smet.sparse.topology import unpack_slots
from smet.sparse.config import LOCAL_STEP_STORAGES, MOMENT_STORAGES
from smet.sparse.config import lr_scale  # noqa: F401  (re-exported: smet.sparse.optimizer.lr_scale)

FP32_HALF_ULP_1 = 2.0**-25  # 1 - x rounds to 1.0f for x below this
MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "exp_avg_scale", "exp_avg_sq_scale")
N_CODES = 256  # uint8 regrowth codes: 0 = alive since initialisation (or saturated), 1..255 = an update


def saturation_step(beta1: float, beta2: float) -> int:
    """Smallest t such that 1 - beta^t == 1.0 in fp32 for both betas (bias corrections vanish)."""
    t = 1
    for beta in (beta1, beta2):
        if beta <= 0.0:
            continue
        t = max(t, int(math.ceil(math.log(FP32_HALF_ULP_1) / math.log(beta))) + 1)
    return t


class SMETOptimizer(torch.optim.Optimizer):
    """AdamW + per-weight-local Adam (module docstring). Implements
    ``smet.sparse.topology.SlotStateObserver`` (:meth:`reset_slots`, :meth:`compact_slots`,
    :meth:`measure_next_step`), the interface through which ``SparseController`` reports topology
    updates; ``build_smet_optimizer`` attaches it to the controller."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, regrowth_warmup_steps: int = 0, reset_local_step: bool = True,
                 reset_moments: bool = True, warmup_shape: str = "linear", local_step_storage: str = "code",
                 fused_backward: bool = False, moments: str = "native", fused: bool | None = None):
        if moments not in MOMENT_STORAGES:
            raise ValueError(f"moments must be one of {MOMENT_STORAGES}, got {moments!r}")
        if local_step_storage not in LOCAL_STEP_STORAGES:
            raise ValueError(f"local_step_storage must be one of {LOCAL_STEP_STORAGES}, got {local_step_storage!r}")
        if warmup_shape not in ("linear", "momentum"):
            raise ValueError(f"warmup_shape must be 'linear' or 'momentum', got {warmup_shape!r}")
        if regrowth_warmup_steps < 0:
            raise ValueError("regrowth_warmup_steps must be >= 0")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, sparse=False,
                        block_size=1, lr_scale=1.0)
        super().__init__(params, defaults)
        self.regrowth_warmup_steps = int(regrowth_warmup_steps)
        self.reset_local_step = bool(reset_local_step)
        self.reset_moments = bool(reset_moments)
        self.warmup_shape = warmup_shape
        self.local_step_storage = local_step_storage
        self.moments = moments  # native: the parameter's dtype | 8bit: block-wise 8-bit codes (smet.sparse.quant)
        self.fused = fused
        self.wide_local_steps = 0  # parameters switched from 1-byte codes to counters (no code was free)
        b1, b2 = self.defaults["betas"]
        self.step_cap = max(saturation_step(b1, b2), self.regrowth_warmup_steps)
        self.local_step_dtype = torch.int16 if self.step_cap <= torch.iinfo(torch.int16).max else torch.int32
        if self.local_step_dtype == torch.int32:
            self.step_cap = torch.iinfo(torch.int32).max
        self._layers: dict[torch.nn.Parameter, object] = {}  # values param -> SparseLinear
        # ZeRO-1/2 (bind_partitions): the model's values param -> this rank's flat fp32 partition of it,
        # and each partition's first slot
        self._bound: dict[torch.Tensor, torch.Tensor] = {}
        self._part_first: dict[torch.Tensor, int] = {}
        self._measure: dict[torch.nn.Parameter, torch.Tensor] = {}
        self._bc_tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._births: dict[torch.nn.Parameter, list[int]] = {}  # host copy of regrow_birth (-1: free code)
        # step(): the fused updates of a group's parameters in one launch (kernels.smet_adam_update_many);
        # SMET_MULTI_TENSOR=0 launches once per parameter (the same bits)
        self.multi_tensor = os.environ.get("SMET_MULTI_TENSOR", "1") != "0"
        self._tables: dict[tuple, dict] = {}  # device tables of tensor addresses, per batch signature
        self.last_update_stats: dict[str, float] = {}
        self._stats: dict[str, list] = {"regrown": [], "mature": []}  # per layer (sum, count), on the device
        # optimizer step inside backward: each parameter is updated as soon as its gradient is
        # complete, and the gradient dropped (no gradient buffer outlives its parameter's update)
        self.fused_backward = bool(fused_backward)
        self.track_grad_norm = False  # fused backward: sum the squared gradient norms (train/grad_norm)
        self._grad_sq: list[torch.Tensor] = []
        self._backward_hooks: list = []
        if self.fused_backward:
            self._install_backward_hooks()

    # ----------------------------------------------------------------- wiring
    @property
    def tracks_local_steps(self) -> bool:
        return self.reset_local_step or self.regrowth_warmup_steps > 0

    def register_layer(self, layer) -> None:
        self._layers[layer.values] = layer

    def layer_of(self, p):
        return self._layers.get(p)

    # ------------------------------------------- flat partitions (DeepSpeed ZeRO-1/2)
    def bind_partitions(self, bindings: Iterable[tuple[torch.Tensor, torch.Tensor, int]]) -> None:
        """An engine replaced a sparse group's parameter with this rank's partition of it (DeepSpeed ZeRO
        stage 1/2: a flat fp32 master copy of elements ``[first, first + numel)`` of the group's flattened
        parameters, padded at the end; ``smet.zero`` builds the bindings). ``bindings``: ``(model values
        parameter, partition, first element)`` per sparse layer, one layer per group.

        From then on the partition is the parameter this optimizer steps and keeps state for (moments of its
        elements, local steps of its slots); :meth:`reset_slots` and :meth:`measure_next_step`, which the
        controller calls with the model's parameter, act on its slice, and a regrown slot's master value is
        rewritten from the model's (the controller zeroed it there). A partition must start and end on a
        block boundary."""
        for p, part, first in bindings:
            group = self._group_of(part)
            b = group["block_size"]
            if not group["sparse"] or len(group["params"]) != 1:
                raise ValueError("bind_partitions: a partition must be the only parameter of a sparse group "
                                 "(build_smet_optimizer(..., per_layer_groups=True))")
            if first % b or part.numel() % b:
                raise ValueError(f"flat partitions: elements [{first}, {first + part.numel()}) split blocks of {b} "
                                 "(choose sparsity.block_size 1, or a capacity x block_size divisible by the "
                                 "rank count x block_size)")
            self._bound[p] = part
            self._part_first[part] = first // b
            layer = self._layers.get(p)
            if layer is not None:
                self._layers[part] = layer

    def _param(self, p: torch.Tensor) -> torch.Tensor:
        """The parameter this optimizer steps for ``p``: its bound partition (:meth:`bind_partitions`), else ``p``."""
        return self._bound.get(p, p)

    def _group_of(self, p: torch.Tensor) -> dict:
        return next(g for g in self.param_groups if any(q is p for q in g["params"]))

    def _slot_range(self, p: torch.Tensor, b: int) -> tuple[int, int]:
        """(first slot, slots) of what this rank steps of ``p``: a bound partition, an FSDP2 shard, or all."""
        first = self._part_first.get(p)
        if first is not None:
            return first, p.numel() // b
        return shard.slot_range(p, b)

    def _sparse_state(self, p: torch.Tensor, group: dict) -> dict:
        st = self.state[p]
        if not st:
            p = shard.local(p)  # FSDP2: the state of the local slice only (smet.sparse.shard)
            st["step"] = 0
            if self.moments == "8bit":
                st["exp_avg"], st["exp_avg_scale"] = quant.empty_state(p.numel(), True, p.device)
                st["exp_avg_sq"], st["exp_avg_sq_scale"] = quant.empty_state(p.numel(), False, p.device)
            else:
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if self.tracks_local_steps:
                slots = p.numel() // group["block_size"]
                if self.local_step_storage == "code":
                    st["regrow_code"] = torch.zeros(slots, dtype=torch.uint8, device=p.device)
                    st["regrow_birth"] = self._empty_births(p.device)
                else:
                    st["local_step"] = torch.zeros(slots, dtype=self.local_step_dtype, device=p.device)
        return st

    # ------------------------------------------------------- local steps (codes)
    @staticmethod
    def _empty_births(device) -> torch.Tensor:
        births = torch.full((N_CODES,), -1, dtype=torch.int32, device=device)
        births[0] = 0
        return births

    def _host_births(self, p, st: dict) -> list[int]:
        births = self._births.get(p)
        if births is None:
            births = self._births[p] = [int(x) for x in st["regrow_birth"].tolist()]
        return births

    def local_steps(self, p: torch.Tensor) -> torch.Tensor | None:
        """The local step of every block slot of sparse parameter ``p`` as int32 (whatever the
        storage; None when the optimizer tracks none or ``p`` has no state yet)."""
        st = self.state.get(self._param(p))
        if not st:
            return None
        if "regrow_code" in st:
            return self._decode(st)
        if "local_step" in st:
            return st["local_step"].int()
        return None

    def _decode(self, st: dict) -> torch.Tensor:
        """t_i = min(T - birth[code_i], cap) as int32 (module docstring)."""
        births = st["regrow_birth"].index_select(0, st["regrow_code"].int())
        return (int(st["step"]) - births).clamp_(max=self.step_cap)

    def _new_code(self, p, st: dict) -> int | None:
        """The code for slots regrown now (at step T = st["step"]), or None when none is free."""
        T = int(st["step"])
        births = self._host_births(p, st)
        for k in range(1, N_CODES):
            if births[k] == T:
                return k  # another reset at the same step
        free = [k for k in range(1, N_CODES) if births[k] < 0]
        if not free:  # codes whose slots have all saturated decode like code 0: rewrite them to 0
            done = [k for k in range(1, N_CODES) if T - births[k] >= self.step_cap]
            if done:
                codes = st["regrow_code"]
                codes.masked_fill_(torch.isin(codes, torch.tensor(done, dtype=torch.uint8, device=codes.device)), 0)
                for k in done:
                    births[k] = -1
                st["regrow_birth"][done] = -1
            free = done
        if not free:
            return None
        k = free[0]
        births[k] = T
        st["regrow_birth"][k] = T
        return k

    def _widen(self, p, st: dict) -> None:
        """Switch parameter ``p`` from codes to counters (same local steps)."""
        st["local_step"] = self._decode(st).to(self.local_step_dtype)
        del st["regrow_code"], st["regrow_birth"]
        self._births.pop(p, None)
        self.wide_local_steps += 1

    def _mark_regrown(self, p, st: dict, slots) -> None:
        """Local step 0 for ``slots`` (an index tensor or a slice) of ``p``."""
        if "regrow_code" in st:
            k = self._new_code(p, st)
            if k is not None:
                st["regrow_code"][slots] = k
                return
            self._widen(p, st)
        if "local_step" in st:
            st["local_step"][slots] = 0

    @torch.no_grad()
    def reset_slots(self, p: torch.nn.Parameter, slots: torch.Tensor) -> None:
        """A topology update regrew ``slots`` of sparse parameter ``p``: reset their state."""
        model_p, p = p, self._param(p)
        if p is not model_p:  # a bound partition: its master values of the regrown slots from the model's
            b = self._group_of(p)["block_size"]
            first, n = self._slot_range(p, b)
            loc = shard.local_slots(slots, first, n)
            p.detach().view(-1, b)[loc] = model_p.detach().view(-1, b)[loc + first].to(p.dtype)
        st = self.state.get(p)
        if not st:
            return
        b = self._group_of(p)["block_size"]
        if p is not model_p or shard.is_sharded(p):  # global slot ids -> this rank's slice
            slots = shard.local_slots(slots, *self._slot_range(p, b))
        if self.reset_moments:
            st["exp_avg"].view(-1, b)[slots] = 0
            st["exp_avg_sq"].view(-1, b)[slots] = 0
        self._mark_regrown(p, st, slots)

    @torch.no_grad()
    def compact_slots(self, p: torch.nn.Parameter, keep_slots: torch.Tensor, n_live: int) -> None:
        """A density change rewrote ``p``'s slots: survivors ``keep_slots`` move to the front (in order),
        the slots after them up to ``n_live`` are newly grown (zero state), the rest are free (zero)."""
        if p in self._bound:
            raise NotImplementedError("flat partitions (ZeRO): a density change or the rows index moves slots "
                                      "between ranks' partitions (constant density and the flat index only)")
        st = self.state.get(p)
        if not st:
            return
        if shard.is_sharded(p):
            raise NotImplementedError("sharded compact values: slots cannot move between ranks yet (constant "
                                      "density and the flat index only; docs/sharding.md)")
        group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
        b = group["block_size"]
        n = keep_slots.numel()
        quantised = "exp_avg_scale" in st
        for key in ("exp_avg", "exp_avg_sq", "local_step", "regrow_code"):
            if key not in st:
                continue
            if quantised and key in ("exp_avg", "exp_avg_sq"):  # scales are per block: move values, re-encode
                x = quant.dequantize(st[key], st[key + "_scale"]).view(-1, b)
            else:
                x = st[key].view(-1, b) if key in ("exp_avg", "exp_avg_sq") else st[key]
            kept = x[keep_slots].clone()
            x.zero_()
            x[:n] = kept
            if quantised and key in ("exp_avg", "exp_avg_sq"):
                quant.quantize_(x.reshape(-1), st[key], st[key + "_scale"])
        if "regrow_code" in st and n_live > n:  # zeroed codes mean "mature": mark the grown ones
            self._mark_regrown(p, st, slice(n, n_live))

    # per-slot / per-element state of a sparse parameter; under FSDP2 each rank holds its slice of these
    _SLICED = {"exp_avg": "elements", "exp_avg_sq": "elements", "regrow_code": "slots", "local_step": "slots"}

    def state_dict(self) -> dict:
        """As ``torch.optim.Optimizer``'s; under FSDP2 the per-slot state of a sharded parameter (m, v, local
        steps: this rank's slice) is returned as ``Shard(0)`` DTensors on the parameter's mesh, so that
        ``torch.distributed.checkpoint`` saves every rank's slice (and can reshard it on load)."""
        sd = super().state_dict()
        params = [p for g in self.param_groups for p in g["params"]]
        blocks = {id(p): g["block_size"] for g in self.param_groups if g["sparse"] for p in g["params"]}
        for pid, st in sd["state"].items():
            p = params[pid]
            if id(p) not in blocks or not shard.is_sharded(p):
                continue
            st = sd["state"][pid] = dict(st)
            for key, unit in self._SLICED.items():
                if key in st and not shard.is_sharded(st[key]):
                    n = p.numel() if unit == "elements" else p.numel() // blocks[id(p)]
                    st[key] = shard.as_sharded_like(st[key], p, n)
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Under FSDP2 the sliced state arrives as DTensors (:meth:`state_dict`): their local slices are kept.
        Otherwise as ``torch.optim.Optimizer``'s, but local steps keep their integer dtype and bits (the base
        class casts every non-``step`` state tensor to the parameter's float dtype: bf16 cannot even
        hold the counts above 256).

        A state saved by an optimizer of the other kind loads too (the fork test switches a static
        run's optimizer to SMET's): without local steps saved, this optimizer (if it tracks them)
        starts every slot mature, local step = min(saved step, step_cap), the convention of slots
        alive since initialisation (module docstring); saved local steps it does not track are dropped.
        """
        sparse_ids = {pid for sg, g in zip(state_dict["param_groups"], self.param_groups) if g["sparse"]
                      for pid in sg["params"]}
        state_dict = dict(state_dict, state={pid: {k: shard.local(v) if pid in sparse_ids and k in self._SLICED
                                                   and isinstance(v, torch.Tensor) else v for k, v in st.items()}
                                             for pid, st in state_dict["state"].items()})
        keys = ("local_step", "regrow_code", "regrow_birth")
        saved = {pid: {k: st[k] for k in keys if k in st} for pid, st in state_dict["state"].items()}
        moments = {pid: {k: st[k] for k in MOMENT_KEYS if k in st} for pid, st in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        self._births.clear()
        ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        by_id = dict(zip(ids, params))
        sparse = {id(p): g["block_size"] for g in self.param_groups if g["sparse"] for p in g["params"]}
        for pid, p in by_id.items():
            st = self.state.get(p)
            if not st or id(p) not in sparse:
                continue
            self._restore_moments(st, moments.get(pid, {}), p)
            for k in keys:
                st.pop(k, None)
            if not self.tracks_local_steps:
                continue
            self._restore_local_steps(st, saved.get(pid, {}), shard.local(p).numel() // sparse[id(p)], p.device)

    def _restore_moments(self, st: dict, saved: dict, p: torch.Tensor) -> None:
        """m and v from a saved state of either storage into this optimizer's, dtypes and bits kept
        (the base class casts every state tensor to the parameter's dtype)."""
        for key in ("exp_avg", "exp_avg_sq"):
            if key not in saved:
                continue
            x, scale = saved[key], saved.get(key + "_scale")
            st.pop(key + "_scale", None)
            if scale is not None:  # saved 8-bit
                codes = x.to(device=p.device, dtype=torch.int8 if key == "exp_avg" else torch.uint8, copy=True)
                scale = scale.to(device=p.device, dtype=torch.float32, copy=True)
                if self.moments == "8bit":
                    st[key], st[key + "_scale"] = codes, scale
                else:
                    st[key] = quant.dequantize(codes, scale).to(p.dtype).view_as(p)
            elif self.moments == "8bit":
                st[key], st[key + "_scale"] = quant.empty_state(p.numel(), key == "exp_avg", p.device)
                quant.quantize_(x.to(device=p.device, dtype=torch.float32).reshape(-1), st[key], st[key + "_scale"])

    def _restore_local_steps(self, st: dict, saved: dict, slots: int, device) -> None:
        """Local steps from a saved state of either storage (or none: every slot mature) into this
        optimizer's storage; counters that need more than 255 codes stay counters."""
        T = int(st["step"])
        if "regrow_code" in saved:
            codes = saved["regrow_code"].to(device=device, dtype=torch.uint8, copy=True)
            births = saved["regrow_birth"].to(device=device, dtype=torch.int32, copy=True)
            if self.local_step_storage == "code":
                st["regrow_code"], st["regrow_birth"] = codes, births
                return
            lt = (T - births.index_select(0, codes.int())).clamp_(max=self.step_cap)
        elif "local_step" in saved:
            lt = saved["local_step"].to(device=device, dtype=torch.int32)
        else:
            lt = None
        if self.local_step_storage == "code":
            st["regrow_code"] = torch.zeros(slots, dtype=torch.uint8, device=device)
            st["regrow_birth"] = self._empty_births(device)
            if lt is None:
                return
            regrown = lt < min(T, self.step_cap)
            born = T - lt[regrown]
            uniq = torch.unique(born)
            if uniq.numel() < N_CODES:
                st["regrow_code"][regrown] = (torch.searchsorted(uniq, born) + 1).to(torch.uint8)
                st["regrow_birth"][1: uniq.numel() + 1] = uniq.to(torch.int32)
                return
            del st["regrow_code"], st["regrow_birth"]
            self.wide_local_steps += 1
        if lt is None:
            lt = torch.full((slots,), min(T, self.step_cap), dtype=torch.int32, device=device)
        st["local_step"] = lt.to(self.local_step_dtype)

    def measure_next_step(self, p: torch.nn.Parameter, regrown_slots: torch.Tensor) -> None:
        """Record mean |update| / lr of regrown vs mature slots of ``p`` at the next step."""
        self._measure[self._param(p)] = regrown_slots

    # ------------------------------------------------- optimizer step in backward
    def _install_backward_hooks(self) -> None:
        group_of = {p: g for g in self.param_groups for p in g["params"]}
        for p, group in group_of.items():
            if p.requires_grad:
                self._backward_hooks.append(p.register_post_accumulate_grad_hook(
                    lambda q, group=group: self._backward_update(q, group)))

    @torch.no_grad()
    def _backward_update(self, p: torch.Tensor, group: dict) -> None:
        """Runs inside backward once ``p.grad`` is complete: this step's update of ``p``, then the
        gradient is dropped."""
        if p.grad is None:
            return
        if self.track_grad_norm:
            self._grad_sq.append(torch._foreach_norm([p.grad])[0].float().square())
        if group["sparse"]:
            self._sparse_update(p, group, self._stats)
        else:
            self._dense_update(group, only=p)
        p.grad = None

    def pop_grad_norm(self) -> torch.Tensor | None:
        """Fused backward with ``track_grad_norm``: the global gradient norm of the step just taken
        (a 0-dim fp32 device tensor; no host sync), None when none was recorded."""
        if not self._grad_sq:
            return None
        out = torch.stack(self._grad_sq).sum().sqrt()
        self._grad_sq = []
        return out

    # ------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure=None):
        """Update every parameter that has a gradient. With ``fused_backward`` the updates already
        ran inside backward (the closure's, or the caller's before this call) and no gradient is
        left: this only closes the step (regrown vs mature update sizes)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stats = self._stats
        for gi, group in enumerate(self.param_groups):
            if group["sparse"]:
                batch = []
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    if self._batchable(p, group):
                        batch.append(p)
                    else:
                        self._sparse_update(p, group, stats)
                if batch:
                    self._fused_sparse_update_many(batch, group, gi)
            else:
                self._dense_update(group)
        if self._measure:
            self._measure.clear()
            self.last_update_stats = _layer_means(stats)
        self._stats = {"regrown": [], "mature": []}
        return loss

    def _dense_update(self, group: dict, only: torch.Tensor | None = None) -> None:
        params, grads, m, v, steps = [], [], [], [], []
        fused = self.fused
        for p in (group["params"] if only is None else [only]):
            if p.grad is None:
                continue
            st = self.state[p]
            if not st:
                on_dev = bool(fused) and p.is_cuda
                st["step"] = torch.zeros((), dtype=torch.float32, device=p.device if on_dev else "cpu")
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif bool(fused) and p.is_cuda and st["step"].device != p.device:
                # a restored state whose step torch's load_state_dict left on the CPU (it does unless the group
                # says fused; DeepSpeed restores the client optimizer that way, and Lightning does not move it)
                st["step"] = st["step"].to(p.device)
            params.append(p)
            grads.append(p.grad)
            m.append(st["exp_avg"])
            v.append(st["exp_avg_sq"])
            steps.append(st["step"])
        if not params:
            return
        b1, b2 = group["betas"]
        use_fused = bool(fused) and all(p.is_cuda for p in params)
        _functional_adamw(params, grads, m, v, [], steps, foreach=None if use_fused else True,
                          fused=use_fused or None, amsgrad=False, beta1=b1, beta2=b2, lr=group["lr"],
                          weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)

    def _bc_table(self, device: torch.device, b1: float, b2: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 - b1^t, 1 - b2^t) for t = 0..step_cap as fp32, computed in float64 and rounded once."""
        key = (b1, b2, device)
        tabs = self._bc_tables.get(key)
        if tabs is None:
            t = torch.arange(self.step_cap + 1, dtype=torch.float64, device=device)
            tabs = ((1.0 - torch.pow(b1, t)).float(), (1.0 - torch.pow(b2, t)).float())
            self._bc_tables[key] = tabs
        return tabs

    def _bias_corrections(self, lt: torch.Tensor, b1: float, b2: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 - b1^t, 1 - b2^t) per slot as (slots, 1) fp32, computed in float64 and rounded once.

        With a cap that int16 holds a lookup table over t = 0..cap replaces the per-step pow (same bits).
        """
        if self.local_step_dtype == torch.int16:
            tab1, tab2 = self._bc_table(lt.device, b1, b2)
            i = lt.int()
            return tab1[i].unsqueeze(1), tab2[i].unsqueeze(1)
        t64 = lt.to(torch.float64).unsqueeze(1)
        return (1.0 - torch.pow(b1, t64)).float(), (1.0 - torch.pow(b2, t64)).float()

    def _fused_ok(self, p: torch.Tensor, st: dict) -> bool:
        """Whether the fused kernel (``smet.sparse.kernels``) can do this parameter's update."""
        if not kernels.usable(p):
            return False
        if self.tracks_local_steps and self.local_step_dtype != torch.int16:
            return False  # int32 counters: no bias-correction table
        if "exp_avg_scale" in st:
            return False  # 8-bit moments: the reference path
        g = p.grad
        return (g.device == p.device and g.dtype == p.dtype and g.is_contiguous() and p.is_contiguous()
                and st["exp_avg"].is_contiguous() and st["exp_avg_sq"].is_contiguous())

    def _fused_sparse_update(self, p: torch.nn.Parameter, group: dict, st: dict, layer) -> None:
        lt = st.get("local_step")
        codes = st.get("regrow_code")
        dense = layer.dense if layer is not None else None
        if dense is not None and not dense.is_contiguous():
            dense = None
        kernels.smet_adam_update(
            p, p.grad, st["exp_avg"], st["exp_avg_sq"], lt,
            dense=dense, idx=layer.idx if dense is not None else None, n_live=layer.n_live if layer is not None else 0,
            codes=codes, births=st.get("regrow_birth"),
            **self._kernel_args(group, st["step"], lt is not None or codes is not None, p.device))
        if layer is not None and dense is None:
            layer.sync_dense_values()

    def _kernel_args(self, group: dict, T: int, tracked: bool, device: torch.device) -> dict:
        """The fused kernels' non-tensor arguments for a parameter of ``group`` at step ``T`` (``tracked``:
        it has local steps): bias-correction tables or scalars, warm-up ramp, LR and the rest."""
        b1, b2 = group["betas"]
        return dict(
            tables=self._bc_table(device, b1, b2) if self.reset_local_step else None,
            lr=group["lr"], weight_decay=group["weight_decay"], beta1=b1, beta2=b2, eps=group["eps"],
            bias_corrections=None if self.reset_local_step else (1.0 - b1**T, 1.0 - b2**T),
            block_size=group["block_size"],
            ramp=self.warmup_shape if (tracked and self.regrowth_warmup_steps > 0) else "none",
            warmup_steps=self.regrowth_warmup_steps, regrown_below=min(T, self.step_cap), step_cap=self.step_cap,
            global_step=T)

    def _batchable(self, p: torch.Tensor, group: dict) -> bool:
        """Whether ``p``'s update of this step can go into the one-launch batch of its group
        (:func:`smet.sparse.kernels.smet_adam_update_many`): the fused kernel applies, and this is not
        the step that measures regrown vs mature update sizes."""
        if not self.multi_tensor or p in self._measure or shard.is_sharded(p):
            return False
        st = self._sparse_state(p, group)
        return self._fused_ok(p, st)

    def _fused_sparse_update_many(self, params: list, group: dict, gi: int) -> None:
        """The fused update of ``params`` (one group) in as few launches as their storages allow: one
        per (step count, local-step storage, dense copy, dtypes); bit-identical to one launch each."""
        batches: dict[tuple, list] = {}
        for p in params:
            st = self.state[p]
            st["step"] += 1
            layer = self._layers.get(p)
            lt, codes = st.get("local_step"), st.get("regrow_code")
            dense = layer.dense if layer is not None else None
            if dense is not None and not dense.is_contiguous():
                dense = None
            item = (p, p.grad, st["exp_avg"], st["exp_avg_sq"], lt, codes, st.get("regrow_birth"), dense,
                    layer.idx if dense is not None else None, layer.n_live if layer is not None else 0)
            key = (st["step"],) + tuple(None if t is None else t.dtype for t in item[:9])
            batches.setdefault(key, []).append((item, layer, dense))
        for key, entries in batches.items():
            lt0, codes0 = entries[0][0][4], entries[0][0][5]
            kernels.smet_adam_update_many(
                [e[0] for e in entries], cache=self._tables.setdefault((gi,) + key[1:], {}),
                **self._kernel_args(group, key[0], lt0 is not None or codes0 is not None, params[0].device))
            for _, layer, dense in entries:
                if layer is not None and dense is None:
                    layer.sync_dense_values()

    def _sparse_update(self, p: torch.nn.Parameter, group: dict, stats: dict) -> None:
        st = self._sparse_state(p, group)
        st["step"] += 1
        b = group["block_size"]
        measure = p in self._measure
        pl = shard.local(p)
        old = pl.detach().view(-1, b).float().clone() if measure else None
        layer = self._layers.get(p)
        if not shard.is_sharded(p) and self._fused_ok(p, st):
            self._fused_sparse_update(p, group, st, layer)
        else:
            self._reference_sparse_update(p, group, st, layer)
        if measure:
            delta = (pl.detach().view(-1, b).float() - old).abs().mean(1) / group["lr"]
            slots = self._measure[p]
            first, n_loc = self._slot_range(p, b)  # (0, all) unless FSDP2 or ZeRO sharded the values
            live = layer.n_live if layer is not None else first + n_loc
            live = max(0, min(n_loc, live - first))
            if slots.dtype == torch.uint8:  # the controller's pack_slots bit mask (global slots)
                is_regrown = unpack_slots(slots, first + n_loc)[first:]
            else:
                is_regrown = torch.zeros(n_loc, dtype=torch.bool, device=delta.device)
                is_regrown[shard.local_slots(slots, first, n_loc)] = True
            is_regrown = is_regrown[:live]
            d = delta[:live]
            # per-layer (sum, count) on the device; step() turns them into means with ONE host sync
            n_regrown = is_regrown.sum()
            regrown_sum = (d * is_regrown).sum()
            stats["regrown"].append((regrown_sum, n_regrown))
            stats["mature"].append((d.sum() - regrown_sum, live - n_regrown))

    def _reference_sparse_update(self, p: torch.nn.Parameter, group: dict, st: dict, layer) -> None:
        """The update in plain PyTorch ops (CPU, and wherever the fused kernel does not apply)."""
        b = group["block_size"]
        b1, b2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        T = st["step"]
        g = shard.local(p.grad).view(-1, b)
        quantised = "exp_avg_scale" in st
        if quantised:  # 8-bit: decode to fp32, update, encode again at the end
            g = g.float()
            m = quant.dequantize(st["exp_avg"], st["exp_avg_scale"]).view(-1, b)
            v = quant.dequantize(st["exp_avg_sq"], st["exp_avg_sq_scale"]).view(-1, b)
        else:
            m, v = st["exp_avg"].view(-1, b), st["exp_avg_sq"].view(-1, b)
        m.mul_(b1).add_(g, alpha=1.0 - b1)
        v.mul_(b2).addcmul_(g, g, value=1.0 - b2)

        W = self.regrowth_warmup_steps
        ramp = None
        lt = None
        if "local_step" in st:
            lt = st["local_step"]
            lt.add_(1).clamp_(max=self.step_cap)
        elif "regrow_code" in st:
            lt = self._decode(st)
        if lt is not None:
            tf = lt.to(torch.float32).unsqueeze(1)
            if W > 0:
                # regrown slots lag the global step; slots alive since init equal it (both saturate)
                regrown = lt < min(T, self.step_cap)
                ramp = torch.where(regrown.unsqueeze(1), (tf / W).clamp_(max=1.0), torch.ones_like(tf))
                if self.warmup_shape == "momentum":
                    m.mul_(ramp.to(m.dtype))
                    ramp = None
        if self.reset_local_step:
            # per-slot bias corrections, computed in float64 and rounded once to fp32 (so t = 1 gives
            # exactly fl32(1 - beta), the same factor the moment update used)
            bc1, bc2 = self._bias_corrections(lt, b1, b2)
            denom = (v.float() / bc2).sqrt_().add_(eps)
            upd = (m.float() / bc1).div_(denom)
        else:
            bc1 = 1.0 - b1**T
            bc2 = 1.0 - b2**T
            denom = (v.float() / bc2).sqrt_().add_(eps)
            upd = (m.float() / bc1).div_(denom)
        if quantised:
            quant.quantize_(m.reshape(-1), st["exp_avg"], st["exp_avg_scale"])
            quant.quantize_(v.reshape(-1), st["exp_avg_sq"], st["exp_avg_sq_scale"])
        step_lr = lr if ramp is None else ramp * lr  # python float or (slots, 1) tensor
        pv = shard.local(p).view(-1, b)
        if wd != 0.0:
            pv.mul_((1.0 - step_lr * wd) if ramp is None else (1.0 - step_lr * wd).to(pv.dtype))
        if ramp is None:
            pv.add_(upd.to(pv.dtype), alpha=-lr)
        else:
            pv.sub_((upd * step_lr).to(pv.dtype))
        if layer is not None:
            layer.sync_dense_values()


def _layer_means(stats: dict[str, list]) -> dict[str, float]:
    """Per key: the mean over layers of each layer's mean |update| / lr (layers with no slot of the
    kind left out; NaN when none has one), from per-layer (sum, count) device tensors, one sync."""
    keys = [k for k, v in stats.items() if v]
    out = {k: float("nan") for k in stats}
    if not keys:
        return out
    flat = torch.stack([torch.stack([x.float(), torch.as_tensor(c, device=x.device).float()])
                        for k in keys for x, c in stats[k]]).tolist()
    i = 0
    for k in keys:
        means = []
        for total, count in flat[i:i + len(stats[k])]:
            if count > 0:
                means.append(total / count)
        i += len(stats[k])
        out[k] = math.fsum(means) / len(means) if means else float("nan")  # exact: layer order does not matter
    return out


def option_defaults() -> dict:
    """What an optimizer config that leaves a key out gets: the :class:`SMETOptimizer` keyword
    defaults (read from its signature, so there is one copy) plus ``lr_scaling: none`` and
    ``lr_scaling_scope: all`` (as conf/optimizer/adamw.yaml). Configs composed from conf/ set every key (conf/optimizer/adamw.yaml
    and the sparsity presets; tests/test_architecture.py checks it), so these apply only to
    hand-written dicts in a plain PyTorch loop."""
    import inspect

    out = {k: p.default for k, p in inspect.signature(SMETOptimizer.__init__).parameters.items()
           if p.default is not inspect.Parameter.empty and k not in ("lr", "fused")}
    return out | {"lr_scaling": "none", "lr_scaling_scope": "all"}


def build_smet_optimizer(model: torch.nn.Module, ocfg, sparse, *, per_layer_groups: bool = False) -> SMETOptimizer:
    """Param groups: dense (decay / no decay), and one group per (density, block size) of sparse layers
    (``per_layer_groups``: one group per sparse layer, what DeepSpeed ZeRO needs to give each layer its own
    flat partition, :meth:`SMETOptimizer.bind_partitions`; the same updates, bit for bit).

    ``sparse``: the model's ``SparseController``; the new optimizer is attached to it
    (``sparse.attach_optimizer``), so topology updates reset the state of regrown slots."""
    lr = float(ocfg["lr"])
    o = option_defaults() | {k: v for k, v in dict(ocfg).items() if v is not None}
    wd = float(o["weight_decay"])
    scaling, scope = o["lr_scaling"], o["lr_scaling_scope"]
    layers = sparse.layers
    sparse_ids = {id(layer.values) for layer in layers}
    global_scale = lr_scale(sparse.target_density, scaling) if scope == "all" else 1.0
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in sparse_ids:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups: list[dict] = []
    if decay:
        groups.append({"params": decay, "weight_decay": wd, "lr": lr * global_scale, "lr_scale": global_scale})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr": lr * global_scale, "lr_scale": global_scale})
    by_key: dict[tuple, list] = {}
    for layer in layers:
        s = lr_scale(sparse.target_density, scaling) if scope == "all" else lr_scale(layer.final_density, scaling)
        key = (round(s, 12), layer.block_size) + ((len(by_key),) if per_layer_groups else ())
        by_key.setdefault(key, []).append(layer.values)
    for (s, b, *_), ps in by_key.items():
        groups.append({"params": ps, "weight_decay": wd, "lr": lr * s, "lr_scale": s, "sparse": True, "block_size": b})
    on_cuda = any(p.is_cuda for p in model.parameters())
    o = option_defaults() | {k: v for k, v in dict(ocfg).items() if v is not None}
    opt = SMETOptimizer(
        groups, lr=lr, betas=tuple(float(x) for x in o["betas"]), eps=float(o["eps"]), weight_decay=wd,
        regrowth_warmup_steps=int(o["regrowth_warmup_steps"]), reset_local_step=bool(o["reset_local_step"]),
        reset_moments=bool(o["reset_moments"]), warmup_shape=str(o["warmup_shape"]),
        local_step_storage=str(o["local_step_storage"]), fused_backward=bool(o["fused_backward"]),
        moments=str(o["moments"]), fused=on_cuda or None,
    )
    for layer in layers:
        opt.register_layer(layer)
    sparse.attach_optimizer(opt)
    return opt
