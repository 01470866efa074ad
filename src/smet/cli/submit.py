"""``smet-submit``: an experiment's Hydra sweep grid as a SLURM job array.

    smet-submit +experiment=ablation_warmup [hydra overrides...] [--template cpu|gpu|ddp]
                [--sweep-dir DIR] [--throttle K] [--time HH:MM:SS] [--partition P] [--account A]
                [--qos Q] [--gpus N] [--nodes N] [--cpus-per-task N] [--mem M] [--job-name NAME]
                [--setup 'module load cuda; source venv/bin/activate'] [--python PY]
                [--sbatch=--opt=value ...] [--dry-run | --submit]

Composes ``conf/train.yaml`` with the overrides (Hydra's compose machinery, multirun mode),
expands ``hydra.sweeper.params`` plus command-line sweeps (``seed=1,2``) exactly as ``python
train.py -m`` would (Hydra's BasicSweeper: same points, same order), checks every point, then writes

    <sweep dir>/manifest.txt        one line of overrides per array task (task i = line i+1)
    <sweep dir>/<template>.sbatch   a rendered copy of slurm/<template>.sbatch (--array=0-N-1[%K], ...)
    <sweep dir>/submit.json         what was asked, and the job id with --submit
    <sweep dir>/multirun.yaml       the composed sweep config (as Hydra's multirun writes it)
    <sweep dir>/logs/               the tasks' SLURM logs (%A_%a.out)

and prints the sbatch command (or, with --submit, runs it and prints the job id; --dry-run writes
nothing and prints the rendered script and the task list instead). Task i trains
into <sweep dir>/<i>/ (the layout of ``train.py -m``) with ``ckpt_path=auto``, so a requeued task
resumes. The sweep dir defaults to Hydra's (``hydra.sweep.dir``: multirun/<date>/<time>). Bad input
(unknown experiment, bad override or value, an existing manifest) fails with one line and exit code 2
before anything is written; so do --sbatch options sbatch does not have (with the closest name),
an invalid --time, a --setup that is not valid bash, and --submit where no sbatch is on PATH.

Environment setup: the rendered script runs the --setup commands (repeatable, one line each; else
$SMET_SLURM_SETUP) in the batch shell before it looks up Python, so `module load` and `source
.../activate` apply to the training step. Without either, and when smet-submit runs from a virtualenv,
the job activates that venv (``source <sys.prefix>/bin/activate``); ``--setup ''`` turns setup off.
The job's Python stays the one running smet-submit (sys.executable) unless --python says otherwise
(``--python python3``: whatever the setup put on PATH).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from smet.cli.args import die
from smet.errors import SmetConfigError, SmetInputError

PROG = "smet-submit"


class SubmitError(SmetInputError):
    """Bad input (a :class:`~smet.errors.SmetConfigError`): printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Write an experiment's Hydra sweep grid as a SLURM job-array manifest plus a rendered "
                    "sbatch script (slurm/<template>.sbatch), and print or run the sbatch command.",
        epilog="examples:\n"
               "  smet-submit +experiment=ablation_warmup --throttle 2 --time 02:00:00\n"
               "  smet-submit +experiment=method_compare seed=1,2,3 trainer=gpu data=c4 --template gpu --submit\n"
               "  smet-submit +experiment=model_scaling model=350m,1b --template ddp --nodes 2 --gpus 4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help="Hydra overrides as for `python train.py -m` (e.g. +experiment=ablation_warmup seed=1,2)")
    p.add_argument("-m", "--multirun", action="store_true", help=argparse.SUPPRESS)  # accepted, always implied
    p.add_argument("--template", default="cpu", choices=("cpu", "gpu", "ddp"),
                   help="slurm/array_cpu.sbatch (default), array_gpu.sbatch (1 GPU per task) or ddp.sbatch "
                        "(each task a DDP run over --nodes x --gpus)")
    p.add_argument("--sweep-dir", help="where the manifest, script, logs and runs go "
                                       "(default: hydra.sweep.dir, i.e. multirun/<date>/<time>)")
    p.add_argument("--throttle", type=int, metavar="K", help="at most K tasks running at once (--array=0-N%%K)")
    p.add_argument("--time", help="time limit per task, e.g. 04:00:00 (default: the template's)")
    p.add_argument("--partition", help="SLURM partition (default: the template's: cpu or gpu)")
    p.add_argument("--account", help="SLURM account to charge (sbatch --account)")
    p.add_argument("--qos", help="SLURM quality of service (sbatch --qos)")
    p.add_argument("--gpus", type=int, metavar="N", help="gpu: GPUs per task (1); ddp: GPUs (= tasks) per node")
    p.add_argument("--nodes", type=int, metavar="N", help="ddp: nodes per run")
    p.add_argument("--cpus-per-task", type=int, metavar="N", help="CPUs per task (default: the template's)")
    p.add_argument("--mem", help="memory per node, e.g. 16G (default: the template's)")
    p.add_argument("--job-name", help="SLURM job name (default: smet-<experiment>)")
    p.add_argument("--setup", action="append", metavar="CMDS",
                   help="shell commands the job runs before Python (repeatable, one line each), e.g. "
                        "'module load cuda/12.4; source ~/envs/smet/bin/activate' (default: $SMET_SLURM_SETUP, "
                        "else activate the virtualenv smet-submit runs from; '' for none)")
    p.add_argument("--python", metavar="PY",
                   help="the job's Python (default: the one running smet-submit, %s; `python3`: the one "
                        "on PATH after --setup)" % sys.executable.replace("%", "%%"))
    p.add_argument("--sbatch", action="append", default=[], metavar="--OPT=VALUE",
                   help="any other sbatch option for the header, long form, repeatable, checked against "
                        "sbatch's options (e.g. --sbatch=--constraint=a100 --sbatch=--mail-type=END)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="write nothing: print the rendered script and the tasks")
    mode.add_argument("--submit", action="store_true", help="run sbatch and print the job id")
    return p


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise SubmitError(f"{name}: must be >= 1, got {value}")


def sbatch_options(args, n_tasks: int, sweep_dir: Path, experiment: str | None) -> dict[str, str | None]:
    """The #SBATCH header lines to set in the rendered script."""
    from smet.slurm.render import RenderError, check_time

    _positive("--throttle", args.throttle)
    _positive("--nodes", args.nodes)
    _positive("--cpus-per-task", args.cpus_per_task)
    if args.gpus is not None and args.gpus < (1 if args.template == "ddp" else 0):
        raise SubmitError(f"--gpus: must be >= 1, got {args.gpus}")
    opts: dict[str, str | None] = {}
    opts["job-name"] = args.job_name or f"smet-{experiment or 'sweep'}"
    if args.partition:
        opts["partition"] = args.partition
    if args.account:
        opts["account"] = args.account
    if args.qos:
        opts["qos"] = args.qos
    if args.time:
        try:
            opts["time"] = check_time(args.time)
        except RenderError as e:
            raise SubmitError(str(e), key=e.key) from None
    if args.cpus_per_task:
        opts["cpus-per-task"] = str(args.cpus_per_task)
    if args.mem:
        if not re.fullmatch(r"\d+[KMGT]?", args.mem, re.I):
            raise SubmitError(f"--mem: {args.mem!r} is not a SLURM memory size (e.g. 16G, 4096M, 0 = all)")
        opts["mem"] = args.mem
    if args.template == "cpu":
        if args.gpus:
            raise SubmitError("--gpus: the cpu template requests no GPUs; use --template gpu or ddp")
    if args.template != "ddp" and args.nodes not in (None, 1):
        raise SubmitError("--nodes: multi-node runs need --template ddp")
    if args.template == "gpu" and args.gpus is not None:
        if args.gpus > 1:
            raise SubmitError("--gpus: array_gpu runs one GPU per task; use --template ddp for several GPUs per run")
        opts["gres"] = f"gpu:{args.gpus}"
    if args.template == "ddp":
        if args.gpus is not None:
            opts["ntasks-per-node"] = str(args.gpus)
            opts["gres"] = f"gpu:{args.gpus}"
        if args.nodes is not None:
            opts["nodes"] = str(args.nodes)
    opts["output"] = str(sweep_dir / "logs" / "%A_%a.out")
    opts["chdir"] = os.getcwd()  # relative paths in overrides mean what they mean here
    throttle = f"%{args.throttle}" if args.throttle else ""
    opts["array"] = f"0-{n_tasks - 1}{throttle}"
    from smet.slurm.options import check_sbatch_option

    own = {"partition": args.partition, "time": args.time, "account": args.account, "qos": args.qos,
           "cpus-per-task": args.cpus_per_task, "mem": args.mem, "job-name": args.job_name,
           "nodes": args.nodes, "gres": args.gpus, "ntasks-per-node": args.gpus}
    for raw in args.sbatch:
        m = re.match(r"^--([A-Za-z0-9-]+)(?:=(.+))?$", raw)
        if not m:
            raise SubmitError(f"--sbatch: {raw!r}: give a long sbatch option, e.g. --sbatch=--constraint=a100")
        name, value = m.group(1), m.group(2)
        try:
            check_sbatch_option(name, value, raw)
        except ValueError as e:
            raise SubmitError(str(e)) from None
        if own.get(name) is not None:
            flag = "--gpus" if name in ("gres", "ntasks-per-node") else f"--{name}"
            raise SubmitError(f"--sbatch: {raw!r}: {flag} is given as well; give it once")
        if name == "time":
            try:
                check_time(value)
            except RenderError as e:
                raise SubmitError(str(e), key=e.key) from None
        opts[name] = value
    return opts


def default_setup() -> tuple[str, str]:
    """(the job's setup commands, where they come from): SMET_SLURM_SETUP, else the venv we run in."""
    env = os.environ.get("SMET_SLURM_SETUP")
    if env is not None:
        return env, "SMET_SLURM_SETUP"
    activate = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix != getattr(sys, "base_prefix", sys.prefix) and activate.is_file():
        return f"source {shlex.quote(str(activate))}", f"the virtualenv smet-submit runs from ({sys.prefix})"
    return "", "none (smet-submit does not run from a virtualenv)"


def plan(argv: Sequence[str] | None = None):
    """Parse, compose and check everything; returns (args, grid, files to write). Writes nothing."""
    from smet.slurm.grid import GridError, expand, repo_root
    from smet.slurm.render import RENDERED_VARS, RenderError, render, template_path

    args = build_parser().parse_intermixed_args(argv)
    overrides = list(args.overrides)
    notes = []
    if args.submit and not shutil.which("sbatch"):
        raise SubmitError("--submit: sbatch not found on PATH (run on a SLURM login node, or drop --submit "
                          "and copy the sweep dir there)")
    if args.setup is not None:
        setup, setup_from = "\n".join(args.setup), "--setup"
    else:
        setup, setup_from = default_setup()
    if args.template in ("gpu", "ddp") and not any(re.match(r"^\+{0,2}trainer=", o) for o in overrides):
        overrides.append("trainer=gpu")
        notes.append(f"added trainer=gpu (the {args.template} template's trainer; choose another with trainer=...)")
    repo = repo_root()
    if not (repo / "train.py").is_file():
        raise SubmitError(f"no train.py in {repo} (set SMET_REPO to the smet checkout)")
    tpl = template_path(repo, args.template)
    if not tpl.is_file():
        raise SubmitError(f"template {tpl} not found")
    try:
        grid = expand(overrides)
    except GridError as e:
        raise SubmitError(str(e), key=e.key) from None
    sweep_dir = Path(args.sweep_dir or grid.sweep_dir).expanduser()
    sweep_dir = sweep_dir if sweep_dir.is_absolute() else Path.cwd() / sweep_dir
    manifest = sweep_dir / "manifest.txt"
    if manifest.exists():
        raise SubmitError(f"{manifest} exists: choose a new --sweep-dir (an existing sweep is never overwritten)")
    lines = grid.lines()
    script = sweep_dir / tpl.name
    opts = sbatch_options(args, len(lines), sweep_dir, grid.experiment)
    cmdline = " ".join(shlex.quote(a) for a in [PROG, *(argv if argv is not None else sys.argv[1:])])
    note = (f"rendered by smet-submit from slurm/{tpl.name} on {_dt.datetime.now():%Y-%m-%d %H:%M:%S}:\n"
            f"  {cmdline}\n"
            f"{len(lines)} task(s); task i runs line i+1 of {manifest}; submit with: sbatch {script}")
    try:
        python = args.python or sys.executable
        text = render(tpl.read_text(), opts, dict(zip(RENDERED_VARS, (str(repo), python, str(manifest)))),
                      note=note, setup=setup)
    except RenderError as e:
        raise SubmitError(str(e), key=e.key) from None
    notes.append(f"environment setup from {setup_from}: "
                 + ("; ".join(x for x in setup.splitlines() if x.strip()) or "none"))
    return args, grid, sweep_dir, manifest, script, text, lines, opts, notes


def write(grid, sweep_dir: Path, manifest: Path, script: Path, text: str, lines: list[str], info: dict) -> None:
    from omegaconf import OmegaConf

    sweep_dir.mkdir(parents=True, exist_ok=True)
    try:
        with open(manifest, "x") as f:  # exclusive: never overwrite a sweep's manifest
            f.write("".join(line + "\n" for line in lines))
    except FileExistsError:
        raise SubmitError(f"{manifest} exists: choose a new --sweep-dir") from None
    (sweep_dir / "logs").mkdir(exist_ok=True)
    script.write_text(text)
    script.chmod(0o755)
    OmegaConf.save(grid.config, sweep_dir / "multirun.yaml")
    (sweep_dir / "submit.json").write_text(json.dumps(info, indent=2) + "\n")


def submit(script: Path) -> str:
    sbatch = shutil.which("sbatch")
    if not sbatch:
        raise RuntimeError("sbatch not found on PATH (is this a SLURM login node?)")
    res = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"sbatch failed ({res.returncode}): {' '.join(res.stderr.split())}")
    job_id = res.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise RuntimeError(f"sbatch printed no job id: {res.stdout!r}")
    return job_id


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args, grid, sweep_dir, manifest, script, text, lines, opts, notes = plan(argv)
        info = {
            "command": [PROG, *(argv if argv is not None else sys.argv[1:])],
            "cwd": os.getcwd(),
            "experiment": grid.experiment,
            "template": args.template,
            "n_tasks": len(lines),
            "manifest": str(manifest),
            "script": str(script),
            "sbatch_options": opts,
            "job_id": None,
        }
        if not args.dry_run:
            write(grid, sweep_dir, manifest, script, text, lines, info)
    except SmetConfigError as e:  # SubmitError, GridError, RenderError are ones
        return die(PROG, e)

    for n in notes:
        print(f"{PROG}: note: {n}")
    if args.dry_run:
        print(f"{PROG}: dry run: nothing written; without --dry-run, {script} would be:")
        print(f"----- {script} -----")
        print(text, end="")
        print(f"----- end of {script.name} -----")
    print(f"{PROG}: {len(lines)} task(s){f' ({grid.experiment})' if grid.experiment else ''} -> {sweep_dir}"
          + (" (dry run: not created)" if args.dry_run else ""))
    print(f"  manifest: {manifest}")
    print(f"  script:   {script}  (" + " ".join(f"--{k}={v}" if v is not None else f"--{k}"
                                             for k, v in opts.items() if k not in ("output", "chdir")) + ")")
    print(f"  logs:     {sweep_dir / 'logs'}/<job>_<task>.out   runs: {sweep_dir}/<task>/")
    for i, line in enumerate(lines[:10]):
        print(f"  task {i}: {line}")
    if len(lines) > 10:
        print(f"  ... ({len(lines) - 10} more in the manifest)")
    if args.dry_run:
        return 0
    print(f"sbatch {shlex.quote(str(script))}")
    if not args.submit:
        return 0
    try:
        job_id = submit(script)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    info["job_id"] = job_id
    (sweep_dir / "submit.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"Submitted batch job {job_id}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
