"""Memory accounting: measured (live tensors) == predicted (configs only), the per-weight formula,
and the ``smet-memory`` CLI (13B without allocating, one-line errors with exit code 2)."""

from __future__ import annotations

import copy
import functools
import itertools
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from smet.build import build_training
from smet.compose import compose, compose_points
from smet.models.llama import LlamaConfig, LlamaForCausalLM, model_shapes
from smet.sparse import attach_sparsity
from smet.sparse.memory import (CATEGORIES, active_weight_count, bytes_per_active_weight, estimate_activations,
                                estimate_update_memory, measure_static, predict_static)

MODEL = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, max_seq_len=32)
VOCAB, SEQ = 256, 32
SHAPES = model_shapes(MODEL)  # meta-device build: what predictions see of the model


@functools.lru_cache(maxsize=None)
def _composed(overrides: tuple[str, ...]) -> tuple[dict, dict]:
    from omegaconf import OmegaConf

    cfg = compose(list(overrides))
    return OmegaConf.to_container(cfg.sparsity, resolve=True), OmegaConf.to_container(cfg.optimizer, resolve=True)


OPTIMIZER_KEYS = ("regrowth_warmup_steps", "local_step_storage")


def _configs(method: str, density: float = 0.5, *, update_interval: int | None = None,
             density_schedule: dict | None = None, **keys) -> tuple[dict, dict]:
    """(sparsity, optimizer) of ``conf/sparsity/<method>.yaml`` as composed for a run: ``keys`` are
    ``sparsity.<key>`` overrides (``OPTIMIZER_KEYS``: ``optimizer.``), ``density_schedule``
    selects ``sparsity/density_schedule=<kind>`` with its other keys. Cached per override tuple."""
    ov = [f"sparsity={method}"]
    if method != "dense":
        ov.append(f"sparsity.density={density}")
        if update_interval is not None:
            keys["update_interval"] = update_interval
        for k, v in keys.items():
            ov.append(f"{'optimizer' if k in OPTIMIZER_KEYS else 'sparsity'}.{k}={v}")
        for k, v in (density_schedule or {}).items():
            ov.append(f"sparsity/density_schedule={v}" if k == "kind" else f"sparsity.density_schedule.{k}={v}")
    return copy.deepcopy(_composed(tuple(ov)))


def _train(method: str, precision: str, steps: int = 2, *, density: float = 0.3, update_interval: int = 1,
           **kw):
    """Build model + optimizer with the run builder (``smet.build.build_training``, the classic CPU
    build), run ``steps`` reference steps (``smet.sparse.train_step``; topology updates at every
    step), and return (model, opt, ctrl, scfg, ocfg) with the last step's gradients still alive."""
    torch.manual_seed(0)
    scfg, ocfg = _configs(method, density, update_interval=update_interval, **kw)
    cfg = {"model": MODEL, "sparsity": scfg, "optimizer": ocfg, "seed": 0, "data": {"seq_len": SEQ},
           "trainer": {"max_steps": 100, "precision": precision}}
    run = build_training(cfg, "cpu")
    x = torch.randint(0, VOCAB, (2, SEQ + 1), generator=torch.Generator().manual_seed(1))
    for step in range(1, steps + 1):
        run.step(x[:, :-1], x[:, 1:], step, autocast=run.autocast("cpu"), zero_grad=step < steps)
    return run.model, run.optimizer, run.controller, scfg, ocfg


CASES = [("dense", "transient", 1, "uniform")] + list(
    itertools.product(("static", "set", "rigl", "smet"), ("transient", "persistent"), (1, 4), ("uniform", "erk")))


@pytest.mark.parametrize("precision", ["32", "bf16-true"])
@pytest.mark.parametrize("method,materialize,block,alloc", CASES)
def test_measured_equals_predicted(method, materialize, block, alloc, precision):
    model, opt, ctrl, scfg, ocfg = _train(method, precision, block_size=block, materialize=materialize,
                                          allocation=alloc)
    assert all(p.grad is not None for p in model.parameters())  # measured with grads present
    measured = measure_static(model, opt, ctrl)
    predicted = predict_static(SHAPES, scfg, ocfg, precision, total_steps=100)  # the run's trainer.max_steps
    assert measured == predicted
    psize = 2 if precision == "bf16-true" else 4
    allb = measured["all"]
    assert allb["weights"] == sum(p.numel() for p in model.parameters()) * psize
    assert allb["total"] == sum(allb[k] for k in CATEGORIES)
    assert allb["buffers"] == 2 * SEQ * (MODEL["hidden_size"] // MODEL["num_heads"]) * psize  # RoPE cos + sin
    if method == "dense":
        assert allb["metadata"] == 0 and allb["compute_copy"] == 0
    else:
        assert (allb["compute_copy"] > 0) == (materialize == "persistent")
        has_local = method == "smet"
        slots = sum(layer.capacity for layer in ctrl.layers)
        # int32 index; smet: a 1-byte regrowth code per slot + a 1 KiB birth table per layer
        assert allb["metadata"] == slots * (4 + (1 if has_local else 0)) + (1024 * len(ctrl.layers) if has_local else 0)
        assert active_weight_count(SHAPES, scfg) == ctrl.active_weights()


def test_measured_equals_predicted_bf16_mixed_persistent_and_gradual_capacity():
    # bf16-mixed: fp32 params/states, bf16 compute copy (2 B per dense position)
    model, opt, ctrl, scfg, ocfg = _train("smet", "bf16-mixed", materialize="persistent")
    m = measure_static(model, opt, ctrl)
    assert m == predict_static(SHAPES, scfg, ocfg, "bf16-mixed", total_steps=100)
    assert m["all"]["compute_copy"] == 2 * sum(layer.in_features * layer.out_features for layer in ctrl.layers)
    # gradual density schedule: capacity (not the live count) sizes every compact tensor
    sched = {"kind": "gradual", "initial": 0.8, "start": 0, "end": 4}
    model, opt, ctrl, scfg, ocfg = _train("smet", "32", steps=3, density_schedule=sched)
    assert any(layer.n_live < layer.capacity for layer in ctrl.layers)
    assert measure_static(model, opt, ctrl) == predict_static(SHAPES, scfg, ocfg, "32", total_steps=100)


@pytest.mark.parametrize("method", ["dense", "static", "set", "smet"])
def test_update_memory_estimate_counts_the_controllers_regrown_masks(method):
    """After updates, the controller's persistent update state is the regrown-slot bit masks the
    estimate predicts (1 bit per slot of every layer), and the optimizer's measurement of the next
    step holds the same tensors (no copy); dense and a static mask have none."""
    model, opt, ctrl, scfg, _ = _train(method, "32", steps=3)
    est = estimate_update_memory(SHAPES, scfg)
    if method in ("dense", "static"):
        assert est == {"regrown_masks": 0, "layer_update": 0, "measure_step": 0}
        assert ctrl is None or not ctrl._regrown
        return
    held = sum(t.numel() * t.element_size() for t in ctrl._regrown.values())
    assert held == est["regrown_masks"] == sum(-(-layer.capacity // 8) for layer in ctrl.layers)
    assert all(t.dtype == torch.uint8 for t in ctrl._regrown.values())
    if method == "smet":  # the last update's masks, measured at the next step: the very same storages
        ctrl.after_step(3)  # (update_interval 1: an update now)
        ids = {t.data_ptr() for t in ctrl._regrown.values()}
        assert {t.data_ptr() for t in opt._measure.values()} <= ids and opt._measure
    biggest = max(ctrl.layers, key=lambda layer: layer.n_blocks_total)
    assert est["layer_update"] >= 4 * biggest.n_blocks_total + 12 * biggest.capacity


def test_measure_counts_each_storage_once_and_sees_missing_grads():
    model, opt, ctrl, scfg, ocfg = _train("smet", "32", steps=1)
    before = measure_static(model, opt, ctrl)
    opt.zero_grad(set_to_none=True)
    after = measure_static(model, opt, ctrl)
    assert after["all"]["grads"] == 0 and before["all"]["grads"] == before["all"]["weights"]
    # a shared tensor is counted once
    lin = nn.Linear(8, 8, bias=False)
    shared = nn.Sequential(lin, lin)
    assert measure_static(shared, None)["all"]["weights"] == 8 * 8 * 4


@pytest.mark.parametrize("precision,expected", [("32", 21), ("bf16-true", 13)])
def test_bytes_per_active_weight_smet_transient_b1(precision, expected):
    model, opt, ctrl, scfg, ocfg = _train("smet", precision, steps=1, density=0.5)
    sp = measure_static(model, opt, ctrl)["sparse"]
    # values, grads, m, v + int32 index + 1-byte regrowth code; + a 1 KiB birth table per layer
    assert sp["total"] == expected * ctrl.active_weights() + 1024 * len(ctrl.layers)
    assert sp["buffers"] == 0
    smet_b1 = _configs("smet", block_size=1, materialize="transient")
    assert bytes_per_active_weight(*smet_b1, precision)["total"] == expected


def test_bytes_per_active_weight_formula_table():
    assert bytes_per_active_weight(*_configs("dense"), "32")["total"] == 16
    assert bytes_per_active_weight(*_configs("dense"), "bf16-true")["total"] == 8
    assert bytes_per_active_weight(*_configs("set"), "32")["total"] == 20  # naive DST: no local step
    assert bytes_per_active_weight(*_configs("rigl"), "bf16-true")["local_step"] == 0
    assert bytes_per_active_weight(*_configs("smet", block_size=4), "32")["total"] == 16 + 1 + 0.25
    assert bytes_per_active_weight(*_configs("smet", local_step_storage="counter"), "32")["total"] == 22  # int16
    assert bytes_per_active_weight(*_configs("smet", regrowth_warmup_steps=40000), "32")["local_step"] == 4  # int32
    # the ablations' semantics come from their configs: no reset, but W = 100 > 0 keeps the local step
    assert bytes_per_active_weight(*_configs("smet_no_reset"), "32")["local_step"] == 1
    assert bytes_per_active_weight(*_configs("smet_no_warmup"), "32")["local_step"] == 1  # reset, W = 0
    # codes while <= 255 updates are in flight: update interval >= 68 at b2 = 0.999, or a short run
    assert bytes_per_active_weight(*_configs("smet", update_interval=67), "32")["local_step"] == 2
    assert bytes_per_active_weight(*_configs("smet", update_interval=68), "32")["local_step"] == 1
    assert bytes_per_active_weight(*_configs("smet", update_interval=1), "32", total_steps=254)["local_step"] == 1
    p = bytes_per_active_weight(*_configs("smet", 0.25, materialize="persistent"), "bf16-mixed")
    assert p["persistent_per_dense_position"] == 2 and p["total_with_persistent"] == 21 + 8
    # the formula agrees with a measured b = 4 set run (uniform: capacity * 4 == active weights)
    model, opt, ctrl, *_ = _train("set", "32", steps=1, block_size=4, density=0.5)
    assert measure_static(model, opt, ctrl)["sparse"]["total"] == 17 * ctrl.active_weights()  # 16 + 4/4


def test_activation_estimate_matches_saved_tensors():
    """The per-layer and outside-layer terms equal what autograd saves (CPU, fp32 and bf16)."""
    for dtype, prec in ((torch.float32, "32"), (torch.bfloat16, "bf16-true"), (torch.float32, "bf16-mixed")):
        model = LlamaForCausalLM(LlamaConfig(**MODEL)).to(dtype)
        mixed = prec == "bf16-mixed"
        fixed = {t.untyped_storage().data_ptr() for t in itertools.chain(model.parameters(), model.buffers())}
        seen: dict[int, int] = {}

        def pack(t):
            st = t.untyped_storage()
            if st.data_ptr() not in fixed:
                seen[st.data_ptr()] = st.nbytes()
            return t

        x = torch.randint(0, VOCAB, (2, SEQ + 1))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            model.loss(x[:, :-1], x[:, 1:])
        est = estimate_activations(MODEL, 2, SEQ, prec, False, VOCAB)
        saved_logits = 2 * SEQ * 4 * VOCAB  # the log-softmax; est["logits"] adds 2 backward buffers
        expected = est["layers"] + est["outside_layers"] + saved_logits + est["autocast_copies"]
        assert abs(sum(seen.values()) - expected) <= 64, (prec, sum(seen.values()), expected)
        assert est["logits"] == 3 * saved_logits
    # sparse layers additionally save an int64 element index (8 B per active weight) for backward
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**MODEL))
    ctrl = attach_sparsity(model, {"method": "smet", "density": 0.5})
    seen_i64: dict[int, int] = {}

    def pack_i64(t):
        if t.dtype == torch.int64 and t.numel() > 2 * (SEQ + 1):
            seen_i64[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack_i64, lambda t: t):
        model.loss(x[:, :-1], x[:, 1:])
    est = estimate_activations(MODEL, 2, SEQ, "32", False, VOCAB, sparse_materialize="transient")
    assert sum(seen_i64.values()) == 0  # no int64 index copy is kept from forward to backward
    assert est["transient_workspace"] == MODEL["hidden_size"] * MODEL["intermediate_size"] * 4


class _LivePeak(TorchDispatchMode):
    """Peak bytes of the tensor storages alive during a step (CPU), sampled after every ATen op: the
    outputs of ops run inside the mode, minus the ``ignore`` tensors' storages (parameters, buffers,
    the batch) and minus parameter gradients (static memory; see :meth:`watch_grads`)."""

    def __init__(self, ignore):
        super().__init__()
        from torch.multiprocessing.reductions import StorageWeakRef

        self._ref = StorageWeakRef
        self.ignore = {t.untyped_storage().data_ptr() for t in ignore}
        self.live: dict[tuple[int, int], object] = {}
        self.grads: set[tuple[int, int]] = set()
        self.peak = 0

    def watch_grads(self, params) -> None:
        def hook(p):
            st = p.grad.untyped_storage()
            self.grads.add((st.data_ptr(), st.nbytes()))
        for p in params:
            p.register_post_accumulate_grad_hook(hook)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = (st.data_ptr(), st.nbytes())
                old = self.live.get(key)
                if st.nbytes() and st.data_ptr() not in self.ignore and (old is None or old.expired()):
                    self.live[key] = self._ref(st)
                    self.grads.discard(key)  # a new storage where a freed gradient was
        for key in [k for k, r in self.live.items() if r.expired()]:
            del self.live[key]
        self.peak = max(self.peak, sum(k[1] for k in self.live if k not in self.grads))
        return out


#: (model, batch, seq, vocab) of the live-peak checks: the first with the usual i/h, the second with
#: intermediate << hidden (other backward moments are the peak there)
_LIVE_SHAPES = {"wide_mlp": (dict(vocab_size=512, hidden_size=64, intermediate_size=192, num_layers=4, num_heads=4,
                                  max_seq_len=64), 8, 64),
                "narrow_mlp": (dict(vocab_size=64, hidden_size=128, intermediate_size=16, num_layers=3, num_heads=4,
                                    max_seq_len=64), 8, 64)}
_LIVE_CASES = ([("wide_mlp", "32", impl, m, k) for impl in ("exact", "chunked")
                for m, k in (("none", 1), ("block", 1), ("block", 2), ("mlp", 1), ("mlp", 2), ("attention", 1),
                             ("attention", 2))]
               + [("wide_mlp", p, "chunked", m, 1) for p in ("bf16-true", "bf16-mixed")
                  for m in ("none", "block", "mlp", "attention")]
               + [("narrow_mlp", "32", "chunked", m, k) for m, k in (("none", 1), ("block", 2), ("mlp", 1),
                                                                      ("attention", 1))])


@pytest.mark.parametrize("shape,prec,impl,mode,every", _LIVE_CASES)
def test_activation_estimate_equals_the_live_peak_on_cpu(shape, prec, impl, mode, every):
    """estimate_activations()["total"] is the peak of the live tensors of a CPU training step (forward +
    backward, parameter gradients left out: static memory) for every checkpointing mode / every-k,
    both loss implementations (chunked: 64-row chunks, 8 of them) and the three precision families."""
    model_cfg, batch, seq = _LIVE_SHAPES[shape]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**model_cfg, loss_impl=impl, loss_chunk_tokens=64,
                                         activation_checkpointing=mode, checkpoint_every=every))
    if prec == "bf16-true":
        model = model.to(torch.bfloat16)
    x = torch.randint(0, model_cfg["vocab_size"], (batch, seq + 1))
    live = _LivePeak(itertools.chain(model.parameters(), model.buffers(), [x]))
    with live, torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16-mixed"):
        loss = model.loss(x[:, :-1], x[:, 1:])
        live.watch_grads(list(model.parameters()))
        loss.backward()
    est = estimate_activations(model_cfg, batch, seq, prec, mode, model_cfg["vocab_size"], checkpoint_every=every,
                               loss_impl=impl, loss_chunk_tokens=64)
    tokens = batch * seq
    # the estimate also counts the token ids / targets (16 B a token, the tracker leaves the batch out)
    assert abs(est["total"] - live.peak) <= 20 * tokens, (est, live.peak)


# H200, bf16-true, batch 128 x 256, vocab 32000, no checkpointing, dense AdamW: torch.cuda.max_memory_allocated
# of smet-bench (docs/data/issue15/issue15.tar.gz, p130 / p350 / chunk): (model, loss_impl, chunk) -> bytes
H200_PEAKS = {("130m", "exact", 4096): 27369530368, ("130m", "chunked", 2048): 15722255360,
              ("130m", "chunked", 4096): 16508699648, ("130m", "chunked", 8192): 18081588224,
              ("130m", "chunked", 16384): 21227365376,
              ("350m", "exact", 4096): 51725058560, ("350m", "chunked", 4096): 40913773056}
H200_DIMS = {"130m": dict(hidden_size=768, intermediate_size=2048, num_layers=12, num_heads=12),
             "350m": dict(hidden_size=1024, intermediate_size=2736, num_layers=24, num_heads=16)}


@pytest.mark.parametrize("point", sorted(H200_PEAKS))
def test_activation_estimate_matches_the_h200_peaks(point):
    """Static (without the parameter gradients: zero_grad(set_to_none=True), none exists at the loss
    peak) + estimated activations = the measured peak less the two cuBLAS workspaces (2 x 32 MiB, not
    modelled), to 2 MiB. Fails if the chunked estimate ignores the chunk size or takes the exact figure."""
    name, impl, chunk = point
    dims = dict(H200_DIMS[name], vocab_size=32000)
    static = predict_static(model_shapes(dims, 32000, 256), {"method": "dense"}, {}, "bf16-true")["all"]
    act = estimate_activations(dims, 128, 256, "bf16-true", "none", 32000, loss_impl=impl, loss_chunk_tokens=chunk)
    predicted = static["total"] - static["grads"] + act["total"] + 64 * 2**20
    assert abs(predicted - H200_PEAKS[point]) < 2 * 2**20, (point, (predicted - H200_PEAKS[point]) / 2**20)


def test_chunked_loss_estimate_follows_the_chunk_size():
    dims = dict(H200_DIMS["130m"], vocab_size=32000)
    V, N, H = 32000, 128 * 256, 768

    def est(impl, chunk=4096, batch=128, prec="bf16-true"):
        return estimate_activations(dims, batch, 256, prec, False, V, loss_impl=impl, loss_chunk_tokens=chunk)

    exact = est("exact")
    assert exact["logits"] == 12 * V * N
    chunked = {c: est("chunked", c) for c in (1024, 2048, 4096, 8192, 16384)}
    for c, e in chunked.items():
        assert e["loss_chunk_rows"] == c and e["total"] < exact["total"]
        # grad_h (bf16 N x H) + fp32 head-weight gradient V x H + one chunk: its logits, their fp32 copy and
        # log-softmax, the previous chunk's gradient (12 V per row)
        assert e["logits"] == 2 * N * H + 4 * V * H + 12 * V * c, c
    assert chunked[16384]["total"] - chunked[8192]["total"] == 12 * V * 8192
    # very small chunks: the loss backward (grad_h, grad_w and their scaled copies) is the larger moment
    assert est("chunked", 64)["logits"] == 2 * 2 * N * H + (8 + 2) * V * H
    # one chunk (chunk >= rows): no previous chunk's gradient, 10 V per row under bf16
    one = est("chunked", 4096, batch=8)
    assert one["loss_chunk_rows"] == 8 * 256 and one["logits"] == 2 * 2048 * H + 4 * V * H + 10 * V * 2048
    assert est("chunked", 10**9, batch=8)["total"] == one["total"]
    # the loss implementation reaches the estimate from a composed config (smet-memory)
    from smet.cli import memory as cli

    rows = cli.compute_rows(compose_points(["model=130m", "data.batch_size=128", "model.loss_impl=exact,chunked",
                                            "model.loss_chunk_tokens=2048"], config_name="memory"))
    by_impl = {r["loss_impl"]: r for r in rows}
    assert by_impl["exact"]["activations_estimate_bytes"]["logits"] == exact["logits"]
    assert by_impl["chunked"]["activations_estimate_bytes"]["logits"] == chunked[2048]["logits"]
    assert by_impl["chunked"]["loss_chunk_tokens"] == 2048


def test_checkpointing_estimate_orders_the_modes_and_every_k_interpolates():
    for name in ("130m", "350m"):
        dims = dict(H200_DIMS[name], vocab_size=32000)

        def est(mode, every=1, impl="chunked"):
            return estimate_activations(dims, 128, 256, "bf16-true", mode, 32000, checkpoint_every=every,
                                        loss_impl=impl)

        none, block, mlp, attn = (est(m) for m in ("none", "block", "mlp", "attention"))
        assert none["total"] > attn["total"] > mlp["total"] > block["total"], name
        assert none["layers"] > attn["layers"] > mlp["layers"] > block["layers"]
        assert est(True)["total"] == block["total"] and est(False)["total"] == none["total"]
        L = dims["num_layers"]
        for mode in ("block", "mlp", "attention"):
            ks = [est(mode, k) for k in (1, 2, 3, L, L + 1)]
            # the kept activations interpolate linearly in the number of checkpointed blocks
            for k, e in zip((1, 2, 3, L, L + 1), ks):
                n = -(-L // k)
                assert e["checkpointed_layers"] == n
                assert e["layers"] == (n * ks[0]["layers"] + (L - n) * none["layers"]) // L
            assert none["total"] >= ks[1]["total"] >= ks[0]["total"], mode
            assert ks[3]["layers"] == ks[4]["layers"]  # k >= L: block 0 only
        # with checkpointing the recompute in backward, not the loss, can be the peak (small chunks)
        assert block["total"] == max(block["loss_peak"], block["backward_peak"])
        small = estimate_activations(dims, 128, 256, "bf16-true", "block", 32000, loss_impl="chunked",
                                     loss_chunk_tokens=256)
        assert small["total"] == small["backward_peak"] > small["loss_peak"]
    with pytest.raises(ValueError):
        estimate_activations(H200_DIMS["130m"], 1, 8, "32", "full", 100)
    with pytest.raises(ValueError):
        estimate_activations(H200_DIMS["130m"], 1, 8, "32", "mlp", 100, checkpoint_every=0)
    with pytest.raises(ValueError):
        estimate_activations(H200_DIMS["130m"], 1, 8, "32", "none", 100, loss_impl="fused")


def test_memory_model_tables_agree_with_the_config_module():
    """smet.sparse (pure) keeps its own copies of the mode / loss names: the same as smet.config's."""
    from smet import config
    from smet.sparse import memory

    assert memory.CHECKPOINT_MODES == config.CHECKPOINT_MODES and memory.LOSS_IMPLS == config.LOSS_IMPLS


# ----------------------------------------------------------------------------- CLI
def _cli(name: str) -> list[str]:
    exe = shutil.which(name, path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", f"smet.cli.{name.split('-', 1)[1]}"]


@pytest.mark.slow
def test_smet_memory_13b_without_allocating():
    r = subprocess.run(_cli("smet-memory") + ["--model", "13b", "--density", "0.5", "0.25", "--precision",
                                              "bf16-true", "--batch", "1", "--seq-len", "256"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "GiB" in r.stdout and "dense AdamW" in r.stdout and "smet d=0.25" in r.stdout
    # same entry point in a child that reports its own peak RSS: nothing of the model is allocated
    probe = ("import resource, sys; from smet.cli.memory import main; "
             "rc = main(['--model', '13b', '--density', '0.5', '--json']); "
             "print('MAXRSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rss_kib = int(r.stderr.split("MAXRSS_KIB")[1].split()[0])
    assert rss_kib < 6 * 1024 * 1024  # a 13B model would need > 24 GiB for its bf16 weights alone (CUDA torch alone ~2 GiB RSS)
    r = subprocess.run(_cli("smet-memory") + ["--model", "13b", "--density", "0.25", "--json"],
                       capture_output=True, text=True, timeout=120)
    rows = json.loads(r.stdout)
    n13 = LlamaConfig(vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_layers=40,
                      num_heads=40).num_params()
    assert rows[0]["method"] == "dense" and rows[0]["static_bytes"]["weights"] == 2 * n13
    assert rows[1]["bytes_per_active_weight"] == pytest.approx(13.0, abs=1e-4)  # + 1 KiB per layer
    assert rows[1]["ratio_vs_dense"] < 0.5


@pytest.mark.parametrize("args,option", [
    (["--model", "350m", "--density", "1.5"], "--density"),
    (["--model", "350m", "--density", "0"], "--density"),
    (["--model", "350m", "--density", "0.5", "--precision", "fp8"], "--precision"),
    (["--model", "1b", "--density", "0.5", "--block-size", "4"], "--block-size"),
    (["--model", "nope", "--density", "0.5"], "--model"),
])
def test_smet_memory_bad_values_exit_2(args, option):
    r = subprocess.run(_cli("smet-memory") + args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], r.stderr
    if option == "--model":
        assert "13b" in lines[0] and "tiny" in lines[0]  # lists the available presets
