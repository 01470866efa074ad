"""smet-bench's command line as overrides: the old config options translated (``--density 0.5 0.25``
-> ``sparsity.density=0.5,0.25``), and a config error turned into one line naming the key (or the old
option that set it)."""

from __future__ import annotations

import argparse
import re

from smet.errors import SmetConfigError

# old option -> config key (or group) it sets; one value, or several (a sweep) for nargs="+" ones
ALIASES = {"--model": "model", "--method": "sparsity", "--density": "sparsity.density",
           "--materialize": "sparsity.materialize", "--block-size": "sparsity.block_size",
           "--allocation": "sparsity.allocation", "--update-interval": "sparsity.update_interval",
           "--precision": "trainer.precision", "--activation-checkpointing": "model.gradient_checkpointing",
           "--compile": "trainer.compile", "--batch": "data.batch_size", "--seq-len": "data.seq_len",
           "--vocab": "data.tokenizer.vocab_size", "--lr": "optimizer.lr", "--seed": "seed"}
_ON_OFF = {"on": "true", "off": "false"}


def alias_overrides(args: argparse.Namespace, overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    """The old options as overrides appended to the given ones (``--density 0.5 0.25`` ->
    ``sparsity.density=0.5,0.25``); also the key -> option map for error messages."""
    out, alias_of = list(overrides), {}
    given = {o.partition("=")[0].lstrip("+~") for o in overrides}
    for opt, key in ALIASES.items():
        value = getattr(args, opt[2:].replace("-", "_"))
        if value is None:
            continue
        if key in given:
            raise SmetConfigError(opt, f"sets {key}, which the override {key}=... sets too; give one of them")
        values = [_ON_OFF.get(str(v), str(v)) for v in (value if isinstance(value, list) else [value])]
        out.append(f"{key}={','.join(dict.fromkeys(values))}")
        alias_of[key] = opt
    return out, alias_of


def describe(err: Exception, alias_of: dict[str, str]) -> str:
    """A config error as ``<key or option>: <what> (point: <its overrides>)``."""
    msg = re.sub(r"\+\+(sparsity\.)", r"\1", str(err))  # grid.bench_overrides' rewriting stays invisible
    key = getattr(err, "key", "") or ""
    m = re.match(r"task \d+ \((.*?)\): (.*)$", msg)
    point = None
    if m:
        point, msg = m.groups()
    g = re.search(r"Could not find '([\w/]+)/([^']+)'", msg)
    if g:
        key = g.group(1)
        opts = re.search(r"Available options in '[^']+':\s*(.*)$", msg)
        msg = f"{key}: no preset {g.group(2)!r} in conf/{key}" + (
            f"; choose one of: {', '.join(opts.group(1).split())}" if opts else "")
    g = re.search(r"Could not override '([\w.]+)'", msg)
    if g and not key:
        key = g.group(1)
        msg = f"{key}: no such key in the composed config (a typo? see conf/)"
    if key in alias_of:
        body = msg[len(key) + 2:] if msg.startswith(f"{key}: ") else msg
        msg = f"{alias_of[key]}: {body}" if "." not in key else f"{alias_of[key]} ({key}): {body}"
    return msg + (f" (point: {point})" if point else "")
