"""On-disk cache helpers: atomic writes, inter-process locks, hashing.

Every cache file is written to a temporary file in the same directory and moved into
place with ``os.replace``, so a reader never sees a half-written file. Building a cache
entry happens under an exclusive ``fcntl.flock`` lock so that concurrent processes (DDP
ranks, parallel jobs sharing a cache) build it once and the others wait and load it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from smet.atomic import atomic_write

try:  # POSIX only; elsewhere the lock degrades to a no-op (atomic writes still hold)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


def sha256_hex(*parts: str | bytes) -> str:
    """sha256 over the parts, each length-prefixed so that part boundaries matter."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def stable_unit_hash(key: str) -> float:
    """Map a string to [0, 1) with sha1 (stable across processes, unlike ``hash()``)."""
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


@contextlib.contextmanager
def file_lock(target: str | os.PathLike) -> Iterator[None]:
    """Exclusive inter-process lock tied to ``target`` (lock file ``<target>.lock``)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    if fcntl is None:  # pragma: no cover
        yield
        return
    try:
        fh = open(lock_path, "a+")
    except OSError:  # a read-only (shared) cache: nothing can be built in it, so there is nothing to lock
        yield
        return
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def writable_dir(path: str | os.PathLike) -> bool:
    """True when files can be created in ``path`` (a real probe: root passes os.access checks on a
    read-only mount)."""
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(prefix=".smet-probe-", dir=path)
        os.close(fd)
        os.unlink(tmp)
        return True
    except OSError:
        return False
