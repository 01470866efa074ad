"""SMET under DeepSpeed ZeRO stage 1 and 2 (issue 17), in a plain PyTorch loop: real DeepSpeed, 2 CPU processes.

DeepSpeed runs on CPU with its CPU accelerator (``DS_ACCELERATOR=cpu``) and gloo. A 2-block LLaMA with SMET at
d = 0.5 (flat index, transient, constant density, updates every 5 steps, regrowth warm-up 4, 1/sqrt(d) LR scaling)
trains 20 steps under ``deepspeed.initialize`` (the SMET optimizer as ZeRO's client optimizer, one param group
per sparse layer, ``smet.zero.bind``), each rank half of the global batch, against one process of plain SMET on
the whole batch (fp32 both). Checked: per-step loss equal to fp32 rounding; identical masks after every update;
values, moments and local steps (gathered from the ranks' partitions) equal to the single process's; every
rank's partition really is a part of each layer. Then resume: a run saved with ``engine.save_checkpoint`` at
step 12 and loaded into a fresh engine continues bit-exactly (losses 13..20, values, optimizer state).

Run as a script, this file is the worker (one process per rank).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from rank_workers import run_workers

pytest.importorskip("deepspeed")

SPARSE = {"method": "smet", "density": 0.5, "growth": "random", "update_interval": 5, "drop_fraction": 0.3,
          "materialize": "transient", "index": "flat"}
OPT = {"lr": 3e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1, "regrowth_warmup_steps": 4,
       "lr_scaling": "inverse_sqrt", "lr_scaling_scope": "all", "reset_local_step": True, "reset_moments": True,
       "warmup_shape": "linear"}
STEPS = 20
SAVE_AT = 12


def _build(growth: str):  # pragma: no cover - runs in a subprocess
    import torch

    from smet.models.llama import LlamaConfig, LlamaForCausalLM
    from smet.sparse import attach_sparsity

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2,
                                         num_heads=4, max_seq_len=16))
    ctrl = attach_sparsity(model, dict(SPARSE, growth=growth), total_steps=STEPS + 1, seed=3)
    return model, ctrl


def _batch(s: int, world: int, rank: int | None):  # pragma: no cover - runs in a subprocess
    import torch

    x = torch.randint(0, 128, (4 * world, 17), generator=torch.Generator().manual_seed(1000 + s))
    return x if rank is None else x[4 * rank: 4 * (rank + 1)]


def _loss(fwd, x):  # pragma: no cover - runs in a subprocess
    import torch

    logits = fwd(x[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, 128), x[:, 1:].reshape(-1))


def _engine(model, ctrl, stage: int):  # pragma: no cover - runs in a subprocess
    import deepspeed

    from smet import zero
    from smet.sparse import build_smet_optimizer

    opt = build_smet_optimizer(model, OPT, ctrl, per_layer_groups=True)
    cfg = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
           "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
           "steps_per_print": 10**9}
    engine, zopt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    n = zero.bind(zopt, opt)
    return engine, opt, n


def _record(ctrl, opt, rec: dict, sharded: bool) -> None:  # pragma: no cover - runs in a subprocess
    from smet import zero

    rec["idx"].append([layer.idx.tolist() for _, layer in ctrl.named_layers])
    rec["values"].append([layer.values.detach().tolist() for _, layer in ctrl.named_layers])
    state = []
    for _, layer in ctrl.named_layers:
        p = layer.values
        if sharded:
            got = [zero.gather_state(opt, p, k) for k in ("exp_avg", "exp_avg_sq", "local_step")]
        else:
            st = opt.state[p]
            got = [st["exp_avg"], st["exp_avg_sq"], opt.local_steps(p)]
        state.append([g.tolist() for g in got])
    rec["state"].append(state)


def _run(rank: int, world: int, stage: int, growth: str, sharded: bool, ckpt: str | None = None,
         start: int = 1, stop: int = STEPS) -> dict:  # pragma: no cover - runs in a subprocess
    import torch.distributed as dist

    from smet.sparse import build_smet_optimizer

    model, ctrl = _build(growth)
    if sharded:
        engine, opt, n_bound = _engine(model, ctrl, stage)
        if start > 1:
            _, client = engine.load_checkpoint(ckpt, tag="mid")
            ctrl.load_state_dict(client["controller"])
        fwd = engine
    else:
        opt = build_smet_optimizer(model, OPT, ctrl)
        n_bound = 0
        fwd = model
    rec = {"losses": [], "idx": [], "values": [], "state": [], "bound": n_bound,
           "part_slots": [opt._slot_range(opt._param(layer.values), 1) for _, layer in ctrl.named_layers]}
    for s in range(start, stop + 1):
        ctrl.before_step(s)
        x = _batch(s, world, rank if sharded else None)
        loss = _loss(fwd, x)
        if sharded:
            engine.backward(loss)
            engine.step()
        else:
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        ctrl.after_step(s)
        lv = loss.detach()
        if sharded:
            dist.all_reduce(lv)
            lv /= world
        rec["losses"].append(float(lv))
        if ctrl.is_update_step(s) or s == stop:
            _record(ctrl, opt, rec, sharded)
        if sharded and ckpt is not None and start == 1 and s == SAVE_AT:
            engine.save_checkpoint(ckpt, tag="mid", client_state={"controller": ctrl.state_dict()})
    rec["updates"] = ctrl.update_count
    return rec


def _worker(rank: int, world: int, port: int, out: str) -> None:  # pragma: no cover - runs in a subprocess
    import torch

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), DS_ACCELERATOR="cpu")
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    stage, growth = int(os.environ["SMET_ZERO_STAGE"]), os.environ.get("SMET_ZERO_GROWTH", "random")
    ckpt = str(Path(out, "ckpt"))
    res = {"sharded": _run(rank, world, stage, growth, True, ckpt=ckpt),
           "resumed": _run(rank, world, stage, growth, True, ckpt=ckpt, start=SAVE_AT + 1),
           "single": _run(rank, world, stage, growth, False)}
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    import torch.distributed as dist

    dist.destroy_process_group()


def _close(a, b, tol: float) -> bool:
    import torch

    return bool(torch.allclose(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                               rtol=tol, atol=tol))


@pytest.mark.slow
@pytest.mark.parametrize("stage,growth", [(1, "random"), (2, "random"), (2, "gradient")])
def test_smet_under_zero_matches_a_single_process_and_resumes_bit_exactly(tmp_path, monkeypatch, stage, growth):
    import math

    monkeypatch.setenv("SMET_ZERO_STAGE", str(stage))
    monkeypatch.setenv("SMET_ZERO_GROWTH", growth)
    ranks = run_workers(__file__, tmp_path, 2, timeout=600, what="DeepSpeed workers")
    for rank, res in enumerate(ranks):
        sh, one, re = res["sharded"], res["single"], res["resumed"]
        assert sh["bound"] == 14 and one["updates"] == sh["updates"] >= 3, (sh["bound"], sh["updates"])
        # every rank steps a real part of each layer: rank r starts where rank r-1 ends
        for (first, n), (first_other, n_other) in zip(sh["part_slots"], ranks[1 - rank]["sharded"]["part_slots"]):
            assert 0 < n and first == rank * n and n == n_other, sh["part_slots"]
        for s, (a, b) in enumerate(zip(sh["losses"], one["losses"]), start=1):
            assert math.isfinite(a) and abs(a - b) <= 2e-5 * max(1.0, abs(b)), (rank, s, a, b)
        assert sh["idx"] == one["idx"]  # the same masks after every update
        for va, vb in zip(sh["values"], one["values"]):
            for la, lb in zip(va, vb):
                assert _close(la, lb, 1e-4)
        for sa, sb in zip(sh["state"], one["state"]):  # m, v, local steps after every update
            for (ma, va_, ta), (mb, vb_, tb) in zip(sa, sb):
                assert ta == tb
                assert _close(ma, mb, 1e-4) and _close(va_, vb_, 1e-6)
        # resume from the step-12 DeepSpeed checkpoint: bit-exact
        assert re["losses"] == sh["losses"][SAVE_AT:], (rank, re["losses"], sh["losses"][SAVE_AT:])
        assert re["idx"][-1] == sh["idx"][-1] and re["values"][-1] == sh["values"][-1]
        assert re["state"][-1] == sh["state"][-1]


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    _worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
