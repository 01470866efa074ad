"""Checks of a ``python train.py`` command line before Hydra starts (and writes anything).

Hydra reports a bad override, an unknown key or group option with several lines (or a traceback)
and exit code 1, writes ``.hydra/`` into the run directory before the job runs, and a multirun
only finds a bad grid point when it reaches it (after training the points before it). This module
composes the command's config(s) the way Hydra will, with Hydra's own parser and config loader,
and turns every failure into one line naming the key plus exit code 2:

* malformed overrides, unknown keys (with the closest valid names), unknown group options or
  experiments;
* every grid point of a multirun, composed and value-checked (:func:`smet.config.validate`) before
  the first job starts;
* a fresh run into a directory that already holds a run (checkpoints, metrics, summary): refused,
  naming ``hydra.run.dir``; resuming it (``ckpt_path=auto`` or ``ckpt_path=<that dir>``) is allowed.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable

from smet.errors import SmetConfigError, SmetInputError

# Hydra flags after which the command does not train (or Hydra handles everything itself)
_PASSTHROUGH_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
                      "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun",
                      "--package", "-p", "--resolve", "--version"}
# overrides of Hydra's own launcher/sweeper/run settings: they do not change any job's config
_HYDRA_ONLY = re.compile(r"^hydra/|^hydra\.(launcher|sweeper|run|sweep|job|mode|output_subdir|verbose|callbacks)")
RUN_MARKERS = ("summary.json", "metrics.csv", "checkpoints")


class PreflightError(SmetInputError):
    """One line for the user (a :class:`~smet.errors.SmetConfigError`); ``key`` names the offending
    key or path where there is one."""


def holds_run(path: Path) -> list[str]:
    """What in ``path`` shows that a run was written there (empty list: nothing)."""
    found = []
    for name in RUN_MARKERS:
        p = path / name
        if name == "checkpoints":
            if p.is_dir() and any(p.iterdir()):
                found.append("checkpoints/")
        elif p.exists():
            found.append(name)
    return found


def _last(overrides: Iterable[str], key: str) -> str | None:
    """The value Hydra uses for ``key``: the last override that sets it."""
    value = None
    for o in overrides:
        k, sep, v = o.partition("=")
        if sep and k.lstrip("+~") == key:
            value = v.strip("'\"")
    return value


def check_not_overwriting(run_dir: Path, ckpt_path: Any, key: str = "hydra.run.dir") -> None:
    """A fresh start into a directory holding a run would replace its summary and config and append
    to its metrics: refuse it. Resuming that run (``ckpt_path=auto`` or a path inside it) is fine."""
    run_dir = Path(os.path.expanduser(str(run_dir)))
    markers = holds_run(run_dir) if run_dir.is_dir() else []
    if not markers:
        return
    if ckpt_path is not None and str(ckpt_path) != "None":
        if str(ckpt_path) == "auto":
            return
        ck = Path(os.path.expanduser(str(ckpt_path))).resolve()
        here = run_dir.resolve()
        if ck == here or here in ck.parents:
            return
    raise PreflightError(
        key, f"{run_dir} already holds a run ({', '.join(markers)}); resume it with ckpt_path=auto "
        f"(or ckpt_path={run_dir}), or start a new run elsewhere (e.g. {key}={run_dir}-2)")


def _known_keys(cfg: Any, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    keys = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            if prefix == "" and k == "hydra":
                continue
            full = f"{prefix}{k}"
            keys.append(full)
            try:
                child = cfg._get_node(k)
            except Exception:  # pragma: no cover
                continue
            if isinstance(child, DictConfig):
                keys += _known_keys(child, full + ".")
    return keys


def _explain(err: BaseException, base_cfg: Any) -> str:
    """Hydra/OmegaConf's message as one line, with the closest valid key names for an unknown key."""
    from smet.slurm.grid import one_line

    text = one_line(err)
    g = re.search(r"Could not find '([\w/]+)/([^']+)'\s*Available options in '[^']+':\s*(.*)", text)
    if g:
        return f"{g.group(1)}: unknown option {g.group(2)!r}; choose one of: {', '.join(g.group(3).split())}"
    m = re.search(r"Could not (?:override|append to|delete from) '([^']+)'", text) or \
        re.search(r"full_key: ([\w.]+)", text)
    if m and ("not in struct" in text or "Key '" in text or "Could not" in text):
        key = m.group(1)
        same_depth = [k for k in _known_keys(base_cfg) if k.count(".") == key.count(".")] if base_cfg is not None else []
        close = difflib.get_close_matches(key, same_depth, n=3, cutoff=0.6)
        if "To append to your config use" in text or "not in struct" in text:
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            return f"{key}: unknown key{hint}"
    return text


STRICT_GROUPS = ("model", "sparsity", "optimizer", "data", "trainer")  # `+group.key` must be a key conf/ defines


def conf_keys(conf: Path) -> set[str]:
    """Every dotted key any YAML file under ``conf/`` defines (group files under their package)."""
    from omegaconf import DictConfig, OmegaConf

    keys: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, DictConfig):
            for k in node.keys():
                if k == "defaults" and not prefix:
                    continue
                full = f"{prefix}{k}"
                keys.add(full)
                walk(node._get_node(k), full + ".")

    for path in conf.rglob("*.yaml"):
        rel = path.relative_to(conf)
        if rel.parts[0] == "hydra":
            continue
        text = path.read_text()
        glob = "@package _global_" in text.split("\n", 3)[0] or len(rel.parts) == 1 or rel.parts[0] == "experiment"
        prefix = "" if glob else ".".join(rel.parts[:-1]) + "."
        try:
            walk(OmegaConf.load(path), prefix)
        except Exception:  # pragma: no cover - a broken YAML is Hydra's to report
            continue
    return keys


def check_appended_keys(overrides: list[str], conf: Path) -> None:
    """``+sparsity.densty=0.1`` adds a key nothing reads: refuse a new key under a schema'd group
    unless some config in conf/ defines it (or something below it)."""
    known = None
    for o in overrides:
        k, sep, _ = o.partition("=")
        if not (sep and k.startswith("+")):
            continue
        key = k.lstrip("+")
        if "/" in key or key.split(".", 1)[0] not in STRICT_GROUPS or "." not in key:
            continue
        known = known if known is not None else conf_keys(conf)
        if key in known or any(x.startswith(key + ".") for x in known):
            continue
        close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise PreflightError(key, f"unknown key (no config in conf/ defines it){hint}")


def check_dense_density(cfg: Any, overrides: list[str]) -> None:
    """``sparsity.density=0.5`` given on the command line of a dense run would be ignored: refuse it.
    (An experiment may set a density for its sparse points and still sweep ``sparsity=dense``.)"""
    given = _last(overrides, "sparsity.density")
    method = (cfg.get("sparsity") or {}).get("method", "dense")
    if given is not None and method == "dense":
        try:
            value = float(given)
        except ValueError:
            return
        if value != 1.0:
            raise SmetConfigError("sparsity.density", f"{given} has no effect with sparsity=dense (density 1); pick a "
                                                      f"sparse method, e.g. sparsity=smet sparsity.density={given}")


def check_command(argv: list[str], conf: Path | None = None) -> None:
    """Compose every job of ``train.py <argv>`` and check it; raise PreflightError (one line)."""
    from smet.config import validate

    if any(a.split("=", 1)[0] in _PASSTHROUGH_FLAGS for a in argv):
        return  # --help, --cfg, another config dir ...: Hydra's own business
    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides = [a for a in argv if a not in ("-m", "--multirun")]
    if any(a.startswith("-") for a in overrides):
        return  # an option we do not know: let Hydra say what it thinks of it

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from smet.slurm.grid import GridError, conf_dir, expand, one_line

    conf = Path(conf) if conf is not None else conf_dir()
    for o in overrides:
        if o.partition("=")[0].lstrip("+~").strip() == "":
            raise PreflightError(f"bad override {o!r}: no key before '=' (write key=value, e.g. seed=5)")
    try:
        OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise PreflightError(f"bad override: {one_line(e)}") from None

    check_appended_keys(overrides, conf)
    if GlobalHydra.instance().is_initialized():  # pragma: no cover
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base=None, job_name="train"):
        base = compose(config_name="train")
    experiments = sorted(p.stem for p in (conf / "experiment").glob("*.yaml"))
    for o in overrides:
        k, sep, v = o.partition("=")
        if sep and k.lstrip("+~") == "experiment":
            for name in (x.strip() for x in v.split(",")):
                if name and name not in experiments:
                    close = difflib.get_close_matches(name, experiments, n=2)
                    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
                    raise PreflightError(f"experiment: unknown experiment {name!r}{hint}; choose one of: "
                                         f"{', '.join(experiments)}")

    if not multirun:
        if GlobalHydra.instance().is_initialized():  # pragma: no cover
            GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(conf), version_base=None, job_name="train"):
                cfg = compose(config_name="train", overrides=overrides, return_hydra_config=False)
        except (HydraException, OmegaConfBaseException, ValueError) as e:
            raise PreflightError(_explain(e, base)) from None
        except Exception as e:  # Hydra raises plain errors for some malformed overrides (e.g. `=5`)
            raise PreflightError(f"bad override in {' '.join(overrides)}: {one_line(e)}") from None
        try:
            validate(cfg)
            check_dense_density(cfg, overrides)
        except SmetConfigError as e:
            raise PreflightError(str(e), key=e.key) from None
        explicit = cfg.get("output_dir") or _last(overrides, "hydra.run.dir")
        if explicit and "${" not in str(explicit):
            check_not_overwriting(Path(str(explicit)), cfg.get("ckpt_path"),
                                  "output_dir" if cfg.get("output_dir") else "hydra.run.dir")
        return

    job_overrides = [o for o in overrides if not _HYDRA_ONLY.search(o.partition("=")[0].lstrip("+~"))]
    sweep_dir = _last(overrides, "hydra.sweep.dir")
    if sweep_dir is not None:
        job_overrides.append(f"hydra.sweep.dir={sweep_dir}")
    try:
        grid = expand(job_overrides, conf=conf, check_values=True)
    except GridError as e:
        m = re.match(r"(task \d+ \([^)]*\): )?(.*)", str(e))
        msg = (m.group(1) or "") + _explain(Exception(m.group(2)), base)
        raise PreflightError(msg) from None
    if sweep_dir is not None and "${" not in sweep_dir:
        root = Path(os.path.expanduser(sweep_dir))
        for i, task in enumerate(grid.tasks):
            check_not_overwriting(root / str(i), _last(task, "ckpt_path"), f"hydra.sweep.dir (job {i})")


def main_check(argv: list[str]) -> None:
    """Run :func:`check_command`; on failure print one line and exit 2."""
    try:
        check_command(argv)
    except PreflightError as e:
        print(f"smet: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
