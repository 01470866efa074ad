"""``smet-eval``: validation loss and perplexity of a training checkpoint, without training.

The model is rebuilt from the checkpoint (its hyper-parameters hold the run config; dense or sparse
layers as stored), the validation windows from the run's data config with the run's own tokenizer
(``<run>/tokenizer.json``; the corpus is re-tokenised with it when the data cache is empty, never
re-trained). Bad input fails with one line on stderr and exit code 2 before the model is built.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Sequence

from smet.cli.args import OneLineParser, die
from smet.cli.infer_args import check_src, device_arg, int_at_least

PROG = "smet-eval"


def build_parser() -> OneLineParser:
    fill = lambda s: textwrap.fill(s, width=100)  # noqa: E731
    p = OneLineParser(
        prog=PROG,
        description=fill(
            "Evaluate a training checkpoint: mean next-token cross-entropy (val loss), perplexity exp(loss) and the "
            "number of target tokens scored, on the run's validation windows (data.max_val_sequences windows of "
            "data.seq_len+1 tokens, batches of data.batch_size, as the run's val/loss was computed). Works on "
            "another machine: the tokenizer comes from the run directory; the data is re-prepared from the corpus "
            "(the embedded corpus, or data.path) when the cache lacks it."),
        epilog="examples:\n"
               "  smet-eval outputs/2026-01-31/12-00-00-000000\n"
               "  smet-eval run/checkpoints/step0001000.ckpt --batches 4 --device cuda\n"
               "  smet-eval run --split train --json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="CKPT_OR_RUN_DIR",
                   help="a .ckpt file, or a run directory (its checkpoints/last.ckpt or newest hpc_ckpt_*.ckpt)")
    p.add_argument("--split", choices=("val", "train"), default="val",
                   help="val: the run's validation windows; train: as many evenly spaced train windows "
                        "(default: %(default)s)")
    p.add_argument("--batches", type=int_at_least(1), default=None, metavar="N",
                   help="evaluate the first N batches only (default: the run's trainer.limit_val_batches, else all)")
    p.add_argument("--batch-size", type=int_at_least(1), default=None, metavar="B",
                   help="sequences per batch (default: the run's data.batch_size)")
    p.add_argument("--device", type=device_arg, default="auto",
                   help="cpu, cuda or cuda:N (default: auto = cuda when available)")
    p.add_argument("--precision", choices=("auto", "32", "bf16-mixed", "bf16-true"), default="auto",
                   help="auto (default): the run's trainer.precision; 32 for fp32")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="data cache to use/fill (default: $SMET_CACHE_DIR, else the run's data.cache_dir when it "
                        "exists, else ~/.cache/smet)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_src(parser, args.src)
    import logging
    import warnings

    from smet.errors import SmetConfigError
    from smet.export.infer import evaluate, load_for_inference

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    try:
        run, _ = load_for_inference(args.src, device=args.device, with_tokenizer=False)
        for w in run.warnings:
            print(f"{PROG}: warning: {w}", file=sys.stderr, flush=True)
        r = evaluate(run, split=args.split, batches=args.batches, batch_size=args.batch_size,
                     precision=args.precision, cache_dir=args.cache_dir)
    except SmetConfigError as e:  # ExportError is one
        return die(PROG, str(e))
    if args.json:
        print(json.dumps(r))
        return 0
    what = run.method if run.method == "dense" else f"{run.method}, {len(run.sparse)} sparse layers"
    print(f"evaluated {r['checkpoint']} (step {r['global_step']}, {what}) on {r['data']} {r['split']}: "
          f"{r['sequences']} sequences x {r['seq_len']} tokens in {r['batches']} batches of {r['batch_size']}, "
          f"{r['device']}, precision {r['precision']}, {r['seconds']:.1f} s")
    print(f"  tokenizer: {r['tokenizer']}")
    print(f"  {r['split']} loss {r['loss']:.4f}  ppl {r['ppl']:.3f}  tokens {r['tokens']:,}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
