#!/usr/bin/env bash
# Issue 14 fig1_mini call C: seed 1 of the 4e-3 / 8e-3 arms (set, smet, smet W=0, static 4e-3), dense 1e-3 seed 1,
# and dense below 1e-3 (5e-4, 2.5e-4, seed 0: call B left dense's best LR unbracketed). 10 train.py processes at
# once on one H200 through four `smet-fidelity run` groups (each its own LR list); then smet-compare over them.
# Run from the repository root on the GPU machine with .whl, .cache/debian_corpus.tar.xz carried:
#   BUDGET=540 bash docs/data/fig1_mini/gpu_fig1_c.sh
set -uo pipefail
t0=$(date +%s)
source docs/data/fig1_mini/gpu_setup.sh
# model.loss_impl=exact: the loss of calls A and B (seed 0), before the chunked loss became the default
tr=(trainer=gpu trainer.precision=bf16-true trainer.progress_bar=none trainer.model_summary=false model.loss_impl=exact)
fid=(python3 -m smet.fidelity.cli)
"${fid[@]}" env --json "$OUT/env.json" > /dev/null
"${fid[@]}" prepare --experiments fig1_mini "${tr[@]}" > "$OUT/prep.log" 2>&1
echo "prep done $(( $(date +%s) - t0 ))s"
budget=$(( ${BUDGET:-540} - $(date +%s) + t0 - 30 ))
run() {  # name parallel experiments overrides...
  local name=$1 par=$2 exps=$3; shift 3
  "${fid[@]}" run --parallel "$par" --budget-s "$budget" --python python3 --experiments "$exps" /tmp/fig1c/$name \
    "${tr[@]}" "$@" > "$OUT/run_$name.log" 2>&1
}
run a 6 fig1_mini_set,fig1_mini,fig1_mini_smet_w0 'optimizer.lr=0.004,0.008' seed=1 &
run b 1 fig1_mini_static optimizer.lr=0.004 seed=1 &
run c 1 fig1_mini_dense optimizer.lr=0.001 seed=1 &
run d 2 fig1_mini_dense 'optimizer.lr=0.0005,0.00025' seed=0 &
wait
echo "runs done $(( $(date +%s) - t0 ))s"
mkdir -p /tmp/fig1c/all
for g in a b c d; do for r in /tmp/fig1c/$g/*/; do [[ -f $r/metrics.csv ]] && ln -s "$r" /tmp/fig1c/all/; done; done
for g in a b c d; do cp /tmp/fig1c/$g/runs.json "$OUT/runs_$g.json" 2>/dev/null; done
python3 -m smet.cli.compare /tmp/fig1c/all --out /tmp/fig1c/report --title "fig1_mini call C" > "$OUT/compare.log" 2>&1
tar czf "$OUT/call_c-results.tar.gz" -C /tmp/fig1c --exclude='*.ckpt' --exclude='checkpoints' a b c d report
python3 - <<'PY'
import json, glob
for f in sorted(glob.glob("/tmp/fig1c/[abcd]/runs.json")):
    for r in json.load(open(f))["runs"]:
        print(r["name"], r["status"], r.get("wall_s"), r.get("note") or "")
PY
grep -h '"val_ppl"\|"steps"' /tmp/fig1c/*/*/summary.json | tr -d ' \n'; echo
head -30 /tmp/fig1c/report/summary.md
echo "done $(( $(date +%s) - t0 ))s"
