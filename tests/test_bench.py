"""``smet-bench``: one process runs every point of a conf/bench.yaml grid (dense and sparse) with the
same loop and writes sane JSON records."""

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
    return [exe] if exe else [sys.executable, "-m", "smet.bench.cli"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tmp.json"
    cmd = _cli("smet-bench") + ["model=tiny", "sparsity=dense,smet", "sparsity.density=0.5", "data.batch_size=2",
                                "data.seq_len=32", "data.tokenizer.vocab_size=512", "sparsity.update_interval=3",
                                "--device", "cpu", "--steps", "6", "--warmup-steps", "1", "--threads", "1",
                                "--out", str(out)]
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
    # fp32, transient, b = 1: 16 + int32 index + 1-byte regrowth code, + a 1 KiB birth table per layer
    tables = smet["sparse_static_bytes"]["metadata"] - smet["active_weights"] * 5
    assert tables > 0 and tables % 1024 == 0
    assert smet["bytes_per_active_weight"] == pytest.approx(21.0 + tables / smet["active_weights"])
    assert 16.0 <= dense["bytes_per_active_weight"] < 16.01
    # topology updates happened (interval 3) and were timed separately, as was the step after each
    assert smet["n_update_steps"] >= 1 and smet["update_step_time_s"] > 0
    assert smet["n_after_update_steps"] >= 1 and smet["after_update_step_time_s"] > 0
    assert smet["n_timed_steps"] + smet["n_update_steps"] + smet["n_after_update_steps"] == 6
    assert dense["n_after_update_steps"] == 0 and dense["after_update_step_time_s"] is None
    assert dense["update_step_time_s"] is None
    # the drop fraction each timed update used: the cosine 0.2 -> 0.005 over the bench's short horizon
    # (1 + 6 + 2 steps), updates at steps 3 and 6 (sparsity.update_stop=<run length> times the early value)
    from smet.sparse.schedules import DropSchedule

    drop = DropSchedule("cosine", 0.2, 0.005, 0, 9)
    assert smet["update_drop_fraction"] == pytest.approx([drop(6), drop(3)]) and dense["update_drop_fraction"] is None
    assert smet["config"]["sparsity"]["method"] == "smet" and smet["config"]["optimizer"]["reset_local_step"] is True
    # the composed sections and the point's overrides travel with the record
    assert smet["config"]["overrides"] == ["sparsity=smet", "model=tiny", "sparsity.density=0.5", "data.batch_size=2",
                                           "data.seq_len=32", "data.tokenizer.vocab_size=512",
                                           "sparsity.update_interval=3"]
    assert smet["config"]["optimizer"]["regrowth_warmup_steps"] == 100 and smet["config"]["model"]["name"] == "tiny"
    assert dense["config"]["sparsity"] == {"method": "dense", "density": 1.0} and smet["dense_reference"] == "dense"
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
    step = smet["step_time_s"]  # the update step's and the after-update step's extra times, over 100 steps
    want = tokens / (step + (max(smet["update_step_time_s"] - step, 0)
                             + max(smet["after_update_step_time_s"] - step, 0)) / 100)
    from smet.bench.records import reamortize

    again = reamortize(records, 100)
    assert again[1]["tokens_per_s_amortised"] == pytest.approx(want, rel=1e-9)
    assert again[1]["amortize_interval"] == 100 and records[1]["amortize_interval"] == 3
    assert again[0]["tokens_per_s_amortised"] == pytest.approx(records[0]["tokens_per_s"])  # dense: no updates
    assert f"{want:,.0f}" in md.read_text() and "every 100 steps" in r.stdout
    bad = subprocess.run(_cli("smet-bench") + ["--from-json", str(tmp_path / "missing.json")], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "missing.json" in bad.stderr


@pytest.mark.parametrize("argv, names", [(["--density", "0"], "--density (sparsity.density): must be in (0, 1]"),
                                         (["sparsity.density=0"], "sparsity.density: must be in (0, 1]"),
                                         (["sparsity=dense,nope"], "sparsity: no preset 'nope'"),
                                         (["sparsity.densty=0.5"], "sparsity.densty: unknown key"),
                                         (["--steps", "0"], "--steps: must be a positive integer"),
                                         (["--memory-cap", "20"], "--memory-cap: caps GPU memory: needs --device cuda")])
def test_bench_bad_input_exit_2(tmp_path, argv, names):
    r = subprocess.run(_cli("smet-bench") + argv + ["--out", str(tmp_path / "x.json")],
                       capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"smet-bench: error: {names}"), r.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_bench_profile_phases(tmp_path):
    from smet.bench.cli import main

    out, prof = tmp_path / "b.json", tmp_path / "prof"
    rc = main(["model=tiny", "sparsity=dense,smet", "sparsity.density=0.5", "data.batch_size=2", "data.seq_len=32",
               "--device", "cpu", "--steps", "2", "--warmup-steps", "1", "--profile", str(prof), "--out", str(out)])
    assert rc == 0
    records = json.loads(out.read_text())
    for rec in records:
        phases = rec["profile"]["phases_per_step"]
        assert {"forward", "backward", "optimizer"} <= set(phases)
        assert all(v["host_ms"] > 0 for v in phases.values())
    assert sorted(p.name for p in prof.iterdir()) == ["dense.txt", "smet_d_0.5_transient.txt"]
    assert "aten::" in (prof / "dense.txt").read_text()


# ----------------------------------------------------------------------------- axes, OOM, MFU, memory model, meta build
def _prepare(*extra):
    from smet.bench.cli import prepare

    return prepare(["model=tiny", "data.batch_size=2", "data.seq_len=16", "data.tokenizer.vocab_size=256",
                    "--device", "cpu", "--threads", "1", *extra])


@pytest.mark.slow  # composes 2 x 64 grid points: ~24 s on 2 cores
def test_grid_axes():
    grid = ("sparsity=dense,smet", "sparsity.density=0.5,0.25", "sparsity.materialize=transient,persistent",
            "trainer.precision=bf16-true,bf16-mixed", "model.gradient_checkpointing=false,true",
            "trainer.compile=false,true")
    _, runs = _prepare(*grid)
    assert len(runs) == 2 * 2 * 2 * (1 + 2 * 2)  # ONE dense run per (precision, ac, compile), whatever its density
    labels = [r.label for r in runs]
    assert len(set(labels)) == len(labels)
    # every group (precision, ac, compile) starts with its dense reference, which its sparse runs point at
    groups = {}
    for i, r in enumerate(runs):
        groups.setdefault((r.precision, r.ac, r.compile), []).append((i, r))
    assert len(groups) == 8
    for g in groups.values():
        assert g[0][1].method == "dense" and [r.method for _, r in g].count("dense") == 1
        assert all(r.ref == g[0][0] for _, r in g[1:])
    # the old options are thin aliases of the same overrides: the same runs
    args, old = _prepare("--method", "dense", "smet", "--density", "0.5", "0.25", "--materialize", "transient",
                         "persistent", "--precision", "bf16-true", "bf16-mixed", "--activation-checkpointing", "off",
                         "on", "--compile", "off", "on")
    assert args.overrides[-6:] == ["sparsity=dense,smet", "sparsity.density=0.5,0.25",
                                   "sparsity.materialize=transient,persistent",
                                   "trainer.precision=bf16-true,bf16-mixed", "model.gradient_checkpointing=false,true",
                                   "trainer.compile=false,true"]
    assert [r.identity() for r in old] == [r.identity() for r in runs] and [r.label for r in old] == labels
    # defaults: the default grid dense,smet, one precision, the preset's checkpointing (13b: on), compile off;
    # labels stay short
    _, runs = _prepare("model=13b")
    assert [(r.precision, r.ac, r.compile) for r in runs] == [("32", True, False)] * 2
    assert [r.label for r in runs] == ["dense", "smet d=0.5 transient"]
    _, runs = _prepare("sparsity=dense,smet", "sparsity.density=0.5,0.25", "--dense-last")
    assert [r.method for r in runs] == ["smet", "smet", "dense"] and [r.ref for r in runs] == [2, 2, None]


def test_grid_labels_name_the_ablation_and_every_swept_key():
    _, runs = _prepare("sparsity=dense,smet,smet_no_reset", "optimizer.lr=1e-3,2e-3")
    assert [r.label for r in runs] == ["dense lr=0.001", "dense lr=0.002", "smet d=0.5 transient lr=0.001",
                                       "smet d=0.5 transient lr=0.002", "smet_no_reset d=0.5 transient lr=0.001",
                                       "smet_no_reset d=0.5 transient lr=0.002"]
    assert [r.ref for r in runs] == [None, None, 0, 1, 0, 1]  # the dense run of the same learning rate
    assert runs[4].variant == "no_reset" and runs[4].optimizer["reset_local_step"] is False
    assert all(r.swept == {"optimizer.lr": r.label.rsplit("=", 1)[1]} for r in runs)


def test_oom_recording_cuda_message_and_real_cpu_allocation_failure():
    import torch

    from smet.bench.oom import guarded, is_oom

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

    from smet.bench.harness import Run
    from smet.bench.render import markdown, ratios
    from smet.bench.schedule import run_bench

    class DenseOOMs(Run):  # the dense run fails at its 3rd optimizer step, as a 13B dense AdamW does on one GPU
        def train_step(self, x, y, measure=False):
            if self.spec.method == "dense" and self.step >= 2:
                self.step += 1
                raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 96.00 GiB. (step {self.step})")
            return super().train_step(x, y, measure)

    args, runs = _prepare("sparsity=dense,smet", "sparsity.density=0.5", "sparsity.update_interval=3", "--steps", "4",
                          "--warmup-steps", "1", "--interleave", interleave, "--rounds", "1")
    records = run_bench(runs, args, run_cls=DenseOOMs)
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
    from smet.bench.cli import main
    from smet.lightning import callbacks
    from smet.models.llama import LlamaConfig, flops_per_token
    from smet.perf import mfu

    assert callbacks.mfu is mfu  # Lightning's ThroughputMonitor uses the very same function
    out = tmp_path / "b.json"
    assert main(["model=tiny", "sparsity=dense,smet", "sparsity.density=0.25", "data.batch_size=2", "data.seq_len=16",
                 "data.tokenizer.vocab_size=256", "sparsity.update_interval=3", "--device", "cpu", "--steps", "3",
                 "--warmup-steps", "1", "--threads", "1", "--peak-tflops", "0.5", "--out", str(out)]) == 0
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
    from smet.bench.render import markdown
    from smet.bench.schedule import run_bench

    args, runs = _prepare(f"model={model}", "sparsity=dense,smet", "sparsity.density=0.25",
                          "sparsity.materialize=transient,persistent", "data.batch_size=1", "trainer.precision=32,bf16-true",
                          "--steps", "1", "--warmup-steps", "0")
    records = run_bench(runs, args)
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
    from smet.compose import compose
    from smet.models.llama import model_shapes
    from smet.sparse.memory import measure_static, predict_static

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

    composed = compose(["model=tiny", "sparsity=smet", "sparsity.density=0.25"], config_name="bench")
    cfg = {**composed.model, "vocab_size": 256, "max_seq_len": 16}
    scfg, ocfg = dict(composed.sparsity), dict(composed.optimizer)
    with Sizes() as sizes:
        model, ctrl = build_training_model(cfg, scfg, total_steps=10, device="cpu", seed=0)
    dense_numels = {layer.in_features * layer.out_features for layer in ctrl.layers}
    assert not dense_numels & sizes.float_numels  # no float tensor of a sparse layer's dense size was made
    pred = predict_static(model_shapes(cfg), scfg, ocfg, "32")["all"]
    meas = measure_static(model, None, ctrl)["all"]
    assert meas["weights"] == pred["weights"] and meas["buffers"] == pred["buffers"]
    assert meas["metadata"] == sum(layer.idx.numel() * 4 for layer in ctrl.layers)  # int32 ids, no local steps yet
    # LLaMA-13B: the whole model is built on meta in a moment, nothing allocated
    big = {**compose(["model=13b"]).model, "vocab_size": 32000, "max_seq_len": 256}
    model, ctrl = build_meta(big, scfg, total_steps=25)
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
    from smet.bench.cli import main

    out = tmp_path / "c.json"
    assert main(["model=tiny", "sparsity=dense,smet", "sparsity.density=0.5", "data.batch_size=1", "data.seq_len=16",
                 "data.tokenizer.vocab_size=256", "trainer.compile=false,true", "sparsity.update_interval=3",
                 "--device", "cpu", "--steps", "2", "--warmup-steps", "1", "--threads", "1", "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [(r["method"], r["compile"]) for r in records] == [("dense", False), ("smet", False), ("dense", True),
                                                                ("smet", True)]
    assert all(r["loss_finite"] and r["tokens_per_s"] > 0 for r in records)


def test_bench_out_checked_before_any_compute(tmp_path):
    kept = tmp_path / "old.json"
    kept.write_text('{"earlier": "result"}')
    for out, msg in ((kept, "exists; pass --force"), (tmp_path, "is a directory"),
                     (Path("/proc/smet-nope/x.json"), "cannot write into /proc/smet-nope")):
        r = subprocess.run(_cli("smet-bench") + ["model=tiny", "--device", "cpu", "--out", str(out)],
                           capture_output=True, text=True, timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and msg in lines[0], r.stderr
        assert "[smet-bench] model" not in r.stderr  # refused before the benchmark started
    assert kept.read_text() == '{"earlier": "result"}'


def _tiny_main(tmp_path, *argv):
    from smet.bench.cli import main

    out = tmp_path / "r.json"
    assert main(["model=tiny", "data.batch_size=2", "data.seq_len=16", "data.tokenizer.vocab_size=256", "--device",
                 "cpu", "--threads", "1", "--steps", "2", "--warmup-steps", "1", *argv, "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_bench_runs_an_ablation_preset(tmp_path, capsys):
    """conf/sparsity's ablations are benchmarked like any method (no Python method table to extend)."""
    (rec,) = _tiny_main(tmp_path, "sparsity=smet_momentum_warmup", "sparsity.density=0.5")
    assert rec["method"] == "smet" and rec["variant"] == "momentum_warmup" and rec["name"] == "smet_momentum_warmup"
    assert rec["config"]["optimizer"]["warmup_shape"] == "momentum"
    assert rec["config"]["overrides"] == ["sparsity=smet_momentum_warmup", "model=tiny", "data.batch_size=2",
                                          "data.seq_len=16", "data.tokenizer.vocab_size=256", "sparsity.density=0.5"]
    assert rec["tokens_per_s"] > 0 and rec["static_bytes"] == rec["predicted_static_bytes"]
    assert "| smet_momentum_warmup | 0.5 | transient |" in capsys.readouterr().out


def test_bench_dense_runs_once_whatever_its_sparsity_keys(tmp_path, capsys):
    records = _tiny_main(tmp_path, "sparsity=dense,smet", "sparsity.density=0.5,0.25")
    assert [(r["method"], r["density"]) for r in records] == [("dense", 1.0), ("smet", 0.5), ("smet", 0.25)]
    assert [r["dense_reference"] for r in records] == [None, "dense", "dense"]
    assert records[0]["config"]["overrides"] == ["sparsity=dense", "model=tiny", "data.batch_size=2",
                                                 "data.seq_len=16", "data.tokenizer.vocab_size=256"]
    out = capsys.readouterr().out
    assert "smet/dense tokens/s at d=0.5 (transient)" in out and "smet/dense tokens/s at d=0.25 (transient)" in out


def test_from_json_renders_records_of_the_previous_version(tmp_path):
    """docs/data/h200_fused/*.json (written before the grid came from conf/) still re-render."""
    from smet.bench.render import markdown, ratios

    old = Path(__file__).resolve().parents[1] / "docs" / "data" / "h200_fused" / "a.json"
    if not old.is_file():
        pytest.skip("no docs/data/h200_fused/a.json in this checkout")
    records = json.loads(old.read_text())
    md, lines = markdown(records), ratios(records)
    assert md.count("\n| ") == len(records) and len(lines) == sum(r["method"] != "dense" for r in records)
    assert all(line.startswith("smet/dense tokens/s at d=") for line in lines)
    r = subprocess.run(_cli("smet-bench") + ["--from-json", str(old), "--md", str(tmp_path / "a.md")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and (tmp_path / "a.md").read_text().count("smet/dense tokens/s") == len(lines)
