"""The README's two Quick start commands are the ones CI runs and the Makefile provides."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def test_quick_start_has_exactly_train_and_test():
    assert quick_start_commands() == ["make train", "make test"]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", ci, re.M)


def test_makefile_targets_install_before_running():
    mk = (REPO / "Makefile").read_text()
    for target, runs in (("train", "train.py"), ("test", "pytest")):
        m = re.search(rf"^{target}: \$\(STAMP\)\n((?:\t.*\n)+)", mk, re.M)
        assert m, f"target {target} must depend on the install stamp"
        assert runs in m.group(1)
    assert "-c constraints.txt" in mk and "torch==" in (REPO / "constraints.txt").read_text()
