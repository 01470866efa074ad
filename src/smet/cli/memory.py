"""``smet-memory``: predicted training memory of dense AdamW vs compact sparse training.

Nothing of the model size is allocated: shapes come from a ``meta``-device model and the per-layer
active counts from the same functions the sparse core uses, so the static figures equal what
``smet.sparse.memory.measure_static`` reports on a live run to the byte. Activations are an
ESTIMATE (formula in ``smet.sparse.memory.estimate_activations``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any, Sequence

GIB = float(2**30)
PRECISION_CHOICES = ("32", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
METHOD_CHOICES = ("static", "set", "rigl", "smet")
DEFAULT_VOCAB = 32000
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

#: ``model.<key>=VALUE`` overrides (the LlamaConfig fields) and their types
MODEL_KEYS: dict[str, type] = {"hidden_size": int, "intermediate_size": int, "num_layers": int, "num_heads": int,
                               "vocab_size": int, "max_seq_len": int, "rope_theta": float, "norm_eps": float,
                               "init_std": float, "gradient_checkpointing": bool}
#: model-dimension flags -> model key
MODEL_FLAGS = {"--hidden-size": "hidden_size", "--intermediate-size": "intermediate_size", "--layers": "num_layers",
               "--heads": "num_heads"}
OVERRIDE_KEYS = ("model", "model.<key>", "sparsity", "sparsity.method", "sparsity.density", "sparsity.block_size",
                 "sparsity.materialize", "sparsity.allocation", "trainer.precision", "data.batch_size",
                 "data.seq_len")


class CliError(Exception):
    """Bad command-line value: printed as one line naming the option, exit code 2."""

    def __init__(self, option: str, message: str):
        self.option = option
        super().__init__(f"{option}: {message}")


# ----------------------------------------------------------------------------- presets
def conf_dir() -> Path:
    """The Hydra config directory: ``$SMET_CONF_DIR`` or ``<repo>/conf`` next to ``src/``."""
    env = os.environ.get("SMET_CONF_DIR")
    if env:
        return Path(env).expanduser().resolve()
    import smet

    return Path(smet.__file__).resolve().parents[2] / "conf"


def available_presets() -> list[str]:
    d = conf_dir() / "model"
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def load_model_preset(name: str, option: str = "--model") -> dict[str, Any]:
    """``conf/model/<name>.yaml`` as a plain dict (raises :class:`CliError` naming ``option``)."""
    import yaml

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name) or ".." in name or name.endswith((".yaml", ".yml")):
        raise CliError(option, f"{name!r} is not a preset name (presets are conf/model/<name>.yaml; a path is not "
                               f"read); available: {', '.join(available_presets()) or '(none)'}")
    path = conf_dir() / "model" / f"{name}.yaml"
    if not path.is_file():
        avail = available_presets()
        where = conf_dir() / "model"
        raise CliError(option, f"unknown model preset {name!r}; available: {', '.join(avail) or '(none)'}"
                       f" (in {where}; set SMET_CONF_DIR to use another conf directory)")
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise CliError(option, f"{path} is not a mapping")
    cfg.setdefault("name", name)
    return cfg


def check_block_size(model_cfg: dict, block_size: int, option: str = "--block-size") -> None:
    if block_size < 1:
        raise CliError(option, f"must be a positive integer, got {block_size}")
    for key in ("hidden_size", "intermediate_size"):
        dim = int(model_cfg[key])
        if dim % block_size:
            raise CliError(option, f"{block_size} does not divide the row length {key}={dim} of model "
                                   f"{model_cfg.get('name', '?')!r}")


def check_density(d: float, option: str = "--density") -> None:
    if not (0.0 < d <= 1.0):
        raise CliError(option, f"must be in (0, 1], got {d:g}")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``smet-xxx: error: argument --x: ...``) and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        if message.startswith("argument "):  # "argument --x: ..." -> "--x: ..." like CliError
            message = message[len("argument "):]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


# ----------------------------------------------------------------------------- overrides
def _parse_value(key: str, raw: str, typ: type):
    if typ is bool:
        low = raw.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise CliError(key, f"expected true or false, got {raw!r}")
    try:
        return typ(raw)
    except ValueError:
        raise CliError(key, f"expected {'an integer' if typ is int else 'a number'}, got {raw!r}") from None


def _values(key: str, raw: str, choices: Sequence[str] | None = None) -> list[str]:
    vals = [v.strip() for v in raw.split(",") if v.strip()]
    if not vals:
        raise CliError(key, "empty value")
    for v in vals:
        if choices is not None and v not in choices:
            raise CliError(key, f"invalid value {v!r}; choose from {', '.join(choices)}")
    return vals


def is_override(token: str) -> bool:
    """``key=value`` with a config-style key (what ``smet-train`` takes), not an option."""
    return bool(re.match(r"[A-Za-z_][\w.]*=", token))


def apply_overrides(args, tokens: Sequence[str]) -> None:
    """Apply Hydra-style ``key=value`` tokens on top of the flags (they win over them).

    ``model=NAME[,NAME]``, ``model.<key>=V`` (any LlamaConfig field: hidden_size, intermediate_size,
    num_layers, num_heads, vocab_size, ...), ``sparsity=METHOD[,METHOD]`` (``dense`` = only the
    baseline), ``sparsity.density=D[,D]``, ``sparsity.block_size``, ``sparsity.materialize``,
    ``sparsity.allocation``, ``trainer.precision``, ``data.batch_size``, ``data.seq_len``.
    """
    for tok in tokens:
        key, sep, raw = tok.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CliError(tok, f"not a key=value override; keys: {', '.join(OVERRIDE_KEYS)}")
        if key == "model":
            args.model = _values(key, raw)
            args.src["model"] = key
        elif key.startswith("model."):
            mk = key.split(".", 1)[1]
            if mk not in MODEL_KEYS:
                raise CliError(key, f"unknown model key {mk!r}; choose from {', '.join(MODEL_KEYS)}")
            val = _parse_value(key, raw, MODEL_KEYS[mk])
            if mk == "vocab_size":
                args.vocab = val
                args.src["vocab"] = key
            else:
                args.model_overrides[mk] = (val, key)
        elif key in ("sparsity", "sparsity.method"):
            methods = _values(key, raw, ("dense",) + METHOD_CHOICES)
            args.method = [m for m in methods if m != "dense"]
            args.src["method"] = key
        elif key == "sparsity.density":
            args.density = [_parse_value(key, v, float) for v in _values(key, raw)]
            args.src["density"] = key
        elif key == "sparsity.block_size":
            args.block_size = _parse_value(key, raw, int)
            args.src["block_size"] = key
        elif key == "sparsity.materialize":
            args.materialize = _values(key, raw, ("transient", "persistent"))
        elif key == "sparsity.allocation":
            args.allocation = _values(key, raw, ("uniform", "erk"))[0]
        elif key in ("trainer.precision", "precision"):
            args.precision = _values(key, raw, PRECISION_CHOICES)[0]
        elif key in ("data.batch_size", "batch"):
            args.batch = _parse_value(key, raw, int)
            args.src["batch"] = key
        elif key in ("data.seq_len", "seq_len"):
            args.seq_len = _parse_value(key, raw, int)
            args.src["seq_len"] = key
        else:
            raise CliError(key, f"unknown override key; keys: {', '.join(OVERRIDE_KEYS)}")


def resolve_model(name: str, args) -> dict[str, Any]:
    """Preset + overrides -> ``{"name", "label", "cfg", "vocab", "overrides", "params"}``."""
    from smet.errors import SmetConfigError
    from smet.models.llama import LlamaConfig

    cfg = load_model_preset(name, args.src.get("model", "--model"))
    overrides = {}
    for k, (v, _opt) in args.model_overrides.items():
        cfg[k] = v
        overrides[k] = v
    if args.vocab is not None:
        vocab = int(args.vocab)
        if cfg.get("vocab_size") not in (None, "auto") and int(cfg["vocab_size"]) != vocab:
            overrides["vocab_size"] = vocab
    elif cfg.get("vocab_size") not in (None, "auto"):
        vocab = int(cfg["vocab_size"])
    else:
        vocab = DEFAULT_VOCAB
    cfg["vocab_size"] = vocab
    d = dict(cfg)
    if d.get("max_seq_len") in (None, "auto"):
        d["max_seq_len"] = int(args.seq_len)
    try:
        lc = LlamaConfig.from_dict(d)
        lc.validate()
    except SmetConfigError as err:
        key = err.key.split(".", 1)[-1]
        opts = {k: o for k, (_v, o) in args.model_overrides.items()}
        opt = opts.get(key) or next(iter(opts.values()), args.src.get("model", "--model"))
        msg = str(err)[len(err.key) + 2:] if str(err).startswith(err.key + ": ") else str(err)
        raise CliError(opt, f"model {name!r}: {msg} ({err.key})") from None
    except TypeError as err:
        raise CliError(args.src.get("model", "--model"), f"model {name!r}: {err}") from None
    label = name + (" (" + ", ".join(f"{k}={v}" for k, v in overrides.items()) + ")" if overrides else "")
    return {"name": name, "label": label, "cfg": cfg, "vocab": vocab, "overrides": overrides,
            "params": lc.num_params(), "dims": lc}


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
                        checkpointing: bool, vocab: int, sparse_materialize: str | None, cap: int = 1 << 20) -> int:
    """Largest micro-batch ``b`` with ``static + activations(b) <= budget`` (0: not even b = 1).

    Uses :func:`smet.sparse.memory.estimate_activations` (non-decreasing in ``b``): doubling, then
    bisection. Capped at ``cap``.
    """
    from smet.sparse.memory import estimate_activations

    def fits(b: int) -> bool:
        act = estimate_activations(model_cfg, b, seq_len, precision, checkpointing, vocab,
                                   sparse_materialize=sparse_materialize)
        return static_total + act["total"] <= budget

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


def compute_rows(model_name: str, model_cfg: dict, args, *, vocab: int | None = None, gpu: dict | None = None,
                 model: dict | None = None) -> list[dict[str, Any]]:
    from smet.sparse.memory import (active_weight_count, bytes_per_active_weight, estimate_activations,
                                    method_configs, predict_static)

    vocab = int(args.vocab if vocab is None else vocab)
    ckpt = args.activation_checkpointing
    if ckpt is None:
        ckpt = bool(model_cfg.get("gradient_checkpointing", False))
    rows = []
    combos: list[tuple[str, float, str]] = [("dense", 1.0, "-")]
    for method in args.method:
        for d in args.density:
            for mat in args.materialize:
                combos.append((method, d, mat))
    dense_total = None
    for method, d, mat in combos:
        scfg, ocfg = method_configs(method, d, block_size=args.block_size, materialize=mat if mat != "-" else "transient",
                                    allocation=args.allocation)
        pred = predict_static(model_cfg, scfg, ocfg, args.precision, vocab, args.seq_len)
        active = active_weight_count(model_cfg, scfg, vocab, args.seq_len)
        smat = None if method == "dense" else mat
        act = estimate_activations(model_cfg, args.batch, args.seq_len, args.precision, ckpt, vocab,
                                   sparse_materialize=smat)
        if dense_total is None:
            dense_total = pred["all"]["total"]
        formula = bytes_per_active_weight(args.precision, method, args.block_size,
                                          "transient" if method == "dense" else mat,
                                          density=None if method == "dense" else d)
        row = {
            "model": model_name, "method": method, "density": d,
            "materialize": smat,
            "block_size": None if method == "dense" else args.block_size,
            "allocation": None if method == "dense" else args.allocation,
            "precision": args.precision, "batch": args.batch, "seq_len": args.seq_len, "vocab": vocab,
            "activation_checkpointing": ckpt,
            "static_bytes": pred["all"], "sparse_static_bytes": pred["sparse"],
            "active_weights": active,
            "bytes_per_active_weight": pred["sparse"]["total"] / active,
            "bytes_per_active_weight_formula": formula,
            "ratio_vs_dense": pred["all"]["total"] / dense_total,
            "activations_estimate_bytes": act,
            "peak_estimate_bytes": pred["all"]["total"] + act["total"],
            "sparsity_cfg": scfg, "optimizer_cfg": {k: (list(v) if isinstance(v, tuple) else v) for k, v in ocfg.items()},
        }
        if model is not None:
            row["model_label"] = model["label"]
            row["model_overrides"] = model["overrides"]
            row["params"] = model["params"]
            lc = model["dims"]
            row["model_dims"] = {k: getattr(lc, k) for k in ("hidden_size", "intermediate_size", "num_layers",
                                                             "num_heads", "vocab_size")}
        if gpu is not None:
            budget = gpu["usable_bytes"]
            static = pred["all"]["total"]
            row["gpu"] = dict(gpu)
            row["fits"] = row["peak_estimate_bytes"] <= budget
            row["headroom_bytes"] = budget - row["peak_estimate_bytes"]
            row["max_batch"] = {
                "no_checkpointing": max_batch_that_fits(static, budget, model_cfg, args.seq_len, args.precision,
                                                        False, vocab, smat),
                "checkpointing": max_batch_that_fits(static, budget, model_cfg, args.seq_len, args.precision,
                                                     True, vocab, smat)}
        rows.append(row)
    return rows


def _label(r: dict, wide: bool = True) -> str:
    if r["method"] == "dense":
        return "dense AdamW"
    if wide:
        return f"{r['method']} d={r['density']:g} b={r['block_size']} {r['materialize']} {r['allocation']}"
    return f"{r['method']} d={r['density']:g}" + (" persistent" if r["materialize"] == "persistent" else "")


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
           f"{'on' if r0['activation_checkpointing'] else 'off'}")
    lines += _wrap(sub + ", figures in GiB", width, "  ")
    if "gpu" in r0:
        g = r0["gpu"]
        gname = "memory" if g["name"] == "custom" else g["name"] + ":"
        lines += _wrap(f"GPU {gname} {g['mem_gib']:g} GiB - reserve {g['reserve_gib']:g} GiB = "
                       f"{_gib(g['usable_bytes']):.2f} GiB usable for static + activations", width, "  ")
    return lines


def _notes(rows: list[dict], wide: bool, width: int) -> list[str]:
    sparse = [r for r in rows if r["method"] != "dense"]
    notes = []
    if sparse and not wide:
        r = sparse[0]
        notes.append(f"sparse rows: block size {r['block_size']}, allocation {r['allocation']}, dense weights "
                     f"materialised transiently unless marked persistent (--wide: full labels and the static "
                     f"breakdown weights / grads / optimizer / metadata / compute copy).")
    notes.append("static: weights + grads + optimizer states + metadata (index, local step) + compute copy + "
                 "buffers, exact for this code (grads counted as present, i.e. right after backward).")
    notes.append(f"{'B/active w' if wide else 'B/act w'}: static bytes of the sparse layers per active weight "
                 "(dense row: per weight of the same layers). vs dense: static total / dense AdamW static total.")
    notes.append(f"* ESTIMATES: {'activations' if wide else 'act.'} = tensors saved for backward + fp32 "
                 "logits/loss buffers + one transient dense weight/gradient + the int64 element index sparse "
                 "layers save for backward (+ autocast weight copies under *-mixed); peak = static + activations. "
                 "Excludes allocator fragmentation and CUDA context.")
    if any("fits" in r for r in rows):
        notes.append("fits: peak* <= usable GPU memory at this batch and checkpointing setting. max b / max b ckpt: "
                     "the largest micro-batch with static + activations* <= usable, without / with activation "
                     "checkpointing (0: not even batch 1). usable = GPU memory - --reserve (CUDA context, "
                     "cuBLAS workspaces, fragmentation); an estimate, not a guarantee.")
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
    by_model: dict[str, list[dict]] = {}
    for r in rows:
        by_model.setdefault(r.get("model_label", r["model"]), []).append(r)
    for i, rs in enumerate(by_model.values()):
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
    p = _Parser(
        prog="smet-memory",
        description=textwrap.fill(
            "Predict the training memory of a LLaMA preset: the dense AdamW baseline and compact sparse "
            "configs (static / set / rigl / smet), without allocating the model. Static figures "
            "(weights, grads, optimizer states, index + local-step metadata, persistent compute copy) are "
            "exact for this code; activations and peak are labelled estimates. With --gpu / --gpu-mem it "
            "says whether each config fits and the largest micro-batch that does.", 100),
        epilog="examples:\n"
               "  smet-memory --model 350m --density 0.25 --precision bf16-true --batch 128 --seq-len 256\n"
               "  smet-memory --model 1b_aligned 7b 13b --density 0.5 0.25 0.1 --precision bf16-true --json\n"
               "  smet-memory model=13b sparsity=smet sparsity.density=0.25 --gpu-mem 80\n"
               "  smet-memory --model 13b --hidden-size 4096 --heads 32 --layers 24 --density 0.25 --gpu h100-80gb\n"
               "  smet-memory model=7b model.num_layers=16 sparsity.density=0.1,0.25 --gpu a100-40gb --wide\n"
               "key=value overrides (like smet-train; they win over the flags): model=NAME, model.<key>=V\n"
               + textwrap.fill(f"({', '.join(MODEL_KEYS)}),", 96, initial_indent="  ", subsequent_indent="  ")
               + "\n"
               "  sparsity=METHOD (dense: baseline only), sparsity.density=D[,D], sparsity.block_size=B,\n"
               "  sparsity.materialize=M, sparsity.allocation=A, trainer.precision=P, data.batch_size=N,\n"
               "  data.seq_len=N.\n"
               + textwrap.fill(f"--gpu usable GiB (CUDA's reported total capacity, before --reserve): {gpus}.",
                               96, subsequent_indent="  ") + "\n"
               "Model presets are read from conf/model/<name>.yaml (env SMET_CONF_DIR overrides the conf dir).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. model=13b model.num_layers=24 sparsity=smet sparsity.density=0.25")
    p.add_argument("--model", nargs="+", metavar="NAME",
                   help="model preset name(s) from conf/model (e.g. 130m 350m 1b_aligned 7b 13b), not a path "
                        "(or model=NAME)")
    p.add_argument("--density", nargs="+", type=float, metavar="D",
                   help="target density/densities of the sparse layers, each in (0, 1] (or sparsity.density=D)")
    p.add_argument("--method", nargs="+", default=["smet"], choices=METHOD_CHOICES,
                   help="sparse method(s) (default: smet); the dense AdamW baseline is always shown")
    p.add_argument("--precision", default="bf16-true", choices=PRECISION_CHOICES,
                   help="Lightning precision: 32 / bf16-mixed / 16-mixed keep fp32 params and states (4 B), "
                        "bf16-true keeps them in bf16 (2 B) (default: bf16-true)")
    p.add_argument("--batch", type=int, default=8, help="micro-batch size per device (default: 8)")
    p.add_argument("--seq-len", type=int, default=256, help="sequence length (default: 256)")
    p.add_argument("--vocab", "--vocab-size", dest="vocab", type=int, default=None,
                   help=f"vocabulary size (default: the preset's vocab_size, else {DEFAULT_VOCAB})")
    for flag, key in MODEL_FLAGS.items():
        p.add_argument(flag, dest=key, type=int, default=None, metavar="N",
                       help=f"override the preset's {key} (= model.{key}=N)")
    p.add_argument("--block-size", type=int, default=1, help="sparsity block size b, must divide the rows (default: 1)")
    p.add_argument("--materialize", nargs="+", default=["transient"], choices=("transient", "persistent"),
                   help="dense weight materialisation mode(s) (default: transient)")
    p.add_argument("--allocation", default="uniform", choices=("uniform", "erk"),
                   help="per-layer density allocation (default: uniform)")
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="per-block activation checkpointing for the activation estimate (default: the preset's "
                        "gradient_checkpointing)")
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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    tokens = [a for a in argv if is_override(a)]
    args = parser.parse_args([a for a in argv if not is_override(a)])
    try:
        args.src = {}
        args.model_overrides = {key: (getattr(args, key), flag) for flag, key in MODEL_FLAGS.items()
                                if getattr(args, key) is not None}
        apply_overrides(args, tokens + list(args.overrides))
        if not args.model:
            raise CliError("--model", f"required: a preset name (or model=NAME); available: "
                                      f"{', '.join(available_presets()) or '(none)'}")
        if args.method and not args.density:
            raise CliError("--density", "required for sparse methods (or sparsity.density=D; sparsity=dense shows "
                                        "only the dense baseline)")
        if not args.method:
            args.density = args.density or [1.0]
        for d in args.density:
            check_density(d, args.src.get("density", "--density"))
        for key, opt in (("batch", "--batch"), ("seq_len", "--seq-len"), ("vocab", "--vocab")):
            v = getattr(args, key)
            if v is not None and v < 1:
                raise CliError(args.src.get(key, opt), f"must be a positive integer, got {v}")
        for key, (v, opt) in args.model_overrides.items():
            if MODEL_KEYS[key] is int and v < 1:
                raise CliError(opt, f"must be a positive integer, got {v}")
        gpu = resolve_gpu(args)
        models = [resolve_model(name, args) for name in args.model]
        for m in models:
            check_block_size(m["cfg"], args.block_size, args.src.get("block_size", "--block-size"))
        rows = []
        for m in models:
            rows += compute_rows(m["name"], m["cfg"], args, vocab=m["vocab"], gpu=gpu, model=m)
    except CliError as err:
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
