"""``plan`` expands each experiment's sweep grid with smet-submit's expansion (:func:`smet.slurm.grid.expand`,
the points ``python train.py -m +experiment=E OVERRIDES`` runs, in its order, every point validated),
drops points whose composed config equals an earlier point's except ``experiment_name`` (fidelity's
smet = fidelity_warmup's W = 100 = fidelity_lr_scaling's inverse: run once), names each run
(``smet-s0``, ``W10-s1``, ``lr_none-s0`` ...) and orders them by seed, so that every point of the
first seed starts before any point of the second.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from smet.fidelity import FidelityError

EXPERIMENTS = ("fidelity", "fidelity_warmup", "fidelity_lr_scaling")
# keys that name a run (swept values, in this order), with their short label
LABEL_KEYS = {"sparsity": "", "optimizer.regrowth_warmup_steps": "W", "optimizer.lr_scaling": "lr_",
              "optimizer.lr": "lr"}
IGNORED_FOR_DEDUPE = ("experiment_name", "group")


@dataclass
class PlannedRun:
    name: str
    experiment: str
    overrides: list[str]
    seed: int
    duplicates: list[str] = field(default_factory=list)  # other experiments' points that are this run
    status: str = "planned"       # planned | running | ok | failed | stopped | skipped
    rc: int | None = None
    wall_s: float | None = None
    started_s: float | None = None  # seconds after the run phase began
    note: str = ""

    def command(self, python: str, out: Path) -> list[str]:
        return [python, "train.py", *self.overrides, f"hydra.run.dir={_hydra_quote(str(out / self.name))}"]

    def train_command(self) -> str:
        return "python train.py " + shlex.join(self.overrides)


def _hydra_quote(v: str) -> str:
    return v if re.fullmatch(r"[A-Za-z0-9_./:+-]+", v) else "'" + v.replace("'", "\\'") + "'"


def _task_value(task: Sequence[str], key: str) -> str | None:
    for o in task:
        k, sep, v = o.partition("=")
        if sep and k.lstrip("+~") == key:
            return v
    return None


def run_name(task: Sequence[str], seed: Any) -> str:
    parts = []
    for key, short in LABEL_KEYS.items():
        v = _task_value(task, key)
        if v is not None:
            parts.append(f"{short}{v}")
    label = "_".join(parts) or "run"
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{label}-s{seed}")


def plan(experiments: Sequence[str] = EXPERIMENTS, overrides: Sequence[str] = ()) -> list[PlannedRun]:
    """Expanded, de-duplicated, seed-ordered runs of the experiments' grids (see the module docstring)."""
    from omegaconf import OmegaConf

    from smet.slurm.grid import GridError, expand

    for o in overrides:
        if re.match(r"^\+{0,2}experiment=", o):
            raise FidelityError(o, "choose the experiments with --experiments, not an override")
    points: list[tuple[str, list[str], Any]] = []
    for exp in experiments:
        try:
            grid = expand([f"+experiment={exp}", *overrides])
        except GridError as e:
            raise FidelityError(exp, str(e)) from None
        if grid.passthrough:
            raise FidelityError("hydra overrides are not supported here", " ".join(grid.passthrough))
        points += [(exp, list(t), cfg) for t, cfg in zip(grid.tasks, grid.configs)]  # composed once, by expand

    runs: list[PlannedRun] = []
    seen: dict[str, PlannedRun] = {}
    for exp, task, cfg in points:
        seed = int(cfg.seed)
        plain = OmegaConf.to_container(cfg, resolve=False)
        for k in ("hydra", *IGNORED_FOR_DEDUPE):
            plain.pop(k, None)
        key = json.dumps(plain, sort_keys=True, default=str)
        name = run_name(task, seed)
        if key in seen:
            seen[key].duplicates.append(f"{exp}: {' '.join(t for t in task if not t.startswith('+experiment='))}")
            continue
        if any(r.name == name for r in runs):
            name = f"{exp}-{name}"
        r = PlannedRun(name=name, experiment=exp, overrides=task, seed=seed)
        seen[key] = r
        runs.append(r)
    order = {id(r): i for i, r in enumerate(runs)}
    runs.sort(key=lambda r: (r.seed, order[id(r)]))
    return runs


def prepare_data(experiments: Sequence[str], overrides: Sequence[str] = ()) -> list[str]:
    """Train/load the BPE and tokenise the corpus of every distinct data config of the grids, once,
    into ``data.cache_dir`` (``$SMET_CACHE_DIR``): the N parallel runs then only load the cache."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from smet.data import build_datamodule
    from smet.slurm.grid import conf_dir

    runs = plan(experiments, overrides)
    done, lines = set(), []
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfgs = [compose(config_name="train", overrides=r.overrides).data for r in runs]
    for data in cfgs:
        plain = OmegaConf.to_container(data, resolve=True)
        plain.pop("seed", None)  # the stream order, not the cache
        key = json.dumps(plain, sort_keys=True, default=str)
        if key in done:
            continue
        done.add(key)
        t = time.perf_counter()
        dm = build_datamodule(data).prepare()
        st = dm.stats
        lines.append(f"data {st['corpus']}: {st['n_train_tokens']:,} train / {st['n_val_tokens']:,} val tokens, "
                     f"{st['n_train_docs']} / {st['n_val_docs']} documents, vocab {st['vocab_size']}, "
                     f"unigram ppl {dm.unigram_perplexity():.1f}; tokenizer {'trained' if st['tokenizer_trained'] else 'cached'}"
                     f", tokens {'cached' if st['tokens_cached'] else 'built'} in {time.perf_counter() - t:.1f} s "
                     f"({st['tokens_dir']})")
    return lines
