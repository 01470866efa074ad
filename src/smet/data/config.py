"""Validation of the ``data`` config group.

``parse_data_config`` turns a DictConfig / dict of the ``data`` group into a frozen
:class:`DataConfig`. Every bad value raises :class:`smet.errors.SmetConfigError` naming the
config key (``data.<key>``). Nothing here touches the corpus: it is cheap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from smet.errors import SmetConfigError

SOURCES = ("embedded", "local_files", "hub")
EMBEDDED_CORPORA = ("kjv", "enwiki")  # data.corpora names (smet.data.corpus.PackagedCorpus)
TOKENIZER_KINDS = ("bpe", "pretrained")
MIN_BPE_VOCAB = 257  # 256 byte symbols + <|endoftext|>
MAX_VOCAB = 2**31 - 1

_TOP_KEYS = (
    "name", "source", "path", "text_field", "hub", "tokenizer", "seq_len", "batch_size",
    "val_fraction", "max_val_sequences", "num_workers", "seed", "cache_dir",
    "corpora",            # embedded: package-shipped corpora to concatenate (default: kjv)
    "global_batch_size",  # read by the trainer (gradient accumulation), not by the data module
)
_TOKENIZER_KEYS = ("kind", "vocab_size", "name")
_HUB_KEYS = ("path", "name", "split", "val_split", "streaming")


def default_cache_dir() -> str:
    env = os.environ.get("SMET_CACHE_DIR")
    if env:
        return env
    return str(Path(os.environ.get("HOME", str(Path.home()))) / ".cache" / "smet")


@dataclass(frozen=True)
class TokenizerConfig:
    kind: str = "bpe"
    vocab_size: int = 4096
    name: str | None = None


@dataclass(frozen=True)
class HubConfig:
    path: str
    name: str | None = None
    split: str = "train"
    val_split: str = "validation"
    streaming: bool = True


@dataclass(frozen=True)
class DataConfig:
    name: str = "embedded"
    source: str = "embedded"
    path: str | None = None
    text_field: str = "text"
    hub: HubConfig | None = None
    tokenizer: TokenizerConfig = TokenizerConfig()
    seq_len: int = 256
    batch_size: int = 16
    val_fraction: float = 0.05
    max_val_sequences: int | None = 64
    num_workers: int = 0
    seed: int = 0
    cache_dir: str = ""
    corpora: tuple[str, ...] | None = None  # source=embedded: package corpora (None = kjv alone)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()


# --------------------------------------------------------------------------- helpers


def _resolve(node: Any, key: str, full: str) -> Any:
    """Read ``node[key]`` resolving interpolations; errors name the full key."""
    try:
        value = node[key]
    except MissingMandatoryValue:
        if full == "data.path":
            return None  # reported below with the local_files-specific message
        raise SmetConfigError(full, "is mandatory (???) and was not set; pass it on the command "
                              f"line, e.g. {full}=...") from None
    except OmegaConfBaseException as exc:
        msg = str(exc).splitlines()[0]
        raise SmetConfigError(full, f"cannot be resolved: {msg}") from None
    if isinstance(value, (DictConfig, ListConfig)):
        try:
            value = OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as exc:
            raise SmetConfigError(full, f"has a mandatory (???) entry: {str(exc).splitlines()[0]}") from None
        except OmegaConfBaseException as exc:
            raise SmetConfigError(full, f"cannot be resolved: {str(exc).splitlines()[0]}") from None
    return value


def _as_mapping(cfg: Any, full: str) -> DictConfig:
    if isinstance(cfg, DictConfig):
        return cfg
    if isinstance(cfg, Mapping):
        try:
            return OmegaConf.create(dict(cfg))
        except OmegaConfBaseException as exc:
            raise SmetConfigError(full, f"invalid config: {str(exc).splitlines()[0]}") from None
    raise SmetConfigError(full, f"must be a mapping, got {type(cfg).__name__}")


def _read_section(cfg: Any, prefix: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    node = _as_mapping(cfg, prefix)
    out: dict[str, Any] = {}
    for key in node.keys():
        key = str(key)
        if key.startswith("_"):
            continue  # Hydra-internal keys such as _target_
        full = f"{prefix}.{key}"
        if key not in allowed:
            raise SmetConfigError(full, f"unknown key; known keys of {prefix}: {', '.join(allowed)}")
        out[key] = _resolve(node, key, full)
    return out


def _int(value: Any, full: str, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        else:
            raise SmetConfigError(full, f"must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise SmetConfigError(full, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SmetConfigError(full, f"must be <= {maximum}, got {value}")
    return value


def _str(value: Any, full: str, allow_none: bool = False) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SmetConfigError(full, f"must be a non-empty string, got {value!r}")
    return value


def _bool(value: Any, full: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise SmetConfigError(full, f"must be true or false, got {value!r}")


# --------------------------------------------------------------------------- parse


def parse_corpora(value: Any, source: str) -> tuple[str, ...] | None:
    """``data.corpora``: null, or a non-empty list of distinct names from EMBEDDED_CORPORA
    (only with data.source=embedded)."""
    if value is None:
        return None
    if source != "embedded":
        raise SmetConfigError("data.corpora", f"applies to data.source=embedded only (got source {source!r}); "
                              "remove it or set it to null")
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, ListConfig):
        value = list(value)
    if not isinstance(value, (list, tuple)) or not value:
        raise SmetConfigError("data.corpora", f"must be a non-empty list of: {', '.join(EMBEDDED_CORPORA)}; "
                              f"got {value!r}")
    out = []
    for v in value:
        if v not in EMBEDDED_CORPORA:
            raise SmetConfigError("data.corpora", f"unknown corpus {v!r}; choose from: {', '.join(EMBEDDED_CORPORA)}")
        if v in out:
            raise SmetConfigError("data.corpora", f"lists {v!r} twice")
        out.append(v)
    return tuple(out)



def parse_data_config(cfg: Any) -> DataConfig:
    """Validate the ``data`` group; raises SmetConfigError(key, ...) on the first bad key."""
    if isinstance(cfg, DataConfig):
        return cfg
    raw = _read_section(cfg, "data", _TOP_KEYS)

    source = raw.get("source", "embedded")
    if source not in SOURCES:
        raise SmetConfigError("data.source", f"unknown source {source!r}; expected one of: "
                              f"{', '.join(SOURCES)} (presets: data=embedded, data=local_files, data=c4)")
    name = _str(raw.get("name", source), "data.name")

    path = raw.get("path")
    if source == "local_files":
        if path is None or (isinstance(path, str) and not path.strip()):
            raise SmetConfigError("data.path", "is required with data.source=local_files: set "
                                  "data.path=<file, directory or glob of .txt/.md/.jsonl/.json/.parquet>")
        if not isinstance(path, (str, os.PathLike)):
            raise SmetConfigError("data.path", f"must be a path string, got {path!r}")
        path = os.fspath(path)
    elif path is not None:
        path = os.fspath(path) if isinstance(path, (str, os.PathLike)) else str(path)

    text_field = _str(raw.get("text_field", "text"), "data.text_field")

    tok_raw = raw.get("tokenizer") or {}
    if not isinstance(tok_raw, Mapping):
        raise SmetConfigError("data.tokenizer", f"must be a mapping, got {tok_raw!r}")
    tok_raw = _read_section(tok_raw, "data.tokenizer", _TOKENIZER_KEYS)
    kind = tok_raw.get("kind", "bpe")
    if kind not in TOKENIZER_KINDS:
        raise SmetConfigError("data.tokenizer.kind", f"unknown kind {kind!r}; expected one of: "
                              f"{', '.join(TOKENIZER_KINDS)}")
    vocab_raw = tok_raw.get("vocab_size", 4096)
    if kind == "bpe":
        vocab = _int(vocab_raw, "data.tokenizer.vocab_size", MIN_BPE_VOCAB, MAX_VOCAB)
    else:  # informational for pretrained tokenizers: the real size comes from the tokenizer
        vocab = _int(vocab_raw, "data.tokenizer.vocab_size", 1, MAX_VOCAB) if vocab_raw is not None else 0
    tok_name = _str(tok_raw.get("name"), "data.tokenizer.name", allow_none=True)
    if kind == "pretrained" and tok_name is None:
        raise SmetConfigError("data.tokenizer.name", "is required with data.tokenizer.kind=pretrained "
                              "(a Hugging Face tokenizer name such as t5-base, or a local tokenizer.json)")
    tokenizer = TokenizerConfig(kind=kind, vocab_size=vocab, name=tok_name)

    hub = None
    if source == "hub":
        hub_raw = raw.get("hub")
        if not isinstance(hub_raw, Mapping):
            raise SmetConfigError("data.hub", "is required with data.source=hub, e.g. "
                                  "{path: allenai/c4, name: en, split: train, val_split: validation}")
        hub_raw = _read_section(hub_raw, "data.hub", _HUB_KEYS)
        if "path" not in hub_raw:
            raise SmetConfigError("data.hub.path", "is required (a dataset on the Hub, e.g. allenai/c4)")
        hub = HubConfig(
            path=_str(hub_raw["path"], "data.hub.path"),
            name=_str(hub_raw.get("name"), "data.hub.name", allow_none=True),
            split=_str(hub_raw.get("split", "train"), "data.hub.split"),
            val_split=_str(hub_raw.get("val_split", "validation"), "data.hub.val_split"),
            streaming=_bool(hub_raw.get("streaming", True), "data.hub.streaming"),
        )
        if kind != "pretrained":
            raise SmetConfigError("data.tokenizer.kind", "data.source=hub streams the corpus, so no BPE "
                                  "can be trained on it; use data.tokenizer.kind=pretrained "
                                  "data.tokenizer.name=<tokenizer, e.g. t5-base>")

    seq_len = _int(raw.get("seq_len", 256), "data.seq_len", 1)
    batch_size = _int(raw.get("batch_size", 16), "data.batch_size", 1)
    val_fraction = raw.get("val_fraction", 0.05)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise SmetConfigError("data.val_fraction", f"must be a number in (0, 1), got {val_fraction!r}")
    val_fraction = float(val_fraction)
    if not 0.0 < val_fraction < 1.0:
        raise SmetConfigError("data.val_fraction", f"must be in (0, 1), got {val_fraction}")
    mvs = raw.get("max_val_sequences", 64)
    max_val = None if mvs is None else _int(mvs, "data.max_val_sequences", 1)
    num_workers = _int(raw.get("num_workers", 0), "data.num_workers", 0)
    seed = _int(raw.get("seed", 0), "data.seed")
    cache_dir = raw.get("cache_dir")
    if cache_dir is None:
        cache_dir = default_cache_dir()
    cache_dir = _str(os.fspath(cache_dir) if isinstance(cache_dir, os.PathLike) else cache_dir,
                     "data.cache_dir")
    check_cache_dir(cache_dir)

    corpora = parse_corpora(raw.get("corpora"), source)

    return DataConfig(
        corpora=corpora, name=name, source=source, path=path, text_field=text_field, hub=hub, tokenizer=tokenizer,
        seq_len=seq_len, batch_size=batch_size, val_fraction=val_fraction, max_val_sequences=max_val,
        num_workers=num_workers, seed=seed, cache_dir=cache_dir,
    )


def check_cache_dir(cache_dir: str) -> None:
    """``data.cache_dir`` must be a directory or creatable as one (a complete read-only cache is fine:
    entries are only written when missing or broken, and that case names the path)."""
    p = Path(cache_dir).expanduser()
    if p.exists() and not p.is_dir():
        raise SmetConfigError("data.cache_dir", f"{p} exists and is not a directory")
    if not p.exists():
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SmetConfigError("data.cache_dir", f"cannot create {p} ({e.strerror or e})") from None
