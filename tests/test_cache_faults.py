"""A corrupt, incomplete or read-only data cache is rebuilt, used as it is, or refused with one line
naming the path: never a traceback (reliability v2, class 5)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from smet.data import build_datamodule
from smet.errors import SmetConfigError


def _cfg(cache_dir: Path) -> dict:
    return {"name": "embedded", "source": "embedded", "tokenizer": {"kind": "bpe", "vocab_size": 512, "name": None},
            "seq_len": 64, "batch_size": 4, "val_fraction": 0.05, "max_val_sequences": 8, "num_workers": 0,
            "seed": 1234, "cache_dir": str(cache_dir)}


def _digest(dm) -> str:
    return hashlib.sha256(dm._train_path.read_bytes() + dm._val_path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def good_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("good") / "cache"
    dm = build_datamodule(_cfg(root))
    dm.prepare()
    return root, _digest(dm)


def _tok_file(root: Path) -> Path:
    return next((root / "tokenizers").glob("*.json"))


def _tokens(root: Path) -> Path:
    return next(p for p in (root / "tokens").iterdir() if p.is_dir())


FAULTS = {
    "truncated tokenizer": lambda r: _tok_file(r).write_bytes(_tok_file(r).read_bytes()[:1000]),
    "garbage tokenizer": lambda r: _tok_file(r).write_text("not json at all"),
    "truncated train array": lambda r: (_tokens(r) / "train.npy").write_bytes((_tokens(r) / "train.npy").read_bytes()[:5000]),
    "garbage meta": lambda r: (_tokens(r) / "meta.json").write_text("{oops"),
    "missing val array": lambda r: (_tokens(r) / "val.npy").unlink(),
    "wrong-length array": lambda r: (_tokens(r) / "val.npy").write_bytes((_tokens(r) / "train.npy").read_bytes()),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_broken_entries_are_rebuilt_identically(tmp_path, good_cache, fault, caplog):
    root, digest = good_cache
    cache = tmp_path / "cache"
    shutil.copytree(root, cache)
    FAULTS[fault](cache)
    dm = build_datamodule(_cfg(cache))
    dm.prepare()
    assert _digest(dm) == digest  # the rebuilt entry equals the original
    assert any("again" in r.getMessage() for r in caplog.records), "the rebuild is announced"
    dm2 = build_datamodule(_cfg(cache))
    dm2.prepare()  # and is now a good entry
    assert _digest(dm2) == digest


def _ro_mount(src: Path, dst: Path):
    dst.mkdir()
    r = subprocess.run(["mount", "--bind", str(src), str(dst)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {r.stderr.decode().strip()}")
    subprocess.run(["mount", "-o", "remount,bind,ro", str(dst)], check=True)


def test_a_complete_read_only_cache_is_used_and_a_broken_one_named(tmp_path, good_cache):
    root, digest = good_cache
    src = tmp_path / "src"
    shutil.copytree(root, src)
    ro = tmp_path / "ro"
    _ro_mount(src, ro)
    try:
        dm = build_datamodule(_cfg(ro))
        dm.prepare()
        assert _digest(dm) == digest
        subprocess.run(["umount", str(ro)], check=True)
        _tok_file(src).write_text("garbage")
        _ro_mount(src, tmp_path / "ro2")
        ro = tmp_path / "ro2"
        with pytest.raises(SmetConfigError) as e:
            build_datamodule(_cfg(ro)).prepare()
        assert e.value.key == "data.cache_dir" and str(_tok_file(ro)) in str(e.value) and "read-only" in str(e.value)
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_cache_dir_that_is_a_file_or_cannot_be_created(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SmetConfigError, match="exists and is not a directory") as e:
        build_datamodule(_cfg(f))
    assert e.value.key == "data.cache_dir"
    with pytest.raises(SmetConfigError, match="cannot create") as e:
        build_datamodule(_cfg(f / "sub"))
    assert e.value.key == "data.cache_dir"
