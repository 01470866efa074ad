"""Compact sparse export: only the active weights, and a loader that restores our model exactly.

``sparse_model.safetensors`` holds

* every dense parameter under its name in our model (``model.embed_tokens.weight``, norms,
  ``lm_head.weight`` ...), and
* per compact sparse layer ``<layer>.values`` (all ``capacity * block_size`` slots, slot-major) and
  ``<layer>.idx`` (int32 block ids, ``row * (in / block_size) + col // block_size``);

its safetensors metadata (string values, JSON where structured) holds ``format`` =
``smet-compact``, ``format_version``, ``model_config`` (our ``LlamaConfig``), ``sparse_layers``
(per layer: ``shape`` [out, in], ``block_size``, ``capacity``, ``n_live`` (slots ``[0, n_live)`` are
active), ``n_active``, ``materialize``), ``sparsity`` (the run's sparsity config), ``dtype`` and
the source checkpoint. ``sparse_config.json`` repeats the metadata, readable. The file is
self-contained: :func:`load_compact` needs nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from smet.export.safetensors_stream import Entry, read_metadata, write_safetensors
from smet.export.source import (META_BUILD_PARAMS, ExportError, LoadedRun, check_sparse_layer, install_sparse_layers,
                                rebuild_rotary)

COMPACT_WEIGHTS = "sparse_model.safetensors"
COMPACT_CONFIG = "sparse_config.json"
FORMAT = "smet-compact"
FORMAT_VERSION = "1"


def compact_metadata(run: LoadedRun, dtype: torch.dtype) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": run.model.config.to_dict(),
        "sparse_layers": {s.name: s.to_json() for s in run.sparse},
        "sparsity": run.cfg.get("sparsity") or {"method": "dense"},
        "dtype": str(dtype).removeprefix("torch."),
        "source_checkpoint": str(run.ckpt_path),
        "global_step": run.global_step,
    }


def write_compact(run: LoadedRun, out_dir: Path, dtype: torch.dtype) -> int:
    """Write ``sparse_model.safetensors`` + ``sparse_config.json``; returns the weights' bytes."""
    meta = compact_metadata(run, dtype)
    entries = []
    for name, t in run.model.state_dict().items():
        if t.is_floating_point():
            entries.append(Entry(name, dtype, tuple(t.shape), lambda t=t: t.to(dtype)))
        else:  # idx: int32 block ids, as is
            entries.append(Entry(name, t.dtype, tuple(t.shape), lambda t=t: t))
    st_meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    size = write_safetensors(out_dir / COMPACT_WEIGHTS, entries, metadata=st_meta)
    (out_dir / COMPACT_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return size


def _meta(path: Path) -> dict[str, Any]:
    try:
        raw = read_metadata(path)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    if raw.get("format") != FORMAT:
        raise ExportError(f"{path}: not an smet compact sparse file (metadata format={raw.get('format')!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{path}: unsupported compact format version {raw.get('format_version')!r} "
                          f"(this smet reads {FORMAT_VERSION})")
    out: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v) if k in ("model_config", "sparse_layers", "sparsity", "global_step") else v
        except ValueError:
            raise ExportError(f"{path}: corrupt metadata field {k}") from None
    return out


def load_compact(path: str | os.PathLike, device: str | torch.device = "cpu", materialize: str | None = None):
    """Our ``LlamaForCausalLM`` with its ``SparseLinear`` layers restored from a compact export.

    ``path``: ``sparse_model.safetensors`` or the export directory holding it. Values, block ids and
    ``n_live`` come back exactly, so outputs equal the source model's bit for bit (same dtype and
    device). ``materialize`` overrides the stored mode (``transient``/``persistent``). The model is
    returned in eval mode; its values are trainable parameters as in training.
    """
    from safetensors.torch import load_file

    from smet.models.llama import LlamaConfig, LlamaForCausalLM
    p = Path(os.path.expanduser(str(path)))
    if p.is_dir():
        p = p / COMPACT_WEIGHTS
    if not p.is_file():
        raise ExportError(f"{p}: no such compact sparse file")
    meta = _meta(p)
    device = torch.device(device)
    cfg = LlamaConfig.from_dict(meta["model_config"])
    big = cfg.num_params() > META_BUILD_PARAMS
    with torch.device("meta") if big else contextlib.nullcontext():  # big: no init, weights assigned below
        model = LlamaForCausalLM(cfg)
    specs = {n: dict(info, materialize=materialize or info.get("materialize") or "transient")
             for n, info in meta["sparse_layers"].items()}
    install_sparse_layers(model, specs, p)
    try:
        sd = load_file(str(p), device=str(device))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{p}: cannot read tensors ({type(e).__name__}: {e})") from None
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise ExportError(f"{p}: tensors do not match the stored config ({str(e).splitlines()[0]})") from None
    for name, layer in _sparse_layers(model):
        check_sparse_layer(layer, name, p)
        if layer.values.numel() != layer.capacity * layer.block_size or layer.idx.dtype != torch.int32:
            raise ExportError(f"{p}: sparse layer {name} has {layer.values.numel()} values / idx "
                              f"{layer.idx.dtype}; expected {layer.capacity * layer.block_size} / int32")
        layer.refresh_dense()
    rebuild_rotary(model, device)
    model.eval()
    return model


def _sparse_layers(model):
    from smet.sparse.layer import SparseLinear

    return [(n, m) for n, m in model.named_modules() if isinstance(m, SparseLinear)]
