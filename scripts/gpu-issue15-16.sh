#!/usr/bin/env bash
# Issues 15 and 16 on one H200 (~6-8 minutes), bf16-true, vocab 32000, eager, fused pointwise ops
# (the conf/model default), chunked loss. smet-bench parts (synthetic tokens), most important first:
#   s130 / s350  issue 15: dense AdamW vs smet d = 0.5, 0.25 x transient, persistent at batch 128 x 256, no
#                activation checkpointing, 3 interleaved rounds of 8 steps; a topology update (every 8 steps) and
#                the step after it timed apart in every round, with
#                the drop fraction at its early-run value (sparsity.update_stop=20000: cosine 0.2 -> 0.005
#                over a 20000-step run, so ~0.2 at the update); amortise over ΔT = 100 afterwards with
#                `smet-bench --from-json s130.json --amortize-interval 100`
#   l130 / l350  issue 16: the leanest modes at the same shape: smet d = 0.25 transient with
#                optimizer.fused_backward=true (no gradient buffers), with bf16 and 8-bit moments, against
#                dense AdamW with and without fused_backward; 2 rounds
#   cap7b        issue 16: --memory-cap 24 (GiB, torch.cuda.set_per_process_memory_fraction): 7b smet d = 0.25,
#                fused_backward, block activation checkpointing, batch 8 x 256, 50 timed steps with topology
#                updates every 25 steps; then dense AdamW (fused_backward too) in the same process, which should OOM
#   cap13b       the same for 13b under --memory-cap 40
# Each part writes OUT_DIR/<part>.{json,md,log}; then a summary table and OUT_DIR/issue15-16.tar.gz of
# everything (copy only the tarball and summary.md back: the device tool returns few files).
# Usage: scripts/gpu-issue15-16.sh OUT_DIR [python=python3]
# Environment: BUDGET (seconds, default 480), DEVICE (cuda), PARTS (all), VOCAB (32000), BATCH (128), SEQ (256),
#   COMPILE (false; true: torch.compile of the model in the s / t / l parts), ROUNDS (3, of the s / t parts),
#   SMALL ("130m 350m"; empty: none), TRANSIENT (empty; e.g. "130m 350m": the t parts), TRANSIENT_BEFORE (0), LEAN (1; 0 skips the l parts), LEAN_GRID (the l parts' smet overrides,
#   default "optimizer.fused_backward=false,true optimizer.moments=native,8bit"), CAPS ("7b:24 13b:40"),
#   CAP_EXTRA (more overrides of the cap parts, e.g. sparsity.index=rows), CAP_BATCH (8), CAP_STEPS (50),
#   STEPS (24: 8 per round of s, with an update every 8 steps: 6 steady steps, the update step and the step
#   after it, timed apart), PRECISION (bf16-true). CAPS entries are MODEL:GIB[:DENSITY]; GIB "-" runs on the
#   whole GPU (part big<model>), DENSITY defaults to 0.25 (else the part name gets d<digits>, e.g. big65bd1).
# CPU check of the script logic (no caps on CPU; tiny shapes):
#   DEVICE=cpu SMALL=tiny CAPS= VOCAB=512 BATCH=2 SEQ=32 PRECISION=32 STEPS=3 \
#     scripts/gpu-issue15-16.sh /tmp/i1516 .venv/bin/python
set -uo pipefail
out=${1:?usage: scripts/gpu-issue15-16.sh OUT_DIR [python]}
py=${2:-python3}
budget=${BUDGET:-480}
device=${DEVICE:-cuda}
steps=${STEPS:-24}
here=$(cd "$(dirname "$0")/.." && pwd)
source "$here/scripts/gpu-part.sh"
bench_setup
start=$SECONDS
PART_FLAGS=(--force)
shape=(data.batch_size="${BATCH:-128}" data.seq_len="${SEQ:-256}" data.tokenizer.vocab_size="${VOCAB:-32000}"
       trainer.precision="${PRECISION:-bf16-true}" trainer.compile="${COMPILE:-false}" model.gradient_checkpointing=false
       model.activation_checkpointing=none sparsity.update_stop=20000)
common=(--device "$device" --interleave round --rounds "${ROUNDS:-3}" --warmup-steps 3)
read -r -a small <<< "${SMALL-130m 350m}"
for m in "${small[@]}"; do
  part "s${m%m}" 60 model="$m" "${shape[@]}" sparsity=dense,smet sparsity.density=0.5,0.25 \
    sparsity.materialize=transient,persistent sparsity.update_interval=8 --steps "$steps"
done
# t<model> (TRANSIENT="130m 350m"): the transient mode only, flat vs rows index, d = 0.5 and 0.25, against dense in
# the same process; with TRANSIENT_BEFORE=1 also t<model>nd, the same with SMET_DIRECT_LAUNCH=0 (Triton's own
# launches for the scatter / gather kernels, as before the direct launcher)
read -r -a transient <<< "${TRANSIENT:-}"
for m in "${transient[@]}"; do
  for v in "" nd; do
    [[ -z "$v" || "${TRANSIENT_BEFORE:-0}" == 1 ]] || continue
    SMET_DIRECT_LAUNCH=$([[ -z "$v" ]] && echo 1 || echo 0) \
      part "t${m%m}$v" 60 model="$m" "${shape[@]}" sparsity=dense,smet sparsity.density=0.5,0.25 \
      sparsity.materialize=transient sparsity.index=flat,rows sparsity.update_interval=8 --steps "$steps"
  done
done
common=(--device "$device" --interleave round --rounds 2 --warmup-steps 3)
[[ "${LEAN:-1}" == 1 ]] || small=()
read -r -a lean_grid <<< "${LEAN_GRID:-optimizer.fused_backward=false,true optimizer.moments=native,8bit}"
for m in "${small[@]}"; do
  part "l${m%m}" 50 model="$m" "${shape[@]}" trainer.on_nonfinite=stop sparsity=dense,smet sparsity.density=0.25 \
    sparsity.materialize=transient "${lean_grid[@]}" sparsity.update_interval=8 --steps "$(( steps * 2 / 3 ))"
done
common=(--device "$device" --interleave round --rounds 1 --warmup-steps 2)
read -r -a caps <<< "${CAPS-7b:24 13b:40}"
read -r -a cap_extra <<< "${CAP_EXTRA:-}"
for c in "${caps[@]}"; do
  IFS=: read -r m g d <<< "$c"
  d=${d:-0.25}
  capflag=(--memory-cap "$g"); [[ "$g" == "-" ]] && capflag=()
  name="cap$m"; [[ "$g" == "-" ]] && name="big$m"; [[ "$d" != 0.25 ]] && name="${name}d${d#0.}"
  part "$name" 100 model="$m" data.batch_size="${CAP_BATCH:-8}" data.seq_len="${SEQ:-256}" \
    data.tokenizer.vocab_size="${VOCAB:-32000}" trainer.precision="${PRECISION:-bf16-true}" trainer.compile=false \
    model.activation_checkpointing=block trainer.on_nonfinite=stop optimizer.fused_backward=true \
    sparsity=smet,dense sparsity.density="$d" sparsity.materialize=transient sparsity.update_interval=25 \
    sparsity.update_stop=20000 "${cap_extra[@]}" --dense-last ${capflag[@]+"${capflag[@]}"} --steps "${CAP_STEPS:-50}"
done

echo
echo "######## issues 15-16 ($((SECONDS - start))s total) — $(head -1 "$out/gpu.txt")"
"$py" - "$out" "$here/scripts" <<'PY' | tee "$out/summary.md"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
sys.path.insert(0, sys.argv[2])
from bench_parts import gib, load_parts  # noqa: E402
from smet.bench.records import amortised  # noqa: E402

print("| part | model | method | d | materialize | index | fused bwd | moments | tokens/s | amortised ΔT=100 | vs dense | "
      "update step ms (drop) | MFU dense | peak GiB | static GiB | B/act w (sparse layers) | final loss | cap GiB |")
print("|" + "---|" * 18)
parts = load_parts(out, ("s130", "s350", "t130", "t130nd", "t350", "t350nd", "l130", "l350", "captiny", "cap7b", "cap13b", "big30b", "big65bd1",
                         "big30bd1", "big13b", "s", "ltiny", "stiny"))
base = {}  # "vs dense": the dense AdamW run of the same part (process) where it has one, else of the same model
for part, recs in parts.items():
    for r in recs:
        o = r["config"]["optimizer"]
        if r["method"] == "dense" and not o.get("fused_backward") and r["tokens_per_s"]:
            base.setdefault(r["config"]["model"]["name"], r)
            base.setdefault((part, r["config"]["model"]["name"]), r)
for part, recs in parts.items():
    for r in recs:
        m, o = r["config"]["model"], r["config"]["optimizer"]
        b = base.get((part, m["name"])) or base.get(m["name"])
        tps = r["tokens_per_s"]
        # amortised over an update every 100 steps, from the measured steady and update step times
        am = (amortised(tps * r["step_time_s"], r["step_time_s"], r.get("update_step_time_s"), 100,
                        r.get("after_update_step_time_s")) if tps else None)
        if r["oom"] or r["skipped"] or not tps:
            speed = ("OOM" if r["oom"] else "skipped") + " | - | - | - | -"
        else:
            ratio = f"{am / b['tokens_per_s']:.3f}" if b else "-"
            ut = r.get("update_step_time_s")
            drop = r.get("update_drop_fraction")
            upd = f"{ut * 1e3:.0f} ({', '.join(f'{x:.3f}' for x in drop)})" if ut and drop else "-"
            mfu = r.get("mfu_dense")
            speed = f"{tps:,.0f} | {am:,.0f} | {ratio} | {upd} | " + (f"{mfu:.3f}" if mfu else "-")
        ss = r.get("sparse_static_bytes") or {}
        st = r.get("static_bytes") or {}
        cap = r["config"].get("memory_cap_bytes")
        loss = r.get("final_loss")
        idx = (r["config"].get("sparsity") or {}).get("index", "flat") if r["method"] != "dense" else "-"
        print(f"| {part} | {m['name']} | {r['method']} | {r['density']:g} | {r['materialize'] or '-'} | {idx} | "
              f"{bool(o.get('fused_backward'))} | {o.get('moments', '-') if r['method'] != 'dense' else '-'} | "
              f"{speed} | {gib(r['peak_bytes'])} | {gib(st.get('total'))} | "
              f"{r['bytes_per_active_weight']:.2f} | " + (f"{loss:.3f}" if isinstance(loss, float) else "-")
              + f" | {gib(cap)} |")
PY
tar -czf "$out/issue15-16.tar.gz" -C "$out" --exclude='*.tar.gz' . 2>/dev/null
echo "=== done in $((SECONDS - start))s; everything in $out (and $out/issue15-16.tar.gz)"
