"""smet-compare: reports over real run directories made by `python train.py -m` (a tiny sweep)."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAST, REPO
from smet.cli.compare import main
from smet.report.runs import load_run_dir, parse_metrics_csv, run_from_wandb

METHODS = ("dense", "set", "smet")
# one density, three methods: the swept key is the method (W, LR scaling, ... come with it)
PNGS = ("loss_curves.png", "curves_vs_tokens.png", "ppl_vs_method.png", "spike_by_method.png", "update_ratio.png")


@pytest.fixture(scope="module")
def sweep(session_cache, tmp_path_factory) -> Path:
    """dense / set / smet, 12 steps each, topology updates every 4 steps: one Hydra multirun."""
    root = tmp_path_factory.mktemp("compare_sweep")
    cmd = [sys.executable, str(REPO / "train.py"), "-m", "+experiment=method_compare",
           f"sparsity={','.join(METHODS)}", "trainer.max_steps=12", "sparsity.update_interval=4",
           "++sparsity.spike_window=2", "trainer.val_every_n_steps=6", f"hydra.sweep.dir={root / 'sweep'}", *FAST]
    env = dict(os.environ, SMET_CACHE_DIR=str(session_cache), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, f"sweep failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return root / "sweep"


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compare_report") / "report"
    assert main([str(sweep), "--out", str(out), "--title", "tiny sweep"]) == 0
    return out


def summaries(sweep: Path) -> dict[str, dict]:
    out = {}
    for d in sorted(p for p in sweep.iterdir() if p.is_dir()):
        method = json.loads((d / "summary.json").read_text())["method"]
        out[method] = json.loads((d / "summary.json").read_text()) | {"dir": d}
    return out


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ----------------------------------------------------------------------------- the report
@pytest.mark.slow
def test_summary_table_one_row_per_method_with_final_ppl(sweep, report):
    sums = summaries(sweep)
    assert set(sums) == set(METHODS)
    rows = read_csv(report / "summary.csv")
    assert [r["method"] for r in rows] == list(METHODS)  # ordered dense, ..., smet
    for r in rows:
        s = sums[r["method"]]
        assert r["n_seeds"] == "1" and r["n_incomplete"] == "0"
        assert float(r["final_val_ppl_mean"]) == pytest.approx(s["val_ppl"], rel=1e-12)
        assert float(r["steps"]) == 12
        assert float(r["static_mib_all"]) == pytest.approx(s["static_bytes"]["all"]["total"] / 2**20)
        assert r["runs"] == str(s["dir"])
    dense, set_, smet = rows
    assert dense["density"] == "1.0" and dense["W"] == "" and dense["spike_mean"] == ""
    assert float(smet["density"]) == 0.25 and smet["W"] == "100" and smet["lr_scaling"] == "inverse"
    assert float(smet["static_mib_all"]) < float(dense["static_mib_all"])
    # the regrowth warm-up makes SMET's first update of regrown weights far smaller than SET's
    assert float(smet["update_ratio_regrown"]) < 0.2 * float(set_["update_ratio_regrown"])
    assert int(smet["n_spikes"]) >= 1 and math.isfinite(float(smet["spike_mean"]))

    md = (report / "report.md").read_text()
    summary_section = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    table = [line for line in summary_section.splitlines() if line.startswith("| ") and "tiny" in line]
    assert len(table) == 3
    for line, m in zip(table, METHODS):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == m
        assert f"{sums[m]['val_ppl']:.2f}" in cells
    assert (report / "summary.md").read_text().count("| tiny |") == 3


@pytest.mark.slow
def test_pngs_are_real_images(report):
    for name in PNGS:
        p = report / name
        assert p.is_file(), f"{name} missing"
        w, h = png_size(p)
        assert w >= 300 and h >= 200 and p.stat().st_size > 10_000, (name, w, h, p.stat().st_size)


@pytest.mark.slow
def test_report_md_and_self_contained_html(sweep, report):
    md = (report / "report.md").read_text()
    for name in PNGS:
        assert f"]({name})" in md
    for d in sorted(p for p in sweep.iterdir() if p.is_dir()):
        assert f"`{d}`" in md
    assert "python train.py sparsity=smet" in md and "+experiment=method_compare" in md  # .hydra/overrides.yaml

    page = (report / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(PNGS)
    assert 'src="loss_curves.png"' not in page and "<img src=\"" not in page.replace('src="data:', "")
    assert '<table class="summary">' in page and page.count("<tr>") >= 1 + 3 + 3  # header, groups, runs
    for m in METHODS:
        assert f"<td>{m}</td>" in page


@pytest.mark.slow
def test_resumed_run_duplicates_are_deduplicated(sweep, tmp_path, capsys):
    """A run that died after step 11 and was resumed from its step-6 checkpoint repeats rows 6..11:
    the later rows win; without summary.json it is reported as incomplete from metrics.csv."""
    src = summaries(sweep)["smet"]["dir"]
    run = tmp_path / "runs" / "resumed"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("checkpoints"))
    (run / "summary.json").unlink()
    (run / "train.log").unlink(missing_ok=True)
    with open(src / "metrics.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    step = header.index("step")
    li, pi = header.index("train/loss"), header.index("val/ppl")
    again = []
    for r in rows:
        if int(r[step]) >= 6:
            r = list(r)
            if r[li]:
                r[li] = str(float(r[li]) + 1.0)
            if r[pi]:
                r[pi] = str(float(r[pi]) * 2.0)
            again.append(r)
    with open(run / "metrics.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows, *again])
    old = time.time() - 2 * 3600  # last written two hours ago: died (not running)
    os.utime(run / "metrics.csv", (old, old))

    orig, _ = parse_metrics_csv(src / "metrics.csv")
    r = load_run_dir(run)
    expected_dups = sum(1 for row in again for i, c in enumerate(row) if c and header[i] not in ("step", "epoch"))
    assert not r.complete and r.duplicates_dropped == expected_dups > 0
    steps, loss = r.series("train/loss")
    assert steps.tolist() == orig["train/loss"][0].tolist()  # no repeated step
    for s, v, v0 in zip(steps, loss, orig["train/loss"][1]):
        assert v == pytest.approx(v0 + 1.0 if s >= 6 else v0)
    last_ppl = orig["val/ppl"][1][-1] * 2.0
    assert r.final_val_ppl == pytest.approx(last_ppl)
    assert r.steps == 12

    out = tmp_path / "rep"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    (row,) = read_csv(out / "summary.csv")
    assert float(row["final_val_ppl_mean"]) == pytest.approx(last_ppl) and row["n_incomplete"] == "1"
    (run_row,) = read_csv(out / "runs.csv")
    assert run_row["status"] == "crashed" and row["n_crashed"] == "1"
    assert "1 run(s) crashed" in (out / "report.md").read_text()
    assert "(1 crashed)" in capsys.readouterr().out


@pytest.mark.slow
def test_seeds_group_into_one_row_with_std(sweep, tmp_path):
    src = summaries(sweep)["smet"]
    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    for d in (a, b):
        shutil.copytree(src["dir"], d, ignore=shutil.ignore_patterns("checkpoints"))
    (b / "config.yaml").write_text((b / "config.yaml").read_text().replace("seed: 1234", "seed: 7"))
    (b / "summary.json").write_text(json.dumps(json.loads((b / "summary.json").read_text()) | {"val_ppl": 100.0}))
    out = tmp_path / "rep"
    assert main([str(a), str(b), str(a), "--out", str(out)]) == 0  # a given twice: counted once
    (row,) = read_csv(out / "summary.csv")
    assert row["n_seeds"] == "2" and row["seeds"] == "1234 7"
    assert float(row["final_val_ppl_mean"]) == pytest.approx((src["val_ppl"] + 100.0) / 2)
    assert float(row["final_val_ppl_std"]) == pytest.approx(abs(src["val_ppl"] - 100.0) / math.sqrt(2))
    # explicit --group-by seed splits them again
    out2 = tmp_path / "rep2"
    assert main([str(a), str(b), "--out", str(out2), "--group-by", "method,seed"]) == 0
    assert len(read_csv(out2 / "summary.csv")) == 2


@pytest.mark.slow
def test_dense_only_skips_sparse_plots_gracefully(sweep, tmp_path):
    out = tmp_path / "rep"
    assert main([str(summaries(sweep)["dense"]["dir"]), "--out", str(out)]) == 0
    assert (out / "loss_curves.png").is_file()
    for name in ("ppl_vs_*.png", "spike_by_method.png", "update_ratio.png"):
        assert not list(out.glob(name))
        assert f"`{name}` not drawn" in (out / "report.md").read_text()


# ----------------------------------------------------------------------------- bad input
def test_missing_path_and_empty_dir_exit_2_naming_the_path(tmp_path, capsys):
    missing = tmp_path / "no_such_runs"
    assert main([str(missing), "--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(missing) in err and err.startswith("smet-compare: error:") and len(err.splitlines()) == 1
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    assert main([str(empty), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(empty) in err and "no runs" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


@pytest.mark.slow
def test_existing_report_dir_refused_without_force(sweep, tmp_path, capsys):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main([str(sweep), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    (out / "update_ratio.png").write_text("stale")
    assert main([str(summaries(sweep)["dense"]["dir"]), "--out", str(out), "--force"]) == 0
    assert (out / "notes.txt").read_text() == "keep me" and (out / "report.html").is_file()
    assert not (out / "update_ratio.png").exists()  # stale figure of an earlier report removed


def test_unknown_group_by_key_exits_2(tmp_path, capsys):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 1\nmodel: {name: tiny}\nsparsity: {method: dense}\n")
    (run / "metrics.csv").write_text("epoch,step,train/loss\n0,0,5.0\n0,1,4.0\n")
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "o"), "--group-by", "method,bogus.key"]) == 2
    assert "bogus.key" in capsys.readouterr().err


def test_metrics_csv_last_occurrence_wins_and_repeated_header(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("epoch,step,train/loss,val/ppl\n0,0,5.0,\n0,1,4.0,\n0,1,,90\n"
                 "epoch,step,train/loss,val/ppl\n0,1,3.5,\n0,1,,80\n0,2,3.0,\n")
    m, dups = parse_metrics_csv(p)
    assert m["train/loss"][0].tolist() == [0, 1, 2] and m["train/loss"][1].tolist() == [5.0, 3.5, 3.0]
    assert m["val/ppl"][0].tolist() == [1] and m["val/ppl"][1].tolist() == [80.0]
    assert dups == 2 and "epoch" not in m


# ----------------------------------------------------------------------------- W&B
def wandb_triple(method="smet", seed=1, val_ppl=50.0):
    config = {  # as the public API returns it, with one raw {"value": ...} wrapper and a flattened key
        "seed": {"value": seed, "desc": None},
        "run_name": f"tiny-{method}-s{seed}",
        "model": {"name": "tiny", "hidden_size": 128},
        "sparsity": {"method": method, "variant": None, "density": 0.25, "update_interval": 4},
        "optimizer": {"lr": 3e-3, "regrowth_warmup_steps": 100, "lr_scaling": "inverse"},
        "trainer.max_steps": 12,
        "_wandb": {"cli_version": "0.31.0"},
    }
    history = [
        {"_step": 0, "trainer/global_step": 1, "train/loss": 6.0, "epoch": 0},
        {"_step": 1, "trainer/global_step": 3, "sparsity/update": 1.0, "sparsity/regrown": 100.0},
        {"_step": 2, "trainer/global_step": 3, "train/loss": 5.5, "epoch": 0},
        {"_step": 3, "trainer/global_step": 4, "sparsity/update_ratio_regrown": 0.01,
         "sparsity/update_ratio_mature": 0.3},
        {"_step": 4, "trainer/global_step": 5, "sparsity/spike": -0.2, "train/loss": 5.2, "val/ppl": 80.0},
        {"_step": 5, "trainer/global_step": 5, "train/loss": 5.25, "val/ppl": None, "media": {"_type": "image"}},
        {"_step": 6, "trainer/global_step": 11, "train/loss": 5.0, "val/ppl": val_ppl + 1},
    ]
    summary = {"val_ppl": val_ppl, "steps": 12, "tokens_per_s": 9000.0, "density": 0.25, "spike_mean": -0.2,
               "val/ppl": val_ppl + 1, "_runtime": 12.3, "static_bytes": {"all": {"total": 2**20},
                                                                           "sparse": {"total": 2**19}}}
    return config, history, summary


def test_wandb_conversion_maps_plain_dicts():
    config, history, summary = wandb_triple()
    r = run_from_wandb(config, history, summary, name="run-a", source="ent/proj/abc123", state="finished")
    assert r.kind == "wandb" and r.name == "run-a" and r.source == "ent/proj/abc123"
    assert r.method == "smet" and r.seed == 1 and r.cfg("trainer.max_steps") == 12 and r.cfg("model.name") == "tiny"
    assert "_wandb" not in r.config
    steps, loss = r.series("train/loss")
    assert steps.tolist() == [1, 3, 5, 11] and loss.tolist() == [6.0, 5.5, 5.25, 5.0]  # step 5: last row wins
    assert r.update_steps == [4]  # logged at row 3 = optimizer step 4
    assert r.update_ratios == ([0.01], [0.3]) and r.spikes == [-0.2]
    assert r.spikes_by_update() == {4: -0.2}
    assert r.complete and r.final_val_ppl == 50.0 and r.best_val_ppl == 50.0 and r.steps == 12
    assert r.tokens_per_s == 9000.0 and r.static_mib("all") == 1.0 and r.static_mib("sparse") == 0.5
    assert "media" not in r.metrics and "_runtime" not in r.metrics
    crashed = run_from_wandb(config, history, summary, state="crashed")
    assert not crashed.complete and crashed.final_val_ppl == 51.0  # last logged val/ppl
    assert run_from_wandb(config, history, {}).complete is False


def test_wandb_runs_make_a_report(tmp_path):
    from smet.cli.compare import make_report

    runs = [run_from_wandb(*wandb_triple(seed=s, val_ppl=p), state="finished") for s, p in ((1, 50.0), (2, 60.0))]
    runs.append(run_from_wandb(*wandb_triple(method="set", val_ppl=70.0), state="finished"))
    res = make_report(runs, tmp_path, title="wb", group_by=None, inputs=["wandb:ent/proj"])
    rows = read_csv(tmp_path / "summary.csv")
    assert [(r["method"], r["n_seeds"], float(r["final_val_ppl_mean"])) for r in rows] == [("set", "1", 70.0),
                                                                                            ("smet", "2", 55.0)]
    assert "loss_curves.png" in dict(res["images"])


def test_wandb_offline_fails_fast_with_clear_message(tmp_path):
    exe = Path(sys.executable).parent / "smet-compare"
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "smet.cli.compare"]
    env = dict(os.environ, WANDB_MODE="offline")
    t0 = time.monotonic()
    res = subprocess.run([*cmd, "--wandb", "my-team/smet", "--out", str(tmp_path / "wb")], capture_output=True,
                         text=True, timeout=30, env=env)
    took = time.monotonic() - t0
    assert res.returncode == 2 and took < 10, (res.returncode, took, res.stderr)
    assert "--wandb" in res.stderr and "offline" in res.stderr and "WANDB_MODE" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "wb").exists()


def test_wandb_unreachable_server_fails_fast(monkeypatch):
    from smet.report.runs import ReportError
    from smet.report.wandb_source import preflight

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    t0 = time.monotonic()
    with pytest.raises(ReportError, match="cannot reach the W&B server 127.0.0.1:9"):
        preflight("my-team/smet")
    assert time.monotonic() - t0 < 10
    with pytest.raises(ReportError, match="ENTITY/PROJECT"):
        preflight("just-a-project")


# ----------------------------------------------------------------------------- grouping
def fake_run(d: Path, seed: int, ppl: float, **opt) -> None:
    """A minimal run directory (config.yaml, metrics.csv, summary.json) of an ablation_reset-like grid."""
    import yaml

    d.mkdir(parents=True)
    cfg = {"seed": seed, "run_name": f"{d.name}", "data": {"name": "embedded", "cache_dir": f"/tmp/{d.name}"},
           "model": {"name": "tiny"}, "trainer": {"max_steps": 4, "progress_bar": "none"},
           "sparsity": {"method": "smet", "variant": None, "density": 0.25, "update_interval": 2},
           "optimizer": {"regrowth_warmup_steps": 100, "lr_scaling": "inverse", "reset_local_step": True,
                         "reset_moments": True} | opt}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "metrics.csv").write_text("epoch,step,train/loss,val/ppl\n0,0,5.0,\n0,1,4.0,\n0,3,3.5,\n0,3,,%r\n" % ppl)
    (d / "summary.json").write_text(json.dumps({"steps": 4, "val_ppl": ppl, "method": "smet"}))


def test_auto_group_by_splits_on_every_other_differing_key(tmp_path, capsys):
    runs = tmp_path / "runs"
    i = 0
    for rls in (True, False):
        for rm in (True, False):
            for seed in (1, 2):
                fake_run(runs / f"j{i}", seed, 100.0 + i, reset_local_step=rls, reset_moments=rm)
                i += 1
    out = tmp_path / "auto"
    assert main([str(runs), "--out", str(out)]) == 0  # cache_dir / run_name differ too: ignored
    rows = read_csv(out / "summary.csv")
    assert len(rows) == 4 and all(r["n_seeds"] == "2" for r in rows)
    assert {(r["reset_local_step"], r["reset_moments"]) for r in rows} == {
        ("true", "true"), ("true", "false"), ("false", "true"), ("false", "false")}
    assert "reset local step" in (out / "summary.md").read_text()
    # explicit keys group exactly by them; the report says what the merged group mixes
    out2 = tmp_path / "explicit"
    assert main([str(runs), "--out", str(out2), "--group-by", "method,density"]) == 0
    (row,) = read_csv(out2 / "summary.csv")
    assert row["n_seeds"] == "8" and float(row["final_val_ppl_mean"]) == pytest.approx(103.5)
    assert "optimizer.reset_local_step, optimizer.reset_moments" in (out2 / "report.md").read_text()


# ----------------------------------------------------------------------------- paired spike vs static
def loss_run(d: Path, method: str, seed: int, losses: dict[int, float], updates=(), density=0.25, k=10,
             ppl=50.0, precision=None) -> None:
    """A run directory as train.py writes it: per-step train/loss (row = optimizer step - 1), a
    sparsity/update row at each update u (row u - 1) and the plain sparsity/spike k steps later."""
    import yaml

    d.mkdir(parents=True)
    n = max(losses)
    cfg = {"seed": seed, "run_name": f"tiny-{method}-s{seed}",
           "model": {"name": "tiny", "hidden_size": 64},
           "data": {"name": "embedded", "seq_len": 32, "batch_size": 4, "cache_dir": f"/tmp/{d.name}"},
           "trainer": {"max_steps": n}, "optimizer": {"lr": 1e-3, "regrowth_warmup_steps": 0, "lr_scaling": "none"},
           "sparsity": {"method": method, "variant": None, "density": density, "update_interval": 20,
                        "spike_window": k}}
    if method == "dense":
        cfg["sparsity"] = {"method": "dense"}
    if precision is not None:
        cfg["trainer"]["precision"] = precision
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = {s - 1: {"train/loss": v} for s, v in losses.items()}
    for u in updates:
        rows[u - 1]["sparsity/update"] = 1.0
        after = [losses[s] for s in range(u + 1, u + k + 1)]
        before = [losses[s] for s in range(u - k + 1, u + 1)]
        rows[u + k - 1]["sparsity/spike"] = sum(after) / k - sum(before) / k
    cols = ["train/loss", "sparsity/update", "sparsity/spike"]
    lines = ["epoch,step," + ",".join(cols)]
    for r in sorted(rows):
        lines.append(f"0,{r}," + ",".join(repr(rows[r][c]) if c in rows[r] else "" for c in cols))
    (d / "metrics.csv").write_text("\n".join(lines) + "\n")
    (d / "summary.json").write_text(json.dumps({"steps": n, "val_ppl": ppl, "method": method}))


def trend(seed: int, n: int = 60) -> dict[int, float]:
    """Falling loss plus batch noise that depends on the seed only (the same batches for every run)."""
    import random

    rng = random.Random(seed)
    return {s: 5.0 - 0.02 * s + rng.uniform(-0.1, 0.1) for s in range(1, n + 1)}


def test_paired_spike_against_static_run_of_the_same_seed(tmp_path):
    """+jump for 3 steps after each update, k = 10: paired spike = 3 * jump / 10 exactly, although
    the plain spike is negative (the falling trend); no static partner -> '-'."""
    runs, updates = tmp_path / "runs", (20, 40)
    jumps = {0: 0.5, 1: 0.4}
    for seed, jump in jumps.items():
        base = trend(seed)
        loss_run(runs / f"static-s{seed}", "static", seed, base)
        bumped = {s: v + (jump if any(u < s <= u + 3 for u in updates) else 0.0) for s, v in base.items()}
        loss_run(runs / f"set-s{seed}", "set", seed, bumped, updates)
        loss_run(runs / f"dense-s{seed}", "dense", seed, base)
    loss_run(runs / "smet-s2", "smet", 2, trend(2), updates)                      # no static run of seed 2
    loss_run(runs / "set-d05-s0", "set", 0, trend(0), updates, density=0.5)     # no static run at d = 0.5

    from smet.report.paired import attach_pairs

    loaded = {Path(r.source).name: r for r in map(load_run_dir, sorted(runs.iterdir()))}
    assert attach_pairs(list(loaded.values())) == 2
    for seed, jump in jumps.items():
        r = loaded[f"set-s{seed}"]
        assert Path(r.paired_with.source).name == f"static-s{seed}"
        assert r.paired_spikes == pytest.approx({20: 3 * jump / 10, 40: 3 * jump / 10}, abs=1e-9)
        assert all(v < 0 for v in r.spikes)  # the plain metric: the trend (-0.2 over 10 steps) dominates
    assert loaded["smet-s2"].paired_spikes is None and loaded["set-d05-s0"].paired_spikes is None

    out = tmp_path / "rep"
    assert main([str(runs), "--out", str(out)]) == 0
    rows = {(r["method"], r["density"]): r for r in read_csv(out / "summary.csv")}
    s = rows[("set", "0.25")]
    expect = [3 * j / 10 for j in jumps.values()]
    assert float(s["paired_spike_mean"]) == pytest.approx(sum(expect) / 2, abs=1e-9)
    assert float(s["paired_spike_std"]) == pytest.approx(abs(expect[0] - expect[1]) / math.sqrt(2), abs=1e-9)
    assert s["n_paired_runs"] == "2" and float(s["spike_mean"]) < 0
    for key in (("set", "0.5"), ("smet", "0.25"), ("dense", "1.0"), ("static", "0.25")):
        assert rows[key]["paired_spike_mean"] == "" and rows[key]["n_paired_runs"] == "0"

    md = (out / "summary.md").read_text()
    header, _, *body = [line for line in md.splitlines() if line.startswith("|")]
    col = [c.strip() for c in header.strip("|").split("|")].index("paired spike vs static")
    cells = {tuple(c.strip() for c in line.strip("|").split("|"))[:3]: line.strip("|").split("|")[col].strip()
             for line in body}
    assert cells[("set", "-", "0.25")] == "+0.1350 ± 0.0212"
    assert cells[("set", "-", "0.5")] == "-" and cells[("smet", "-", "0.25")] == "-"
    assert cells[("dense", "-", "1")] == "-" and cells[("static", "-", "0.25")] == "-"
    per_run = {Path(r["source"]).name: r for r in read_csv(out / "runs.csv")}
    assert float(per_run["set-s1"]["paired_spike_mean"]) == pytest.approx(0.12)
    assert per_run["set-s1"]["paired_static"].endswith("static-s1") and per_run["smet-s2"]["paired_static"] == ""
    report = (out / "report.md").read_text()
    assert "*paired spike vs static*" in report and "set-s0 ↔ static-s0" in report
    assert "](paired_spike_by_method.png)" in report
    w, h = png_size(out / "paired_spike_by_method.png")
    assert w >= 600 and h >= 300


def test_pairing_requires_the_same_precision(tmp_path):
    """A bf16-mixed run and a bf16-true run differ in more than the method: never a pair."""
    from smet.report.paired import attach_pairs

    runs, updates = tmp_path / "runs", (20, 40)
    loss_run(runs / "static-true", "static", 0, trend(0), precision="bf16-true")
    loss_run(runs / "set-mixed", "set", 0, trend(0), updates, precision="bf16-mixed")
    loss_run(runs / "set-true", "set", 0, trend(0), updates, precision="bf16-true")
    loaded = {Path(r.source).name: r for r in map(load_run_dir, sorted(runs.iterdir()))}
    assert attach_pairs(list(loaded.values())) == 1
    assert Path(loaded["set-true"].paired_with.source).name == "static-true"
    assert loaded["set-mixed"].paired_with is None and loaded["set-mixed"].paired_spikes is None


def test_paired_spike_plot_skipped_without_static_runs(tmp_path):
    runs = tmp_path / "runs"
    loss_run(runs / "set-s0", "set", 0, trend(0), (20, 40))
    out = tmp_path / "rep"
    assert main([str(runs), "--out", str(out)]) == 0
    (row,) = read_csv(out / "summary.csv")
    assert row["paired_spike_mean"] == "" and not (out / "paired_spike_by_method.png").exists()
    assert "`paired_spike_by_method.png` not drawn" in (out / "report.md").read_text()
    assert "| - |" in (out / "summary.md").read_text()


def test_effective_lrs_of_every_group():
    """The pairing compares what each param group gets: optimizer.lr x s(d) where the scope applies it."""
    from smet.report.paired import effective_lrs
    from smet.report.runs import Run

    def run(method="smet", lr=1e-3, scaling="inverse", scope="all", density=0.25, allocation="uniform"):
        return Run(name="r", source="r", config={
            "optimizer": {"lr": lr, "lr_scaling": scaling, "lr_scaling_scope": scope},
            "sparsity": {"method": method, "density": density, "allocation": allocation}})

    assert effective_lrs(run()) == (4e-3, 4e-3)
    assert effective_lrs(run(scope="sparse")) == (4e-3, 1e-3)
    assert effective_lrs(run(scaling="inverse_sqrt", scope="all")) == (2e-3, 2e-3)
    assert effective_lrs(run("static", lr=4e-3, scaling="none")) == (4e-3, 4e-3)
    assert effective_lrs(run("static", lr=4e-3, scaling="none", scope="sparse")) == (4e-3, 4e-3)
    assert effective_lrs(run(scope="sparse", allocation="erk"))[1] == 1e-3  # per-layer scales: not a number
    assert effective_lrs(run(scope="sparse", allocation="erk"))[0] != 4e-3
    no_scope = run()
    del no_scope.config["optimizer"]["lr_scaling_scope"]  # what conf/optimizer/adamw.yaml defaults to
    assert effective_lrs(no_scope) == (4e-3, 4e-3)


@pytest.mark.slow
def test_pairing_uses_effective_lrs_of_real_runs(session_cache, tmp_path):
    """Real train.py runs: SMET at optimizer.lr = 1e-3 with 1/d scaling of every parameter (the
    smet preset, d = 0.25) pairs with the static run at 4e-3, not with the static run at 1e-3 that
    only shares optimizer.lr; the blocks-only-scaling variant (sparse 4e-3, dense 1e-3) with neither."""
    import yaml

    from smet.report.paired import attach_pairs, effective_lrs

    points = {"smet-lr1e-3": ("smet", 1e-3), "blocks_only-lr1e-3": ("smet_blocks_only_lr", 1e-3),
              "static-lr1e-3": ("static", 1e-3), "static-lr4e-3": ("static", 4e-3)}
    runs = tmp_path / "runs"
    env = dict(os.environ, SMET_CACHE_DIR=str(session_cache), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    for name, (sparsity, lr) in points.items():
        cmd = [sys.executable, str(REPO / "train.py"), f"sparsity={sparsity}", f"optimizer.lr={lr}",
               "sparsity.density=0.25", "trainer.max_steps=8", "sparsity.update_interval=4",
               "++sparsity.spike_window=2", "trainer.val_every_n_steps=8", *FAST,
               f"hydra.run.dir={runs / name}"]
        res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, f"{name} failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    cfg = yaml.safe_load((runs / "smet-lr1e-3" / "config.yaml").read_text())
    assert cfg["optimizer"]["lr_scaling"] == "inverse" and cfg["optimizer"]["lr_scaling_scope"] == "all"
    loaded = {Path(r.source).name: r for r in map(load_run_dir, sorted(runs.iterdir()))}
    assert effective_lrs(loaded["smet-lr1e-3"]) == (4e-3, 4e-3) == effective_lrs(loaded["static-lr4e-3"])
    assert effective_lrs(loaded["blocks_only-lr1e-3"]) == (4e-3, 1e-3)
    assert attach_pairs(list(loaded.values())) == 1
    smet = loaded["smet-lr1e-3"]
    assert Path(smet.paired_with.source).name == "static-lr4e-3"
    assert smet.paired_spikes is not None and 4 in smet.paired_spikes
    assert loaded["blocks_only-lr1e-3"].paired_with is None
    # what the optimizers really used: train/lr (the first group, the dense weights) step by step
    lr = {k: loaded[k].series("train/lr") for k in ("smet-lr1e-3", "static-lr4e-3", "blocks_only-lr1e-3")}
    assert len(lr["smet-lr1e-3"][1]) >= 3 and 1e-3 < max(lr["static-lr4e-3"][1]) <= 4e-3
    for k in ("static-lr4e-3", "blocks_only-lr1e-3"):
        assert lr[k][0].tolist() == lr["smet-lr1e-3"][0].tolist()
    assert lr["smet-lr1e-3"][1] == pytest.approx(lr["static-lr4e-3"][1], rel=1e-6)
    assert lr["blocks_only-lr1e-3"][1] == pytest.approx(lr["static-lr4e-3"][1] / 4, rel=1e-6)


# ----------------------------------------------------------------------------- the usage loop: sweeps, status
def md_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    header, _, *body = [line for line in path.read_text().splitlines() if line.startswith("|")]
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    return split(header), [split(line) for line in body]


def test_w_ablation_plots_against_w_not_density(tmp_path):
    runs = tmp_path / "runs"
    for i, w in enumerate((0, 10, 100, 1000)):
        for seed in (1, 2):
            fake_run(runs / f"w{w}-s{seed}", seed, 100.0 + i + seed, regrowth_warmup_steps=w)
    out = tmp_path / "rep"
    res_code = main([str(runs), "--out", str(out)])
    assert res_code == 0
    assert (out / "ppl_vs_W.png").is_file() and not (out / "ppl_vs_density.png").exists()
    assert png_size(out / "ppl_vs_W.png")[0] >= 900
    md = (out / "report.md").read_text()
    assert "vs W (optimizer.regrowth_warmup_steps)" in md and "](ppl_vs_W.png)" in md
    rows = read_csv(out / "summary.csv")
    assert [r["W"] for r in rows] == ["0", "10", "100", "1000"] and all(r["n_seeds"] == "2" for r in rows)

    from smet.report.plots import sweep_axes
    from smet.report.table import group_runs

    groups = group_runs([load_run_dir(d) for d in sorted(runs.iterdir())])
    assert [a for a, _ in sweep_axes(groups)] == ["W"]
    assert [g.label for g in groups] == ["smet W=0", "smet W=10", "smet W=100", "smet W=1000"]


def test_lr_and_density_grid_gives_one_figure_per_swept_key(tmp_path):
    import yaml

    runs = tmp_path / "runs"
    for lr in (1e-3, 3e-3):
        for d in (0.25, 0.5):
            fake_run(runs / f"lr{lr}-d{d}", 1, 100.0 + 1000 * lr + d, lr=lr)
            cfg = yaml.safe_load((runs / f"lr{lr}-d{d}" / "config.yaml").read_text())
            cfg["sparsity"]["density"] = d
            (runs / f"lr{lr}-d{d}" / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "rep"
    assert main([str(runs), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("ppl_vs_*.png")) == ["ppl_vs_density.png", "ppl_vs_lr.png"]
    header, body = md_rows(out / "summary.md")
    assert "lr" in header and len(body) == 4


def test_every_differing_key_is_in_table_and_legend(tmp_path):
    """A batch-16 run beside batch-4 runs of other methods: grouping alone would not show it."""
    runs = tmp_path / "runs"
    loss_run(runs / "dense-s0", "dense", 0, trend(0))
    loss_run(runs / "set-s0", "set", 0, trend(0), (20, 40))
    loss_run(runs / "smet-b16", "smet", 0, trend(0), (20, 40))
    cfg = (runs / "smet-b16" / "config.yaml").read_text()
    (runs / "smet-b16" / "config.yaml").write_text(cfg.replace("batch_size: 4", "batch_size: 16"))
    out = tmp_path / "rep"
    assert main([str(runs), "--out", str(out)]) == 0
    header, body = md_rows(out / "summary.md")
    col = header.index("data.batch_size")
    assert {r[0]: r[col] for r in body} == {"dense": "4", "set": "4", "smet": "16"}
    from smet.report.table import group_runs

    labels = [g.label for g in group_runs([load_run_dir(d) for d in sorted(runs.iterdir())])]
    assert labels == ["dense batch_size=4", "set batch_size=4", "smet batch_size=16"]
    assert "`data.batch_size`" in (out / "report.md").read_text()
    # tokens = step x batch x seq: the batch-16 run covers 4x the tokens per step
    r16, r4 = load_run_dir(runs / "smet-b16"), load_run_dir(runs / "set-s0")
    assert r16.tokens_per_step == 16 * 32 and r4.tokens_per_step == 4 * 32


def test_identical_runs_are_one_seed_not_two(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs / "a", 1, 100.0)
    fake_run(runs / "a-again", 1, 100.0)   # same config and seed; other directory / run name
    fake_run(runs / "b", 2, 110.0)
    out = tmp_path / "rep"
    assert main([str(runs), "--out", str(out)]) == 0
    (row,) = read_csv(out / "summary.csv")
    assert row["n_seeds"] == "2" and row["n_duplicates"] == "1" and row["seeds"] == "1 2"
    assert float(row["final_val_ppl_mean"]) == pytest.approx(105.0)
    md = (out / "report.md").read_text()
    assert "not counted as separate seeds" in md and "`a-again` = `a`" in md
    _, body = md_rows(out / "summary.md")
    assert "2 (+1 duplicate not counted)" in body[0]
    dup = [r for r in read_csv(out / "runs.csv") if r["duplicate_of"]]
    assert len(dup) == 1 and dup[0]["source"].endswith("a-again") and dup[0]["duplicate_of"].endswith("/a")
    # the same seed twice alone: one run, no "± 0.00"
    out2 = tmp_path / "rep2"
    assert main([str(runs / "a"), str(runs / "a-again"), "--out", str(out2)]) == 0
    (row,) = read_csv(out2 / "summary.csv")
    assert row["n_seeds"] == "1" and row["final_val_ppl_std"] == ""
    assert "±" not in md_rows(out2 / "summary.md")[1][0][md_rows(out2 / "summary.md")[0].index("final val ppl")]


def test_status_finished_running_crashed(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_run(runs / "done", 1, 100.0)
    fake_run(runs / "live", 2, 100.0)
    fake_run(runs / "dead", 3, 100.0)
    fake_run(runs / "stopped", 4, 100.0)
    (runs / "live" / "summary.json").unlink()
    (runs / "dead" / "summary.json").unlink()
    old = time.time() - 3600
    os.utime(runs / "dead" / "metrics.csv", (old, old))
    (runs / "stopped" / "summary.json").write_text(json.dumps({"steps": 2, "val_ppl": 120.0, "status": "interrupted"}))
    status = {Path(r.source).name: r.status() for r in map(load_run_dir, sorted(runs.iterdir()))}
    assert status == {"done": "finished", "live": "running", "dead": "crashed", "stopped": "interrupted"}
    out = tmp_path / "rep"
    assert main([str(runs), "--out", str(out), "--group-by", "method"]) == 0
    assert "(1 running, 1 interrupted, 1 crashed)" in capsys.readouterr().out
    per_run = {Path(r["source"]).name: r["status"] for r in read_csv(out / "runs.csv")}
    assert per_run == status
    header, body = md_rows(out / "summary.md")
    assert body[0][header.index("status")] == "1 finished, 1 running, 1 interrupted, 1 crashed"
    page = (out / "report.html").read_text()
    assert 'class="status-running"' in page and 'class="status-crashed"' in page
    wb = run_from_wandb(*wandb_triple(), state="running")
    assert wb.status() == "running" and run_from_wandb(*wandb_triple(), state="crashed").status() == "crashed"


def test_baseline_option_and_difference_panel(tmp_path, capsys):
    runs = tmp_path / "runs"
    loss_run(runs / "dense-s0", "dense", 0, trend(0))
    loss_run(runs / "set-s0", "set", 0, {s: v + 0.01 for s, v in trend(0).items()}, (20, 40))
    from smet.cli.compare import find_baseline, make_report
    from smet.report.runs import ReportError
    from smet.report.table import group_runs

    loaded = [load_run_dir(d) for d in sorted(runs.iterdir())]
    groups = group_runs(loaded)
    assert find_baseline(groups, None) == 0 and groups[0].is_dense  # default: the dense group
    assert find_baseline(groups, "set") == 1 and find_baseline(groups, "set-s0") == 1
    assert find_baseline(groups, str(runs / "set-s0")) == 1
    with pytest.raises(ReportError, match="--baseline"):
        find_baseline(groups, "nope")
    out = tmp_path / "rep"
    assert main([str(runs), "--out", str(out), "--baseline", "set"]) == 0
    md = (out / "report.md").read_text()
    assert "baseline of the difference panels: **set**" in md and "](curves_vs_tokens.png)" in md
    assert png_size(out / "curves_vs_tokens.png")[1] >= 900  # two rows: curves, differences
    assert main([str(runs), "--out", str(tmp_path / "rep2"), "--baseline", "nope"]) == 2
    assert "--baseline" in capsys.readouterr().err


def test_many_curves_get_distinct_styles():
    from smet.report.plots import styles
    from smet.report.table import Group

    groups = [Group(keys=("method",), values=("smet",), runs=[run_from_wandb(*wandb_triple(seed=i))])
              for i in range(40)]
    st = styles(groups)
    assert len({(s["color"], s["ls"]) for s in st.values()}) == 40
