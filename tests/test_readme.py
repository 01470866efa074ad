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


def test_doc_citations_point_at_existing_sections():
    """Every `docs/<file>.md section N` cited in conf/, docs/ or the README exists in the repo."""
    cited = 0
    for path in [*REPO.glob("conf/**/*.yaml"), *REPO.glob("docs/*.md"), REPO / "README.md"]:
        for doc, num in re.findall(r"(docs/[\w.-]+\.md) section (\d+)", path.read_text()):
            target = REPO / doc
            assert target.is_file(), f"{path.relative_to(REPO)} cites missing {doc}"
            assert re.search(rf"^## {num}\. ", target.read_text(), re.M), f"{doc} has no section {num}"
            cited += 1
    assert cited >= 4  # the configs cite the method spec; a rename must not silently drop them
    assert not re.search(r"(?<!docs/)smet-method\.md", "".join(p.read_text() for p in REPO.glob("conf/**/*.yaml")))
