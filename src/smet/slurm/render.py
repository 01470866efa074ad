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

TEMPLATES = {"cpu": "array_cpu.sbatch", "gpu": "array_gpu.sbatch", "ddp": "ddp.sbatch"}
RENDERED_VARS = ("SMET_RENDERED_REPO", "SMET_RENDERED_PYTHON", "SMET_RENDERED_MANIFEST")
_SBATCH = re.compile(r"^#SBATCH\s+--([A-Za-z0-9-]+)(?:=(\S+))?(\s+#.*)?\s*$")
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$")  # sbatch --time: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S


# sbatch refuses more than one of these: setting one drops the others from the template's header
EXCLUSIVE = ({"mem", "mem-per-cpu", "mem-per-gpu"},)


class RenderError(Exception):
    """A template that does not look like one of ours, or a bad option value."""


def sbatch_options(text: str) -> dict[str, str | None]:
    """The ``#SBATCH --name[=value]`` header options of a script (value None for flags)."""
    opts: dict[str, str | None] = {}
    for line in text.splitlines():
        m = _SBATCH.match(line)
        if m:
            opts[m.group(1)] = m.group(2)
    return opts


def check_time(value: str) -> str:
    if not _TIME.match(value):
        raise RenderError(f"--time: {value!r} is not a SLURM time (MM, HH:MM:SS, D-HH:MM:SS)")
    return value


def _sbatch_line(name: str, value: str | None) -> str:
    if value is None:
        return f"#SBATCH --{name}"
    if re.search(r"\s", value):
        raise RenderError(f"--{name}: whitespace in {value!r} cannot be written into an #SBATCH line")
    return f"#SBATCH --{name}={value}"


def render(text: str, options: dict[str, str | None], rendered: dict[str, str], note: str = "") -> str:
    """``text`` with ``options`` set in its #SBATCH header and the SMET_RENDERED_* lines filled.

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
    if note:
        at = 1 if lines and lines[0].startswith("#!") else 0
        lines[at:at] = [f"# {x}" if x else "#" for x in note.splitlines()]
    return "\n".join(lines) + "\n"


def template_path(repo: Path, kind: str) -> Path:
    try:
        return repo / "slurm" / TEMPLATES[kind]
    except KeyError:
        raise RenderError(f"--template: unknown template {kind!r}; choose {', '.join(TEMPLATES)}") from None
