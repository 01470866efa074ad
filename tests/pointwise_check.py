"""Fused pointwise ops (smet.models.pointwise) vs their PyTorch fallback and vs the reference model path.

``python tests/pointwise_check.py DEVICE`` prints one JSON object of largest differences. On CPU it
must run with ``TRITON_INTERPRET=1`` (set before Triton is imported) so the same Triton kernels run in
the interpreter; on CUDA they are compiled. ``kernels.set_enabled(False)`` selects the fallback per call
(``SMET_TRITON`` is read once, at import).
Used by tests/test_pointwise.py (CPU) and scripts/gpu-issue15-pointwise.sh (CUDA).
"""

from __future__ import annotations

import json
import sys

import torch

from smet.models import pointwise as pw
from smet.models.llama import LlamaConfig, LlamaForCausalLM
from smet.sparse import kernels


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _run(fn, fused: bool, *inputs: torch.Tensor):
    kernels.set_enabled(fused)
    xs = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*xs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.device, out.dtype)
    out.backward(g)
    return out.detach(), [x.grad for x in xs]


def ops(device: str, dtype: torch.dtype) -> dict:
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen).to(device, dtype)  # noqa: E731
    res = {}
    x, w = r(3, 37, 96), (1 + 0.1 * torch.randn(96, generator=gen)).to(device, dtype)
    (a, ga), (b, gb) = _run(lambda x, w: pw.rms_norm(x, w, 1e-6), True, x, w), \
        _run(lambda x, w: pw.rms_norm(x, w, 1e-6), False, x, w)
    res["rms_norm"] = {"out": _rel(a, b), "dx": _rel(ga[0], gb[0]), "dw": _rel(ga[1], gb[1])}
    ang = torch.arange(37)[:, None] * torch.rand(16, generator=gen)[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1).to(device), torch.cat([ang.sin()] * 2, -1).to(device)
    for name, q in (("rope", r(2, 37, 5, 32)), ("rope_strided", r(2, 5, 37, 32).transpose(1, 2))):
        def f(q):
            return pw.rope(q, cos, sin)
        kernels.set_enabled(True)
        q1 = q.detach().clone().requires_grad_()
        o1 = f(q1)
        g = torch.randn(o1.shape, generator=torch.Generator().manual_seed(3)).to(device, dtype)
        o1.backward(g)
        kernels.set_enabled(False)
        q2 = q.detach().clone().requires_grad_()
        o2 = f(q2)
        o2.backward(g)
        res[name] = {"out": _rel(o1, o2), "dx": _rel(q1.grad, q2.grad)}
    gate, up = r(4, 33, 200), r(4, 33, 200)
    (a, ga), (b, gb) = _run(pw.swiglu, True, gate, up), _run(pw.swiglu, False, gate, up)
    res["swiglu"] = {"out": _rel(a, b), "dgate": _rel(ga[0], gb[0]), "dup": _rel(ga[1], gb[1])}
    return res


def model(device: str, dtype: torch.dtype) -> dict:
    """Loss and gradients of one tiny model, pointwise fused (Triton on) vs reference."""
    kernels.set_enabled(True)
    base = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_layers=2, num_heads=2, max_seq_len=64)
    torch.manual_seed(0)
    ref = LlamaForCausalLM(LlamaConfig(**base)).to(device, dtype)
    fused = LlamaForCausalLM(LlamaConfig(**base, pointwise="fused")).to(device, dtype)
    fused.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(1)).to(device)
    out = {}
    for name, m in (("ref", ref), ("fused", fused)):
        loss = m.loss(ids[:, :-1], ids[:, 1:])
        loss.backward()
        out[name] = (float(loss), {n: p.grad.detach().clone() for n, p in m.named_parameters()})
    worst = max(_rel(out["fused"][1][n], out["ref"][1][n]) for n in out["ref"][1])
    return {"loss_abs": abs(out["fused"][0] - out["ref"][0]), "loss": out["ref"][0], "grad_rel": worst}


def main() -> None:
    device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    try:
        res = {}
        for dt_name, dt in (("f32", torch.float32), ("bf16", torch.bfloat16)):
            for k, v in ops(device, dt).items():
                res[f"{k}_{dt_name}"] = v
            res[f"model_{dt_name}"] = model(device, dt)
    except Exception as e:  # noqa: BLE001 - reported as JSON to the caller
        res = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
