"""Composing run configs from ``conf/``: the one way every entry point gets a config.

``conf/`` is the only source of methods (``conf/sparsity/*.yaml``), model presets
(``conf/model/*.yaml``) and defaults. ``train.py`` composes ``conf/train.yaml`` through
``@hydra.main``; everything else (``smet-bench``, ``smet-memory``, ``smet-submit``, tests) calls
:func:`compose_points` / :func:`compose` here, which compose with Hydra's own machinery and expand a
sweep (``sparsity=dense,smet sparsity.density=0.5,0.25``) exactly as ``python train.py -m`` does
(:func:`smet.slurm.grid.expand`). Each point is checked by :func:`smet.config.validate`, so a bad
key or value fails here, before any compute, as one line naming it.

    >>> from smet.compose import compose
    >>> cfg = compose(["model=130m", "sparsity=smet_no_reset"])
    >>> cfg.optimizer.reset_local_step
    False

Config names: ``train`` (runs), ``bench`` (``conf/bench.yaml``: train + the benchmark's defaults),
``memory`` (``conf/memory.yaml``: train + the memory planner's defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence


@dataclass
class Point:
    """One point of a (possibly one-point) sweep: its own overrides and its composed config."""

    overrides: list[str]
    cfg: Any  # DictConfig, the hydra node removed

    def plain(self, resolve: bool = True) -> dict:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(self.cfg, resolve=resolve)  # type: ignore[return-value]


def compose_points(overrides: Sequence[str] = (), *, config_name: str = "train",
                   conf: Path | None = None, check_values: bool = True) -> list[Point]:
    """Every point of the sweep ``overrides`` describe (one point without a sweep), in
    ``train.py -m`` order. Raises :class:`smet.errors.SmetConfigError` (one line, names the key)."""
    from omegaconf import OmegaConf, open_dict

    from smet.slurm.grid import expand

    grid = expand(list(overrides), conf=conf, check_values=check_values, config_name=config_name)
    points = []
    for task, cfg in zip(grid.tasks, grid.configs):
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        with open_dict(cfg):
            cfg.pop("hydra", None)
        points.append(Point(overrides=list(task), cfg=cfg))
    return points


def compose(overrides: Sequence[str] = (), *, config_name: str = "train", conf: Path | None = None,
            check_values: bool = True) -> Any:
    """The one config ``overrides`` describe (a sweep is refused: use :func:`compose_points`)."""
    from smet.errors import SmetConfigError

    points = compose_points(overrides, config_name=config_name, conf=conf, check_values=check_values)
    if len(points) != 1:
        raise SmetConfigError("overrides", f"{' '.join(overrides)} describes {len(points)} configs; give one value "
                                           "per key")
    return points[0].cfg


def varying_keys(points: Sequence[Point]) -> list[str]:
    """The dotted keys whose resolved value differs between points (first-seen order)."""
    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        if isinstance(d, dict):
            for k, v in d.items():
                out.update(flat(v, f"{prefix}{k}."))
        else:
            out[prefix[:-1]] = d
        return out

    flats = [flat(p.plain()) for p in points]
    keys: list[str] = []
    for f in flats:
        for k in f:
            if k not in keys and any(g.get(k, "<missing>") != f[k] for g in flats):
                keys.append(k)
    return keys
