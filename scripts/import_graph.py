#!/usr/bin/env python
"""Print smet's import graph between its packages (from the source, without importing it).

    python scripts/import_graph.py            # edges  smet.a -> smet.b  (function-level imports included)
    python scripts/import_graph.py --sizes    # also the line count of every module

A package is smet.<name> for a sub-package (smet.sparse, smet.data, ...) and the module itself for
top-level modules (smet.build, smet.compose, ...). The pure core must have no outgoing edge:
smet.sparse -> (nothing but itself).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "smet"


def unit(module: str) -> str:
    parts = module.split(".")
    if len(parts) >= 2 and (ROOT / parts[1]).is_dir():
        return ".".join(parts[:2])
    return ".".join(parts[:2]) if len(parts) >= 2 else module


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("smet")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = me.split(".")[: -node.level] if path.name != "__init__.py" else me.split(".")[: len(me.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("smet"):
                out.add(mod)
    return out


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in sorted(ROOT.rglob("*.py")):
        src = unit(module_name(path))
        for mod in imports(path):
            dst = unit(mod)
            if dst != src and dst != "smet":
                edges[src].add(dst)
        edges.setdefault(src, set())
    return edges


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", action="store_true", help="also print the line count of every module")
    args = p.parse_args(argv)
    for src, dsts in sorted(graph().items()):
        print(f"{src:22s} -> {', '.join(sorted(dsts)) or '(nothing)'}")
    if args.sizes:
        print()
        for path in sorted(ROOT.rglob("*.py")):
            print(f"{len(path.read_text().splitlines()):5d}  {path.relative_to(ROOT.parents[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
