"""Chunked fused linear + cross-entropy (smet.models.loss, issue 15) against the exact path:
loss, gradients of hidden states and head weight, the max logit, no (N, V) tensor ever."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from smet.models.llama import LlamaConfig, LlamaForCausalLM
from smet.models.loss import linear_cross_entropy

REPO = Path(__file__).resolve().parents[1]
# max |a - b| / max |a| allowed between chunked and exact (fp32: both are ~8e-7 from an fp64
# reference, from the fp32 GEMMs; bf16: one bf16 rounding of partial sums)
TOL = {torch.float32: 2e-6, torch.bfloat16: 2e-2}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))


def exact(h, w, t):
    return F.cross_entropy((h @ w.t()).float(), t)


def problem(n=300, h=48, v=1000, dtype=torch.float32, ignore_every=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype)
    weight = (torch.randn(v, h, generator=g) * 0.3).to(dtype)
    targets = torch.randint(0, v, (n,), generator=g)
    if ignore_every:
        targets[::ignore_every] = -100
    return hidden, weight, targets


def loss_and_grads(fn, hidden, weight, targets, grad_h=True, grad_w=True):
    h = hidden.clone().requires_grad_(grad_h)
    w = weight.clone().requires_grad_(grad_w)
    loss = fn(h, w, targets)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [64, 7, 1000])  # 300 rows: not a multiple of 64 / 7; one chunk > N
def test_chunked_equals_exact(dtype, chunk):
    hidden, weight, targets = problem(dtype=dtype)
    ref = loss_and_grads(exact, hidden, weight, targets)
    got = loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, chunk_rows=chunk), hidden, weight, targets)
    assert got[0].dtype == torch.float32 and got[0].ndim == 0
    assert got[1].dtype == dtype and got[2].dtype == dtype
    assert abs(float(got[0]) - float(ref[0])) <= 1e-6 * abs(float(ref[0]))
    for a, b in zip(ref[1:], got[1:]):
        assert rel(a, b) <= TOL[dtype]
    assert (got[1][::7] == 0).all()  # ignored rows get no gradient


def test_grad_scales_with_grad_output_and_ignores_all_but_valid():
    hidden, weight, targets = problem(n=50, v=200, ignore_every=3)
    h = hidden.clone().requires_grad_()
    (3.0 * linear_cross_entropy(h, weight, targets, chunk_rows=16)).backward()
    h2 = hidden.clone().requires_grad_()
    (3.0 * exact(h2, weight, targets)).backward()
    assert rel(h2.grad, h.grad) <= TOL[torch.float32]
    # every target ignored: nan, as F.cross_entropy
    assert torch.isnan(linear_cross_entropy(hidden, weight, torch.full_like(targets, -100)))


@pytest.mark.parametrize("grad_h,grad_w", [(True, False), (False, True)])
def test_only_one_input_requires_grad(grad_h, grad_w):
    hidden, weight, targets = problem(n=100, v=300)
    ref = loss_and_grads(exact, hidden, weight, targets, grad_h, grad_w)
    got = loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, chunk_rows=32), hidden, weight, targets,
                         grad_h, grad_w)
    assert float(got[0]) == pytest.approx(float(ref[0]), rel=1e-6)
    for a, b, need in zip(ref[1:], got[1:], (grad_h, grad_w)):
        assert (a is None) == (b is None) == (not need)
        if need:
            assert rel(a, b) <= TOL[torch.float32]


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_no_grad_loss_and_max_logit(mode):
    hidden, weight, targets = problem(n=130, v=400)
    h = hidden.clone().requires_grad_()
    with mode():
        loss, mx = linear_cross_entropy(h, weight, targets, chunk_rows=32, return_max_logit=True)
        ref = exact(hidden, weight, targets)
    assert not loss.requires_grad
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)
    assert float(mx) == float((hidden @ weight.t()).amax())


def test_autocast_bf16_matches_exact_under_autocast():
    hidden, weight, targets = problem(n=120, v=500)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = loss_and_grads(exact, hidden, weight, targets)
        got = loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, chunk_rows=50), hidden, weight, targets)
    assert got[1].dtype == got[2].dtype == torch.float32  # gradients in the inputs' dtype
    assert float(got[0]) == pytest.approx(float(ref[0]), rel=1e-6)
    for a, b in zip(ref[1:], got[1:]):
        assert rel(a, b) <= TOL[torch.bfloat16]


def test_traces_under_torch_compile_fullgraph():
    hidden, weight, targets = problem(n=64, v=200)
    fn = torch.compile(lambda h, w, t: linear_cross_entropy(h, w, t, chunk_rows=24), backend="aot_eager",
                       fullgraph=True)
    ref = loss_and_grads(exact, hidden, weight, targets)
    got = loss_and_grads(fn, hidden, weight, targets)
    assert float(got[0]) == pytest.approx(float(ref[0]), rel=1e-6)
    assert rel(ref[1], got[1]) <= TOL[torch.float32] and rel(ref[2], got[2]) <= TOL[torch.float32]


# ----------------------------------------------------------------------------- LlamaForCausalLM
def tiny_pair(dtype=torch.float32, vocab=512, chunk=20):
    torch.manual_seed(0)
    kw = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, max_seq_len=16)
    a = LlamaForCausalLM(LlamaConfig(**kw, loss_impl="exact")).to(dtype)
    b = LlamaForCausalLM(LlamaConfig(**kw, loss_impl="chunked", loss_chunk_tokens=chunk)).to(dtype)
    b.load_state_dict(a.state_dict())
    a.track_max_logit = b.track_max_logit = True
    return a, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_chunked_equals_exact(dtype):
    a, b = tiny_pair(dtype)
    x = torch.randint(0, 512, (3, 17))
    losses = []
    for m in (a, b):
        loss = m.loss(x[:, :-1], x[:, 1:])  # 48 tokens: 2 chunks of 20 + 8
        loss.backward()
        losses.append(float(loss.detach()))
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    assert float(b.last_max_logit) == float(a.last_max_logit) and b.last_max_logit.dtype == torch.float32
    assert not b.last_max_logit.requires_grad
    grads = dict(b.named_parameters())
    for name, p in a.named_parameters():
        assert rel(p.grad, grads[name].grad) <= TOL[dtype], name
    with torch.no_grad():
        assert float(b.loss(x[:, :-1], x[:, 1:])) == pytest.approx(losses[0], rel=1e-6)


def test_model_without_max_logit_tracking_records_nothing():
    _, b = tiny_pair()
    b.track_max_logit, b.last_max_logit = False, None
    x = torch.randint(0, 512, (2, 9))
    assert b.loss(x[:, :-1], x[:, 1:]).ndim == 0 and b.last_max_logit is None


class _Sizes(TorchDispatchMode):
    """Records (numel, dtype) of every op output."""

    def __init__(self):
        super().__init__()
        self.outputs: list[tuple[int, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor):
                self.outputs.append((t.numel(), t.dtype))
        return out


@pytest.mark.parametrize("impl", ["exact", "chunked"])
def test_chunked_never_allocates_full_logits(impl):
    vocab, n = 4096, 4 * 16  # N * V = 262144 > anything else here (V * H = 131072)
    a, b = tiny_pair(vocab=vocab, chunk=16)
    m = a if impl == "exact" else b
    x = torch.randint(0, vocab, (4, 17))
    with _Sizes() as sizes:
        m.loss(x[:, :-1], x[:, 1:]).backward()
    big = [s for s in sizes.outputs if s[0] >= n * vocab]
    if impl == "exact":  # the tracer does see the full logits of the exact path
        assert (n * vocab, torch.float32) in big
    else:
        assert not big, big
        assert max(s for s, _ in sizes.outputs) <= vocab * 32  # the head weight / its gradient


# ----------------------------------------------------------------------------- config
def test_every_model_preset_sets_the_loss_keys():
    from smet.compose import compose

    for path in sorted((REPO / "conf" / "model").glob("*.yaml")):
        cfg = compose([f"model={path.stem}"])
        assert cfg.model.loss_impl in ("exact", "chunked") and cfg.model.loss_chunk_tokens >= 1, path.stem


def test_bad_loss_impl_names_its_key():
    from smet.config import LOSS_IMPLS
    from smet.errors import SmetConfigError

    assert LOSS_IMPLS == ("exact", "chunked")
    with pytest.raises(SmetConfigError) as err:
        LlamaForCausalLM(LlamaConfig(loss_impl="fused"))
    assert err.value.key == "model.loss_impl"
    with pytest.raises(SmetConfigError) as err:
        LlamaForCausalLM(LlamaConfig(loss_chunk_tokens=0))
    assert err.value.key == "model.loss_chunk_tokens"
    from smet.compose import compose

    for override, key in (("model.loss_impl=fused", "model.loss_impl"), ("model.loss_chunk_tokens=0",
                                                                          "model.loss_chunk_tokens")):
        with pytest.raises(SmetConfigError) as err:  # before any compute, naming the key
            compose([override])
        assert err.value.key == key
