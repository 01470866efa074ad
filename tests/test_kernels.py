"""The fused Triton kernels (smet.sparse.kernels) against the PyTorch reference path.

On CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, which must be set before
Triton is imported, hence the subprocess); on CUDA (``-m gpu``) they are compiled. The
interpreter rounds fp32 -> bf16 by truncation, so bf16 cases get a looser bound there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton not installed (make test installs it)")


def _run_check(device: str, interpret: bool) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1" if interpret else "0"}
    env.pop("SMET_TRITON", None)
    proc = subprocess.run([sys.executable, str(HERE / "kernel_check.py"), device], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" not in res, res
    return res


def _check(res: dict, bf16_rel: float, cast_abs: float, fp32_rel: float = 1e-6) -> None:
    for name, r in res.items():
        if name.startswith("multi_"):  # one launch for both layers vs one each: bit-identical
            assert all(r.values()), (name, r)
            continue
        if name.startswith("dl_"):  # direct launches vs Triton's own: bit-identical, misaligned storage included
            assert all(r.values()), (name, r)
            continue
        if name.startswith("zf_"):  # the row scatter's own zero fill: exact zeros and values, NaN-poisoned memory
            assert all(r.values()), (name, r)
            continue
        if name.startswith("sg_"):
            assert r["dtypes_match"] and r["free_slots_zero"], (name, r)
            assert r["gather"] == 0.0, (name, r)  # gathering is exact (a cast of bf16 to fp32 or a copy)
            # bf16 -> bf16 is a copy; fp32 -> bf16 a rounding (truncation in the interpreter, < 1 ulp of |x| < 4)
            assert r["scatter"] <= (0.0 if name.endswith("_copy") else cast_abs), (name, r)
            continue
        bf16 = "bf16" in name
        for key in ("values", "exp_avg", "exp_avg_sq", "dense"):
            if key in r:
                rel = bf16_rel if bf16 else fp32_rel
                assert r[key] <= rel * r[key + "_scale"], (name, key, r)
        if "local_step" in r:
            assert r["local_step"] == 0.0, (name, r)  # integer counters agree exactly
    # the semantics that matter, through the fused path: a regrown weight's first step is lr * sign(g)
    # with W = 0 and lr / W with a linear warm-up over W = 4 (here |g| >> eps)
    assert abs(res["opt_smet_w0_b1_f32"]["first_regrown_over_lr"] - 1.0) < 1e-5
    assert res["opt_smet_w0_b1_f32"]["first_regrown_sign_ok"]
    assert abs(res["opt_smet_linear_w4_b1_f32"]["first_regrown_over_lr"] - 0.25) < 1e-5
    assert abs(res["opt_smet_b4_f32_persistent"]["first_regrown_over_lr"] - 0.25) < 1e-5
    assert abs(res["opt_counter_linear_w4_b1_f32"]["first_regrown_over_lr"] - 0.25) < 1e-5
    assert abs(res["opt_counter_b4_f32_persistent"]["first_regrown_over_lr"] - 0.25) < 1e-5
    assert abs(res["opt_smet_momentum_w4_b1_f32"]["first_regrown_over_lr"] - 0.25) < 1e-5


@needs_triton
def test_fused_kernels_match_reference_interpreted():
    _check(_run_check("cpu", interpret=True), bf16_rel=0.1, cast_abs=2.0**-5)


@pytest.mark.gpu
@needs_triton
def test_fused_kernels_match_reference_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    # compiled code may contract a * b + c into one FMA (torch's own CUDA kernels do too, elsewhere):
    # a few fp32 ulps over 8 steps
    _check(_run_check("cuda", interpret=False), bf16_rel=0.02, cast_abs=0.0, fp32_rel=2e-6)


@pytest.mark.slow
@needs_triton
def test_core_semantics_hold_through_the_fused_kernels():
    """The compact-layer and SMET-optimizer tests of test_sparse_core.py, re-run with every CPU
    tensor routed through the fused kernels (Triton interpreter): exact lr * sign(g) first update,
    t / W ramp, saturation, equality with AdamW on the masked dense model, bit-identical resume,
    topology invariants. (bf16 cases are left out: the interpreter truncates fp32 -> bf16.)"""
    sel = ("compact_equals_dense_masked_fp32 or topology_update_invariants or exactly_lr_sign or ramp_is "
           "or momentum_damping or saturation or without_regrowth_equals_adamw or round_trip or "
           "persistent_matches_transient")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("SMET_TRITON", None)
    probe = "import torch; from smet.sparse import kernels; assert kernels.usable(torch.zeros(1)), 'fused path off'"
    subprocess.run([sys.executable, "-c", probe], check=True, env=env, timeout=120)  # the path under test is on
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", sel,
                           str(HERE / "test_sparse_core.py")], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "deselected" in proc.stdout


@pytest.mark.slow
@needs_triton
def test_rows_index_through_the_fused_kernels():
    """tests/test_rows_index.py's layer equality and constant-density training run, with every CPU tensor
    routed through the row kernels and the one-launch SMET update (Triton interpreter): the same bits as
    the flat index."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("SMET_TRITON", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
                           "layer_computes or overrides0", str(HERE / "test_rows_index.py")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "3 passed" in proc.stdout, proc.stdout[-2000:]


def test_direct_launcher_keys_on_what_triton_specialises(monkeypatch):
    """kernels._Direct: the first launch of a key goes through Triton (which returns the compiled kernel), later
    ones through that kernel's launcher; a tensor of another dtype or 16-byte alignment, an int that changes
    between 1 / multiple of 16 / other, or another constexpr is another key. Triton's side is a stand-in here
    (no GPU on CI); tests/kernel_check.py ``dl_*`` runs the real launcher against Triton's on CUDA."""
    import torch

    from smet.sparse import kernels

    if kernels.triton is None:
        pytest.skip("triton not importable")
    calls = []

    class Compiled:
        function, packed_metadata = "fn", "meta"

        def launch_metadata(self, *a):
            return None

        def run(self, *a):
            calls.append(("direct", a))

    class Jit:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                calls.append(("triton", grid, args, kw))
                return Compiled()
            return launch

    monkeypatch.setattr(kernels, "INTERPRET", False)
    monkeypatch.setattr(kernels, "_DIRECT", True)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda dev: 7, raising=False)
    d = kernels._Direct(Jit())
    x = torch.zeros(64)
    odd = torch.zeros(65)[1:]  # 4 bytes into its storage: not 16-byte aligned
    launches = [((x, 32), dict(B=1, BLOCK_SIZE=8)), ((x, 32), dict(B=1, BLOCK_SIZE=8)),
                ((odd, 32), dict(B=1, BLOCK_SIZE=8)), ((x, 33), dict(B=1, BLOCK_SIZE=8)),
                ((x, 1), dict(B=1, BLOCK_SIZE=8)), ((x, 32), dict(B=4, BLOCK_SIZE=8)),
                ((x.bfloat16(), 32), dict(B=1, BLOCK_SIZE=8)), ((x, 48), dict(B=1, BLOCK_SIZE=8)),
                ((odd, 32), dict(B=1, BLOCK_SIZE=8))]
    for args, kw in launches:
        d((3,), args, **kw)
    assert [c[0] for c in calls] == ["triton", "direct", "triton", "triton", "triton", "triton", "triton", "direct",
                                     "direct"]
    grid_and_stream = calls[1][1][:4]
    assert grid_and_stream == (3, 1, 1, 7) and calls[1][1][4:6] == ("fn", "meta")
    assert calls[1][1][9:] == (x, 32, 1, 8)  # the args, then the constexprs in signature order
    assert calls[7][1][9:] == (x, 48, 1, 8)
    monkeypatch.setattr(kernels, "_DIRECT", False)
    d((3,), (x, 32), B=1, BLOCK_SIZE=8)
    assert calls[-1][0] == "triton"  # SMET_DIRECT_LAUNCH=0 / set_direct_launch(False): Triton every time
