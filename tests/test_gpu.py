"""CUDA checks of the sparse core (run on a GPU machine: `pytest -m gpu`; skipped without CUDA)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import FAST
from smet.models.llama import LlamaConfig, LlamaForCausalLM
from smet.sparse import SparseLinear, attach_sparsity, build_smet_optimizer
from smet.sparse.layer import element_index
from smet.sparse.optimizer import SMETOptimizer

pytestmark = pytest.mark.gpu
DEV = "cuda"


@pytest.mark.parametrize("materialize", ["transient", "persistent"])
def test_compact_layer_cuda_bf16_matches_dense_masked(materialize):
    torch.manual_seed(0)
    out, inp = 768, 2048
    w = torch.randn(out, inp, device=DEV) * 0.02
    ids = torch.randperm(out * inp, device=DEV)[: out * inp // 4].sort().values
    layer = SparseLinear(inp, out, ids.numel(), materialize=materialize, dense_dtype=torch.bfloat16, device=DEV)
    layer.load_from_dense(w, ids)
    wd = (w * layer.mask()).requires_grad_(True)
    x1 = torch.randn(8, 64, inp, device=DEV, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y1 = layer(x1)
        y2 = F.linear(x2, wd)
    assert y1.dtype == torch.bfloat16
    gy = torch.randn_like(y1)
    y1.backward(gy)
    y2.backward(gy)
    torch.testing.assert_close(y1, y2, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=2e-2, atol=2e-2)
    ref_g = wd.grad.reshape(-1)[element_index(layer.idx, 1)]
    torch.testing.assert_close(layer.values.grad, ref_g, rtol=2e-2, atol=2e-2)


def test_smet_optimizer_cuda_fused_dense_path_equals_torch_adamw_and_exact_first_update():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, max_seq_len=32)
    model = LlamaForCausalLM(cfg).to(DEV)
    head_ref = copy.deepcopy(model.lm_head)
    ctrl = attach_sparsity(model, {"method": "smet", "density": 0.5}, total_steps=10)
    opt = build_smet_optimizer(model, {"lr": 1e-3, "weight_decay": 0.01, "regrowth_warmup_steps": 0,
                                       "lr_scaling": "none", "reset_local_step": True, "reset_moments": True}, ctrl)
    assert opt.fused
    ref_opt = torch.optim.AdamW(head_ref.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
    x = torch.randint(0, 256, (4, 33), device=DEV)
    for _ in range(3):
        model.loss(x[:, :-1], x[:, 1:]).backward()
        head_ref.weight.grad = model.lm_head.weight.grad.clone()
        opt.step()
        ref_opt.step()
        opt.zero_grad()
        torch.testing.assert_close(model.lm_head.weight, head_ref.weight, rtol=0, atol=0)
    # exact eta * sign(g) first update of a regrown slot, on the GPU
    layer = SparseLinear(8, 4, 8, device=DEV)
    layer.load_from_dense(torch.randn(4, 8, device=DEV), torch.arange(0, 32, 4, device=DEV))
    o = SMETOptimizer([{"params": [layer.values], "sparse": True, "block_size": 1}], lr=2.0**-6, eps=0.0)
    layer.values.grad = torch.randn(8, device=DEV)
    o.step()
    with torch.no_grad():
        layer.values[2] = 0
    o.reset_slots(layer.values, torch.tensor([2], device=DEV))
    g = torch.tensor([1.0, -2.0, 0.5, 4.0, -1.0, 1.0, 2.0, -8.0], device=DEV)
    before = layer.values.detach().clone()
    layer.values.grad = g
    o.step()
    assert float(layer.values.detach()[2] - before[2]) == -(2.0**-6) * 1.0 * float(torch.sign(g[2]))


def test_dense_path_steps_after_a_state_restored_with_its_step_on_the_cpu():
    """torch's ``load_state_dict`` leaves a restored ``step`` on the CPU (unless the group says fused); DeepSpeed
    restores the client optimizer that way and nothing moves it (found resuming trainer=deepspeed on the H200:
    "state_steps is on cpu" in the fused AdamW). The fused dense path moves it and continues as uninterrupted."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(16, 8, device=DEV))
    w2 = torch.nn.Parameter(w.detach().clone())
    a = SMETOptimizer([{"params": [w], "sparse": False}], lr=1e-2, fused=True)  # as build_smet_optimizer on CUDA
    b = SMETOptimizer([{"params": [w2], "sparse": False}], lr=1e-2, fused=True)
    g = [torch.randn(16, 8, device=DEV) for _ in range(3)]
    w.grad, w2.grad = g[0].clone(), g[0].clone()
    a.step(), b.step()
    sd = b.state_dict()
    b = SMETOptimizer([{"params": [w2], "sparse": False}], lr=1e-2, fused=True)
    b.load_state_dict(sd)
    assert b.state[w2]["step"].device.type == "cpu"  # what torch's loader does
    for gi in g[1:]:
        w.grad, w2.grad = gi.clone(), gi.clone()
        a.step(), b.step()
    assert b.state[w2]["step"].device == w2.device
    torch.testing.assert_close(w2, w, rtol=0, atol=0)


def test_torch_compile_sparse_model_matches_eager_cuda():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4, max_seq_len=64)
    model = LlamaForCausalLM(cfg).to(DEV)
    ctrl = attach_sparsity(model, {"method": "smet", "density": 0.25, "update_interval": 2, "materialize": "persistent"},
                           total_steps=10)
    ctrl.set_dense_dtype(torch.bfloat16)
    opt = build_smet_optimizer(model, {"lr": 1e-3, "regrowth_warmup_steps": 2, "lr_scaling": "inverse",
                                       "reset_local_step": True, "reset_moments": True}, ctrl)
    eager = copy.deepcopy(model)
    model.compile()
    x = torch.randint(0, 512, (4, 65), device=DEV)
    for s in range(1, 6):
        eager.load_state_dict(model.state_dict())
        ctrl.before_step(s)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.loss(x[:, :-1], x[:, 1:])
            ref = eager.loss(x[:, :-1], x[:, 1:])
        torch.testing.assert_close(loss, ref, rtol=1e-2, atol=1e-2)
        loss.backward()
        opt.step()
        opt.zero_grad()
        ctrl.after_step(s)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_train_on_gpu_logs_memory_and_mfu(run_train, precision):
    res = run_train(*FAST, "trainer=gpu", f"trainer.precision={precision}", "sparsity=smet", "sparsity.density=0.25",
                    "sparsity.update_interval=5", "trainer.max_steps=30", "trainer.val_every_n_steps=30",
                    "trainer.log_every_n_steps=5")
    s = json.loads((res.out_dir / "summary.json").read_text())
    assert s["steps"] == 30 and s["val_ppl"] == s["val_ppl"]
    text = (res.out_dir / "metrics.csv").read_text()
    assert "perf/peak_mem_gib" in text and "perf/mfu" in text
