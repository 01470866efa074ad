#!/usr/bin/env bash
# The issue-5 figure set in ONE call on one H200 (about 9 minutes): smet-bench parts, each writing
# OUT_DIR/<part>.json + OUT_DIR/<part>.md and a log; all tables printed at the end.
#   a    130m  bf16-true batch 128: dense + smet d 0.5 0.25 x transient persistent (compile off)
#   c    350m  bf16-true batch 128: the same set
#   d    13b   bf16-mixed (fp32 states) batch 8, activation checkpointing on, vocab 32000: smet d 0.25
#        (24 optimizer steps incl. 2 topology updates), THEN the dense AdamW attempt (OOM expected),
#        same process / report
#   c-ac 350m  d 0.25 + dense: activation checkpointing off vs on (static and peak)
#   b    130m  compile on: dense + smet d 0.25 transient persistent (fewest steps; compile time is
#        spent in the warm-up steps)
# Most important first; a part that would start with less than its minimum time left is skipped and
# every part gets smet-bench --time-budget (it then starts no new combination) plus a hard timeout.
# Usage: scripts/gpu-bench.sh OUT_DIR [python]      (BUDGET=540 seconds by default)
# Needs torch + pyyaml only (no hydra / omegaconf / lightning): runs from the source tree.
set -uo pipefail
out=${1:?usage: scripts/gpu-bench.sh OUT_DIR [python]}
py=${2:-python3}
budget=${BUDGET:-540}
here=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1 || true
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$out/gpu.txt" 2>&1
start=$SECONDS
common=(--device cuda --interleave round --update-interval 10 --warmup-steps 3)
part() {  # name, minimum seconds it needs, smet-bench args...
  local name=$1 need=$2; shift 2
  local left=$((budget - (SECONDS - start)))
  if (( left < need )); then
    echo "=== $name: SKIPPED (${left}s left of ${budget}s, needs ~${need}s)" | tee "$out/$name.skipped"
    return
  fi
  echo "=== $name ($((SECONDS - start))s elapsed, ${left}s left): smet-bench $*"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=20 "$((left - 5))" "$py" -m smet.cli.bench "${common[@]}" "$@" \
      --time-budget "$((left - need / 2))" --out "$out/$name.json" --md "$out/$name.md" > "$out/$name.log" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc wall=$((SECONDS - t0))s"
  (( rc == 0 )) || tail -20 "$out/$name.log"
}
part a 60 --model 130m --batch 128 --seq-len 256 --vocab 4096 --precision bf16-true \
     --method dense smet --density 0.5 0.25 --materialize transient persistent --steps 20 --rounds 2 \
     ${PROFILE_A:+--profile "$out/prof"}
part c 90 --model 350m --batch 128 --seq-len 256 --vocab 4096 --precision bf16-true --activation-checkpointing off \
     --method dense smet --density 0.5 0.25 --materialize transient persistent --steps 20 --rounds 2
part d 120 --model 13b --batch 8 --seq-len 256 --vocab 32000 --precision bf16-mixed --activation-checkpointing on \
     --method dense smet --density 0.25 --materialize transient --steps 20 --rounds 1 --dense-last
part c-ac 45 --model 350m --batch 128 --seq-len 256 --vocab 4096 --precision bf16-true \
     --activation-checkpointing off on --method dense smet --density 0.25 --materialize transient --steps 8 --rounds 1
part b 150 --model 130m --batch 128 --seq-len 256 --vocab 4096 --precision bf16-true --compile on \
     --method dense smet --density 0.25 --materialize transient persistent --steps 10 --rounds 1
echo
echo "######## all tables ($((SECONDS - start))s total) — $(head -1 "$out/gpu.txt")"
for name in a c d c-ac b; do
  if [[ -f "$out/$name.md" ]]; then
    echo; echo "## part $name"; echo; cat "$out/$name.md"
  elif [[ -f "$out/$name.skipped" ]]; then
    echo; echo "## part $name: skipped (time budget)"
  else
    echo; echo "## part $name: no result (see $out/$name.log)"
  fi
done
