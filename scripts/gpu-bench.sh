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
# every part gets smet-bench --time-budget (it then starts no new run) plus a hard timeout.
# Each part is a Hydra grid over conf/bench.yaml (smet-bench KEY=VALUE ... [options]).
# Usage: scripts/gpu-bench.sh OUT_DIR [python]      (BUDGET=540 seconds by default)
# Needs torch, hydra-core, omegaconf and pyyaml (no lightning / wandb): runs from the source tree.
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
common=(--device cuda --interleave round --warmup-steps 3)
shape=(data.seq_len=256 data.tokenizer.vocab_size=4096 sparsity.update_interval=10)
source "$here/scripts/gpu-part.sh"
part a 60 model=130m data.batch_size=128 "${shape[@]}" trainer.precision=bf16-true \
     sparsity=dense,smet sparsity.density=0.5,0.25 sparsity.materialize=transient,persistent --steps 20 --rounds 2 \
     ${PROFILE_A:+--profile "$out/prof"}
part c 90 model=350m data.batch_size=128 "${shape[@]}" trainer.precision=bf16-true model.gradient_checkpointing=false \
     sparsity=dense,smet sparsity.density=0.5,0.25 sparsity.materialize=transient,persistent --steps 20 --rounds 2
part d 120 model=13b data.batch_size=8 data.seq_len=256 data.tokenizer.vocab_size=32000 sparsity.update_interval=10 \
     trainer.precision=bf16-mixed model.gradient_checkpointing=true \
     sparsity=dense,smet sparsity.density=0.25 sparsity.materialize=transient --steps 20 --rounds 1 --dense-last
part c-ac 45 model=350m data.batch_size=128 "${shape[@]}" trainer.precision=bf16-true \
     model.gradient_checkpointing=false,true sparsity=dense,smet sparsity.density=0.25 sparsity.materialize=transient \
     --steps 8 --rounds 1
part b 150 model=130m data.batch_size=128 "${shape[@]}" trainer.precision=bf16-true trainer.compile=true \
     sparsity=dense,smet sparsity.density=0.25 sparsity.materialize=transient,persistent --steps 10 --rounds 1
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
