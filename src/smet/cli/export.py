"""``smet-export``: a training checkpoint -> a Hugging Face LLaMA directory and/or a compact sparse file.

Bad input (a missing or corrupt checkpoint, a directory without checkpoints, a non-empty --out
without --force) fails with one line on stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Sequence

from smet.cli.args import OneLineParser, die


def build_parser() -> argparse.ArgumentParser:
    fill = lambda s: textwrap.fill(s, width=100)  # noqa: E731
    p = OneLineParser(
        usage_on_error=True,
        prog="smet-export",
        description=fill(
            "Export a training checkpoint. 'hf': a dense safetensors state dict in the Hugging Face LLaMA layout "
            "(model.safetensors + config.json; sparse layers densified, zeros at inactive positions) that "
            "transformers.LlamaForCausalLM.from_pretrained(DIR) loads without smet. 'compact': only the active "
            "weights (sparse_model.safetensors: values + int32 block ids per sparse layer, dense parameters as they "
            "are, metadata block_size / n_live / shape; sparse_config.json) for smet.export.load_compact(DIR), which "
            "restores our model exactly. The run's tokenizer is copied as tokenizer.json when it can be found."),
        epilog="examples:\n"
               "  smet-export outputs/2026-01-31/12-00-00-000000 --out export/run1\n"
               "  smet-export run/checkpoints/step0001000.ckpt --out export/hf --format hf --dtype bfloat16\n"
               "  smet-export multirun/2026-01-31/12-00-00/3 --out export/compact --format compact --force\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="CKPT_OR_RUN_DIR",
                   help="a .ckpt file, or a run directory (its checkpoints/last.ckpt or newest hpc_ckpt_*.ckpt)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="export directory (created; an existing non-empty one is refused unless --force)")
    p.add_argument("--format", dest="fmt", choices=("hf", "compact", "both"), default="both",
                   help="hf (dense, transformers), compact (sparse, smet) or both in DIR (default: %(default)s)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="dtype of the exported floating-point tensors (default: %(default)s; block ids stay int32)")
    p.add_argument("--force", action="store_true",
                   help="write into an existing non-empty --out, replacing earlier export files there")
    p.add_argument("--verify", action="store_true",
                   help="reload the export and print max |logits - checkpoint model logits| on random tokens "
                        "(uses transformers for the hf directory when installed)")
    return p


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import logging

    from smet.errors import SmetConfigError
    from smet.export import ExportWarning, export_checkpoint

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.simplefilter("ignore", ExportWarning)  # printed below as one line each
    try:
        res = export_checkpoint(args.src, args.out, fmt=args.fmt, dtype=args.dtype, force=args.force)
    except SmetConfigError as e:  # ExportError is one
        return die("smet-export", e)
    for w in res.warnings:
        print(f"smet-export: warning: {w}", file=sys.stderr, flush=True)
    r = res.record
    what = r["method"] if r["method"] == "dense" else f"{r['method']} at density {r['density']:.4f}"
    print(f"exported {res.ckpt_path} (step {r['global_step']}, {what}) -> {res.out_dir} "
          f"[{args.fmt}, {args.dtype}] in {res.seconds:.1f} s")
    for name, size in sorted(res.files.items()):
        print(f"  {name:28s} {_mb(size)}")
    if res.sparse_checks:
        act = sum(c["n_active"] for c in res.sparse_checks)
        nnz = sum(c["nonzeros"] for c in res.sparse_checks)
        print(f"  {len(res.sparse_checks)} sparse layers densified: {nnz:,} non-zeros for {act:,} active weights "
              "(zeros elsewhere)")
    print(f"  tokenizer: {res.tokenizer}")
    if args.verify:
        from smet.export import load_run
        from smet.export.exporter import verify_export

        v = verify_export(res.out_dir, load_run(res.ckpt_path).model)
        for k, val in v.items():
            print(f"  verify {k}: {val:.3e}" if isinstance(val, float) else f"  verify {k}: {val}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
