"""Local data directories: a symlink loop or duplicate links do not multiply the corpus; many
small files load quickly; an unreadable file is named (reliability v2, classes 7 and 11)."""

from __future__ import annotations

import os
import time

import pytest

from smet.data.corpus import LocalFilesCorpus, resolve_files
from smet.errors import SmetConfigError


def _docs(root, n, prefix="doc"):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"{prefix}{i:05d}.txt").write_text(f"Document {i} of {prefix}. " * 5 + "\n", encoding="utf-8")


def test_symlink_loop_and_duplicate_links_read_once(tmp_path, caplog):
    d = tmp_path / "data"
    _docs(d / "a", 20)
    os.symlink(d, d / "a" / "loop")            # a -> data -> a -> ... (a loop)
    os.symlink(d / "a", d / "same_as_a")        # a second name for the same directory
    os.symlink(d / "a" / "doc00000.txt", d / "link.txt")  # a second name for one file
    files, _ = resolve_files(str(d))
    assert len(files) == 20
    split = LocalFilesCorpus(str(d), "text", 0.2, tmp_path / "c").load_split()
    assert split.n_train_docs + split.n_val_docs == 20
    assert "read once" in caplog.text


@pytest.mark.slow
def test_ten_thousand_small_files_load_in_seconds(tmp_path):
    d = tmp_path / "many"
    _docs(d, 10_000)
    t0 = time.perf_counter()
    split = LocalFilesCorpus(str(d), "text", 0.05, tmp_path / "c").load_split()
    seconds = time.perf_counter() - t0
    assert split.n_train_docs + split.n_val_docs == 10_000
    print(f"10,000 files loaded in {seconds:.1f} s")  # a figure, not a timing assertion (was minutes)


def test_undecodable_file_named(tmp_path):
    d = tmp_path / "bad"
    _docs(d, 3)
    (d / "broken.txt").write_bytes(b"\xff\xfe\xfa not utf-8 \xc3")
    with pytest.raises(SmetConfigError) as e:
        LocalFilesCorpus(str(d), "text", 0.2, tmp_path / "c").load_split()
    assert e.value.key == "data.path" and "broken.txt" in str(e.value)
