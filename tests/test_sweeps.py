"""W&B sweep files: valid grids over real config keys, Hydra-safe command lines."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from smet.config import validate

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))


def _fmt(v) -> str:
    return str(v)  # what the W&B agent passes: Python's str() of the value (True, 0.25, inverse ...)


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_file_composes_every_grid_point(path):
    spec = yaml.safe_load(path.read_text())
    assert spec["program"] == "train.py" and spec["method"] in ("grid", "random", "bayes")
    cmd = spec["command"]
    assert "${args_no_hyphens}" in cmd and "${args}" not in cmd  # Hydra rejects --key=value
    exp = [c for c in cmd if str(c).startswith("+experiment=")]
    assert len(exp) == 1 and (REPO / "conf" / "experiment" / f"{exp[0].split('=', 1)[1]}.yaml").is_file()
    fixed = [c for c in cmd if not str(c).startswith("${")]
    keys = list(spec["parameters"])
    grid = list(itertools.product(*(spec["parameters"][k]["values"] for k in keys)))
    assert grid
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        for point in grid:
            overrides = fixed + [f"{k}={_fmt(v)}" for k, v in zip(keys, point)]
            cfg = compose(config_name="train", overrides=overrides)
            validate(cfg)
            for k, v in zip(keys, point):
                got = cfg.sparsity.method if k == "sparsity" else OmegaConf.select(cfg, k)
                assert str(got) == str(v), (k, got, v)


def test_wandb_agent_template_is_valid_bash():
    r = subprocess.run(["bash", "-n", str(REPO / "slurm" / "wandb_agent.sbatch")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["bash", str(REPO / "slurm" / "wandb_agent.sbatch")], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr
