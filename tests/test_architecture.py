"""Structure rules of issue 13 that a refactor could silently break.

* the pure core ``smet.sparse`` imports no other smet package (read from the source AND checked on a
  fresh interpreter's ``sys.modules``);
* conf/ is the only source of methods and model presets: no Python method table, no module that
  reads conf/model or conf/sparsity YAML files itself;
* every composed method config passes each optimizer option explicitly, so no Python default of
  the core ever decides a run.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "smet"


def _graph():
    spec = importlib.util.spec_from_file_location("import_graph", REPO / "scripts" / "import_graph.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.graph()


def test_sparse_core_imports_no_other_smet_package_in_source():
    edges = _graph()
    assert "smet.sparse" in edges
    assert edges["smet.sparse"] == set(), f"smet.sparse imports {sorted(edges['smet.sparse'])}"
    # and the graph reader itself sees real edges (it would pass vacuously on an empty graph)
    assert "smet.sparse" in edges["smet.build"]


def test_importing_the_sparse_core_loads_no_other_smet_module():
    code = ("import sys, smet.sparse, smet.sparse.memory, smet.sparse.kernels, smet.sparse.distributed, "
            "smet.sparse.config, smet.sparse.schedules\n"
            "print(sorted(m for m in sys.modules if m.startswith('smet') and m != 'smet' "
            "and not m.startswith('smet.sparse')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]", out.stdout


def test_no_method_or_preset_table_in_python():
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for pattern in (r"def method_configs\b", r"def load_model_preset\b",
                        r"""["']conf["']\s*/\s*["'](model|sparsity)["']""", r"conf_dir\(\)\s*/\s*[\"'](model|sparsity)[\"']",
                        # a growth-per-method table like {"static": "none", "set": "random", ...}
                        r"""\{\s*["']static["']\s*:\s*["']none["']"""):
            for m in re.finditer(pattern, text):
                offenders.append(f"{path.relative_to(REPO)}: {m.group(0)}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("method", sorted(p.stem for p in (REPO / "conf" / "sparsity").glob("*.yaml")
                                          if p.stem not in ("base", "dense")))
def test_every_method_config_sets_every_sparse_optimizer_option(method):
    """The SMET optimizer and the memory model fall back to Python defaults only for keys a config
    leaves out; a composed method never leaves one out."""
    import inspect

    from smet.compose import compose
    from smet.sparse.optimizer import SMETOptimizer

    cfg = compose([f"sparsity={method}"])
    sig = inspect.signature(SMETOptimizer.__init__)
    keys = [k for k, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and k != "fused"]
    assert {"regrowth_warmup_steps", "reset_local_step", "reset_moments", "warmup_shape"} <= set(keys)
    missing = [k for k in keys + ["lr", "betas", "eps", "weight_decay", "lr_scaling", "lr_scaling_scope"]
               if cfg.optimizer.get(k) is None]
    assert not missing, f"sparsity={method}: optimizer keys left to Python defaults: {missing}"
