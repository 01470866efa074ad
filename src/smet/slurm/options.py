"""sbatch's long options, to check ``smet-submit --sbatch=--name=value`` pass-through before anything
is written (a typo such as ``--accont`` would otherwise only fail at submission, or never on a dry run).

The table is static: every long option of ``man sbatch`` in SLURM 22.05 (the oldest version the
templates target; ``sbatch --help`` lists only some of them, e.g. not ``--open-mode``), plus the few
that later releases added (23.02-24.11). Where ``sbatch`` is on PATH, the names in its ``--help``
output are accepted as well (a newer site SLURM may know options this table does not).
"""

from __future__ import annotations

import difflib
import functools
import re
import shutil
import subprocess

# options that take no value (flags)
FLAGS = frozenset({
    "contiguous", "hold", "ignore-pbs", "no-requeue", "overcommit", "oversubscribe", "parsable", "quiet",
    "reboot", "requeue", "spread-job", "test-only", "use-min-nodes", "verbose", "wait", "help", "usage",
    "version",
})
# options whose value is optional (--exclusive or --exclusive=user)
OPTIONAL_VALUE = frozenset({"exclusive", "export", "get-user-env", "nice", "no-kill", "propagate", "wrap"})
# options that need a value (--account=proj)
WITH_VALUE = frozenset({
    "account", "acctg-freq", "array", "batch", "bb", "bbf", "begin", "chdir", "cluster-constraint", "clusters",
    "comment", "constraint", "container", "core-spec", "cores-per-socket", "cpu-freq", "cpus-per-gpu",
    "cpus-per-task", "deadline", "delay-boot", "dependency", "distribution", "error", "exclude", "export-file",
    "extra-node-info", "gid", "gpu-bind", "gpu-freq", "gpus", "gpus-per-node", "gpus-per-socket", "gpus-per-task",
    "gres", "gres-flags", "hint", "input", "job-name", "kill-on-invalid-dep", "licenses", "mail-type", "mail-user",
    "mcs-label", "mem", "mem-bind", "mem-per-cpu", "mem-per-gpu", "mincpus", "network", "nodefile", "nodelist",
    "nodes", "ntasks", "ntasks-per-core", "ntasks-per-gpu", "ntasks-per-node", "ntasks-per-socket", "open-mode",
    "output", "partition", "power", "prefer", "priority", "profile", "qos", "reservation", "signal",
    "sockets-per-node", "switches", "thread-spec", "threads-per-core", "time", "time-min", "tmp", "uid",
    "wait-all-nodes", "wckey",
    # later than 22.05 (sbatch of that release refuses them, but they are not typos)
    "container-id", "extra", "oom-kill-step", "segment", "spread-segments", "tres-bind", "tres-per-task",
})
SBATCH_LONG_OPTIONS = FLAGS | OPTIONAL_VALUE | WITH_VALUE

# options that make no sense in the header of a script smet-submit writes
NOT_IN_HEADER = {
    "array": "smet-submit sets --array itself (use --throttle for %K)",
    "output": "smet-submit sets --output itself (<sweep dir>/logs/%A_%a.out)",
    "chdir": "smet-submit sets --chdir itself (the directory it runs in)",
    "help": "not an option for a job", "usage": "not an option for a job", "version": "not an option for a job",
    "parsable": "smet-submit --submit passes --parsable itself",
    "test-only": "submits no job (run sbatch --test-only <script> yourself)",
    "wait": "smet-submit --submit does not wait for the job",
    "wrap": "replaces the script smet-submit renders",
}


@functools.lru_cache(maxsize=1)
def installed_sbatch_options() -> frozenset[str]:
    """Long option names in the local ``sbatch --help`` (empty without sbatch, or if it fails)."""
    exe = shutil.which("sbatch")
    if not exe:
        return frozenset()
    try:
        res = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(re.findall(r"(?<![\w-])--([a-z][a-z0-9-]*)", res.stdout))


def check_sbatch_option(name: str, value: str | None, raw: str) -> None:
    """Raise ValueError (one line) if ``--name[=value]`` is not an sbatch option smet-submit can pass on."""
    known = name in SBATCH_LONG_OPTIONS or name in installed_sbatch_options()
    if not known:
        close = difflib.get_close_matches(name, sorted(SBATCH_LONG_OPTIONS | installed_sbatch_options()), n=1,
                                          cutoff=0.6)
        prefix = [o for o in sorted(SBATCH_LONG_OPTIONS) if o.startswith(name)]
        hint = f"did you mean --{close[0]}?" if close else (
            f"did you mean --{prefix[0]}?" if len(prefix) == 1 else "see `man sbatch` for its long options")
        raise ValueError(f"--sbatch: {raw!r}: --{name} is not an sbatch option; {hint}")
    if name in NOT_IN_HEADER:
        raise ValueError(f"--sbatch: {raw!r}: {NOT_IN_HEADER[name]}")
    if value is None and name in WITH_VALUE:
        raise ValueError(f"--sbatch: {raw!r}: --{name} needs a value: --sbatch=--{name}=VALUE")
    if value is not None and name in FLAGS:
        raise ValueError(f"--sbatch: {raw!r}: --{name} takes no value: --sbatch=--{name}")
