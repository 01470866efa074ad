"""Per-rank static memory under DeepSpeed ZeRO-1 / ZeRO-2 (issue 17): measured == predicted, to the byte.

Real DeepSpeed on 2 CPU processes (``DS_ACCELERATOR=cpu``, gloo). A 2-block LLaMA whose sizes do not divide
evenly (hidden 30, intermediate 62, vocab 127: ZeRO pads the flat buffers, rank 1's partitions end in padding)
trains 6 steps (a topology update at step 5) under ``deepspeed.initialize``, SMET at d = 0.5 (one param group
per sparse layer, ``smet.zero.bind``) and the dense AdamW baseline, fp32 and bf16 (DeepSpeed's ``bf16`` mode
casts the model to bf16), stages 1 and 2. After the last backward each rank measures what it holds
(``smet.zero.measure_static``: flat model buffers, fp32 master partitions, moments, index, local steps, the
reduced gradient partitions) and compares it with ``predict_static(..., engine="zero", shards=2, rank=r)``.

Run as a script, this file is the worker (one process per rank).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from rank_workers import run_workers
from test_zero import OPT, SPARSE  # the plain-loop ZeRO test's SMET and optimizer settings

pytest.importorskip("deepspeed")

DIMS = {"vocab_size": 127, "hidden_size": 30, "intermediate_size": 62, "num_layers": 2, "num_heads": 3,
        "max_seq_len": 16}
STEPS = 6
CASES = [(stage, precision, method) for stage in (1, 2) for precision in ("32", "bf16-mixed")
         for method in ("smet", "dense")]


def _case(rank: int, world: int, stage: int, precision: str, method: str) -> dict:  # pragma: no cover - subprocess
    import deepspeed
    import torch

    from smet import zero
    from smet.models.llama import LlamaConfig, LlamaForCausalLM
    from smet.optim import build_optimizer
    from smet.sparse import attach_sparsity
    from smet.sparse.memory import ModelShapes, predict_static

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**DIMS))
    scfg = SPARSE if method == "smet" else {"method": "dense"}
    shapes = ModelShapes.of(model)  # the dense model's shapes, as smet-memory reads them
    ctrl = attach_sparsity(model, SPARSE, total_steps=STEPS + 1, seed=3) if method == "smet" else None
    opt = build_optimizer(model, OPT, ctrl, per_layer_groups=True)
    cfg = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
           "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}
    if precision == "bf16-mixed":
        cfg["bf16"] = {"enabled": True}
    engine, zopt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    if ctrl is not None:
        zero.bind(zopt, opt)
    measured = None
    for s in range(1, STEPS + 1):
        if ctrl is not None:
            ctrl.before_step(s)
        x = torch.randint(0, 127, (4, 17), generator=torch.Generator().manual_seed(100 * s + rank))
        logits = engine(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, 127), x[:, 1:].reshape(-1))
        engine.backward(loss)
        if s == STEPS:
            measured = zero.measure_static(model, zopt, ctrl)
        engine.step()
        if ctrl is not None:
            ctrl.after_step(s)
    predicted = predict_static(shapes, scfg, OPT, precision, total_steps=STEPS + 1, shards=world, rank=rank,
                               engine="zero")
    pad = [int(p.numel()) - int(zopt.partition_size[i]) for i, p in enumerate(zopt.single_partition_of_fp32_groups)]
    flat_pad = [int(f.numel()) - sum(int(p.numel()) for p in g) for f, g in zip(zopt.bit16_groups_flat,
                                                                                 zopt.bit16_groups)]
    return {"measured": measured, "predicted": predicted, "updates": ctrl.update_count if ctrl else 0,
            "flat_padding": flat_pad, "partition_vs_size": pad, "loss": float(loss)}


def _worker(rank: int, world: int, port: int, out: str) -> None:  # pragma: no cover - runs in a subprocess
    import torch

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), DS_ACCELERATOR="cpu")
    import deepspeed
    import torch.distributed as dist

    deepspeed.init_distributed(dist_backend="gloo")
    res = {"/".join(map(str, c)): _case(rank, world, *c) for c in CASES}
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # DeepSpeed's CPU communication threads can abort an orderly interpreter exit


def test_zero_per_rank_static_memory_is_predicted_to_the_byte(tmp_path):
    import math

    ranks = run_workers(__file__, tmp_path, 2, timeout=600, what="DeepSpeed workers")
    for rank, res in enumerate(ranks):
        assert set(res) == {"/".join(map(str, c)) for c in CASES}
        for case, r in res.items():
            assert math.isfinite(r["loss"]), (rank, case)
            assert r["measured"]["all"] == r["predicted"]["all"], (rank, case, r["measured"], r["predicted"])
            if case.endswith("smet"):
                assert r["updates"] == 1 and r["measured"]["sparse"] == r["predicted"]["sparse"], (rank, case)
            assert all(p == 0 for p in r["partition_vs_size"])
    # the sizes were chosen so that ZeRO really pads: some flat buffer has padding, in every case
    assert all(any(r["flat_padding"]) for r in ranks[0].values())
    # both ranks hold the same flat buffers and partition sizes, so the totals differ only by the padding's grads
    for case in ranks[0]:
        a, b = ranks[0][case]["measured"]["all"], ranks[1][case]["measured"]["all"]
        assert a["weights"] == b["weights"] and a["optimizer"] == b["optimizer"] and a["grads"] >= b["grads"]


def test_zero_prediction_is_sharded_where_zero_shards_and_whole_where_it_does_not():
    """The formula's structure, against plain DDP's prediction (no processes): at 4 ranks, the fp32 master,
    moments and local steps are 1/4 (up to padding), the model's buffers and the index stay whole."""
    from smet.models.llama import model_shapes
    from smet.sparse.memory import predict_static

    shapes = model_shapes({k: v for k, v in DIMS.items() if k != "max_seq_len"}, DIMS["vocab_size"], 16)
    plain = predict_static(shapes, SPARSE, OPT, "bf16-mixed", total_steps=1000)["all"]
    one = predict_static(shapes, SPARSE, OPT, "bf16-mixed", total_steps=1000, engine="zero")["all"]
    four = predict_static(shapes, SPARSE, OPT, "bf16-mixed", total_steps=1000, shards=4, rank=0, engine="zero")
    four = four["all"]
    # one rank: the model in bf16 (2 B) + an fp32 master (4 B) = 1.5x plain's fp32 weights, up to padding
    assert 1.5 * plain["weights"] <= one["weights"] <= 1.5 * plain["weights"] + 6 * 2 * 16
    assert one["optimizer"] == plain["optimizer"] - 4 * (len(shapes.params) - 14) + 4 * 2  # steps: 1 per group
    assert abs(4 * (four["optimizer"] - 8) - (one["optimizer"] - 8)) <= 4 * 2 * 4 * 16 * 8
    assert four["metadata"] < one["metadata"] and four["buffers"] == one["buffers"] == plain["buffers"]
    with pytest.raises(ValueError, match="sparsity.index"):
        predict_static(shapes, dict(SPARSE, index="rows"), OPT, "32", engine="zero")
    with pytest.raises(ValueError, match="engine"):
        predict_static(shapes, SPARSE, OPT, "32", engine="ddp")


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    _worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
