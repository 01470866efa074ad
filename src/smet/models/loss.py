"""Chunked fused linear + cross-entropy: the LM head and its loss without full-vocabulary logits.

``linear_cross_entropy(hidden, weight, targets)`` equals
``F.cross_entropy((hidden @ weight.T).float(), targets)`` (mean over targets != ``ignore_index``)
but walks over row chunks of ``hidden``: per chunk it computes the logits in the compute dtype (as
the head matmul would), their fp32 log-softmax and loss, and at once the chunk's gradients (the
Liger-Kernel "fused linear cross entropy" idea): the gradient wrt the chunk's hidden states, and
into an fp32 accumulator the gradient wrt ``weight``. Backward only scales the stored gradients
by ``grad_output``. At most one chunk's logits (``chunk_rows x V``) exist at a time, never the
``N x V`` logits nor their fp32 copies. Without autograd (validation, ``no_grad``) only the loss is
computed, chunk by chunk. Pure PyTorch; no other smet import.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The head matmul's dtype: autocast's when autocast is on, else the operands' (promoted)."""
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev) and hidden.is_floating_point():
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _chunk_logp(h: torch.Tensor, w: torch.Tensor, mx: torch.Tensor | None):
    """(fp32 log-softmax of one chunk's logits, running max logit)."""
    logits = h @ w.t()
    if mx is not None:
        mx = torch.maximum(mx, logits.detach().amax().float())
    return torch.log_softmax(logits, dim=-1, dtype=torch.float32), mx


def _chunks(n: int, rows: int):
    return ((s, min(s + rows, n)) for s in range(0, n, rows))


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows, dtype, ignore_index, track_max):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.to(dtype)
        valid = targets != ignore_index
        tgt = torch.where(valid, targets, 0)
        n_valid = valid.sum()
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        mx = torch.full((), -torch.inf, device=hidden.device) if track_max else None
        grad_h = torch.empty(hidden.shape, dtype=dtype, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for s, e in _chunks(hidden.shape[0], chunk_rows):
            h, t, m = hidden[s:e].to(dtype), tgt[s:e], valid[s:e]
            logp, mx = _chunk_logp(h, w, mx)
            picked = logp.gather(1, t[:, None]).squeeze(1)
            total -= torch.where(m, picked, 0.0).sum()
            # d(sum of row losses)/d logits = softmax - onehot (ignored rows are masked below)
            g = logp.exp_()
            del logp
            g[torch.arange(e - s, device=g.device), t] -= 1.0
            g = g.to(dtype)
            mask = m[:, None].to(dtype)
            if need_h:
                grad_h[s:e] = (g @ w) * mask
            if need_w:
                grad_w += g.t() @ (h * mask)
        inv_n = 1.0 / n_valid.float()  # 0 targets: nan, as F.cross_entropy
        ctx.save_for_backward(grad_h, grad_w, inv_n)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        if mx is not None:
            ctx.mark_non_differentiable(mx)
        return total * inv_n, mx

    @staticmethod
    def backward(ctx, grad_loss, _grad_max):
        grad_h, grad_w, inv_n = ctx.saved_tensors
        scale = grad_loss.float() * inv_n
        gh = (grad_h * scale).to(ctx.dtypes[0]) if grad_h is not None else None
        gw = (grad_w * scale).to(ctx.dtypes[1]) if grad_w is not None else None
        return gh, gw, None, None, None, None, None


def _loss_no_grad(hidden, weight, targets, chunk_rows, dtype, ignore_index, track_max):
    w = weight.to(dtype)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    mx = torch.full((), -torch.inf, device=hidden.device) if track_max else None
    for s, e in _chunks(hidden.shape[0], chunk_rows):
        logp, mx = _chunk_logp(hidden[s:e].to(dtype), w, mx)
        total += F.nll_loss(logp, targets[s:e], ignore_index=ignore_index, reduction="sum")
    return total / (targets != ignore_index).sum(), mx


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                         chunk_rows: int = 4096, ignore_index: int = IGNORE_INDEX,
                         return_max_logit: bool = False):
    """Mean cross-entropy of the logits ``hidden @ weight.T`` (``hidden``: ``(N, H)``, ``weight``:
    ``(V, H)``, ``targets``: ``(N,)``), ``chunk_rows`` rows at a time. Returns the fp32 0-d loss,
    and with ``return_max_logit`` also ``(loss, max_logit)``: the largest logit as a detached fp32
    0-d tensor on the device (no host sync)."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    dtype = _compute_dtype(hidden, weight)
    args = (hidden, weight, targets.reshape(-1), int(chunk_rows), dtype, ignore_index, return_max_logit)
    with torch.autocast(hidden.device.type, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            loss, mx = _FusedLinearCrossEntropy.apply(*args)
        else:
            loss, mx = _loss_no_grad(*args)
    return (loss, mx) if return_max_logit else loss
