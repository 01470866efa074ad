"""The SLURM templates, smet-submit and Hydra's submitit launcher against a real one-node SLURM
cluster (scripts/slurm-local.sh; brought up for the session when it is not already up, and taken
down again at the end). Skipped, with the reason, when SLURM is not installed here; `.ci/run`
installs it, so in CI these run."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import FAST, REPO

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SCRIPT = REPO / "scripts" / "slurm-local.sh"
ARRAY_CPU = REPO / "slurm" / "array_cpu.sbatch"
NEEDED = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "slurmctld", "slurmd", "munged")
MARKER = "# written by smet scripts/slurm-local.sh"
TINY = (*FAST, "trainer.max_steps=4", "trainer.val_every_n_steps=4")


def _which(binary: str) -> str | None:
    return shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin:/usr/local/sbin")


@pytest.fixture(scope="session")
def slurm_cluster():
    missing = [b for b in NEEDED if not _which(b)]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} missing): scripts/slurm-local.sh install")
    conf = Path("/etc/slurm/slurm.conf")
    if conf.exists() and MARKER not in conf.read_text(errors="replace"):
        pytest.skip(f"{conf} belongs to another SLURM setup, not to scripts/slurm-local.sh")
    status = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True, timeout=60)
    started = False
    if status.returncode != 0:
        if os.geteuid() != 0:
            pytest.skip("the local SLURM cluster is down and starting it needs root (scripts/slurm-local.sh up)")
        up = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True, timeout=180)
        if up.returncode != 0:
            pytest.fail(f"scripts/slurm-local.sh up failed:\n{up.stdout}\n{up.stderr}")
        started = True
    yield
    if started:
        subprocess.run(["bash", str(SCRIPT), "down"], capture_output=True, text=True, timeout=180)


@pytest.fixture
def job_env(session_cache):
    return dict(os.environ, SMET_CACHE_DIR=str(session_cache), SMET_PYTHON=sys.executable, SMET_REPO=str(REPO),
                PYTHONUNBUFFERED="1")


def sbatch(*args: str, env: dict, cwd: Path) -> str:
    res = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, env=env, cwd=cwd,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().split(";")[0]


def active(job: str) -> bool:
    res = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], capture_output=True, text=True, timeout=30)
    return bool(res.stdout.strip())


def wait_until(predicate, timeout: float, what: str, jobs=(), logs=()) -> None:
    """Poll every 0.2 s; on time-out cancel `jobs` and fail with the tails of `logs`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            for job in jobs:
                subprocess.run(["scancel", job], timeout=30)
            tails = "\n".join(f"--- {p}\n{Path(p).read_text()[-3000:]}" for p in logs if Path(p).exists())
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n{tails}")
        time.sleep(0.2)


def wait_done(job: str, timeout: float, logs=()) -> None:
    wait_until(lambda: not active(job), timeout, f"job {job} to finish", jobs=[job], logs=logs)


def job_states(job: str) -> dict[str, tuple[str, str]]:
    """{"<job>" or "<job>_<task>": (JobState, ExitCode)} from `scontrol show job` (no accounting needed)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
    states = {}
    for line in out.splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        key = f"{f['ArrayJobId']}_{f['ArrayTaskId']}" if "ArrayTaskId" in f else f["JobId"]
        states[key] = (f["JobState"], f["ExitCode"])
    return states


def run_config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# ----------------------------------------------------------------------------- job arrays
def test_job_arrays_run_each_sweep_point(slurm_cluster, job_env, tmp_path):
    # (1) smet-submit renders the template for an experiment's grid and submits it
    sweep = tmp_path / "submitted"
    res = subprocess.run(
        [sys.executable, "-m", "smet.cli.submit", "+experiment=ablation_warmup", "optimizer.regrowth_warmup_steps=0,10",
         "seed=7", *TINY, "--sweep-dir", str(sweep), "--cpus-per-task", "1", "--mem", "2G", "--time", "00:10:00",
         "--throttle", "2", "--account", "proj", "--qos", "normal",
         "--setup", 'export SMET_SETUP_PROBE="probe-$SLURM_ARRAY_TASK_ID"; echo "[probe] $SMET_SETUP_PROBE"',
         "--setup", f"source {shlex.quote(str(Path(sys.prefix) / 'bin' / 'activate'))}", "--submit"],
        capture_output=True, text=True, env=job_env, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    job1 = re.search(r"^Submitted batch job (\d+)$", res.stdout, re.M).group(1)
    # (2) the template used directly from the checkout (no SMET_REPO: found as the submission dir),
    #     manifest path and extra overrides on the sbatch line
    direct = tmp_path / "direct"
    direct.mkdir()
    (direct / "manifest.txt").write_text("seed=11\nseed=12 sparsity=smet sparsity.density=0.5\n")
    env2 = {k: v for k, v in job_env.items() if k != "SMET_REPO"}
    job2 = sbatch("--array=0-1%2", "--cpus-per-task=1", "--mem=2G", f"--output={direct}/%A_%a.out",
                  "slurm/array_cpu.sbatch", str(direct / "manifest.txt"), *TINY, "trainer.max_steps=3",
                  env=env2, cwd=REPO)
    # (3) a task whose manifest is missing fails at once with a clear message
    job3 = sbatch("--array=0", f"--output={tmp_path}/nomanifest_%A_%a.out", str(ARRAY_CPU),
                  str(tmp_path / "missing.txt"), env=job_env, cwd=tmp_path)

    logs = [*sweep.glob("logs/*.out"), *direct.glob("*.out")]
    for job in (job1, job2, job3):
        wait_done(job, 240, logs=logs)

    assert job_states(job1) == {f"{job1}_0": ("COMPLETED", "0:0"), f"{job1}_1": ("COMPLETED", "0:0")}
    for i, w in enumerate((0, 10)):
        run = sweep / str(i)
        assert summary(run)["steps"] == 4
        cfg = run_config(run)
        assert cfg["optimizer"]["regrowth_warmup_steps"] == w and cfg["seed"] == 7
        assert cfg["experiment_name"] == "ablation_warmup" and cfg["sparsity"]["method"] == "smet"
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        assert f"optimizer.regrowth_warmup_steps={w}" in overrides and "ckpt_path=auto" in overrides
        log = (sweep / "logs" / f"{job1}_{i}.out").read_text()
        assert f"task {i} of 2" in log
        assert f"[probe] probe-{i}\n" in log, log[-3000:]  # the --setup commands ran in the job, per task
    assert json.loads((sweep / "submit.json").read_text())["job_id"] == job1
    header = (sweep / "array_cpu.sbatch").read_text()
    assert "#SBATCH --account=proj\n" in header and "#SBATCH --qos=normal\n" in header

    assert job_states(job2) == {f"{job2}_0": ("COMPLETED", "0:0"), f"{job2}_1": ("COMPLETED", "0:0")}
    assert summary(direct / "0")["steps"] == 3 and run_config(direct / "0")["seed"] == 11
    cfg = run_config(direct / "1")
    assert cfg["seed"] == 12 and cfg["sparsity"]["method"] == "smet" and cfg["sparsity"]["density"] == 0.5

    assert job_states(job3)[f"{job3}_0"] == ("FAILED", "2:0")
    assert "manifest not found" in (tmp_path / f"nomanifest_{job3}_0.out").read_text()


# ----------------------------------------------------------------------------- Hydra's submitit launcher
def test_hydra_multirun_through_submitit_launcher(slurm_cluster, job_env, tmp_path):
    sweep = tmp_path / "multirun"
    cmd = [sys.executable, str(REPO / "train.py"), "-m", "+experiment=ablation_warmup",
           "optimizer.regrowth_warmup_steps=0,10", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10", "ckpt_path=auto", *FAST,
           "trainer.max_steps=3", "trainer.val_every_n_steps=3"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=job_env, cwd=tmp_path, timeout=240)
    except subprocess.TimeoutExpired:  # submitit waits for results forever when a job dies early (no sacct)
        for d in (sweep / ".submitit").glob("*_*"):
            if re.fullmatch(r"\d+_\d+", d.name):
                subprocess.run(["scancel", d.name.split("_")[0]], timeout=30)
        pytest.fail("train.py -m hydra/launcher=slurm did not finish in 240 s")
    assert res.returncode == 0, res.stderr[-5000:]
    task_dirs = [d.name for d in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", d.name)]
    assert len(task_dirs) == 2 and len({d.split("_")[0] for d in task_dirs}) == 1, task_dirs  # one job array
    for i, w in enumerate((0, 10)):
        assert summary(sweep / str(i))["steps"] == 3
        assert run_config(sweep / str(i))["optimizer"]["regrowth_warmup_steps"] == w
    (script,) = (sweep / ".submitit").glob("*/*_submission.sh")
    text = script.read_text()
    assert "#SBATCH --partition=cpu" in text and "#SBATCH --job-name=smet-ablation_warmup" in text


# ----------------------------------------------------------------------------- requeue and resume
REQUEUE_STEPS = 100


@pytest.fixture(scope="module")
def interrupted_runs(slurm_cluster, session_cache, tmp_path_factory):
    """Two 100-step runs (checkpoint every 10 steps) from the CPU array template, submitted together;
    once each has a checkpoint, one is requeued with `scontrol requeue`, the other gets SIGUSR1
    (what `--signal=SIGUSR1@90` sends before the time limit)."""
    base = tmp_path_factory.mktemp("requeue")
    env = dict(os.environ, SMET_CACHE_DIR=str(session_cache), SMET_PYTHON=sys.executable, SMET_REPO=str(REPO))
    line = " ".join([*FAST, f"trainer.max_steps={REQUEUE_STEPS}", "trainer.checkpoint_every_n_steps=10",
                     "trainer.val_every_n_steps=1000", "trainer.cpu_threads=1"])
    runs = {}
    for kind in ("scontrol", "usr1"):
        d = base / kind
        d.mkdir()
        (d / "manifest.txt").write_text(line + "\n")
        job = sbatch("--array=0", "--cpus-per-task=1", "--time=00:10:00", f"--output={d}/%A_%a.out", str(ARRAY_CPU),
                     str(d / "manifest.txt"), env=env, cwd=base)
        runs[kind] = (job, d / "0", d / f"{job}_0.out")
    for kind, (job, run, log) in runs.items():
        wait_until(lambda: (run / "checkpoints" / "last.ckpt").is_file(), 180, f"the first checkpoint of {run}",
                   jobs=[job], logs=[log])
        if kind == "scontrol":
            subprocess.run(["scontrol", "requeue", f"{job}_0"], check=True, timeout=30)
        else:
            subprocess.run(["scancel", "--signal=USR1", f"{job}_0"], check=True, timeout=30)
    for job, run, log in runs.values():
        wait_done(job, 240, logs=[log, run / "train.log"])
    return runs


def _check_resumed(job: str, run: Path, log: Path, ckpt: Path) -> str:
    text = log.read_text()
    assert job_states(job) == {f"{job}_0": ("COMPLETED", "0:0")}, text[-3000:]
    assert "restart 0," in text and "restart 1," in text, text[-3000:]  # the same task ran twice
    # the newest checkpoint: the one named, or the one smet writes of the current step when SLURM's
    # requeue sends SIGTERM (smet.lightning.interrupt), whichever is newer
    # (a periodic checkpoint written between the signal and the process's end is newer still)
    resumed = re.findall(r"resuming from (\S+) \(step (\d+)\)", text)
    assert resumed, text[-3000:]
    path, step = resumed[0][0], int(resumed[0][1])
    assert path in (str(ckpt), str(run / "checkpoints" / "last.ckpt")) or \
        re.search(r"/checkpoints/interrupted-step\d{7}\.ckpt$", path), text[-3000:]
    if path != str(ckpt) and ckpt.name.startswith("hpc_ckpt"):  # not the hpc one: then one at least as far along
        import torch

        assert step >= torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"], (path, step)
    assert summary(run)["steps"] == REQUEUE_STEPS  # and finished the requested steps
    with open(run / "metrics.csv") as f:
        steps = [line.split(",") for line in f]
    col = steps[0].index("step")
    assert [r[col] for r in steps[1:]].count("0") <= 1, "the requeued run restarted from step 0"
    return text


def test_scontrol_requeue_resumes_from_last_checkpoint(interrupted_runs):
    job, run, log = interrupted_runs["scontrol"]
    text = _check_resumed(job, run, log, run / "checkpoints" / "last.ckpt")
    assert "DUE TO JOB REQUEUE" in text


def test_sigusr1_saves_hpc_checkpoint_requeues_and_resumes(interrupted_runs):
    import torch

    job, run, log = interrupted_runs["usr1"]
    hpc = run / "hpc_ckpt_1.ckpt"
    text = _check_resumed(job, run, log, hpc)
    assert f"Requeued SLURM job: {job}_0" in text  # Lightning's SIGUSR1 handler: checkpoint, then scontrol requeue
    step = torch.load(hpc, map_location="cpu", weights_only=False)["global_step"]
    assert 10 <= step < REQUEUE_STEPS  # saved mid-run, at the signal


# ----------------------------------------------------------------------------- GPU / DDP templates
def test_gpu_and_ddp_templates(slurm_cluster, job_env, tmp_path):
    # the templates as they are (fake GPUs on the local node): accepted by the scheduler
    for tpl in ("array_gpu.sbatch", "ddp.sbatch"):
        res = subprocess.run(["sbatch", "--test-only", "--array=0-1", str(REPO / "slurm" / tpl), "x.txt"],
                             capture_output=True, text=True, env=job_env, cwd=tmp_path, timeout=60)
        assert res.returncode == 0 and "to start at" in res.stderr, (tpl, res.stderr)
    # smet-submit --template ddp renders a 2-GPU-per-node script the scheduler accepts
    sweep = tmp_path / "ddp"
    res = subprocess.run([sys.executable, "-m", "smet.cli.submit", "+experiment=ablation_warmup", "--template", "ddp",
                          "--gpus", "2", "--nodes", "1", "--cpus-per-task", "1", "--mem", "4G", "--sweep-dir",
                          str(sweep)], capture_output=True, text=True, env=job_env, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    res = subprocess.run(["sbatch", "--test-only", str(sweep / "ddp.sbatch")], capture_output=True, text=True,
                         env=job_env, cwd=tmp_path, timeout=60)
    assert res.returncode == 0 and "to start at" in res.stderr, res.stderr

    # a real DDP run: 1 node x 2 tasks on CPU (gloo), Lightning's SLURM environment
    job = sbatch("--partition=cpu", "--ntasks-per-node=2", "--cpus-per-task=1", "--gres=none", "--mem=4G",
                 "--time=00:10:00", f"--output={tmp_path}/ddp_%j.out", str(REPO / "slurm" / "ddp.sbatch"),
                 "trainer=cpu", *TINY, env=dict(job_env, SMET_RUN_DIR=str(tmp_path / "ddp_run")), cwd=tmp_path)
    log = tmp_path / f"ddp_{job}.out"
    wait_done(job, 240, logs=[log])
    text = log.read_text()
    assert job_states(job) == {job: ("COMPLETED", "0:0")}, text[-3000:]
    assert "1 node(s) x 2 task(s)" in text and "MEMBER: 2/2" in text
    assert summary(tmp_path / "ddp_run")["steps"] == 4
    overrides = yaml.safe_load((tmp_path / "ddp_run" / ".hydra" / "overrides.yaml").read_text())
    assert {"trainer.devices=2", "trainer.num_nodes=1", "trainer.strategy=ddp"} <= set(overrides)


@pytest.mark.skipif(not os.environ.get("SMET_SLURM_LONG"),
                    reason="1-2 min: the real `--signal=SIGUSR1@50` timer under a 1-minute limit (SMET_SLURM_LONG=1)")
def test_time_limit_signal_requeues_until_done(slurm_cluster, job_env, tmp_path):
    """SLURM itself sends SIGUSR1 50 s before the 1-minute limit (its timer runs every few tens of
    seconds): each time Lightning saves hpc_ckpt_<n>.ckpt and requeues, and the task goes on from it."""
    steps = 600
    (tmp_path / "manifest.txt").write_text(" ".join([*FAST, f"trainer.max_steps={steps}", "trainer.cpu_threads=1",
                                                     "trainer.checkpoint_every_n_steps=100",
                                                     "trainer.val_every_n_steps=10000"]) + "\n")
    job = sbatch("--array=0", "--time=1", "--signal=SIGUSR1@50", "--cpus-per-task=1", f"--output={tmp_path}/%A_%a.out",
                 str(ARRAY_CPU), str(tmp_path / "manifest.txt"), env=job_env, cwd=tmp_path)
    log = tmp_path / f"{job}_0.out"
    wait_done(job, 400, logs=[log])
    text = log.read_text()
    assert job_states(job) == {f"{job}_0": ("COMPLETED", "0:0")}, text[-3000:]
    assert "restart 1," in text and f"resuming from {tmp_path}/0/hpc_ckpt_1.ckpt" in text, text[-3000:]
    assert summary(tmp_path / "0")["steps"] == steps
