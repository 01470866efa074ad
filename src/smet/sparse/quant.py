"""Block-wise 8-bit storage of Adam moments (pure PyTorch), for the compact states of sparse layers.

A moment tensor of n elements is cut into blocks of :data:`QBLOCK` consecutive elements; each
block keeps one fp32 scale (its largest magnitude) and one byte per element:

* first moment m (signed): ``int8`` code k in [-127, 127], m = sign(k) * scale * (|k| / 127)^2;
* second moment v (>= 0):   ``uint8`` code k in [0, 255],   v = scale * (k / 255)^4.

The power maps put most codes near zero, where Adam's moments live (relative resolution grows
towards the block maximum; the smallest non-zero step is scale / 127^2 for m and scale / 255^4 for
v, i.e. sqrt(v) is stored with a quadratic map). Encoding rounds to the nearest code in the
transformed domain (|x|^(1/2) resp. x^(1/4)); code 0 is exactly 0, so zeroing a slot's codes zeroes
its moments. Cost per element: 1 byte + 4 / QBLOCK bytes (the scale), against 2 (bf16) or 4 (fp32).
The same scheme, choice of maps aside, as 8-bit Adam in bitsandbytes / torchao (block-wise absmax
scaling with a non-linear code book); not bit-compatible with either.
"""

from __future__ import annotations

import math

import torch

QBLOCK = 256
M_LEVELS = 127
V_LEVELS = 255


def n_scales(numel: int) -> int:
    return max(1, math.ceil(numel / QBLOCK))


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """``x`` (flat) as (blocks, QBLOCK), zero-padded at the end (a copy only when padding is needed)."""
    n = x.numel()
    pad = n_scales(n) * QBLOCK - n
    if pad:
        x = torch.cat([x.reshape(-1), x.new_zeros(pad)])
    return x.reshape(-1, QBLOCK)


def empty_state(numel: int, signed: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scales) of a zero moment."""
    codes = torch.zeros(numel, dtype=torch.int8 if signed else torch.uint8, device=device)
    return codes, torch.zeros(n_scales(numel), dtype=torch.float32, device=device)


def dequantize(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """fp32 values of a quantised moment (flat, ``codes.numel()`` elements)."""
    n = codes.numel()
    signed = codes.dtype == torch.int8
    k = _blocks(codes.float())
    if signed:
        x = k.abs().div_(M_LEVELS).square_().mul_(k.sign())
    else:
        x = k.div_(V_LEVELS).square_().square_()
    return x.mul_(scales.unsqueeze(1)).reshape(-1)[:n]


@torch.no_grad()
def quantize_(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> None:
    """Encode fp32 ``x`` (flat) into ``codes`` / ``scales`` in place."""
    n = x.numel()
    signed = codes.dtype == torch.int8
    b = _blocks(x.float())
    s = b.abs().amax(1)
    scales.copy_(s)
    safe = torch.where(s > 0, s, torch.ones_like(s)).unsqueeze(1)
    if signed:
        k = (b.abs() / safe).sqrt_().mul_(M_LEVELS).round_().clamp_(max=M_LEVELS).mul_(b.sign())
        codes.copy_(k.reshape(-1)[:n].to(torch.int8))
    else:
        k = (b.clamp(min=0) / safe).sqrt_().sqrt_().mul_(V_LEVELS).round_().clamp_(max=V_LEVELS)
        codes.copy_(k.reshape(-1)[:n].to(torch.uint8))
