#!/usr/bin/env bash
# Scale-out check on a GPU machine (used for docs/benchmarks.md "Scale-out"): one process vs 2-GPU
# DDP (NCCL) for SMET, DeepSpeed ZeRO-2 on 1 and 2 GPUs for the dense baseline, and the refusal of
# SMET + ZeRO. Same model/batch/steps everywhere. Usage: scripts/gpu-scaleout.sh OUT_DIR [python]
set -uo pipefail
out=${1:?usage: scripts/gpu-scaleout.sh OUT_DIR [python]}
py=${2:-python3}
mkdir -p "$out"
common=(model=60m data.batch_size=32 trainer.max_steps=80 trainer.val_every_n_steps=80 trainer.log_every_n_steps=10
        trainer.progress_bar=none trainer.model_summary=false trainer.precision=bf16-mixed)
smet=(sparsity=smet sparsity.density=0.25 sparsity.update_interval=20)
run() {  # name, overrides...
  local name=$1; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  "$py" train.py "hydra.run.dir=$out/$name" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "rc=$rc wall=$((SECONDS - t0))s"
  grep -E "Training finished|validation perplexity|smet: error" "$out/$name.log" | head -4
}
run smet_1gpu trainer=gpu "${common[@]}" "${smet[@]}"
run smet_ddp2 trainer=ddp trainer.devices=2 "${common[@]}" "${smet[@]}" sparsity.debug_check_masks=true
run dense_1gpu trainer=gpu "${common[@]}"
run dense_ddp2 trainer=ddp trainer.devices=2 "${common[@]}"
run dense_zero2_1gpu trainer=deepspeed trainer.devices=1 "${common[@]}"
run dense_zero2_2gpu trainer=deepspeed trainer.devices=2 "${common[@]}"
run smet_zero2_refused trainer=deepspeed "${common[@]}" "${smet[@]}"
"$py" - "$out" <<'PY'
import json, sys, pathlib
rows = []
for d in sorted(pathlib.Path(sys.argv[1]).iterdir()):
    f = d / "summary.json"
    if f.is_file():
        s = json.loads(f.read_text())
        rows.append((d.name, s["devices"], s["strategy"], s["method"], round(s["density"], 3), s["steps"],
                     round(s["tokens_per_s"] or 0), round(s["tokens_per_s_per_device"] or 0),
                     round(s["peak_mem_gib"] or 0, 2), round(s["val_ppl"], 2)))
print("| run | devices | strategy | method | density | steps | tok/s | tok/s per GPU | peak GiB/GPU | val ppl |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(map(str, r)) + " |")
PY
