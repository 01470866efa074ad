"""An experiment's sweep grid, expanded exactly as ``python train.py -m`` expands it.

Hydra's multirun composes the primary config in MULTIRUN mode, then its BasicSweeper turns
``hydra.sweeper.params`` (``key: v1,v2``) followed by the command-line task overrides into the
cartesian product of all discrete sweeps, keys in first-seen order (a command-line sweep of a key
the params already name replaces that axis in place), and validates each job by composing it. This
module runs the same steps with Hydra's own parser, ``BasicSweeper.split_arguments`` and
``load_sweep_config``, plus smet's value checks (:func:`smet.config.validate`), so a SLURM array
built from the result has the same points in the same order as ``train.py -m``, and a bad override
fails here, before anything is written or submitted.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smet.errors import SmetInputError

CONFIG_NAME = "train"  # conf/train.yaml, the config train.py's @hydra.main uses
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"

# Hydra overrides that make no sense for an array of single runs (the templates set hydra.run.dir)
_REFUSED_HYDRA = (
    (re.compile(r"^hydra/launcher$|^hydra\.launcher(\.|$)"),
     "the array template is the launcher (for Hydra's submitit launcher run `train.py -m hydra/launcher=slurm`)"),
    (re.compile(r"^hydra/sweeper$"), "smet-submit expands Hydra's basic sweeper grid only"),
    (re.compile(r"^hydra\.run(\.|$)"), "each task's run dir is <sweep dir>/<task id> (use --sweep-dir)"),
    (re.compile(r"^hydra\.sweep\.subdir$"), "each task's run dir is <sweep dir>/<task id>"),
    (re.compile(r"^hydra\.mode$"), "smet-submit always expands the multirun grid"),
)
# consumed here (they shape the grid or the sweep dir), not passed on to the tasks
_CONSUMED_HYDRA = re.compile(r"^hydra\.sweep\.dir$|^hydra\.sweeper(\.|$)")


class GridError(SmetInputError):
    """Bad experiment name or override (a :class:`~smet.errors.SmetConfigError`): printed as one
    line, exit code 2."""


@dataclass
class Grid:
    """The expanded sweep: one override list per task, in ``train.py -m`` order."""

    tasks: list[list[str]]
    passthrough: list[str] = field(default_factory=list)  # hydra.* overrides given on the command line
    sweep_dir: str = ""  # hydra.sweep.dir as composed (relative paths are relative to the cwd)
    experiment: str | None = None
    config: Any = None  # the primary (multirun) config, hydra node included
    configs: list = field(default_factory=list)  # each task's composed config (as its job would see it)

    def lines(self) -> list[str]:
        """Manifest lines: each task's overrides, shell-quoted (``shlex.split`` gives them back)."""
        return [shlex.join([*task, *self.passthrough]) for task in self.tasks]


def repo_root() -> Path:
    """The checkout holding train.py, conf/ and slurm/: ``$SMET_REPO`` or the one this file is in."""
    env = os.environ.get("SMET_REPO")
    return Path(env).expanduser().resolve() if env else Path(__file__).resolve().parents[3]


def conf_dir(repo: Path | None = None) -> Path:
    """The Hydra config directory: ``$SMET_CONF_DIR`` or ``<repo>/conf``."""
    env = os.environ.get("SMET_CONF_DIR")
    return Path(env).expanduser().resolve() if env else (repo or repo_root()) / "conf"


def one_line(err: BaseException) -> str:
    """A (Hydra/OmegaConf) error message as one line."""
    text = str(err).split("\nConfig search path:")[0]  # Hydra's MissingConfigException appends its search path
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return re.sub(r"\s+", " ", text) or err.__class__.__name__


def _options(conf: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf / group).glob("*.yaml"))


def _values(override) -> list[str]:
    if override.is_delete():
        return []
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()] if override.is_discrete_sweep() else []
    return [override.get_value_element_as_str()]


def _precheck(parsed, conf: Path) -> None:
    """Clear messages for the common mistakes, before Hydra's longer ones."""
    experiments = _options(conf, "experiment")
    for o in parsed:
        key = o.key_or_group
        if o.is_hydra_override():
            for pattern, why in _REFUSED_HYDRA:
                if pattern.search(key):
                    raise GridError(f"{o.input_line}: not supported by smet-submit: {why}")
        elif key == "experiment":
            for value in _values(o):
                if value not in experiments:
                    raise GridError(f"unknown experiment {value!r}; choose one of: {', '.join(experiments)}")


def expand(overrides: list[str], conf: Path | None = None, check_values: bool = True,
           config_name: str = CONFIG_NAME) -> Grid:
    """Compose ``config_name`` (default ``train``) with ``overrides`` in multirun mode and expand its
    sweep grid.

    Raises :class:`GridError` (one line) for a bad override, an unknown experiment/group option or
    key, a sweeper other than Hydra's basic one, or a task whose composed config fails smet's checks.
    """
    from hydra import initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.utils import setup_globals
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from smet.config import validate
    from smet.errors import SmetConfigError

    conf = Path(conf) if conf is not None else conf_dir()
    if not (conf / f"{config_name}.yaml").is_file():
        raise GridError(f"no {config_name}.yaml in config dir {conf} (set SMET_REPO or SMET_CONF_DIR)")
    overrides = list(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise GridError(f"bad override: {one_line(e)}") from None
    _precheck(parsed, conf)
    from smet.preflight import PreflightError, check_appended_keys

    try:  # `+sparsity.densty=0.1` adds a key nothing reads: refused as train.py refuses it
        check_appended_keys(overrides, conf)
    except PreflightError as e:
        raise GridError(str(e), key=e.key) from None

    setup_globals()  # Hydra's resolvers (${now:...} in hydra.sweep.dir)
    if GlobalHydra.instance().is_initialized():  # pragma: no cover - a caller left Hydra initialised
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base=None, job_name=config_name):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        try:
            cfg = hydra.compose_config(config_name=config_name, overrides=overrides, run_mode=RunMode.MULTIRUN,
                                       from_shell=True, with_log_configuration=False)
        except (HydraException, OmegaConfBaseException, ValueError) as e:
            raise GridError(one_line(e)) from None

        target = OmegaConf.select(cfg, "hydra.sweeper._target_")
        if target != BASIC_SWEEPER:
            raise GridError(f"hydra/sweeper: smet-submit expands Hydra's basic sweeper only, got {target}")
        params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=False) if cfg.hydra.sweeper.params else {}
        # BasicSweeper.sweep(): its params first, then the command-line task overrides
        params_conf = [f"{k}={v}" for k, v in params.items()]
        task_overrides = list(OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False))
        try:
            parsed_all = OverridesParser.create(config_loader=hydra.config_loader).parse_overrides(
                params_conf + task_overrides)
            batches = BasicSweeper.split_arguments(parsed_all, None)
        except HydraException as e:
            raise GridError(f"hydra.sweeper.params: {one_line(e)}") from None
        tasks = [list(t) for t in batches[0]]

        passthrough = []
        for line in OmegaConf.to_container(cfg.hydra.overrides.hydra, resolve=False):
            key = OverridesParser.create().parse_override(line).key_or_group
            if not _CONSUMED_HYDRA.search(key):
                passthrough.append(line)

        # BasicSweeper.validate_batch_is_legal: every job must compose; then smet's own value checks
        configs = []
        for i, task in enumerate(tasks):
            try:
                job_cfg = hydra.config_loader.load_sweep_config(cfg, list(task))
                configs.append(job_cfg)
                if check_values:
                    validate(job_cfg)
            except SmetConfigError as e:
                raise GridError(f"task {i} ({' '.join(task)}): {e}", key=e.key) from None
            except (HydraException, OmegaConfBaseException, ValueError) as e:
                raise GridError(f"task {i} ({' '.join(task)}): {one_line(e)}") from None

        try:
            sweep_dir = str(OmegaConf.select(cfg, "hydra.sweep.dir"))
        except OmegaConfBaseException as e:
            raise GridError(f"hydra.sweep.dir: {one_line(e)}") from None
        experiment = OmegaConf.select(cfg, "experiment_name", default=None)
    return Grid(tasks=tasks, passthrough=passthrough, sweep_dir=sweep_dir,
                experiment=str(experiment) if experiment else None, config=cfg, configs=configs)
