"""Tokenizers: a byte-level BPE trained on the train split (cached), or a pretrained one.

BPE cache: ``<cache_dir>/tokenizers/<key>-bpe<vocab>.json`` where ``key`` is a hash of the
corpus fingerprint (which covers the content and the train/val split parameters) and the
training recipe. The file is the ``tokenizers`` JSON serialisation, written atomically;
a later :func:`load_or_train_bpe` with the same key loads it instead of retraining.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from smet.data.cache import atomic_write_text, file_lock, sha256_hex, writable_dir
from smet.errors import SmetConfigError

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"
# Bump when the BPE training recipe changes (invalidates cached tokenizers).
BPE_RECIPE = "bytelevel-bpe-v1:min_freq=2:no_prefix_space"
_EOT_CANDIDATES = (EOT, "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>", "[SEP]")


@dataclass
class TokenizerHandle:
    """Uniform view of a tokenizer: encode texts, end-of-text id, vocabulary size."""

    raw: Any                       # tokenizers.Tokenizer, or a transformers tokenizer
    eot_id: int
    vocab_size: int
    fingerprint: str               # sha256 of the serialised tokenizer
    path: str | None = None        # cache file (bpe) or local file / hub name (pretrained)
    trained: bool = False          # True when this call trained it (cache miss)
    train_seconds: float = 0.0

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens (documents are joined by EOT later)."""
        raw = self.raw
        if _is_hf_tokenizers(raw):
            fn = getattr(raw, "encode_batch_fast", None) or raw.encode_batch
            return [enc.ids for enc in fn(list(texts), add_special_tokens=False)]
        return list(raw(list(texts), add_special_tokens=False)["input_ids"])  # transformers


def _is_hf_tokenizers(obj: Any) -> bool:
    from tokenizers import Tokenizer

    return isinstance(obj, Tokenizer)


# --------------------------------------------------------------------------- BPE


def train_bpe(texts: Sequence[str], vocab_size: int):
    """Train a byte-level BPE (``tokenizers``) on ``texts`` with special token ``<|endoftext|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def bpe_cache_path(cache_dir: Path, corpus_fingerprint: str, vocab_size: int) -> Path:
    key = sha256_hex(corpus_fingerprint, BPE_RECIPE)[:16]
    return Path(cache_dir) / "tokenizers" / f"{key}-bpe{vocab_size}.json"


def _handle_from_bpe(tok, path: Path, trained: bool, seconds: float) -> TokenizerHandle:
    eot = tok.token_to_id(EOT)
    if eot is None:  # pragma: no cover - only with a foreign file in the cache
        raise RuntimeError(f"cached tokenizer {path} lacks the special token {EOT}; delete it")
    return TokenizerHandle(raw=tok, eot_id=int(eot), vocab_size=int(tok.get_vocab_size(with_added_tokens=True)),
                           fingerprint=sha256_hex(tok.to_str()), path=str(path), trained=trained,
                           train_seconds=seconds)


def load_or_train_bpe(cache_dir: Path, corpus_fingerprint: str, vocab_size: int,
                      get_train_texts: Callable[[], Sequence[str]]) -> TokenizerHandle:
    """Load the cached BPE for (corpus, vocab) or train it on ``get_train_texts()`` and cache it."""
    from tokenizers import Tokenizer

    path = bpe_cache_path(cache_dir, corpus_fingerprint, vocab_size)
    with file_lock(path):
        if path.is_file():
            try:
                tok = Tokenizer.from_file(str(path))
                if tok.get_vocab_size() < 2:
                    raise ValueError("empty vocabulary")
                log.info("loaded cached tokenizer %s", path)
                return _handle_from_bpe(tok, path, trained=False, seconds=0.0)
            except Exception as e:  # truncated or garbage file: rebuild it (or say why we cannot)
                reason = str(e).strip().splitlines()[0][:100] if str(e).strip() else e.__class__.__name__
                if not writable_dir(path.parent):
                    raise SmetConfigError("data.cache_dir", f"cached tokenizer {path} is unreadable ({reason}) and "
                                                            "the cache is read-only; delete the file or point "
                                                            "data.cache_dir at a writable cache") from None
                log.warning("cached tokenizer %s is unreadable (%s); training it again", path, reason)
        texts = get_train_texts()
        t0 = time.perf_counter()
        tok = train_bpe(texts, vocab_size)
        seconds = time.perf_counter() - t0
        atomic_write_text(path, tok.to_str())
        log.info("trained byte-level BPE (vocab %d) on %d documents in %.1fs -> %s",
                 tok.get_vocab_size(), len(texts), seconds, path)
        # Reload what is on disk so every process uses byte-identical tokenizers.
        tok = Tokenizer.from_file(str(path))
        return _handle_from_bpe(tok, path, trained=True, seconds=seconds)


# --------------------------------------------------------------------------- pretrained


def _find_eot(tok: Any) -> int | None:
    if _is_hf_tokenizers(tok):
        for cand in _EOT_CANDIDATES:
            idx = tok.token_to_id(cand)
            if idx is not None:
                return int(idx)
        return None
    for attr in ("eos_token_id", "sep_token_id"):
        idx = getattr(tok, attr, None)
        if idx is not None:
            return int(idx)
    return None


def load_pretrained(name: str, key: str = "data.tokenizer.name") -> TokenizerHandle:
    """A pretrained tokenizer: a local tokenizer.json (file or directory) or a Hub name.

    Hub names use ``transformers.AutoTokenizer`` when installed, else
    ``tokenizers.Tokenizer.from_pretrained``; reachability is checked first so that an
    offline machine fails in seconds.
    """
    from tokenizers import Tokenizer

    local = Path(name).expanduser()
    if local.is_dir() and (local / "tokenizer.json").is_file():
        local = local / "tokenizer.json"
    if local.is_file():
        try:
            tok: Any = Tokenizer.from_file(str(local))
        except Exception as exc:  # noqa: BLE001 - truncated / not a tokenizer.json / unreadable
            why = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
            raise SmetConfigError(key, f"{local} is not a readable tokenizer.json ({why})") from None
        source = str(local)
    else:
        from smet.data.hub import check_hub_reachable

        check_hub_reachable(key=key, what=f"data.tokenizer.name={name}",
                            hint="data.tokenizer.kind=bpe (trained locally) or a local tokenizer.json path")
        try:
            from transformers import AutoTokenizer
        except ImportError:
            AutoTokenizer = None  # noqa: N806
        try:
            tok = AutoTokenizer.from_pretrained(name) if AutoTokenizer is not None else Tokenizer.from_pretrained(name)
        except Exception as exc:  # noqa: BLE001
            raise SmetConfigError(key, f"cannot load pretrained tokenizer {name!r}: "
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        source = name
    eot = _find_eot(tok)
    if eot is None:
        raise SmetConfigError(key, f"tokenizer {name!r} has no end-of-text token (looked for eos/sep and "
                              f"{', '.join(_EOT_CANDIDATES)}); it is needed to separate documents")
    if _is_hf_tokenizers(tok):
        vocab = int(tok.get_vocab_size(with_added_tokens=True))
        serial = tok.to_str()
    else:
        vocab = int(len(tok))
        backend = getattr(tok, "backend_tokenizer", None)
        serial = backend.to_str() if backend is not None else repr(sorted(tok.get_vocab().items()))
    return TokenizerHandle(raw=tok, eot_id=eot, vocab_size=vocab, fingerprint=sha256_hex(name, serial),
                           path=source)
