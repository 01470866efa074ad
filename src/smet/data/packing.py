"""Packing documents into fixed-length windows, and the resumable, sharded train stream.

Packing: documents are tokenised, each followed by ``<|endoftext|>``, concatenated into one
token stream and cut into non-overlapping windows of ``seq_len + 1`` tokens (the remainder
is dropped). The model reads ``x = w[:-1]``, ``y = w[1:]``.

Train stream (:class:`StreamBatchSampler`): an infinite, deterministic sequence of window
indices. Epoch ``e`` is ``torch.randperm(n, generator=torch.Generator().manual_seed(seed + e))``
and the epochs are laid end to end. Global batch ``b`` covers stream positions
``[b*B*W, (b+1)*B*W)``; rank ``r`` takes ``[b*B*W + r*B, b*B*W + (r+1)*B)``. Starting at
``start_batch = k`` therefore yields exactly batches ``k, k+1, ...`` of a fresh stream, and
the W ranks of one global batch read disjoint positions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else int32."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.int32)


def encode_to_stream(tokenizer, texts: Sequence[str], dtype: np.dtype, chunk: int = 256) -> np.ndarray:
    """Tokenise ``texts`` and concatenate them, each followed by the EOT id, into one array."""
    parts: list[np.ndarray] = []
    eot = np.array([tokenizer.eot_id], dtype=dtype)
    for start in range(0, len(texts), chunk):
        for ids in tokenizer.encode_batch(texts[start:start + chunk]):
            parts.append(np.asarray(ids, dtype=dtype))
            parts.append(eot)
    if not parts:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(parts)


def windows(stream: np.ndarray, window: int) -> np.ndarray:
    """View of ``stream`` as (n, window) non-overlapping windows (remainder dropped)."""
    n = len(stream) // window
    return stream[: n * window].reshape(n, window)


def evenly_spaced(n: int, cap: int | None) -> np.ndarray:
    """Deterministic subset of ``range(n)``: all of it, or ``cap`` evenly spaced indices."""
    if cap is None or n <= cap:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, cap).round().astype(np.int64))


class StreamBatchSampler(Sampler[list[int]]):
    """Infinite batch sampler over ``num_sequences`` windows (see module docstring). No ``__len__``."""

    def __init__(self, num_sequences: int, batch_size: int, seed: int, world_size: int = 1,
                 rank: int = 0, start_batch: int = 0):
        if num_sequences < 1:
            raise ValueError("num_sequences must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if start_batch < 0:
            raise ValueError("start_batch must be >= 0")
        self.n = int(num_sequences)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.start_batch = int(start_batch)
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        perm = self._perms.get(epoch)
        if perm is None:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.n, generator=gen)
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = perm
        return perm

    def position_index(self, pos: int) -> int:
        epoch, offset = divmod(pos, self.n)
        return int(self._perm(epoch)[offset])

    def batch_indices(self, batch: int) -> list[int]:
        """Window indices of global batch ``batch`` for this rank."""
        first = batch * self.batch_size * self.world_size + self.rank * self.batch_size
        return [self.position_index(p) for p in range(first, first + self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        batch = self.start_batch
        while True:
            yield self.batch_indices(batch)
            batch += 1


class PackedSequences(Dataset):
    """Map-style view of a packed token file as (n, window) int64 rows.

    Holds the .npy path and memory-maps it lazily, so DataLoader workers do not receive a
    copy of the array when the dataset is pickled.
    """

    def __init__(self, path: str | Path, window: int, num_sequences: int | None = None):
        self.path = str(path)
        self.window = int(window)
        self._arr: np.ndarray | None = None
        self.n = num_sequences if num_sequences is not None else len(self._array())

    def _array(self) -> np.ndarray:
        if self._arr is None:
            self._arr = windows(np.load(self.path, mmap_mode="r"), self.window)
        return self._arr

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self._array()[idx], dtype=np.int64))

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        rows = self._array()[np.asarray(indices, dtype=np.int64)]
        return torch.from_numpy(rows.astype(np.int64))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arr"] = None
        return state


def identity_collate(batch: torch.Tensor) -> torch.Tensor:
    """``PackedSequences.__getitems__`` already returns the stacked (B, window) batch."""
    return batch
