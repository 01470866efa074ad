#!/usr/bin/env bash
# Issue 15 on one H200 (~4-6 minutes): the LM-head loss, model.loss_impl=exact (full logits + fp32
# F.cross_entropy) vs chunked (smet.models.loss), at the paper's vocabulary 32000, batch 128 x 256,
# bf16-true, eager, no activation checkpointing. smet-bench parts (synthetic tokens), most important first:
#   p130   130m: dense + smet d 0.5 0.25 x transient persistent, x loss_impl exact chunked (10 runs)
#   p350   350m: the same set
#   prof   130m dense exact / chunked under torch.profiler (smet-bench --profile: 2 steady steps)
#   chunk  130m dense chunked, model.loss_chunk_tokens 2048 8192 16384 (4096 is in p130)
# Each part writes OUT_DIR/<part>.{json,md,log}; at the end a compact table (tokens/s, peak GiB per
# point), the top 15 CUDA ops of each profile, and OUT_DIR/issue15.tar.gz of everything.
# Usage: scripts/gpu-issue15.sh OUT_DIR [python=python3]
# Environment: BUDGET (seconds, default 420), DEVICE (cuda), MODELS ("130m 350m"), VOCAB (32000),
#   BATCH (128), SEQ (256), PRECISION (bf16-true), CHUNKS (2048,8192,16384), STEPS (10; 350m: STEPS-2),
#   EXTRA (more overrides for every part).
# On the GPU machine (torch in the image; hydra-core / omegaconf / antlr4 wheels from the carried .whl/):
#   scripts/gpu-issue15.sh "$OUT" python3            # run() with carry [".whl"]
# CPU check of the script (tiny shapes):
#   DEVICE=cpu MODELS=tiny VOCAB=2048 BATCH=4 SEQ=64 PRECISION=32 CHUNKS=64 STEPS=3 \
#     scripts/gpu-issue15.sh /tmp/i15 .venv/bin/python
set -uo pipefail
out=${1:?usage: scripts/gpu-issue15.sh OUT_DIR [python]}
py=${2:-python3}
budget=${BUDGET:-420}
device=${DEVICE:-cuda}
models=${MODELS:-130m 350m}
steps=${STEPS:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
source "$here/scripts/gpu-part.sh"
bench_setup   # out -> absolute, PYTHONPATH, hydra wheels if missing, $out/gpu.txt
start=$SECONDS
read -r -a extra <<< "${EXTRA:-}"
common=(--device "$device" --interleave round --rounds 1 --warmup-steps 3)
shape=(data.batch_size="${BATCH:-128}" data.seq_len="${SEQ:-256}" data.tokenizer.vocab_size="${VOCAB:-32000}"
       trainer.precision="${PRECISION:-bf16-true}" trainer.compile=false model.gradient_checkpointing=false
       sparsity.update_interval=10 "${extra[@]}")
grid=(sparsity=dense,smet sparsity.density=0.5,0.25 sparsity.materialize=transient,persistent)
PART_FLAGS=(--force)
m1=${models%% *}; m2=${models#* }; [[ "$m2" == "$models" ]] && m2=""
part p130 60 model="$m1" "${shape[@]}" model.loss_impl=exact,chunked "${grid[@]}" --steps "$steps"
[[ -n "$m2" ]] && part p350 90 model="$m2" "${shape[@]}" model.loss_impl=exact,chunked "${grid[@]}" \
  --steps "$(( steps > 4 ? steps - 2 : steps ))"
part prof 40 model="$m1" "${shape[@]}" sparsity=dense model.loss_impl=exact,chunked --steps 2 --profile "$out/prof"
part chunk 30 model="$m1" "${shape[@]}" sparsity=dense model.loss_impl=chunked \
  model.loss_chunk_tokens="${CHUNKS:-2048,8192,16384}" --steps "$steps"

echo
echo "######## issue 15: loss_impl exact vs chunked ($((SECONDS - start))s total) — $(head -1 "$out/gpu.txt")"
"$py" - "$out" "$here/scripts" <<'EOF' | tee "$out/summary.md"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
sys.path.insert(0, sys.argv[2])
from bench_parts import gib, load_parts  # noqa: E402


print("| part | model | method | d | materialize | loss_impl | chunk | tokens/s | step ms | vs dense exact | "
      "peak alloc GiB | peak reserved GiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
parts = load_parts(out, ("p130", "p350", "chunk", "prof"))
base = {}  # dense exact tokens/s per model (p130 / p350 first)
for recs in parts.values():
    for r in recs:
        if r["method"] == "dense" and r["config"]["model"].get("loss_impl") == "exact" and r["tokens_per_s"]:
            base.setdefault(r["config"]["model"]["name"], r["tokens_per_s"])
for part, recs in parts.items():
    for r in recs:
        m = r["config"]["model"]
        impl = m.get("loss_impl", "?")
        chunk = m.get("loss_chunk_tokens", "-") if impl == "chunked" else "-"
        tps, ref = r["tokens_per_s"], base.get(m["name"])
        if r["oom"] or r["skipped"] or not tps:
            speed = ("OOM" if r["oom"] else "skipped") + " | - | -"
        else:
            speed = f"{tps:,.0f} | {r['step_time_s'] * 1e3:.1f} | " + (f"{tps / ref:.3f}" if ref else "-")
        print(f"| {part} | {m['name']} | {r['method']} | {r['density']:g} | {r['materialize'] or '-'} | {impl} | "
              f"{chunk} | {speed} | {gib(r['peak_bytes'])} | {gib(r['peak_reserved_bytes'])} |")
print("\ntargets (issue 15): peak without activation checkpointing <= 16.6 GiB at 130m (reference 20.80), "
      "<= 40.9 GiB at 350m; dense tokens/s >= the reference's")
EOF
for f in "$out"/prof/*.txt; do
  [[ -f "$f" ]] || continue
  echo; echo "## top 15 ops by self CUDA time (2 steps): $(basename "$f" .txt)"; head -n 18 "$f"
done
for name in p130 p350 prof chunk; do
  [[ -f "$out/$name.md" || -f "$out/$name.skipped" ]] || echo "## part $name: no result (see $out/$name.log)"
done
tar -czf "$out/issue15.tar.gz" -C "$out" --exclude issue15.tar.gz . 2>/dev/null
echo "=== done in $((SECONDS - start))s; everything in $out (and $out/issue15.tar.gz)"
