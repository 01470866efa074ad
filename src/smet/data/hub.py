"""Hugging Face Hub corpora (e.g. ``data=c4``): reachability check and streaming packer.

:func:`check_hub_reachable` must run before any Hub call: it fails in well under 5 s when
``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is truthy or when no
TCP connection (plus a TLS handshake, unverified, for https endpoints) to the Hub
(``HF_ENDPOINT``, default huggingface.co:443; the HTTPS proxy if one is configured) completes
within ``timeout`` seconds, instead of letting ``datasets`` retry for tens of seconds.

Streaming train data (:class:`HubTrainStream`): each rank reads its part of the split
(``datasets.distributed.split_dataset_by_node``); inside DataLoader workers ``datasets``
further splits the shards between workers. Each (rank, worker) packs its documents into
``seq_len + 1`` windows and yields whole ``(batch_size, seq_len + 1)`` batches; worker ``w``
of ``nw`` produces the rank's batches ``j`` with ``j % nw == w``. Resuming at batch ``k``
re-reads and skips the batches before ``k`` (cost grows with the position; exact given the
same world size and ``num_workers``). Epoch ``e`` reshuffles with ``seed`` via ``set_epoch``.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from typing import Iterator
from urllib.parse import urlparse

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from smet.errors import SmetConfigError

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUTHY = {"1", "true", "yes", "on", "y", "t"}
SHUFFLE_BUFFER = 10_000


def _hub_address() -> tuple[str, int, str, bool]:
    """(host, port, description, tls) to probe: the HTTPS proxy if set, else the Hub endpoint."""
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        proxy = os.environ.get(var)
        if proxy:
            url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
            if url.hostname:
                port = url.port or (443 if url.scheme == "https" else 80)
                return url.hostname, port, f"proxy {url.hostname}:{port} ({var})", False
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    host = url.hostname or "huggingface.co"
    tls = url.scheme != "http"
    port = url.port or (443 if tls else 80)
    return host, port, f"{host}:{port}", tls


def check_hub_reachable(timeout: float = 3.0, key: str = "data.source", what: str = "data=c4",
                        hint: str = "data=embedded (default) or data=local_files data.path=<file, directory or glob>",
                        ) -> None:
    """Raise SmetConfigError(key, ...) fast if the Hugging Face Hub cannot be reached.

    Offline env vars fail immediately; otherwise one TCP connect (DNS included) to the Hub,
    followed by a TLS handshake for https, must succeed within ``timeout`` seconds in total
    (enforced with a watchdog thread, because name resolution ignores socket timeouts).
    """
    def fail(reason: str) -> SmetConfigError:
        return SmetConfigError(
            key,
            f"{what} needs network access to the Hugging Face Hub ({reason}); offline use {hint}",
        )

    for var in _OFFLINE_VARS:
        value = os.environ.get(var)
        if value is not None and value.strip().lower() in _TRUTHY:
            raise fail(f"{var}={value} is set")

    host, port, desc, tls = _hub_address()
    result: dict[str, object] = {}

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                if tls:  # something must answer a TLS handshake (not just accept TCP)
                    ctx = ssl.create_default_context()
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                    with ctx.wrap_socket(sock, server_hostname=host):
                        pass
                result["ok"] = True
        except (OSError, ssl.SSLError) as exc:
            result["error"] = exc

    thread = threading.Thread(target=probe, name="smet-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not result.get("ok"):
        err = result.get("error")
        reason = f"cannot connect to {desc}: {err}" if err else f"no connection to {desc} within {timeout:g}s"
        raise fail(reason)


class HubTexts:
    """Picklable callable ``(epoch) -> iterator of texts`` over one split of a Hub dataset."""

    def __init__(self, hub, split: str, text_field: str, seed: int, shuffle: bool,
                 world_size: int = 1, rank: int = 0, cache_dir: str | None = None):
        self.hub = hub
        self.split = split
        self.text_field = text_field
        self.seed = seed
        self.shuffle = shuffle
        self.world_size = world_size
        self.rank = rank
        self.cache_dir = cache_dir

    def __call__(self, epoch: int = 0) -> Iterator[str]:
        import datasets
        from datasets.distributed import split_dataset_by_node

        ds = datasets.load_dataset(self.hub.path, self.hub.name, split=self.split,
                                   streaming=self.hub.streaming, cache_dir=self.cache_dir)
        if not self.hub.streaming:
            ds = ds.to_iterable_dataset(num_shards=max(1, min(64, len(ds) // 1000)))
        if self.shuffle:
            ds = ds.shuffle(seed=self.seed, buffer_size=SHUFFLE_BUFFER)
            ds.set_epoch(epoch)
        if self.world_size > 1:
            ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
        for row in ds:
            if self.text_field not in row:
                raise SmetConfigError("data.text_field", f"field {self.text_field!r} not in rows of "
                                      f"{self.hub.path} (fields: {', '.join(row)})")
            text = row[self.text_field]
            if text:
                yield text


def pack_windows(texts: Iterator[str], tokenizer, window: int, dtype=np.int64,
                 doc_batch: int = 64) -> Iterator[np.ndarray]:
    """Tokenise a stream of texts (EOT after each) and yield consecutive windows."""
    buf = np.zeros(0, dtype=dtype)
    pending: list[str] = []

    def flush(buf: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        parts = [buf]
        for ids in tokenizer.encode_batch(pending):
            parts.append(np.asarray(ids, dtype=dtype))
            parts.append(np.array([tokenizer.eot_id], dtype=dtype))
        pending.clear()
        buf = np.concatenate(parts)
        n = len(buf) // window
        out = [buf[i * window:(i + 1) * window] for i in range(n)]
        return buf[n * window:], out

    for text in texts:
        pending.append(text)
        if len(pending) >= doc_batch:
            buf, out = flush(buf)
            yield from out
    if pending:
        buf, out = flush(buf)
        yield from out


class HubTrainStream(IterableDataset):
    """Infinite stream of packed (batch_size, seq_len + 1) LongTensor batches (see module doc)."""

    def __init__(self, texts, tokenizer, seq_len: int, batch_size: int, start_batch: int = 0):
        self.texts = texts            # callable (epoch) -> iterator of texts, already rank-sharded
        self.tokenizer = tokenizer
        self.window = seq_len + 1
        self.batch_size = batch_size
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        skip = max(0, -(-(self.start_batch - wid) // nw))  # batches of this worker before start_batch
        produced = 0
        epoch = 0
        while True:
            rows: list[np.ndarray] = []
            got_any = False
            for win in pack_windows(self.texts(epoch), self.tokenizer, self.window):
                got_any = True
                rows.append(win)
                if len(rows) == self.batch_size:
                    if produced >= skip:
                        yield torch.from_numpy(np.stack(rows).astype(np.int64))
                    produced += 1
                    rows = []
            if not got_any:
                return  # this worker received no data (fewer shards than workers)
            epoch += 1


def first_windows(texts: Iterator[str], tokenizer, window: int, limit: int) -> np.ndarray:
    """The first ``limit`` packed windows of a text stream, as an (n, window) int64 array."""
    rows: list[np.ndarray] = []
    for win in pack_windows(texts, tokenizer, window):
        rows.append(win)
        if len(rows) >= limit:
            break
    if not rows:
        return np.zeros((0, window), dtype=np.int64)
    return np.stack(rows).astype(np.int64)
