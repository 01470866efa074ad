#!/usr/bin/env bash
# Issue 15: the noise floor of the 130m SMET-vs-dense ratios, and whether Python's garbage collector is part of
# it (~3 minutes on one H200). The s130 grid of scripts/gpu-issue15-16.sh (dense + smet d = 0.5, 0.25 x transient,
# persistent; batch 128 x 256, bf16-true, vocab 32000, 3 rounds of 8 steps, an update every 8) run REPEAT times in
# separate processes as is, then REPEAT times with gc.disable() before the benchmark starts (an experiment, not a
# product setting: torchtitan, for one, disables automatic collection and collects every N steps).
# Usage: scripts/gpu-issue15-noise.sh OUT_DIR [python=python3]; env REPEAT (2), DEVICE (cuda), MODEL (130m),
#   BATCH (128), SEQ (256), VOCAB (32000), PRECISION (bf16-true), STEPS (24).
# CPU check: DEVICE=cpu MODEL=tiny BATCH=2 SEQ=32 VOCAB=512 PRECISION=32 STEPS=6 REPEAT=1 \
#   scripts/gpu-issue15-noise.sh /tmp/i15n .venv/bin/python
set -uo pipefail
out=${1:?usage: scripts/gpu-issue15-noise.sh OUT_DIR [python]}
py=${2:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)
source "$here/scripts/gpu-part.sh"
bench_setup
args=(model="${MODEL:-130m}" data.batch_size="${BATCH:-128}" data.seq_len="${SEQ:-256}"
      data.tokenizer.vocab_size="${VOCAB:-32000}" trainer.precision="${PRECISION:-bf16-true}" trainer.compile=false
      model.gradient_checkpointing=false model.activation_checkpointing=none sparsity.update_stop=20000
      sparsity=dense,smet sparsity.density=0.5,0.25 sparsity.materialize=transient,persistent
      sparsity.update_interval=8 --steps "${STEPS:-24}" --device "${DEVICE:-cuda}" --interleave round --rounds 3
      --warmup-steps 3 --force)
for gc in on off; do
  for i in $(seq "${REPEAT:-2}"); do
    name="gc${gc}_$i"
    echo "=== $name"
    if [[ $gc == on ]]; then
      timeout 200 "$py" -m smet.bench.cli "${args[@]}" --out "$out/$name.json" > "$out/$name.log" 2>&1
    else
      timeout 200 "$py" -c "import gc, sys; gc.disable(); from smet.bench.cli import main; sys.exit(main(sys.argv[1:]))" \
        "${args[@]}" --out "$out/$name.json" > "$out/$name.log" 2>&1
    fi
    echo "=== $name: rc=$?"
  done
done
"$py" - "$out" <<'PY' | tee "$out/summary.md"
import json, sys
from pathlib import Path
from smet.bench.records import amortised

out = Path(sys.argv[1])
print("| process | method | d | materialize | amortised ΔT=100 vs dense | round medians ms |")
print("|---|---|---|---|---|---|")
for f in sorted(out.glob("gc*.json")):
    recs = json.loads(f.read_text())
    dense = next((r for r in recs if r["method"] == "dense" and r["tokens_per_s"]), None)
    for r in recs:
        t = r["step_time_s"]
        am = amortised(r["tokens_per_s"] * t, t, r.get("update_step_time_s"), 100,
                       r.get("after_update_step_time_s")) if r["tokens_per_s"] else None
        ratio = f"{am / dense['tokens_per_s']:.3f}" if am and dense else "-"
        med = ", ".join(f"{x * 1e3:.1f}" for x in r["round_median_step_time_s"])
        print(f"| {f.stem} | {r['method']} | {r['density']:g} | {r['materialize'] or '-'} | {ratio} | {med} |")
PY
tar -czf "$out/issue15-noise.tar.gz" -C "$out" --exclude='*.tar.gz' . 2>/dev/null
