#!/usr/bin/env bash
# Issue 15: where the SMET step loses time against dense at 130m (one H200, ~2-3 minutes). smet-bench --profile
# of dense AdamW and smet d = 0.5, 0.25 x transient, persistent at batch 128 x 256, bf16-true, vocab 32000,
# eager, fused pointwise ops, chunked loss, no activation checkpointing: per run the timed step (median of
# STEPS), then 2 steady steps under torch.profiler with host and device time of each phase (smet/forward,
# smet/backward, smet/optimizer), device kernels per step, and the top ops by device time (prof/<run>.txt).
# A phase whose host time is far above its device time is launch-bound (the GPU waits for Python).
# Usage: scripts/gpu-issue15-prof.sh OUT_DIR [python=python3]
# Environment: BUDGET (seconds, default 200), DEVICE (cuda), MODEL (130m), VOCAB (32000), BATCH (128), SEQ (256),
#   PRECISION (bf16-true), STEPS (6), GRID (the sparsity overrides), EXTRA (more overrides).
# CPU check (tiny shapes): DEVICE=cpu MODEL=tiny VOCAB=512 BATCH=2 SEQ=32 PRECISION=32 STEPS=2 \
#   scripts/gpu-issue15-prof.sh /tmp/i15prof .venv/bin/python
set -uo pipefail
out=${1:?usage: scripts/gpu-issue15-prof.sh OUT_DIR [python]}
py=${2:-python3}
budget=${BUDGET:-200}
device=${DEVICE:-cuda}
here=$(cd "$(dirname "$0")/.." && pwd)
source "$here/scripts/gpu-part.sh"
bench_setup
start=$SECONDS
PART_FLAGS=(--force)
read -r -a extra <<< "${EXTRA:-}"
read -r -a grid <<< "${GRID:-sparsity=dense,smet sparsity.density=0.5,0.25 sparsity.materialize=transient,persistent}"
common=(--device "$device" --interleave round --rounds 1 --warmup-steps 3)
part prof 60 model="${MODEL:-130m}" data.batch_size="${BATCH:-128}" data.seq_len="${SEQ:-256}" \
  data.tokenizer.vocab_size="${VOCAB:-32000}" trainer.precision="${PRECISION:-bf16-true}" trainer.compile=false \
  model.gradient_checkpointing=false model.activation_checkpointing=none sparsity.update_interval=1000 \
  "${grid[@]}" "${extra[@]}" --steps "${STEPS:-6}" --profile "$out/prof"
echo
echo "######## issue 15 profile ($((SECONDS - start))s total) — $(head -1 "$out/gpu.txt")"
"$py" - "$out" "$here/scripts" <<'PY' | tee "$out/summary.md"
import sys
from pathlib import Path

out = Path(sys.argv[1])
sys.path.insert(0, sys.argv[2])
from bench_parts import load_parts  # noqa: E402

print("| method | d | materialize | tokens/s | vs dense | step ms | phase host / device ms: forward | backward | "
      "optimizer | device kernels / step |")
print("|---|---|---|---|---|---|---|---|---|---|")
recs = load_parts(out, ("prof",)).get("prof", [])
dense = next((r["tokens_per_s"] for r in recs if r["method"] == "dense" and r["tokens_per_s"]), None)
for r in recs:
    prof = r.get("profile") or {}
    ph = prof.get("phases_per_step") or {}
    cells = [f"{ph[k]['host_ms']:.1f} / {ph[k]['device_ms']:.1f}" if k in ph else "-"
             for k in ("forward", "backward", "optimizer")]
    tps = r["tokens_per_s"]
    speed = f"{tps:,.0f} | {tps / dense:.3f} | {r['step_time_s'] * 1e3:.1f}" if tps and dense else "- | - | -"
    print(f"| {r['method']} | {r['density']:g} | {r['materialize'] or '-'} | {speed} | {' | '.join(cells)} | "
          f"{prof.get('device_ops_per_step', '-')} |")
for f in sorted((out / "prof").glob("*.txt")):
    print(f"\n### {f.stem} (top ops by device time)\n```")
    print("\n".join(f.read_text().splitlines()[:28]))
    print("```")
PY
tar -czf "$out/issue15-prof.tar.gz" -C "$out" --exclude='*.tar.gz' . 2>/dev/null
echo "=== done in $((SECONDS - start))s; everything in $out (and $out/issue15-prof.tar.gz)"
