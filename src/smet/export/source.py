"""Reading a training checkpoint back into our model, and finding the run's tokenizer.

A checkpoint is a Lightning ``.ckpt`` (a torch zip file) with ``state_dict`` (keys
``model.<module path>``), ``hyper_parameters`` = ``{"cfg": resolved run config, "vocab_size": int}``
and, for sparse runs, ``smet_sparse`` = the controller state (``update_count``, ``n_live`` per layer).
The model is rebuilt from the config on the ``meta`` device (no init, no memory) and the checkpoint
tensors, memory-mapped, are assigned into it: exporting a large model never holds a second copy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from smet.checkpoints import checkpoint_problem
from smet.errors import SmetInputError

log = logging.getLogger("smet.export")


class ExportError(SmetInputError):
    """Bad input for the exporter (missing/corrupt checkpoint, unusable --out ...): one clear line
    (a :class:`~smet.errors.SmetConfigError`; ``key`` is the leading path or option)."""


# ----------------------------------------------------------------------------- locating


def _ckpt_candidates(directory: Path) -> list[Path]:
    cands = [directory / "checkpoints" / "last.ckpt", *directory.glob("hpc_ckpt_*.ckpt")]
    cands = [p for p in cands if p.is_file()]
    if not cands:  # step checkpoints, or a checkpoints/ directory passed directly
        cands = [p for p in [*(directory / "checkpoints").glob("*.ckpt"), *directory.glob("*.ckpt")] if p.is_file()]
    return cands


def _ckpt_candidates_all(directory: Path) -> list[Path]:
    return [p for p in directory.glob("*.ckpt") if p.is_file()]


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A ``.ckpt`` file as given, or a run directory's newest checkpoint (``checkpoints/last.ckpt``
    or a Lightning ``hpc_ckpt_*.ckpt``; else the newest ``*.ckpt`` under it)."""
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise ExportError(f"{p}: no such checkpoint file or run directory")
    if p.is_dir():
        if (p / "checkpoint").is_dir() or (p / "latest").is_file():
            raise ExportError(f"{p}: a DeepSpeed checkpoint directory; convert it to one file first "
                              "(lightning.pytorch.utilities.deepspeed.convert_zero_checkpoint_to_fp32_state_dict)")
        cands = _ckpt_candidates(p)
        if not cands:
            raise ExportError(f"{p}: no checkpoint found (looked for checkpoints/last.ckpt, hpc_ckpt_*.ckpt, "
                              "checkpoints/*.ckpt and *.ckpt)")
        return max(cands, key=lambda c: c.stat().st_mtime)
    return p


def run_dir_of(ckpt: Path) -> Path:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/x.ckpt`` or ``<run>/hpc_ckpt_n.ckpt``)."""
    parent = ckpt.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def load_checkpoint(path: Path) -> dict:
    """``torch.load`` (memory-mapped, ``weights_only`` first) after an integrity check."""
    if path.is_dir():
        raise ExportError(f"{path}: a DeepSpeed checkpoint directory; convert it first with Lightning's "
                          "convert_zero_checkpoint_to_fp32_state_dict (DeepSpeed runs are dense)")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ExportError(f"{path}: cannot read checkpoint ({problem})")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        # our checkpoints load with weights_only=True; an older one may hold other picklable
        # objects (the user's own file, as Lightning itself would load it)
        log.info("%s: weights_only load refused; loading with weights_only=False", path)
        try:
            ckpt = torch.load(str(path), map_location="cpu", weights_only=False, mmap=True)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"{path}: cannot read checkpoint ({type(e).__name__}: {_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{path}: cannot read checkpoint ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ExportError(f"{path}: not a Lightning checkpoint (no state_dict)")
    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, dict) or not isinstance(hp.get("cfg"), dict) or "model" not in hp["cfg"]:
        raise ExportError(f"{path}: not an smet checkpoint (hyper_parameters lack the run config 'cfg')")
    return ckpt


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else ""


# ----------------------------------------------------------------------------- rebuilding


@dataclass
class SparseLayerInfo:
    name: str            # module path in our model, e.g. model.layers.0.self_attn.q_proj
    shape: tuple[int, int]
    block_size: int
    capacity: int        # block slots stored
    n_live: int          # active blocks
    materialize: str

    @property
    def n_active(self) -> int:
        return self.n_live * self.block_size

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "block_size": self.block_size, "capacity": self.capacity,
                "n_live": self.n_live, "n_active": self.n_active, "materialize": self.materialize}


@dataclass
class LoadedRun:
    ckpt_path: Path
    run_dir: Path
    cfg: dict
    vocab_size: int
    global_step: int | None
    model: Any                               # smet.models.llama.LlamaForCausalLM
    sparse: list[SparseLayerInfo] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    embedded_tokenizer: Path | None = None   # the checkpoint's smet_tokenizer entry, written to a temp file

    @property
    def method(self) -> str:
        return str((self.cfg.get("sparsity") or {}).get("method", "dense"))


def _strip_prefix(state_dict: dict) -> dict:
    out = {}
    for k, v in state_dict.items():
        if not k.startswith("model."):
            continue  # not part of the network (none today)
        out[k[len("model."):].replace("_orig_mod.", "")] = v
    return out


META_BUILD_PARAMS = 50_000_000  # larger models are built on the meta device (no init, no memory)


def build_dense_model(cfg: dict, vocab_size: int, on_meta: bool | None = None):
    """Our model as ``LMModule`` builds it from the run config, before sparsification.

    ``on_meta`` (default: for models above 50M parameters) skips the random init: the weights are
    assigned from the checkpoint afterwards anyway. Small models are built normally (faster start).
    """
    from smet.models.llama import LlamaConfig, build_model

    if on_meta is None:
        m = dict(cfg["model"])
        m["vocab_size"], m["max_seq_len"] = vocab_size, 1
        on_meta = LlamaConfig.from_dict(m).num_params() > META_BUILD_PARAMS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GEMM-alignment advice is for training, not export
        with torch.device("meta") if on_meta else contextlib.nullcontext():
            return build_model(cfg["model"], vocab_size=vocab_size, max_seq_len=cfg["data"]["seq_len"])


def install_sparse_layers(model, specs: dict[str, dict], where: Any) -> None:
    """Replace the ``nn.Linear`` modules named in ``specs`` by empty (meta) ``SparseLinear`` layers of
    the given ``block_size``, ``capacity``, ``n_live`` and ``materialize``; their ``values``/``idx``
    are assigned from a state dict next. Cheap at any size: no random topology is drawn."""
    from torch import nn

    from smet.sparse.layer import SparseLinear

    for name, s in specs.items():
        parent_name, _, attr = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
            old = getattr(parent, attr)
        except AttributeError:
            raise ExportError(f"{where}: sparse layer {name} does not exist in the model") from None
        if not isinstance(old, nn.Linear):
            raise ExportError(f"{where}: {name} is not a linear layer of the model")
        shape = (old.out_features, old.in_features)
        if "shape" in s and tuple(int(x) for x in s["shape"]) != shape:
            raise ExportError(f"{where}: sparse layer {name} has shape {tuple(s['shape'])}, the model {shape}")
        cap, n_live = int(s["capacity"]), int(s["n_live"])
        mode = str(s.get("materialize") or "transient")
        try:
            with torch.device("meta"):
                layer = SparseLinear(shape[1], shape[0], n_active_blocks=max(1, min(n_live, cap)),
                                     block_size=int(s["block_size"]), materialize=mode, capacity=cap,
                                     name=name, final_count=n_live)
        except ValueError as e:
            raise ExportError(f"{where}: sparse layer {name}: {e}") from None
        if not 0 <= n_live <= cap:
            raise ExportError(f"{where}: sparse layer {name}: n_live {n_live} outside [0, capacity {cap}]")
        layer.n_live = n_live
        setattr(parent, attr, layer)


def rebuild_rotary(model, device: torch.device | str = "cpu") -> None:
    """Real (non-meta) RoPE caches after a meta-device build."""
    rot = model.model.rotary
    rot._build(int(model.config.max_seq_len), torch.device(device))


def _sparse_specs(sd: dict, model, ckpt: dict, ckpt_path: Path, materialize: str) -> tuple[dict, list[str]]:
    """Sparse layers as the checkpoint holds them: ``<layer>.values`` + ``<layer>.idx`` pairs; block size
    = values / idx slots; ``n_live`` from the controller state (its layers are in module order)."""
    names = [k.rsplit(".", 1)[0] for k in sd if k.endswith((".idx", ".cols")) and k.rsplit(".", 1)[0] + ".values" in sd]
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    missing = [n for n in names if n not in order]
    if missing:
        raise ExportError(f"{ckpt_path}: weights do not match the run config (unexpected sparse layer {missing[0]})")
    names.sort(key=order.__getitem__)
    warns: list[str] = []
    n_live = None
    state = ckpt.get("smet_sparse")
    if names and isinstance(state, dict) and state.get("n_live") is not None:
        n_live = [int(x) for x in state["n_live"]]
        if len(n_live) != len(names):
            raise ExportError(f"{ckpt_path}: smet_sparse.n_live has {len(n_live)} entries for {len(names)} "
                              "sparse layers")
    elif names:
        warns.append(f"{ckpt_path.name} has no sparse controller state (smet_sparse); every block slot is "
                     "taken as active")
    specs = {}
    for i, n in enumerate(names):
        # a rows index: int16 column blocks stored as bytes (``<layer>.cols``, 2 per slot)
        cap = sd[f"{n}.idx"].numel() if f"{n}.idx" in sd else sd[f"{n}.cols"].numel() // 2
        nv = sd[f"{n}.values"].numel()
        if cap == 0 or nv % cap:
            raise ExportError(f"{ckpt_path}: sparse layer {n} has {nv} values for {cap} block slots")
        specs[n] = {"block_size": nv // cap, "capacity": cap, "n_live": n_live[i] if n_live else cap,
                    "materialize": materialize}
    return specs, warns


def _flatten_rows_index(sd: dict, model, specs: dict, ckpt_path: Path) -> None:
    """A run trained with ``sparsity.index=rows`` saves int16 column blocks (as bytes, ``<layer>.cols``)
    + int32 row offsets (``<layer>.row_ptr``): turn them into the int32 flat block ids
    (``<layer>.idx``) every export format uses."""
    for n, spec in specs.items():
        ptr = sd.pop(f"{n}.row_ptr", None)
        if ptr is None:
            continue
        lin = model.get_submodule(n)
        nb = lin.in_features // spec["block_size"]
        n_live, cols = spec["n_live"], sd.pop(f"{n}.cols").contiguous().view(torch.int16)
        counts = (ptr[1:] - ptr[:-1]).long()
        if ptr.numel() != lin.out_features + 1 or int(ptr[-1]) != n_live or bool((counts < 0).any()):
            raise ExportError(f"{ckpt_path}: sparse layer {n} has row offsets that do not match its "
                              f"{lin.out_features} rows and {n_live} live blocks")
        rows = torch.repeat_interleave(torch.arange(lin.out_features), counts)
        flat = torch.zeros(cols.numel(), dtype=torch.int32)
        flat[:n_live] = (rows * nb + cols[:n_live].long()).to(torch.int32)
        sd[f"{n}.idx"] = flat


def load_run(path: str | os.PathLike) -> LoadedRun:
    """Resolve, read and rebuild: our model with the checkpoint's weights (memory-mapped, assigned)."""
    ckpt_path = resolve_checkpoint(path)
    try:
        ckpt = load_checkpoint(ckpt_path)
    except ExportError as e:
        others = sorted({c.name for c in _ckpt_candidates_all(ckpt_path.parent)} - {ckpt_path.name})
        if Path(os.path.expanduser(str(path))).is_dir() and others:
            raise ExportError(f"{e}; pass another checkpoint of the run explicitly ({', '.join(others[:3])} "
                              f"in {ckpt_path.parent})") from None
        raise
    hp = ckpt["hyper_parameters"]
    cfg = hp["cfg"]
    vocab_size = int(hp.get("vocab_size") or (cfg.get("data") or {}).get("vocab_size") or 0)
    if vocab_size <= 0:
        raise ExportError(f"{ckpt_path}: the checkpoint records no vocab_size")
    try:
        model = build_dense_model(cfg, vocab_size)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{ckpt_path}: cannot rebuild the model from its config "
                          f"({type(e).__name__}: {_first_line(e)})") from None
    sd = _strip_prefix(ckpt["state_dict"])
    mat = str((cfg.get("sparsity") or {}).get("materialize") or "transient")
    specs, warns = _sparse_specs(sd, model, ckpt, ckpt_path, mat)
    _flatten_rows_index(sd, model, specs, ckpt_path)
    install_sparse_layers(model, {n: dict(s, materialize="transient") for n, s in specs.items()}, ckpt_path)
    try:
        res = model.load_state_dict(sd, strict=False, assign=True)
    except RuntimeError as e:  # shape mismatches
        raise ExportError(f"{ckpt_path}: weights do not match the run config ({_first_line(e)})") from None
    if res.missing_keys or res.unexpected_keys:
        parts = []
        for what, keys in (("missing", res.missing_keys), ("unexpected", res.unexpected_keys)):
            if keys:
                parts.append(f"{what} {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}")
        raise ExportError(f"{ckpt_path}: weights do not match the run config ({'; '.join(parts)})")
    from smet.sparse.layer import SparseLinear

    infos: list[SparseLayerInfo] = []
    for name, layer in model.named_modules():
        if isinstance(layer, SparseLinear):
            if layer.idx.dtype != torch.int32:
                raise ExportError(f"{ckpt_path}: sparse layer {name} has {layer.idx.dtype} block ids (int32 expected)")
            check_sparse_layer(layer, name, ckpt_path)
            infos.append(SparseLayerInfo(name=name, shape=(layer.out_features, layer.in_features),
                                         block_size=int(layer.block_size), capacity=int(layer.capacity),
                                         n_live=int(layer.n_live), materialize=mat))
    method = str((cfg.get("sparsity") or {}).get("method", "dense"))
    if (method == "dense") != (not infos):
        warns.append(f"the run config says sparsity.method={method} but the checkpoint has {len(infos)} sparse "
                     "layers; exported what the checkpoint holds")
    rebuild_rotary(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    step = ckpt.get("global_step")
    from smet.export.run_tokenizer import embedded_copy

    return LoadedRun(ckpt_path=ckpt_path, run_dir=run_dir_of(ckpt_path), cfg=cfg, vocab_size=vocab_size,
                     global_step=int(step) if step is not None else None, model=model, sparse=infos, warnings=warns,
                     embedded_tokenizer=embedded_copy(ckpt, ckpt_path))


def check_sparse_layer(layer, name: str, where: Any) -> None:
    """Active block ids must be distinct and in range (else densifying would silently drop weights)."""
    live = layer.idx[: layer.n_live].long()
    if live.numel() == 0:
        return
    if int(live.min()) < 0 or int(live.max()) >= layer.n_blocks_total:
        raise ExportError(f"{where}: sparse layer {name} has block ids outside [0, {layer.n_blocks_total})")
    if torch.unique(live).numel() != live.numel():
        raise ExportError(f"{where}: sparse layer {name} has duplicate active block ids")


# ----------------------------------------------------------------------------- tokenizer

_LOG_PATTERNS = (
    re.compile(r"'tokenizer_path': '([^']+)'"),
    re.compile(r"loaded cached tokenizer (\S+)"),
    re.compile(r"trained byte-level BPE .* -> (\S+)\s*$"),
)


# as smet.data.tokenizer._EOT_CANDIDATES (not imported: smet.data pulls in Lightning, seconds of start-up)
EOT_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>", "[SEP]")


@dataclass
class TokenizerSource:
    path: Path | None
    how: str             # where it was found (for the export record), or why not
    eot_id: int | None = None
    eot_token: str | None = None


def _from_logs(run_dir: Path) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    log_file = run_dir / "train.log"
    if not log_file.is_file():
        return out
    try:
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return out
    for line in reversed(lines):  # the latest attempt of a resumed run wins
        for pat in _LOG_PATTERNS:
            m = pat.search(line)
            if m:
                out.append((m.group(1), f"recorded in {log_file}"))
    return out


def _parse_data(parse, data: dict):
    """The data config as the data module read it: keys the run added after parsing (the resolved
    ``data.vocab_size``, ...) are dropped, one unknown key at a time."""
    from smet.errors import SmetConfigError

    d = dict(data)
    for _ in range(len(d) + 1):
        try:
            return parse(d)
        except SmetConfigError as e:
            key = str(getattr(e, "key", "")).removeprefix("data.")
            if "unknown key" not in str(e) or key not in d:
                raise
            d.pop(key)
    raise ValueError("unparseable data config")  # pragma: no cover


def _from_cfg(cfg: dict) -> list[tuple[str, str]]:
    """Recompute the cache path the data module uses (BPE), or a local/cached pretrained tokenizer."""
    data = cfg.get("data") or {}
    out: list[tuple[str, str]] = []
    for key in ("tokenizer_path",):  # recorded directly (newer runs may carry it)
        if data.get(key):
            out.append((str(data[key]), f"data.{key} in the run config"))
    tok = data.get("tokenizer") or {}
    try:
        if tok.get("kind", "bpe") == "bpe":
            from smet.data.config import parse_data_config
            from smet.data.corpus import make_corpus
            from smet.data.tokenizer import bpe_cache_path

            dcfg = _parse_data(parse_data_config, data)
            corpus = make_corpus(dcfg)
            if corpus is not None:
                out.append((str(bpe_cache_path(dcfg.cache_path, corpus.fingerprint(), dcfg.tokenizer.vocab_size)),
                            f"the BPE cache of data.cache_dir={dcfg.cache_dir}"))
        elif tok.get("name"):
            name = str(tok["name"])
            local = Path(name).expanduser()
            if local.is_dir():
                local = local / "tokenizer.json"
            if local.is_file():
                out.append((str(local), f"data.tokenizer.name={name}"))
            else:
                try:
                    from huggingface_hub import try_to_load_from_cache

                    hit = try_to_load_from_cache(name, "tokenizer.json")
                    if isinstance(hit, str):
                        out.append((hit, f"the Hugging Face cache of {name}"))
                except Exception:  # noqa: BLE001 - no hub client or no cache: not found
                    pass
    except Exception as e:  # noqa: BLE001 - e.g. the corpus moved: fall through to "not found"
        log.debug("tokenizer lookup from the config failed: %s", e)
    return out


def find_tokenizer(run: LoadedRun) -> TokenizerSource:
    """The run's tokenizer.json: the run's own copy (``<run>/tokenizer.json``, written by train.py at
    run start; then a tokenizer.json beside the checkpoint; then one embedded in the checkpoint), else (older runs) the cache file recorded in
    summary.json / train.log, else recomputed from the config (BPE cache path / local file / HF cache).
    Each candidate must load and fit the model's vocabulary; when the config records the tokenizer's
    sha256 (``tokenizer.sha256``), a candidate must also match it."""
    from smet.export.run_tokenizer import file_sha256, recorded_sha256, run_copies, sha256_bytes

    want_sha = recorded_sha256(run.cfg)

    def candidates():  # lazily: the config route imports the data stack
        for p, how in run_copies(run.run_dir, run.ckpt_path, run.cfg):
            yield str(p), how
        if run.embedded_tokenizer is not None:
            yield str(run.embedded_tokenizer), f"embedded in {run.ckpt_path.name}"
        summary = run.run_dir / "summary.json"
        if summary.is_file():
            try:
                tp = json.loads(summary.read_text()).get("tokenizer_path")
                if tp:
                    yield str(tp), f"recorded in {summary}"
            except (OSError, ValueError, AttributeError):
                pass
        yield from _from_logs(run.run_dir)
        yield from _from_cfg(run.cfg)

    rejected: list[str] = []
    seen: set[str] = set()
    for p, how in candidates():
        if p in seen:
            continue
        seen.add(p)
        path = Path(p).expanduser()
        if not path.is_file():
            rejected.append(f"{path} (missing)")
            continue
        try:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001
            rejected.append(f"{path} (unreadable: {type(e).__name__})")
            continue
        if want_sha and file_sha256(path) != want_sha and sha256_bytes(tok.to_str().encode("utf-8")) != want_sha:
            rejected.append(f"{path} (not the run's tokenizer: sha256 differs from tokenizer.sha256 in its config)")
            continue
        n = int(tok.get_vocab_size(with_added_tokens=True))
        data_vocab = (run.cfg.get("data") or {}).get("vocab_size")
        if n > run.vocab_size or (data_vocab and n != int(data_vocab)):
            rejected.append(f"{path} (vocabulary {n} does not match the run's {data_vocab or run.vocab_size})")
            continue
        eot_tok = next((c for c in EOT_CANDIDATES if tok.token_to_id(c) is not None), None)
        return TokenizerSource(path=path, how=how, eot_id=tok.token_to_id(eot_tok) if eot_tok else None,
                               eot_token=eot_tok)
    why = "; tried " + ", ".join(rejected) if rejected else ""
    return TokenizerSource(path=None, how=f"no tokenizer found for run {run.run_dir}{why}")
