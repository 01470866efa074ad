"""Checkpoints that are intact files but not usable smet checkpoints are refused with one line,
exit 2, before data preparation or the model build (reliability v2, class 6)."""

from __future__ import annotations

import collections

import pytest
import torch

from conftest import FAST
from smet.checkpoints import checkpoint_problem, content_problem

TINY = (*FAST, "trainer.max_steps=2", "trainer.val_every_n_steps=2")


@pytest.fixture(scope="module")
def real_ckpt(tmp_path_factory, session_cache):
    import os
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path_factory.mktemp("ck") / "run"
    env = dict(os.environ, SMET_CACHE_DIR=str(session_cache))
    r = subprocess.run([sys.executable, str(REPO / "train.py"), f"hydra.run.dir={out}", *TINY], capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return out / "checkpoints" / "last.ckpt"


class NotAllowed:  # a class weights_only loading refuses to rebuild
    pass


def _variants(tmp_path, real):
    ck = torch.load(real, map_location="cpu", weights_only=True)
    no_hp = dict(ck)
    no_hp.pop("hyper_parameters")
    files = {
        "plain dict": ({"weights": torch.zeros(3)}, "not a Lightning training checkpoint (no state_dict)"),
        "tensor": (torch.zeros(3), "holds a Tensor, not a training checkpoint"),
        "pickle": ({"state_dict": {}, "obj": NotAllowed()}, "torch.load(weights_only=True) refuses it"),
        "no hparams": (no_hp, "has no smet run config"),
        "ordered": (collections.OrderedDict(a=torch.ones(1)), "not a Lightning training checkpoint"),
    }
    out = {}
    for name, (obj, why) in files.items():
        path = tmp_path / f"{name.replace(' ', '_')}.ckpt"
        torch.save(obj, path)
        out[name] = (path, why)
    return out


@pytest.mark.slow
def test_content_problem_names_what_the_file_is(tmp_path, real_ckpt):
    assert checkpoint_problem(real_ckpt) is None and content_problem(real_ckpt) is None
    for name, (path, why) in _variants(tmp_path, real_ckpt).items():
        assert checkpoint_problem(path) is None, name  # intact zip files: the old check let them through
        assert why in (content_problem(path) or ""), (name, content_problem(path))


@pytest.mark.slow
def test_train_refuses_each_before_data_or_model(run_train, tmp_path, real_ckpt):
    cases = {n: (p, w) for n, (p, w) in _variants(tmp_path, real_ckpt).items() if n != "ordered"}
    for i, (name, (path, why)) in enumerate(cases.items()):
        r = run_train(*TINY, f"ckpt_path={path}", out=tmp_path / f"r{i}", check=False)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and why in lines[0] and "ckpt_path" in lines[0], (name, r.stderr)
        assert "preparing data" not in r.stdout + r.stderr and not (tmp_path / f"r{i}" / "config.yaml").exists()


@pytest.mark.slow
@pytest.mark.parametrize("override, key", [("data.tokenizer.vocab_size=1024", "data.tokenizer.vocab_size"),
                                           ("model.vocab_size=600", "model.vocab_size")])
def test_another_vocabulary_is_refused(run_train, tmp_path, real_ckpt, override, key):
    r = run_train(*TINY, f"ckpt_path={real_ckpt}", override, out=tmp_path / "v", check=False)
    assert r.returncode == 2 and f"smet: error: {key}: the checkpoint" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "v" / "config.yaml").exists()


def test_stale_temp_files_of_killed_writers_are_removed(tmp_path):
    import os
    import subprocess

    from smet.checkpoints import clean_stale_temp_files
    from smet.config import check_output_dir

    ck = tmp_path / "checkpoints"
    ck.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = ck / f".last.ckpt.abc123.tmp-{dead.pid}"
    live = ck / f".last.ckpt.def456.tmp-{os.getppid()}"  # a writer that still runs: kept
    other = ck / "step0000001.ckpt"
    for p in (stale, live, other):
        p.write_bytes(b"x")
    with pytest.warns(UserWarning, match="killed"):
        check_output_dir(tmp_path)
    assert not stale.exists() and live.exists() and other.exists()
    assert clean_stale_temp_files(tmp_path) == []


@pytest.mark.slow
def test_disk_full_while_writing_a_checkpoint(run_train, tmp_path):
    import subprocess

    from smet.config import resolve_ckpt_path

    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12M", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode().strip()}")
    try:  # one tiny-model checkpoint (~11 MB) fits, the second does not
        res = run_train("data.seq_len=32", "data.batch_size=4", "data.tokenizer.vocab_size=300",
                        "data.max_val_sequences=4", "trainer.progress_bar=none", "trainer.max_steps=6",
                        "trainer.val_every_n_steps=2", out=mnt / "run", check=False)
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("smet: error:")]
        assert res.returncode == 1 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
        assert "no space left on the device" in errors[0] and "is intact" in errors[0]
        kept = mnt / "run" / "checkpoints" / "step0000002.ckpt"
        assert checkpoint_problem(kept) is None and content_problem(kept) is None
        assert resolve_ckpt_path(str(mnt / "run")) == str(kept)  # resume finds it
        assert not list((mnt / "run" / "checkpoints").glob(".*tmp-*"))  # no torn temp file left
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
