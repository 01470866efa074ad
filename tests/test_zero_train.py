"""``trainer=deepspeed sparsity=smet`` through train.py (issue 17): Lightning's DeepSpeedStrategy, ZeRO-1 and ZeRO-2.

Lightning fits with DeepSpeed on CUDA only; ``tests/ds_cpu_train.py`` lifts Lightning's three CUDA-only guards so
the real DeepSpeed engine (its CPU accelerator, gloo) runs here, 2 ranks on 2 CPU cores. Everything below is
DeepSpeed's own code and smet's hooks (``LMModule.configure_optimizers``: one param group per sparse layer;
``LMModule.on_fit_start``: ``smet.zero.bind``). The GPU run is scripts/gpu-issue17-zero.sh.

* 2 ranks under ZeRO-1 / ZeRO-2 equal one plain process on the whole batch, step by step (``test_ddp._ddp_vs_single``:
  per-step loss, masks identical across ranks after every step, parameters bit-identical across ranks);
* a ZeRO-2 run resumed from its DeepSpeed checkpoint directory (``step0000005.ckpt/``: ``latest``, per-rank optimizer
  partitions) continues bit for bit: the same loss at every later step, the same parameters and masks after the
  later topology updates.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_ddp import FAST, _ddp_vs_single
from test_fsdp_train import assert_resumed_bit_exact

pytest.importorskip("deepspeed")

SHIM = Path(__file__).with_name("ds_cpu_train.py")
SMET = ("sparsity=smet", "sparsity.update_interval=3", "optimizer.regrowth_warmup_steps=2",
        "sparsity.debug_check_masks=true")
DS = ("trainer=deepspeed", "trainer.accelerator=cpu", "trainer.precision=32")


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_train_deepspeed_smet_matches_single_process(run_train, tmp_path, stage):
    st = _ddp_vs_single(run_train, tmp_path, (*DS, f"trainer.strategy=deepspeed_stage_{stage}"), 8, *SMET,
                        "trainer.max_steps=10", "trainer.val_every_n_steps=10", script=SHIM)
    assert st["updates"] == 3 and all(r == (0, 0, 0) for r in st["reduces"])


@pytest.mark.slow
def test_train_deepspeed_resume_from_its_checkpoint_directory_is_bit_exact(run_train, tmp_path):
    args = (*FAST, *DS, "trainer.devices=2", "data.batch_size=8", *SMET, "trainer.max_steps=10",
            "trainer.val_every_n_steps=5", "trainer.log_every_n_steps=1", "logger=csv")
    env = {"SMET_DDP_TRACE": "1"}
    ref = run_train(*args, out=tmp_path / "ref", env=env, timeout=240, script=SHIM)
    ck = ref.out_dir / "checkpoints" / "step0000005.ckpt"
    assert ck.is_dir() and (ck / "latest").is_file(), sorted(p.name for p in ck.parent.iterdir())
    tag = (ck / "latest").read_text().strip()
    assert len(list((ck / tag).glob("*optim_states.pt"))) == 2  # one optimizer partition per rank
    res = run_train(*args, f"ckpt_path={ck}", out=tmp_path / "resumed", env=env, timeout=240, script=SHIM)
    assert_resumed_bit_exact(ref.out_dir, res.out_dir)
    summary = json.loads((res.out_dir / "summary.json").read_text())
    assert summary["steps"] == 10
    # the run's per-rank static bytes (rank 0, after zero_grad: no gradients) are what smet-memory --engine zero
    # predicts for rank 0 of 2, category by category, for the whole model and for the sparse layers
    from omegaconf import OmegaConf

    from smet.models.llama import model_shapes
    from smet.sparse.memory import predict_static

    cfg = OmegaConf.to_container(OmegaConf.load(res.out_dir / ".hydra" / "config.yaml"), resolve=True)
    pred = predict_static(model_shapes(cfg["model"], cfg["data"]["tokenizer"]["vocab_size"], cfg["data"]["seq_len"]),
                          cfg["sparsity"], cfg["optimizer"], "32", total_steps=10, shards=2, rank=0, engine="zero")
    for key in ("all", "sparse"):
        measured = summary["static_bytes"][key]
        assert measured["grads"] == 0 and pred[key]["grads"] > 0
        assert {k: v for k, v in measured.items() if k not in ("grads", "total")} == \
            {k: v for k, v in pred[key].items() if k not in ("grads", "total")}, (key, measured, pred[key])
