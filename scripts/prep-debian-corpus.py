#!/usr/bin/env python
"""Build the offline English corpus for ``data=debian_docs`` from Debian documentation packages.

    .venv/bin/python scripts/prep-debian-corpus.py --out /tmp/debian_corpus --xz
    SMET_DEBIAN_CORPUS=/tmp/debian_corpus .venv/bin/python train.py data=debian_docs

Fetches the packages with ``apt-get download`` (prep time only; needs apt), unpacks them with
``dpkg-deb -x`` under --workdir, and writes one JSONL per source plus MANIFEST.json to --out
(see :mod:`smet.data.debian`). Re-running reuses the downloads and rewrites identical files.
The output is third-party text under the licences in MANIFEST.json: keep it out of the repo.
Bad input: one ``prep-debian-corpus: error: <option>: ...`` line, exit code 2, before any download.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

PROG = "prep-debian-corpus"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _list(value: str) -> list[str]:
    return [] if value.strip().lower() in ("", "none") else [v.strip() for v in value.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    from smet.data import debian

    default_out = os.environ.get("SMET_DEBIAN_CORPUS") or os.path.expanduser("~/.cache/smet/debian_corpus")
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=default_out,
                   help="output directory (default $SMET_DEBIAN_CORPUS or ~/.cache/smet/debian_corpus)")
    p.add_argument("--packages", default=",".join(debian.DEFAULT_PACKAGES),
                   help="comma-separated Debian packages (default: %(default)s; 'none' for extras only)")
    p.add_argument("--extras", default=",".join(debian.EXTRAS),
                   help="corpora from installed PyPI packages to add: kjv, enwiki (default both; 'none')")
    p.add_argument("--workdir", default=None, help="downloads and unpacked trees (default <out>.work)")
    p.add_argument("--xz", action="store_true", help="also write <out>.tar.xz to carry to another machine")
    args = p.parse_args(argv)
    out = Path(args.out).expanduser()
    workdir = Path(args.workdir).expanduser() if args.workdir else out.with_name(out.name + ".work")
    t0 = time.time()
    try:
        manifest = debian.build(_list(args.packages), _list(args.extras), out, workdir, xz=args.xz)
    except debian.PrepError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    t = manifest["totals"]
    print(f"{out}: {t['documents']} documents, {t['words']} words (~{t['approx_tokens']} tokens), "
          f"{t['file_bytes']} bytes of JSONL in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
