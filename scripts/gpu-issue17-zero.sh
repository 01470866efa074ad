#!/usr/bin/env bash
# Issue 17 on one H200: SMET under DeepSpeed ZeRO-1/2 through Lightning (train.py trainer=deepspeed).
#   PART=eq    bash scripts/gpu-issue17-zero.sh $OUT   fp32, 60m, 60 steps, 2 topology updates: per-step loss of
#              ZeRO-1 and ZeRO-2 against trainer=gpu (same config), masks after the run, then ZeRO-2 resumed from
#              its step-30 DeepSpeed checkpoint directory against the uninterrupted run (bit-identical losses?)
#   PART=speed bash scripts/gpu-issue17-zero.sh $OUT   bf16-mixed, 130m, batch 64 x 256: tokens/s and peak of SMET
#              under DDP (1 GPU), ZeRO-1, ZeRO-2 and FSDP2, and dense under DDP and ZeRO-2
# (carry .whl; logs under $OUT)
set -u
OUT=${1:-/tmp/out}; mkdir -p "$OUT"; PART=${PART:-eq}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true HF_DATASETS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, lightning, deepspeed; print('torch', torch.__version__, 'lightning', lightning.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | grep -v Warn | tee -a "$OUT/gpu.txt"
summary() { python3 -c "import json;s=json.load(open('$1/summary.json'));print('$2', {k:s.get(k) for k in ('steps','tokens_per_s','peak_mem_gib','val_ppl')})" 2>&1 | tee -a "$OUT/summaries.txt"; }
run() {  # name, timeout, overrides...
  local name=$1 t=$2; shift 2
  timeout $t python3 train.py hydra.run.dir=/tmp/r_$name "$@" > "$OUT/train_$name.log" 2>&1; echo "train $name rc=$?" | tee -a "$OUT/train_$name.log"
  grep -E "Training finished|Error|error:" "$OUT/train_$name.log" | tail -3
  summary /tmp/r_$name $name
}
if [ "$PART" = eq ]; then
  C="sparsity=smet model=60m data.seq_len=256 data.batch_size=16 trainer.max_steps=60 sparsity.update_interval=20 trainer.val_every_n_steps=30 trainer.checkpoint_every_n_steps=30 trainer.log_every_n_steps=1 trainer.progress_bar=plain logger=csv data.max_val_sequences=32 trainer.precision=32"
  run gpu 150 trainer=gpu $C
  run ds1 150 trainer=deepspeed trainer.strategy=deepspeed_stage_1 $C
  run ds2 150 trainer=deepspeed trainer.strategy=deepspeed_stage_2 $C
  ls -R /tmp/r_ds2/checkpoints | head -30 | tee "$OUT/ds2_ckpt.txt"
  run ds2_res 150 trainer=deepspeed trainer.strategy=deepspeed_stage_2 $C ckpt_path=/tmp/r_ds2/checkpoints/step0000030.ckpt
  python3 - <<'PY' 2>&1 | grep -v Warn | tee "$OUT/compare.txt"
import csv, glob, torch
def L(d):
    out = {}
    for r in csv.DictReader(open(d + "/metrics.csv")):
        if r.get("train/loss"): out[int(r["step"])] = float(r["train/loss"])
    return out
g = L("/tmp/r_gpu")
for n in ("ds1", "ds2"):
    d = L(f"/tmp/r_{n}")
    common = sorted(set(g) & set(d))
    diff = [abs(g[s] - d[s]) for s in common]
    print(f"{n} vs gpu: {len(common)} steps, max |loss diff| {max(diff):.3g} (step {common[diff.index(max(diff))]}), "
          f"mean {sum(diff)/len(diff):.3g}; first {g[common[0]]:.6f}/{d[common[0]]:.6f}, last {g[common[-1]]:.6f}/{d[common[-1]]:.6f}")
a, b = L("/tmp/r_ds2"), L("/tmp/r_ds2_res")
same = [s for s in b if a.get(s) == b[s]]
print(f"ds2 resumed from step 30: steps {min(b)}-{max(b)}: {len(same)} of {len(b)} losses bit-identical to the uninterrupted run")
def idx(sd):
    return {k.split("model.", 1)[-1]: v for k, v in sd.items() if k.endswith(".idx")}
ref = idx(torch.load("/tmp/r_gpu/checkpoints/last.ckpt", map_location="cpu", weights_only=False)["state_dict"])
for n in ("ds1", "ds2", "ds2_res"):
    f = glob.glob(f"/tmp/r_{n}/checkpoints/last.ckpt/checkpoint/mp_rank_00_model_states.pt")
    if not f: print(n, "no DeepSpeed model states"); continue
    got = idx(torch.load(f[0], map_location="cpu", weights_only=False)["module"])
    diffs = sum(int((torch.sort(got[k].flatten())[0] != torch.sort(ref[k].flatten())[0]).sum()) for k in ref if k in got)
    print(f"{n}: final masks of {len([k for k in ref if k in got])}/{len(ref)} layers, {diffs} slot positions differ from trainer=gpu's")
PY
else
  C="model=130m data.seq_len=256 data.batch_size=64 trainer.max_steps=${STEPS:-80} trainer.val_every_n_steps=1000 trainer.checkpoint_every_n_steps=1000 trainer.log_every_n_steps=20 trainer.progress_bar=plain logger=csv data.max_val_sequences=32"
  run smet_ddp 120 trainer=ddp trainer.devices=1 sparsity=smet $C
  run smet_ds1 120 trainer=deepspeed trainer.strategy=deepspeed_stage_1 sparsity=smet $C
  run smet_ds2 120 trainer=deepspeed trainer.strategy=deepspeed_stage_2 sparsity=smet $C
  run smet_fsdp 120 trainer=fsdp trainer.devices=1 sparsity=smet $C
  run dense_ddp 100 trainer=ddp trainer.devices=1 sparsity=dense $C
  run dense_ds2 100 trainer=deepspeed trainer.strategy=deepspeed_stage_2 sparsity=dense $C
fi
