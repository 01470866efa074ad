"""DDP (trainer=ddp): compact gradients through DDP's buckets, identical masks on every rank.

Real 2-process gloo runs on CPU:

* plain PyTorch DDP + the sparse core (RigL with gradient accumulation under ``no_sync``): the
  dense gradients that score growth are summed over ranks inside the backward, ranks end every
  update with identical masks and bit-identical parameters, and without the reduction the debug
  check (``sparsity.debug_check_masks``) stops every rank with an error naming the layer;
* the real entry point (``train.py trainer=ddp ... trainer.devices=2``) for RigL (with gradient
  accumulation) and SMET: per-rank traces (``SMET_DDP_TRACE=1``) show identical masks and
  parameters on both ranks after every step and update, and the per-step loss (mean of the two
  ranks' halves) equals a single process reading the same global batch (2 x B vs 1 x 2B).

Run as a script, this file is the worker of the plain-DDP test (one process per rank). On a machine
with 2 GPUs, ``SMET_DDP_TEST_BACKEND=nccl pytest tests/test_ddp.py -k plain_ddp`` runs that test over
NCCL, one GPU per rank.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from rank_workers import run_workers

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------- quick


def test_presets_compose_ddp_strategy():
    from hydra import compose, initialize_config_dir

    from smet.lightning.strategy import DDP_DEFAULTS, build_strategy

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        gpu = compose("train", overrides=["trainer=ddp"]).trainer
        cpu = compose("train", overrides=["trainer=ddp_cpu"]).trainer
    assert gpu.strategy == cpu.strategy == "ddp" and gpu.accelerator == "gpu" and cpu.accelerator == "cpu"
    assert gpu.devices == cpu.devices == 2 and cpu.precision == "32"
    assert set(gpu.ddp) == set(cpu.ddp) == set(DDP_DEFAULTS)
    assert {k: v for k, v in gpu.ddp.items() if k != "process_group_backend"} == \
        {k: v for k, v in cpu.ddp.items() if k != "process_group_backend"}
    assert gpu.ddp.process_group_backend is None and cpu.ddp.process_group_backend == "gloo"
    s = build_strategy(cpu)
    assert type(s).__name__ == "DDPStrategy" and s._process_group_backend == "gloo"
    kw = s._ddp_kwargs
    assert kw["find_unused_parameters"] is False and kw["gradient_as_bucket_view"] is True
    assert kw.get("forward_sync_buffers", kw.get("broadcast_buffers")) is False
    # other strategies pass through; `strategy: ddp` without a ddp block gets the same defaults
    assert build_strategy({"strategy": "auto"}) == "auto"
    assert build_strategy({"strategy": "ddp"})._ddp_kwargs["gradient_as_bucket_view"] is True


@pytest.mark.parametrize("ddp,key", [
    ({"find_unused": True}, "trainer.ddp.find_unused"),
    ({"broadcast_buffers": "no"}, "trainer.ddp.broadcast_buffers"),
    ({"process_group_backend": "mpich"}, "trainer.ddp.process_group_backend"),
    ({"bucket_cap_mb": 0}, "trainer.ddp.bucket_cap_mb"),
])
def test_bad_ddp_options_name_the_key(ddp, key):
    from smet.errors import SmetConfigError
    from smet.lightning.strategy import build_strategy

    with pytest.raises(SmetConfigError, match=key.replace(".", r"\.")):
        build_strategy({"strategy": "ddp", "accelerator": "cpu", "ddp": ddp})


def test_nccl_on_cpu_is_refused():
    from smet.errors import SmetConfigError
    from smet.lightning.strategy import build_strategy

    with pytest.raises(SmetConfigError, match="nccl needs GPUs"):
        build_strategy({"strategy": "ddp", "accelerator": "cpu", "ddp": {"process_group_backend": "nccl"}})


def test_debug_check_masks_must_be_a_bool():
    from smet.errors import SmetConfigError
    from smet.sparse.config import check_sparsity_config

    sp = {"method": "rigl", "density": 0.5, "growth": "gradient", "materialize": "transient", "allocation": "uniform",
          "drop_schedule": "cosine", "update_interval": 10, "drop_fraction": 0.2, "drop_fraction_end": 0.0,
          "targets": ["q_proj"], "debug_check_masks": "yes"}
    with pytest.raises(SmetConfigError, match=r"sparsity\.debug_check_masks"):
        check_sparsity_config(sp, {})


def test_single_process_debug_check_is_a_no_op():
    import torch

    from smet.models.llama import LlamaConfig, LlamaForCausalLM
    from smet.sparse import attach_sparsity

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1,
                                         num_heads=2, max_seq_len=8))
    ctrl = attach_sparsity(model, dict(SPARSE), total_steps=4)
    ctrl.before_step(2)
    assert all(layer.grad_reduce_fn is None and layer.growth_request > 0 for layer in ctrl.layers)  # no group
    ctrl.check_ranks("now")  # not initialised: nothing to compare, no error


def test_checksums_see_every_bit_and_every_position():
    import torch

    from smet.sparse.distributed import tensor_checksum

    x = torch.randn(1000)
    assert int(tensor_checksum(x)) == int(tensor_checksum(x.clone()))
    y = x.clone()
    y[3], y[7] = x[7], x[3]  # same multiset, other slots
    assert int(tensor_checksum(y)) != int(tensor_checksum(x))
    z = x.clone()
    z[500] = torch.nextafter(z[500], torch.tensor(float("inf")))  # one ulp
    assert int(tensor_checksum(z)) != int(tensor_checksum(x))
    assert int(tensor_checksum(x.bfloat16())) >= 0 and int(tensor_checksum(torch.arange(10, dtype=torch.int32))) >= 0


# ------------------------------------------------------------------------------- plain DDP worker
SPARSE = {"method": "rigl", "density": 0.5, "growth": "gradient", "update_interval": 2, "drop_fraction": 0.3,
          "debug_check_masks": True}
OPT = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "regrowth_warmup_steps": 0,
       "lr_scaling": "none", "lr_scaling_scope": "sparse", "reset_local_step": False, "reset_moments": True,
       "warmup_shape": "linear"}
STEPS, ACCUM = 6, 2


def _worker(rank: int, world: int, port: int, out: str) -> None:  # pragma: no cover - runs in a subprocess
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from smet.lightning.strategy import DDP_DEFAULTS
    from smet.models.llama import LlamaConfig, LlamaForCausalLM
    from smet.sparse import attach_sparsity, build_smet_optimizer
    from smet.sparse import distributed as sdist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = os.environ.get("SMET_DDP_TEST_BACKEND", "gloo")  # nccl: one GPU per rank (run by hand on GPUs)
    dev = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, rank=rank, world_size=world)
    import inspect

    sync_key = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
                else "broadcast_buffers")
    result: dict = {}
    orig_reduce_fn = sdist.grad_all_reduce_fn
    for scenario in ("reduced", "local"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2,
                                             num_heads=4, max_seq_len=16))
        ctrl = attach_sparsity(model, SPARSE, total_steps=STEPS + 1, seed=3)
        model.to(dev)
        opt = build_smet_optimizer(model, OPT, ctrl)
        ddp = DDP(model, device_ids=[rank] if dev.type == "cuda" else None, find_unused_parameters=False,
                  gradient_as_bucket_view=True, **{sync_key: DDP_DEFAULTS["broadcast_buffers"]})
        captured: dict = {}

        def capturing(group=None):  # records the first growth reduction: local input and reduced output
            fn = orig_reduce_fn(group)

            def f(t):
                if "pre" not in captured:
                    captured["pre"] = t.clone()
                    fn(t)
                    captured["post"] = t.clone()
                else:
                    fn(t)
            return f

        sdist.grad_all_reduce_fn = capturing if scenario == "reduced" else (lambda group=None: None)
        rec = {"reduces": [], "params": [], "layers": [], "losses": [], "error": None}
        try:
            for s in range(1, STEPS + 1):
                before = sdist.growth_reduce_calls
                for micro in range(ACCUM):
                    g = torch.Generator().manual_seed(1000 * s + 10 * micro + rank)  # each rank its own data
                    x = torch.randint(0, 128, (4, 17), generator=g).to(dev)
                    final = micro == ACCUM - 1
                    ctrl.before_step(s, score_growth=final)
                    logits = ddp(x[:, :-1])
                    loss = torch.nn.functional.cross_entropy(logits.view(-1, 128), x[:, 1:].reshape(-1)) / ACCUM
                    if final:
                        loss.backward()
                    else:
                        with ddp.no_sync():  # what Lightning does for non-final micro-batches
                            loss.backward()
                    rec["losses"].append(float(loss))
                opt.step()
                opt.zero_grad(set_to_none=True)
                rec["params"].append([int(sdist.tensor_checksum(p)) for p in model.parameters()])
                ctrl.after_step(s)  # debug_check_masks: all ranks compare checksums after each update
                rec["reduces"].append(sdist.growth_reduce_calls - before)
                rec["layers"].append(sdist.layer_checksums(ctrl.layers).tolist())
        except sdist.MaskMismatchError as err:
            rec["error"] = str(err)
        finally:
            sdist.grad_all_reduce_fn = orig_reduce_fn
        if "pre" in captured:
            parts = [torch.empty_like(captured["pre"]) for _ in range(world)]
            dist.all_gather(parts, captured["pre"])
            expect = torch.stack(parts).sum(0)
            rec["reduced_is_sum"] = bool(torch.allclose(captured["post"], expect, rtol=1e-6, atol=1e-9))
            rec["local_grads_differ"] = not torch.equal(parts[0], parts[1])
        rec["n_layers"] = len(ctrl.layers)
        result[scenario] = rec
        dist.barrier()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def _run_workers(tmp_path: Path, world: int = 2) -> list[dict]:
    return run_workers(__file__, tmp_path, world, timeout=120, what="DDP workers")


@pytest.mark.slow
def test_plain_ddp_rigl_scores_reduced_gradient_masks_identical(tmp_path):
    r0, r1 = _run_workers(tmp_path)
    a, b = r0["reduced"], r1["reduced"]
    assert a["error"] is None and b["error"] is None, (a["error"], b["error"])  # debug check passed
    n = a["n_layers"]
    # one dense-gradient all-reduce per layer on update steps (2, 4, 6), only in the final
    # micro-batch (none under no_sync), none on other steps
    assert a["reduces"] == b["reduces"] == [0, n, 0, n, 0, n]
    assert a["reduced_is_sum"] and b["reduced_is_sum"] and a["local_grads_differ"]
    assert a["layers"] == b["layers"]  # identical masks (and values) after every step / update
    assert a["params"] == b["params"]  # bit-identical parameters after every optimizer step
    assert a["layers"][0] != a["layers"][-1]  # the topology did change
    # without the reduction RigL ranks local gradients: ranks diverge at the first update and the
    # debug check stops every rank with the same message naming the layer
    ea, eb = r0["local"]["error"], r1["local"]["error"]
    assert ea and ea == eb and "sparse layer 'model.layers." in ea and "mask (idx)" in ea
    assert "after topology update 1 (step 2)" in ea


# ------------------------------------------------------------------------ the real entry point
FAST = ("data.seq_len=64", "data.tokenizer.vocab_size=512", "data.max_val_sequences=16",
        "trainer.progress_bar=none", "trainer.model_summary=false", "trainer.log_every_n_steps=2")


def _trace(run_dir: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "ddp_trace" / f"rank{rank}.jsonl").read_text().splitlines()]


def _ddp_vs_single(run_train, tmp_path, trainer: tuple, batch: int, *overrides: str, script=None) -> dict:
    """``script``: what runs the 2-rank side (default train.py; test_zero_train: tests/ds_cpu_train.py)."""
    env = {"SMET_DDP_TRACE": "1"}
    ddp = run_train(*FAST, *trainer, "trainer.devices=2", f"data.batch_size={batch}", *overrides,
                    out=tmp_path / "ddp", env=env, timeout=240, script=script)
    single = run_train(*FAST, f"data.batch_size={2 * batch}", "trainer.cpu_threads=1", *overrides,
                       out=tmp_path / "single", env=env, timeout=240)
    t0, t1, ts = _trace(ddp.out_dir, 0), _trace(ddp.out_dir, 1), _trace(single.out_dir, 0)
    assert len(t0) == len(t1) == len(ts) > 0
    stats = {"max_dloss": 0.0, "updates": 0, "layers_equal_single": [], "reduces": []}
    for a, b, s in zip(t0, t1, ts):
        assert a["step"] == b["step"] == s["step"]
        assert a["params"] == b["params"], f"parameters differ across ranks after step {a['step']}"
        assert a["layers"] == b["layers"], f"masks differ across ranks after step {a['step']}"
        assert a["update"] == b["update"] == s["update"]
        # the global batch of a step: rank 0 reads its first half, rank 1 the second; every
        # sequence has seq_len targets, so the global mean loss is the mean of the two halves
        assert len(a["losses"]) == len(b["losses"]) == len(s["losses"])
        for la, lb, ls in zip(a["losses"], b["losses"], s["losses"]):
            stats["max_dloss"] = max(stats["max_dloss"], abs((la + lb) / 2 - ls))
        if a["update"]:
            stats["updates"] += 1
            stats["layers_equal_single"].append(sum(x[1] == y[1] for x, y in zip(a["layers"], s["layers"])))
        stats["reduces"].append((a["growth_reduces"], b["growth_reduces"], s["growth_reduces"]))
    first = abs((t0[0]["losses"][0] + t1[0]["losses"][0]) / 2 - ts[0]["losses"][0])
    assert first < 1e-5, first  # same sequences, same weights: equal up to summation order
    assert stats["max_dloss"] < 1e-3, stats  # later steps: Adam amplifies rounding a little
    summary = json.loads((ddp.out_dir / "summary.json").read_text())
    assert summary["steps"] == len(t0)
    stats["n_layers"] = len(t0[0]["layers"])
    print(f"DDP vs single process: {stats}")
    return stats


@pytest.mark.slow
def test_train_ddp_rigl_with_accumulation_matches_single_process(run_train, tmp_path):
    st = _ddp_vs_single(run_train, tmp_path, ("trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32"), 4,
                        "sparsity=rigl", "sparsity.update_interval=3", "sparsity.debug_check_masks=true",
                        "trainer.accumulate_grad_batches=2", "trainer.max_steps=7", "trainer.val_every_n_steps=7")
    assert st["updates"] == 2
    n = st["n_layers"]
    # RigL: one all-reduce of the dense gradient per layer on update steps (final micro-batch only);
    # a single process reduces nothing
    assert [r for r in st["reduces"]] == [(n, n, 0) if i in (2, 5) else (0, 0, 0) for i in range(7)]


@pytest.mark.slow
def test_train_ddp_smet_matches_single_process(run_train, tmp_path):
    st = _ddp_vs_single(run_train, tmp_path, ("trainer=ddp_cpu",), 8,
                        "sparsity=smet", "sparsity.materialize=persistent", "sparsity.update_interval=3",
                        "optimizer.regrowth_warmup_steps=2",
                        "sparsity.debug_check_masks=true", "trainer.max_steps=10", "trainer.val_every_n_steps=10")
    assert st["updates"] == 3 and all(r == (0, 0, 0) for r in st["reduces"])


@pytest.mark.slow
def test_train_ddp_smet_rows_index_matches_single_process(run_train, tmp_path):
    """The 2-byte row-sorted index under DDP: slots re-sorted at every update, masks (column blocks and row
    offsets) identical on both ranks, the run equal to one process."""
    st = _ddp_vs_single(run_train, tmp_path, ("trainer=ddp_cpu",), 8,
                        "sparsity=smet", "sparsity.index=rows", "sparsity.update_interval=3",
                        "optimizer.regrowth_warmup_steps=2",
                        "sparsity.debug_check_masks=true", "trainer.max_steps=7", "trainer.val_every_n_steps=7")
    assert st["updates"] == 2 and all(r == (0, 0, 0) for r in st["reduces"])


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    _worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
