"""Using a trained checkpoint directly: validation loss / perplexity (``smet-eval``) and text
generation (``smet-generate``).

Both rebuild the model with :func:`smet.export.source.load_run` (integrity check, hyper-parameters
from the checkpoint, dense or sparse layers as stored) and take the tokenizer from the run itself
(``<run>/tokenizer.json``; see :mod:`smet.export.run_tokenizer`), falling back to the data cache for
older runs.

    from smet.export.infer import load_for_inference, evaluate, generate
    run, tok = load_for_inference("outputs/2026-01-31/12-00-00-000000", device="cpu")
    evaluate(run, split="val")                      # {"loss": ..., "ppl": ..., "tokens": ...}
    generate(run, tok, "And God said", max_new_tokens=40, temperature=0.0)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from smet.export.source import ExportError, LoadedRun, _parse_data, find_tokenizer, load_run

log = logging.getLogger("smet.export")

DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 50
SPLITS = ("val", "train")
PRECISIONS = ("auto", "32", "bf16-mixed", "bf16-true")


# ----------------------------------------------------------------------------- loading


def pick_device(device: str | None) -> torch.device:
    """``cpu``, ``cuda``/``cuda:N``, or None/``auto`` (CUDA when available)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ExportError(f"--device: unknown device {device!r}; choose cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ExportError(f"--device: {device} requested but CUDA is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ExportError(f"--device: unsupported device {device!r}; choose cpu or cuda")
    return dev


@dataclass
class RunTokenizer:
    """The run's tokenizer: a ``tokenizers.Tokenizer`` (or a ``transformers`` tokenizer) + its EOT id."""

    raw: Any
    eot_id: int | None
    source: str

    def encode(self, text: str) -> list[int]:
        if hasattr(self.raw, "encode") and hasattr(self.raw, "get_vocab_size"):  # tokenizers.Tokenizer
            return list(self.raw.encode(text, add_special_tokens=False).ids)
        return list(self.raw(text, add_special_tokens=False)["input_ids"])  # transformers

    def decode(self, ids: list[int]) -> str:
        return self.raw.decode(list(ids), skip_special_tokens=False)


def load_tokenizer(run: LoadedRun) -> RunTokenizer:
    """The run's tokenizer (see :func:`smet.export.source.find_tokenizer`); for a pretrained Hub
    tokenizer that has no tokenizer.json form, the name from the run config. Raises ExportError."""
    src = find_tokenizer(run)
    if src.path is not None:
        from tokenizers import Tokenizer

        return RunTokenizer(Tokenizer.from_file(str(src.path)), src.eot_id, f"{src.path} ({src.how})")
    tok_cfg = ((run.cfg.get("data") or {}).get("tokenizer") or {})
    if tok_cfg.get("kind") == "pretrained" and tok_cfg.get("name"):
        from smet.data.tokenizer import load_pretrained
        from smet.errors import SmetConfigError

        try:
            h = load_pretrained(str(tok_cfg["name"]))
        except SmetConfigError as e:
            raise ExportError(f"{run.ckpt_path}: {src.how}; and {e}") from None
        return RunTokenizer(h.raw, h.eot_id, f"{tok_cfg['name']} (data.tokenizer.name)")
    raise ExportError(f"{run.ckpt_path}: {src.how}")


def load_for_inference(path: str | os.PathLike, device: str | None = "cpu",
                       with_tokenizer: bool = True) -> tuple[LoadedRun, RunTokenizer | None]:
    """``load_run`` + the model moved to ``device`` (eval mode, no grads) + the run's tokenizer."""
    dev = pick_device(device)
    run = load_run(path)
    tok = load_tokenizer(run) if with_tokenizer else None
    run.model.to(dev)
    from smet.export.source import rebuild_rotary

    rebuild_rotary(run.model, dev)
    return run, tok


def _autocast(run: LoadedRun, precision: str, device: torch.device):
    """The precision the run trained (and validated) in, or the one asked for."""
    if precision == "auto":
        precision = str(((run.cfg.get("trainer") or {}).get("precision")) or "32")
        precision = {"bf16": "bf16-mixed", "32-true": "32"}.get(precision, precision)
    if precision == "bf16-mixed":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16), precision
    if precision == "bf16-true":
        run.model.to(torch.bfloat16)
        return contextlib.nullcontext(), precision
    return contextlib.nullcontext(), "32"


# ----------------------------------------------------------------------------- eval


def eval_data_config(run: LoadedRun, tokenizer_path: Path | None, cache_dir: str | None = None) -> tuple[Any, str]:
    """The run's data config, for re-building its validation windows here.

    The data cache: ``cache_dir`` when given, else ``$SMET_CACHE_DIR``, else the run's
    ``data.cache_dir`` when that directory exists, else the default cache. The tokenizer: the run's
    ``tokenizer.json`` (``tokenizer_path``). When the cache already holds the identical BPE file
    (same sha256) the config is used as the run had it (cached token streams reused); otherwise the
    run's file is used as a local pretrained tokenizer, so nothing is ever retrained: the token ids,
    hence the windows, are those of the run. Returns (DataConfig, how the tokenizer was chosen).
    """
    from smet.data.config import default_cache_dir, parse_data_config

    data = dict(run.cfg.get("data") or {})
    if cache_dir:
        data["cache_dir"] = str(cache_dir)
    elif os.environ.get("SMET_CACHE_DIR"):
        data["cache_dir"] = os.environ["SMET_CACHE_DIR"]
    elif not (data.get("cache_dir") and Path(str(data["cache_dir"])).expanduser().is_dir()):
        data["cache_dir"] = default_cache_dir()
    dcfg = _parse_data(parse_data_config, data)
    if tokenizer_path is None:
        return dcfg, "as the run config says (no tokenizer.json of the run found)"
    tok = dict(data.get("tokenizer") or {})
    if tok.get("kind", "bpe") == "bpe":
        from smet.data.corpus import make_corpus
        from smet.data.tokenizer import bpe_cache_path
        from smet.export.run_tokenizer import file_sha256

        cached = bpe_cache_path(dcfg.cache_path, make_corpus(dcfg).fingerprint(), dcfg.tokenizer.vocab_size)
        if cached.is_file() and file_sha256(cached) == file_sha256(tokenizer_path):
            return dcfg, f"the identical BPE cache file {cached}"
    data["tokenizer"] = {"kind": "pretrained", "name": str(tokenizer_path),
                         "vocab_size": int(tok.get("vocab_size") or 0) or None}
    return _parse_data(parse_data_config, data), f"the run's {tokenizer_path}"


def eval_sequences(run: LoadedRun, split: str = "val", cache_dir: str | None = None) -> tuple[torch.Tensor, dict]:
    """The windows ``(n, seq_len + 1)`` the run validates on (``val``: the data module's fixed list,
    as one device sees it), or as many evenly spaced train windows (``train``)."""
    from smet.data import build_datamodule
    from smet.errors import SmetConfigError

    if split not in SPLITS:
        raise ExportError(f"--split: unknown split {split!r}; choose {', '.join(SPLITS)}")
    src = find_tokenizer(run)
    try:
        dcfg, how = eval_data_config(run, src.path, cache_dir)
        dm = build_datamodule(dcfg).prepare()
    except SmetConfigError as e:
        raise ExportError(f"cannot rebuild the run's data here ({e})") from None
    if dm.vocab_size != run.vocab_size:
        raise ExportError(f"the data's tokenizer has {dm.vocab_size} tokens, the model {run.vocab_size}")
    val = dm.val_sequences(world_size=1, rank=0)
    if split == "val":
        seqs = val
    else:
        if dcfg.source == "hub":
            raise ExportError("--split train: not available for data.source=hub (the train split is streamed)")
        import numpy as np

        from smet.data.packing import evenly_spaced

        train = dm.train_sequences()
        seqs = torch.from_numpy(np.asarray(train[evenly_spaced(len(train), len(val))], dtype=np.int64))
    info = {"tokenizer": how, "data": dcfg.name, "cache_dir": str(dcfg.cache_path), "batch_size": dcfg.batch_size}
    return seqs, info


def default_batches(run: LoadedRun) -> int | None:
    """trainer.limit_val_batches of the run when it is a count (what its validation used), else None (all)."""
    lim = (run.cfg.get("trainer") or {}).get("limit_val_batches")
    if isinstance(lim, int) and not isinstance(lim, bool) and lim >= 1:
        return lim
    return None


@torch.no_grad()
def evaluate(run: LoadedRun, split: str = "val", batches: int | None = None, batch_size: int | None = None,
             precision: str = "auto", cache_dir: str | None = None) -> dict:
    """Mean next-token cross-entropy over the run's validation windows, as ``LMModule`` computes
    ``val/loss`` (batches of ``data.batch_size``; each batch's mean loss weighted by its sequences)."""
    t0 = time.perf_counter()
    seqs, info = eval_sequences(run, split, cache_dir)
    bs = int(batch_size or info["batch_size"])
    n_batches = math.ceil(len(seqs) / bs)
    if batches is None:
        batches = default_batches(run)
    if batches is not None:
        n_batches = min(n_batches, int(batches))
    model = run.model
    device = next(model.parameters()).device
    ctx, precision = _autocast(run, precision, device)
    total, count, tokens = 0.0, 0, 0
    with ctx:
        for i in range(n_batches):
            b = seqs[i * bs:(i + 1) * bs].to(device)
            loss = model.loss(b[:, :-1], b[:, 1:])
            total += float(loss.double()) * b.shape[0]
            count += b.shape[0]
            tokens += b[:, 1:].numel()
    loss = total / count
    return {"split": split, "loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": tokens, "sequences": count,
            "batches": n_batches, "batch_size": bs, "seq_len": int(seqs.shape[1] - 1), "device": str(device),
            "precision": precision, "global_step": run.global_step, "checkpoint": str(run.ckpt_path),
            "seconds": round(time.perf_counter() - t0, 2), **info}


# ----------------------------------------------------------------------------- generation


@torch.no_grad()
def generate_ids(model, prompt_ids: list[int], max_new_tokens: int, temperature: float = DEFAULT_TEMPERATURE,
                 top_k: int | None = DEFAULT_TOP_K, seed: int | None = 0, stop_id: int | None = None) -> list[int]:
    """``max_new_tokens`` new token ids after ``prompt_ids`` (fewer only when ``stop_id`` is drawn).

    Full forward per token (no KV cache), the input cropped to the model's context
    (``max_seq_len`` = the run's ``data.seq_len``). ``temperature`` 0: greedy (argmax). Otherwise
    softmax(logits / temperature) restricted to the ``top_k`` most likely tokens (None/0: all), drawn
    with a CPU generator seeded by ``seed``, so a seed gives the same text on CPU and GPU up to
    floating-point ties.
    """
    if not prompt_ids:
        raise ValueError("generate_ids needs at least one prompt token")
    device = next(model.parameters()).device
    ctx = int(model.config.max_seq_len)
    x = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed) if seed is not None else torch.seed())
    out: list[int] = []
    for _ in range(int(max_new_tokens)):
        logits = model(x[:, -ctx:])[0, -1].float()
        if temperature == 0:
            nxt = int(torch.argmax(logits))
        else:
            logits = logits / float(temperature)
            if top_k and top_k < logits.numel():
                kth = torch.topk(logits, int(top_k)).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1).cpu()
            nxt = int(torch.multinomial(probs, 1, generator=gen))
        out.append(nxt)
        x = torch.cat([x, torch.tensor([[nxt]], dtype=torch.long, device=device)], dim=1)
        if stop_id is not None and nxt == stop_id:
            break
    return out


def generate(run: LoadedRun, tok: RunTokenizer, prompt: str, max_new_tokens: int,
             temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = DEFAULT_TOP_K, seed: int | None = 0,
             stop_at_eot: bool = False) -> dict:
    """Continue ``prompt``. The model sees ``<|endoftext|>`` + the prompt tokens (documents follow an
    end-of-text token in training); the text returned is prompt + continuation, special tokens kept."""
    t0 = time.perf_counter()
    ids = tok.encode(prompt)
    context = ([tok.eot_id] if tok.eot_id is not None else []) + ids
    if not context:
        raise ExportError("--prompt: empty, and the tokenizer has no end-of-text token to start from")
    if seed is None:
        seed = int(torch.seed() % (2**31))
    new = generate_ids(run.model, context, max_new_tokens, temperature, top_k, seed,
                       stop_id=tok.eot_id if stop_at_eot else None)
    return {"text": tok.decode(ids + new), "prompt_tokens": len(ids), "new_tokens": len(new), "new_ids": new,
            "seed": seed, "temperature": temperature, "top_k": top_k,
            "seconds": round(time.perf_counter() - t0, 3)}


__all__ = ["DEFAULT_TEMPERATURE", "DEFAULT_TOP_K", "RunTokenizer", "evaluate", "eval_sequences", "generate",
           "generate_ids", "load_for_inference", "load_tokenizer", "pick_device"]
