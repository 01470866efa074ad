"""The fault sweep (scripts/fault_sweep.py): every bad input and fault over train.py and the console
scripts behaves as the README documents (exit code, one error line naming the key, no traceback,
nothing written earlier changed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fault_sweep_all_cases_as_documented():
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "fault_sweep.py")], capture_output=True, text=True,
                       timeout=1800)
    tail = r.stdout.strip().splitlines()[-1]
    assert r.returncode == 0, "\n".join(l for l in r.stdout.splitlines() if "FAIL" in l or "stderr:" in l)[-4000:]
    assert tail.startswith("fault sweep: ") and " 0 not;" in tail
    assert int(tail.split()[2]) >= 130  # the sweep stays wide
