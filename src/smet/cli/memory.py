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
import sys
from pathlib import Path
from typing import Any, Sequence

GIB = float(2**30)
PRECISION_CHOICES = ("32", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
METHOD_CHOICES = ("static", "set", "rigl", "smet")


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
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


# ----------------------------------------------------------------------------- rows
def _gib(n: float) -> float:
    return n / GIB


def compute_rows(model_name: str, model_cfg: dict, args) -> list[dict[str, Any]]:
    from smet.sparse.memory import (active_weight_count, bytes_per_active_weight, estimate_activations,
                                    method_configs, predict_static)

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
        pred = predict_static(model_cfg, scfg, ocfg, args.precision, args.vocab, args.seq_len)
        active = active_weight_count(model_cfg, scfg, args.vocab, args.seq_len)
        act = estimate_activations(model_cfg, args.batch, args.seq_len, args.precision, ckpt, args.vocab,
                                   sparse_materialize=None if method == "dense" else mat)
        if dense_total is None:
            dense_total = pred["all"]["total"]
        formula = bytes_per_active_weight(args.precision, method, args.block_size,
                                          "transient" if method == "dense" else mat,
                                          density=None if method == "dense" else d)
        rows.append({
            "model": model_name, "method": method, "density": d,
            "materialize": None if method == "dense" else mat,
            "block_size": None if method == "dense" else args.block_size,
            "allocation": None if method == "dense" else args.allocation,
            "precision": args.precision, "batch": args.batch, "seq_len": args.seq_len, "vocab": args.vocab,
            "activation_checkpointing": ckpt,
            "static_bytes": pred["all"], "sparse_static_bytes": pred["sparse"],
            "active_weights": active,
            "bytes_per_active_weight": pred["sparse"]["total"] / active,
            "bytes_per_active_weight_formula": formula,
            "ratio_vs_dense": pred["all"]["total"] / dense_total,
            "activations_estimate_bytes": act,
            "peak_estimate_bytes": pred["all"]["total"] + act["total"],
            "sparsity_cfg": scfg, "optimizer_cfg": {k: (list(v) if isinstance(v, tuple) else v) for k, v in ocfg.items()},
        })
    return rows


def _label(r: dict) -> str:
    if r["method"] == "dense":
        return "dense AdamW"
    return f"{r['method']} d={r['density']:g} b={r['block_size']} {r['materialize']} {r['allocation']}"


COLUMNS = ("config", "weights", "grads", "optimizer", "metadata", "compute copy", "static", "B/active w",
           "vs dense", "activations*", "peak*")


def _cells(r: dict) -> list[str]:
    s = r["static_bytes"]
    return [_label(r)] + [f"{_gib(s[k]):.3f}" for k in ("weights", "grads", "optimizer", "metadata", "compute_copy", "total")] + [
        f"{r['bytes_per_active_weight']:.2f}", f"{r['ratio_vs_dense']:.3f}x",
        f"{_gib(r['activations_estimate_bytes']['total']):.3f}", f"{_gib(r['peak_estimate_bytes']):.3f}"]


def render(rows: list[dict], out=sys.stdout) -> None:
    by_model: dict[str, list[dict]] = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r)
    for model, rs in by_model.items():
        r0 = rs[0]
        title = (f"model {model}  precision {r0['precision']}  batch {r0['batch']} x seq {r0['seq_len']}  vocab {r0['vocab']}"
                 f"  activation checkpointing {'on' if r0['activation_checkpointing'] else 'off'}  (GiB)")
        body = [_cells(r) for r in rs]
        try:
            from rich.console import Console
            from rich.table import Table

            table = Table(title=title, title_justify="left")
            for i, c in enumerate(COLUMNS):
                table.add_column(c, justify="left" if i == 0 else "right")
            for cells in body:
                table.add_row(*cells)
            Console(file=out, width=max(160, len(title) + 4)).print(table)
        except ImportError:  # plain fallback
            widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(COLUMNS)]
            print(title, file=out)
            print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(COLUMNS, widths))), file=out)
            for b in body:
                print("  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(b, widths))), file=out)
    print("static: weights + grads + optimizer states + metadata (index, local step) + compute copy + buffers, exact for "
          "this code (grads counted as present, i.e. right after backward).", file=out)
    print("B/active w: static bytes of the sparse layers per active weight (dense row: per weight of the same layers). "
          "vs dense: static total / dense AdamW static total.", file=out)
    print("* ESTIMATES: activations = tensors saved for backward + fp32 logits/loss buffers + one transient dense "
          "weight/gradient + the int64 element index sparse layers save for backward (+ autocast weight copies under "
          "*-mixed); peak = static + activations. Excludes allocator fragmentation and CUDA context.", file=out)


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="smet-memory",
        description="Predict the training memory of a LLaMA preset: the dense AdamW baseline and compact sparse "
                    "configs (static / set / rigl / smet), without allocating the model. Static figures "
                    "(weights, grads, optimizer states, index + local-step metadata, persistent compute copy) are "
                    "exact for this code; activations and peak are labelled estimates.",
        epilog="examples:\n"
               "  smet-memory --model 350m --density 0.25 --precision bf16-true --batch 128 --seq-len 256\n"
               "  smet-memory --model 1b_aligned 7b 13b --density 0.5 0.25 0.1 --precision bf16-true --json\n"
               "Model presets are read from conf/model/<name>.yaml (env SMET_CONF_DIR overrides the conf dir).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", required=True, metavar="NAME",
                   help="model preset(s) from conf/model (e.g. 130m 350m 1b_aligned 7b 13b)")
    p.add_argument("--density", nargs="+", type=float, required=True, metavar="D",
                   help="target density/densities of the sparse layers, each in (0, 1]")
    p.add_argument("--method", nargs="+", default=["smet"], choices=METHOD_CHOICES,
                   help="sparse method(s) (default: smet); the dense AdamW baseline is always shown")
    p.add_argument("--precision", default="bf16-true", choices=PRECISION_CHOICES,
                   help="Lightning precision: 32 / bf16-mixed / 16-mixed keep fp32 params and states (4 B), "
                        "bf16-true keeps them in bf16 (2 B) (default: bf16-true)")
    p.add_argument("--batch", type=int, default=8, help="micro-batch size per device (default: 8)")
    p.add_argument("--seq-len", type=int, default=256, help="sequence length (default: 256)")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size (default: 32000)")
    p.add_argument("--block-size", type=int, default=1, help="sparsity block size b, must divide the rows (default: 1)")
    p.add_argument("--materialize", nargs="+", default=["transient"], choices=("transient", "persistent"),
                   help="dense weight materialisation mode(s) (default: transient)")
    p.add_argument("--allocation", default="uniform", choices=("uniform", "erk"),
                   help="per-layer density allocation (default: uniform)")
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="per-block activation checkpointing for the activation estimate (default: the preset's "
                        "gradient_checkpointing)")
    p.add_argument("--json", action="store_true", help="print JSON records (bytes) instead of the table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for d in args.density:
            check_density(d)
        for opt, v in (("--batch", args.batch), ("--seq-len", args.seq_len), ("--vocab", args.vocab)):
            if v < 1:
                raise CliError(opt, f"must be a positive integer, got {v}")
        presets = [(name, load_model_preset(name)) for name in args.model]
        for _, mc in presets:
            check_block_size(mc, args.block_size)
        rows = []
        for name, mc in presets:
            rows += compute_rows(name, mc, args)
    except CliError as err:
        print(f"smet-memory: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
    else:
        render(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
