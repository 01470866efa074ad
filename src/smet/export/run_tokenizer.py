"""The run keeps its tokenizer: ``<run>/tokenizer.json``, its sha256 in config.yaml and the checkpoint.

``train.py`` calls :func:`keep_run_tokenizer` right before it writes ``config.yaml``: the tokenizer the
data module trained or loaded (a byte copy of the cached BPE file, of a local pretrained
``tokenizer.json``, or the serialisation of a Hub tokenizer's fast backend) is written into the run
directory, and the resolved config gets a top-level entry::

    tokenizer:
      file: tokenizer.json      # relative to the run directory
      sha256: 3f1c...           # of that file's bytes

which therefore also lands in every checkpoint (``hyper_parameters.cfg.tokenizer``). Export, eval and
generation look for the tokenizer in this order (each candidate checked against that sha256):
``<run>/tokenizer.json``; a ``tokenizer.json`` beside the checkpoint file (a checkpoint copied
alone with it); the JSON embedded in the checkpoint as ``smet_tokenizer`` (see
:func:`checkpoint_entry`); then, for older runs, the data cache (train.log / summary.json / the
BPE cache path recomputed from the config). Older runs have no ``tokenizer`` entry: nothing is checked.
Nothing is written into ``checkpoints/`` at run start (a non-empty ``checkpoints/`` marks a run
that a fresh start must not overwrite, see smet.preflight).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("smet.export")

RUN_TOKENIZER = "tokenizer.json"
CONFIG_KEY = "tokenizer"  # top-level key of the resolved run config


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_bytes(raw: Any, source: str | None) -> bytes | None:
    """The ``tokenizers`` JSON of a loaded tokenizer: the source file's bytes when it is a local
    tokenizer JSON (the BPE cache file, a local pretrained file), else its serialisation; None for a
    tokenizer without a fast backend (a slow ``transformers`` tokenizer)."""
    if source:
        p = Path(source).expanduser()
        if p.is_dir():
            p = p / RUN_TOKENIZER
        if p.is_file() and p.suffix == ".json":
            return p.read_bytes()
    backend = raw
    if not hasattr(backend, "to_str"):
        backend = getattr(raw, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    return backend.to_str().encode("utf-8")


def keep_run_tokenizer(run_dir: str | os.PathLike, dm: Any, resolved: dict) -> dict | None:
    """Write the prepared data module's tokenizer to ``<run_dir>/tokenizer.json`` (atomically;
    every DDP rank writes the same bytes) and record ``resolved["tokenizer"] = {"file": "tokenizer.json", "sha256": ...}``.

    Never fails the run: a tokenizer that cannot be serialised or a failed write is logged, and the
    config then has no ``tokenizer`` entry (the tools fall back to the data cache, as for older runs).
    Returns the recorded entry or None.
    """
    from smet.atomic import atomic_write

    run_dir = Path(run_dir)
    try:
        source = (getattr(dm, "stats", None) or {}).get("tokenizer_path")
        data = tokenizer_bytes(getattr(dm, "tokenizer", None), source)
        if data is None:
            log.warning("the run's tokenizer (%s) has no tokenizer.json form; not kept in the run directory", source)
            return None
        atomic_write(run_dir / RUN_TOKENIZER, lambda f: f.write(data))
    except OSError as e:
        log.warning("could not keep the tokenizer in %s (%s); tools will look in the data cache", run_dir, e)
        return None
    entry = {"file": RUN_TOKENIZER, "sha256": sha256_bytes(data)}
    resolved[CONFIG_KEY] = entry
    log.info("tokenizer kept as %s (sha256 %s)", run_dir / RUN_TOKENIZER, entry["sha256"][:12])
    return entry


def recorded_sha256(cfg: dict) -> str | None:
    entry = cfg.get(CONFIG_KEY) if isinstance(cfg, dict) else None
    sha = entry.get("sha256") if isinstance(entry, dict) else None
    return str(sha) if sha else None


def run_copies(run_dir: Path, ckpt_path: Path | None, cfg: dict) -> list[tuple[Path, str]]:
    """Where the run's own copies would be: ``<run>/tokenizer.json``, then beside the checkpoint."""
    entry = cfg.get(CONFIG_KEY) if isinstance(cfg, dict) else None
    name = str(entry.get("file") or RUN_TOKENIZER) if isinstance(entry, dict) else RUN_TOKENIZER
    out = [(run_dir / name, "the run's copy")]
    if ckpt_path is not None:
        out.append((ckpt_path.resolve().parent / name, "the copy beside the checkpoint"))
    return out


CKPT_KEY = "smet_tokenizer"  # optional checkpoint entry: {"json": str, "sha256": str}


def checkpoint_entry(run_dir: str | os.PathLike, cfg: dict) -> dict | None:
    """``{"json": ..., "sha256": ...}`` of the run's tokenizer for embedding in a checkpoint
    (``checkpoint["smet_tokenizer"]``, e.g. from ``LMModule.on_save_checkpoint`` with
    ``self.trainer.default_root_dir``), or None when the run kept none / it does not match its sha256."""
    want = recorded_sha256(cfg)
    p = Path(run_dir) / RUN_TOKENIZER
    if not want or not p.is_file():
        return None
    data = p.read_bytes()
    if sha256_bytes(data) != want:
        return None
    return {"json": data.decode("utf-8"), "sha256": want}


def embedded_copy(ckpt: dict | None, ckpt_path: Path) -> Path | None:
    """The checkpoint's embedded tokenizer written to a private temporary file (None without one)."""
    entry = ckpt.get(CKPT_KEY) if isinstance(ckpt, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("json"), str):
        return None
    import atexit
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="smet-tokenizer-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    p = d / RUN_TOKENIZER
    p.write_text(entry["json"], encoding="utf-8")
    return p
