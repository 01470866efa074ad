"""``smet-bench``: one process runs dense and smet with the same loop and writes sane JSON records."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REQUIRED = ("method", "density", "tokens_per_s", "tokens_per_s_amortised", "static_bytes", "sparse_static_bytes",
            "bytes_per_active_weight", "active_weights", "peak_bytes", "step_time_s", "update_step_time_s", "config")
PARTS = ("weights", "grads", "optimizer", "metadata", "total")


def _cli(name: str) -> list[str]:
    exe = shutil.which(name, path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", f"smet.cli.{name.split('-', 1)[1]}"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tmp.json"
    cmd = _cli("smet-bench") + ["--device", "cpu", "--model", "tiny", "--steps", "4", "--warmup-steps", "1",
                                "--method", "dense", "smet", "--density", "0.5", "--batch", "2", "--seq-len", "32",
                                "--vocab", "512", "--update-interval", "2", "--threads", "1", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(out.read_text()), r.stdout


def test_bench_records(bench_run):
    records, stdout = bench_run
    assert [(r["method"], r["density"]) for r in records] == [("dense", 1.0), ("smet", 0.5)]
    for r in records:
        for k in REQUIRED:
            assert k in r, k
        for k in PARTS:
            assert isinstance(r["static_bytes"][k], int) and isinstance(r["sparse_static_bytes"][k], int)
        assert r["tokens_per_s"] > 0 and r["tokens_per_s_amortised"] > 0 and r["step_time_s"] > 0
        assert r["peak_bytes"] is None  # CPU
        assert r["config"]["data"].startswith("synthetic")
        assert r["static_bytes"]["total"] >= r["sparse_static_bytes"]["total"] > 0
    dense, smet = records
    # sparse layers: compact weights + grads + optimizer states are smaller than the dense ones at d = 0.5
    core = lambda r: sum(r["sparse_static_bytes"][k] for k in ("weights", "grads", "optimizer"))  # noqa: E731
    assert core(smet) < core(dense)
    assert smet["active_weights"] * 2 == dense["active_weights"]
    assert smet["bytes_per_active_weight"] == 22.0  # fp32, transient, b = 1 (smet-method.md section 5)
    assert 16.0 <= dense["bytes_per_active_weight"] < 16.01
    assert smet["sparse_static_bytes"]["metadata"] == smet["active_weights"] * 6
    # topology updates happened (interval 2) and were timed separately
    assert smet["n_update_steps"] >= 1 and smet["update_step_time_s"] > 0
    assert dense["update_step_time_s"] is None
    assert smet["config"]["sparsity"]["method"] == "smet" and smet["config"]["optimizer"]["reset_local_step"] is True
    assert "| dense |" in stdout and "smet/dense tokens/s at d=0.5" in stdout and "SYNTHETIC" in stdout


def test_from_json_reamortizes_measured_times(bench_run, tmp_path):
    """--from-json re-prints saved records; --amortize-interval spreads the measured update-step extra
    over N steps (the real update frequency) instead of the timing interval."""
    records, _ = bench_run
    src = tmp_path / "b.json"
    src.write_text(json.dumps(records))
    md = tmp_path / "b.md"
    r = subprocess.run(_cli("smet-bench") + ["--from-json", str(src), "--amortize-interval", "100", "--md", str(md)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    smet = records[1]
    tokens = 2 * 32
    want = tokens / (smet["step_time_s"] + max(smet["update_step_time_s"] - smet["step_time_s"], 0) / 100)
    from smet.cli.bench import reamortize

    again = reamortize(records, 100)
    assert again[1]["tokens_per_s_amortised"] == pytest.approx(want, rel=1e-9)
    assert again[1]["amortize_interval"] == 100 and records[1]["amortize_interval"] == 2
    assert again[0]["tokens_per_s_amortised"] == pytest.approx(records[0]["tokens_per_s"])  # dense: no updates
    assert f"{want:,.0f}" in md.read_text() and "every 100 steps" in r.stdout
    bad = subprocess.run(_cli("smet-bench") + ["--from-json", str(tmp_path / "missing.json")], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "missing.json" in bad.stderr


def test_bench_bad_density_exit_2(tmp_path):
    r = subprocess.run(_cli("smet-bench") + ["--density", "0", "--out", str(tmp_path / "x.json")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--density" in r.stderr
    assert not (tmp_path / "x.json").exists()


def test_bench_profile_phases(tmp_path):
    from smet.cli.bench import main

    out, prof = tmp_path / "b.json", tmp_path / "prof"
    rc = main(["--device", "cpu", "--model", "tiny", "--steps", "2", "--warmup-steps", "1", "--batch", "2",
               "--seq-len", "32", "--method", "dense", "smet", "--density", "0.5", "--profile", str(prof),
               "--out", str(out)])
    assert rc == 0
    records = json.loads(out.read_text())
    for rec in records:
        phases = rec["profile"]["phases_per_step"]
        assert {"forward", "backward", "optimizer"} <= set(phases)
        assert all(v["host_ms"] > 0 for v in phases.values())
    assert sorted(p.name for p in prof.iterdir()) == ["dense.txt", "smet_d_0.5_transient.txt"]
    assert "aten::" in (prof / "dense.txt").read_text()


# ----------------------------------------------------------------------------- axes, OOM, MFU, memory model, meta build
def _args(*extra):
    from smet.cli.bench import build_parser

    return build_parser().parse_args(["--device", "cpu", "--model", "tiny", "--batch", "2", "--seq-len", "16",
                                      "--vocab", "256", "--threads", "1", *extra])


def _model_cfg(args):
    from smet.cli.memory import load_model_preset

    cfg = load_model_preset(args.model)
    cfg["vocab_size"], cfg["max_seq_len"] = args.vocab, args.seq_len
    return cfg


def test_combination_axes():
    from smet.cli.bench import _label, combinations

    args = _args("--method", "dense", "smet", "--density", "0.5", "0.25", "--materialize", "transient", "persistent",
                 "--precision", "bf16-true", "bf16-mixed", "--activation-checkpointing", "off", "on",
                 "--compile", "off", "on")
    combos = combinations(args, _model_cfg(args))
    assert len(combos) == 2 * 2 * 2 * (1 + 2 * 2)
    labels = [_label(c) for c in combos]
    assert len(set(labels)) == len(labels)
    # every group (precision, ac, compile) starts with its dense reference
    groups = {}
    for c in combos:
        groups.setdefault((c["precision"], c["ac"], c["compile"]), []).append(c["method"])
    assert len(groups) == 8 and all(m[0] == "dense" and m.count("dense") == 1 for m in groups.values())
    # defaults: one precision, the preset's checkpointing (tiny: off), compile off; labels stay short
    args = _args("--method", "dense", "smet")
    combos = combinations(args, {"gradient_checkpointing": True})
    assert [(c["precision"], c["ac"], c["compile"]) for c in combos] == [("32", True, False)] * 2
    assert [_label(c) for c in combos] == ["dense", "smet d=0.5 transient"]
    args = _args("--method", "dense", "smet", "--density", "0.5", "0.25", "--dense-last")
    assert [c["method"] for c in combinations(args, {})] == ["smet", "smet", "dense"]


def test_oom_recording_cuda_message_and_real_cpu_allocation_failure():
    import torch

    from smet.cli.bench import guarded, is_oom

    def step():  # the error type and message PyTorch's CUDA caching allocator raises
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of "
                                     "139.81 GiB of which 1.02 GiB is free.\nmore detail")

    out, info = guarded("step 3", step)
    assert out is None and info == {"oom": True, "oom_bytes_requested": int(2.5 * 2**30), "oom_phase": "step 3",
                                    "oom_error": "CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total "
                                                 "capacity of 139.81 GiB of which 1.02 GiB is free."}

    def cpu_step():  # a real allocation failure of the CPU allocator (2**60 bytes), recorded the same way
        return torch.empty(2**60, dtype=torch.uint8)

    out, info = guarded("build", cpu_step)
    assert out is None and info["oom"] and info["oom_bytes_requested"] == 2**60 and info["oom_phase"] == "build"
    assert guarded("x", lambda: 3) == (3, None)
    with pytest.raises(RuntimeError, match="not an OOM"):  # other errors propagate
        guarded("x", lambda: (_ for _ in ()).throw(RuntimeError("not an OOM")))
    assert not is_oom(ValueError("can't allocate memory"))


@pytest.mark.parametrize("interleave", ["step", "round"])
def test_bench_records_oom_and_continues(interleave):
    import torch

    from smet.cli.bench import Run, markdown, ratios, run_bench

    class DenseOOMs(Run):  # the dense run fails at its 3rd optimizer step, as a 13B dense AdamW does on one GPU
        def train_step(self, x, y, measure=False):
            if self.combo["method"] == "dense" and self.step >= 2:
                self.step += 1
                raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 96.00 GiB. (step {self.step})")
            return super().train_step(x, y, measure)

    args = _args("--method", "dense", "smet", "--density", "0.5", "--steps", "4", "--warmup-steps", "1",
                 "--update-interval", "2", "--interleave", interleave, "--rounds", "1")
    records = run_bench(args, _model_cfg(args), run_cls=DenseOOMs)
    dense, smet = records
    assert dense["oom"] and dense["oom_phase"] == "step 3" and dense["oom_bytes_requested"] == 96 * 2**30
    assert dense["tokens_per_s"] is None and dense["static_bytes"] is None
    assert dense["predicted_static_bytes"]["total"] > 0  # the prediction is still there
    assert not smet["oom"] and smet["tokens_per_s"] > 0 and smet["loss_finite"]
    assert smet["optimizer_steps"] == 6 and smet["topology_updates"] >= 1
    md = markdown(records)
    assert "| dense | 1 | - | 32 | off | off | OOM |" in md and "OOM dense (step 3, tried to allocate 96.00 GiB)" in md
    assert any("dense OOM" in line for line in ratios(records))


def test_mfu_columns_follow_the_training_definition(tmp_path):
    from smet.cli.bench import main
    from smet.lightning import callbacks
    from smet.models.llama import LlamaConfig, flops_per_token
    from smet.perf import mfu

    assert callbacks.mfu is mfu  # Lightning's ThroughputMonitor uses the very same function
    out = tmp_path / "b.json"
    assert main(["--device", "cpu", "--model", "tiny", "--steps", "3", "--warmup-steps", "1", "--batch", "2",
                 "--seq-len", "16", "--vocab", "256", "--threads", "1", "--method", "dense", "smet", "--density",
                 "0.25", "--peak-tflops", "0.5", "--update-interval", "2", "--out", str(out)]) == 0
    dense, smet = json.loads(out.read_text())
    cfg = LlamaConfig.from_dict(dense["config"]["model"])
    assert 6 * dense["flop_params_dense"] == flops_per_token(cfg)  # N excludes the input embedding
    assert dense["flop_params_active"] == dense["flop_params_dense"] == smet["flop_params_dense"]
    # active: non-sparse parameters (head, norms; embedding excluded) + active weights of the sparse layers
    assert smet["flop_params_active"] == smet["flop_params_dense"] - dense["active_weights"] + smet["active_weights"]
    for r in (dense, smet):
        assert r["peak_flops"] == 0.5e12
        assert r["mfu_dense"] == pytest.approx(r["tokens_per_s_amortised"] * 6 * r["flop_params_dense"] / 0.5e12)
        assert r["mfu_active"] == pytest.approx(mfu(r["tokens_per_s_amortised"], 6 * r["flop_params_active"], 0.5e12))
    assert smet["mfu_active"] < smet["mfu_dense"]


@pytest.mark.parametrize("model", ["tiny", "20m"])
def test_static_matches_memory_model(model):
    from smet.cli.bench import markdown, run_bench

    args = _args("--model", model, "--method", "dense", "smet", "--density", "0.25", "--materialize", "transient",
                 "persistent", "--steps", "1", "--warmup-steps", "0", "--batch", "1", "--precision", "32",
                 "bf16-true")
    records = run_bench(args, _model_cfg(args))
    assert len(records) == 6
    for r in records:
        assert r["predicted_static_bytes"]["total"] > 0
        assert abs(r["static_rel_error"]) <= 0.05 and r["static_within_tolerance"]
        assert r["static_bytes"] == r["predicted_static_bytes"]  # in fact exact
    assert "static vs model %" in markdown(records)


def test_meta_build_never_allocates_dense_sparse_weights():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from smet.build import build_meta, build_training_model
    from smet.cli.memory import load_model_preset
    from smet.sparse.memory import measure_static, method_configs, predict_static

    class Sizes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.float_numels = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type != "meta":
                    self.float_numels.add(t.numel())
            return out

    cfg = {**load_model_preset("tiny"), "vocab_size": 256, "max_seq_len": 16}
    scfg, ocfg = method_configs("smet", 0.25)
    with Sizes() as sizes:
        model, ctrl = build_training_model(cfg, scfg, total_steps=10, device="cpu", seed=0)
    dense_numels = {layer.in_features * layer.out_features for layer in ctrl.layers}
    assert not dense_numels & sizes.float_numels  # no float tensor of a sparse layer's dense size was made
    pred = predict_static(cfg, scfg, ocfg, "32", 256, 16)["all"]
    meas = measure_static(model, None, ctrl)["all"]
    assert meas["weights"] == pred["weights"] and meas["buffers"] == pred["buffers"]
    assert meas["metadata"] == sum(layer.idx.numel() * 4 for layer in ctrl.layers)  # int32 ids, no local steps yet
    # LLaMA-13B: the whole model is built on meta in a moment, nothing allocated
    big = {**load_model_preset("13b"), "vocab_size": 32000, "max_seq_len": 256}
    model, ctrl = build_meta(big, method_configs("smet", 0.25)[0], total_steps=25)
    assert all(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    assert 3.1e9 < ctrl.active_weights() < 3.3e9


def test_meta_build_keeps_cpu_mask_bits_and_lightning_deferred_init():
    import torch

    from smet.build import build_training_model
    from smet.lightning.module import LMModule
    from smet.models.llama import build_model
    from smet.sparse import attach_sparsity

    mcfg = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4,
            "max_seq_len": 16}
    scfg = {"method": "smet", "density": 0.25}
    _, ctrl = build_training_model(mcfg, scfg, total_steps=10, device="cpu", seed=5)
    classic = attach_sparsity(build_model(mcfg), scfg, total_steps=10, seed=5)
    for a, b in zip(ctrl.layers, classic.layers):  # compact init on CPU: the historical bits
        assert torch.equal(a.idx, b.idx) and torch.equal(a.values, b.values)
    cfg = {"model": mcfg, "sparsity": {**scfg, "materialize": "persistent"}, "data": {"seq_len": 16},
           "trainer": {"max_steps": 10, "precision": "bf16-mixed"}, "seed": 5, "optimizer": {}}
    module = LMModule(cfg, vocab_size=256, defer_init=True)
    assert all(p.is_meta for p in module.model.parameters())
    module.materialize("cpu")
    assert not any(p.is_meta for p in module.model.parameters())
    for a, b in zip(module.sparse.layers, classic.layers):
        assert torch.equal(a.idx, b.idx) and torch.equal(a.values, b.values)
        assert a.dense is not None and a.dense.dtype == torch.bfloat16  # persistent copy follows the precision
    x = torch.randint(0, 256, (2, 17))
    assert torch.isfinite(module.model.loss(x[:, :-1], x[:, 1:]))
    assert torch.equal(module.model.model.rotary.cos, build_model(mcfg).model.rotary.cos)


@pytest.mark.slow
def test_bench_compile_axis(tmp_path):
    from smet.cli.bench import main

    out = tmp_path / "c.json"
    assert main(["--device", "cpu", "--model", "tiny", "--steps", "2", "--warmup-steps", "1", "--batch", "1",
                 "--seq-len", "16", "--vocab", "256", "--threads", "1", "--method", "dense", "smet", "--density",
                 "0.5", "--compile", "off", "on", "--update-interval", "2", "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [(r["method"], r["compile"]) for r in records] == [("dense", False), ("smet", False), ("dense", True),
                                                                ("smet", True)]
    assert all(r["loss_finite"] and r["tokens_per_s"] > 0 for r in records)


def test_bench_out_checked_before_any_compute(tmp_path):
    kept = tmp_path / "old.json"
    kept.write_text('{"earlier": "result"}')
    for out, msg in ((kept, "exists; pass --force"), (tmp_path, "is a directory"),
                     (Path("/proc/smet-nope/x.json"), "cannot write into /proc/smet-nope")):
        r = subprocess.run(_cli("smet-bench") + ["--device", "cpu", "--model", "tiny", "--out", str(out)],
                           capture_output=True, text=True, timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and msg in lines[0], r.stderr
        assert "[smet-bench] model" not in r.stderr  # refused before the benchmark started
    assert kept.read_text() == '{"earlier": "result"}'
