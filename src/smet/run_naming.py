"""Run identity: one name per run (and per multirun job) from the swept overrides, W&B group and tags.

``tiny-smet-d0.25-W10-s1234``: ``<model>-<method>[-<variant>][-d<density>]``, then every swept key
(short aliases for the common ones, else ``<last key part>=<value>``), then ``-s<seed>``. The same
name goes to config.yaml (``run_name``), summary.json, metrics/compare tables and W&B.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable

# short names of common sweep keys in run names (keys already in the base name have "")
ALIASES = {
    "optimizer.regrowth_warmup_steps": "W",
    "optimizer.lr": "lr",
    "optimizer.lr_scaling": "lrs",
    "optimizer.weight_decay": "wd",
    "optimizer.warmup_steps": "warm",
    "optimizer.reset_momentum": "reset",
    "sparsity.density": "d",
    "sparsity.update_interval": "dT",
    "sparsity.drop_fraction": "p",
    "sparsity.block_size": "bs",
    "data.batch_size": "B",
    "data.seq_len": "T",
    "trainer.max_steps": "steps",
    "seed": "s",
}
IN_BASE = {"model", "sparsity", "sparsity.method", "sparsity.variant", "sparsity.density", "seed"}


def _key(override_key: str) -> str:
    return override_key.lstrip("+~")


def sweep_keys(overrides: Iterable[str]) -> list[str]:
    """Keys that an override list sweeps over more than one value (``k=a,b``, ``range()``, ``choice()``, globs)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, RangeSweep

    keys: list[str] = []
    parser = OverridesParser.create()
    for text in overrides:
        try:
            o = parser.parse_override(str(text))
        except Exception:  # not an override (e.g. -m, a flag): ignore
            continue
        if not o.is_sweep_override():
            continue
        v = o.value()
        n = 2
        if isinstance(v, ChoiceSweep):
            n = len(v.list)
        elif isinstance(v, RangeSweep):
            n = len(list(o.sweep_iterator()))
        k = _key(o.get_key_element())
        if n > 1 and k not in keys:
            keys.append(k)
    return keys


def _sweep_sources(hc) -> list[str]:
    """The sweep definition: the multirun's original command-line overrides (multirun.yaml in the sweep
    dir, else sys.argv) plus ``hydra.sweeper.params`` (experiments define their grid there)."""
    from omegaconf import OmegaConf

    src: list[str] = []
    try:
        mr = Path(str(hc.sweep.dir)) / "multirun.yaml"
        if mr.is_file():
            src += [str(x) for x in OmegaConf.load(mr).hydra.overrides.task]
    except Exception:
        pass
    if not src:
        src += [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
    params = OmegaConf.select(hc, "sweeper.params", default=None) if hc is not None else None
    for k, v in (params or {}).items():
        src.append(f"{k}={v}")
    return src


def job_swept(hc=None) -> list[tuple[str, str]]:
    """(key, value) of every swept key of this Hydra multirun job, in sweep order; [] for a single run."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = hc or HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return []
        return swept_values(sweep_keys(_sweep_sources(hc)), list(hc.overrides.task))
    except Exception:  # not under Hydra
        return []


def swept_values(keys: list[str], job_overrides: Iterable[str]) -> list[tuple[str, str]]:
    values: dict[str, str] = {}
    for o in job_overrides:
        k, sep, v = str(o).partition("=")
        if sep:
            values[_key(k)] = v
    return [(k, values[k]) for k in keys if k in values]


def _fmt_value(v: Any) -> str:
    v = str(v).strip("'\"")
    if "/" in v:  # a path: its last part
        v = Path(v.rstrip("/")).name or v
    return v.replace("/", "_").replace(" ", "")


def build_run_name(resolved: dict, swept: list[tuple[str, str]] = ()) -> str:
    """``<model>-<method>[-<variant>][-d<density>][-<swept>...]-s<seed>`` (see the module doc)."""
    sp = resolved.get("sparsity") or {}
    method = sp.get("method", "dense")
    parts = [str(resolved["model"]["name"]), str(method)]
    if sp.get("variant"):
        parts.append(str(sp["variant"]))
    if method != "dense":
        parts.append(f"d{sp.get('density')}")
    for k, v in swept:
        if k in IN_BASE:
            continue
        alias = ALIASES.get(k)
        parts.append(f"{alias}{_fmt_value(v)}" if alias else f"{k.rsplit('.', 1)[-1]}={_fmt_value(v)}")
    parts.append(f"s{resolved.get('seed')}")
    return "-".join(parts)


def swept_tags(swept: list[tuple[str, str]]) -> list[str]:
    return [f"{k}={v}"[:64] for k, v in swept]  # W&B tags: at most 64 characters


def sweep_id(hc=None) -> str | None:
    """``sweep-<date>_<time>`` from the multirun's sweep dir (None outside a multirun)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = hc or HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None
        return "sweep-" + "_".join(Path(str(hc.sweep.dir)).parts[-2:])
    except Exception:
        return None


def apply_run_identity(resolved: dict) -> list[tuple[str, str]]:
    """Fill ``run_name`` (unless set), and the W&B name, group and tags, in the resolved config.
    Returns this job's swept (key, value) pairs."""
    swept = job_swept()
    if not resolved.get("run_name"):
        resolved["run_name"] = build_run_name(resolved, swept)
    w = (resolved.get("logger") or {}).get("wandb")
    if w:
        w["name"] = w.get("name") or resolved["run_name"]
        if w.get("group") in (None, "", "default"):
            w["group"] = resolved.get("experiment_name") or sweep_id() or w.get("group") or "default"
            if resolved.get("group") in (None, "", "default"):
                resolved["group"] = w["group"]
        tags = list(w.get("tags") or [])
        w["tags"] = tags + [t for t in swept_tags(swept) if t not in tags]
    return swept
