"""``smet-memory``: GPU fit / largest micro-batch, config overrides and grids composed from conf/,
model-dimension overrides, output width, bad input.

Everything here runs in-process through ``smet.cli.memory.main`` (meta-device model, no allocation),
plus one subprocess check that a piped run stays within 120 columns."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from smet.cli import memory as cli
from smet.compose import compose
from smet.models.llama import LlamaConfig, model_shapes
from smet.sparse.memory import active_weight_count, bytes_per_active_weight, estimate_activations, predict_static

GIB = 2**30


def _json(capsys, argv):
    rc = cli.main(argv + ["--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


def _total(row, batch, ckpt, every=1):
    act = estimate_activations(row["model_dims"], batch, row["seq_len"], row["precision"], ckpt, row["vocab"],
                               sparse_materialize=row["materialize"], checkpoint_every=every,
                               loss_impl=row["loss_impl"], loss_chunk_tokens=row["loss_chunk_tokens"],
                               pointwise=row["pointwise"])
    upd = row["update_estimate_bytes"]  # topology updates: masks, the next step's measurement, one layer's update
    return row["static_bytes"]["total"] + upd["regrown_masks"] + max(act["total"] + upd["measure_step"],
                                                                     upd["layer_update"])


# ----------------------------------------------------------------------------- fits / max batch
@pytest.mark.parametrize("gpu_args", [["--gpu-mem", "80"], ["--gpu", "a100-40gb", "--reserve", "2"],
                                      ["--gpu", "H100"]])
def test_fits_and_largest_batch_consistent_with_prediction(capsys, gpu_args):
    rows = _json(capsys, ["model=13b", "sparsity=smet", "sparsity.density=0.25,0.5", "--batch", "16"] + gpu_args)
    for r in rows:
        g = r["gpu"]
        mem = {"--gpu-mem": 80.0}.get(gpu_args[0], cli.GPU_TABLE.get(cli.GPU_ALIASES.get(gpu_args[1].lower(),
                                                                                          gpu_args[1])))
        reserve = float(gpu_args[3]) if len(gpu_args) > 2 else cli.DEFAULT_RESERVE_GIB
        assert g["mem_gib"] == mem and g["reserve_gib"] == reserve
        budget = int((mem - reserve) * GIB)
        assert g["usable_bytes"] == budget
        assert r["fits"] == (r["peak_estimate_bytes"] <= budget)
        assert r["headroom_bytes"] == budget - r["peak_estimate_bytes"]
        for key, ckpt in (("no_checkpointing", "none"), ("checkpointing", "block")):
            b = r["max_batch"][key]
            if b:
                assert _total(r, b, ckpt) <= budget
            else:
                assert _total(r, 1, ckpt) > budget
            assert _total(r, b + 1, ckpt) > budget
        # the fits column agrees with the max batch at the row's own checkpointing setting
        assert r["activation_checkpointing"] in ("none", "block") and r["checkpoint_every"] == 1
        own = r["max_batch"]["checkpointing" if r["activation_checkpointing"] == "block" else "no_checkpointing"]
        assert r["fits"] == (r["batch"] <= own)
        assert r["max_batch"]["checkpointing"] >= r["max_batch"]["no_checkpointing"]


def test_done_command_says_fits_and_largest_batch(capsys):
    assert cli.main(["model=13b", "sparsity=smet", "sparsity.density=0.25", "--gpu-mem", "80"]) == 0
    out = capsys.readouterr().out
    assert "GPU memory 80 GiB - reserve 1.5 GiB = 78.50 GiB" in out
    lines = {ln.split("  ")[0]: ln.split() for ln in out.splitlines() if ln.startswith(("dense AdamW", "smet d="))}
    assert lines["dense AdamW"][-3:] == ["no", "0", "0"]  # 97 GiB static > 78.5 GiB
    assert lines["smet d=0.25"][-3] == "yes" and int(lines["smet d=0.25"][-2]) > 8


def test_max_batch_zero_when_static_does_not_fit(capsys):
    rows = _json(capsys, ["--model", "13b", "--density", "0.5", "--gpu", "rtx4090"])
    assert all(not r["fits"] and r["max_batch"] == {"no_checkpointing": 0, "checkpointing": 0} for r in rows)


def test_no_gpu_no_fit_fields(capsys):
    rows = _json(capsys, ["--model", "tiny", "--density", "0.5"])
    assert all("fits" not in r and "max_batch" not in r for r in rows)


# ----------------------------------------------------------------------------- overrides
def _n_params(**kw):
    base = dict(vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40)
    base.update(kw)
    return LlamaConfig(**base).num_params()


@pytest.mark.parametrize("argv", [
    ["model=13b", "model.hidden_size=4096", "model.num_heads=32", "model.num_layers=24", "sparsity.density=0.25"],
    ["--model", "13b", "--hidden-size", "4096", "--heads", "32", "--layers", "24", "--density", "0.25"],
    # key=value wins over the flag
    ["--model", "13b", "--layers", "2", "model.num_layers=24", "--hidden-size", "4096", "--heads", "32",
     "--density", "0.25"],
])
def test_model_overrides_change_parameter_count(capsys, argv):
    rows = _json(capsys, argv)
    n = _n_params(hidden_size=4096, num_heads=32, num_layers=24)
    assert rows[0]["method"] == "dense" and rows[0]["params"] == n
    assert rows[0]["static_bytes"]["weights"] == 2 * n  # bf16-true: 2 B per parameter
    assert rows[0]["model_dims"]["num_layers"] == 24 and rows[0]["model_overrides"]["hidden_size"] == 4096


def test_intermediate_and_vocab_overrides(capsys):
    rows = _json(capsys, ["model=7b", "model.intermediate_size=8192", "--vocab-size", "50000", "sparsity=dense",
                          "--precision", "32"])
    n = LlamaConfig(vocab_size=50000, hidden_size=4096, intermediate_size=8192, num_layers=32,
                    num_heads=32).num_params()
    assert len(rows) == 1 and rows[0]["static_bytes"]["weights"] == 4 * n and rows[0]["vocab"] == 50000
    # without overrides the preset is unchanged (old flags keep working)
    plain = _json(capsys, ["--model", "7b", "--density", "0.5", "--vocab", "32000"])
    assert plain[0]["params"] == LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                             num_layers=32, num_heads=32).num_params()
    assert plain[0]["model_overrides"] == {}


# ----------------------------------------------------------------------------- width
@pytest.mark.parametrize("tty", [False, True])
@pytest.mark.parametrize("width", [100, 120])
def test_table_fits_width(capsys, tty, width):
    rows = _json(capsys, ["--model", "1b_aligned", "13b", "--density", "0.5", "0.25", "0.1", "--materialize",
                          "transient", "persistent", "--gpu", "h100-80gb", "--batch", "128"])
    buf = io.StringIO()
    cli.render(rows, buf, tty=tty, width=width)
    text = buf.getvalue()
    assert "max b ckpt" in text and "smet d=0.1 persistent" in text
    assert max(len(ln) for ln in text.splitlines()) <= width
    wide = io.StringIO()
    cli.render(rows, wide, tty=False, wide=True, width=width)
    assert "compute copy" in wide.getvalue() and "smet d=0.1 b=1 persistent uniform" in wide.getvalue()


def test_piped_output_is_plain_and_within_120_columns():
    cmd = [sys.executable, "-m", "smet.cli.memory", "model=13b", "sparsity=smet", "sparsity.density=0.25",
           "--gpu-mem", "80"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert max(len(ln) for ln in r.stdout.splitlines()) <= 120
    assert not any(c in r.stdout for c in "┏│━─\x1b")  # no rich box, no ANSI codes


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv,option", [
    (["--model", "13b", "--density", "0.5", "--gpu-mem", "-1"], "--gpu-mem"),
    (["--model", "13b", "--density", "0.5", "--gpu-mem", "0"], "--gpu-mem"),
    (["--model", "13b", "--density", "0.5", "--gpu-mem", "abc"], "--gpu-mem"),
    (["--model", "13b", "--density", "0.5", "--gpu", "tpu-v5"], "--gpu"),
    (["--model", "13b", "--density", "0.5", "--gpu", "h200", "--gpu-mem", "80"], "--gpu-mem"),
    (["--model", "13b", "--density", "0.5", "--gpu-mem", "8", "--reserve", "8"], "--reserve"),
    (["--model", "13b", "--density", "0.5", "--gpu-mem", "8", "--reserve", "-1"], "--reserve"),
    (["--model", "13b", "--density", "0.5", "--reserve", "1"], "--reserve"),
    (["--model", "nope", "--density", "0.5"], "--model"),
    (["--model", "../train", "--density", "0.5"], "--model"),
    (["--model", "/etc/passwd", "--density", "0.5"], "--model"),
    (["--model", "13b.yaml", "--density", "0.5"], "--model"),
    (["model=../train", "sparsity.density=0.5"], "model"),
    (["model=nope", "sparsity.density=0.5"], "model"),
    (["--density", "0.5"], "model"),  # conf/memory.yaml: model is required
    (["model=350m,nope"], "model"),
    (["model=13b", "sparsity=nope"], "sparsity"),
    (["model=13b", "trainer.precision=fp8"], "trainer.precision"),
    (["model=1b", "sparsity.block_size=4"], "sparsity.block_size"),
    (["model=13b", "data.batch_size=0"], "data.batch_size"),
    (["model=13b", "data.tokenizer.vocab_size=0"], "data.tokenizer.vocab_size"),
    (["model=13b", "sparsity.density=0.5,2"], "sparsity.density"),
    (["--model", "13b", "--batch", "abc"], "--batch"),
    (["model=13b", "sparsity.density=2"], "sparsity.density"),
    (["model=13b", "model.foo=1", "sparsity=dense"], "model.foo"),
    (["model=13b", "model.hidden_size=big", "sparsity=dense"], "model.hidden_size"),
    (["model=13b", "model.num_heads=7", "sparsity=dense"], "model.num_heads"),
    (["--model", "13b", "--hidden-size", "4100", "--density", "0.5"], "--hidden-size"),
    (["--model", "13b", "--layers", "0", "--density", "0.5"], "--layers"),
    (["what", "--model", "13b", "--density", "0.5"], "what"),
    (["model=13b", "foo.bar=1"], "foo.bar"),
    (["model=350m", "model.activation_checkpointing=full"], "model.activation_checkpointing"),
    (["model=350m", "model.checkpoint_every=0"], "model.checkpoint_every"),
    (["model=7b", "model.activation_checkpointing=mlp"], "model.activation_checkpointing"),  # 7b: gradient_ckpt true
    (["model=350m", "model.activation_checkpointing=attention", "--activation-checkpointing"],
     "model.activation_checkpointing"),
])
def test_bad_input_one_line_exit_2(capsys, argv, option):
    with pytest.raises(SystemExit) as exc:
        sys.exit(cli.main(argv))
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith(f"smet-memory: error: {option}: "), lines[0]


def test_bad_input_subprocess_exit_2():
    r = subprocess.run([sys.executable, "-m", "smet.cli.memory", "--model", "13b", "--density", "0.5", "--gpu",
                        "nope"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("smet-memory: error: --gpu: ")


def test_help_within_120_columns(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--gpu-mem" in out and "h100-80gb 79.1" in out and "model.<key>=V" in out
    assert max(len(ln) for ln in out.splitlines()) <= 120


# ----------------------------------------------------------------------------- composed points and grids
def _expected(overrides, *, dense=False):
    """The figures of one point computed independently from the composed config and the core API."""
    cfg = compose(list(overrides) + (["sparsity=dense"] if dense else []), config_name="memory")
    vocab = cfg.model.vocab_size or cfg.data.tokenizer.vocab_size
    shapes = model_shapes(cfg.model, vocab, cfg.data.seq_len)
    scfg, ocfg = dict(cfg.sparsity), dict(cfg.optimizer)
    static = predict_static(shapes, scfg, ocfg, str(cfg.trainer.precision))
    return static, active_weight_count(shapes, scfg), bytes_per_active_weight(scfg, ocfg, str(cfg.trainer.precision))


def test_smet_no_reset_point(capsys):
    """smet_no_reset keeps W = 100 (conf/sparsity/smet_no_reset.yaml), so the per-slot local step exists."""
    rows = _json(capsys, ["model=7b", "sparsity=smet_no_reset", "sparsity.density=0.25"])
    assert [(r["method"], r["variant"]) for r in rows] == [("dense", None), ("smet", "no_reset")]
    r = rows[1]
    assert r["optimizer_cfg"]["reset_local_step"] is False and r["optimizer_cfg"]["regrowth_warmup_steps"] == 100
    static, active, formula = _expected(["model=7b", "sparsity=smet_no_reset", "sparsity.density=0.25"])
    assert r["static_bytes"] == static["all"] and r["active_weights"] == active
    assert r["bytes_per_active_weight_formula"] == formula and formula["local_step"] == 1
    # int32 index + 1-byte regrowth code (b = 1, uniform) + a 1 KiB birth table for each of 7 x 32 layers
    assert r["static_bytes"]["metadata"] == active * (4 + 1) + 1024 * 7 * 32
    assert r["bytes_per_active_weight"] == pytest.approx(13.0, abs=1e-3)
    # W = 0 as well: no local step at all (set / rigl's 12 B in pure bf16)
    rows = _json(capsys, ["model=7b", "sparsity=smet_no_reset", "sparsity.density=0.25",
                          "optimizer.regrowth_warmup_steps=0"])
    assert rows[1]["static_bytes"]["metadata"] == active * 4 and rows[1]["bytes_per_active_weight"] == 12.0
    assert cli.main(["model=7b", "sparsity=smet_no_reset", "sparsity.density=0.25"]) == 0
    assert "smet_no_reset d=0.25" in capsys.readouterr().out


def test_grid_rows_dense_baseline_per_model(capsys):
    rows = _json(capsys, ["model=350m,13b", "sparsity.density=0.5,0.25"])
    assert [(r["model"], r["method"], r["density"]) for r in rows] == [
        ("350m", "dense", 1.0), ("350m", "smet", 0.5), ("350m", "smet", 0.25),
        ("13b", "dense", 1.0), ("13b", "smet", 0.5), ("13b", "smet", 0.25)]
    for r in rows:
        ov = [f"model={r['model']}", f"sparsity.density={r['density'] if r['method'] != 'dense' else 0.5}"]
        static, active, _ = _expected(ov, dense=r["method"] == "dense")
        assert r["static_bytes"] == static["all"] and r["active_weights"] == active
        dense = next(d for d in rows if d["model"] == r["model"] and d["method"] == "dense")
        assert r["ratio_vs_dense"] == r["static_bytes"]["total"] / dense["static_bytes"]["total"]
    # the memory.yaml defaults: bf16-true, batch 8 x seq 256, vocab 32000, smet
    assert {(r["precision"], r["batch"], r["seq_len"], r["vocab"]) for r in rows} == {("bf16-true", 8, 256, 32000)}


def test_old_flags_are_aliases_of_the_overrides(capsys):
    old = _json(capsys, ["--model", "350m", "13b", "--method", "set", "smet", "--density", "0.25", "--materialize",
                         "transient", "persistent", "--batch", "128", "--precision", "32", "--block-size", "4",
                         "--allocation", "erk", "--layers", "12", "--no-activation-checkpointing"])
    new = _json(capsys, ["model=350m,13b", "sparsity=set,smet", "sparsity.density=0.25",
                         "sparsity.materialize=transient,persistent", "data.batch_size=128", "trainer.precision=32",
                         "sparsity.block_size=4", "sparsity.allocation=erk", "model.num_layers=12",
                         "model.gradient_checkpointing=false"])
    assert len(old) == 2 * (1 + 2 * 2) and {r["model_dims"]["num_layers"] for r in old} == {12}
    assert [dict(r, overrides=None) for r in old] == [dict(r, overrides=None) for r in new]  # same points


def test_dense_in_the_grid_is_the_baseline_and_precision_sweeps_make_tables(capsys):
    rows = _json(capsys, ["model=tiny", "sparsity=dense,smet", "sparsity.density=0.5,0.25",
                          "trainer.precision=32,bf16-true"])
    assert [(r["precision"], r["method"], r["density"]) for r in rows] == [
        ("32", "dense", 1.0), ("32", "smet", 0.5), ("32", "smet", 0.25),
        ("bf16-true", "dense", 1.0), ("bf16-true", "smet", 0.5), ("bf16-true", "smet", 0.25)]
    assert [r["bytes_per_active_weight_formula"]["total"] for r in rows if r["method"] == "smet"] == [21, 21, 13, 13]
    for r in rows[1:3] + rows[4:]:  # measured-by-prediction: the formula + the 1 KiB birth tables of the small model
        tables = r["static_bytes"]["metadata"] - r["active_weights"] * 5
        assert tables % 1024 == 0 and r["bytes_per_active_weight"] == pytest.approx(
            r["bytes_per_active_weight_formula"]["total"] + tables / r["active_weights"])
    buf = io.StringIO()
    cli.render(rows, buf, tty=False)
    text = buf.getvalue()
    assert text.count("model tiny") == 2 and "precision 32," in text and "precision bf16-true," in text


def test_swept_keys_outside_the_label_are_shown(capsys):
    rows = _json(capsys, ["model=130m", "optimizer.regrowth_warmup_steps=100,40000"])
    assert [r["label_extra"] for r in rows] == ["", "regrowth_warmup_steps=100", "regrowth_warmup_steps=40000"]
    # codes both: W = 40000 makes the cap int32-sized (no code ever frees), but a run of trainer.max_steps
    # (conf/trainer/gpu.yaml: 20000) makes 200 updates, fewer than the 255 codes; counters would be int16, int32
    assert [r["bytes_per_active_weight_formula"]["local_step"] for r in rows[1:]] == [1, 1]
    rows = _json(capsys, ["model=130m", "optimizer.regrowth_warmup_steps=100,40000", "trainer.max_steps=30000"])
    assert [r["bytes_per_active_weight_formula"]["local_step"] for r in rows[1:]] == [1, 4]


def test_selective_checkpointing_and_loss_keys_compose_into_the_estimate(capsys):
    rows = _json(capsys, ["model=350m", "sparsity=smet", "sparsity.density=0.25", "data.batch_size=64",
                          "model.activation_checkpointing=none,mlp", "model.checkpoint_every=2",
                          "model.loss_impl=chunked", "model.loss_chunk_tokens=2048"])
    assert [(r["activation_checkpointing"], r["checkpoint_every"], r["method"]) for r in rows] == [
        ("none", 1, "dense"), ("none", 1, "smet"), ("mlp", 2, "dense"), ("mlp", 2, "smet")]
    for r in rows:
        assert (r["loss_impl"], r["loss_chunk_tokens"]) == ("chunked", 2048)
        act = estimate_activations(r["model_dims"], 64, r["seq_len"], r["precision"], r["activation_checkpointing"],
                                   r["vocab"], sparse_materialize=r["materialize"],
                                   checkpoint_every=r["checkpoint_every"], loss_impl="chunked",
                                   loss_chunk_tokens=2048, pointwise=r["pointwise"])
        assert r["activations_estimate_bytes"] == act
        upd = r["update_estimate_bytes"]
        assert (upd["regrown_masks"] > 0) == (r["method"] == "smet")
        assert r["peak_estimate_bytes"] == r["static_bytes"]["total"] + upd["regrown_masks"] + max(
            act["total"] + upd["measure_step"], upd["layer_update"])
    assert rows[2]["activations_estimate_bytes"]["total"] < rows[0]["activations_estimate_bytes"]["total"]
    assert cli.main(["model=350m", "model.activation_checkpointing=mlp", "model.checkpoint_every=2"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # (the title wraps)
    assert "activation checkpointing mlp, blocks 0, 2, 4, ..., loss chunked (4096 rows)" in out
    # the older switch still means whole-block checkpointing of every block
    old = _json(capsys, ["model=350m", "--activation-checkpointing"])
    new = _json(capsys, ["model=350m", "model.activation_checkpointing=block"])
    assert old[0]["activation_checkpointing"] == "block" and [dict(r, overrides=None) for r in old] == [
        dict(r, overrides=None) for r in new]


# ----------------------------------------------------------------------------- --shards (FSDP2 per rank)
def test_shards_give_rank_zeros_slice_with_the_index_replicated(capsys):
    one = {r["method"]: r for r in _json(capsys, ["model=130m", "sparsity=smet", "trainer.precision=32"])}
    four = {r["method"]: r for r in _json(capsys, ["model=130m", "sparsity=smet", "trainer.precision=32",
                                                   "--shards", "4"])}
    assert four["smet"]["shards"] == 4
    for method in ("dense", "smet"):
        a, b = one[method]["static_bytes"], four[method]["static_bytes"]
        assert b["buffers"] == a["buffers"]  # RoPE tables: every rank
        for k in ("weights", "grads"):  # 130m: every sharded dim 0 divides by 4, so exactly a quarter
            assert b[k] * 4 == a[k], (method, k)
    s1, s4 = one["smet"]["sparse_static_bytes"], four["smet"]["sparse_static_bytes"]
    # int32 index (whole on every rank) + 1-byte local-step code per slot (a quarter of the slots per rank)
    assert s1["metadata"] - s4["metadata"] == 3 * (s1["optimizer"] // 8) // 4, (s1, s4)  # fp32 m+v: 8 B/slot
    # the printed table says what the figures are
    assert cli.main(["model=130m", "sparsity=smet", "--shards", "4"]) == 0
    assert "per rank of 4 FSDP2 shards" in capsys.readouterr().out


def test_shards_below_one_are_refused_naming_the_option(capsys):
    assert cli.main(["model=tiny", "--shards", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "--shards" in err


# ----------------------------------------------------------------------------- --engine zero (DeepSpeed per rank)
def test_engine_zero_keeps_the_model_whole_and_shards_master_moments_and_gradient(capsys):
    base = ["model=130m", "sparsity=smet", "trainer.precision=bf16-mixed", "--engine", "zero"]
    one = {r["method"]: r for r in _json(capsys, base)}
    four = {r["method"]: r for r in _json(capsys, [*base, "--shards", "4"])}
    assert four["smet"]["engine"] == "zero" and four["smet"]["shards"] == 4
    for method in ("dense", "smet"):
        a, b = one[method]["static_bytes"], four[method]["static_bytes"]
        # weights: the bf16 model (2 B, whole on every rank) + the fp32 master (4 B, 1/N): 6 B -> 2 + 1 B
        assert b["weights"] * 6 == a["weights"] * 3, (method, a, b)
        assert 4 * b["grads"] == a["grads"] and b["buffers"] == a["buffers"]
        assert abs(4 * b["optimizer"] - a["optimizer"]) <= 4 * 4 * 3, (method, a, b)  # up to the 0-dim steps
    # the index stays whole on every rank, the local steps are 1/N
    s1, s4 = one["smet"]["sparse_static_bytes"], four["smet"]["sparse_static_bytes"]
    assert s1["metadata"] - s4["metadata"] == 3 * (s1["optimizer"] // 8) // 4, (s1, s4)
    assert cli.main([*base, "--shards", "4"]) == 0
    assert "DeepSpeed ZeRO-1/2 on 4 rank(s)" in capsys.readouterr().out


def test_engine_zero_refuses_what_deepspeed_does_not_run_naming_the_option(capsys):
    assert cli.main(["model=tiny", "sparsity=smet", "sparsity.index=rows", "--engine", "zero"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "--engine" in err and "sparsity.index" in err


def test_the_trainer_picks_the_engine_and_rank_count_unless_the_options_say_otherwise(capsys):
    """``trainer=deepspeed trainer.devices=4`` plans one ZeRO rank of 4, ``trainer=fsdp`` one FSDP2 rank; the
    options win over the trainer; a plain trainer plans one process."""
    rows = lambda *a: {r["method"]: r for r in _json(capsys, ["model=130m", "sparsity=smet", *a])}  # noqa: E731
    ds = rows("trainer=deepspeed", "trainer.devices=4")
    assert (ds["smet"]["engine"], ds["smet"]["shards"]) == ("zero", 4)
    assert ds["smet"]["static_bytes"] == rows("--engine", "zero", "--shards", "4")["smet"]["static_bytes"]
    fs = rows("trainer=fsdp", "trainer.devices=2", "trainer.num_nodes=2")
    assert (fs["smet"]["engine"], fs["smet"]["shards"]) == ("fsdp", 4)
    assert (rows("trainer=deepspeed", "--shards", "2")["smet"]["shards"]) == 2
    assert rows("trainer=fsdp", "trainer.devices=4", "--engine", "zero")["smet"]["shards"] == 1  # not the trainer's
    plain = rows("trainer=ddp", "trainer.devices=4")
    assert (plain["smet"]["engine"], plain["smet"]["shards"]) == ("none", 1)
