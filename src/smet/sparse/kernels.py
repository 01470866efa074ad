"""Fused Triton kernels for the compact sparse layer and the SMET optimizer (CUDA fast path).

Each compact layer would otherwise cost a few dozen small elementwise kernels per step (moment
updates, local-step bookkeeping, warm-up ramp, bias-correction lookups, dtype casts, index
conversion, scatter/gather). On a GPU those launches, not the GEMMs, set the step time. Three
kernels replace them, one launch each per layer:

* :func:`scatter_dense`  - dense (n_blocks * b) weight in the compute dtype with the active values
  written at their int32 block ids (a memset plus one kernel; no int64 index copy);
* :func:`gather_grad`    - the compact gradient: the dense weight gradient read at the active
  positions, cast to the values' dtype, zero for free slots (one kernel);
* :func:`scatter_rows` / :func:`gather_rows` - the same two for the 2-byte row-sorted index
  (``SparseLinear(index="rows")``: int16 column-block ids + int32 row offsets), one program per row;
  the scatter is ONE launch, zeros included (each program zero-fills its own row before writing
  the row's values; no memset);
* :func:`smet_adam_update` - the whole per-slot SMET update of section 3 of the method (moments,
  local step from a 1-byte regrowth code or a saturating int16 counter, linear or momentum warm-up
  of regrown slots, per-slot bias corrections from the exact fp32 table, decoupled weight decay,
  value update) and, for the ``persistent`` mode, the write of the new values into the dense compute copy (one kernel);
  :func:`smet_adam_update_many` runs it for all compact parameters of a param group in one launch.

The math and every rounding to a storage dtype follow the PyTorch reference path in
``smet.sparse.optimizer`` / ``smet.sparse.layer`` (fp32 arithmetic, IEEE-rounded division and
square root); results agree with it to fp32 rounding (tests compare both, on CPU through Triton's
interpreter and on CUDA). The reference path stays in use where these kernels do not apply: CPU
tensors, no Triton, under ``torch.compile`` tracing (Inductor fuses the reference ops itself),
a step cap beyond int16 (int32 counters), and the optimizer step that measures regrown vs mature
update sizes.
Set ``SMET_TRITON=0`` to force the reference path everywhere (read once, when this module is
imported; :func:`set_enabled` switches it at run time).
"""

from __future__ import annotations

import os

import torch

try:  # Triton ships with CUDA builds of PyTorch; CPU-only installs do without it
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
BLOCK = 1024


# read once at import (usable() runs a few times per layer and step: no environment lookup there);
# set_enabled() switches the path at run time
_ENABLED = triton is not None and os.environ.get("SMET_TRITON", "1") != "0"


def available() -> bool:
    """Triton importable and the fused path on (``SMET_TRITON`` at import, or :func:`set_enabled`)."""
    return _ENABLED


def set_enabled(on: bool) -> bool:
    """Switch the fused path on or off at run time (no effect without Triton); returns the previous
    setting. For checks that compare both paths in one process; ``SMET_TRITON`` is read at import only."""
    global _ENABLED
    prev = _ENABLED
    _ENABLED = bool(on) and triton is not None
    return prev


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the fused kernels run for these tensors (CUDA, or CPU under TRITON_INTERPRET=1)."""
    if not _ENABLED or _compiling():
        return False
    if INTERPRET:
        return True
    for t in tensors:
        if not t.is_cuda:
            return False
    return True


def _compiling() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except Exception:  # pragma: no cover
        return False


if triton is not None:

    @triton.jit
    def _scatter_kernel(vals_ptr, bidx_ptr, out_ptr, n_elem, B: tl.constexpr, BLOCK_SIZE: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offs < n_elem
        blk = tl.load(bidx_ptr + offs // B, mask=mask, other=0).to(tl.int64)
        x = tl.load(vals_ptr + offs, mask=mask, other=0.0)
        tl.store(out_ptr + blk * B + offs % B, x.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _gather_kernel(gw_ptr, bidx_ptr, out_ptr, n_live_elem, n_elem, B: tl.constexpr, BLOCK_SIZE: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        live = offs < n_live_elem
        blk = tl.load(bidx_ptr + offs // B, mask=live, other=0).to(tl.int64)
        g = tl.load(gw_ptr + blk * B + offs % B, mask=live, other=0.0)
        tl.store(out_ptr + offs, g.to(out_ptr.dtype.element_ty), mask=offs < n_elem)

    @triton.jit
    def _smet_adam_body(p_ptr, g_ptr, m_ptr, v_ptr, lt_ptr, birth_ptr, tab1_ptr, tab2_ptr, idx_ptr, dense_ptr,
                        offs, n_elem, n_live_elem, lr, wd, b1, b2, c1, c2, eps, bc1_s, bc2_s, w_f, regrown_below,
                        step_cap, global_step, B: tl.constexpr, HAS_LT: tl.constexpr, HAS_CODE: tl.constexpr,
                        PER_SLOT_BC: tl.constexpr, RAMP: tl.constexpr, HAS_WD: tl.constexpr,
                        HAS_DENSE: tl.constexpr, BLOCK_SIZE: tl.constexpr):
        # the update of elements ``offs`` of one parameter (both kernels below run exactly this code)
        # RAMP: 0 none, 1 linear (scales the step), 2 momentum (damps the first moment)
        mask = offs < n_elem
        slot = offs // B
        pdt = p_ptr.dtype.element_ty
        mdt = m_ptr.dtype.element_ty
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        # m.mul_(b1).add_(g, alpha=1 - b1); v.mul_(b2).addcmul_(g, g, value=1 - b2): round to storage each op;
        # c1 = 1 - b1, c2 = 1 - b2 come in computed in float64 (as torch's alpha), so that c1 == the table's
        # fp32(1 - b1^1) and a reset slot's first bias-corrected moment is g itself
        m = (m * b1).to(mdt).to(tl.float32)
        m = (m + c1 * g).to(mdt).to(tl.float32)
        v = (v * b2).to(mdt).to(tl.float32)
        v = (v + c2 * (g * g)).to(mdt).to(tl.float32)
        ramp = tl.full([BLOCK_SIZE], 1.0, tl.float32)
        lt = tl.zeros([BLOCK_SIZE], dtype=tl.int32)
        if HAS_LT:
            if HAS_CODE:  # 1-byte regrowth code -> local step: min(T - birth[code], cap)
                code = tl.load(lt_ptr + slot, mask=mask, other=0).to(tl.int32)
                birth = tl.load(birth_ptr + code, mask=mask, other=0)
                lt = tl.minimum(global_step - birth, step_cap)
            else:
                lt = tl.load(lt_ptr + slot, mask=mask, other=0).to(tl.int32)
                if B == 1:  # each element owns its slot: increment here (else done before the launch)
                    lt = tl.minimum(lt + 1, step_cap)
                    tl.store(lt_ptr + slot, lt.to(lt_ptr.dtype.element_ty), mask=mask)
            if RAMP != 0:
                lin = tl.minimum(tl.math.div_rn(lt.to(tl.float32), w_f), 1.0)
                ramp = tl.where(lt < regrown_below, lin, 1.0)
            if RAMP == 2:
                m = (m * ramp.to(mdt).to(tl.float32)).to(mdt).to(tl.float32)
                ramp = tl.full([BLOCK_SIZE], 1.0, tl.float32)
        if PER_SLOT_BC:
            bc1 = tl.load(tab1_ptr + lt, mask=mask, other=1.0)
            bc2 = tl.load(tab2_ptr + lt, mask=mask, other=1.0)
        else:
            bc1 = bc1_s
            bc2 = bc2_s
        denom = tl.sqrt_rn(tl.math.div_rn(v, bc2)) + eps
        upd = tl.math.div_rn(tl.math.div_rn(m, bc1), denom)
        step_lr = ramp * lr
        p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_WD:
            p = (p * (1.0 - step_lr * wd)).to(pdt).to(tl.float32)
        p = p - (upd * step_lr).to(pdt).to(tl.float32)
        p_st = p.to(pdt)
        tl.store(p_ptr + offs, p_st, mask=mask)
        tl.store(m_ptr + offs, m.to(mdt), mask=mask)
        tl.store(v_ptr + offs, v.to(mdt), mask=mask)
        if HAS_DENSE:
            live = mask & (offs < n_live_elem)
            blk = tl.load(idx_ptr + slot, mask=live, other=0).to(tl.int64)
            tl.store(dense_ptr + blk * B + offs % B, p_st.to(dense_ptr.dtype.element_ty), mask=live)

    # row-sorted index (SparseLinear index="rows"): program r handles row r, whose slots are
    # [row_ptr[r], row_ptr[r + 1]) with int16 column-block ids ``cols``; GATHER: compact <- dense
    # (the gradient), else dense <- compact (the weight). Scattering, program r owns dense row r
    # exclusively: it zero-fills the row itself (the output comes from torch.empty, no memset launch),
    # then writes the live values over the zeros
    @triton.jit
    def _rows_kernel(src_ptr, cols_ptr, row_ptr, dst_ptr, row_len, B: tl.constexpr, GATHER: tl.constexpr,
                     BLOCK_SIZE: tl.constexpr):
        r = tl.program_id(0).to(tl.int64)
        if not GATHER:
            row0 = dst_ptr + r * row_len
            zero = tl.zeros([BLOCK_SIZE], dtype=dst_ptr.dtype.element_ty)
            for start in range(0, row_len, BLOCK_SIZE):
                offs = start + tl.arange(0, BLOCK_SIZE)
                tl.store(row0 + offs, zero, mask=offs < row_len)
            # every thread's zero stores land before any value store to the same addresses
            tl.debug_barrier()
        e0 = tl.load(row_ptr + r).to(tl.int64) * B
        e1 = tl.load(row_ptr + r + 1).to(tl.int64) * B
        for start in range(e0, e1, BLOCK_SIZE):
            offs = start + tl.arange(0, BLOCK_SIZE)
            mask = offs < e1
            col = tl.load(cols_ptr + offs // B, mask=mask, other=0).to(tl.int64)
            pos = r * row_len + col * B + offs % B
            if GATHER:
                x = tl.load(src_ptr + pos, mask=mask, other=0.0)
                tl.store(dst_ptr + offs, x.to(dst_ptr.dtype.element_ty), mask=mask)
            else:
                x = tl.load(src_ptr + offs, mask=mask, other=0.0)
                tl.store(dst_ptr + pos, x.to(dst_ptr.dtype.element_ty), mask=mask)

    # regrown_below and global_step change every step: no re-compiles at multiples of 16
    @triton.jit(do_not_specialize=["regrown_below", "global_step"])
    def _smet_adam_kernel(p_ptr, g_ptr, m_ptr, v_ptr, lt_ptr, birth_ptr, tab1_ptr, tab2_ptr, idx_ptr, dense_ptr,
                          n_elem, n_live_elem, lr, wd, b1, b2, c1, c2, eps, bc1_s, bc2_s, w_f, regrown_below, step_cap,
                          global_step, B: tl.constexpr, HAS_LT: tl.constexpr, HAS_CODE: tl.constexpr,
                          PER_SLOT_BC: tl.constexpr, RAMP: tl.constexpr,
                          HAS_WD: tl.constexpr, HAS_DENSE: tl.constexpr, BLOCK_SIZE: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        _smet_adam_body(p_ptr, g_ptr, m_ptr, v_ptr, lt_ptr, birth_ptr, tab1_ptr, tab2_ptr, idx_ptr, dense_ptr,
                        offs, n_elem, n_live_elem, lr, wd, b1, b2, c1, c2, eps, bc1_s, bc2_s, w_f, regrown_below,
                        step_cap, global_step, B, HAS_LT, HAS_CODE, PER_SLOT_BC, RAMP, HAS_WD, HAS_DENSE, BLOCK_SIZE)

    # several parameters in one launch: program (i, j) updates chunk i of parameter j, whose tensors'
    # addresses and sizes are row j of ``table`` (TABLE_COLS int64: p g m v lt birth idx dense n n_live);
    # the first parameter's tensors give the pointer types (every parameter of a launch shares them)
    @triton.jit(do_not_specialize=["regrown_below", "global_step"])
    def _smet_adam_multi_kernel(table_ptr, p0, g0, m0, v0, lt0, birth0, tab1_ptr, tab2_ptr, idx0, dense0,
                                lr, wd, b1, b2, c1, c2, eps, bc1_s, bc2_s, w_f, regrown_below, step_cap, global_step,
                                B: tl.constexpr, HAS_LT: tl.constexpr, HAS_CODE: tl.constexpr,
                                PER_SLOT_BC: tl.constexpr, RAMP: tl.constexpr, HAS_WD: tl.constexpr,
                                HAS_DENSE: tl.constexpr, BLOCK_SIZE: tl.constexpr):
        row = table_ptr + tl.program_id(1).to(tl.int64) * 10
        n_elem = tl.load(row + 8)
        n_live_elem = tl.load(row + 9)
        offs = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        _smet_adam_body(tl.load(row + 0).to(p0.dtype), tl.load(row + 1).to(g0.dtype), tl.load(row + 2).to(m0.dtype),
                        tl.load(row + 3).to(v0.dtype), tl.load(row + 4).to(lt0.dtype),
                        tl.load(row + 5).to(birth0.dtype), tab1_ptr, tab2_ptr, tl.load(row + 6).to(idx0.dtype),
                        tl.load(row + 7).to(dense0.dtype), offs, n_elem, n_live_elem, lr, wd, b1, b2, c1, c2, eps,
                        bc1_s, bc2_s, w_f, regrown_below, step_cap, global_step, B, HAS_LT, HAS_CODE, PER_SLOT_BC,
                        RAMP, HAS_WD, HAS_DENSE, BLOCK_SIZE)


TABLE_COLS = 10

# Direct launches (SMET_DIRECT_LAUNCH=0 turns them off). Triton's ``kernel[grid](...)`` binds and specialises
# every argument on every call (dtype and 16-byte alignment of each tensor; for each int whether it is 1, a
# multiple of 16, or 64-bit) to find the compiled kernel: several microseconds of Python per launch, and the
# transient layer launches its scatter and gather kernels per layer and step. _Direct keys the compiled
# kernel on exactly those properties itself, lets the first launch of a key go through Triton (which compiles
# or finds the kernel and returns it) and launches later ones through the compiled kernel's own launcher.
_DIRECT = os.environ.get("SMET_DIRECT_LAUNCH", "1") != "0"


def _int_spec(n: int) -> tuple:
    return (n == 1, n % 16 == 0, n >= 2 ** 31)


class _Direct:
    """One ``@triton.jit`` kernel whose non-constexpr parameters are tensors or ints and come first."""

    def __init__(self, fn):
        self.fn = fn
        self.compiled: dict[tuple, object] = {}

    def __call__(self, grid: tuple, args: tuple, **constexprs) -> None:
        if not _DIRECT or INTERPRET:
            self.fn[grid](*args, **constexprs)
            return
        dev = args[0].device.index  # a compiled kernel is loaded per device
        key = (dev, *constexprs.values(), *(
            (a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else _int_spec(a) for a in args))
        k = self.compiled.get(key)
        if k is None:
            k = self.fn[grid](*args, **constexprs)  # compiles or finds the kernel, launches it, returns it
            if k is not None and hasattr(k, "run") and hasattr(k, "packed_metadata"):
                self.compiled[key] = k
            return
        stream = torch._C._cuda_getCurrentRawStream(dev)
        enter, leave = _hooks()
        meta = k.launch_metadata(grid, stream, *args, *constexprs.values()) if enter is not None else None
        g1 = grid[1] if len(grid) > 1 else 1
        g2 = grid[2] if len(grid) > 2 else 1
        k.run(grid[0], g1, g2, stream, k.function, k.packed_metadata, meta, enter, leave, *args,
              *constexprs.values())


def _hooks():
    knobs = getattr(triton, "knobs", None)
    rt = getattr(knobs, "runtime", None)
    return getattr(rt, "launch_enter_hook", None), getattr(rt, "launch_exit_hook", None)


def set_direct_launch(on: bool) -> bool:
    """Switch direct launches on or off at run time; returns the previous setting (for checks)."""
    global _DIRECT
    prev = _DIRECT
    _DIRECT = bool(on)
    return prev


if triton is not None:
    _scatter_direct = _Direct(_scatter_kernel)
    _gather_direct = _Direct(_gather_kernel)
    _rows_direct = _Direct(_rows_kernel)


def _grid(n: int) -> tuple[int]:
    return (max(1, triton.cdiv(n, BLOCK)),)


def scatter_dense(values: torch.Tensor, bidx: torch.Tensor, n_blocks_total: int, block_size: int,
                  dtype: torch.dtype) -> torch.Tensor:
    """(n_blocks_total, b) tensor of ``dtype``: zeros, with ``values[:len(bidx) * b]`` at blocks ``bidx``."""
    w = torch.zeros(n_blocks_total, block_size, dtype=dtype, device=values.device)
    n = bidx.numel() * block_size
    if n:
        _scatter_direct(_grid(n), (values, bidx, w, n), B=block_size, BLOCK_SIZE=BLOCK)
    return w


def gather_grad(gw: torch.Tensor, bidx: torch.Tensor, n_values: int, block_size: int,
                dtype: torch.dtype) -> torch.Tensor:
    """Compact gradient of ``n_values`` elements: ``gw`` at blocks ``bidx`` (cast), zeros after them."""
    gw = gw.contiguous()
    out = torch.empty(n_values, dtype=dtype, device=gw.device)
    n_live = bidx.numel() * block_size
    _gather_direct(_grid(n_values), (gw, bidx, out, n_live, n_values), B=block_size, BLOCK_SIZE=BLOCK)
    return out


ROWS_BLOCK = 256


def scatter_rows(values: torch.Tensor, cols: torch.Tensor, row_ptr: torch.Tensor, out_features: int,
                 in_features: int, block_size: int, dtype: torch.dtype, *,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """(out, in) tensor of ``dtype``: zeros, with the live values of a row-sorted index written in
    (slot ``s`` of row ``r``, ``row_ptr[r] <= s < row_ptr[r + 1]``, at column block ``cols[s]``).
    One launch: the kernel writes the zeros too. ``out``: a contiguous (out, in) tensor of ``dtype``
    to write into, whatever it holds (tests pass a NaN-filled one; default: a fresh ``torch.empty``)."""
    if out is None:
        w = torch.empty(out_features, in_features, dtype=dtype, device=values.device)
    else:
        if out.shape != (out_features, in_features) or out.dtype != dtype or not out.is_contiguous():
            raise ValueError("scatter_rows: out must be a contiguous (out, in) tensor of the compute dtype")
        w = out
    _rows_direct((out_features,), (values, cols, row_ptr, w, in_features), B=block_size, GATHER=False,
                 BLOCK_SIZE=ROWS_BLOCK)
    return w


def gather_rows(gw: torch.Tensor, cols: torch.Tensor, row_ptr: torch.Tensor, n_values: int, n_live: int,
                block_size: int, dtype: torch.dtype) -> torch.Tensor:
    """Compact gradient of ``n_values`` elements from the dense (out, in) ``gw`` at a row-sorted index
    (:func:`scatter_rows`), cast to ``dtype``; zeros after the ``n_live`` live slots."""
    gw = gw.contiguous()
    out_features, in_features = gw.shape
    out = torch.empty(n_values, dtype=dtype, device=gw.device)
    if n_live * block_size < n_values:
        out[n_live * block_size:].zero_()
    _rows_direct((out_features,), (gw, cols, row_ptr, out, in_features), B=block_size, GATHER=True,
                 BLOCK_SIZE=ROWS_BLOCK)
    return out


def smet_adam_update(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                     local_step: torch.Tensor | None, tables: tuple[torch.Tensor, torch.Tensor] | None, *,
                     lr: float, weight_decay: float, beta1: float, beta2: float, eps: float,
                     bias_corrections: tuple[float, float] | None, block_size: int, ramp: str,
                     warmup_steps: int, regrown_below: int, step_cap: int,
                     dense: torch.Tensor | None = None, idx: torch.Tensor | None = None, n_live: int = 0,
                     codes: torch.Tensor | None = None, births: torch.Tensor | None = None,
                     global_step: int = 0) -> None:
    """In-place SMET update of one compact parameter (see ``SMETOptimizer._sparse_update``).

    Local steps come from ``local_step`` (saturating counters, incremented here) or from ``codes``
    (uint8 regrowth codes) with ``births`` (int32 birth step per code) and ``global_step`` (the
    parameter's step after this update's increment): t = min(global_step - births[code], step_cap).
    ``tables`` (per-slot bias corrections indexed by the local step) or ``bias_corrections``
    (global-step scalars) - exactly one is given. ``ramp``: ``none|linear|momentum``; a slot is
    regrown (ramped) while its local step is below ``regrown_below``. ``dense``/``idx``: the
    persistent compute copy and block ids to write the live new values into.
    """
    n = p.numel()
    if n == 0:
        return
    has_code = codes is not None
    if has_code and (births is None or local_step is not None):
        raise ValueError("codes need births, and exclude counters")
    has_lt = local_step is not None or has_code
    dummy = p
    t1, t2, scalars, flags = _update_args(tables, dummy, lr=lr, weight_decay=weight_decay, beta1=beta1, beta2=beta2,
                                          eps=eps, bias_corrections=bias_corrections, block_size=block_size,
                                          ramp=ramp, warmup_steps=warmup_steps, regrown_below=regrown_below,
                                          step_cap=step_cap, global_step=global_step, has_lt=has_lt,
                                          has_code=has_code, has_dense=dense is not None)
    if local_step is not None and block_size > 1:
        # several elements share a slot's counter: bump it first, so no element reads a stored value
        local_step.add_(1).clamp_(max=step_cap)
    _smet_adam_kernel[_grid(n)](
        p, g, m, v, codes if has_code else (local_step if has_lt else dummy), births if has_code else dummy, t1, t2,
        idx if dense is not None else dummy, dense if dense is not None else dummy,
        n, n_live * block_size, *scalars, **flags)


def _update_args(tables, dummy: torch.Tensor, *, lr, weight_decay, beta1, beta2, eps, bias_corrections, block_size,
                 ramp, warmup_steps, regrown_below, step_cap, global_step, has_lt, has_code, has_dense):
    """What both SMET update kernels take after their tensors: the two bias-correction tables (``dummy``
    when absent), the scalars in kernel order, and the constexpr flags."""
    per_slot = tables is not None
    if per_slot and not has_lt:
        raise ValueError("per-slot bias corrections need local steps")
    t1, t2 = tables if per_slot else (dummy, dummy)
    bc1, bc2 = bias_corrections if bias_corrections is not None else (1.0, 1.0)
    scalars = (float(lr), float(weight_decay), float(beta1), float(beta2), 1.0 - float(beta1), 1.0 - float(beta2),
               float(eps), float(bc1), float(bc2), float(max(warmup_steps, 1)), int(regrown_below), int(step_cap),
               int(global_step))
    ramp_code = {"none": 0, "linear": 1, "momentum": 2}[ramp]
    flags = dict(B=block_size, HAS_LT=has_lt, HAS_CODE=has_code, PER_SLOT_BC=per_slot, RAMP=ramp_code if has_lt else 0,
                 HAS_WD=weight_decay != 0.0, HAS_DENSE=has_dense, BLOCK_SIZE=BLOCK)
    return t1, t2, scalars, flags


def smet_adam_update_many(items: list[tuple], tables: tuple[torch.Tensor, torch.Tensor] | None, *,
                          lr: float, weight_decay: float, beta1: float, beta2: float, eps: float,
                          bias_corrections: tuple[float, float] | None, block_size: int, ramp: str,
                          warmup_steps: int, regrown_below: int, step_cap: int, global_step: int = 0,
                          cache: dict | None = None) -> None:
    """:func:`smet_adam_update` of several compact parameters in ONE launch (the same math, bit for bit).

    ``items``: per parameter ``(p, g, m, v, local_step, codes, births, dense, idx, n_live)`` as for
    :func:`smet_adam_update` (None where absent); every item must agree in which of local_step / codes /
    dense it has and in the dtypes of each tensor (the caller groups them), and share the scalars (one
    param group, one step count). A per-step kernel launch per layer costs more host time than its
    device time on a GPU (130m: 84 launches of ~8 us of work, ~95 us of Python each); this is one.
    ``cache``: a dict kept by the caller, reusing the device table of tensor addresses while they repeat.
    """
    if not items:
        return
    first = items[0]
    p0, g0, m0, v0, lt0, codes0, births0, dense0, idx0, _ = first
    has_code = codes0 is not None
    has_counter = lt0 is not None
    has_lt = has_code or has_counter
    has_dense = dense0 is not None
    t1, t2, scalars, flags = _update_args(tables, p0, lr=lr, weight_decay=weight_decay, beta1=beta1, beta2=beta2,
                                          eps=eps, bias_corrections=bias_corrections, block_size=block_size,
                                          ramp=ramp, warmup_steps=warmup_steps, regrown_below=regrown_below,
                                          step_cap=step_cap, global_step=global_step, has_lt=has_lt,
                                          has_code=has_code, has_dense=has_dense)
    sig = lambda t: None if t is None else t.dtype  # noqa: E731
    rows, counters = [], []
    for it in items:
        p, g, m, v, lt, codes, births, dense, idx, n_live = it
        if tuple(sig(t) for t in it[:9]) != tuple(sig(t) for t in first[:9]):
            raise ValueError("smet_adam_update_many: parameters of one launch must share storages and dtypes")
        ltc = codes if has_code else lt
        rows += [p.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr(),
                 (ltc if ltc is not None else p).data_ptr(), (births if has_code else p).data_ptr(),
                 (idx if has_dense else p).data_ptr(), (dense if has_dense else p).data_ptr(),
                 p.numel(), int(n_live) * block_size]
        if has_counter:
            counters.append(lt)
    if counters and block_size > 1:  # several elements share a slot's counter: bump them first
        torch._foreach_add_(counters, 1)
        torch._foreach_clamp_max_(counters, step_cap)
    key = tuple(rows)
    table = cache.get(key) if cache is not None else None
    if table is None:
        host = torch.tensor(rows, dtype=torch.int64)
        if p0.is_cuda:
            host = host.pin_memory()
        table = host.to(p0.device, non_blocking=True)
        if cache is not None:
            cache.clear()
            cache[key] = table
    chunks = max(1, triton.cdiv(max(it[0].numel() for it in items), BLOCK))
    ltc0 = codes0 if has_code else lt0
    _smet_adam_multi_kernel[(chunks, len(items))](
        table, p0, g0, m0, v0, ltc0 if ltc0 is not None else p0, births0 if has_code else p0, t1, t2,
        idx0 if has_dense else p0, dense0 if has_dense else p0, *scalars, **flags)
