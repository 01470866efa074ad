"""``smet-generate``: continue a prompt with a trained checkpoint (dense or sparse), on CPU or GPU.

Greedy with ``--temperature 0``; otherwise top-k sampling (defaults: temperature 0.8, top-k 50) from a
seeded generator (``--seed``; without it a random seed is drawn and printed on stderr). Bad input
fails with one line on stderr and exit code 2 before the model is built.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Sequence

from smet.cli.args import OneLineParser, die
from smet.cli.infer_args import check_src, device_arg, float_at_least, int_at_least

PROG = "smet-generate"
DEFAULT_TEMPERATURE = 0.8  # = smet.export.infer.DEFAULT_TEMPERATURE (not imported: keeps --help fast)
DEFAULT_TOP_K = 50


def build_parser() -> OneLineParser:
    fill = lambda s: textwrap.fill(s, width=100)  # noqa: E731
    p = OneLineParser(
        prog=PROG,
        description=fill(
            "Generate text from a training checkpoint: the model sees <|endoftext|> + the prompt and adds "
            "--max-new-tokens tokens, one full forward each (no KV cache; the input is cropped to the run's "
            "data.seq_len context). Prints the prompt and its continuation (special tokens shown). The "
            "tokenizer is the run's own tokenizer.json."),
        epilog="examples:\n"
               "  smet-generate outputs/2026-01-31/12-00-00-000000 --prompt 'And God said' --max-new-tokens 40\n"
               "  smet-generate run --prompt 'In the beginning' --temperature 0          # greedy\n"
               "  smet-generate run/checkpoints/last.ckpt --prompt 'Jesus wept' --top-k 20 --seed 1 --device cuda\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="CKPT_OR_RUN_DIR",
                   help="a .ckpt file, or a run directory (its checkpoints/last.ckpt or newest hpc_ckpt_*.ckpt)")
    p.add_argument("--prompt", "-p", default="", help="text to continue (default: empty = start of a document)")
    p.add_argument("--max-new-tokens", "-n", type=int_at_least(0), default=64, metavar="N",
                   help="tokens to add (default: %(default)s)")
    p.add_argument("--temperature", "-t", type=float_at_least(0.0), default=DEFAULT_TEMPERATURE, metavar="T",
                   help="0 = greedy (deterministic); else softmax temperature (default: %(default)s)")
    p.add_argument("--top-k", "-k", type=int_at_least(0), default=DEFAULT_TOP_K, metavar="K",
                   help="sample among the K most likely tokens; 0 = all (default: %(default)s; unused when greedy)")
    p.add_argument("--seed", type=int_at_least(0), default=None, metavar="S",
                   help="sampling seed (default: random, printed on stderr); same seed, same text")
    p.add_argument("--stop-at-eot", action="store_true", help="stop early at <|endoftext|> (end of a document)")
    p.add_argument("--device", type=device_arg, default="auto",
                   help="cpu, cuda or cuda:N (default: auto = cuda when available)")
    p.add_argument("--json", action="store_true", help="print text, token counts, seed and new token ids as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_src(parser, args.src)
    import logging

    from smet.errors import SmetConfigError
    from smet.export.infer import generate, load_for_inference

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        run, tok = load_for_inference(args.src, device=args.device)
        for w in run.warnings:
            print(f"{PROG}: warning: {w}", file=sys.stderr, flush=True)
        r = generate(run, tok, args.prompt, args.max_new_tokens, temperature=args.temperature,
                     top_k=args.top_k or None, seed=args.seed, stop_at_eot=args.stop_at_eot)
    except SmetConfigError as e:  # ExportError is one
        return die(PROG, str(e))
    if args.json:
        print(json.dumps({**r, "checkpoint": str(run.ckpt_path), "global_step": run.global_step}))
        return 0
    print(r["text"], flush=True)
    mode = "greedy" if args.temperature == 0 else f"temperature {args.temperature}, top-k {args.top_k or 'all'}, " \
                                                  f"seed {r['seed']}"
    print(f"{PROG}: {r['new_tokens']} new tokens after {r['prompt_tokens']} prompt tokens ({mode}) from "
          f"{run.ckpt_path} step {run.global_step}, {next(run.model.parameters()).device}, {r['seconds']:.2f} s",
          file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
