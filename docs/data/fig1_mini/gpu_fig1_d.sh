#!/usr/bin/env bash
# Issue 14 fig1_mini call D (pre-registered in docs/fig1_mini.md, "Call D"): seed 1 of set / smet / smet W=0 at
# 4e-3 to the final step; dense 1e-3 / 2e-3 and smet 4e-3 under bf16-mixed; rigl and smet_momentum_warmup at 4e-3.
# 8 train.py processes at once on one H200 through four `smet-fidelity run` groups; then smet-compare over them.
# Run from the repository root on the GPU machine with .whl, .cache/debian_corpus.tar.xz carried:
#   BUDGET=560 bash docs/data/fig1_mini/gpu_fig1_d.sh
set -uo pipefail
t0=$(date +%s)
source docs/data/fig1_mini/gpu_setup.sh
# model.loss_impl=exact: the loss of calls A-C
common=(trainer=gpu trainer.progress_bar=none trainer.model_summary=false model.loss_impl=exact)
true_=("${common[@]}" trainer.precision=bf16-true)
mixed=("${common[@]}" trainer.precision=bf16-mixed)
fid=(python3 -m smet.fidelity.cli)
"${fid[@]}" env --json "$OUT/env.json" > /dev/null
"${fid[@]}" prepare --experiments fig1_mini "${true_[@]}" > "$OUT/prep.log" 2>&1
grep -h "tokens" "$OUT/prep.log" | head -3
echo "prep done $(( $(date +%s) - t0 ))s"
budget=$(( ${BUDGET:-560} - $(date +%s) + t0 - 35 ))
run() {  # name parallel experiments overrides...
  local name=$1 par=$2 exps=$3; shift 3
  "${fid[@]}" run --parallel "$par" --budget-s "$budget" --python python3 --experiments "$exps" /tmp/fig1d/$name \
    "$@" > "$OUT/run_$name.log" 2>&1
}
run a 3 fig1_mini_set,fig1_mini,fig1_mini_smet_w0 optimizer.lr=0.004 seed=1 "${true_[@]}" &
run b 2 fig1_mini_dense 'optimizer.lr=0.001,0.002' seed=0 "${mixed[@]}" &
run c 1 fig1_mini optimizer.lr=0.004 seed=0 "${mixed[@]}" &
run d 2 fig1_mini_rigl,fig1_mini_smet_mw optimizer.lr=0.004 seed=0 "${true_[@]}" &
sleep 150; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv > "$OUT/smi.txt" 2>&1
wait
echo "runs done $(( $(date +%s) - t0 ))s"
for g in a b c d; do cp /tmp/fig1d/$g/runs.json "$OUT/runs_$g.json" 2>/dev/null; done
# smet-compare over the bf16-true runs only (groups a, d); the bf16-mixed ones (b, c) apart
mkdir -p /tmp/fig1d/true /tmp/fig1d/mixed
for g in a d; do for r in /tmp/fig1d/$g/*/; do [[ -f $r/metrics.csv ]] && ln -s "$r" /tmp/fig1d/true/; done; done
for g in b c; do for r in /tmp/fig1d/$g/*/; do [[ -f $r/metrics.csv ]] && ln -s "$r" /tmp/fig1d/mixed/; done; done
python3 -m smet.cli.compare /tmp/fig1d/true --out /tmp/fig1d/report_true --title "fig1_mini call D bf16-true" > "$OUT/compare_true.log" 2>&1
python3 -m smet.cli.compare /tmp/fig1d/mixed --out /tmp/fig1d/report_mixed --title "fig1_mini call D bf16-mixed" > "$OUT/compare_mixed.log" 2>&1
tar czf "$OUT/call_d-results.tar.gz" -C /tmp/fig1d --exclude='*.ckpt' --exclude='checkpoints' a b c d report_true report_mixed
python3 - <<'PY'
import json, glob
for f in sorted(glob.glob("/tmp/fig1d/[abcd]/runs.json")):
    for r in json.load(open(f))["runs"]:
        print(r["name"], r["status"], r.get("wall_s"), r.get("note") or "")
for f in sorted(glob.glob("/tmp/fig1d/[abcd]/*/summary.json")):
    s = json.load(open(f))
    print(f.split("/")[-3], f.split("/")[-2], s.get("steps"), s.get("val_ppl"), s.get("tokens_per_s"))
PY
echo "done $(( $(date +%s) - t0 ))s"
