"""``smet-memory``: predicted training memory of dense AdamW vs compact sparse training.

Every point comes from ``conf/`` (:func:`smet.compose.compose_points` with ``conf/memory.yaml``, i.e.
``conf/train.yaml`` plus the planner's defaults), so any key ``train.py`` takes can be overridden or
swept the same way (``model=350m,13b sparsity=smet,set sparsity.density=0.5,0.25``). The dense AdamW
baseline (``conf/sparsity/dense.yaml``) of each model / precision / data shape is always shown next
to the sparse points.

Nothing of the model size is allocated: shapes come from a ``meta``-device model and the per-layer
active counts from the same functions the sparse core uses, so the static figures equal what
``smet.sparse.memory.measure_static`` reports on a live run to the byte. Activations are an
ESTIMATE (formula in ``smet.sparse.memory.estimate_activations``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any, Sequence

from smet.cli.args import OneLineParser
from smet.errors import SmetConfigError

CONFIG_NAME = "memory"  # conf/memory.yaml
GIB = float(2**30)
DEFAULT_RESERVE_GIB = 1.5

#: usable memory per GPU in GiB: the total capacity CUDA reports to PyTorch (the "GPU 0 has a total
#: capacity of X GiB" of an out-of-memory message; a little below the marketing size and below
#: nvidia-smi's MiB / 1024), rounded down to 0.1 GiB. ``--reserve`` is subtracted on top of this.
GPU_TABLE: dict[str, float] = {
    "h100-80gb": 79.1,   # H100 SXM / PCIe 80 GB (HBM3 / HBM2e)
    "h200": 139.7,       # H200 141 GB
    "a100-80gb": 79.1,   # A100 80 GB
    "a100-40gb": 39.4,   # A100 40 GB
    "l40s": 44.3,        # L40S 48 GB
    "rtx4090": 23.6,     # GeForce RTX 4090 24 GB
    "v100-32gb": 31.7,   # V100 32 GB
}
GPU_ALIASES = {"h100": "h100-80gb", "4090": "rtx4090", "rtx-4090": "rtx4090", "h200-141gb": "h200"}

#: model keys the table title shows (not repeated in the model label)
TITLE_MODEL_KEYS = ("gradient_checkpointing", "activation_checkpointing", "checkpoint_every", "loss_impl",
                    "loss_chunk_tokens")

#: sparse-row fields the label shows already (other swept sparsity.* / optimizer.* keys are appended)
LABELLED_KEYS = ("sparsity.method", "sparsity.variant", "sparsity.density", "sparsity.block_size",
                 "sparsity.materialize", "sparsity.allocation")


class CliError(SmetConfigError):
    """Bad command-line value: printed as one line naming the option or key, exit code 2."""

    def __init__(self, option: str, message: str):
        super().__init__(option, message)
        self.option = option



def group_options(group: str) -> list[str]:
    """The options of a config group (``conf/<group>/*.yaml``)."""
    from smet.slurm.grid import conf_dir

    d = conf_dir() / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def available_presets() -> list[str]:
    return group_options("model")


# ----------------------------------------------------------------------------- overrides
_OVERRIDE = re.compile(r"(?:\+\+|\+)?[A-Za-z_][\w.@/-]*=|~[A-Za-z_]")


def is_override(token: str) -> bool:
    """A Hydra override (``key=value``, ``+key=value``, ``~key``), not an option."""
    return bool(_OVERRIDE.match(token))


def _override_key(token: str) -> str:
    return token.split("=", 1)[0].lstrip("+~")


#: old flag -> the override it stands for (kept so old commands work; --help shows the override form)
FLAG_ALIASES = {"--model": "model", "--method": "sparsity", "--density": "sparsity.density",
                "--precision": "trainer.precision", "--batch": "data.batch_size", "--seq-len": "data.seq_len",
                "--vocab": "data.tokenizer.vocab_size", "--hidden-size": "model.hidden_size",
                "--intermediate-size": "model.intermediate_size", "--layers": "model.num_layers",
                "--heads": "model.num_heads", "--block-size": "sparsity.block_size",
                "--materialize": "sparsity.materialize", "--allocation": "sparsity.allocation",
                "--activation-checkpointing": "model.gradient_checkpointing"}


def flag_overrides(args, explicit: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The old flags as overrides (``--density 0.5 0.25`` -> ``sparsity.density=0.5,0.25``), before the
    explicit ``key=value`` tokens, which win: a flag whose key they set is dropped. Also returns
    override key -> flag, so that an error names what the user typed."""
    given = {_override_key(t) for t in explicit}
    tokens, flags = [], {}
    for flag, key in FLAG_ALIASES.items():
        v = getattr(args, flag[2:].replace("-", "_"))
        if v is None or key in given:
            continue
        if isinstance(v, bool):
            v = str(v).lower()
        tokens.append(f"{key}={','.join(v) if isinstance(v, list) else v}")
        flags[key] = flag
    return tokens, flags


def _precheck_groups(tokens: Sequence[str]) -> None:
    """``model=NAME`` / ``sparsity=NAME`` (and other groups): a name from conf/<group>, not a path."""
    for tok in tokens:
        key, sep, value = tok.partition("=")
        if not sep or "/" in key or "." in key or key.startswith(("+", "~")) or "(" in value:
            continue
        opts = group_options(key)
        if not opts:
            continue
        for v in (x.strip() for x in value.split(",")):
            if v not in opts:
                what = "model preset" if key == "model" else f"{key} option"
                shown = [o for o in opts if o != "base"]  # conf/sparsity/base.yaml: shared keys, not a method
                raise CliError(key, f"unknown {what} {v!r}; available: {', '.join(shown)} "
                                    f"(conf/{key}/<name>.yaml; set SMET_CONF_DIR to use another conf directory)")


_HYDRA_KEY = (re.compile(r"You must specify '([^']+)'"), re.compile(r"Could not find '([^'/]+)/"),
              re.compile(r"Could not (?:override|append to|delete from config\.) ?'?([^'\s]+)'"),
              re.compile(r"[Oo]verride '([^']+)'"), re.compile(r"[Kk]ey '([^']+)'"))
_TASK = re.compile(r"task \d+ \((.*?)\): ")


def config_error(err: SmetConfigError, flags: dict[str, str], explicit: Sequence[str]) -> CliError:
    """A compose/validation error as ``<key or flag>: <what>``: Hydra's key found in its message,
    the point of a grid named, the old flag named when the key came from one."""
    text = str(err)
    point = ""
    m = _TASK.match(text)
    if m:
        point, text = m.group(1), text[m.end():]
    key = getattr(err, "key", "") or ""
    if key and text.startswith(key + ": "):
        text = text[len(key) + 2:]
    elif not key:
        for pat in _HYDRA_KEY:
            found = pat.search(text)
            if found:
                key = _override_key(found.group(1))
                break
        key = key or "overrides"
    given = {_override_key(t) for t in explicit}
    flag = flags.get(key)
    if flag is None and key not in given:  # e.g. model.num_heads after --hidden-size 4100
        flag = next((f for k, f in flags.items() if "." in k and k.split(".")[0] == key.split(".")[0]), None)
    if point and any("," in t or "(" in t for t in (*explicit, *flags)):
        text += f" (point {point})"
    if flag is not None:
        return CliError(flag, f"{text} ({key})" if "." in key else text)
    return CliError(key, text)


@functools.lru_cache(maxsize=4)
def _dense_configs(conf: str) -> tuple[dict, dict]:
    """The dense AdamW baseline's ``sparsity`` and ``optimizer`` (``conf/sparsity/dense.yaml``)."""
    from smet.compose import compose

    from omegaconf import OmegaConf

    cfg = compose(["sparsity=dense"], conf=Path(conf), check_values=False)  # conf/train.yaml

    return OmegaConf.to_container(cfg.sparsity, resolve=True), OmegaConf.to_container(cfg.optimizer, resolve=True)


# ----------------------------------------------------------------------------- points
def resolve_point(point) -> dict[str, Any]:
    """What the figures of one composed point depend on: model config and dims, vocabulary, data
    shape, precision, checkpointing, the sparsity / optimizer configs and the model label."""
    from smet.models.llama import LlamaConfig

    cfg = point.plain()
    model = dict(cfg["model"])
    data = cfg["data"]
    vocab_key = "model.vocab_size" if model.get("vocab_size") not in (None, "auto") else "data.tokenizer.vocab_size"
    raw = model["vocab_size"] if vocab_key == "model.vocab_size" else (data.get("tokenizer") or {}).get("vocab_size")
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise CliError(vocab_key, f"must be a positive integer (the vocabulary of the model), got {raw!r}")
    vocab = raw
    seq_len = int(data["seq_len"])
    d = dict(model, vocab_size=vocab)
    if d.get("max_seq_len") in (None, "auto"):
        d["max_seq_len"] = seq_len
    name = str(model.get("name", "?"))
    try:
        lc = LlamaConfig.from_dict(d)
        lc.validate()
    except SmetConfigError as err:
        key = err.key if err.key.startswith("model.") else f"model.{err.key.split('.')[-1]}"
        msg = str(err)[len(err.key) + 2:] if str(err).startswith(err.key + ": ") else str(err)
        raise CliError(key, f"model {name!r}: {msg}") from None
    except TypeError as err:
        raise CliError("model", f"model {name!r}: {err}") from None
    overrides = {}
    for tok in point.overrides:
        key = _override_key(tok)
        # (not the checkpointing / loss keys: the title shows them)
        if key.startswith("model.") and key[6:] in model and key[6:] not in TITLE_MODEL_KEYS:
            overrides[key[6:]] = model[key[6:]]
    label = name + (" (" + ", ".join(f"{k}={v}" for k, v in overrides.items()) + ")" if overrides else "")
    mode, every = lc.checkpointing
    return {"cfg": cfg, "name": name, "label": label, "model_cfg": model, "vocab": vocab, "seq_len": seq_len,
            "batch": int(data["batch_size"]), "precision": str(cfg["trainer"]["precision"]),
            "ckpt": mode, "ckpt_every": every if mode != "none" else 1,
            "loss_impl": lc.loss_impl, "loss_chunk_tokens": lc.loss_chunk_tokens, "pointwise": lc.pointwise,
            "overrides": overrides,
            "params": lc.num_params(), "dims": {k: getattr(lc, k) for k in ("hidden_size", "intermediate_size",
                                                                            "num_layers", "num_heads", "vocab_size")},
            "sparsity": dict(cfg["sparsity"]), "optimizer": dict(cfg["optimizer"]), "tokens": list(point.overrides)}


def resolve_gpu(args) -> dict[str, Any] | None:
    """``--gpu NAME`` / ``--gpu-mem GiB`` minus ``--reserve GiB`` -> the usable budget (None: no GPU)."""
    import math

    if args.gpu is None and args.gpu_mem is None:
        if args.reserve is not None:
            raise CliError("--reserve", "needs --gpu NAME or --gpu-mem GiB")
        return None
    if args.gpu is not None and args.gpu_mem is not None:
        raise CliError("--gpu-mem", "give either --gpu NAME or --gpu-mem GiB, not both")
    if args.gpu is not None:
        key = GPU_ALIASES.get(args.gpu.strip().lower(), args.gpu.strip().lower())
        if key not in GPU_TABLE:
            known = ", ".join(f"{k} ({v:g})" for k, v in GPU_TABLE.items())
            raise CliError("--gpu", f"unknown GPU {args.gpu!r}; known (usable GiB): {known}; or give --gpu-mem GiB")
        name, mem = key, GPU_TABLE[key]
    else:
        mem = float(args.gpu_mem)
        if not math.isfinite(mem) or mem <= 0:
            raise CliError("--gpu-mem", f"must be a positive number of GiB, got {args.gpu_mem:g}")
        name = "custom"
    reserve = DEFAULT_RESERVE_GIB if args.reserve is None else float(args.reserve)
    if not math.isfinite(reserve) or reserve < 0:
        raise CliError("--reserve", f"must be >= 0 GiB, got {reserve:g}")
    if reserve >= mem:
        raise CliError("--reserve", f"{reserve:g} GiB leaves nothing of the {mem:g} GiB GPU memory")
    return {"name": name, "mem_gib": mem, "reserve_gib": reserve, "usable_bytes": int((mem - reserve) * GIB)}


def max_batch_that_fits(static_total: int, budget: int, model_cfg: dict, seq_len: int, precision: str,
                        checkpointing: bool | str, vocab: int, sparse_materialize: str | None, cap: int = 1 << 20,
                        *, checkpoint_every: int = 1, loss_impl: str = "exact", loss_chunk_tokens: int = 4096,
                        pointwise: str = "reference", step_extra: int = 0, floor: int = 0) -> int:
    """Largest micro-batch ``b`` with ``static + max(activations(b) + step_extra, floor) <= budget``
    (0: not even b = 1); ``step_extra`` / ``floor``: what topology updates add inside the step / need
    after it (:func:`smet.sparse.memory.estimate_update_memory`, masks counted in ``static_total``).

    Uses :func:`smet.sparse.memory.estimate_activations` (non-decreasing in ``b``): doubling, then
    bisection. Capped at ``cap``.
    """
    from smet.sparse.memory import estimate_activations

    def fits(b: int) -> bool:
        act = estimate_activations(model_cfg, b, seq_len, precision, checkpointing, vocab,
                                   sparse_materialize=sparse_materialize, checkpoint_every=checkpoint_every,
                                   loss_impl=loss_impl, loss_chunk_tokens=loss_chunk_tokens, pointwise=pointwise)
        return static_total + max(act["total"] + step_extra, floor) <= budget

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while fits(hi):
        lo, hi = hi, hi * 2
        if hi > cap:
            return lo
    while hi - lo > 1:  # fits(lo) and not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


# ----------------------------------------------------------------------------- rows
def _gib(n: float) -> float:
    return n / GIB


def _group_key(p: dict) -> tuple:
    """Points that share the dense baseline: same model, vocabulary, data shape, precision, checkpointing,
    and optimizer step in backward or not (``optimizer.fused_backward`` applies to the baseline too)."""
    model = {k: v for k, v in p["model_cfg"].items()  # the effective checkpointing stands for its 3 keys
             if k not in ("gradient_checkpointing", "activation_checkpointing", "checkpoint_every")}
    return (p["label"], json.dumps(model, sort_keys=True, default=str), p["vocab"], p["seq_len"],
            p["batch"], p["precision"], p["ckpt"], p["ckpt_every"], bool(p["optimizer"].get("fused_backward")))


def point_row(p: dict, scfg: dict, ocfg: dict, *, dense_total: int | None, gpu: dict | None,
              extra: str = "", shards: int | None = None, engine: str | None = None) -> dict[str, Any]:
    """One row: static prediction, active weights, bytes per active weight, activation estimate, fit."""
    from smet.models.llama import model_shapes
    from smet.sparse.memory import (active_weight_count, bytes_per_active_weight, estimate_activations,
                                    estimate_update_memory, predict_static)

    method = str(scfg.get("method", "dense"))
    dense = method == "dense"
    shapes = model_shapes(p["model_cfg"], p["vocab"], p["seq_len"])
    precision, vocab, seq_len = p["precision"], p["vocab"], p["seq_len"]
    steps = (p.get("cfg") or {}).get("trainer", {}).get("max_steps")
    total_steps = int(steps) if steps is not None else None  # the run's length decides short runs' local-step storage
    shards, engine = sharding_of(p.get("cfg") or {}, shards, engine)
    # shards > 1: rank 0 of FSDP2 (the default) or of DeepSpeed ZeRO (engine "zero", at any shard count)
    pred = predict_static(shapes, scfg, ocfg, precision, total_steps, shards=shards, engine=engine)
    active = active_weight_count(shapes, scfg)
    smat = None if dense else str(scfg.get("materialize", "transient"))
    loss = {"loss_impl": p["loss_impl"], "loss_chunk_tokens": p["loss_chunk_tokens"], "pointwise": p["pointwise"]}
    act = estimate_activations(p["model_cfg"], p["batch"], seq_len, precision, p["ckpt"], vocab,
                               sparse_materialize=smat, checkpoint_every=p["ckpt_every"], **loss)
    total = pred["all"]["total"]
    upd = estimate_update_memory(shapes, None if dense else scfg)
    # topology updates: the regrown-slot masks stay; the one-layer update workspace comes after the
    # step (activations freed), the next step's measurement inside it
    peak = total + upd["regrown_masks"] + max(act["total"] + upd["measure_step"], upd["layer_update"])
    row = {
        "model": p["name"], "method": method, "variant": None if dense else scfg.get("variant"),
        "density": 1.0 if dense else float(scfg["density"]), "materialize": smat,
        "block_size": None if dense else int(scfg.get("block_size", 1)),
        "allocation": None if dense else scfg.get("allocation", "uniform"),
        "precision": precision, "batch": p["batch"], "seq_len": seq_len, "vocab": vocab,
        "activation_checkpointing": p["ckpt"], "checkpoint_every": p["ckpt_every"], **loss,
        "shards": shards, "engine": engine or ("fsdp" if shards > 1 else "none"), "static_bytes": pred["all"], "sparse_static_bytes": pred["sparse"],
        "active_weights": active,
        "bytes_per_active_weight": pred["sparse"]["total"] / active,
        "bytes_per_active_weight_formula": bytes_per_active_weight(scfg, ocfg, precision, total_steps),
        "ratio_vs_dense": total / (total if dense_total is None else dense_total),
        "activations_estimate_bytes": act,
        "update_estimate_bytes": upd,
        "peak_estimate_bytes": peak,
        "sparsity_cfg": scfg, "optimizer_cfg": ocfg,
        "overrides": p["tokens"] if not dense else  # the baseline: this point's model / data / trainer
        [t for t in p["tokens"] if not _override_key(t).startswith(("sparsity", "optimizer"))] + ["sparsity=dense"],
        "label_extra": extra,
        "model_label": p["label"], "model_overrides": p["overrides"], "params": p["params"],
        "model_dims": p["dims"],
    }
    if gpu is not None:
        budget = gpu["usable_bytes"]
        row["gpu"] = dict(gpu)
        row["fits"] = row["peak_estimate_bytes"] <= budget
        row["headroom_bytes"] = budget - row["peak_estimate_bytes"]
        row["max_batch"] = {  # without / with whole-block checkpointing of every block
            key: max_batch_that_fits(total + upd["regrown_masks"], budget, p["model_cfg"], seq_len, precision, ckpt,
                                     vocab, smat, step_extra=upd["measure_step"], floor=upd["layer_update"], **loss)
            for key, ckpt in (("no_checkpointing", "none"), ("checkpointing", "block"))}
    return row


def _label_extras(points: list[dict]) -> list[str]:
    """Per point: the swept sparsity.* / optimizer.* overrides its label does not show (``k=v``)."""
    swept: dict[str, set] = {}
    for p in points:
        for tok in p["tokens"]:
            key = _override_key(tok)
            if key.startswith(("sparsity.", "optimizer.")) and key not in LABELLED_KEYS:
                swept.setdefault(key, set()).add(tok)
    keys = [k for k, toks in swept.items() if len(toks) > 1]
    out = []
    for p in points:
        parts = []
        for tok in p["tokens"]:
            key = _override_key(tok)
            if key in keys:
                parts.append(f"{key.split('.', 1)[1]}={tok.split('=', 1)[1]}")
        out.append(" ".join(parts))
    return out


def sharding_of(cfg, shards: int | None, engine: str | None) -> tuple[int, str | None]:
    """(shards, engine) of a row: ``--shards`` / ``--engine`` when given, else what the point's trainer runs
    (``trainer=deepspeed``: ZeRO, ``trainer=fsdp`` / ``fsdp_cpu``: FSDP2, on ``trainer.devices`` x
    ``trainer.num_nodes`` ranks), else one process."""
    from smet.config import get, world_size

    strategy = str(get(cfg, "trainer.strategy", "auto")) if cfg else "auto"
    from_trainer = "zero" if strategy.startswith("deepspeed") else "fsdp" if strategy == "fsdp" else None
    if engine is None:
        engine = from_trainer
    if shards is None:
        shards = world_size(cfg) if from_trainer and engine == from_trainer else 1
    if engine == "fsdp" and shards == 1:
        engine = None
    return shards, engine


def compute_rows(points: Sequence, gpu: dict | None = None, shards: int | None = None,
                 engine: str | None = None) -> list[dict[str, Any]]:
    """Rows of the composed ``points`` (:class:`smet.compose.Point`): per model / vocabulary / data shape
    / precision / checkpointing group, the dense AdamW baseline first, then the sparse points in grid
    order (a dense point of the grid is the baseline itself)."""
    resolved = [resolve_point(pt) for pt in points]
    extras = _label_extras(resolved)
    from smet.slurm.grid import conf_dir

    dense_s, dense_o = _dense_configs(str(conf_dir()))
    groups: dict[tuple, list[dict]] = {}
    for p, extra in zip(resolved, extras):
        rows = groups.get(_group_key(p))
        if rows is None:
            base_o = dict(dense_o, fused_backward=bool(p["optimizer"].get("fused_backward")))
            rows = groups[_group_key(p)] = [point_row(p, dict(dense_s), base_o, dense_total=None, gpu=gpu,
                                                      shards=shards, engine=engine)]
        same = [r for r in rows if r["sparsity_cfg"] == p["sparsity"] and r["optimizer_cfg"] == p["optimizer"]
                and r["label_extra"] == extra]
        if p["sparsity"].get("method", "dense") != "dense" and not same:  # (checkpoint_every of "none": one row)
            rows.append(point_row(p, p["sparsity"], p["optimizer"], dense_total=rows[0]["static_bytes"]["total"],
                                  gpu=gpu, extra=extra, shards=shards, engine=engine))
    return [r for rows in groups.values() for r in rows]


def _label(r: dict, wide: bool = True) -> str:
    if r["method"] == "dense":
        return "dense AdamW"
    name = r["method"] + (f"_{r['variant']}" if r.get("variant") else "")  # smet_no_reset, ...
    extra = f" {r['label_extra']}" if r.get("label_extra") else ""
    if wide:
        return f"{name} d={r['density']:g} b={r['block_size']} {r['materialize']} {r['allocation']}{extra}"
    return f"{name} d={r['density']:g}" + (" persistent" if r["materialize"] == "persistent" else "") + extra


BREAKDOWN = ("weights", "grads", "optimizer", "metadata", "compute copy")
COLUMNS = ("config",) + BREAKDOWN + ("static", "B/active w", "vs dense", "activations*", "peak*")
COMPACT_COLUMNS = ("config", "static", "B/act w", "vs dense", "act.*", "peak*")
GPU_COLUMNS = ("fits", "max b", "max b ckpt")


def columns(wide: bool, gpu: bool) -> tuple[str, ...]:
    return (COLUMNS if wide else COMPACT_COLUMNS) + (GPU_COLUMNS if gpu else ())


def _cells(r: dict, wide: bool = True) -> list[str]:
    s = r["static_bytes"]
    cells = [_label(r, wide)]
    if wide:
        cells += [f"{_gib(s[k]):.3f}" for k in ("weights", "grads", "optimizer", "metadata", "compute_copy")]
    cells += [f"{_gib(s['total']):.3f}", f"{r['bytes_per_active_weight']:.2f}", f"{r['ratio_vs_dense']:.3f}x",
              f"{_gib(r['activations_estimate_bytes']['total']):.3f}", f"{_gib(r['peak_estimate_bytes']):.3f}"]
    if "fits" in r:
        cells += ["yes" if r["fits"] else "no", str(r["max_batch"]["no_checkpointing"]),
                  str(r["max_batch"]["checkpointing"])]
    return cells


def output_width(width: int | None = None) -> int:
    """Width the text is wrapped to: ``width``, else the terminal's (``$COLUMNS`` first; 100 when
    not a terminal), clamped to [60, 120]."""
    w = width if width is not None else shutil.get_terminal_size((100, 24)).columns
    return max(60, min(int(w), 120))


def _wrap(text: str, width: int, indent: str = "") -> list[str]:
    return textwrap.wrap(text, width=width, subsequent_indent=indent, break_on_hyphens=False) or [""]


def _titles(r0: dict, width: int) -> list[str]:
    dims = r0.get("model_dims")
    head = f"model {r0.get('model_label', r0['model'])}"
    if dims:
        head += (f": {r0['params'] / 1e9:.2f}B params (hidden {dims['hidden_size']}, intermediate "
                 f"{dims['intermediate_size']}, layers {dims['num_layers']}, heads {dims['num_heads']}, "
                 f"vocab {dims['vocab_size']})")
    lines = _wrap(head, width, "  ")
    sub = (f"precision {r0['precision']}, batch {r0['batch']} x seq {r0['seq_len']}, activation checkpointing "
           f"{checkpointing_label(r0)}, loss {loss_label(r0)}")
    lines += _wrap(sub + ", figures in GiB", width, "  ")
    if r0.get("engine") == "zero":
        lines += _wrap(f"static memory per rank of DeepSpeed ZeRO-1/2 on {r0['shards']} rank(s) (trainer=deepspeed; "
                       "rank 0): the model whole in its dtype, fp32 master, moments and gradient 1/N; the batch "
                       "is per rank", width, "  ")
    elif int(r0.get("shards") or 1) > 1:
        lines += _wrap(f"static memory per rank of {r0['shards']} FSDP2 shards (trainer=fsdp; rank 0, the largest "
                       "slice); the batch is per rank", width, "  ")
    if "gpu" in r0:
        g = r0["gpu"]
        gname = "memory" if g["name"] == "custom" else g["name"] + ":"
        lines += _wrap(f"GPU {gname} {g['mem_gib']:g} GiB - reserve {g['reserve_gib']:g} GiB = "
                       f"{_gib(g['usable_bytes']):.2f} GiB usable for static + activations", width, "  ")
    return lines


def checkpointing_label(r: dict) -> str:
    """``off``, ``block``, ``mlp every 2nd block`` ... of a row."""
    mode, k = r["activation_checkpointing"], int(r.get("checkpoint_every", 1))
    if mode in (None, False, "none"):
        return "off"
    mode = "block" if mode is True else mode
    return mode if k == 1 else f"{mode}, blocks 0, {k}, {2 * k}, ..."


def loss_label(r: dict) -> str:
    impl = r.get("loss_impl", "exact")
    return f"chunked ({r.get('loss_chunk_tokens')} rows)" if impl == "chunked" else str(impl)


def _notes(rows: list[dict], wide: bool, width: int) -> list[str]:
    sparse = [r for r in rows if r["method"] != "dense"]
    notes = []
    if sparse and not wide:
        r = sparse[0]
        notes.append(f"sparse rows: block size {r['block_size']}, allocation {r['allocation']}, dense weights "
                     f"materialised transiently unless marked persistent (--wide: full labels and the static "
                     f"breakdown weights / grads / optimizer / metadata / compute copy).")
    notes.append("static: weights + grads + optimizer states + metadata (index, local step) + compute copy + "
                 "buffers, exact for this code (grads counted as present, i.e. right after backward; none with optimizer.fused_backward=true).")
    notes.append(f"{'B/active w' if wide else 'B/act w'}: static bytes of the sparse layers per active weight "
                 "(dense row: per weight of the same layers). vs dense: static total / dense AdamW static total.")
    notes.append(f"* ESTIMATES: {'activations' if wide else 'act.'} = tensors saved for backward (what "
                 "activation checkpointing keeps) + the LM head / loss buffers at their peak (exact: fp32 "
                 "full-vocabulary logits; chunked: one chunk's logits + the hidden-state and head-weight "
                 "gradients) or one recomputed block + one transient dense weight/gradient, whichever is larger "
                 "(+ autocast weight copies under *-mixed); peak = static + activations (grads counted as "
                 "present). Excludes allocator fragmentation, CUDA context and cuBLAS workspaces.")
    if any("fits" in r for r in rows):
        notes.append("fits: peak* <= usable GPU memory at this batch and checkpointing setting. max b / max b ckpt: "
                     "the largest micro-batch with static + activations* <= usable, without / with activation "
                     "checkpointing of every whole block (0: not even batch 1). usable = GPU memory - --reserve "
                     "(CUDA context, cuBLAS workspaces, fragmentation); an estimate, not a guarantee.")
    out = []
    for n in notes:
        out += _wrap(n, width, "  ")
    return out


def _plain_table(header: Sequence[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(header)]

    def line(cells):
        return "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header), "  ".join("-" * w for w in widths)] + [line(b) for b in body]


def render(rows: list[dict], out=None, *, wide: bool = False, tty: bool | None = None,
           width: int | None = None) -> None:
    """The table(s): a plain-text table when ``out`` is not a terminal (pipes, files), a rich table on
    a terminal; lines fit ``output_width`` (60-120 columns) unless ``wide``."""
    out = sys.stdout if out is None else out
    if tty is None:
        tty = bool(getattr(out, "isatty", lambda: False)())
    w = output_width(width)
    tables: dict[tuple, list[dict]] = {}  # one table per title (model, precision, data shape, checkpointing)
    for r in rows:
        key = (r.get("model_label", r["model"]), r["precision"], r["batch"], r["seq_len"], r["vocab"],
               r["activation_checkpointing"], r.get("checkpoint_every", 1), r.get("loss_impl"),
               r.get("loss_chunk_tokens"))
        tables.setdefault(key, []).append(r)
    for i, rs in enumerate(tables.values()):
        if i:
            print(file=out)
        header = columns(wide, "fits" in rs[0])
        body = [_cells(r, wide) for r in rs]
        for t in _titles(rs[0], w):
            print(t, file=out)
        rich_done = False
        if tty:
            try:
                from rich import box
                from rich.console import Console
                from rich.table import Table

                table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
                for j, c in enumerate(header):
                    table.add_column(c, justify="left" if j == 0 else "right", no_wrap=True)
                for cells in body:
                    table.add_row(*cells)
                Console(file=out, width=250 if wide else w, highlight=False).print(table)
                rich_done = True
            except ImportError:  # plain fallback
                pass
        if not rich_done:
            for line in _plain_table(header, body):
                print(line, file=out)
    for line in _notes(rows, wide, w):
        print(line, file=out)


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    gpus = ", ".join(f"{k} {v:g}" for k, v in GPU_TABLE.items())
    methods = " ".join(o for o in group_options("sparsity") if o != "base")

    def fill(text: str, indent: str = "  ") -> str:
        return textwrap.fill(text, 100, initial_indent=indent, subsequent_indent=indent)

    p = OneLineParser(
        prog="smet-memory",
        description=textwrap.fill(
            "Predict the training memory of LLaMA configs composed from conf/ (conf/memory.yaml = conf/train.yaml "
            "+ the planner's defaults), any key overridden or swept as for `python train.py -m`: the dense "
            "AdamW baseline of each model / precision / data shape and every sparse point, without allocating "
            "the model. Static figures (weights, grads, optimizer states, index + local-step metadata, "
            "persistent compute copy) are exact for this code; activations and peak are labelled estimates. "
            "With --gpu / --gpu-mem it says whether each config fits and the largest micro-batch that does.", 100),
        epilog="examples:\n"
               "  smet-memory model=350m sparsity.density=0.25 data.batch_size=128\n"
               "  smet-memory model=350m,13b sparsity=smet sparsity.density=0.5,0.25 trainer.precision=bf16-true\n"
               "  smet-memory model=7b sparsity=smet_no_reset sparsity.density=0.25 --json\n"
               "  smet-memory model=13b sparsity=smet,set sparsity.density=0.25 --gpu-mem 80\n"
               "  smet-memory model=13b model.hidden_size=4096 model.num_heads=32 model.num_layers=24 --gpu h100-80gb\n"
               "  smet-memory model=7b model.num_layers=16 sparsity.density=0.1,0.25 sparsity.materialize=transient,"
               "persistent \\\n      --gpu a100-40gb --wide\n"
               "overrides (KEY=VALUE; a,b sweeps; the defaults are conf/memory.yaml's):\n"
               + fill(f"model=NAME (required; {' '.join(available_presets())}), model.<key>=V (any model key: "
                      "hidden_size, num_layers, num_heads, vocab_size, "
                      "activation_checkpointing=none|block|mlp|attention, checkpoint_every=k, "
                      "loss_impl=chunked|exact, loss_chunk_tokens, ...), "
                      f"sparsity=METHOD ({methods}; dense: the baseline only), sparsity.<key>=V (density, "
                      "block_size, materialize, allocation, targets, ...), optimizer.<key>=V, trainer.precision=P, "
                      "data.batch_size=N, data.seq_len=N, data.tokenizer.vocab_size=V (model.vocab_size wins). The "
                      "dense AdamW baseline is always shown.") + "\n"
               + fill(f"--gpu usable GiB (CUDA's reported total capacity, before --reserve): {gpus}.", "") + "\n"
               "Config dir: conf/ next to src/ (env SMET_CONF_DIR overrides it).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides / sweeps, e.g. model=13b model.num_layers=24 sparsity=smet "
                        "sparsity.density=0.5,0.25")
    p.add_argument("--gpu", metavar="NAME", default=None,
                   help=f"GPU from the built-in table ({', '.join(GPU_TABLE)}): adds fits / max-batch columns")
    p.add_argument("--gpu-mem", type=float, metavar="GiB", default=None,
                   help="GPU memory in GiB (instead of --gpu): adds fits / max-batch columns")
    p.add_argument("--reserve", type=float, metavar="GiB", default=None,
                   help=f"GiB kept free for the CUDA context, cuBLAS/NCCL workspaces and allocator fragmentation, "
                        f"subtracted from the GPU memory (default: {DEFAULT_RESERVE_GIB:g})")
    p.add_argument("--wide", action="store_true",
                   help="full table: static breakdown (weights, grads, optimizer, metadata, compute copy) and full "
                        "config labels (wider than 120 columns)")
    p.add_argument("--json", action="store_true", help="print JSON records (bytes) instead of the table")
    p.add_argument("--shards", type=int, metavar="N", default=None,
                   help="static memory per rank of an FSDP2 run (trainer=fsdp) on N ranks: parameters, gradients "
                        "and optimizer state 1/N each (rank 0's slice), index and buffers replicated (default: "
                        "trainer.devices x trainer.num_nodes with trainer=fsdp / deepspeed, else 1)")
    p.add_argument("--engine", choices=("fsdp", "zero"), default=None,
                   help="what shards (default: the trainer's; else fsdp with --shards > 1): fsdp (FSDP2, "
                        "trainer=fsdp) or zero (DeepSpeed "
                        "ZeRO-1/2, trainer=deepspeed: the model whole in its dtype on every rank, the fp32 master, "
                        "moments and gradient 1/N; meaningful at --shards 1 too)")
    old = p.add_argument_group("older flags", "aliases of the overrides (KEY=VALUE wins over them)")
    for flag, key in FLAG_ALIASES.items():
        if flag == "--activation-checkpointing":
            old.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"= {key}=true|false")
        elif flag in ("--model", "--method", "--density", "--materialize"):
            old.add_argument(flag, nargs="+", metavar="V", help=f"= {key}=V[,V]")
        else:
            old.add_argument(flag, *(["--vocab-size"] if flag == "--vocab" else []), dest=flag[2:].replace("-", "_"),
                             metavar="V", help=f"= {key}=V")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    tokens = [a for a in argv if is_override(a)]
    args = parser.parse_args([a for a in argv if not is_override(a)])
    explicit = tokens + list(args.overrides)
    aliases, flags = flag_overrides(args, explicit)
    overrides = aliases + explicit
    try:
        gpu = resolve_gpu(args)
        if args.shards is not None and args.shards < 1:
            raise CliError("--shards", f"must be >= 1, got {args.shards}")
        from smet.compose import compose_points

        if not any(_override_key(t) in ("model", "experiment") for t in overrides):
            raise CliError("model", f"required: model=NAME[,NAME] (or +experiment=NAME); available: "
                                    f"{', '.join(available_presets())}")
        try:
            _precheck_groups(overrides)
            try:
                rows = compute_rows(compose_points(overrides, config_name=CONFIG_NAME), gpu, shards=args.shards,
                                    engine=args.engine)
            except ValueError as err:  # what the engine cannot run (the prediction says which key)
                if args.engine is None:
                    raise
                raise CliError("--engine", f"{args.engine}: {err}") from None
        except SmetConfigError as err:
            raise config_error(err, flags, explicit) from None
    except SmetConfigError as err:
        print(f"smet-memory: error: {err}", file=sys.stderr)
        return 2
    try:
        if args.json:
            json.dump(rows, sys.stdout, indent=2, default=str)
            print()
        else:
            render(rows, wide=args.wide)
        sys.stdout.flush()
    except BrokenPipeError:  # `smet-memory ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
