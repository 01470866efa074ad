"""Shared by the multi-process tests (test_ddp.py, test_fsdp.py): run a test file as one worker process per rank.

Each worker is ``python SCRIPT worker RANK WORLD PORT OUT`` and writes ``OUT/rank<RANK>.json``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(script: str, tmp_path: Path, world: int = 2, timeout: int = 120, what: str = "workers") -> list[dict]:
    """Start ``world`` workers of ``script``, wait (a hung collective fails the test after ``timeout`` s) and
    return each rank's JSON."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, script, "worker", str(r), str(world), str(port), str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for r in range(world)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:  # a collective mismatch would hang: fail, don't wait forever
            for q in procs:
                q.kill()
            raise AssertionError(f"{what} hung (collective order mismatch?)")
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-4000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
