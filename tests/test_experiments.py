"""Every experiment preset (conf/experiment/*.yaml) trains: one composition each (no multirun: the
sweep grid is not expanded), made tiny, run in-process through train.py's own ``run`` for two steps,
the second one after a topology update."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
try:
    importlib.metadata.distribution("gensim")
    HAVE_GENSIM = True
except importlib.metadata.PackageNotFoundError:
    HAVE_GENSIM = False

# tiny on CPU: whatever model/trainer/data the experiment picks, its own sparsity and optimizer settings stay
TINY = ("model=tiny", "trainer=cpu", "trainer.precision=32", "logger=csv", "trainer.max_steps=2",
        "trainer.val_every_n_steps=2", "trainer.log_every_n_steps=1", "trainer.progress_bar=none",
        "trainer.model_summary=false", "sparsity.update_interval=1", "data.seq_len=32", "data.batch_size=4",
        "data.global_batch_size=null", "data.tokenizer.vocab_size=512", "data.max_val_sequences=4")


def experiment_text(name: str) -> str:
    """The experiment file and every experiment it includes through its defaults list (``- fig1_mini``)."""
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    for line in text.splitlines():
        base = line.strip().removeprefix("- ").strip()
        if line.startswith("  - ") and base in EXPERIMENTS and base != name:
            text += "\n" + experiment_text(base)
    return text


def experiment_overrides(name: str, out: Path) -> list[str]:
    text = experiment_text(name)
    data = []
    if ("override /data: c4" in text or "override /data: debian_docs" in text
            or ("override /data: kjv_wiki" in text and not HAVE_GENSIM)):
        # c4 streams from the Hub (offline here); debian_docs needs scripts/prep-debian-corpus.py's output;
        # kjv_wiki needs gensim's data file
        data = ["data=embedded"]
    return [f"+experiment={name}", *TINY, *data, f"output_dir={out}"]


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_trains_two_tiny_steps(name, tmp_path, session_cache, monkeypatch):
    from smet.cli.train import run

    monkeypatch.setenv("SMET_CACHE_DIR", str(session_cache))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="train", overrides=experiment_overrides(name, out))
    assert cfg.experiment_name == name
    summary = run(cfg)
    assert summary["status"] == "ok" and summary["steps"] == 2, summary
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert "train/loss" in header and "val/loss" in header and len(rows) >= 3
    if summary["method"] not in ("dense", "static"):  # the topology update after step 1 happened (static: never)
        assert "sparsity/regrown" in header
