"""Fused pointwise ops of the decoder block: RMSNorm, rotary embedding, SwiGLU (``model.pointwise: fused``).

The reference path of :mod:`smet.models.llama` (``model.pointwise: reference``, the ops as written in
the module) runs RMSNorm and RoPE as a dozen elementwise PyTorch kernels in fp32 and SwiGLU as two,
each reading and writing whole ``tokens x hidden`` (or ``x intermediate``) tensors; on an H200 those
kernels, not the GEMMs, took ~45 % of a 130m dense step (docs/benchmarks.md, issue 15). Here each op
is one :class:`torch.autograd.Function` with one Triton kernel forward and one backward:

* :func:`rms_norm` - ``y = x * rsqrt(mean(x^2) + eps) * w`` in fp32, rounded once to ``x``'s dtype;
  saves ``x`` and the per-row ``rstd`` (fp32) for backward - not the fp32 copy of ``x`` and the
  normalised input the reference keeps (4 B per element less);
* :func:`rope` - rotate-half RoPE on ``(batch, seq, heads, head_dim)`` (the projection's layout,
  before the transpose for attention), in fp32 registers, rounded once; saves nothing per token
  (backward is the inverse rotation);
* :func:`swiglu` - ``silu(gate) * up`` in fp32, rounded once; saves ``gate`` and ``up`` - not
  ``silu(gate)`` (one ``tokens x intermediate`` tensor less).

The math is the reference's in fp32 with one rounding at the end (the reference rounds RMSNorm's
output twice and SwiGLU's ``silu`` before the product under bf16), so results agree with the reference
to the output dtype's rounding (tests/test_pointwise.py, on CPU through Triton's interpreter).

Where the kernels do not run (CPU tensors without ``TRITON_INTERPRET=1``, no Triton,
``SMET_TRITON=0``) the same Functions compute in PyTorch ops, in fp32, saving the same tensors. Under
``torch.compile`` tracing the model takes the reference ops (Inductor fuses them itself).
"""

from __future__ import annotations

import torch

from smet.sparse.kernels import triton, tl, usable

ROWS = 16  # rows (of head_dim / 2 values) per RoPE program


if triton is not None:

    @triton.jit
    def _rms_fwd_kernel(x_ptr, w_ptr, y_ptr, rstd_ptr, D, eps, BLOCK_D: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_D)
        mask = cols < D
        x = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        ms = tl.sum(x * x, axis=0) / D
        rstd = 1.0 / tl.sqrt_rn(ms + eps)
        tl.store(y_ptr + row * D + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(rstd_ptr + row, rstd)

    @triton.jit
    def _rms_bwd_kernel(g_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_ptr, N, D, rows_per_prog,
                        BLOCK_D: tl.constexpr):
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK_D)
        mask = cols < D
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK_D], dtype=tl.float32)
        start = pid * rows_per_prog
        base = start.to(tl.int64) * D
        for r in range(start, tl.minimum(start + rows_per_prog, N)):
            off = base + (r - start) * D + cols
            x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + off, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + r)
            xhat = x * rstd
            wg = w * g
            c = tl.sum(wg * xhat, axis=0) / D
            tl.store(dx_ptr + off, (rstd * (wg - xhat * c)).to(dx_ptr.dtype.element_ty), mask=mask)
            dw += g * xhat
        tl.store(dw_ptr + pid.to(tl.int64) * D + cols, dw, mask=mask)

    @triton.jit
    def _rope_kernel(x_ptr, cos_ptr, sin_ptr, out_ptr, n_rows, T, H, sb, st, sh, BACKWARD: tl.constexpr,
                     HALF: tl.constexpr, ROWS_: tl.constexpr):
        # rows r = (b * T + t) * H + h of x (strides sb, st, sh; head_dim contiguous); out contiguous
        rows = tl.program_id(0).to(tl.int64) * ROWS_ + tl.arange(0, ROWS_)
        j = tl.arange(0, HALF)
        rmask = rows < n_rows
        h = rows % H
        t = (rows // H) % T
        b = rows // (H * T)
        src = (b * sb + t * st + h * sh)[:, None] + j[None, :]
        dst = (rows * (2 * HALF))[:, None] + j[None, :]
        mask = rmask[:, None]
        x1 = tl.load(x_ptr + src, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(x_ptr + src + HALF, mask=mask, other=0.0).to(tl.float32)
        cs = (t * (2 * HALF))[:, None] + j[None, :]
        c = tl.load(cos_ptr + cs, mask=mask, other=0.0).to(tl.float32)
        s = tl.load(sin_ptr + cs, mask=mask, other=0.0).to(tl.float32)
        if BACKWARD:  # the inverse rotation (the transpose of the forward's)
            s = -s
        # x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1); cos / sin repeat across the halves
        o1 = x1 * c - x2 * s
        o2 = x2 * c + x1 * s
        odt = out_ptr.dtype.element_ty
        tl.store(out_ptr + dst, o1.to(odt), mask=mask)
        tl.store(out_ptr + dst + HALF, o2.to(odt), mask=mask)

    @triton.jit
    def _swiglu_fwd_kernel(g_ptr, u_ptr, o_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        sig = 1.0 / (1.0 + tl.exp(-g))
        tl.store(o_ptr + offs, (g * sig * u).to(o_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _swiglu_bwd_kernel(go_ptr, g_ptr, u_ptr, dg_ptr, du_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        go = tl.load(go_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        sig = 1.0 / (1.0 + tl.exp(-g))
        silu = g * sig
        tl.store(du_ptr + offs, (go * silu).to(du_ptr.dtype.element_ty), mask=mask)
        tl.store(dg_ptr + offs, (go * u * (sig * (1.0 + g * (1.0 - sig)))).to(dg_ptr.dtype.element_ty), mask=mask)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# ---------------------------------------------------------------------------------------- RMSNorm


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        D = x.shape[-1]
        x2 = x.reshape(-1, D)
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        N = x2.shape[0]
        if usable(x2, weight):
            y = torch.empty_like(x2)
            rstd = torch.empty(N, device=x.device, dtype=torch.float32)
            if N:
                _rms_fwd_kernel[(N,)](x2, weight, y, rstd, D, float(eps), BLOCK_D=_next_pow2(D))
        else:
            x32 = x2.float()
            rstd = torch.rsqrt(x32.square().mean(-1) + eps)
            y = (x32 * rstd[:, None] * weight.float()).to(x.dtype)
        ctx.save_for_backward(x2, weight, rstd)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x2, weight, rstd = ctx.saved_tensors
        N, D = x2.shape
        g2 = g.reshape(N, D)
        if not g2.is_contiguous():
            g2 = g2.contiguous()
        if usable(x2, g2):
            dx = torch.empty_like(x2)
            progs = max(1, min(N, 512))
            per = -(-N // progs) if N else 1
            progs = max(1, -(-N // per)) if N else 1
            dw_part = torch.zeros(progs, D, device=x2.device, dtype=torch.float32)
            if N:
                _rms_bwd_kernel[(progs,)](g2, x2, weight, rstd, dx, dw_part, N, D, per, BLOCK_D=_next_pow2(D))
            dw = dw_part.sum(0)
        else:
            xhat = x2.float() * rstd[:, None]
            wg = weight.float() * g2.float()
            c = (wg * xhat).mean(-1, keepdim=True)
            dx = (rstd[:, None] * (wg - xhat * c)).to(x2.dtype)
            dw = (g2.float() * xhat).sum(0)
        return dx.view(g.shape), dw.to(weight.dtype), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of the last dimension: ``x * rsqrt(mean(x^2) + eps) * weight`` (fp32 math, one rounding)."""
    return _RMSNorm.apply(x, weight, eps)


# ---------------------------------------------------------------------------------------- RoPE


def _rope_torch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool) -> torch.Tensor:
    # x: (B, T, H, D); cos / sin: (T, D) fp32
    half = x.shape[-1] // 2
    x32 = x.float()
    x1, x2 = x32[..., :half], x32[..., half:]
    c, s = cos[:, None, :half], sin[:, None, :half]
    if inverse:
        s = -s
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


def _rope_apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool) -> torch.Tensor:
    B, T, H, D = x.shape
    if not usable(x, cos) or D // 2 != _next_pow2(D // 2):  # the kernel takes head_dim / 2 = 2^k
        return _rope_torch(x, cos, sin, inverse)
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty(B, T, H, D, device=x.device, dtype=x.dtype)
    n_rows = B * T * H
    if n_rows:
        _rope_kernel[(triton.cdiv(n_rows, ROWS),)](x, cos, sin, out, n_rows, T, H, x.stride(0), x.stride(1),
                                                   x.stride(2), BACKWARD=inverse, HALF=D // 2, ROWS_=ROWS)
    return out


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.cos_sin = (cos, sin)  # buffers (no per-token saved tensor)
        return _rope_apply(x, cos, sin, inverse=False)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        cos, sin = ctx.cos_sin
        return _rope_apply(g, cos, sin, inverse=True), None, None


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of ``x`` ``(batch, seq, heads, head_dim)`` with fp32 ``cos`` / ``sin`` ``(seq,
    head_dim)`` (their two halves equal, as :class:`smet.models.llama.RotaryEmbedding` builds them)."""
    return _Rope.apply(x, cos.contiguous(), sin.contiguous())


# ---------------------------------------------------------------------------------------- SwiGLU

SWIGLU_BLOCK = 1024


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        gate_c = gate if gate.is_contiguous() else gate.contiguous()
        up_c = up if up.is_contiguous() else up.contiguous()
        if usable(gate_c, up_c):
            out = torch.empty_like(gate_c)
            n = out.numel()
            if n:
                _swiglu_fwd_kernel[(triton.cdiv(n, SWIGLU_BLOCK),)](gate_c, up_c, out, n, BLOCK=SWIGLU_BLOCK)
        else:
            g32 = gate_c.float()
            out = (g32 * torch.sigmoid(g32) * up_c.float()).to(gate.dtype)
        ctx.save_for_backward(gate_c, up_c)
        return out

    @staticmethod
    def backward(ctx, go: torch.Tensor):
        gate, up = ctx.saved_tensors
        go = go if go.is_contiguous() else go.contiguous()
        if usable(gate, go):
            dg, du = torch.empty_like(gate), torch.empty_like(up)
            n = gate.numel()
            if n:
                _swiglu_bwd_kernel[(triton.cdiv(n, SWIGLU_BLOCK),)](go, gate, up, dg, du, n, BLOCK=SWIGLU_BLOCK)
            return dg, du
        g32, go32 = gate.float(), go.float()
        sig = torch.sigmoid(g32)
        du = (go32 * g32 * sig).to(up.dtype)
        dg = (go32 * up.float() * (sig * (1.0 + g32 * (1.0 - sig)))).to(gate.dtype)
        return dg, du


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` (fp32 math, one rounding); ``gate`` and ``up`` of one shape and dtype."""
    return _SwiGLU.apply(gate, up)
