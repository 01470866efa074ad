#!/usr/bin/env bash
# Issue 17 on one H200: the GPU test suite (pytest -m gpu) on this code, then trainer=fsdp at world size 1 (FSDP2
# over NCCL, distributed checkpoint, resume) against trainer=gpu on the same run: loss, tokens/s, peak.
#   bash scripts/gpu-issue17-fsdp.sh $OUT        (carry .whl; logs under $OUT)
set -u
OUT=${1:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true HF_DATASETS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout ${GPU_TESTS_S:-200} python3 -m pytest tests -m gpu -q -p no:cacheprovider > "$OUT/pytest_gpu.log" 2>&1; echo "pytest -m gpu rc=$?" | tee -a "$OUT/pytest_gpu.log"
tail -5 "$OUT/pytest_gpu.log"
COMMON="sparsity=smet model=${MODEL:-60m} data.seq_len=256 data.batch_size=32 trainer.max_steps=${STEPS:-60} trainer.val_every_n_steps=30 sparsity.update_interval=20 trainer.log_every_n_steps=10 trainer.progress_bar=plain logger=csv data.max_val_sequences=64"
for t in gpu fsdp; do
  extra=""; [ $t = fsdp ] && extra="trainer.devices=1"
  timeout 150 python3 train.py hydra.run.dir=/tmp/r_$t trainer=$t $extra $COMMON > "$OUT/train_$t.log" 2>&1; echo "train $t rc=$?" | tee -a "$OUT/train_$t.log"
  grep -E "Training finished|final validation|step 60/|topology update" "$OUT/train_$t.log" | tail -6
  python3 -c "import json;s=json.load(open('/tmp/r_$t/summary.json'));print({k:s.get(k) for k in ('steps','tokens_per_s','peak_mem_gib','val_ppl','static_bytes')})" 2>&1 | tee -a "$OUT/summary_$t.txt"
done
ls -a /tmp/r_fsdp/checkpoints /tmp/r_fsdp/checkpoints/last.ckpt 2>&1 | tee "$OUT/fsdp_ckpt.txt"
timeout 120 python3 train.py hydra.run.dir=/tmp/r_fsdp_res trainer=fsdp trainer.devices=1 $COMMON ckpt_path=/tmp/r_fsdp/checkpoints/step0000030.ckpt > "$OUT/train_fsdp_resume.log" 2>&1; echo "resume rc=$?" | tee -a "$OUT/train_fsdp_resume.log"
python3 - <<'PY' | tee "$OUT/resume_compare.txt"
import csv
def L(d):
    out = {}
    for r in csv.DictReader(open(d + "/metrics.csv")):
        if r.get("train/loss"): out[int(r["step"])] = r["train/loss"]
    return out
a, b = L("/tmp/r_fsdp"), L("/tmp/r_fsdp_res")
same = [s for s in b if a.get(s) == b[s]]
print(f"resumed steps {min(b)}-{max(b)}: {len(same)} of {len(b)} losses bit-identical to the uninterrupted run")
PY
