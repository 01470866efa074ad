"""A streaming safetensors writer: tensors are produced and written one at a time.

``safetensors.torch.save_file`` needs every tensor in memory at once; exporting a large sparse
model densifies its layers, so that would hold the whole dense model. The format is simple (an
8-byte little-endian header length, a JSON header padded with spaces to a multiple of 8 bytes, then
the raw little-endian tensor bytes at the offsets the header names), so the header is computed from
the declared dtypes and shapes up front and each tensor is materialised, written and freed in turn.
Files are read back with the ``safetensors`` library (and by ``transformers``).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch

from smet.atomic import atomic_write

DTYPE_CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


@dataclass
class Entry:
    """One tensor of the file: name, dtype, shape and a function that produces it when written."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    produce: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def _header(entries: list[Entry], metadata: Mapping[str, str] | None) -> bytes:
    head: dict = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise TypeError(f"safetensors metadata must map str to str; bad keys: {bad}")
        head["__metadata__"] = dict(metadata)
    off = 0
    for e in entries:
        if e.dtype not in DTYPE_CODES:
            raise TypeError(f"{e.name}: dtype {e.dtype} is not supported by the safetensors writer")
        head[e.name] = {"dtype": DTYPE_CODES[e.dtype], "shape": list(e.shape), "data_offsets": [off, off + e.nbytes]}
        off += e.nbytes
    raw = json.dumps(head, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def write_safetensors(path: str | os.PathLike, entries: Iterable[Entry],
                      metadata: Mapping[str, str] | None = None) -> int:
    """Write ``entries`` (in this order) to ``path`` atomically; returns the file size in bytes.

    Entries are ordered by element size (largest first) so that every tensor starts at an offset
    aligned to its element size, as the ``safetensors`` library does.
    """
    if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
        raise RuntimeError("the safetensors writer assumes a little-endian machine")
    entries = list(entries)
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names")
    entries.sort(key=lambda e: -torch.empty((), dtype=e.dtype).element_size())  # stable
    header = _header(entries, metadata)
    def write(f) -> None:
        f.write(header)
        for e in entries:
            t = e.produce()
            if t.dtype != e.dtype or tuple(t.shape) != tuple(e.shape):
                raise RuntimeError(f"{e.name}: produced {t.dtype} {tuple(t.shape)}, declared "
                                   f"{e.dtype} {tuple(e.shape)}")
            t = t.detach().to("cpu").contiguous()
            if t.numel():
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
            del t

    path = atomic_write(path, write)
    return path.stat().st_size


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (without loading any tensor)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})
