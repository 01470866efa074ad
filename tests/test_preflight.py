"""train.py checks its whole command line before Hydra starts: one line naming the key, exit 2,
nothing written (issue: reliability v2, classes 2, 8, 9, 10)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smet.preflight import PreflightError, check_command, check_not_overwriting, conf_keys

REPO = Path(__file__).resolve().parents[1]


def train(tmp_path, *args):
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args, key", [
    (["sparsity.densty=0.5"], "sparsity.densty: unknown key; did you mean sparsity.density"),
    (["logger=tensorboard"], "logger: unknown option 'tensorboard'; choose one of: csv, wandb"),
    (["+experiment=ablation_warmpu"], "experiment: unknown experiment 'ablation_warmpu' (did you mean ablation_warmup"),
    (["sparsity.density=[0.5"], "bad override"),
    (["=5"], "bad override '=5'"),
    (["+sparsity.densty=0.1"], "sparsity.densty: unknown key (no config in conf/ defines it); did you mean "
                               "sparsity.density"),
    (["-m", "+optimizer.lr_sclaing=none,inverse"], "optimizer.lr_sclaing: unknown key"),
    (["-m", "sparsity=smet", "sparsity.density=0.5,1.5"], "task 1 (sparsity=smet sparsity.density=1.5): "
                                                         "sparsity.density: must be in (0, 1], got 1.5"),
    (["-m", "logger=csv,tensorboard"], "task 1 (logger=tensorboard): logger: unknown option"),
    (["model.gradient_checkpointing=true", "model.activation_checkpointing=mlp"],
     "model.activation_checkpointing: 'mlp' contradicts model.gradient_checkpointing=true"),
])
def test_bad_command_lines_get_one_line_and_exit_2_before_anything_is_written(tmp_path, args, key):
    r = train(tmp_path, *args, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smet: error: ") and key in lines[0], r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def _fake_run(d: Path) -> dict[str, bytes]:
    (d / "checkpoints").mkdir(parents=True)
    (d / ".hydra").mkdir()
    files = {"summary.json": json.dumps({"val_ppl": 72.6}).encode(), "metrics.csv": b"step,train/loss\n1,5.0\n",
             "config.yaml": b"seed: 1\n", ".hydra/overrides.yaml": b"- seed=1\n", "checkpoints/last.ckpt": b"x"}
    for name, data in files.items():
        (d / name).write_bytes(data)
    return files


def test_a_fresh_start_into_a_finished_run_is_refused_and_nothing_changes(tmp_path):
    run = tmp_path / "R"
    files = _fake_run(run)
    r = train(tmp_path, f"hydra.run.dir={run}", "trainer.max_steps=5")
    assert r.returncode == 2
    assert r.stderr.strip() == (f"smet: error: hydra.run.dir: {run} already holds a run (summary.json, metrics.csv, "
                                f"checkpoints/); resume it with ckpt_path=auto (or ckpt_path={run}), or start a new "
                                f"run elsewhere (e.g. hydra.run.dir={run}-2)")
    assert {n: (run / n).read_bytes() for n in files} == files  # .hydra/ included: refused before Hydra starts
    assert sorted(p.name for p in run.iterdir()) == sorted([".hydra", "checkpoints", "config.yaml", "metrics.csv",
                                                            "summary.json"])


def test_the_last_run_dir_override_is_the_one_checked(tmp_path):
    run = tmp_path / "R"
    _fake_run(run)
    r = train(tmp_path, f"hydra.run.dir={tmp_path / 'other'}", f"hydra.run.dir={run}", "trainer.max_steps=5")
    assert r.returncode == 2 and "already holds a run" in r.stderr


def test_resuming_the_run_in_its_own_directory_is_allowed(tmp_path):
    run = tmp_path / "R"
    _fake_run(run)
    for ckpt in ("auto", str(run), str(run / "checkpoints" / "last.ckpt")):
        check_not_overwriting(run, ckpt)
    with pytest.raises(PreflightError, match="already holds a run"):
        check_not_overwriting(run, str(tmp_path / "elsewhere.ckpt"))
    with pytest.raises(PreflightError, match="already holds a run"):
        check_not_overwriting(run, None)
    check_not_overwriting(tmp_path / "empty", None)  # nothing there: fine
    (tmp_path / "hydra-only" / ".hydra").mkdir(parents=True)
    check_not_overwriting(tmp_path / "hydra-only", None)  # a dir Hydra made for a run that failed early


def test_a_sweep_into_an_existing_sweep_is_refused_per_job(tmp_path):
    sweep = tmp_path / "S"
    _fake_run(sweep / "1")
    with pytest.raises(PreflightError, match=r"hydra.sweep.dir \(job 1\): .* already holds a run"):
        check_command(["-m", "seed=1,2", f"hydra.sweep.dir={sweep}"])
    check_command(["-m", "seed=1,2", f"hydra.sweep.dir={sweep}", "ckpt_path=auto"])  # resume every job


def test_good_command_lines_pass(tmp_path):
    check_command(["sparsity=smet", "sparsity.density=0.25", "++sparsity.spike_window=2"])
    check_command(["-m", "+experiment=ablation_warmup", "hydra/launcher=slurm"])
    check_command(["+logger.wandb.api_key=abc", "logger=wandb"])  # outside the schema'd groups: allowed
    check_command(["--cfg", "job", "anything.goes=1"])  # Hydra's own flags: left to Hydra


def test_conf_keys_come_from_conf():
    keys = conf_keys(REPO / "conf")
    for k in ("sparsity.density", "optimizer.regrowth_warmup_steps", "model.hidden_size", "trainer.max_steps",
              "sparsity.density_schedule.initial", "data.tokenizer.vocab_size"):
        assert k in keys, k
    assert "sparsity.densty" not in keys


@pytest.mark.parametrize("args, msg", [
    (["trainer.strategy=nonsense"], "trainer.strategy: unknown strategy 'nonsense'"),
    (["sparsity=smet", "sparsity.targets=[nope]"], "sparsity.targets: unknown module name(s) nope"),
    (["model.init_std=-1"], "model.init_std: must be > 0.0"),
    (["model.norm_eps=-1"], "model.norm_eps: must be > 0.0"),
    (["model.rope_theta=0"], "model.rope_theta: must be > 0.0"),
    (["model.activation_checkpointing=full"], "model.activation_checkpointing: unknown value 'full'"),
    (["model.checkpoint_every=0"], "model.checkpoint_every: must be an integer >= 1"),
    (["trainer.cpu_threads=-1"], "trainer.cpu_threads: must be >= 1"),
    (["trainer.cpu_threads=abc"], "trainer.cpu_threads: must be an integer"),
    (["trainer.limit_val_batches=-1"], "trainer.limit_val_batches: must be null, an integer >= 1"),
    (["trainer.deterministic=maybe"], "trainer.deterministic: must be true or false"),
    (["sparsity=smet", "sparsity.update_start=50", "sparsity.update_stop=10"], "sparsity.update_start: 50 is after"),
    (["sparsity=smet", "sparsity.spike_window=0"], "sparsity.spike_window: must be an integer >= 1"),
    (["sparsity=smet", "sparsity.erk_power_scale=-1"], "sparsity.erk_power_scale: must be a number >= 0"),
    (["sparsity.density=0.5"], "sparsity.density: 0.5 has no effect with sparsity=dense"),
    (["sparsity=smet", "sparsity.density=0.00001"], "leaves no active weight in the smallest sparse layer"),
])
def test_values_that_used_to_crash_or_be_ignored(args, msg):
    with pytest.raises(PreflightError) as e:
        check_command(args)
    assert msg in str(e.value)


def test_an_experiment_may_still_sweep_dense_beside_a_sparse_density():
    check_command(["-m", "+experiment=method_compare"])  # sets sparsity.density=0.25, sweeps sparsity=dense,...
