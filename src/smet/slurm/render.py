"""Render a copy of an sbatch template in ``slurm/`` for one sweep.

The templates stay directly usable (``sbatch --array=0-4%2 slurm/array_cpu.sbatch MANIFEST``);
rendering only (1) sets, replaces or adds ``#SBATCH --option=value`` header lines (``--array``,
``--time``, ``--output`` into the sweep dir, ...) and (2) fills the ``SMET_RENDERED_*=""`` lines
(checkout, Python, manifest), so the rendered script needs no arguments: ``sbatch <sweep>/x.sbatch``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from smet.errors import SmetInputError

TEMPLATES = {"cpu": "array_cpu.sbatch", "gpu": "array_gpu.sbatch", "ddp": "ddp.sbatch"}
RENDERED_VARS = ("SMET_RENDERED_REPO", "SMET_RENDERED_PYTHON", "SMET_RENDERED_MANIFEST")
_SBATCH = re.compile(r"^#SBATCH\s+--([A-Za-z0-9-]+)(?:=(\S+))?(\s+#.*)?\s*$")
# the placeholder line of the environment-setup hook in the templates (smet-submit --setup)
_SETUP = re.compile(r'^eval "\$\{SMET_SLURM_SETUP:-\}"\s+# SMET_SETUP\b.*$')


# sbatch refuses more than one of these: setting one drops the others from the template's header
EXCLUSIVE = ({"mem", "mem-per-cpu", "mem-per-gpu"},)


class RenderError(SmetInputError):
    """A template that does not look like one of ours, or a bad option value (a
    :class:`~smet.errors.SmetConfigError`: one line, exit code 2)."""


def sbatch_options(text: str) -> dict[str, str | None]:
    """The ``#SBATCH --name[=value]`` header options of a script (value None for flags)."""
    opts: dict[str, str | None] = {}
    for line in text.splitlines():
        m = _SBATCH.match(line)
        if m:
            opts[m.group(1)] = m.group(2)
    return opts


def check_time(value: str) -> str:
    """sbatch --time: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (or UNLIMITED/INFINITE); the leading field is
    unbounded, the others are clock fields (hours < 24 after a day count, minutes and seconds < 60)."""
    bad = RenderError(f"--time: {value!r} is not a SLURM time limit (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM:SS)")
    if value.upper() in ("UNLIMITED", "INFINITE"):
        return value
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)((?::\d{1,2}){0,2})", value)
    if not m:
        raise bad
    days, first, rest = m.group(1), int(m.group(2)), [int(x) for x in m.group(3).split(":")[1:]]
    if days is not None and first > 23:  # D-H...: H is an hour of the day
        raise bad
    if any(x > 59 for x in rest):
        raise bad
    return value


def setup_lines(setup: str) -> list[str]:
    """The setup commands as script lines (checked with ``bash -n``; empty: a no-op line)."""
    import subprocess

    text = setup.strip("\n")
    if not text.strip():
        return [":  # no environment setup (smet-submit --setup '')"]
    try:
        res = subprocess.run(["bash", "-n"], input=text + "\n", capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        res = None
    if res is not None and res.returncode != 0:
        msg = " ".join(res.stderr.split()).replace("bash: -: ", "").replace("bash: ", "")
        raise RenderError(f"--setup: not valid bash: {msg or repr(text)}")
    return ["# environment setup rendered by smet-submit (--setup / SMET_SLURM_SETUP):", *text.splitlines()]


def _sbatch_line(name: str, value: str | None) -> str:
    if value is None:
        return f"#SBATCH --{name}"
    if re.search(r"\s", value):
        raise RenderError(f"--{name}: whitespace in {value!r} cannot be written into an #SBATCH line")
    return f"#SBATCH --{name}={value}"


def render(text: str, options: dict[str, str | None], rendered: dict[str, str], note: str = "",
           setup: str | None = None) -> str:
    """``text`` with ``options`` set in its #SBATCH header and the SMET_RENDERED_* lines filled;
    with ``setup`` (shell commands), the template's setup placeholder line replaced by them.

    ``options`` maps long option names to a value (None for a flag); an existing line for the same
    option is replaced in place, new ones go after the last #SBATCH line.
    """
    lines = text.splitlines()
    sb_idx = [i for i, line in enumerate(lines) if _SBATCH.match(line)]
    if not sb_idx:
        raise RenderError("template has no #SBATCH header")
    pending = dict(options)
    drop = {other for group in EXCLUSIVE for name in pending if name in group for other in group - {name}}
    drop -= set(pending)
    for i in reversed(sb_idx):
        if _SBATCH.match(lines[i]).group(1) in drop:
            del lines[i]
    sb_idx = [i for i, line in enumerate(lines) if _SBATCH.match(line)]
    for i in sb_idx:
        name = _SBATCH.match(lines[i]).group(1)
        if name in pending:
            lines[i] = _sbatch_line(name, pending.pop(name))
    last = sb_idx[-1]
    new = [_sbatch_line(k, v) for k, v in pending.items()]
    lines[last + 1:last + 1] = new

    for var in RENDERED_VARS:
        pattern = re.compile(rf'^{var}=""\s*$')
        hits = [i for i, line in enumerate(lines) if pattern.match(line)]
        if len(hits) != 1:
            raise RenderError(f'template must hold exactly one line {var}="" (found {len(hits)})')
        lines[hits[0]] = f"{var}={shlex.quote(rendered.get(var, ''))}"
    if setup is not None:
        hits = [i for i, line in enumerate(lines) if _SETUP.match(line)]
        if len(hits) != 1:
            raise RenderError(f'template must hold exactly one setup line eval "${{SMET_SLURM_SETUP:-}}"  # SMET_SETUP '
                              f"(found {len(hits)})")
        lines[hits[0]:hits[0] + 1] = setup_lines(setup)
    if note:
        at = 1 if lines and lines[0].startswith("#!") else 0
        lines[at:at] = [f"# {x}" if x else "#" for x in note.splitlines()]
    return "\n".join(lines) + "\n"


def template_path(repo: Path, kind: str) -> Path:
    try:
        return repo / "slurm" / TEMPLATES[kind]
    except KeyError:
        raise RenderError(f"--template: unknown template {kind!r}; choose {', '.join(TEMPLATES)}") from None
