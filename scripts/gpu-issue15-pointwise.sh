#!/usr/bin/env bash
# Issue 15 on one H200 (~4-6 minutes): model.pointwise=reference (PyTorch RMSNorm / RoPE / SwiGLU, fp32
# norm and RoPE) vs fused (smet.models.pointwise: one Triton kernel per op and direction, fewer saved
# tensors), at the paper's vocabulary 32000, batch 128 x 256, bf16-true, model.loss_impl=chunked, no
# activation checkpointing. Parts, most important first:
#   check  tests/pointwise_check.py on CUDA: compiled kernels vs the fallback and the reference model
#   p130   130m: dense + smet d 0.5 0.25 x transient persistent, x pointwise reference fused (10 runs, eager)
#   p350   350m: the same set
#   prof   130m dense reference / fused under torch.profiler (smet-bench --profile: 2 steady steps)
#   comp   130m trainer.compile=true: dense, smet d=0.25 persistent (the reference ops are what compile traces)
# Each part writes OUT_DIR/<part>.{json,md,log}; at the end a table (tokens/s, MFU, peak GiB per point), the
# top CUDA ops of each profile, and OUT_DIR/issue15-pw.tar.gz of everything.
# Usage: scripts/gpu-issue15-pointwise.sh OUT_DIR [python=python3]
# Environment: BUDGET (seconds, default 330), DEVICE (cuda), MODELS ("130m 350m"), VOCAB (32000), BATCH (128),
#   SEQ (256), PRECISION (bf16-true), STEPS (10; 350m: STEPS-2), EXTRA (more overrides for every part).
# CPU check of the script (tiny shapes; the kernels only run on CUDA or under TRITON_INTERPRET=1):
#   DEVICE=cpu MODELS=tiny VOCAB=2048 BATCH=4 SEQ=64 PRECISION=32 STEPS=3 \
#     scripts/gpu-issue15-pointwise.sh /tmp/i15p .venv/bin/python
set -uo pipefail
out=${1:?usage: scripts/gpu-issue15-pointwise.sh OUT_DIR [python]}
py=${2:-python3}
budget=${BUDGET:-330}
device=${DEVICE:-cuda}
models=${MODELS:-130m 350m}
steps=${STEPS:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
source "$here/scripts/gpu-part.sh"
bench_setup
start=$SECONDS
read -r -a extra <<< "${EXTRA:-}"
echo "=== check: tests/pointwise_check.py $device"
timeout 120 "$py" "$here/tests/pointwise_check.py" "$device" > "$out/check.json" 2> "$out/check.log"
echo "=== check: rc=$? $(head -c 400 "$out/check.json")"
common=(--device "$device" --interleave round --rounds 1 --warmup-steps 3)
shape=(data.batch_size="${BATCH:-128}" data.seq_len="${SEQ:-256}" data.tokenizer.vocab_size="${VOCAB:-32000}"
       trainer.precision="${PRECISION:-bf16-true}" model.gradient_checkpointing=false
       model.activation_checkpointing=none model.loss_impl=chunked sparsity.update_interval=10 "${extra[@]}")
grid=(sparsity=dense,smet sparsity.density=0.5,0.25 sparsity.materialize=transient,persistent)
PART_FLAGS=(--force)
m1=${models%% *}; m2=${models#* }; [[ "$m2" == "$models" ]] && m2=""
part p130 60 model="$m1" "${shape[@]}" trainer.compile=false model.pointwise=reference,fused "${grid[@]}" --steps "$steps"
[[ -n "$m2" ]] && part p350 90 model="$m2" "${shape[@]}" trainer.compile=false model.pointwise=reference,fused \
  "${grid[@]}" --steps "$(( steps > 4 ? steps - 2 : steps ))"
part prof 40 model="$m1" "${shape[@]}" trainer.compile=false sparsity=dense model.pointwise=reference,fused \
  --steps 2 --profile "$out/prof"
part comp 90 model="$m1" "${shape[@]}" trainer.compile=true sparsity=dense,smet sparsity.density=0.25 \
  sparsity.materialize=persistent --steps "$steps"

echo
echo "######## issue 15: pointwise reference vs fused ($((SECONDS - start))s total) — $(head -1 "$out/gpu.txt")"
"$py" - "$out" "$here/scripts" <<'PY' | tee "$out/summary.md"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
sys.path.insert(0, sys.argv[2])
from bench_parts import gib, load_parts  # noqa: E402

print("| part | model | method | d | materialize | pointwise | compile | tokens/s | step ms | vs dense reference | "
      "MFU dense | peak alloc GiB | peak reserved GiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
parts = load_parts(out, ("p130", "p350", "comp", "prof"))
base = {}
for recs in parts.values():
    for r in recs:
        if r["method"] == "dense" and r["config"]["model"].get("pointwise") == "reference" and r["tokens_per_s"] \
                and not r["compile"]:
            base.setdefault(r["config"]["model"]["name"], r["tokens_per_s"])
for part, recs in parts.items():
    for r in recs:
        m = r["config"]["model"]
        tps, ref = r["tokens_per_s"], base.get(m["name"])
        if r["oom"] or r["skipped"] or not tps:
            speed = ("OOM" if r["oom"] else "skipped") + " | - | - | -"
        else:
            mfu = r.get("mfu_dense")
            speed = (f"{tps:,.0f} | {r['step_time_s'] * 1e3:.1f} | " + (f"{tps / ref:.3f}" if ref else "-")
                     + " | " + (f"{mfu:.3f}" if mfu else "-"))
        print(f"| {part} | {m['name']} | {r['method']} | {r['density']:g} | {r['materialize'] or '-'} | "
              f"{m.get('pointwise', '?')} | {bool(r['compile'])} | {speed} | "
              f"{gib(r['peak_bytes'])} | {gib(r['peak_reserved_bytes'])} |")
print("\nreference code (dense, same shape, measured earlier): 298,357 tok/s at 130m, 118,680 at 350m")
PY
for f in "$out"/prof*/*.txt; do [[ -f "$f" ]] && { echo "--- $f"; head -25 "$f"; }; done
tar -czf "$out/issue15-pw.tar.gz" -C "$out" --exclude='*.tar.gz' . 2>/dev/null
