"""Console lines (plain progress off a TTY, train.log), run names from swept overrides, W&B across
multirun jobs, the end-of-multirun table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import FAST, REPO

# FAST without progress_bar=none: the default (rich) must fall back to plain lines off a TTY
PLAIN = tuple(o for o in FAST if not o.startswith("trainer.progress_bar"))


# ------------------------------------------------------------------ unit
def test_run_name_from_swept_overrides():
    from smet.run_naming import build_run_name, sweep_keys, swept_tags, swept_values

    keys = sweep_keys(["optimizer.regrowth_warmup_steps=10,20", "seed=1234", "+experiment=ablation_warmup",
                       "trainer.max_steps=30", "optimizer.lr=choice(1e-3,3e-3)", "sparsity=smet,set", "-m"])
    assert keys == ["optimizer.regrowth_warmup_steps", "optimizer.lr", "sparsity"]
    swept = swept_values(keys, ["+experiment=ablation_warmup", "optimizer.regrowth_warmup_steps=10",
                                "optimizer.lr=3e-3", "sparsity=smet", "seed=1234"])
    resolved = {"model": {"name": "tiny"}, "sparsity": {"method": "smet", "density": 0.25}, "seed": 1234}
    assert build_run_name(resolved, swept) == "tiny-smet-d0.25-W10-lr3e-3-s1234"
    assert build_run_name(resolved, [("sparsity.update_interval", "5"), ("trainer.foo", "x")]) == \
        "tiny-smet-d0.25-dT5-foo=x-s1234"
    assert build_run_name({"model": {"name": "60m"}, "sparsity": {"method": "dense"}, "seed": 7}) == "60m-dense-s7"
    assert swept_tags(swept)[0] == "optimizer.regrowth_warmup_steps=10"


def test_wandb_mode_accepts_dryrun():
    from smet.cli.train import wandb_mode
    from smet.errors import SmetConfigError

    assert wandb_mode("dryrun") == "offline" and wandb_mode(None) == "offline" and wandb_mode("online") == "online"
    with pytest.raises(SmetConfigError, match="logger.wandb.mode"):
        wandb_mode("bogus")


def test_sweep_table_shows_failed_and_missing_jobs(tmp_path):
    from smet.sweep_summary import collect, render

    for n, ovs, summary in [(0, ["sparsity.density=0.25"], {"run_name": "a", "steps": 3, "val_ppl": 12.5}),
                            (1, ["sparsity.density=1.5"], {"status": "failed", "error": "smet: error: bad"}),
                            (2, ["sparsity.density=0.5"], None)]:
        d = tmp_path / str(n)
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(ovs))
        if summary:
            (d / "summary.json").write_text(json.dumps(summary))
    keys, rows = collect(tmp_path, ["sparsity.density=0.25,1.5,0.5"])
    assert keys == ["sparsity.density"]
    assert [r["status"] for r in rows] == ["ok", "failed", "missing"]
    text = render(tmp_path, keys, rows)
    assert "12.50" in text and "failed" in text and "missing" in text
    assert f"smet-compare {tmp_path} --out {tmp_path / 'report'}" in text


# ------------------------------------------------------------------ end to end
def _multirun(tmp_path, session_cache, *overrides, env=None, timeout=240):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(REPO / "train.py"), "-m", f"hydra.sweep.dir={sweep}", *overrides]
    e = dict(os.environ, SMET_CACHE_DIR=str(session_cache), PYTHONUNBUFFERED="1", **(env or {}))
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout, env=e)
    res.sweep = sweep
    return res


@pytest.mark.slow
def test_plain_progress_lines_off_a_tty_and_in_train_log(run_train):
    res = run_train(*PLAIN, "sparsity=smet", "sparsity.density=0.25", "sparsity.update_interval=3",
                    "trainer.max_steps=6", "trainer.val_every_n_steps=6")
    out = res.stdout
    for line in ("step 2/6  loss ", "step 6/6  loss ", "validation at step 6: loss ", "topology update 1 at step 3"):
        assert line in out, out[-3000:]
    assert "tok/s  ETA " in out and "lr " in out
    assert "model tiny: smet d=0.25, " in out and "active in sparse layers" in out and "MFLOPs/token" in out
    assert "FLOPs" not in out.replace("MFLOPs", "")  # no Lightning model summary table
    assert "ready: {" not in out and "data embedded (embedded): " in out  # one human data line
    assert f"smet-export {res.out_dir} --out {res.out_dir / 'export'}" in out
    assert f"smet-generate {res.out_dir} --prompt " in out
    log = (res.out_dir / "train.log").read_text()
    for line in ("step 4/6  loss ", "validation at step 6", "topology update 1", "Training finished",
                 "final validation perplexity", "smet-export "):
        assert line in log, log[-3000:]
    s = json.loads((res.out_dir / "summary.json").read_text())
    cfg = yaml.safe_load((res.out_dir / "config.yaml").read_text())
    assert s["run_name"] == cfg["run_name"] == "tiny-smet-d0.25-s1234"


@pytest.mark.slow
def test_wandb_offline_multirun_one_run_per_job(tmp_path, session_cache):
    from wandb_records import records

    # WANDB_MODE=dryrun (what Lightning's offline logger exports) must work, for every job
    res = _multirun(tmp_path, session_cache, *FAST, "trainer.max_steps=3", "trainer.val_every_n_steps=3",
                    "logger=wandb", "sparsity=smet", "sparsity.density=0.25", "optimizer.regrowth_warmup_steps=10,20",
                    env={"WANDB_MODE": "dryrun"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    names = []
    for job, w in (("0", 10), ("1", 20)):
        d = res.sweep / job
        name = f"tiny-smet-d0.25-W{w}-s1234"
        assert json.loads((d / "summary.json").read_text())["run_name"] == name
        assert yaml.safe_load((d / "config.yaml").read_text())["run_name"] == name
        runs = list((d / "wandb").glob("offline-run-*/*.wandb"))
        assert len(runs) == 1, runs
        recs = records(runs[0])
        run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
        assert run.display_name == name
        assert run.run_group == f"sweep-{tmp_path.name}_sweep"  # no experiment_name: the sweep id
        assert f"optimizer.regrowth_warmup_steps={w}" in run.tags and "method=smet" in run.tags
        config_keys = {u.key for u in run.config.update}
        assert {"model", "sparsity", "optimizer", "trainer"} <= config_keys and "cfg" not in config_keys
        assert not [r for r in recs if r.WhichOneof("record_type") == "config"]  # config logged once
        summary = {u.key or "/".join(u.nested_key) for r in recs if r.WhichOneof("record_type") == "summary"
                   for u in r.summary.update}
        history = {i.key or "/".join(i.nested_key) for r in recs if r.WhichOneof("record_type") == "history"
                   for i in r.history.item}
        assert "val/ppl" in summary and "val_ppl" not in summary and "tokens_per_s" in summary
        assert {"train/loss", "train/lr", "val/ppl"} <= history
        names.append(run.display_name)
    assert len(set(names)) == 2
    assert "Run history" not in res.stdout + res.stderr and "Run summary" not in res.stdout + res.stderr
    # the end-of-multirun table
    assert "Sweep " in res.stdout and "2 jobs, 2 ok" in res.stdout
    assert f"smet-compare {res.sweep} --out {res.sweep / 'report'}" in res.stdout
    table = (res.sweep / "sweep_summary.txt").read_text()
    assert "tiny-smet-d0.25-W10-s1234" in table and "tiny-smet-d0.25-W20-s1234" in table


@pytest.mark.slow
def test_multirun_with_a_failed_job_reports_it_and_exits_nonzero(tmp_path, session_cache):
    # a failure only the run itself finds (an empty corpus file passes the up-front checks)
    good, empty = tmp_path / "good.txt", tmp_path / "empty.txt"
    good.write_text("\n\n".join((REPO / "docs" / p).read_text() for p in sorted(os.listdir(REPO / "docs"))
                                if p.endswith(".md")))
    empty.write_text("")
    res = _multirun(tmp_path, session_cache, *FAST, "trainer.max_steps=2", "trainer.val_every_n_steps=2",
                    "data=local_files", f"data.path={good},{empty}", "data.seq_len=64", "data.batch_size=8",
                    "data.tokenizer.vocab_size=512")
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    assert "the corpus is empty" in res.stderr and "Traceback" not in res.stderr
    assert "tiny-dense-path=good.txt-s1234" in res.stdout
    assert json.loads((res.sweep / "1" / "summary.json").read_text())["status"] == "failed"
    lines = [ln for ln in res.stdout.splitlines() if ln.strip().startswith(("0 ", "1 "))]
    assert len(lines) == 2 and lines[0].rstrip().endswith("ok") and lines[1].rstrip().endswith("failed"), lines
    assert "2 jobs, 1 ok" in res.stdout
