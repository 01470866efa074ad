#!/usr/bin/env bash
# Issue 17 on one H200: the GPU tests (pytest -m gpu), then DeepSpeed ZeRO-1/2 per-rank memory measured vs predicted
# and the step's time profile (scripts/gpu_zero_memory.py), SMET and dense, bf16, world size 1.
#   bash scripts/gpu-issue17-mem.sh $OUT        (carry .whl; logs under $OUT)
set -u
OUT=${1:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true HF_DATASETS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, lightning, deepspeed; print('torch', torch.__version__, 'lightning', lightning.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | grep -v Warn | tee -a "$OUT/gpu.txt"
if [ -z "${SKIP_TESTS:-}" ]; then
  timeout ${GPU_TESTS_S:-240} python3 -m pytest tests -m gpu -q -p no:cacheprovider -x > "$OUT/pytest_gpu.log" 2>&1; echo "pytest -m gpu rc=$?" | tee -a "$OUT/pytest_gpu.log"
  tail -5 "$OUT/pytest_gpu.log"
fi
for m in ${MODELS:-130m}; do
  timeout ${MEM_S:-240} python3 scripts/gpu_zero_memory.py --model $m --batch ${BATCH:-16} --steps 8 --out "$OUT/zero_memory_$m.json" \
    --profile "$OUT/prof_$m" > "$OUT/zero_memory_$m.log" 2>&1; echo "zero memory $m rc=$?" | tee -a "$OUT/zero_memory_$m.log"
  grep -E "^ZeRO|Error|error" "$OUT/zero_memory_$m.log" | tee -a "$OUT/summary.txt"
done
# a compact copy of the profiles (only a few files come back)
for f in "$OUT"/prof_*; do [ -f "$f" ] && { echo "== $f"; head -34 "$f"; }; done > "$OUT/profiles.txt" 2>/dev/null
rm -f "$OUT"/prof_*
