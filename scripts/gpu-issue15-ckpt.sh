#!/usr/bin/env bash
# Issue 15 on one H200 (~3-5 minutes): selective activation checkpointing, model.activation_checkpointing
# none | block | mlp | attention and model.checkpoint_every 1 | 2, at the paper's vocabulary 32000, batch
# 128 x 256, bf16-true, eager, model.loss_impl=chunked; dense AdamW and smet d=0.25 persistent each.
# smet-bench parts (synthetic tokens), most important first:
#   c130   130m: none, block, mlp, attention (every block) x dense, smet d=0.25 persistent (8 runs)
#   c350   350m: the same set
#   k130   130m: block, mlp, attention on blocks 0, 2, 4, ... (checkpoint_every=2) x dense, smet (6 runs)
#   k350   350m: the same set
# Each part writes OUT_DIR/<part>.{json,md,log}. At the end: tokens/s, step time and peak memory per point
# (vs the dense point without checkpointing of the same model), then smet-memory's prediction of every
# point against the measured peak (scripts/issue15-memory-table.py: static + estimate_activations, the
# error; without the parameter gradients, which do not exist at the loss peak; the peak moment the model
# picks; what is left over vs the cuBLAS workspaces and the regrown slot ids it does not model), and
# OUT_DIR/issue15-ckpt.tar.gz of everything.
# Usage: scripts/gpu-issue15-ckpt.sh OUT_DIR [python=python3]
# Environment: BUDGET (seconds, default 300), DEVICE (cuda), MODELS ("130m 350m"), VOCAB (32000),
#   BATCH (128), SEQ (256), PRECISION (bf16-true), STEPS (10; 350m: STEPS-2), MODES (none,block,mlp,attention),
#   EVERY (2), EXTRA (more overrides for every part).
# On the GPU machine (torch in the image; hydra-core / omegaconf / antlr4 wheels from the carried .whl/):
#   scripts/gpu-issue15-ckpt.sh "$OUT" python3            # run() with carry [".whl"]
# CPU check of the script (tiny shapes):
#   DEVICE=cpu MODELS=tiny VOCAB=2048 BATCH=4 SEQ=64 PRECISION=32 STEPS=3 \
#     scripts/gpu-issue15-ckpt.sh /tmp/i15c .venv/bin/python
set -uo pipefail
out=${1:?usage: scripts/gpu-issue15-ckpt.sh OUT_DIR [python]}
py=${2:-python3}
budget=${BUDGET:-300}
device=${DEVICE:-cuda}
models=${MODELS:-130m 350m}
steps=${STEPS:-10}
modes=${MODES:-none,block,mlp,attention}
every=${EVERY:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
source "$here/scripts/gpu-part.sh"
bench_setup   # out -> absolute, PYTHONPATH, hydra wheels if missing, $out/gpu.txt
start=$SECONDS
read -r -a extra <<< "${EXTRA:-}"
common=(--device "$device" --interleave round --rounds 1 --warmup-steps 3)
shape=(data.batch_size="${BATCH:-128}" data.seq_len="${SEQ:-256}" data.tokenizer.vocab_size="${VOCAB:-32000}"
       trainer.precision="${PRECISION:-bf16-true}" trainer.compile=false model.gradient_checkpointing=false
       model.loss_impl=chunked sparsity.update_interval=10 "${extra[@]}")
grid=(sparsity=dense,smet sparsity.density=0.25 sparsity.materialize=persistent)
ckpt_modes=${modes//none,/}; ckpt_modes=${ckpt_modes//,none/}  # every-k parts: the checkpointing modes only
PART_FLAGS=(--force)
m1=${models%% *}; m2=${models#* }; [[ "$m2" == "$models" ]] && m2=""
s2=$(( steps > 4 ? steps - 2 : steps ))
part c130 45 model="$m1" "${shape[@]}" model.activation_checkpointing="$modes" "${grid[@]}" --steps "$steps"
[[ -n "$m2" ]] && part c350 70 model="$m2" "${shape[@]}" model.activation_checkpointing="$modes" "${grid[@]}" \
  --steps "$s2"
part k130 35 model="$m1" "${shape[@]}" model.activation_checkpointing="$ckpt_modes" model.checkpoint_every="$every" \
  "${grid[@]}" --steps "$steps"
[[ -n "$m2" ]] && part k350 55 model="$m2" "${shape[@]}" model.activation_checkpointing="$ckpt_modes" \
  model.checkpoint_every="$every" "${grid[@]}" --steps "$s2"

echo
echo "######## issue 15: selective activation checkpointing ($((SECONDS - start))s total) — $(head -1 "$out/gpu.txt")"
"$py" - "$out" "$here/scripts" <<'EOF' | tee "$out/summary.md"
import json, sys
from pathlib import Path

from smet.config import checkpointing_of

out = Path(sys.argv[1])
sys.path.insert(0, sys.argv[2])
from bench_parts import gib, load_parts  # noqa: E402


print("| part | model | method | d | ckpt | every | tokens/s | step ms | vs dense none | peak alloc GiB | "
      "vs dense none | peak reserved GiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
parts = load_parts(out, ("c130", "c350", "k130", "k350"))
base = {}  # (model, method) without checkpointing: tokens/s, peak
for recs in parts.values():
    for r in recs:
        if checkpointing_of(r["config"]["model"])[0] == "none" and r["tokens_per_s"]:
            base.setdefault((r["config"]["model"]["name"], "dense"), (r["tokens_per_s"], r["peak_bytes"]))
for part, recs in parts.items():
    for r in recs:
        m = r["config"]["model"]
        mode, k = checkpointing_of(m)
        tps, (ref_t, ref_p) = r["tokens_per_s"], base.get((m["name"], "dense"), (None, None))
        if r["oom"] or r["skipped"] or not tps:
            speed = ("OOM" if r["oom"] else "skipped") + " | - | -"
        else:
            speed = f"{tps:,.0f} | {r['step_time_s'] * 1e3:.1f} | " + (f"{tps / ref_t:.3f}" if ref_t else "-")
        rel = f"{r['peak_bytes'] / ref_p:.3f}" if ref_p and r["peak_bytes"] else "-"
        print(f"| {part} | {m['name']} | {r['method']} | {r['density']:g} | {mode} | {k if mode != 'none' else '-'} | "
              f"{speed} | {gib(r['peak_bytes'])} | {rel} | {gib(r['peak_reserved_bytes'])} |")
EOF
echo
echo "## smet-memory's prediction vs the measured peak (scripts/issue15-memory-table.py)"
"$py" "$here/scripts/issue15-memory-table.py" "$out" c130 c350 k130 k350 | tee "$out/prediction.md"
for name in c130 k130 ${m2:+c350 k350}; do
  [[ -f "$out/$name.md" || -f "$out/$name.skipped" ]] || echo "## part $name: no result (see $out/$name.log)"
done
tar -czf "$out/issue15-ckpt.tar.gz" -C "$out" --exclude issue15-ckpt.tar.gz . 2>/dev/null
echo "=== done in $((SECONDS - start))s; everything in $out (and $out/issue15-ckpt.tar.gz)"
