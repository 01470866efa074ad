"""smet-submit and the sbatch templates, without a cluster: grid expansion (same points and order as
Hydra's own multirun), manifest/script writing, one-line errors, and the templates' argument
handling run outside SLURM with a stand-in train.py."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from smet.cli.submit import main as submit_main

W_GRID = ["0", "10", "50", "100", "200"]
TEMPLATES = ["array_cpu.sbatch", "array_gpu.sbatch", "ddp.sbatch"]


def hydra_multirun_jobs(overrides: list[str], sweep_dir: Path) -> list[list[str]]:
    """The jobs `python train.py -m <overrides>` launches, recorded from Hydra's own BasicSweeper
    (Hydra.multirun's steps, with a launcher that records instead of running)."""
    from hydra import initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.core.utils import setup_globals
    from hydra.types import HydraContext, RunMode

    recorded: list[list[str]] = []

    class Recorder:
        def launch(self, job_overrides, initial_job_idx):
            recorded.extend(list(o) for o in job_overrides)
            return []

    setup_globals()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None, job_name="train"):
        hydra = GlobalHydra.instance().hydra
        cfg = hydra.compose_config("train", [*overrides, f"hydra.sweep.dir={sweep_dir}"], run_mode=RunMode.MULTIRUN)
        sweeper = Plugins.instance().instantiate_sweeper(
            config=cfg, hydra_context=HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(cfg)),
            task_function=lambda c: None)
        sweeper.launcher = Recorder()
        sweeper.sweep(arguments=list(cfg.hydra.overrides.task))
    return recorded


def submit(tmp_path, *args, sweep="sweep"):
    sweep_dir = tmp_path / sweep
    rc = submit_main([*args, "--sweep-dir", str(sweep_dir)])
    return rc, sweep_dir


def manifest_lines(sweep_dir: Path) -> list[list[str]]:
    return [shlex.split(line) for line in (sweep_dir / "manifest.txt").read_text().splitlines()]


def test_ablation_warmup_manifest_is_hydras_grid(tmp_path, capsys):
    rc, sweep = submit(tmp_path, "+experiment=ablation_warmup", "--throttle", "2", "--time", "01:30:00")
    assert rc == 0, capsys.readouterr().err
    lines = manifest_lines(sweep)
    assert lines == [[f"optimizer.regrowth_warmup_steps={w}", "seed=1234", "+experiment=ablation_warmup"]
                     for w in W_GRID]
    assert lines == hydra_multirun_jobs(["+experiment=ablation_warmup"], tmp_path / "hydra")
    out = capsys.readouterr().out
    script = sweep / "array_cpu.sbatch"
    assert f"sbatch {script}" in out.splitlines()
    text = script.read_text()
    assert "#SBATCH --array=0-4%2" in text and "#SBATCH --time=01:30:00" in text
    assert f"#SBATCH --output={sweep}/logs/%A_%a.out" in text and (sweep / "logs").is_dir()
    assert "#SBATCH --job-name=smet-ablation_warmup" in text
    assert f"SMET_RENDERED_MANIFEST={sweep}/manifest.txt" in text and f"SMET_RENDERED_REPO={REPO}" in text
    subprocess.run(["bash", "-n", str(script)], check=True)
    info = json.loads((sweep / "submit.json").read_text())
    assert info["n_tasks"] == 5 and info["template"] == "cpu" and info["job_id"] is None
    assert (sweep / "multirun.yaml").is_file()


def test_command_line_sweep_multiplies_the_grid(tmp_path, capsys):
    args = ["+experiment=ablation_warmup", "seed=1,2", "trainer.max_steps=7"]
    rc, sweep = submit(tmp_path, *args)
    assert rc == 0, capsys.readouterr().err
    lines = manifest_lines(sweep)
    assert len(lines) == 10
    # the seed axis keeps its place (after W) and the command line replaces its values
    assert [ln[:2] for ln in lines] == [[f"optimizer.regrowth_warmup_steps={w}", f"seed={s}"]
                                        for w in W_GRID for s in (1, 2)]
    assert all("trainer.max_steps=7" in ln for ln in lines)
    assert lines == hydra_multirun_jobs(args, tmp_path / "hydra")


def test_group_sweep_and_quoting(tmp_path, capsys):
    rc, sweep = submit(tmp_path, "+experiment=method_compare", "run_name='a b,c'")
    assert rc == 0, capsys.readouterr().err
    lines = manifest_lines(sweep)
    assert [ln[0] for ln in lines] == [f"sparsity={m}" for m in ("dense", "static", "set", "rigl", "smet")]
    assert lines == hydra_multirun_jobs(["+experiment=method_compare", "run_name='a b,c'"], tmp_path / "hydra")


@pytest.mark.parametrize("args, message", [
    (["+experiment=no_such_experiment"], "unknown experiment 'no_such_experiment'"),
    (["+experiment=ablation_warmup", "sparsity.density=1.5"], "sparsity.density: must be in (0, 1]"),
    (["+experiment=ablation_warmup", "no_such_key=1"], "no_such_key"),
    (["sparsity=no_such_method"], "sparsity/no_such_method"),
    (["seed=[1,"], "bad override"),
    (["+experiment=ablation_warmup", "hydra/launcher=slurm"], "not supported by smet-submit"),
    (["+experiment=ablation_warmup", "--time", "soon"], "--time"),
    (["+experiment=ablation_warmup", "--template", "gpu", "--gpus", "2"], "--template ddp"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, message):
    rc, sweep = submit(tmp_path, *args)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("smet-submit: error: ") and err.count("\n") == 1 and message in err, err
    assert not sweep.exists()


def test_console_script_bad_experiment(tmp_path):
    exe = Path(sys.executable).parent / "smet-submit"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "smet.cli.submit"]
    res = subprocess.run([*cmd, "+experiment=nope", "--sweep-dir", str(tmp_path / "s")], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.startswith("smet-submit: error: unknown experiment 'nope'"), res.stderr
    assert not (tmp_path / "s").exists()


def test_existing_manifest_is_never_overwritten(tmp_path, capsys):
    rc, sweep = submit(tmp_path, "+experiment=ablation_warmup")
    assert rc == 0
    before = (sweep / "manifest.txt").read_text()
    rc, _ = submit(tmp_path, "+experiment=ablation_reset")
    assert rc == 2 and "exists" in capsys.readouterr().err
    assert (sweep / "manifest.txt").read_text() == before


def test_gpu_and_ddp_rendering(tmp_path, capsys):
    rc, sweep = submit(tmp_path, "+experiment=ablation_warmup", "--template", "gpu", "--partition", "a100",
                       "--sbatch=--account=proj", sweep="gpu")
    assert rc == 0, capsys.readouterr().err
    assert all("trainer=gpu" in ln for ln in manifest_lines(sweep))  # the gpu template's trainer, made explicit
    text = (sweep / "array_gpu.sbatch").read_text()
    assert "#SBATCH --partition=a100" in text and "#SBATCH --gres=gpu:1" in text and "#SBATCH --account=proj" in text
    rc, sweep = submit(tmp_path, "+experiment=model_scaling", "trainer=cpu", "--template", "ddp", "--nodes", "2",
                       "--gpus", "8", sweep="ddp")
    assert rc == 0, capsys.readouterr().err
    assert all("trainer=cpu" in ln and "trainer=gpu" not in ln for ln in manifest_lines(sweep))
    opts = dict(re.findall(r"^#SBATCH --([a-z-]+)=?(\S*)", (sweep / "ddp.sbatch").read_text(), re.M))
    assert opts["nodes"] == "2" and opts["ntasks-per-node"] == "8" and opts["gres"] == "gpu:8"
    assert opts["array"] == "0-1"
    for t in ("gpu/array_gpu.sbatch", "ddp/ddp.sbatch"):
        subprocess.run(["bash", "-n", str(tmp_path / t)], check=True)


# ----------------------------------------------------------------------------- the templates themselves
def test_templates_are_strict_bash_with_shared_bodies():
    texts = {t: (REPO / "slurm" / t).read_text() for t in TEMPLATES}
    for name, text in texts.items():
        subprocess.run(["bash", "-n", str(REPO / "slurm" / name)], check=True)
        assert "\nset -euo pipefail\n" in text
        opts = re.findall(r"^#SBATCH --([a-z-]+)", text, re.M)
        for needed in ("time", "output", "requeue", "signal", "partition"):
            assert needed in opts, (name, needed)
        assert "#SBATCH --signal=SIGUSR1@90" in text and "ckpt_path=auto" in text
    body = {t: texts[t].split("set -euo pipefail\n", 1)[1] for t in ("array_cpu.sbatch", "array_gpu.sbatch")}
    norm = [b.replace("array_gpu", "array_cpu").replace('SMET_DEFAULT_TRAINER="gpu"', 'SMET_DEFAULT_TRAINER=""')
            for b in body.values()]
    norm = [re.sub(r"(SMET_DEFAULT_TRAINER=\S*).*", r"\1", b) for b in norm]
    assert norm[0] == norm[1], "array_cpu.sbatch and array_gpu.sbatch must differ only in their headers"


@pytest.fixture
def fake_repo(tmp_path):
    """A checkout whose train.py only records its arguments (tests the templates without training)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "train.py").write_text(
        "import json, os, sys\n"
        "out = os.environ['FAKE_TRAIN_OUT']\n"
        "with open(out, 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n")
    return repo


def run_template(name, *args, repo, tmp_path, task=None, extra_env=None):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SMET_REPO": str(repo),
           "SMET_PYTHON": sys.executable, "FAKE_TRAIN_OUT": str(tmp_path / "calls.jsonl")}  # nothing else: set -u
    if task is not None:
        env["SMET_TASK_ID"] = str(task)
    env.update(extra_env or {})
    return subprocess.run(["bash", str(REPO / "slurm" / name), *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=60)


def calls(tmp_path) -> list[list[str]]:
    p = tmp_path / "calls.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def test_array_template_runs_the_tasks_line(tmp_path, fake_repo):
    sweep = tmp_path / "my sweep, 1"  # a path that needs Hydra quoting
    sweep.mkdir()
    (sweep / "manifest.txt").write_text("seed=1 +experiment=ablation_warmup\n"
                                        "seed=2 run_name='a b' +experiment=ablation_warmup\n")
    res = run_template("array_cpu.sbatch", str(sweep / "manifest.txt"), "trainer.max_steps=5", repo=fake_repo,
                       tmp_path=tmp_path, task=1)
    assert res.returncode == 0, res.stderr
    (argv,) = calls(tmp_path)
    assert argv == ["seed=2", "run_name=a b", "+experiment=ablation_warmup", "trainer.max_steps=5",
                    f"hydra.run.dir='{sweep}/1'", "ckpt_path=auto"]
    assert "task 1 of 2" in res.stdout
    # the gpu template picks trainer=gpu unless the task chose a trainer
    (tmp_path / "m.txt").write_text("seed=3\ntrainer=cpu seed=4\n")
    assert run_template("array_gpu.sbatch", "m.txt", repo=fake_repo, tmp_path=tmp_path, task=0).returncode == 0
    assert run_template("array_gpu.sbatch", "m.txt", repo=fake_repo, tmp_path=tmp_path, task=1).returncode == 0
    gpu0, gpu1 = calls(tmp_path)[1:]
    assert gpu0[:2] == ["trainer=gpu", "seed=3"] and gpu1[:2] == ["trainer=cpu", "seed=4"]
    assert gpu0[-2:] == [f"hydra.run.dir={tmp_path}/0", "ckpt_path=auto"]


@pytest.mark.parametrize("args, task, message", [
    ([], 0, "no manifest"),
    (["missing.txt"], 0, "manifest not found: missing.txt"),
    (["m.txt"], None, "not an array job but"),
    (["m.txt"], 2, "task 2 out of range"),
])
def test_array_template_errors(tmp_path, fake_repo, args, task, message):
    (tmp_path / "m.txt").write_text("seed=1\nseed=2\n")
    res = run_template("array_cpu.sbatch", *args, repo=fake_repo, tmp_path=tmp_path, task=task)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "unbound variable" not in res.stderr
    assert not calls(tmp_path)


def test_template_needs_a_checkout(tmp_path):
    (tmp_path / "m.txt").write_text("seed=1\n")
    res = run_template("array_cpu.sbatch", "m.txt", repo=tmp_path / "nowhere", tmp_path=tmp_path)
    assert res.returncode == 2 and "no train.py in" in res.stderr and "SMET_REPO" in res.stderr


def test_ddp_template_refuses_to_run_outside_slurm(tmp_path, fake_repo):
    res = run_template("ddp.sbatch", "seed=1", repo=fake_repo, tmp_path=tmp_path)
    assert res.returncode == 2 and "runs under SLURM only" in res.stderr


# ----------------------------------------------------------------------------- setup hook, account/qos, checks
def sbatch_header(script: Path) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([a-z-]+)=?(\S*)", script.read_text(), re.M))


def test_setup_is_rendered_before_python_and_reaches_the_training_command(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SMET_SLURM_SETUP", raising=False)
    setup = "export SMET_PROBE='from setup'; cd ."
    rc, sweep = submit(tmp_path, "+experiment=ablation_warmup", "--setup", setup, "--setup", "export OTHER=2")
    assert rc == 0, capsys.readouterr().err
    assert "environment setup from --setup: export SMET_PROBE='from setup'; cd .; export OTHER=2" in capsys.readouterr().out
    script = sweep / "array_cpu.sbatch"
    lines = script.read_text().splitlines()
    at = lines.index(setup)
    assert lines[at + 1] == "export OTHER=2"
    assert at < min(i for i, ln in enumerate(lines) if ln.startswith("PY=")), "setup must run before Python is found"
    assert not any("SMET_SLURM_SETUP:-" in ln for ln in lines)  # the placeholder is replaced
    subprocess.run(["bash", "-n", str(script)], check=True)
    # run the rendered script (task 3, outside SLURM) against a train.py that records what it sees
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "train.py").write_text("import json, os, sys\n"
                                   "open(os.environ['OUT'], 'w').write(json.dumps([os.environ.get('SMET_PROBE'),"
                                   " os.environ.get('OTHER'), sys.argv[1:]]))\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SMET_REPO": str(repo), "SMET_TASK_ID": "3",
           "OUT": str(tmp_path / "seen.json")}
    res = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr
    probe, other, argv = json.loads((tmp_path / "seen.json").read_text())
    assert probe == "from setup" and other == "2" and argv[0] == "optimizer.regrowth_warmup_steps=100"


def test_failing_setup_stops_the_job(tmp_path, capsys, fake_repo):
    rc, sweep = submit(tmp_path, "+experiment=ablation_warmup", "--setup", "false")
    assert rc == 0, capsys.readouterr().err
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SMET_REPO": str(fake_repo), "SMET_TASK_ID": "0",
           "FAKE_TRAIN_OUT": str(tmp_path / "calls.jsonl")}
    res = subprocess.run(["bash", str(sweep / "array_cpu.sbatch")], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=60)
    assert res.returncode == 2 and "the environment setup failed (exit 1)" in res.stderr, res.stderr
    assert not (tmp_path / "calls.jsonl").exists()


def test_default_setup_activates_the_venv_or_takes_the_env_var(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SMET_SLURM_SETUP", raising=False)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("# fake activate\n")
    monkeypatch.setattr(sys, "prefix", str(venv))
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    rc, sweep = submit(tmp_path, "+experiment=ablation_warmup", sweep="venv")
    assert rc == 0, capsys.readouterr().err
    assert f"\nsource {venv}/bin/activate\n" in (sweep / "array_cpu.sbatch").read_text()
    assert f"environment setup from the virtualenv smet-submit runs from ({venv})" in capsys.readouterr().out

    monkeypatch.setenv("SMET_SLURM_SETUP", "module load cuda/12.4\nsource ~/envs/smet/bin/activate")
    rc, sweep = submit(tmp_path, "+experiment=ablation_warmup", "--template", "gpu", sweep="env")
    assert rc == 0, capsys.readouterr().err
    text = (sweep / "array_gpu.sbatch").read_text()
    assert "\nmodule load cuda/12.4\nsource ~/envs/smet/bin/activate\n" in text and f"{venv}" not in text

    rc, sweep = submit(tmp_path, "+experiment=ablation_warmup", "--setup", "", "--python", "python3", sweep="none")
    assert rc == 0, capsys.readouterr().err
    text = (sweep / "array_cpu.sbatch").read_text()
    assert "\nmodule load" not in text and "\nsource " not in text and "\nSMET_RENDERED_PYTHON=python3\n" in text
    assert "\n:  # no environment setup (smet-submit --setup '')\n" in text

    monkeypatch.setattr(sys, "base_prefix", str(venv))  # not in a virtualenv, no env var: no setup
    monkeypatch.delenv("SMET_SLURM_SETUP")
    rc, sweep = submit(tmp_path, "+experiment=ablation_warmup", sweep="plain")
    assert rc == 0 and "\nsource " not in (sweep / "array_cpu.sbatch").read_text()


def test_template_runs_smet_slurm_setup_from_the_environment(tmp_path, fake_repo):
    (tmp_path / "m.txt").write_text("seed=1\n")
    res = run_template("array_cpu.sbatch", "m.txt", repo=fake_repo, tmp_path=tmp_path,
                       extra_env={"SMET_SLURM_SETUP": "echo setup-ran-in $PWD; unset_var_ok=$NOT_SET"})
    assert res.returncode == 0, res.stderr
    assert f"setup-ran-in {tmp_path}" in res.stdout and len(calls(tmp_path)) == 1
    res = run_template("array_cpu.sbatch", "m.txt", repo=fake_repo, tmp_path=tmp_path,
                       extra_env={"SMET_SLURM_SETUP": "module load no-such-module-here"})
    assert res.returncode == 2 and "the environment setup failed (exit 127)" in res.stderr, res.stderr
    assert len(calls(tmp_path)) == 1


def test_account_and_qos_are_sbatch_header_lines(tmp_path, capsys):
    rc, sweep = submit(tmp_path, "+experiment=ablation_warmup", "--account", "proj42", "--qos", "high",
                       "--partition", "short", "--time", "2-00:30:00", "--sbatch=--constraint=a100",
                       "--sbatch=--exclusive", "--sbatch=--mail-type=END,FAIL")
    assert rc == 0, capsys.readouterr().err
    opts = sbatch_header(sweep / "array_cpu.sbatch")
    assert opts["account"] == "proj42" and opts["qos"] == "high" and opts["partition"] == "short"
    assert opts["time"] == "2-00:30:00" and opts["constraint"] == "a100" and opts["exclusive"] == ""
    assert opts["mail-type"] == "END,FAIL"
    info = json.loads((sweep / "submit.json").read_text())
    assert info["sbatch_options"]["account"] == "proj42" and info["sbatch_options"]["qos"] == "high"


@pytest.mark.parametrize("args, message", [
    (["--sbatch=--accont=x"], "--sbatch: '--accont=x': --accont is not an sbatch option; did you mean --account?"),
    (["--sbatch=--partiton=gpu"], "did you mean --partition?"),
    (["--sbatch=--constrain=a100"], "did you mean --constraint?"),
    (["--sbatch=--no-such-thing-at-all=1"], "--no-such-thing-at-all is not an sbatch option"),
    (["--sbatch=--account"], "--account needs a value"),
    (["--sbatch=--requeue=yes"], "--requeue takes no value"),
    (["--sbatch=--array=0-3"], "sets --array itself"),
    (["--sbatch=--wrap=hostname"], "replaces the script"),
    (["--sbatch=--time=99:99"], "--time: '99:99'"),
    (["--account", "a", "--sbatch=--account=b"], "--account is given as well"),
    (["--time", "99:99"], "--time: '99:99' is not a SLURM time limit"),
    (["--time", "1-24:00:00"], "--time: '1-24:00:00'"),
    (["--time", "10:61:00"], "--time"),
    (["--mem", "16 GB"], "--mem: '16 GB'"),
    (["--setup", "if true; then echo"], "--setup: not valid bash"),
])
def test_bad_options_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, args, message):
    rc, sweep = submit(tmp_path, "+experiment=ablation_warmup", *args)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("smet-submit: error: ") and err.count("\n") == 1 and message in err, err
    assert not sweep.exists()


def test_parse_error_exit_code(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        submit_main(["+experiment=ablation_warmup", "--dry-run", "--submit", "--sweep-dir", str(tmp_path / "s")])
    assert e.value.code == 2 and not (tmp_path / "s").exists()


@pytest.mark.parametrize("value", ["30", "30:00", "04:00:00", "48:00:00", "1-12", "1-12:30", "7-23:59:59",
                                   "UNLIMITED", "infinite"])
def test_valid_times_are_accepted(value):
    from smet.slurm.render import check_time

    assert check_time(value) == value


def test_dry_run_writes_nothing_and_prints_script_and_tasks(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    rc = submit_main(["+experiment=ablation_warmup", "--account", "proj", "--setup", "module load cuda", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no multirun/<date>/<time>
    assert "dry run: nothing written" in out and "#!/bin/bash" in out and "#SBATCH --account=proj" in out
    assert "\nmodule load cuda\n" in out and "#SBATCH --array=0-4" in out
    assert "task 4: optimizer.regrowth_warmup_steps=200 seed=1234 +experiment=ablation_warmup" in out
    assert "(dry run: not created)" in out and "\nsbatch " not in out
    # with an explicit --sweep-dir too
    rc, sweep = submit(tmp_path, "+experiment=ablation_warmup", "--dry-run")
    assert rc == 0 and not sweep.exists() and f"{sweep}/array_cpu.sbatch" in capsys.readouterr().out


def test_submit_without_sbatch_on_path_exits_2_and_writes_nothing(tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with bash and python but no sbatch
    bin_dir.mkdir()
    for tool in ("bash", "env"):
        os.symlink(subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True,
                                  check=True).stdout.strip(), bin_dir / tool)
    env = dict(os.environ, PATH=str(bin_dir))
    res = subprocess.run([sys.executable, "-m", "smet.cli.submit", "+experiment=ablation_warmup", "--submit",
                          "--sweep-dir", str(tmp_path / "s")], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr == ("smet-submit: error: --submit: sbatch not found on PATH (run on a SLURM login node, "
                          "or drop --submit and copy the sweep dir there)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]


def test_sbatch_option_table_covers_the_templates_and_local_sbatch():
    from smet.slurm.options import SBATCH_LONG_OPTIONS, installed_sbatch_options

    for t in TEMPLATES:
        for name in re.findall(r"^#SBATCH --([a-z-]+)", (REPO / "slurm" / t).read_text(), re.M):
            assert name in SBATCH_LONG_OPTIONS, (t, name)
    local = installed_sbatch_options()  # empty without sbatch; else every --help name is in the table
    assert not local or local - {"help", "usage", "version"} <= SBATCH_LONG_OPTIONS, local - SBATCH_LONG_OPTIONS
